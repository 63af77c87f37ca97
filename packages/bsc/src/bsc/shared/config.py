"""How to reach the shared store: :class:`Shared`, parsed from a ``redis://`` URL or built in code."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["Shared", "redact"]

_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_BOOL = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


#: Query options (redis-py's) that carry a secret.
_SECRET_OPTIONS = ("password", "ssl_password")


def redact(url: str) -> str:
    """``url`` with its username and password, and any ``password``/``ssl_password`` query
    option, replaced by ``***`` (for logs and errors)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = "***@" + host + (f":{port}" if port is not None else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name in _SECRET_OPTIONS for name, _ in pairs):
            query = urlencode([(n, "***" if n in _SECRET_OPTIONS else v) for n, v in pairs], safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class Shared:
    """A cache shared by several processes through one Redis (or Redis Cluster).

    Pass it, or just its URL, as ``shared=`` to :class:`~bsc.SemanticCache`,
    :class:`~bsc.BinarySemanticCache` or :class:`~bsc.openai.CachedOpenAI`. Every process that
    names the same Redis and ``prefix`` shares one cache; lookups are answered from a replica
    held in each process's memory (docs/SHARED.md).

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS). Query
            parameters ``prefix``, ``cluster``, ``shards``, ``on_disconnect`` and ``queue_size``
            set the fields below; other parameters go to redis-py.
        prefix: the key prefix: several caches can share one Redis under different prefixes.
        cluster: the URL names a node of a Redis Cluster.
        shards: the number of shards the namespaces are spread over (each shard's keys and
            stream stay in one cluster slot; every process of one cache must use the same).
        on_disconnect: while Redis cannot be reached, writes are ``"queue"``d (at most
            ``queue_size``, replayed in order on reconnect) or ``"drop"``ped; both are counted.
        queue_size: the bound of the write queue.
        stream_maxlen: the changes kept in each shard's stream; a replica further behind than
            this rebuilds itself from the entries.
        timeout: seconds to wait for Redis on connect and on each command.
    """

    url: str
    prefix: str = "bsc"
    cluster: bool = False
    shards: int = 1
    on_disconnect: Literal["queue", "drop"] = "queue"
    queue_size: int = 10_000
    stream_maxlen: int = 100_000
    timeout: float = 5.0
    redis_options: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            raise TypeError(f"shared must be a redis:// URL or a bsc.Shared, got {type(self.url).__name__}")
        parts = urlsplit(self.url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"shared URL must start with redis:// or rediss://, got {redact(self.url)!r}")
        if not parts.hostname:
            raise ValueError(f"shared URL names no host: {redact(self.url)!r}")
        if not isinstance(self.prefix, str) or not _PREFIX.match(self.prefix):
            raise ValueError(f"prefix must be 1-64 characters of A-Z a-z 0-9 _ . : -, got {self.prefix!r}")
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or not 1 <= self.shards <= 1024:
            raise ValueError(f"shards must be an int in [1, 1024], got {self.shards!r}")
        if self.on_disconnect not in ("queue", "drop"):
            raise ValueError(f"on_disconnect must be 'queue' or 'drop', got {self.on_disconnect!r}")
        for name in ("queue_size", "stream_maxlen"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.stream_maxlen < 100:
            raise ValueError(f"stream_maxlen must be at least 100, got {self.stream_maxlen}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {self.timeout!r}")

    @classmethod
    def parse(cls, value: str | Shared) -> Shared:
        """A :class:`Shared` from a URL (its query parameters set the fields), or ``value``."""
        if isinstance(value, Shared):
            return value
        if not isinstance(value, str):
            raise TypeError(f"shared must be a redis:// URL or a bsc.Shared, got {type(value).__name__}")
        parts = urlsplit(value)
        fields: dict[str, Any] = {}
        rest = []
        for name, raw in parse_qsl(parts.query, keep_blank_values=True):
            if name == "prefix":
                fields["prefix"] = raw
            elif name == "cluster":
                if raw.lower() not in _BOOL:
                    raise ValueError(f"cluster must be true or false, got {raw!r}")
                fields["cluster"] = _BOOL[raw.lower()]
            elif name in ("shards", "queue_size", "stream_maxlen"):
                try:
                    fields[name] = int(raw)
                except ValueError:
                    raise ValueError(f"{name} must be an int, got {raw!r}") from None
            elif name == "on_disconnect":
                fields["on_disconnect"] = raw
            elif name in ("decode_responses", "encoding", "encoding_errors"):
                raise ValueError(f"{name} cannot be set for a shared cache: it stores bytes")
            else:
                rest.append((name, raw))
        url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), parts.fragment))
        return cls(url, **fields)

    @property
    def safe_url(self) -> str:
        """The URL without its credentials."""
        return redact(self.url)

    def __repr__(self) -> str:
        return (
            f"Shared({self.safe_url!r}, prefix={self.prefix!r}, cluster={self.cluster}, shards={self.shards}, "
            f"on_disconnect={self.on_disconnect!r})"
        )
