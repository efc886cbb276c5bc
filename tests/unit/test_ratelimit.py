"""The token bucket behind ``--kube-api-qps``: its burst, its rate, its order, its refusals."""

from __future__ import annotations

import asyncio

import pytest

from plunder.k8s.ratelimit import ClientLimits, TokenBucket


class Clock:
    """Time that moves only when a waiter sleeps (asyncio.sleep is patched to advance it)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    real_sleep = asyncio.sleep

    async def advance(seconds: float) -> None:
        clock.now += seconds
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", advance)
    return clock


async def test_the_burst_is_free_and_the_rest_come_at_the_rate(clock: Clock) -> None:
    bucket = TokenBucket(rate=10.0, burst=5, clock=clock)
    stamps = []
    for _ in range(15):
        await bucket.take()
        stamps.append(round(clock.now, 6))
    assert stamps[:5] == [0.0] * 5
    assert stamps[5:] == [pytest.approx(0.1 * n) for n in range(1, 11)]


async def test_an_idle_bucket_refills_only_up_to_its_burst(clock: Clock) -> None:
    bucket = TokenBucket(rate=10.0, burst=3, clock=clock)
    for _ in range(3):
        await bucket.take()
    clock.now += 60.0  # a quiet minute earns 3 tokens, not 600
    for _ in range(3):
        await bucket.take()
    assert clock.now == 60.0
    await bucket.take()
    assert clock.now == pytest.approx(60.1)


async def test_waiters_are_served_in_the_order_they_asked(clock: Clock) -> None:
    bucket = TokenBucket(rate=10.0, burst=1, clock=clock)
    served: list[int] = []

    async def ask(n: int) -> None:
        await bucket.take()
        served.append(n)

    await asyncio.gather(*(ask(n) for n in range(6)))
    assert served == list(range(6))


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"qps": 0.0}, "qps"),
        ({"qps": -5.0}, "qps"),
        ({"burst": 0}, "burst"),
        ({"connections": 0}, "connections"),
    ],
)
def test_a_bound_that_would_stop_every_request_is_refused(
    limits: dict[str, float], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        ClientLimits(**limits)  # type: ignore[arg-type]
