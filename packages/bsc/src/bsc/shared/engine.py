"""``SharedEngine``: an :class:`~bsc.engine.Engine` whose entries live in Redis and are answered
from a replica in this process's memory.

- **Writes** (put, delete, delete by namespace, purge, clear) run one Lua script in Redis, which
  changes the entries and appends the change to the shard's stream atomically, then apply the
  change to the local replica in stream order.
- **Lookups** never touch the network: they scan the local native store. A hit's id is noted
  and the noted ids are sent to Redis once a second (the shared LRU order).
- **Replication**: one thread per shard tails the stream (``XREAD BLOCK``) and applies the
  changes of every process in order. A replica that misses records (the stream was trimmed
  past it, or Redis lost its data) rebuilds itself from the entries.
- **Faults**: while Redis is unreachable, lookups go on from the replica; writes are queued (and
  replayed in order on reconnect) or dropped, per :attr:`Shared.on_disconnect`, and counted.
  A replayed put is applied once: Redis keeps, per writer, the last entry id it stored.

Entry ids are chosen by the writer: ``writer number << 24 | counter``, the writer number taken
from a Redis counter when the engine starts (and again after 2**24 puts). They are the same in
every process and stay below 2**53 (exact in Lua's numbers).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from bsc import engine as engines
from bsc.engine import Codes, EntryTuple, Namespace
from bsc.errors import EncoderMismatchError, SharedStoreError
from bsc.shared import scripts
from bsc.shared.config import Shared

logger = logging.getLogger("bsc")

__all__ = ["SharedEngine", "SharedStoreError"]

_COUNTER_BITS = 24
_MAX_NAMESPACE = 1024
_PURGE_EVERY = 10.0
#: How often the keeper checks that Redis still holds this cache (a FLUSHALL, a restart that lost
#: the last writes) and re-measures the clock offset, in seconds.
_CHECK_EVERY = 5.0
_QUEUED, _DROPPED = "queued", "dropped"
_TOUCH_EVERY = 1.0


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterDownError, OSError)


def _namespace_bytes(namespace: Namespace) -> bytes:
    if namespace is None:
        return b""
    if isinstance(namespace, str):
        try:
            raw = namespace.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("namespace contains a lone surrogate; it must be valid Unicode") from None
    elif isinstance(namespace, bytes):
        raw = namespace
    else:
        raise TypeError(f"namespace must be str, bytes or None, got {type(namespace).__name__}")
    if len(raw) > _MAX_NAMESPACE:
        raise ValueError(f"namespace is {len(raw)} bytes long; at most {_MAX_NAMESPACE} are allowed")
    return raw


class _Shard:
    """One shard's keys and replication position."""

    def __init__(self, prefix: str, index: int) -> None:
        self.index = index
        self.tag = f"{{{prefix}:{index}}}"
        t = self.tag
        self.keys = [f"{t}:ids", f"{t}:exp", f"{t}:keys", f"{t}:writers", f"{t}:seq", f"{t}:log"]
        self.log = self.keys[5]
        # Applying changes: the tailer, writers applying their own change, a resync.
        self.apply_lock = threading.RLock()
        # Sending writes: ids reach Redis in the order they were chosen (so a replay is detected).
        self.write_lock = threading.Lock()
        self.last_q = 0
        self.last_id = "0-0"
        self.touched: dict[int, int] = {}


class SharedEngine:
    """A cache store shared through Redis (see the module docstring). Build it with
    :func:`bsc.shared.connect`; it implements :class:`bsc.engine.Engine`."""

    def __init__(self, config: Shared, *, code_bits: int, max_entries: int, fingerprint: str) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._config = config
        self._code_bits = int(code_bits)
        self._words = self._code_bits // 64
        self._fingerprint = fingerprint
        self._errors = _redis_errors()
        options: dict[str, Any] = {
            "socket_timeout": config.timeout,
            "socket_connect_timeout": config.timeout,
            "retry": Retry(NoBackoff(), 0),
            **config.redis_options,
        }
        self._redis_module = redis
        self._client_options = options
        self._client = self._new_client()
        self._scripts = {
            name: self._client.register_script(scripts.COMMON + getattr(scripts, name))
            for name in ("PUT", "DELETE", "NAMESPACE", "PURGE", "FLUSH", "HEAD")
        }
        self._scripts["WRITER"] = self._client.register_script(scripts.WRITER)
        self._shards = [_Shard(config.prefix, i) for i in range(config.shards)]
        self._only_shard = self._shards[0] if config.shards == 1 else None
        self._meta_key = f"{self._shards[0].tag}:meta"
        try:
            self._capacity, self._epoch = self._join(max_entries)
            self._writer = self._new_writer()
        except self._errors as err:
            raise SharedStoreError(f"cannot reach the shared store {config.safe_url}: {err}") from None
        self._per_shard = math.ceil(self._capacity / config.shards)
        self._counter = 0
        self._ids_lock = threading.Lock()
        # The replica: a native store and the two id maps (shared id <-> local id).
        self._local = engines.create(self._code_bits, self._per_shard * config.shards + 1024, fingerprint)
        self._lid_of: dict[int, int] = {}
        self._gid_of: dict[int, int] = {}
        # Redis's clock minus ours, in ms (expiry times are Redis's).
        self._offset_ms = 0.0
        self._offset_int = 0
        self._listeners: list[Callable[[int, bytes], None]] = []
        self._notes: deque[tuple[int, bytes]] = deque()
        self._notes_lock = threading.Lock()
        self._undelivered = 0
        # Entries evicted by the shared capacity rule, as this replica removed them.
        self._evictions = 0
        self._queue: deque[tuple[Any, ...]] = deque()
        self._queue_lock = threading.Lock()
        self._up = True
        self._counts = {"writes_queued": 0, "writes_dropped": 0, "writes_replayed": 0, "resyncs": 0, "disconnects": 0}
        self._stop = threading.Event()
        try:
            for shard in self._shards:
                self._resync(shard)
        except self._errors as err:
            raise SharedStoreError(f"cannot reach the shared store {config.safe_url}: {err}") from None
        self._threads = [
            threading.Thread(target=self._tail, args=(shard,), name=f"bsc-shared-tail-{shard.index}", daemon=True)
            for shard in self._shards
        ]
        self._threads.append(threading.Thread(target=self._keep, name="bsc-shared-keeper", daemon=True))
        for thread in self._threads:
            thread.start()

    # -- connection -----------------------------------------------------------------------

    def _new_client(self) -> Any:
        redis = self._redis_module
        if self._config.cluster:
            return redis.RedisCluster.from_url(self._config.url, **self._client_options)
        return redis.Redis.from_url(self._config.url, **self._client_options)

    def _join(self, max_entries: int) -> tuple[int, str]:
        """Checks (or, for the first process, records) the cache's settings in Redis: the
        encoder, the code length and the capacity every process evicts by."""
        import secrets

        version = self._client.info("server").get("redis_version", "0")
        if tuple(int(p) for p in str(version).split(".")[:2]) < (6, 2):
            raise SharedStoreError(f"the shared store runs Redis {version}; bsc needs 6.2 or later")
        settings = {
            "fingerprint": self._fingerprint,
            "code_bits": str(self._code_bits),
            "max_entries": str(int(max_entries)),
            "shards": str(self._config.shards),
            "epoch": secrets.token_hex(8),
        }
        for name, value in settings.items():
            self._client.hsetnx(self._meta_key, name, value)
        stored = {k.decode(): v.decode() for k, v in self._client.hgetall(self._meta_key).items()}
        if stored.get("fingerprint") != self._fingerprint or stored.get("code_bits") != str(self._code_bits):
            raise EncoderMismatchError(
                f"the shared cache {self._config.safe_url} (prefix {self._config.prefix!r}) holds codes of encoder "
                f"{stored.get('fingerprint')!r} ({stored.get('code_bits')} bits), not {self._fingerprint!r} "
                f"({self._code_bits} bits)"
            )
        if stored.get("shards") != str(self._config.shards):
            raise SharedStoreError(
                f"the shared cache was created with shards={stored.get('shards')}, not {self._config.shards}"
            )
        capacity = int(stored["max_entries"])
        if capacity != int(max_entries):
            logger.warning(
                "bsc: the shared cache holds at most %d entries (set by the process that created it); "
                "max_entries=%d is ignored",
                capacity,
                max_entries,
            )
        return capacity, stored["epoch"]

    def _new_writer(self, floor: int = 0) -> int:
        """A writer number no other process has: the counter, raised first to ``floor`` and to
        the clock in tens of seconds (so that after Redis lost its data, new numbers do not
        collide with those of processes still running), plus one."""
        key = f"{self._shards[0].tag}:writer"
        number = int(
            self._scripts["WRITER"](keys=[key], args=[max(floor, int(time.time() // 10))], client=self._client)
        )
        if number >= 1 << (53 - _COUNTER_BITS):
            raise SharedStoreError("the shared cache has used up its writer numbers; flush its keys")
        return number

    def _next_id(self) -> int:
        with self._ids_lock:
            self._counter += 1
            if self._counter >= 1 << _COUNTER_BITS:
                self._writer = self._new_writer()  # raises while Redis is down: the write fails
                self._counter = 1
            return (self._writer << _COUNTER_BITS) | self._counter

    def _shard_of(self, namespace: bytes) -> _Shard:
        if len(self._shards) == 1:
            return self._shards[0]
        return self._shards[zlib.crc32(namespace) % len(self._shards)]

    # -- the Engine protocol: reads (local) ------------------------------------------------

    @property
    def code_bits(self) -> int:
        return self._code_bits

    @property
    def max_entries(self) -> int:
        return self._capacity

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def meta(self) -> bytes:
        return b""

    @property
    def config(self) -> Shared:
        return self._config

    def __len__(self) -> int:
        return len(self._local)

    def __contains__(self, id: int, /) -> bool:
        lid = self._lid_of.get(id)
        return lid is not None and lid in self._local

    def _out(self, found: EntryTuple | None) -> EntryTuple | None:
        """An entry with its shared id (``None`` for an entry applied to the store this instant,
        its ids not yet mapped: the lookup then misses rather than wait for the apply)."""
        if found is None:
            return None
        gid = self._gid_of.get(found[0])
        return None if gid is None else (gid, *found[1:])

    def _used(self, found: EntryTuple | None, namespace: Namespace) -> EntryTuple | None:
        """:meth:`_out` for a hit, noting its use for the shared LRU order (sent once a second)."""
        if found is None:
            return None
        gid = self._gid_of.get(found[0])
        if gid is None:
            return None
        shard = self._only_shard or self._shard_of(_namespace_bytes(namespace))
        shard.touched[gid] = time.time_ns() // 1_000_000 + self._offset_int
        return (gid, *found[1:])

    def lookup(self, code: Codes, max_distance: int | None = None, *, namespace: Namespace = None) -> EntryTuple | None:
        return self._used(self._local.lookup(code, max_distance, namespace=namespace), namespace)

    def lookup_nearest(
        self, code: Codes, max_distance: int | None = None, *, namespace: Namespace = None
    ) -> tuple[EntryTuple | None, int | None]:
        found, nearest = self._local.lookup_nearest(code, max_distance, namespace=namespace)
        if found is None:
            return None, nearest
        return self._used(found, namespace), nearest

    def lookup_key(self, key: int, *, namespace: Namespace = None) -> EntryTuple | None:
        return self._used(self._local.lookup_key(key, namespace=namespace), namespace)

    def lookup_id(self, id: int, *, namespace: Namespace = None) -> EntryTuple | None:
        lid = self._lid_of.get(id)
        if lid is None:
            return None
        return self._used(self._local.lookup_id(lid, namespace=namespace), namespace)

    def candidates(
        self, code: Codes, k: int | None = None, max_distance: int | None = None, *, namespace: Namespace = None
    ) -> tuple[list[EntryTuple], int | None]:
        found, nearest = self._local.candidates(code, k, max_distance, namespace=namespace)
        out = [entry for entry in map(self._out, found) if entry is not None]
        return out, nearest

    def peek(self, id: int) -> EntryTuple | None:
        lid = self._lid_of.get(id)
        return None if lid is None else self._out(self._local.peek(lid))

    def placement(self, id: int) -> tuple[bytes, float | None] | None:
        lid = self._lid_of.get(id)
        return None if lid is None else self._local.placement(lid)

    def namespaces(self) -> dict[bytes, int]:
        return self._local.namespaces()

    def lru_ids(self) -> npt.NDArray[np.int64]:
        gids = [self._gid_of.get(lid) for lid in self._local.lru_ids().tolist()]
        return np.array([g for g in gids if g is not None], dtype=np.int64)

    def stats(self) -> dict[str, int]:
        raw = dict(self._local.stats())
        raw["max_entries"] = self._capacity
        raw["evictions"] += self._evictions  # by the shared capacity rule, as applied here
        return raw

    def shared_stats(self) -> dict[str, int]:
        """The replication counters of this process: ``writes_queued`` / ``writes_dropped`` /
        ``writes_replayed`` (writes made while Redis was unreachable), ``queue`` (writes waiting
        now), ``resyncs`` (rebuilds of the replica), ``disconnects`` and ``connected`` (0/1)."""
        with self._queue_lock:
            queued = len(self._queue)
        return {**self._counts, "queue": queued, "connected": int(self._up)}

    def wait_synced(self, timeout: float = 10.0) -> bool:
        """Waits until this replica has applied every change Redis held when called (the writes
        of other processes made before it), and its listeners heard of them; whether it did
        within ``timeout`` seconds. Raises a
        ``redis`` connection error while Redis is unreachable."""
        targets = [(shard, int(self._client.get(shard.keys[4]) or 0)) for shard in self._shards]
        deadline = time.monotonic() + timeout
        while self._undelivered or any(shard.last_q < target for shard, target in targets):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True

    def add_listener(self, listener: Callable[[int, bytes], None]) -> None:
        """Call ``listener(id, payload)`` for every entry another process stores (as it reaches
        this replica)."""
        self._listeners.append(listener)

    def save(self, path: Any, meta: bytes | None = None) -> None:
        raise ValueError(
            "a shared cache is kept by Redis (make Redis persist it: appendonly yes); it cannot be saved to a file"
        )

    # -- writes (Redis first, then the replica) ---------------------------------------------

    def _check_code(self, code: Codes) -> bytes:
        array = np.asarray(code)
        if array.dtype != np.uint64:
            raise TypeError(f"code must be a numpy array of uint64, got dtype {array.dtype}")
        if array.shape != (self._words,):
            raise ValueError(
                f"code must have shape ({self._words},) for code_bits={self._code_bits}, got {array.shape}"
            )
        return array.astype("<u8", copy=False).tobytes()

    def put(
        self,
        code: Codes,
        payload: bytes,
        *,
        namespace: Namespace = None,
        ttl: float | None = None,
        key: int | None = None,
    ) -> int:
        raw_code = self._check_code(code)
        ns = _namespace_bytes(namespace)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
        deadline = None
        if ttl is not None:
            if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (math.isfinite(ttl) and ttl > 0):
                raise ValueError(f"ttl must be a positive number of seconds, got {ttl!r}")
            # The entry lives until the put's own time + ttl, however long it waits in the queue.
            deadline = time.monotonic() + ttl
        key_text = ""
        if key is not None:
            if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key < 1 << 64:
                raise ValueError(f"key must be in [0, 2**64), got {key!r}")
            key_text = str(key) if key else ""  # 0 is "no key", as for the native store
        shard = self._shard_of(ns)
        with shard.write_lock:
            gid = self._next_id()
            op = ("put", shard, gid, raw_code, ns, key_text, deadline, bytes(payload))
            if self._send_or_queue(op) is not None:
                return gid  # queued (visible once replayed) or dropped (counted)
            result = self._run(op)
        if isinstance(result, list):
            self._apply_own(shard, result, op)
        return gid

    def delete(self, id: int) -> bool:
        return self.delete_many([id]) > 0

    def delete_many(self, ids: Iterable[int]) -> int:
        """Remove several entries in one write per shard; how many were there."""
        by_shard: dict[int, list[str]] = {}
        for gid in ids:
            lid = self._lid_of.get(gid)
            placement = None if lid is None else self._local.placement(lid)
            targets = self._shards if placement is None else [self._shard_of(placement[0])]
            for shard in targets:
                by_shard.setdefault(shard.index, []).append(str(int(gid)))
        count = 0
        for index, batch in by_shard.items():
            shard = self._shards[index]
            count += self._write(shard, ("del", shard, batch), count=True)
        return count

    def delete_namespace(self, namespace: str | bytes) -> int:
        ns = _namespace_bytes(namespace)
        shard = self._shard_of(ns)
        return int(self._write(shard, ("ns", shard, ns), count=True))

    def purge_expired(self) -> int:
        return sum(int(self._write(shard, ("purge", shard, 100_000), count=True)) for shard in self._shards)

    def clear(self) -> None:
        for shard in self._shards:
            self._write(shard, ("flush", shard))

    def _write(self, shard: _Shard, op: tuple[Any, ...], *, count: bool = False) -> Any:
        """A write other than put: Redis first, then the replica. While Redis is unreachable,
        the change is made to the replica at once and queued (or dropped) for Redis."""
        with shard.write_lock:
            status = self._send_or_queue(op)
            result = self._run(op) if status is None else status
        if result == _QUEUED:
            # Made to this replica at once; to Redis (and the other replicas) once it is back.
            return self._apply_offline(op, count=count)
        if not isinstance(result, list):  # dropped: changed nowhere, the replica stays as Redis has it
            return 0 if count else False
        removed = self._apply_own(shard, result, op)
        return removed if count else bool(removed)

    def _send_or_queue(self, op: tuple[Any, ...]) -> str | None:
        """``None`` when ``op`` is to be sent now; else it was queued or dropped instead (Redis
        is down, or earlier writes still wait): ``_QUEUED`` or ``_DROPPED``. (Under the shard's
        write lock.)"""
        with self._queue_lock:
            if self._up and not self._queue:
                return None
            return self._enqueue(op)

    def _enqueue(self, op: tuple[Any, ...]) -> str:
        """Queues ``op`` (``_QUEUED``) or, under the drop policy or with the queue full, counts it
        as dropped (``_DROPPED``). (Under ``_queue_lock``.)"""
        if self._config.on_disconnect == "drop" or len(self._queue) >= self._config.queue_size:
            self._counts["writes_dropped"] += 1
            logger.warning("bsc: the shared store is unreachable; a %s was dropped", op[0])
            return _DROPPED
        self._queue.append(op)
        self._counts["writes_queued"] += 1
        return _QUEUED

    def _run(self, op: tuple[Any, ...]) -> list[Any] | str:
        """Sends one write; its script's answer, or ``_QUEUED``/``_DROPPED`` when Redis could not
        be reached. (Under the shard's write lock.)"""
        try:
            return self._call(op)
        except self._errors as err:
            self._went_down(err)
            with self._queue_lock:
                # First in the queue: every later write of this shard waits behind it.
                return self._enqueue(op)
        except self._redis_module.RedisError as err:  # refused (out of memory, a read-only replica, ...)
            raise SharedStoreError(f"the shared store {self._config.safe_url} refused a {op[0]}: {err}") from None

    def _call(self, op: tuple[Any, ...]) -> list[Any]:
        kind, shard = op[0], op[1]
        head = [shard.tag, self._config.stream_maxlen]
        if kind == "put":
            _, _, gid, raw_code, ns, key_text, deadline, payload = op
            ttl_ms = ""
            if deadline is not None:
                left = int((deadline - time.monotonic()) * 1000)
                if left <= 0:
                    return [0]  # expired while it waited for Redis: nothing to store
                ttl_ms = str(left)
            args = [
                *head,
                self._writer_of(gid),
                gid,
                raw_code,
                ns,
                key_text,
                ttl_ms,
                payload,
                self._per_shard,
            ]
            return list(self._scripts["PUT"](keys=shard.keys, args=args, client=self._client))
        if kind == "del":
            return list(self._scripts["DELETE"](keys=shard.keys, args=[*head, *op[2]], client=self._client))
        if kind == "ns":
            return list(self._scripts["NAMESPACE"](keys=shard.keys, args=[*head, op[2]], client=self._client))
        if kind == "purge":
            return list(self._scripts["PURGE"](keys=shard.keys, args=[*head, op[2]], client=self._client))
        if kind == "flush":
            return list(self._scripts["FLUSH"](keys=shard.keys, args=head, client=self._client))
        raise AssertionError(kind)

    @staticmethod
    def _writer_of(gid: int) -> int:
        return gid >> _COUNTER_BITS

    # -- applying changes to the replica ------------------------------------------------------

    def _apply_own(self, shard: _Shard, result: list[Any], op: tuple[Any, ...]) -> int:
        """Applies a write this process made, in stream order; how many entries it removed."""
        kind = op[0]
        if kind == "put":
            if int(result[0]) == 0:
                return 0  # a replayed put Redis had already applied
            q, stream_id, _now, expiry, evicted, gone = result[1:7]
            _, _, gid, raw_code, ns, key_text, _, payload = op
            record = {
                b"o": b"put",
                b"g": str(gid).encode(),
                b"c": raw_code,
                b"n": ns,
                b"k": key_text.encode(),
                b"x": str(expiry).encode(),
                b"p": payload,
                b"ev": _b(evicted),
                b"gn": _b(gone),
            }
        elif kind == "flush":
            q, stream_id = result[1], result[2]
            record = {b"o": b"flush"}
        else:
            gone = _b(result[0])
            if not gone:
                return 0
            q, stream_id = result[1], result[2]
            record = {b"o": b"del", b"gn": gone}
        removed = 0
        try:
            with shard.apply_lock:
                if int(q) == shard.last_q + 1:
                    removed = self._apply(shard, record)
                    shard.last_q, shard.last_id = int(q), _s(stream_id)
                elif int(q) > shard.last_q or _after(_s(stream_id), shard.last_id):
                    # Changes of other processes first (or Redis lost records: a resync).
                    self._catch_up(shard, _s(stream_id))
        except self._errors as err:
            # Redis applied the write; the tailer applies it here once Redis answers again.
            self._went_down(err)
        if kind == "flush":
            return int(result[0])
        if kind == "put":
            return removed
        return len(_b(result[0]).split(b","))

    def _apply_offline(self, op: tuple[Any, ...], *, count: bool) -> Any:
        """The replica's side of a write made while Redis is unreachable (puts wait for Redis)."""
        kind, shard = op[0], op[1]
        with shard.apply_lock:
            if kind == "del":
                removed = sum(self._drop(int(g)) for g in op[2])
            elif kind == "ns":
                ns = op[2]
                ids = [g for g, lid in list(self._lid_of.items()) if (self._local.placement(lid) or (None,))[0] == ns]
                removed = sum(self._drop(g) for g in ids)
            elif kind == "flush":
                removed = self._drop_shard(shard)
            else:  # purge: the native store's own expiry already hides expired entries
                removed = 0
        return removed if count else bool(removed)

    def _drop(self, gid: int) -> bool:
        """(Under an apply lock.)"""
        lid = self._lid_of.pop(gid, None)
        if lid is None:
            return False
        self._gid_of.pop(lid, None)
        return bool(self._local.delete(lid))

    def _drop_shard(self, shard: _Shard) -> int:
        if len(self._shards) == 1:
            count = len(self._lid_of)
            self._local.clear()
            self._lid_of.clear()
            self._gid_of.clear()
            return count
        ids = [g for g, lid in list(self._lid_of.items()) if self._shard_of_lid(lid) is shard]
        return sum(self._drop(g) for g in ids)

    def _shard_of_lid(self, lid: int) -> _Shard | None:
        placement = self._local.placement(lid)
        return None if placement is None else self._shard_of(placement[0])

    def _apply(self, shard: _Shard, record: dict[bytes, bytes]) -> int:
        """Applies one stream record to the replica (under the shard's apply lock); how many
        entries it removed."""
        kind = record.get(b"o")
        removed = 0
        if kind == b"put":
            evicted = record.get(b"ev") or b""
            if evicted:
                dropped = sum(self._drop(int(g)) for g in evicted.split(b","))
                self._evictions += dropped
                removed += dropped
            gone = record.get(b"gn") or b""
            if gone:
                removed += sum(self._drop(int(g)) for g in gone.split(b","))
            self._insert(
                int(record[b"g"]),
                record[b"c"],
                record[b"n"],
                record[b"k"],
                int(record[b"x"] or 0),
                record[b"p"],
                notify=True,
            )
        elif kind == b"del":
            ids = record.get(b"gn") or b""
            if ids:
                removed += sum(self._drop(int(g)) for g in ids.split(b","))
        elif kind == b"flush":
            removed += self._drop_shard(shard)
        else:
            logger.warning("bsc: unknown change %r in the shared cache's stream; ignored", kind)
        return removed

    def _insert(
        self, gid: int, raw_code: bytes, ns: bytes, key: bytes, expiry_ms: int, payload: bytes, *, notify: bool
    ) -> None:
        """(Under an apply lock.)"""
        if gid in self._lid_of:
            return
        ttl = None
        if expiry_ms:
            remaining = expiry_ms - (time.time() * 1000 + self._offset_ms)
            if remaining < 100:  # the native store keeps tenths of a second
                return
            ttl = remaining / 1000
        code = np.frombuffer(raw_code, dtype="<u8").astype(np.uint64, copy=False)
        lid = self._local.put(code, payload, namespace=ns, ttl=ttl, key=int(key) if key else None)
        self._lid_of[gid] = lid
        self._gid_of[lid] = gid
        if notify and self._listeners and self._writer_of(gid) != self._writer:
            # Delivered by the background threads (_deliver), never by a writer's thread nor
            # under an apply lock: a listener takes locks of its own (the tag index's), which a
            # writer may hold (TagIndex.clear) or whose holder may wait for this apply lock.
            with self._notes_lock:
                self._undelivered += 1
            self._notes.append((gid, payload))

    def _deliver(self) -> None:
        """Calls the listeners for the entries applied since (never under an apply lock)."""
        while self._notes:
            try:
                gid, payload = self._notes.popleft()
            except IndexError:  # another thread took the last one
                return
            try:
                for listener in self._listeners:
                    try:
                        listener(gid, payload)
                    except Exception:  # a listener's bug must not stop replication
                        logger.exception("bsc: a shared-cache listener failed")
            finally:
                with self._notes_lock:
                    self._undelivered -= 1

    def _records(self, shard: _Shard, records: list[tuple[Any, dict[bytes, bytes]]]) -> bool:
        """Applies records read from the stream in order (under the apply lock); ``False`` when
        one is missing before them (the replica must resync)."""
        for stream_id, record in records:
            q = int(record[b"q"])
            if q <= shard.last_q:
                if _after(_s(stream_id), shard.last_id):
                    # A newer record with an old number: Redis lost its last changes (a
                    # restart without them) and numbers again; what it holds now is the truth.
                    logger.warning("bsc: the shared store's change log went back; resyncing the replica")
                    return False
                continue
            if q != shard.last_q + 1:
                return False
            self._apply(shard, record)
            shard.last_q, shard.last_id = q, _s(stream_id)
        return True

    def _catch_up(self, shard: _Shard, until: str) -> None:
        """Reads and applies the stream up to ``until`` (under the apply lock)."""
        while True:
            records = self._client.xrange(shard.log, min="(" + shard.last_id, max=until, count=1000)
            if not records:
                if shard.last_id != until:
                    self._resync(shard)
                return
            if not self._records(shard, records):
                self._resync(shard)
                return
            if shard.last_id == until:
                return

    def _resync(self, shard: _Shard) -> None:
        """Rebuilds the shard's part of the replica from Redis: the entries, then the changes
        made while they were read (under the apply lock; lookups go on)."""
        with shard.apply_lock:
            self._counts["resyncs"] += 1
            for _attempt in range(5):
                q0, id0, now = self._scripts["HEAD"](
                    keys=shard.keys, args=[shard.tag, self._config.stream_maxlen], client=self._client
                )
                self._offset_ms = int(now) - time.time() * 1000
                self._offset_int = round(self._offset_ms)
                members = {int(m): s for m, s in self._client.zscan_iter(shard.keys[0], count=1000)}
                local = [
                    g
                    for g, lid in list(self._lid_of.items())
                    if len(self._shards) == 1 or self._shard_of_lid(lid) in (shard, None)
                ]
                for gid in local:
                    if gid not in members:
                        self._drop(gid)
                missing = sorted((g for g in members if g not in self._lid_of), key=members.__getitem__)
                for start in range(0, len(missing), 1000):
                    batch = missing[start : start + 1000]
                    pipe = self._client.pipeline(transaction=False)
                    for gid in batch:
                        pipe.hgetall(f"{shard.tag}:e:{gid}")
                    for gid, entry in zip(batch, pipe.execute(), strict=False):
                        if entry:
                            self._insert(
                                gid, entry[b"c"], entry[b"n"], entry[b"k"], int(entry[b"x"]), entry[b"p"], notify=True
                            )
                shard.last_q, shard.last_id = int(q0), _s(id0)
                records = self._client.xrange(shard.log, min="(" + shard.last_id, count=1000)
                ok = True
                while records and ok:
                    ok = self._records(shard, records)
                    if ok:
                        records = self._client.xrange(shard.log, min="(" + shard.last_id, count=1000)
                if ok:
                    break
            logger.info("bsc: shard %d of the shared cache synced: %d entries", shard.index, len(self._local))

    # -- background: tailing, reconnecting, replaying, touches, expiry -----------------------

    def _tail(self, shard: _Shard) -> None:
        client = None
        delay = 0.05
        while not self._stop.is_set():
            try:
                if client is None:
                    client = self._new_client()
                self._deliver()
                reply = client.xread({shard.log: shard.last_id}, count=1000, block=250)
                delay = 0.05
                if not reply:
                    continue
                records = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
                with shard.apply_lock:
                    if not self._records(shard, records):
                        self._resync(shard)
                self._deliver()
            except self._errors as err:
                self._went_down(err)
                client = None
                self._stop.wait(delay)
                delay = min(1.0, delay * 2)
            except Exception:
                logger.exception("bsc: the shared cache's replication thread failed; retrying")
                self._stop.wait(1.0)
        if client is not None:
            client.close()

    def _went_down(self, err: BaseException) -> None:
        with self._queue_lock:
            if self._up:
                self._up = False
                self._counts["disconnects"] += 1
                logger.warning(
                    "bsc: lost the shared store %s (%s); serving from the replica", self._config.safe_url, err
                )

    def _keep(self) -> None:
        last_touch = last_purge = last_check = time.monotonic()
        while not self._stop.wait(0.1):
            try:
                self._deliver()
                now = time.monotonic()
                if not self._up or self._queue or now - last_check >= _CHECK_EVERY:
                    last_check = now
                    self._reconnect()
                if now - last_touch >= _TOUCH_EVERY:
                    last_touch = now
                    self._send_touches()
                if now - last_purge >= _PURGE_EVERY and self._up and not self._queue:
                    last_purge = now
                    for shard in self._shards:
                        self._write(shard, ("purge", shard, 1000))
            except self._errors as err:
                self._went_down(err)
            except Exception:
                logger.exception("bsc: the shared cache's keeper thread failed; retrying")

    def _reconnect(self) -> None:
        """Checks Redis answers and still holds this cache (re-measuring the clock offset), then
        replays the queued writes. Every few seconds while connected, too: a FLUSHALL or a restart
        that lost the last changes leaves the connections up."""
        seconds, micros = self._client.time()
        self._offset_ms = seconds * 1000 + micros / 1000 - time.time() * 1000
        self._offset_int = round(self._offset_ms)
        epoch = self._client.hget(self._meta_key, "epoch")
        lost = epoch is None or epoch.decode() != self._epoch
        behind = [
            shard for shard in self._shards if int(self._client.get(shard.keys[4]) or 0) < shard.last_q
        ]  # Redis numbers changes from below what this replica applied: it lost some
        if lost:
            # Redis lost the cache (restarted without persistence, or flushed): what it holds now
            # (with this replica's queued writes) is the cache.
            logger.warning("bsc: the shared store %s lost its data; rebuilding the replica", self._config.safe_url)
            self._capacity, self._epoch = self._join(self._capacity)
            self._per_shard = math.ceil(self._capacity / len(self._shards))
            with self._ids_lock:
                self._writer = self._new_writer(self._writer + 1)
                self._counter = 0
            for shard in self._shards:
                with shard.apply_lock:
                    shard.last_q, shard.last_id = 0, "0-0"
        while True:
            with self._queue_lock:
                if not self._queue:
                    break
                op = self._queue[0]
            shard = op[1]
            with shard.write_lock:
                try:
                    result: list[Any] | None = self._call(op)  # raises while Redis is still down
                except self._redis_module.ResponseError as err:
                    logger.error("bsc: the shared store refused a queued %s (%s); dropped", op[0], err)
                    result = None
                with self._queue_lock:
                    self._queue.popleft()
                    self._counts["writes_replayed" if result is not None else "writes_dropped"] += 1
            if result is not None:
                self._apply_own(shard, result, op)
        for shard in self._shards if lost else behind:
            self._resync(shard)
        with self._queue_lock:
            if not self._up and not self._queue:
                self._up = True
                logger.warning("bsc: the shared store %s is back", self._config.safe_url)

    def _send_touches(self) -> None:
        for shard in self._shards:
            if not shard.touched:
                continue
            touched, shard.touched = shard.touched, {}
            pipe = self._client.pipeline(transaction=False)
            items = list(touched.items())
            for start in range(0, len(items), 1000):
                pipe.zadd(shard.keys[0], dict(items[start : start + 1000]), xx=True, gt=True)
            pipe.execute()

    def close(self) -> None:
        """Stops the background threads, sending the last touches and queued writes first (for
        up to ``timeout`` seconds)."""
        if self._stop.is_set():
            return
        deadline = time.monotonic() + self._config.timeout
        while self._queue and self._up and time.monotonic() < deadline:
            time.sleep(0.05)
        self._stop.set()
        with contextlib.suppress(*self._errors):
            self._send_touches()
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self._queue:
            logger.warning("bsc: %d writes to the shared store were not sent before close", len(self._queue))
        with contextlib.suppress(Exception):
            self._client.close()


def _after(a: str, b: str) -> bool:
    """Whether stream id ``a`` comes after stream id ``b`` (``"<ms>-<seq>"``)."""
    ams, _, aseq = a.partition("-")
    bms, _, bseq = b.partition("-")
    return (int(ams), int(aseq or 0)) > (int(bms), int(bseq or 0))


def _b(value: Any) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else str(value).encode()


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
