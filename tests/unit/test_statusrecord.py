"""A host's status record (``plunder.dev/status``): written, restored, and not trusted blindly."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from plunder.api.inventory import PlunderHost
from plunder.boot import trust
from plunder.boot.ipxe import decide
from plunder.reconcile import hoststate, pause, statusrecord

MAC = "00:50:56:a5:11:20"
NOW = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
IMAGE = {"url": "http://172.31.99.1:8080/files/os.raw", "checksum": "a" * 64, "format": "raw"}
CONSUMER = {"kind": "PlunderMachine", "name": "m0", "namespace": "site-a", "uid": "old-uid"}
BMC = {"address": "redfish://10.0.0.9/redfish/v1/Systems/1", "credentialsName": "bmc"}
STATUS = {
    "state": "provisioned",
    "firstSeen": "2026-12-01T10:00:00.000Z",
    "lastSeen": "2026-12-02T06:59:00.000Z",
    "agentBootID": "b1",
    "poweredOn": True,
    "bootFirmware": "uefi",
    "ipAddress": "172.31.99.101",
    "hardware": {"cpu": {"count": 2}, "memoryMiB": 2048},
    "phases": [
        {
            "name": "provisioning",
            "started": "2026-12-01T10:05:00.000Z",
            "finished": "2026-12-01T10:06:00.000Z",
        }
    ],
    "conditions": [
        {
            "type": "Provisioned",
            "status": "True",
            "reason": "Provisioned",
            "message": "the OS is installed",
            "lastTransitionTime": "2026-12-01T10:06:00Z",
        },
        {
            "type": "BMCReachable",
            "status": "True",
            "reason": "Reachable",
            "message": "the BMC answers; the host is on",
            "lastTransitionTime": "2026-12-01T10:00:00Z",
        },
    ],
    "observedGeneration": 3,
}


def host(
    status: dict[str, Any] | None = STATUS,
    annotations: dict[str, str] | None = None,
    **spec: Any,
) -> PlunderHost:
    body: dict[str, Any] = {
        "metadata": {
            "name": "h0",
            "namespace": "site-a",
            "generation": 3,
            "annotations": annotations or {},
        },
        "spec": {"bootMACAddress": MAC, "bmc": BMC, "consumerRef": CONSUMER, "image": IMAGE} | spec,
    }
    if status is not None:
        body["status"] = status
    return PlunderHost.model_validate(body)


def moved(**spec: Any) -> PlunderHost:
    """The host as ``clusterctl move`` creates it on the target: its record, no status."""
    record = statusrecord.record(host())
    assert record is not None
    return host(None, {statusrecord.STATUS_ANNOTATION: record}, **spec)


def test_the_record_keeps_what_cannot_be_rebuilt_and_names_what_it_is_of() -> None:
    record = json.loads(statusrecord.record(host()) or "")
    assert record["mac"] == MAC and record["work"] == "a" * 64
    assert record["consumer"] == "PlunderMachine/site-a/m0"  # not the uid: a move changes it
    kept = record["status"]
    assert kept["state"] == "provisioned" and kept["agentBootID"] == "b1"
    assert kept["hardware"] == STATUS["hardware"]
    assert kept["phases"] == [
        {
            "name": "provisioning",
            "started": "2026-12-01T10:05:00Z",
            "finished": "2026-12-01T10:06:00Z",
        }
    ]
    assert "lastSeen" not in kept and "poweredOn" not in kept
    assert [c["type"] for c in kept["conditions"]] == ["Provisioned"]


def test_the_record_is_due_only_when_it_changed_and_never_for_a_host_without_state() -> None:
    current = statusrecord.record(host()) or ""
    assert statusrecord.record_due(host()) == current
    assert (
        statusrecord.record_due(host(annotations={statusrecord.STATUS_ANNOTATION: current})) is None
    )
    # lastSeen changes on every poll: no new record for it.
    fresh = STATUS | {"lastSeen": "2026-12-02T07:00:00.000Z"}
    assert statusrecord.record_due(host(fresh, {statusrecord.STATUS_ANNOTATION: current})) is None
    # A moved host's record is never overwritten before it is restored.
    assert statusrecord.record_due(moved()) is None
    assert statusrecord.record_due(host({"lastSeen": "2026-12-02T07:00:00.000Z"})) is None


def test_a_moved_host_is_restored_as_it_was_not_taken_for_new() -> None:
    target = moved()
    assert statusrecord.awaiting_restore(target)
    change = hoststate.controller_decision(target, NOW, paused=True)  # restored even if paused
    status = change.status or {}
    assert status["state"] == "provisioned" and status["agentBootID"] == "b1"
    assert status["observedGeneration"] == 3
    assert [(p["name"], "finished" in p) for p in status["phases"]] == [("provisioning", True)]
    assert change.event is not None and change.event[0] == "StatusRestored"
    restored = host(status | {"lastSeen": "2026-12-02T07:01:00.000Z"})
    # ... and then nothing: no move, no power action, the disk booted.
    assert hoststate.controller_decision(restored, NOW).status is None
    assert hoststate.power_wish(restored) is None
    assert decide.decide(restored, "http://b/files", "", True).action == "disk"


def test_before_it_is_restored_nobody_acts_on_a_moved_host() -> None:
    target = moved()
    assert hoststate.power_wish(target) is None  # not powered on "to be inspected"
    assert decide.decide(target, "http://b/files", "", True).action == "park"
    assert trust.refuse_lookup(target, 1e9, 30) is not None  # no agent token


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"bootMACAddress": "00:50:56:a5:11:21"}, "mac"),
        ({"consumerRef": CONSUMER | {"name": "m1"}}, "consumer"),
        ({"image": IMAGE | {"checksum": "b" * 64}}, "work"),
    ],
)
def test_a_record_of_something_else_is_not_trusted(spec: dict[str, Any], named: str) -> None:
    change = hoststate.controller_decision(moved(**spec), NOW)
    status = change.status or {}
    assert status["state"] == "error" and status["errorReason"] == "StatusNotRestored"
    assert f"records {named}" in status["errorMessage"]
    assert change.event is not None and change.event[2] == "Warning"
    # In error: no power action, no wipe, and no move until a person changes the spec.
    failed = host(status)
    assert hoststate.power_wish(failed) is None
    assert hoststate.controller_decision(failed, NOW).status is None


def test_a_host_whose_record_was_not_trusted_is_not_wiped_until_a_person_says_so() -> None:
    record = statusrecord.record(host(consumerRef=None, image=None))
    assert record is not None
    tampered = host(
        None, {statusrecord.STATUS_ANNOTATION: record.replace(MAC, "00:50:56:a5:11:99")}
    )
    status = hoststate.controller_decision(tampered, NOW).status or {}
    assert status["state"] == "error" and status["observedGeneration"] == 3
    held = host(status, consumerRef=None, image=None)
    assert hoststate.controller_decision(held, NOW).status is None  # no wipe of its own accord
    # A spec change (a new generation) is a person's word: then it is wiped as any failed host.
    changed = held.model_copy(
        update={"metadata": held.metadata.model_copy(update={"generation": 4})}
    )
    assert (hoststate.controller_decision(changed, NOW).status or {})["state"] == "deprovisioning"


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        json.dumps({"version": 2}),
        json.dumps({"version": 1, "mac": MAC, "consumer": "PlunderMachine/site-a/m0",
                    "work": "a" * 64, "status": {"state": "exploded"}}),
        json.dumps({"version": 1, "mac": MAC, "consumer": "PlunderMachine/site-a/m0",
                    "work": "a" * 64, "status": {"state": "available", "spec": {}}}),
    ],
)  # fmt: skip
def test_a_record_that_is_not_one_is_not_trusted(raw: str) -> None:
    status = hoststate.controller_decision(
        host(None, {statusrecord.STATUS_ANNOTATION: raw}), NOW
    ).status
    assert status is not None and status["errorReason"] == "StatusNotRestored"


def test_a_paused_host_is_not_moved() -> None:
    released = host({"state": "provisioned"}, consumerRef=None, image=None)
    assert hoststate.controller_decision(released, NOW).status is not None
    assert hoststate.controller_decision(released, NOW, paused=True).status is None


def test_a_host_is_paused_with_its_cluster_or_while_its_cluster_is_not_here() -> None:
    assert pause.host_paused({"cluster.x-k8s.io/paused": ""}, None, None)
    assert not pause.host_paused({}, None, None)  # a free host: nothing to wait for
    assert pause.host_paused({}, "c1", True)
    assert not pause.host_paused({}, "c1", False)
    assert pause.host_paused({}, "c1", None)  # mid-move: its Cluster not created yet
