"""The controller's client bound (``--kube-api-qps``/``--kube-api-burst``) against the real plane.

What a user relies on: with a bound, a burst of requests reaches the API server no faster than
the bound allows (and every one of them succeeds, through the same TLS and credentials); without
one, the same burst is not held back.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from lightkube.resources.core_v1 import Namespace

from plunder.k8s.client import async_client
from plunder.k8s.ratelimit import ClientLimits
from plunder.lab.plane import Plane

pytestmark = pytest.mark.integration

REQUESTS = 60


async def burst_seconds(plane: Plane, limits: ClientLimits | None) -> float:
    """Seconds for REQUESTS reads of the namespace ``default``, all asked at once."""
    client = async_client(plane.kubeconfig, limits=limits)
    try:
        started = time.monotonic()
        found = await asyncio.gather(*(client.get(Namespace, "default") for _ in range(REQUESTS)))
        elapsed = time.monotonic() - started
    finally:
        await client.close()
    assert [namespace.metadata.name for namespace in found if namespace.metadata] == [
        "default"
    ] * REQUESTS
    return elapsed


async def test_a_bounded_client_spends_its_burst_then_keeps_to_its_rate(plane: Plane) -> None:
    qps, burst = 25.0, 10
    bounded = await burst_seconds(plane, ClientLimits(qps=qps, burst=burst))
    unbounded = await burst_seconds(plane, None)
    floor = (REQUESTS - burst) / qps  # 2 s: the burst goes at once, the rest at 25 a second
    assert bounded >= floor * 0.95, f"{REQUESTS} requests took {bounded:.2f}s, bound {floor:.2f}s"
    assert unbounded < floor / 2, f"without a bound they took {unbounded:.2f}s"


async def test_a_client_with_a_pool_of_one_still_answers_every_request(plane: Plane) -> None:
    # One connection: the requests queue for it; none fails for want of one.
    await burst_seconds(plane, ClientLimits(connections=1))
