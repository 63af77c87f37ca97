"""The caching proxy: an OpenAI-compatible HTTP server in front of an upstream API.

    bsc serve --upstream http://127.0.0.1:11434/v1 --port 8080 --persist answers.bsc

Point any OpenAI client's base URL at ``http://HOST:PORT/v1``. Routes:

- ``POST /v1/chat/completions`` and ``POST /v1/responses``: answered from the
  ``SemanticCache`` when they can be (the request policy of :mod:`bsc.policy`), streamed or not;
  otherwise forwarded upstream, and a successful answer is stored (a streamed one once its
  stream has completed). Upstream errors and timeouts are passed back with the upstream's
  status (502/504 when there was no answer); nothing is cached from an error.
- ``POST /v1/embeddings``: answered from an exact-match cache of upstream answers (same
  namespace, model, input and parameters: the same bytes), or passed through.
- Every other ``/v1/...`` route (``GET /v1/models``, ``/v1/completions``, ``/v1/files``,
  ``/v1/audio/*``, ...): passed through unchanged, streamed both ways, never cached.
- ``GET /healthz``, ``GET /metrics`` (Prometheus), and with ``admin_token`` the admin routes
  under ``/admin/`` (docs/PROXY.md).

Isolation and the trust model are in docs/PROXY.md: entries are kept per API key (a hash of
the ``Authorization`` or ``api-key`` header, which is forwarded upstream and never logged or
stored), subdivided by ``X-Bsc-Namespace``; only the namespaces the operator declares shared
span keys, and they can never name a key's own space.

Every error the proxy itself gives is in the OpenAI format (``{"error": {"message", "type",
"code"}}``), and bad input is a 4xx: bodies over ``max_body`` (413, checked while reading),
bodies that stall (408), JSON that is invalid, nested too deep or holds lone surrogates (400),
header values that are not ASCII (400), bad ``X-Bsc-*`` values (400).

Built on Starlette (routing, requests, streaming responses), uvicorn (the HTTP server), httpx
(the upstream client) and prometheus-client; no HTTP is hand-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

try:
    import httpx
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'the bsc proxy needs its server dependencies: pip install "bsc[server]" (with uv: uv add "bsc[server]"; '
        "in a checkout of bsc: uv sync --all-packages --extra server)"
    ) from exc

from bsc import policy
from bsc.cache import MAX_TTL
from bsc.errors import BscError
from bsc.semantic import NAMESPACE_PATTERN, TAG_PATTERN, SemanticCache
from bsc.semantic.keys import canonical, check_namespace

logger = logging.getLogger("bsc")

__all__ = ["DEFAULT_MAX_BODY", "MAX_JSON_DEPTH", "create_app"]

#: The largest request body the proxy reads for a route it parses (chat, responses, embeddings).
DEFAULT_MAX_BODY = 4 * 1024 * 1024
#: Seconds a request body may stall between two pieces before the proxy answers 408.
DEFAULT_BODY_TIMEOUT = 5.0
#: The deepest JSON nesting a parsed request may have.
MAX_JSON_DEPTH = 64
#: Bytes of upstream embeddings answers kept by the exact-match embeddings cache by default.
DEFAULT_EMBEDDINGS_CACHE_BYTES = 64 * 1024 * 1024

# Hop-by-hop headers (RFC 9110 7.6.1) and those the HTTP client sets itself: never forwarded.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
)
_CLIENT_SET = frozenset({"host", "content-length", "proxy-authorization", "proxy-authenticate"})
# bsc's own request headers, and those the cached routes decide for themselves.
_BSC_HEADERS = frozenset(
    {"x-bsc-namespace", "x-bsc-ttl", "x-bsc-threshold", "x-bsc-tags", "x-bsc-admin-token", "cache-control"}
)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SURROGATE = re.compile("[\ud800-\udfff]")
_DIGITS = re.compile("[0-9]+")  # ASCII only: str.isdigit() admits digits int() refuses
_KEYSPACE_HASH_CHARS = 24
_SHARED_PREFIX = "shared:"


class _UpstreamBroke(Exception):  # noqa: N818 - an event, raised to abort a relayed answer
    """The upstream broke off an answer that was being relayed: the connection to the client is
    aborted so that the client sees the answer is incomplete."""


class _Refusal(Exception):  # noqa: N818 - a refusal, answered as a 4xx
    """A request the proxy refuses: ``status`` and an OpenAI-format error."""

    def __init__(self, status: int, message: str, code: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.kind = kind

    def response(self, **headers: str) -> JSONResponse:
        return _error(self.status, self.message, self.kind, self.code, **headers)


def _error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None, **headers: str
) -> JSONResponse:
    """An error in the OpenAI format."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status, headers=headers)


# -- settings and state ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProxySettings:
    """How the proxy behaves (``create_app``'s keyword arguments, checked)."""

    upstream: str
    timeout: float = 600.0
    close_cache: bool = False
    shared_namespaces: bool | frozenset[str] = False
    admin_token: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    cache_embeddings: bool = True
    embeddings_cache_bytes: int = DEFAULT_EMBEDDINGS_CACHE_BYTES
    allow_lax_threshold: bool = False

    def shared(self, name: str) -> bool:
        """Whether the operator declared ``name`` (an ``X-Bsc-Namespace`` value) shared."""
        if isinstance(self.shared_namespaces, frozenset):
            return name in self.shared_namespaces
        return self.shared_namespaces


_SELF_CHECK_GAUGES = (
    ("verifications", "Semantic hits held back to be checked against a fresh answer"),
    ("checks", "Cached answers compared with fresh ones (paid and free)"),
    ("checks_different", "Comparisons whose answers differed"),
    ("verification_tokens", "Tokens the checks' upstream calls used"),
    ("verification_seconds", "Seconds the checks' upstream calls took"),
)
_SHARED_GAUGES = (
    ("connected", "1 while the shared store (Redis) answers, else 0"),
    ("queue", "Writes waiting for the shared store to come back"),
    ("writes_queued", "Writes queued while the shared store was unreachable"),
    ("writes_dropped", "Writes dropped while the shared store was unreachable"),
    ("writes_replayed", "Queued writes sent once the shared store came back"),
    ("resyncs", "Rebuilds of this process's replica from the shared store"),
    ("disconnects", "Times the shared store became unreachable"),
)


def _stat(cache: SemanticCache, name: str) -> float:
    return float(getattr(cache.stats(), name))


def _shared_stat(stats: Callable[[], dict[str, int]], name: str) -> float:
    return float(stats()[name])


class _Metrics:
    def __init__(self, cache: SemanticCache, state: _State) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bsc_proxy_requests",
            "Chat completion and responses requests by cache result",
            ["cache"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bsc_proxy_request_seconds",
            "Time to the response headers (a hit: to the whole answer) by cache result",
            ["cache"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "bsc_proxy_upstream_seconds",
            "Upstream time to response headers",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "bsc_proxy_upstream_errors",
            "Upstream answers that were errors, by status",
            ["status"],
            registry=self.registry,
        )
        self.refused = Counter(
            "bsc_proxy_refused", "Requests refused by the proxy itself, by error code", ["code"], registry=self.registry
        )
        self.passed = Counter("bsc_proxy_passthrough", "Requests passed through uncached", registry=self.registry)
        self.stored = Counter("bsc_proxy_stored", "Answers stored in the cache", registry=self.registry)
        self.embeddings = Counter(
            "bsc_proxy_embeddings", "Embeddings requests by cache result", ["cache"], registry=self.registry
        )
        entries = Gauge("bsc_cache_entries", "Entries in the cache", registry=self.registry)
        entries.set_function(lambda: len(cache))
        save_errors = Gauge(
            "bsc_cache_save_errors",
            "Saves of the cache file that failed (background and final)",
            registry=self.registry,
        )
        save_errors.set_function(lambda: cache.stats().save_errors)
        if cache.self_check is not None:  # the cache checks itself (docs/QUALITY.md)
            self._gauges("bsc_self_check_", functools.partial(_stat, cache), _SELF_CHECK_GAUGES)
        shared_stats = getattr(cache.binary.engine, "shared_stats", None)
        if shared_stats is not None:  # a cache shared through Redis (docs/SHARED.md)
            self._gauges("bsc_shared_", functools.partial(_shared_stat, shared_stats), _SHARED_GAUGES)

    def _gauges(self, prefix: str, value: Callable[[str], float], names: tuple[tuple[str, str], ...]) -> None:
        for name, doc in names:
            gauge = Gauge(prefix + name, doc, registry=self.registry)
            gauge.set_function(functools.partial(value, name))

    def done(self, result: str, started: float) -> None:
        self.requests.labels(result).inc()
        self.latency.labels(result).observe(time.perf_counter() - started)


class _EmbeddingsCache:
    """Upstream embeddings answers by request, least recently used first out, at most
    ``max_bytes`` of answers. In memory only: an embedding is cheap to ask again after a restart."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[bytes, tuple[bytes, str, str]] = OrderedDict()

    def get(self, key: bytes) -> tuple[bytes, str] | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0], item[1]

    def put(self, key: bytes, content: bytes, media: str, namespace: str) -> None:
        if len(content) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old[0])
        self._items[key] = (content, media, namespace)
        self.bytes += len(content)
        while self.bytes > self.max_bytes:
            _, (dropped, _, _) = self._items.popitem(last=False)
            self.bytes -= len(dropped)

    def delete_namespace(self, namespace: str) -> int:
        """Drops the answers kept for ``namespace`` (that name exactly, as
        ``SemanticCache.delete_namespace`` does)."""
        gone = [k for k, item in self._items.items() if item[2] == namespace]
        for key in gone:
            self.bytes -= len(self._items.pop(key)[0])
        return len(gone)

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _State:
    cache: SemanticCache
    settings: ProxySettings
    base: str
    upstream: httpx.URL = field(init=False)
    metrics: _Metrics = field(init=False)
    embeddings: _EmbeddingsCache | None = None
    client: httpx.AsyncClient | None = None
    final_save_failed: int = 0
    background: set[asyncio.Task[None]] = field(default_factory=set)


def _state(request: Request) -> _State:
    state: _State = request.app.state.proxy
    return state


# -- checks of a request ----------------------------------------------------------------------


#: Headers that may appear once: the credentials a space is named by, and bsc's own.
_SINGLE_HEADERS = ("authorization", "api-key", *sorted(_BSC_HEADERS - {"cache-control"}))


def _check_headers(request: Request) -> None:
    """Every header value the proxy could forward must be ASCII (HTTP allows other bytes only
    as opaque data, and an upstream client cannot encode them); a credential or ``X-Bsc-*``
    header may appear once (two would let the space and the key the upstream checks differ)."""
    for name, value in request.headers.items():
        if not value.isascii():
            raise _Refusal(400, f"the {name} header holds non-ASCII characters", "invalid_header")
    for name in _SINGLE_HEADERS:
        if len(request.headers.getlist(name)) > 1:
            raise _Refusal(400, f"the {name} header may appear only once", "duplicate_header")


async def _read_body(request: Request, settings: ProxySettings) -> bytes:
    """The body, read piece by piece: over ``max_body`` bytes is a 413 as soon as it is known
    (from ``Content-Length`` or while reading), a body that stalls for ``body_timeout`` seconds
    (a ``Content-Length`` larger than what is sent) a 408."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _DIGITS.fullmatch(declared):
            raise _Refusal(400, "Content-Length is not a number", "invalid_content_length")
        if int(declared) > settings.max_body:
            raise _Refusal(413, f"the request body is larger than {settings.max_body} bytes", "body_too_large")
    pieces = []
    size = 0
    async for piece in _idle_limited(request.stream(), settings.body_timeout):
        size += len(piece)
        if size > settings.max_body:
            raise _Refusal(413, f"the request body is larger than {settings.max_body} bytes", "body_too_large")
        pieces.append(piece)
    return b"".join(pieces)


async def _idle_limited(stream: AsyncIterator[bytes], timeout: float) -> AsyncIterator[bytes]:
    """``stream``, failing with a 408 when no piece arrives for ``timeout`` seconds, and with a
    400 when the client goes away (a 400 nobody reads, without a traceback)."""
    iterator = stream.__aiter__()
    while True:
        try:
            piece = await asyncio.wait_for(iterator.__anext__(), timeout)
        except StopAsyncIteration:
            return
        except (asyncio.TimeoutError, TimeoutError):
            raise _Refusal(
                408, f"the request body stalled for {timeout:g} s (is Content-Length right?)", "body_timeout"
            ) from None
        except ClientDisconnect:
            raise _Refusal(400, "the client closed the connection before its body was read", "client_gone") from None
        if piece:
            yield piece


def _check_json(value: Any) -> None:
    """JSON at most :data:`MAX_JSON_DEPTH` deep whose strings are valid Unicode (no lone
    surrogates: ``"\\ud800"`` is valid JSON but no text). Iterative: no recursion to exhaust."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found is not None:
                raise _Refusal(
                    400,
                    f"the request holds a lone surrogate (U+{ord(found.group()):04X}), which is not valid Unicode text",
                    "invalid_unicode",
                )
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise _Refusal(400, f"the request's JSON is nested deeper than {MAX_JSON_DEPTH}", "json_too_deep")
            children: Iterable[Any] = item.values() if isinstance(item, dict) else item
            if isinstance(item, dict):
                stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in children)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are distinct: a repeated key is refused, since parsers disagree on
    which value wins, and the upstream must answer the request the cache keyed."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refusal(400, f"the request's JSON repeats the key {key[:40]!r}", "duplicate_key")
        out[key] = value
    return out


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise _Refusal(400, f"the request's JSON is nested deeper than {MAX_JSON_DEPTH}", "json_too_deep") from None
    except ValueError:
        raise _Refusal(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(payload, dict):
        raise _Refusal(400, "the request body must be a JSON object", "invalid_json")
    _check_json(payload)
    return payload


def _keyspace(request: Request) -> str:
    """The space of the caller's API key (``Authorization`` or ``api-key``): a hash, the key
    itself is never kept; ``anonymous`` without one."""
    # Both headers, when both are sent: the space follows whichever the upstream reads.
    credentials = [v for v in (request.headers.get("authorization"), request.headers.get("api-key")) if v]
    if not credentials:
        return "anonymous"
    auth = "\n".join(credentials)
    return "key-" + hashlib.sha256(auth.encode("latin-1")).hexdigest()[:_KEYSPACE_HASH_CHARS]


def _namespace(request: Request, settings: ProxySettings) -> str:
    """The namespace a request's entries live in (docs/PROXY.md, the trust model):

    - no ``X-Bsc-Namespace``: the key's space, ``key-<hash>`` (``anonymous`` without a key);
    - a name the operator declared shared: ``shared:<name>``, the same for every caller;
    - any other name: ``<key space>:<name>``, a subdivision of the key's space.

    Spaces of the three kinds never coincide (their prefixes differ), so no header value names
    another key's space."""
    given = request.headers.get("x-bsc-namespace")
    keyspace = _keyspace(request)
    if given is None:
        return keyspace
    if not NAMESPACE_PATTERN.fullmatch(given):
        raise _Refusal(
            400,
            "X-Bsc-Namespace must be 1 to 128 letters, digits and _ . : @ / + = -, starting with a letter or digit",
            "invalid_namespace",
        )
    name = _SHARED_PREFIX + given if settings.shared(given) else f"{keyspace}:{given}"
    try:
        return check_namespace(name)
    except ValueError:
        room = 128 - len(name) + len(given)
        raise _Refusal(
            400, f"X-Bsc-Namespace is too long here: at most {room} characters", "invalid_namespace"
        ) from None


def _number(request: Request, header: str) -> float | None:
    raw = request.headers.get(header)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _Refusal(400, f"{header} must be a finite number, got {raw!r}", "invalid_header")
    return value


def _ttl(request: Request) -> float | None:
    ttl = _number(request, "x-bsc-ttl")
    if ttl is not None and not 0 < ttl <= MAX_TTL:
        raise _Refusal(400, f"X-Bsc-TTL must be a number of seconds in (0, {MAX_TTL}], got {ttl!r}", "invalid_ttl")
    return ttl


def _threshold(request: Request, state: _State) -> float | None:
    threshold = _number(request, "x-bsc-threshold")
    if threshold is None:
        return None
    if not -1 <= threshold <= 1:
        raise _Refusal(400, f"X-Bsc-Threshold must be in [-1, 1], got {threshold!r}", "invalid_threshold")
    own = state.cache.similarity_threshold
    if threshold < own and not state.settings.allow_lax_threshold:
        raise _Refusal(
            400,
            f"X-Bsc-Threshold {threshold} is laxer than the server's {own}: only stricter thresholds are allowed",
            "invalid_threshold",
        )
    return threshold


def _tags(request: Request) -> tuple[str, ...]:
    raw = request.headers.get("x-bsc-tags")
    if raw is None:
        return ()
    tags = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
    if not tags or len(tags) > 32 or not all(TAG_PATTERN.fullmatch(t) for t in tags):
        raise _Refusal(
            400,
            "X-Bsc-Tags must be 1 to 32 comma-separated tags without whitespace, each at most 128 characters",
            "invalid_tags",
        )
    return tags


@dataclass(frozen=True)
class _Control:
    """``Cache-Control`` of a request: ``no-store`` (bypass the cache), ``no-cache`` (do not
    answer from it, store the new answer), ``max-age=N`` (only entries at most N s old answer)."""

    no_store: bool = False
    no_cache: bool = False
    max_age: float | None = None


def _control(request: Request) -> _Control:
    raw = request.headers.get("cache-control")
    if raw is None:
        return _Control()
    no_store = no_cache = False
    max_age = None
    for directive in raw.split(","):
        name, _, value = directive.strip().lower().partition("=")
        if name == "no-store":
            no_store = True
        elif name == "no-cache":
            no_cache = True
        elif name == "max-age":
            value = value.strip().strip('"')
            if not _DIGITS.fullmatch(value):
                raise _Refusal(
                    400, f"Cache-Control max-age must be whole seconds, got {value[:40]!r}", "invalid_header"
                )
            # RFC 9111 1.2.2: a value too large to represent is taken as 2**31 seconds.
            max_age = float(2**31 if len(value) > 10 else min(int(value), 2**31))
    return _Control(no_store, no_cache, max_age)


def _refused(request: Request, err: _Refusal) -> JSONResponse:
    _state(request).metrics.refused.labels(err.code).inc()
    return err.response()


# -- upstream -------------------------------------------------------------------------------


def _connection_listed(values: Iterable[str]) -> set[str]:
    """Header names the ``Connection`` header values list: hop-by-hop too (RFC 9110 7.6.1)."""
    return {token.strip().lower() for value in values for token in value.split(",") if token.strip()}


def _forwarded(request: Request, *, passthrough: bool = False) -> dict[str, str]:
    drop = _HOP_BY_HOP | _CLIENT_SET | _BSC_HEADERS | _connection_listed(request.headers.getlist("connection"))
    # Pass-through: the body is streamed as it came, with its length (no chunked encoding for
    # an upstream to refuse), and the answer relayed as it came, compressed or not. Parsed
    # routes ask for what httpx decodes.
    drop = drop - {"content-length"} if passthrough else drop | {"accept-encoding"}
    return {k: v for k, v in request.headers.items() if k.lower() not in drop}


def _kept(response: httpx.Response) -> dict[str, str]:
    """Upstream headers passed back on a cached route: rate limits, request ids, OpenAI's own."""
    return {
        k: v
        for k, v in response.headers.items()
        if k.lower() in ("retry-after", "x-request-id") or k.lower().startswith(("x-ratelimit", "openai-"))
    }


def _passed_back(response: httpx.Response, content: bytes, **headers: str) -> Response:
    keep = _kept(response)
    if "content-type" in response.headers:
        keep["content-type"] = response.headers["content-type"]
    return Response(content, response.status_code, headers={**keep, **headers})


async def _send(
    state: _State,
    request: Request,
    path: str,
    body: Any,
    *,
    stream: bool,
    method: str = "POST",
    passthrough: bool = False,
) -> httpx.Response:
    """Sends a request upstream; raises :class:`_Refusal` with 502/504 when there is no answer."""
    client = state.client
    assert client is not None, "the proxy's lifespan has not started"
    query = request.scope.get("query_string") or b""
    raw_path = state.upstream.raw_path.rstrip(b"/") + path.encode("latin-1") + (b"?" + query if query else b"")
    url = state.upstream.copy_with(raw_path=raw_path)  # the upstream's scheme, host and port, whatever the path
    headers = _forwarded(request, passthrough=passthrough)
    upstream_request = client.build_request(method, url, content=body, headers=headers)
    started = time.perf_counter()
    try:
        response = await client.send(upstream_request, stream=stream)
    except _Refusal:
        raise
    except httpx.TimeoutException:
        state.metrics.upstream_errors.labels("timeout").inc()
        raise _Refusal(504, "the upstream API did not answer in time", "upstream_timeout", "upstream_error") from None
    except httpx.HTTPError as err:
        cause = err.__cause__ or err.__context__
        if isinstance(cause, _Refusal):
            raise cause from None  # the client's own body stalled or went away while forwarded
        state.metrics.upstream_errors.labels("unreachable").inc()
        logger.warning("bsc proxy: upstream %s unreachable: %s", state.base, type(err).__name__)
        raise _Refusal(502, "the upstream API could not be reached", "upstream_unreachable", "upstream_error") from None
    state.metrics.upstream_latency.observe(time.perf_counter() - started)
    if response.status_code >= 400:
        state.metrics.upstream_errors.labels(str(response.status_code)).inc()
    return response


def _shielded(state: _State, work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
    """Runs ``work`` to the end even if the caller is cancelled (a client that disconnects)."""
    task = asyncio.ensure_future(work)
    state.background.add(task)
    task.add_done_callback(state.background.discard)
    return asyncio.shield(task)


# -- the cached routes: chat completions and responses ---------------------------------------


@dataclass(frozen=True)
class _Call:
    """One request on a cached route, checked."""

    api: policy.API
    body: bytes
    request: policy.CacheRequest
    prepared: policy.Prepared | None
    bypass: str | None
    namespace: str
    ttl: float | None
    tags: tuple[str, ...]
    control: _Control
    threshold: float | None


async def _checked_call(request: Request, api: policy.API) -> _Call:
    state = _state(request)
    _check_headers(request)
    namespace = _namespace(request, state.settings)
    ttl = _ttl(request)
    tags = _tags(request)
    control = _control(request)
    threshold = _threshold(request, state)
    body = await _read_body(request, state.settings)
    payload = _parse_json(body)
    parsed = policy.parse_request(api, payload)
    prepared: policy.Prepared | None = None
    bypass: str | None = "Cache-Control: no-store"
    if not control.no_store:
        outcome = policy.prepare(state.cache, parsed, namespace)
        if isinstance(outcome, str):
            bypass = outcome
        else:
            prepared, bypass = outcome, None
    return _Call(api, body, parsed, prepared, bypass, namespace, ttl, tags, control, threshold)


async def _cached_route(request: Request, api: policy.API) -> Response:
    started = time.perf_counter()
    state = _state(request)
    try:
        call = await _checked_call(request, api)
    except _Refusal as err:
        return _refused(request, err)
    if call.prepared is not None and not call.control.no_cache:
        try:
            hit = await state.cache.alookup_prepared(
                call.prepared.key, threshold=call.threshold, max_age=call.control.max_age
            )
        except BscError as err:  # the embedder is down, a stored answer unreadable: ask upstream
            logger.warning("bsc proxy: cache lookup failed, asking upstream: %s", err)
            hit = None
        if hit is not None:
            headers = {"X-Bsc-Cache": "hit", "X-Bsc-Similarity": f"{hit.similarity:.4f}", "X-Bsc-Entry": str(hit.id)}
            try:
                answer = policy.replay(
                    api, hit.response, stream=call.request.stream, include_usage=call.request.include_usage
                )
                body = policy.sse(api, answer) if call.request.stream else None
            except Exception as err:  # an entry that cannot be replayed (stored by another program): a miss
                logger.warning("bsc proxy: entry %d cannot be replayed, asking upstream: %s", hit.id, err)
            else:
                state.metrics.done("hit", started)
                if body is not None:
                    return Response(body, 200, headers=headers, media_type="text/event-stream")
                return JSONResponse(answer, headers=headers)
    result = "miss" if call.prepared is not None else "bypass"
    if call.bypass is not None:
        logger.debug("bsc proxy: %s request not cached: %s", api, call.bypass)
    path = "/chat/completions" if api == "chat" else "/responses"
    try:
        response = await _send(state, request, path, call.body, stream=call.request.stream)
    except _Refusal as err:
        state.metrics.done(result, started)
        return err.response(**{"X-Bsc-Cache": result})

    if not call.request.stream or response.status_code != 200:
        try:
            content = await response.aread()
        except httpx.HTTPError:
            state.metrics.upstream_errors.labels("broken").inc()
            state.metrics.done(result, started)
            return _error(502, "the upstream API broke off its answer", "upstream_error", "upstream_unreachable")
        finally:
            await response.aclose()
        if response.status_code == 200 and call.prepared is not None:
            try:
                answer_json: Any = json.loads(content)
            except (ValueError, RecursionError):
                answer_json = None
            answer = policy.storable(api, answer_json)
            if answer is not None:
                await _store(state, call, answer)
        state.metrics.done(result, started)
        return _passed_back(response, content, **{"X-Bsc-Cache": result})

    state.metrics.done(result, started)
    headers = {**_kept(response), "X-Bsc-Cache": result, "Cache-Control": "no-cache"}
    media = response.headers.get("content-type", "text/event-stream")
    return StreamingResponse(_relay(state, call, response), 200, headers=headers, media_type=media)


async def _store(state: _State, call: _Call, answer: Mapping[str, Any]) -> None:
    if call.prepared is None:
        return
    try:
        await policy.astore(state.cache, call.prepared, answer, ttl=call.ttl, tags=call.tags)
        state.metrics.stored.inc()
    except Exception as err:  # a good answer is still delivered when it cannot be stored
        logger.warning("bsc proxy: answer not cached: %s", err)


_FINAL_EVENTS = frozenset({b"[DONE]"})
_RESPONSE_ENDS = ("response.completed", "response.failed", "response.incomplete", "error")


async def _relay(state: _State, call: _Call, response: httpx.Response) -> AsyncIterator[bytes]:
    """Passes the upstream's events through as they come and keeps their data. The answer is
    stored when the stream ends complete (chat: ``[DONE]`` with every choice finished;
    responses: ``response.completed``), before that last event is passed on: a client stops
    reading there and its disconnect would cancel anything after it. (The store is shielded
    from that cancellation.)"""
    seen: list[dict[str, Any]] = []
    pending = b""
    done = call.prepared is None
    try:
        async for block in response.aiter_bytes():  # decoded, if the upstream compressed it
            if not done:
                pending, done = _collect(call.api, pending + block, seen)
                if done:
                    answer = policy.stored_from_events(call.api, seen)
                    if answer is not None:
                        await _shielded(state, _store(state, call, answer))
                    seen.clear()
            yield block
    except httpx.HTTPError as err:
        state.metrics.upstream_errors.labels("broken").inc()
        logger.warning("bsc proxy: the upstream broke off a stream: %s", type(err).__name__)
        # An error event the OpenAI SDKs raise as an APIError: the client sees the stream is cut.
        error = {"message": "the upstream API broke off its answer", "type": "upstream_error"}
        event = {"type": "error", "error": {**error, "code": "upstream_unreachable"}, **error}
        prefix = b"event: error\n" if call.api == "responses" else b""
        yield b"\n\n" + prefix + b"data: " + json.dumps(event).encode() + b"\n\n"
    finally:
        await response.aclose()


def _collect(api: policy.API, pending: bytes, seen: list[dict[str, Any]]) -> tuple[bytes, bool]:
    """Reads the complete lines of ``pending`` as server-sent events into ``seen``: the rest
    (an incomplete line), and whether the stream has ended (chat: ``[DONE]``; responses: its
    last event)."""
    *lines, rest = pending.split(b"\n")
    for line in lines:
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data in _FINAL_EVENTS:
            return rest, True
        try:
            event = json.loads(data)
        except (ValueError, RecursionError):
            continue
        if isinstance(event, dict):
            seen.append(event)
            if api == "responses" and event.get("type") in _RESPONSE_ENDS:
                return rest, True
    return rest, False


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``."""
    return await _cached_route(request, "chat")


async def responses(request: Request) -> Response:
    """``POST /v1/responses``."""
    return await _cached_route(request, "responses")


# -- embeddings and pass-through --------------------------------------------------------------


async def embeddings(request: Request) -> Response:
    """``POST /v1/embeddings``: from the exact-match cache, or upstream (and kept when it succeeds)."""
    state = _state(request)
    try:
        _check_headers(request)
        namespace = _namespace(request, state.settings)
        control = _control(request)
        body = await _read_body(request, state.settings)
        payload = _parse_json(body)
    except _Refusal as err:
        return _refused(request, err)
    key = None
    if state.embeddings is not None and not control.no_store:
        # Same namespace, model, input and parameters (``user`` is attribution only).
        request_key = {k: v for k, v in payload.items() if k != "user"}
        try:
            key = hashlib.sha256(f"{namespace}\x00{canonical(request_key, 'embeddings request')}".encode()).digest()
        except (TypeError, ValueError):
            key = None
    if key is not None and not control.no_cache and state.embeddings is not None:
        found = state.embeddings.get(key)
        if found is not None:
            state.metrics.embeddings.labels("hit").inc()
            return Response(found[0], 200, media_type=found[1], headers={"X-Bsc-Cache": "hit"})
    result = "miss" if key is not None else "bypass"
    try:
        response = await _send(state, request, "/embeddings", body, stream=False)
    except _Refusal as err:
        return err.response(**{"X-Bsc-Cache": result})
    try:
        content = await response.aread()
    except httpx.HTTPError:
        state.metrics.upstream_errors.labels("broken").inc()
        return _error(502, "the upstream API broke off its answer", "upstream_error", "upstream_unreachable")
    finally:
        await response.aclose()
    media = response.headers.get("content-type", "application/json")
    if key is not None and state.embeddings is not None and response.status_code == 200 and "json" in media:
        state.embeddings.put(key, content, media, namespace)
    state.metrics.embeddings.labels(result).inc()
    return _passed_back(response, content, **{"X-Bsc-Cache": result})


def _passthrough_path(request: Request) -> str:
    """The path after ``/v1`` as the client sent it (still percent-encoded: ``%2F`` stays
    ``%2F``), refused when it could leave the upstream's base: a dot segment, plain or encoded."""
    raw = bytes(request.scope.get("raw_path") or request.url.path.encode()).split(b"?", 1)[0]
    if not raw.startswith(b"/v1/"):
        raise _Refusal(400, "a pass-through path must start with /v1/", "invalid_path")
    tail = raw[3:].decode("latin-1")
    # Decoded, an encoded slash could make a dot segment of its own ("..%2F.."): those count too.
    if any(part in (".", "..") for part in urllib.parse.unquote(tail).split("/")):
        raise _Refusal(400, "a pass-through path may not hold . or .. segments", "invalid_path")
    return tail


async def passthrough(request: Request) -> Response:
    """Any other ``/v1/...`` route: method, headers (but hop-by-hop ones), query, body and the
    answer (status, headers, bytes, compressed or not) passed on unchanged and streamed both
    ways; never cached."""
    state = _state(request)
    try:
        _check_headers(request)
    except _Refusal as err:
        return _refused(request, err)
    try:
        path = _passthrough_path(request)
    except _Refusal as err:
        return _refused(request, err)
    has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
    body = _idle_limited(request.stream(), state.settings.body_timeout) if has_body else None
    try:
        response = await _send(state, request, path, body, stream=True, method=request.method, passthrough=True)
    except _Refusal as err:
        return _refused(request, err) if err.status < 500 else err.response()
    state.metrics.passed.inc()
    # The bytes are relayed as they came (aiter_raw), so Content-Length and Content-Encoding hold.
    # Date and Server are the proxy's own (uvicorn sets them; a second one would be invalid).
    dropped = _HOP_BY_HOP | _connection_listed(response.headers.get_list("connection")) | {"date", "server"}
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() not in dropped]

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for block in response.aiter_raw():
                yield block
        except httpx.HTTPError as err:
            state.metrics.upstream_errors.labels("broken").inc()
            logger.warning("bsc proxy: the upstream broke off an answer: %s", type(err).__name__)
            # The client must see the answer is cut short: abort the connection (not a clean end).
            raise _UpstreamBroke(f"the upstream broke off its answer: {type(err).__name__}") from None
        finally:
            await response.aclose()

    out = StreamingResponse(relay(), response.status_code)
    out.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return out


# -- service routes ---------------------------------------------------------------------------


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok", "entries": len(_state(request).cache)})


async def prometheus(request: Request) -> Response:
    registry = _state(request).metrics.registry
    return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _admin(request: Request) -> _State:
    """The state, for a caller holding the admin token: the admin surface does not exist
    without ``admin_token`` (404), and answers 401 without the right ``X-Bsc-Admin-Token``
    (compared in constant time; an API key alone never opens it)."""
    state = _state(request)
    token = state.settings.admin_token
    if token is None:
        raise _Refusal(404, f"no route {request.url.path}", "not_found")
    given = request.headers.get("x-bsc-admin-token", "")
    if not hmac.compare_digest(given.encode("latin-1"), token.encode("utf-8")):
        raise _Refusal(
            401, "the admin routes need the X-Bsc-Admin-Token header", "invalid_admin_token", "authentication_error"
        )
    return state


def _admin_route(handler: Callable[[Request, _State], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """An admin route: the token checked first (:func:`_admin`), refusals answered as 4xx."""

    @functools.wraps(handler)
    async def route(request: Request) -> Response:
        try:
            return await handler(request, _admin(request))
        except _Refusal as err:
            return _refused(request, err)

    return route


@_admin_route
async def admin_stats(request: Request, state: _State) -> Response:
    """``GET /admin/stats``: the cache's ``stats()`` as JSON, and the embeddings cache's size."""
    stats = state.cache.stats().as_dict()
    embeddings = state.embeddings
    extra = {
        "embeddings_cached": len(embeddings) if embeddings else 0,
        "embeddings_bytes": embeddings.bytes if embeddings else 0,
    }
    return JSONResponse({**stats, **extra})


def _entry_id(request: Request) -> int:
    raw = request.path_params["entry_id"]
    if not _DIGITS.fullmatch(raw) or len(raw) > 19 or int(raw) >= 2**63:
        raise _Refusal(
            400, f"an entry id is a non-negative integer (X-Bsc-Entry), got {raw[:40]!r}", "invalid_entry_id"
        )
    return int(raw)


async def _remove_entry(request: Request, remove: Callable[[int], bool]) -> Response:
    entry_id = _entry_id(request)
    if not await asyncio.to_thread(remove, entry_id):
        raise _Refusal(404, f"no entry {entry_id}", "entry_not_found")
    return JSONResponse({"id": entry_id, "removed": True})


@_admin_route
async def admin_mark_wrong(request: Request, state: _State) -> Response:
    """``POST /admin/entries/{id}/wrong``: the entry is never served again; counted as a false-hit report."""
    return await _remove_entry(request, state.cache.mark_wrong)


@_admin_route
async def admin_delete_entry(request: Request, state: _State) -> Response:
    """``DELETE /admin/entries/{id}``."""
    return await _remove_entry(request, state.cache.delete)


@_admin_route
async def admin_delete_namespace(request: Request, state: _State) -> Response:
    """``DELETE /admin/namespaces/{name}``: every entry stored in that namespace (its stored name,
    e.g. ``shared:team-a`` or ``key-<hash>:team-a``; docs/PROXY.md)."""
    name = request.path_params["name"]
    if not NAMESPACE_PATTERN.fullmatch(name):
        raise _Refusal(400, f"{name!r} is not a namespace name", "invalid_namespace")
    deleted = await asyncio.to_thread(state.cache.delete_namespace, name)
    if state.embeddings is not None:
        state.embeddings.delete_namespace(name)
    return JSONResponse({"namespace": name, "deleted": deleted})


@_admin_route
async def admin_delete_tag(request: Request, state: _State) -> Response:
    """``DELETE /admin/tags/{tag}``: every entry stored with that tag (``X-Bsc-Tags``)."""
    tag = request.path_params["tag"]
    if not TAG_PATTERN.fullmatch(tag):
        raise _Refusal(400, f"{tag!r} is not a tag", "invalid_tag")
    return JSONResponse({"tag": tag, "deleted": await asyncio.to_thread(state.cache.delete_tag, tag)})


@_admin_route
async def admin_flush(request: Request, state: _State) -> Response:
    """``POST /admin/flush``: every entry of the cache and of the embeddings cache."""
    size = len(state.cache)
    await asyncio.to_thread(state.cache.clear)
    if state.embeddings is not None:
        state.embeddings.clear()
    return JSONResponse({"deleted": size})


async def _http_error(request: Request, exc: Exception) -> Response:
    """404, 405 and Starlette's other HTTP errors in the OpenAI format."""
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    headers = dict(exc.headers or {})
    return _error(
        exc.status_code, message.get(exc.status_code, str(exc.detail)), code=codes.get(exc.status_code), **headers
    )


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    state: _State = app.state.proxy
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    state.client = httpx.AsyncClient(timeout=httpx.Timeout(state.settings.timeout, connect=10.0), limits=limits)
    try:
        yield
    finally:
        client, state.client = state.client, None
        await client.aclose()
        if state.background:
            await asyncio.gather(*state.background, return_exceptions=True)
        if state.settings.close_cache:
            # Here, not after the server returns: uvicorn re-raises SIGTERM/SIGINT once it
            # has shut down, so code after it may never run.
            try:
                await asyncio.to_thread(state.cache.close)
            except Exception as err:
                state.final_save_failed += 1
                logger.error("bsc serve: the final save of the cache to %s failed: %s", state.cache.persist_path, err)


def create_app(
    cache: SemanticCache,
    upstream: str,
    *,
    timeout: float = 600.0,
    close_cache: bool = False,
    shared_namespaces: bool | Iterable[str] = False,
    admin_token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    cache_embeddings: bool = True,
    embeddings_cache_bytes: int = DEFAULT_EMBEDDINGS_CACHE_BYTES,
    allow_lax_threshold: bool = False,
) -> Starlette:
    """The proxy as an ASGI app.

    Args:
        cache: the :class:`~bsc.SemanticCache` answers come from.
        upstream: the base URL requests go to (e.g. ``http://127.0.0.1:11434/v1``; a request
            to ``/v1/X`` goes to ``upstream + /X``).
        timeout: seconds to wait for the upstream.
        close_cache: close the cache when the server shuts down (with a ``persist_path``, its
            last save), as ``bsc serve`` does; a failed save is logged and counted in
            ``app.state.proxy.final_save_failed``.
        shared_namespaces: which ``X-Bsc-Namespace`` names span API keys: ``False`` (none:
            every name lives within the caller's key), ``True`` (every name), or a collection
            of names. Only behind a gateway that decides who may send which name (docs/PROXY.md).
        admin_token: opens the ``/admin/`` routes to callers sending it in
            ``X-Bsc-Admin-Token``; without it they do not exist.
        max_body: the largest body read on the parsed routes (413 beyond it).
        body_timeout: seconds a request body may stall before a 408.
        cache_embeddings: answer ``/v1/embeddings`` from an exact-match cache of upstream answers.
        embeddings_cache_bytes: the most bytes of embeddings answers kept.
        allow_lax_threshold: let ``X-Bsc-Threshold`` be laxer than the cache's threshold.
    """
    if not isinstance(upstream, str):
        raise TypeError(f"upstream must be a URL string, got {type(upstream).__name__}")
    try:
        parsed = httpx.URL(upstream)
    except httpx.InvalidURL as err:
        raise ValueError(f"upstream must be an http:// or https:// URL, got {upstream!r}: {err}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"upstream must be an http:// or https:// URL, got {upstream!r}")
    for name, value in (("timeout", timeout), ("body_timeout", body_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    for name, value in (("max_body", max_body), ("embeddings_cache_bytes", embeddings_cache_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive number of bytes, got {value!r}")
    if not isinstance(cache, SemanticCache):
        raise TypeError(f"cache must be a bsc.SemanticCache, got {type(cache).__name__}")
    if admin_token is not None and (
        not isinstance(admin_token, str) or len(admin_token) < 16 or not admin_token.isascii()
    ):
        raise ValueError("admin_token must be an ASCII string of at least 16 characters")
    shared: bool | frozenset[str]
    if isinstance(shared_namespaces, bool):
        shared = shared_namespaces
    elif isinstance(shared_namespaces, str) or not isinstance(shared_namespaces, Iterable):
        raise TypeError("shared_namespaces must be a bool or a collection of namespace names")
    else:
        shared = frozenset(shared_namespaces)
        for name in shared:
            if not isinstance(name, str) or not NAMESPACE_PATTERN.fullmatch(name):
                raise ValueError(f"shared namespace {name!r} is not a valid namespace name")
    settings = ProxySettings(
        upstream=upstream,
        timeout=float(timeout),
        close_cache=bool(close_cache),
        shared_namespaces=shared,
        admin_token=admin_token,
        max_body=max_body,
        body_timeout=float(body_timeout),
        cache_embeddings=bool(cache_embeddings),
        embeddings_cache_bytes=embeddings_cache_bytes,
        allow_lax_threshold=bool(allow_lax_threshold),
    )
    state = _State(
        cache,
        settings,
        upstream.rstrip("/"),
        embeddings=_EmbeddingsCache(embeddings_cache_bytes) if cache_embeddings else None,
    )
    state.metrics = _Metrics(cache, state)
    state.upstream = httpx.URL(upstream).copy_with(query=None, fragment=None)
    every = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/responses", responses, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/{path:path}", passthrough, methods=every),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/admin/stats", admin_stats, methods=["GET"]),
        Route("/admin/entries/{entry_id}/wrong", admin_mark_wrong, methods=["POST"]),
        Route("/admin/entries/{entry_id}", admin_delete_entry, methods=["DELETE"]),
        Route("/admin/namespaces/{name:path}", admin_delete_namespace, methods=["DELETE"]),
        Route("/admin/tags/{tag:path}", admin_delete_tag, methods=["DELETE"]),
        Route("/admin/flush", admin_flush, methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=_lifespan, exception_handlers={HTTPException: _http_error})
    app.state.proxy = state
    app.state.cache = cache
    app.state.metrics = state.metrics
    return app
