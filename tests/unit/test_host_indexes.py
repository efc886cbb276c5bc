"""The controller's host indexes: a host leaves an index's key when it stops belonging there.

kopf keeps an object's earlier index entries when its index function returns None, so a function
must return an empty mapping for "under no key": else a host once free stays listed as free after
its claim (at 1,000 hosts, a machine then kept trying claimed hosts and never got the free one).
"""

from __future__ import annotations

from typing import Any

import kopf

from plunder.operator import caches
from plunder.reconcile.selection import Consumer


def body(version: str, state: str, consumer: str | None = None) -> kopf.Body:
    spec: dict[str, Any] = {"bootMACAddress": "02:00:00:00:00:01", "accepted": True}
    if consumer is not None:
        spec["consumerRef"] = {"kind": "PlunderMachine", "name": consumer}
    raw = {
        "metadata": {"name": "h1", "namespace": "ns", "uid": "u1", "resourceVersion": version},
        "spec": spec,
        "status": {"state": state},
    }
    return kopf.Body(raw)


async def test_a_claimed_host_leaves_the_free_index_and_a_released_one_its_consumer() -> None:
    free = await caches.free_plunderhosts_by_namespace(body("1", "available"), "ns")
    assert list(free) == ["ns"] and free["ns"].free
    assert await caches.free_plunderhosts_by_namespace(body("2", "available", "m1"), "ns") == {}

    mine = Consumer("PlunderMachine", "ns", "m1")
    claimed = await caches.plunderhosts_by_consumer(body("2", "available", "m1"))
    assert list(claimed) == [mine]
    assert await caches.plunderhosts_by_consumer(body("3", "available")) == {}


async def test_the_indexes_share_one_reading_of_a_version() -> None:
    seen = body("7", "provisioned", "m1")
    by_name = await caches.plunderhosts_by_name(seen, "ns", "h1")
    by_consumer = await caches.plunderhosts_by_consumer(seen)
    assert by_name[("ns", "h1")] is by_consumer[Consumer("PlunderMachine", "ns", "m1")]
