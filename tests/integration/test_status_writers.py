"""Writers of a PlunderHost's status, against the real API server: none loses another's write.

The controller, the boot service and the power loop share ``status.conditions`` and
``status.phases`` (docs/status-writers.md). Each test makes one writer decide on a copy that
another writer has since changed, as a lagging cache does, and checks the other's write stays.
The power action is level-triggered: a controller killed right after a state move still gets
the host power-cycled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from lightkube import AsyncClient, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.boot.backend.kube import KubeHostBackend
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab.plane import Plane
from plunder.operator import power
from plunder.power import base, registry
from plunder.reconcile import hoststate

pytestmark = pytest.mark.integration

HOSTS = resource_for(PlunderHost)
IMAGE = {"url": "http://172.31.99.1:8080/files/os.raw.gz", "checksum": "a" * 64}


@pytest.fixture
async def client(plane: Plane) -> AsyncIterator[AsyncClient]:
    api = k8s_client.async_client(plane.kubeconfig)
    yield api
    await api.close()


def read(kube: Client, namespace: str, name: str = "h1") -> PlunderHost:
    return PlunderHost.model_validate(as_dict(kube.get(HOSTS, name, namespace=namespace)))


def write_status(kube: Client, host: PlunderHost, status: dict[str, Any] | None) -> None:
    """A guarded status write, as each writer's decision is made."""
    assert status is not None
    kube.patch(
        HOSTS.Status,
        host.metadata.name or "",
        {"metadata": {"resourceVersion": host.metadata.resource_version}, "status": status},
        namespace=host.metadata.namespace,
        patch_type=PatchType.MERGE,
    )


def make_host(kube: Client, namespace: str, bmc: bool = True, **spec: Any) -> PlunderHost:
    body: dict[str, Any] = {"bootMACAddress": "52:54:00:c0:00:01", **spec}
    if bmc:
        body["bmc"] = {"address": "ipmi://127.0.0.1:9", "credentialsName": "bmc"}
        kube.create(
            Secret(
                metadata=ObjectMeta(name="bmc", namespace=namespace),
                stringData={"username": "admin", "password": "pw"},
            )
        )
    kube.create(HOSTS(metadata=ObjectMeta(name="h1", namespace=namespace), spec=body))
    return read(kube, namespace)


def provisioning(kube: Client, namespace: str, **extra: Any) -> PlunderHost:
    """A host the controller moved into provisioning, as it does."""
    host = make_host(kube, namespace, image=IMAGE, **extra)
    write_status(kube, host, {"state": "available"})
    host = read(kube, namespace)
    write_status(kube, host, hoststate.controller_transition(host, datetime.now(UTC)).status)
    return read(kube, namespace)


def provisioned_condition(host: PlunderHost) -> tuple[str, str] | None:
    for condition in host.status.conditions or () if host.status else ():
        if condition.type == hoststate.PROVISIONED_CONDITION:
            return condition.status, condition.reason
    return None


async def test_the_power_loop_never_reverts_provisioned(
    kube: Client, client: AsyncClient, namespace: str
) -> None:
    stale = provisioning(kube, namespace)  # what the power loop's cache holds
    write_status(kube, stale, hoststate.phoned_home(stale, datetime.now(UTC)).status)
    assert provisioned_condition(read(kube, namespace)) == ("True", "Provisioned")

    await power._write_outcome(client, stale, True, "Reachable", "the BMC answers", {})

    host = read(kube, namespace)
    assert provisioned_condition(host) == ("True", "Provisioned"), "reverted by the power loop"
    assert host.status is not None and host.status.state == "provisioned"
    assert host.status.powered_on is True
    assert {c.type for c in host.status.conditions or ()} == {"Provisioned", "BMCReachable"}


async def test_the_boot_service_never_reverts_provisioned(
    kube: Client, client: AsyncClient, namespace: str
) -> None:
    host = provisioning(kube, namespace, bmc=False)
    began = hoststate.agent_progress(host, {"phase": "writing"}, datetime.now(UTC))
    write_status(kube, host, began.status)
    stale = read(kube, namespace)  # the boot service's cache: the image being written
    write_status(kube, stale, hoststate.phoned_home(stale, datetime.now(UTC)).status)

    # A boot into the agent decided on the stale copy says the write was interrupted; the boot
    # id is written unguarded (the last boot wins), the move must not be.
    backend = KubeHostBackend(client, namespace, last_seen_interval=3600)
    change = hoststate.booted_agent(stale, "b-late", datetime.now(UTC))
    assert change.status is not None and change.status["state"] == "error"
    await backend.patch_host_status(stale, change.status, guarded=False)

    host = read(kube, namespace)
    assert host.status is not None
    assert (host.status.state, host.status.agent_boot_id) == ("provisioned", "b-late")
    assert provisioned_condition(host) == ("True", "Provisioned")

    # A list change of its own (the installer's writing phase) is merged, not written over.
    stale = host
    write_status(kube, stale, {"conditions": [*_conditions(stale), _other_condition()]})
    mine = hoststate.start_phase(stale, "writing", datetime.now(UTC))
    await backend.patch_host_status(stale, {"phases": mine}, guarded=False)
    host = read(kube, namespace)
    assert {c.type for c in host.status.conditions or ()} == {"Provisioned", "Other"}  # type: ignore[union-attr]


def _conditions(host: PlunderHost) -> list[dict[str, Any]]:
    return [c.to_api() for c in host.status.conditions or ()] if host.status else []


def _other_condition() -> dict[str, Any]:
    return {
        "type": "Other",
        "status": "True",
        "reason": "Other",
        "lastTransitionTime": "2026-11-25T12:00:00Z",
    }


class RecordingDriver(base.PowerDriver):
    """A BMC that does what it is told and remembers it."""

    calls: list[str] = []
    state: base.PowerState = "on"

    def get_power_state(self) -> base.PowerState:
        return RecordingDriver.state

    def set_power_state(self, state: base.PowerState) -> None:
        RecordingDriver.calls.append(f"power-{state}")
        RecordingDriver.state = state

    def reboot(self) -> None:
        RecordingDriver.calls.append("reboot")

    def set_one_time_boot(self, device: base.BootDevice) -> None:
        RecordingDriver.calls.append(f"boot-{device}")


@pytest.fixture
def recording_bmc(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    RecordingDriver.calls = []
    RecordingDriver.state = "on"
    monkeypatch.setattr(registry, "driver_for", RecordingDriver)
    yield RecordingDriver.calls


async def test_a_crash_between_the_move_and_the_power_action_still_power_cycles(
    kube: Client, client: AsyncClient, namespace: str, recording_bmc: list[str]
) -> None:
    host = provisioning(kube, namespace)
    write_status(kube, host, hoststate.phoned_home(host, datetime.now(UTC)).status)
    await power.power_step(client, read(kube, namespace))  # the provisioning wish: host is on
    assert recording_bmc == []
    # The machine is deleted: the work is taken off the host and the controller moves it ...
    kube.patch(
        HOSTS, "h1", {"spec": {"image": None}}, namespace=namespace, patch_type=PatchType.MERGE
    )
    host = read(kube, namespace)
    change = hoststate.controller_decision(host, datetime.now(UTC))
    assert change.status is not None and change.status["state"] == "deprovisioning"
    write_status(kube, host, change.status)
    # ... and is killed before it writes anything else. The next controller's power loop:
    await power.power_step(client, read(kube, namespace))
    assert recording_bmc == ["boot-pxe", "reboot"], "the release never power-cycled the host"
    done = read(kube, namespace).metadata.annotations or {}
    assert done.get(power.DONE_ANNOTATION, "").startswith("pxe-reboot deprovisioning@")

    # Done once: later rounds (and a restarted controller, which reads the mark) leave it be.
    recording_bmc.clear()
    await power.power_step(client, read(kube, namespace))
    assert recording_bmc == []


def set_reboot(kube: Client, namespace: str, value: str) -> None:
    annotations = {power.REBOOT_ANNOTATION: value}
    kube.patch(
        HOSTS,
        "h1",
        {"metadata": {"annotations": annotations}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


async def test_a_reboot_asked_again_during_a_round_is_not_lost(
    kube: Client, client: AsyncClient, namespace: str, recording_bmc: list[str]
) -> None:
    host = make_host(kube, namespace)
    write_status(kube, host, {"state": "available", "firstSeen": "2026-11-25T12:00:00Z"})
    set_reboot(kube, namespace, "1")
    await power.power_step(client, read(kube, namespace))
    assert recording_bmc == ["boot-pxe", "reboot"]
    assert power.REBOOT_ANNOTATION not in (read(kube, namespace).metadata.annotations or {})

    set_reboot(kube, namespace, "2")
    seen = read(kube, namespace)  # the round's copy: the ask "2"
    set_reboot(kube, namespace, "3")  # asked again while the round runs
    await power.power_step(client, seen)
    annotations = read(kube, namespace).metadata.annotations or {}
    assert annotations.get(power.REBOOT_ANNOTATION) == "3", "the second ask was dropped"
