"""Persistence glue of the caches: the settings saved with a file, the encoder they name, the
temporary files a killed save leaves, and the background saver of ``persist_path``."""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from bsc._checks import MAX_TTL, check_ttl
from bsc_encoder import BinaryEncoder
from bsc_encoder.encoder import ALGORITHM_VERSION
from bsc_native import CorruptFileError, UnsupportedVersionError

logger = logging.getLogger("bsc")

__all__ = ["Persister", "encoder_from_meta", "read_meta", "remove_stale_temp_files"]


class Saveable(Protocol):
    """What the background saver saves: a cache with ``save(path)``."""

    def save(self, path: Path) -> None: ...


def remove_stale_temp_files(file: Path) -> None:
    """Removes the temporary files ``.<name>.<random>.tmp`` that killed saves of ``file`` left
    in its directory (the engine's random part is alphanumeric, so the temporary files of
    ``<name>.bak``, say, are not taken for those of ``<name>``)."""
    directory = file.parent
    prefix = f".{file.name}."
    try:
        names = glob.glob(f"{glob.escape(prefix)}*.tmp", root_dir=directory)
    except OSError:
        return
    for name in names:
        middle = name[len(prefix) : -len(".tmp")]
        if not (middle.isascii() and middle.isalnum()):
            continue
        stale = directory / name
        try:
            stale.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            logger.warning("bsc: could not remove %s, left by an interrupted save: %s", stale, err)
            continue
        logger.info("bsc: removed %s, left by an interrupted save of %s", stale, file)


def read_meta(file: Path, raw: bytes) -> dict[str, Any]:
    """The settings ``save`` wrote; a file without them (a bare ``CacheStore.save``) has none."""
    if not raw:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{file}: its settings are not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{file}: its settings are not a JSON object")
    threshold = meta.get("similarity_threshold", 0.80)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
        raise CorruptFileError(f"{file}: its similarity_threshold {threshold!r} is not a number in [-1, 1]")
    ttl = meta.get("default_ttl")
    if not isinstance(ttl, bool) and isinstance(ttl, (int, float)) and MAX_TTL < ttl < math.inf:
        # Saved before MAX_TTL existed (the engine cut such TTLs at about 13.6 years anyway).
        logger.warning("bsc: %s: its default_ttl %r is above MAX_TTL; using %d", file, ttl, MAX_TTL)
        meta["default_ttl"] = ttl = MAX_TTL
    try:
        meta["default_ttl"] = check_ttl(ttl)
    except (TypeError, ValueError) as err:
        raise CorruptFileError(f"{file}: its {err}") from None
    return meta


def encoder_from_meta(file: Path, meta: dict[str, Any], fingerprint: str) -> BinaryEncoder:
    """Rebuild the encoder named by the file, and check it against the file's fingerprint."""
    spec = meta.get("encoder")
    if not isinstance(spec, dict):
        raise CorruptFileError(f"{file}: it does not say which encoder made its codes; pass encoder=")
    version = spec.get("algorithm_version")
    if version != ALGORITHM_VERSION:
        raise UnsupportedVersionError(
            f"{file}: its codes were made by encoder algorithm version {version!r}; this bsc-encoder has "
            f"version {ALGORITHM_VERSION}: upgrade bsc-encoder"
        )
    try:
        encoder = BinaryEncoder(spec["embedding_dim"], spec["code_bits"], spec["seed"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptFileError(f"{file}: its encoder settings {spec!r} are invalid: {err}") from None
    if encoder.fingerprint() != fingerprint:
        raise CorruptFileError(
            f"{file}: its encoder settings give fingerprint {encoder.fingerprint()!r}, but its codes are "
            f"marked {fingerprint!r}"
        )
    return encoder


class Persister:
    """Saves a cache in a background thread after ``every`` puts or ``interval`` seconds with
    changes, whichever comes first, and once more when stopped. Failed saves are counted
    (``save_errors``, ``last_save_error``) and logged at ERROR."""

    def __init__(self, cache: Saveable, path: Path, every: int | None, interval: float | None) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every <= 0):
            raise ValueError(f"persist_every must be a positive int or None, got {every!r}")
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0
        ):
            raise ValueError(f"persist_interval must be a positive number of seconds or None, got {interval!r}")
        self.path = path
        self._cache = cache
        self._every = every
        self._interval = interval
        self._wake = threading.Condition()
        self._puts = 0
        self._changes = 0
        self._stopping = False
        self.save_errors = 0
        #: ``"<path>: <reason>"`` of the latest failed save (``None`` before any).
        self.last_save_error: str | None = None
        self._thread: threading.Thread | None = None
        if every is not None or interval is not None:
            self._thread = threading.Thread(target=self._run, name=f"bsc-persist:{path.name}", daemon=True)
            self._thread.start()
        # A program that ends without close() still saves its last changes (not on a crash or
        # os._exit: the background saves cover those).
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):  # counted and logged by _save
            self.stop()

    def _save(self) -> None:
        """Saves the cache; a failure is counted and logged (path and reason in one ERROR line,
        the traceback at DEBUG), then raised."""
        try:
            self._cache.save(self.path)
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            with self._wake:
                self.save_errors += 1
                self.last_save_error = f"{self.path}: {reason}"
            logger.error("bsc: saving the cache to %s failed: %s", self.path, reason)
            logger.debug("bsc: the failed save of %s", self.path, exc_info=True)
            raise

    def changed(self, put: bool = False) -> None:
        with self._wake:
            self._changes += 1
            if put:
                self._puts += 1
                if self._every is not None and self._puts >= self._every:
                    self._wake.notify()

    def _due(self) -> bool:
        return self._stopping or (self._every is not None and self._puts >= self._every)

    def _run(self) -> None:
        while True:
            with self._wake:
                deadline = None if self._interval is None else time.monotonic() + self._interval
                while not self._due():
                    timeout = None if deadline is None else deadline - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        break
                    self._wake.wait(timeout)
                if self._stopping:
                    return
            self._save_if_changed()

    def _save_if_changed(self) -> None:
        with self._wake:
            changes, self._changes, self._puts = self._changes, 0, 0
        if not changes:
            return
        try:
            self._save()
        except Exception:
            # Keep the count so the next round tries again; the file on disk is the last
            # complete save.
            with self._wake:
                self._changes += changes

    def stop(self) -> None:
        atexit.unregister(self._at_exit)
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        with self._wake:
            changes, self._changes = self._changes, 0
        if changes:
            self._save()
