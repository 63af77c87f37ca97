"""One cache shared by many processes: entries in Redis, lookups from a replica in memory.

``SemanticCache(shared="redis://localhost:6379/0")`` (or ``BinarySemanticCache``,
``CachedOpenAI``, ``bsc serve --redis``) makes every process that names the same Redis and key
prefix share one cache. See docs/SHARED.md for the design, the fault policy and the numbers.
Needs the ``redis`` extra: ``pip install "bsc[redis]"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bsc.errors import SharedStoreError
from bsc.shared.config import Shared, redact

if TYPE_CHECKING:
    from bsc.shared.engine import SharedEngine

__all__ = ["Shared", "SharedEngine", "SharedStoreError", "check_reachable", "connect", "redact"]


def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError('a shared cache needs redis-py: pip install "bsc[redis]" (or: uv add "bsc[redis]")') from None
    return redis


def connect(shared: str | Shared, *, code_bits: int, max_entries: int, fingerprint: str) -> SharedEngine:
    """A :class:`~bsc.shared.engine.SharedEngine` for ``shared`` (a URL or :class:`Shared`),
    synced with Redis before it returns. Raises ``SharedStoreError`` when Redis cannot be reached
    and ``EncoderMismatchError`` when the shared cache holds another encoder's codes."""
    config = Shared.parse(shared)
    _redis_module()
    from bsc.shared.engine import SharedEngine

    return SharedEngine(config, code_bits=code_bits, max_entries=max_entries, fingerprint=fingerprint)


def check_reachable(shared: str | Shared) -> None:
    """Raises ``SharedStoreError`` (without the credentials) unless the Redis of ``shared``
    answers a PING with them: ``bsc serve --workers N`` checks once before starting N workers."""
    config = Shared.parse(shared)
    redis = _redis_module()
    cls = redis.RedisCluster if config.cluster else redis.Redis
    try:
        client = cls.from_url(config.url, socket_timeout=config.timeout, socket_connect_timeout=config.timeout)
    except redis.RedisError as err:
        raise SharedStoreError(f"cannot reach the shared store {config.safe_url}: {err}") from None
    try:
        client.ping()
    except redis.RedisError as err:
        raise SharedStoreError(f"cannot reach the shared store {config.safe_url}: {err}") from None
    finally:
        client.close()


def __getattr__(name: str) -> object:
    if name == "SharedEngine":
        from bsc.shared.engine import SharedEngine

        return SharedEngine
    raise AttributeError(name)
