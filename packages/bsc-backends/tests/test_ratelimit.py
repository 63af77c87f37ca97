from __future__ import annotations

import asyncio

import pytest

from bsc_backends import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_requests_per_minute_spaces_requests_after_the_burst():
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=60, tokens_per_minute=None, clock=clock, sleep=clock.sleep)
    for _ in range(60):
        assert limiter.acquire() == 0  # the bucket starts full
    assert limiter.acquire() == pytest.approx(1.0)  # then one request per second
    assert limiter.acquire() == pytest.approx(1.0)
    assert limiter.waited_seconds == pytest.approx(2.0)


def test_tokens_per_minute_waits_for_enough_tokens_and_settles_with_the_real_count():
    clock = Clock()
    limiter = RateLimiter(requests_per_minute=None, tokens_per_minute=600, clock=clock, sleep=clock.sleep)
    assert limiter.acquire(500) == 0
    assert limiter.acquire(200) == pytest.approx(10.0)  # 100 tokens left, 10 tokens/s
    # The second request really used 50 tokens, not 200: 150 come back.
    limiter.settle(estimated=200, actual=50)
    assert limiter.acquire(150) == 0
    # A request larger than a whole minute's budget waits for a full bucket, then goes.
    clock.now += 120
    assert limiter.acquire(5000) == 0


def test_async_acquire_waits_without_blocking_the_loop():
    limiter = RateLimiter(requests_per_minute=600, tokens_per_minute=None)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    async def main() -> float:
        task = asyncio.create_task(ticker())
        for _ in range(600):
            await limiter.aacquire()
        waited = await limiter.aacquire()  # 10 per second: about 100 ms
        task.cancel()
        return waited

    waited = asyncio.run(main())
    assert 0.05 < waited < 1.0
    assert ticks >= 5  # other tasks ran while the limiter waited


@pytest.mark.parametrize("bad", [0, -1, "10", True])
def test_bad_limits(bad):
    with pytest.raises(ValueError, match="positive"):
        RateLimiter(requests_per_minute=bad, tokens_per_minute=None)
