"""A client-side bound on the API requests one process makes (client-go's QPS and burst).

The controller's own requests (its reads and guarded writes, not kopf's watches and patches)
pass a token bucket: ``burst`` at once, then ``qps`` a second, in the order they asked. It is
there so that a fleet's worth of work arriving at once queues in the controller instead of in
the API server, which every other client shares; the defaults are measured
(``bench/fleet_scale.py --controller-args``, README "Client limits"). A request waits for its
token before it takes a connection, so the wait is not counted against its timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx2


@dataclass
class ClientLimits:
    """How hard one process may press the API server; ``qps`` None: no bound."""

    qps: float | None = None
    burst: int = 1
    connections: int = 100  # httpx's own default pool

    def __post_init__(self) -> None:
        if self.qps is not None and self.qps <= 0:
            raise ValueError(f"qps must be above 0, not {self.qps}")
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, not {self.burst}")
        if self.connections < 1:
            raise ValueError(f"connections must be at least 1, not {self.connections}")


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` a second; :meth:`take` waits for one, FIFO."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()
        self._turn = asyncio.Lock()  # FIFO: the first to ask is the first served

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def take(self) -> None:
        """Wait for a token (behind every earlier caller) and spend it."""
        async with self._turn:
            self._refill()
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.rate)
                self._refill()
                # The wait earned the token; rounding must not make it wait again for 1e-17 s.
                self._tokens = max(self._tokens, 1.0)
            self._tokens -= 1


class LimitedTransport(httpx2.AsyncBaseTransport):
    """Every request takes a token from the bucket, then goes out on ``inner``."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, bucket: TokenBucket) -> None:
        self.inner = inner
        self.bucket = bucket

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        """Send ``request`` once it has its token."""
        await self.bucket.take()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        """Close the connections of ``inner``."""
        await self.inner.aclose()
