"""The boot service's lastSeen heartbeats, against the real API server.

A parked fleet polls all the time; each poll is the host being seen, but writing each would make
the API server (and every controller watching hosts) pay for every poll. What a user can count on:
every host seen gets its lastSeen written, a host is written at most once per interval however
often it polls, and the whole fleet's heartbeats never come faster than the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime

import pytest
from lightkube import Client

from plunder.api.inventory import PlunderHost
from plunder.boot.backend.base import BootFacts
from plunder.boot.backend.kube import KubeHostBackend
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab.plane import Plane
from tests.conftest import create_available_host, eventually, listed

pytestmark = pytest.mark.integration

HOSTS = 30
RATE = 10.0
HOSTS_API = resource_for(PlunderHost)


def facts(index: int) -> BootFacts:
    return BootFacts(
        mac=f"02:5e:00:00:00:{index:02x}",
        ip=f"172.31.99.{100 + index}",
        firmware=None,
        manufacturer=None,
        product=None,
        serial=None,
        seen=datetime.now(UTC),
    )


def last_seen(kube: Client, namespace: str) -> dict[str, tuple[str | None, str]]:
    """Each host's (lastSeen, resourceVersion)."""
    return {
        host.metadata.name or "": (
            host.status.last_seen.isoformat() if host.status and host.status.last_seen else None,
            host.metadata.resource_version or "",
        )
        for host in (
            PlunderHost.model_validate(as_dict(raw)) for raw in listed(kube, HOSTS_API, namespace)
        )
        if host.metadata
    }


async def test_a_fleet_seen_at_once_is_written_within_the_bound_each_host_once(
    plane: Plane, kube: Client, namespace: str
) -> None:
    for index in range(HOSTS):
        create_available_host(kube, namespace, f"h{index:02d}", facts(index).mac)
    client = k8s_client.async_client(plane.kubeconfig)
    backend = KubeHostBackend(
        client, namespace, last_seen_interval=3600, last_seen_writes_per_second=RATE
    )
    watch = asyncio.create_task(backend.run())
    writer = asyncio.create_task(backend.write_seen())
    try:
        await asyncio.wait_for(backend.synced.wait(), 30)
        assert backend.count() == HOSTS
        started = time.monotonic()
        for _ in range(3):  # every host polls three times in a row
            for index in range(HOSTS):
                backend.seen(facts(index))

        def all_written() -> bool:
            return all(seen for seen, _ in last_seen(kube, namespace).values())

        await asyncio.to_thread(eventually, all_written, "every host's lastSeen", 60.0)
        elapsed = time.monotonic() - started
        # One write at once, then RATE a second: HOSTS writes take (HOSTS - 1) / RATE at least.
        assert elapsed >= (HOSTS - 1) / RATE * 0.95, f"{HOSTS} heartbeats in {elapsed:.2f}s"
        assert backend.writes == HOSTS, "three polls each, one write each"

        # Seen again inside the interval: nothing more is written (a write would come within
        # 1/RATE s; a second is ten times that).
        before = last_seen(kube, namespace)
        for index in range(HOSTS):
            backend.seen(facts(index))
        await asyncio.sleep(1.0)
        assert last_seen(kube, namespace) == before
        assert backend.writes == HOSTS
    finally:
        for task in (watch, writer):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await client.close()
