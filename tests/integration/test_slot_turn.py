"""A slot granted after a long wait moves the host, against the real API server (issue #14).

With a thousand hosts asking, a request waits its turn at the slot gate longer than the 30 s in
which a parked agent's ``lastSeen`` changes the host. Here the wait is staged: the host's event
copy is read, then its ``lastSeen`` is written (as the boot service writes it), then the host
handler's move runs on the event's copy. Decided and guarded on that copy, the move was refused
with a real 409 Conflict; decided on the copy the gate reads at the host's turn, it lands.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
from plunder.operator.slots import ProvisioningSlots, SlotSettings
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

    async def retry(_: Mapping[str, Any]) -> None:
        return None

    memo = kopf.Memo()
    memo.client = client
    cache = {namespace: [HostCandidate.from_body(asked)]}  # the watch cache, as of the event
    memo.slots = ProvisioningSlots(client, cache, SlotSettings(1, namespace), retry, lambda _: None)
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
