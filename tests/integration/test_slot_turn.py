"""A slot granted after a long wait moves the host, against the real API server (issue #14).

With a thousand hosts asking, a request waits its turn at the slot gate longer than the 30 s in
which a parked agent's ``lastSeen`` changes the host. Here the wait is staged: the host's event
copy is read, then its ``lastSeen`` is written (as the boot service writes it), then the host
handler's move runs on the event's copy. Decided and guarded on that copy, the move was refused
with a real 409 Conflict; decided on the copy the gate reads at the host's turn, it lands.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, cast

import kopf
import pytest
from lightkube import Client
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict
from plunder.lab.plane import Plane
from plunder.operator import host as host_handler
from plunder.operator import slots as slot_gate
from plunder.operator.controller_settings import SlotSettings
from plunder.operator.slots import Answer, ProvisioningSlots
from plunder.reconcile import hoststate, slots
from plunder.reconcile.selection import HostCandidate
from tests.integration.test_machine_world import HOSTS, create_host

pytestmark = pytest.mark.integration

IMAGE = {"url": "http://172.31.99.1:8080/files/os.raw.gz", "checksum": "a" * 64}
_LOG = cast(kopf.Logger, logging.getLogger(__name__))


def _heartbeat(kube: Client, namespace: str, name: str) -> None:
    """The boot service's ``lastSeen`` of a parked agent: a merge of that one field, unguarded."""
    seen = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    kube.patch(
        HOSTS.Status,
        name,
        {"status": {"lastSeen": seen}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


async def test_a_move_granted_after_a_heartbeat_lands_on_the_fresh_copy(
    plane: Plane, kube: Client, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_host(kube, namespace, "h0", "00:50:56:a5:11:20")
    kube.patch(
        HOSTS, "h0", {"spec": {"image": IMAGE}}, namespace=namespace, patch_type=PatchType.MERGE
    )
    asked = as_dict(kube.get(HOSTS, "h0", namespace=namespace))  # the event's copy
    _heartbeat(kube, namespace, "h0")  # written while the request waited its turn
    beaten = as_dict(kube.get(HOSTS, "h0", namespace=namespace))
    assert beaten["metadata"]["resourceVersion"] != asked["metadata"]["resourceVersion"]

    posted: list[str] = []
    monkeypatch.setattr(kopf, "event", lambda _body, **event: posted.append(event["reason"]))
    client = k8s_client.async_client(plane.kubeconfig, field_manager="plunder-controller")

    async def move(_: Answer) -> bool:
        return True

    memo = kopf.Memo()
    memo.client = client
    cache = {namespace: [HostCandidate.from_body(asked)]}  # the watch cache, as of the event
    memo.slots = ProvisioningSlots(client, cache, SlotSettings(1, namespace), move, lambda _: None)
    try:
        await host_handler.move_host(asked, memo, _LOG)
    finally:
        await client.close()

    moved = PlunderHost.model_validate(as_dict(kube.get(HOSTS, "h0", namespace=namespace)))
    assert hoststate.state_of(moved) == "provisioning"
    assert moved.status is not None and moved.status.last_seen is not None  # the beat is kept
    assert posted == [hoststate.PROVISION_REASON]
    ledger = kube.get(ConfigMap, slots.LEDGER_NAME, namespace=namespace)
    # the entry names the copy the move was decided on and guarded by: the one after the beat
    assert slots.parse_ledger(ledger.data) == {
        f"{namespace}/h0": beaten["metadata"]["resourceVersion"]
    }
    assert not memo.slots.waiting


def count_ledger_writes(monkeypatch: pytest.MonkeyPatch) -> list[slots.Ledger]:
    """Every ledger the gate writes to the API, from now on (the real write still goes out).

    Counted at the gate, not from the API server's request metrics: those count every ConfigMap
    write in the plane, and in a full test session other writers run too.
    """
    written: list[slots.Ledger] = []
    real_write = ProvisioningSlots._write_ledger

    async def write(gate: ProvisioningSlots, ledger: slots.Ledger, read_at: str | None) -> bool:
        written.append(dict(ledger))
        return await real_write(gate, ledger, read_at)

    monkeypatch.setattr(ProvisioningSlots, "_write_ledger", write)
    return written


async def test_slots_freed_together_are_granted_in_one_ledger_write(
    plane: Plane, kube: Client, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: one grant per ledger read and write, so three slots freed cost three writes."""
    busy, parked = [f"x{i}" for i in range(3)], [f"a{i}" for i in range(6)]
    for i, name in enumerate(busy + parked):
        create_host(kube, namespace, name, f"00:50:56:a5:12:{i:02x}")
        kube.patch(
            HOSTS, name, {"spec": {"image": IMAGE}}, namespace=namespace, patch_type=PatchType.MERGE
        )
    for name in busy:
        kube.patch(
            HOSTS.Status,
            name,
            {"status": {"state": "provisioning"}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

    def copy(name: str) -> dict[str, Any]:
        return as_dict(kube.get(HOSTS, name, namespace=namespace))

    cache: dict[str, list[HostCandidate]] = {namespace: []}

    def catch_up() -> None:
        cache[namespace] = [HostCandidate.from_body(copy(name)) for name in busy + parked]

    catch_up()
    client = k8s_client.async_client(plane.kubeconfig, field_manager="plunder-controller")
    monkeypatch.setattr(host_handler, "async_client", lambda **_: client)
    monkeypatch.setattr(slot_gate, "SETTINGS", SlotSettings(3, namespace))
    monkeypatch.setattr(kopf, "event", lambda _body, **_event: None)
    memo = kopf.Memo()
    await host_handler.open_client(memo, plunderhosts_by_namespace=cache)

    async def event(name: str) -> None:
        body = cast(kopf.Body, copy(name))
        await host_handler.plunderhost_event(type="MODIFIED", body=body, memo=memo, logger=_LOG)

    def states(names: list[str]) -> list[str]:
        return [hoststate.state_of(PlunderHost.model_validate(copy(name))) for name in names]

    try:
        for name in busy + parked:
            await event(name)
        assert len(memo.slots.waiting) == 6
        written = count_ledger_writes(monkeypatch)
        for name in busy:  # the three phone home
            kube.patch(
                HOSTS.Status,
                name,
                {"status": {"state": "provisioned"}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        catch_up()
        for name in busy:
            await event(name)
        deadline = asyncio.get_running_loop().time() + 30
        while states(parked[:3]) != ["provisioning"] * 3:
            assert asyncio.get_running_loop().time() < deadline, states(parked)
            await asyncio.sleep(0.1)
        writes = len(written)
    finally:
        await memo.slots.stop()
        await client.close()
    assert writes == 1, f"{writes} ledger writes for three grants"
    assert states(parked[3:]) == ["available"] * 3  # the three oldest waiters went first
