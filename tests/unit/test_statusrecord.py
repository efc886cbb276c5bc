"""The status record that carries a host's status through ``clusterctl move``.

Encoded once when the host is paused, read back on the target: rebuilt as it was, or the host
sent to ``error`` with the cause when the record does not fit it, never to a wipe.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from plunder.api.inventory import PlunderHost
from plunder.boot.ipxe import decide
from plunder.reconcile import hoststate, statusrecord
from plunder.reconcile.selection import HostCandidate

MAC = "00:50:56:a5:11:20"
NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
RECORD = "plunder.dev/status"
PAUSED = "plunder.dev/paused"
BLOCK_MOVE = "clusterctl.cluster.x-k8s.io/block-move"
CONSUMER = {"apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1", "kind": "PlunderMachine"}
IMAGE = {"url": "http://172.31.99.1:8080/files/os.raw", "checksum": "a" * 64}
PROVISIONED = {
    "state": "provisioned",
    "agentBootID": "b7",
    "observedGeneration": 4,
    "bootFirmware": "uefi",
    "hardware": {"cpu": {"count": 2}, "memoryMiB": 2048},
    "phases": [
        {
            "name": "provisioning",
            "started": "2026-12-07T05:00:00Z",
            "finished": "2026-12-07T05:01:00Z",
        }
    ],
    "conditions": [
        {
            "type": "Provisioned",
            "status": "True",
            "reason": "Provisioned",
            "message": "the installed OS phoned home after 60s",
            "lastTransitionTime": "2026-12-07T05:01:00Z",
        }
    ],
}


def host(
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    consumer: str | None = "m1",
    mac: str = MAC,
    generation: int = 1,
) -> PlunderHost:
    spec: dict[str, Any] = {"bootMACAddress": mac, "accepted": True}
    if consumer is not None:
        spec |= {"consumerRef": {**CONSUMER, "name": consumer}, "image": IMAGE}
    return PlunderHost.model_validate(
        {
            "metadata": {
                "name": "h1",
                "namespace": "site-a",
                "generation": generation,
                "annotations": annotations or {},
            },
            "spec": spec,
            **({"status": status} if status is not None else {}),
        }
    )


def arrived(record: str, **kwargs: Any) -> PlunderHost:
    """The host as clusterctl creates it on the target: its annotations, no status."""
    return host(None, {PAUSED: "plunder.dev/cluster", RECORD: record}, **kwargs)


def test_a_record_reads_back_as_the_status_it_was_made_of() -> None:
    source = host(PROVISIONED, generation=4)
    record = statusrecord.decode(statusrecord.encode(source))
    assert record.mac == MAC and record.consumer == "PlunderMachine/m1"
    assert record.status == (source.status.to_api() if source.status else None)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "is not JSON"),
        ('["a list"]', "is not an object with a status"),
        ('{"status": {"state": "happy"}}', "its status is not valid (state:"),
        ('{"status": {"agentBootID": "b1"}}', "its status has no state"),
        ('{"status": {"state": "provisioned"}}', "does not say whose status it is"),
    ],
)
def test_a_record_that_cannot_be_read_says_why(text: str, why: str) -> None:
    with pytest.raises(statusrecord.RecordError) as raised:
        statusrecord.decode(text)
    assert raised.value.reason == "StatusRecordUnreadable"
    assert why in str(raised.value)


def test_a_host_that_arrived_with_a_record_gets_its_status_back_before_anything_acts() -> None:
    moved = arrived(statusrecord.encode(host(PROVISIONED, generation=4)))
    assert statusrecord.awaits_restore(moved) and statusrecord.is_paused(moved)
    # The boot service does not take it for a new host meanwhile (its caller asks it to wait),
    # and the controller's own state machine has nothing to do with it.
    assert hoststate.state_of(moved) == "discovered"

    change = statusrecord.restore(moved, NOW)
    assert change.status == {**PROVISIONED, "observedGeneration": 1}  # the target's generation
    assert change.event == (
        "StatusRestored",
        "status rebuilt from its record after a move: provisioned, for PlunderMachine/m1",
        "Normal",
    )
    rebuilt = host(change.status, {PAUSED: "plunder.dev/cluster", RECORD: "…"})
    assert not statusrecord.awaits_restore(rebuilt)
    assert hoststate.controller_decision(rebuilt, NOW).status is None  # no provisioning, no wipe
    assert decide.decide(rebuilt, "http://b/files", "", True).action == "disk"


@pytest.mark.parametrize(
    ("record", "reason", "cause"),
    [
        ("{garbled", "StatusRecordUnreadable", "is not JSON"),
        (
            statusrecord.encode(host(PROVISIONED, mac="00:50:56:a5:11:99")),
            "StatusRecordMismatch",
            "is of the host with MAC 00:50:56:a5:11:99, not of this one (00:50:56:a5:11:20)",
        ),
        (
            statusrecord.encode(host(PROVISIONED, consumer="m2")),
            "StatusRecordMismatch",
            "claimed by PlunderMachine/m2, and it is claimed by PlunderMachine/m1 now",
        ),
    ],
)
def test_a_record_that_does_not_fit_the_host_makes_it_error_never_a_wipe(
    record: str, reason: str, cause: str
) -> None:
    change = statusrecord.restore(arrived(record), NOW)
    status = change.status or {}
    assert (status["state"], status["errorReason"]) == ("error", reason)
    assert cause in status["errorMessage"]
    assert "nothing is done to the host" in status["errorMessage"]
    assert change.event is not None and change.event[:1] == (reason,)
    assert change.event[2] == "Warning"
    # In error, with its work and its claim still set and its generation observed, the host
    # is neither provisioned again nor wiped until a person changes it.
    failed = host(status, {PAUSED: "plunder.dev/cluster", RECORD: record})
    assert hoststate.controller_decision(failed, NOW).status is None
    assert hoststate.power_wish(failed) is None


def test_a_host_is_paused_with_its_record_in_one_write_once() -> None:
    claimed = host(PROVISIONED, {BLOCK_MOVE: ""})
    annotations = statusrecord.pause_annotations(claimed) or {}
    assert annotations[PAUSED] == "plunder.dev/cluster"
    assert annotations[BLOCK_MOVE] is None  # clusterctl may copy it now
    assert json.loads(annotations[RECORD] or "")["status"]["state"] == "provisioned"
    paused = host(PROVISIONED, {k: v for k, v in annotations.items() if v is not None})
    assert statusrecord.pause_annotations(paused) is None
    # A person's pause is kept, and the record added to it.
    by_hand = statusrecord.pause_annotations(host(PROVISIONED, {PAUSED: "alice"})) or {}
    assert by_hand[PAUSED] == "alice" and by_hand[RECORD]
    # A host that arrived by a move, without its state yet, is never recorded over.
    assert statusrecord.pause_annotations(arrived("{}")) is None


def marks(annotations: dict[str, str], state: str | None = "provisioned") -> statusrecord.MoveMarks:
    return statusrecord.MoveMarks.of(annotations, has_state=state is not None)


def test_a_resumed_host_loses_the_pause_and_record_and_blocks_moves_again() -> None:
    ours = marks({PAUSED: "plunder.dev/cluster", RECORD: "{}"})
    assert statusrecord.resume_annotations(ours) == {PAUSED: None, RECORD: None, BLOCK_MOVE: ""}
    # A host claimed before hosts carried block-move gets it; one that has it, nothing.
    assert statusrecord.resume_annotations(marks({})) == {BLOCK_MOVE: ""}
    assert statusrecord.resume_annotations(marks({BLOCK_MOVE: ""})) is None
    # A person's pause stays, and the record with it; its status comes back first.
    assert statusrecord.resume_annotations(marks({PAUSED: "alice", RECORD: "{}"})) is None
    waiting = marks({PAUSED: "plunder.dev/cluster", RECORD: "{}"}, state=None)
    assert waiting.restoring and statusrecord.resume_annotations(waiting) is None


def test_a_paused_host_is_not_given_to_a_machine() -> None:
    body = {
        "metadata": {"name": "h2", "namespace": "site-a", "annotations": {PAUSED: "alice"}},
        "spec": {"bootMACAddress": MAC, "accepted": True},
        "status": {"state": "available"},
    }
    assert not HostCandidate.from_body(body).free
    body["metadata"]["annotations"] = {}
    assert HostCandidate.from_body(body).free
