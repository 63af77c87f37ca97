"""Client-side rate limiting: requests per minute and tokens per minute, sync and async.

Two token buckets share one monotonic clock. A caller asks for one request and an estimate of its
tokens; it waits until both buckets hold enough, then takes them. When the server reports the
real token count, :meth:`RateLimiter.settle` corrects the tokens bucket by the difference, so an
estimate that was too low or too high does not drift the budget.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """At most ``requests_per_minute`` requests and ``tokens_per_minute`` tokens per minute.

    ``None`` disables a limit. Buckets start full, so a burst of up to one minute's budget goes
    out at once and the rate then settles at the limit. Safe to share between threads; the async
    methods are safe to share between tasks of one event loop (and with threads).
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        for name, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{name} must be a positive number or None, got {value!r}")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._requests = float(requests_per_minute or 0)
        self._tokens = float(tokens_per_minute or 0)
        self._last = clock()
        #: Seconds callers have spent waiting for the limiter, in total.
        self.waited_seconds = 0.0

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._last = now
        if self.requests_per_minute:
            self._requests = min(self.requests_per_minute, self._requests + elapsed * self.requests_per_minute / 60)
        if self.tokens_per_minute:
            self._tokens = min(self.tokens_per_minute, self._tokens + elapsed * self.tokens_per_minute / 60)

    def _try_take(self, tokens: int) -> float:
        """Take one request and ``tokens`` if both are there and return 0; else the seconds to wait."""
        with self._lock:
            self._refill(self._clock())
            # A request larger than the whole per-minute budget waits for a full bucket, then goes.
            need_tokens = min(float(tokens), float(self.tokens_per_minute or 0))
            wait = 0.0
            if self.requests_per_minute and self._requests < 1:
                wait = max(wait, (1 - self._requests) * 60 / self.requests_per_minute)
            if self.tokens_per_minute and self._tokens < need_tokens:
                wait = max(wait, (need_tokens - self._tokens) * 60 / self.tokens_per_minute)
            if wait > 0:
                return wait
            if self.requests_per_minute:
                self._requests -= 1
            if self.tokens_per_minute:
                self._tokens -= tokens
            return 0.0

    def acquire(self, tokens: int = 0) -> float:
        """Block until one request of ``tokens`` tokens may go; return the seconds waited."""
        waited = 0.0
        while (wait := self._try_take(tokens)) > 0:
            self._sleep(wait)
            waited += wait
        self._add_wait(waited)
        return waited

    async def aacquire(self, tokens: int = 0) -> float:
        """Async :meth:`acquire`: waits with ``asyncio.sleep``, never blocking the loop."""
        waited = 0.0
        while (wait := self._try_take(tokens)) > 0:
            await asyncio.sleep(wait)
            waited += wait
        self._add_wait(waited)
        return waited

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the real token count of a request is known."""
        if self.tokens_per_minute:
            with self._lock:
                self._tokens = min(float(self.tokens_per_minute), self._tokens + estimated - actual)

    def _add_wait(self, waited: float) -> None:
        if waited:
            with self._lock:
                self.waited_seconds += waited
