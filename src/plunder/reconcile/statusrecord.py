"""The status record: a host's status kept in an annotation, so ``clusterctl move`` carries it.

clusterctl move copies objects without their status, and a host's status is not derivable: its
state says whether the disk holds an installed OS. Found again without one, a provisioned host
would be inspected and provisioned anew, its machine's OS wiped (Tinkerbell provider #432). As
Metal3 does (CAPM3 writes ``baremetalhost.metal3.io/status`` when it pauses a BareMetalHost, and
the baremetal-operator rebuilds a status from it), the record is written once per pause, never
per status change:

- a claimed host carries clusterctl's block-move annotation from its claim on, so ``clusterctl
  move``, once it has paused the Clusters, waits before copying anything;
- the machine controller, seeing its machine paused, pauses the host, writes the record and
  lifts block-move in one write guarded by the host's resourceVersion (:func:`pause_annotations`);
- on the target, a host that arrives with a record and no state has its status rebuilt from it
  (:func:`restore`) before anything acts on it; a record that cannot be read, or that names
  another MAC or consumer, sends the host to ``error`` with the reason, never to a wipe;
- once its machine is resumed, one write takes the pause and the record off and puts
  block-move back (:func:`resume_annotations`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from plunder.api.common import BLOCK_MOVE_ANNOTATION
from plunder.api.inventory import (
    PAUSED_ANNOTATION,
    PAUSED_BY_CLUSTER,
    STATUS_RECORD_ANNOTATION,
    PlunderHost,
    PlunderHostStatus,
)
from plunder.reconcile.hoststate import Change, provisioned_condition

UNREADABLE_REASON = "StatusRecordUnreadable"
MISMATCH_REASON = "StatusRecordMismatch"
RESTORED_REASON = "StatusRestored"


class RecordError(ValueError):
    """A record that cannot be used: its reason (one of the two above) and what is wrong."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Record:
    """Whose status it is (the host's boot MAC and consumer), and the status."""

    mac: str
    consumer: str | None
    """``Kind/name`` of the host's ``spec.consumerRef`` when it was recorded."""
    status: dict[str, Any]


def _consumer(host: PlunderHost) -> str | None:
    ref = host.spec.consumer_ref
    return f"{ref.kind}/{ref.name}" if ref is not None else None


def encode(host: PlunderHost) -> str:
    """The record of ``host`` as it is now (compact JSON)."""
    status = host.status.to_api() if host.status else {}
    body = {"bootMACAddress": host.spec.boot_mac_address, "consumer": _consumer(host)}
    return json.dumps({**body, "status": status}, separators=(",", ":"), sort_keys=True)


def decode(text: str) -> Record:
    """Read a record.

    Raises:
        RecordError: It is not a record, or its status is not a status with a state.
    """
    try:
        body = json.loads(text)
    except ValueError as error:
        raise RecordError(UNREADABLE_REASON, f"it is not JSON ({error})") from None
    if not isinstance(body, dict) or not isinstance(body.get("status"), dict):
        raise RecordError(UNREADABLE_REASON, "it is not an object with a status")
    try:
        status = PlunderHostStatus.model_validate(body["status"])
    except ValidationError as error:
        problem = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        raise RecordError(UNREADABLE_REASON, f"its status is not valid ({problem})") from None
    if status.state is None:
        raise RecordError(UNREADABLE_REASON, "its status has no state")
    mac, consumer = body.get("bootMACAddress"), body.get("consumer")
    if not isinstance(mac, str) or not (consumer is None or isinstance(consumer, str)):
        raise RecordError(UNREADABLE_REASON, "it does not say whose status it is")
    return Record(mac, consumer, status.to_api())


def awaits_restore(host: PlunderHost) -> bool:
    """Whether ``host`` arrived with a record and has no state yet: nothing may act on it."""
    recorded = STATUS_RECORD_ANNOTATION in (host.metadata.annotations or {})
    return recorded and (host.status is None or host.status.state is None)


def is_paused(host: PlunderHost) -> bool:
    """Whether ``host`` is paused (by its machine's Cluster, or by a person)."""
    return PAUSED_ANNOTATION in (host.metadata.annotations or {})


def restore(host: PlunderHost, now: datetime) -> Change:
    """The status rebuilt from the host's record, or ``error`` with why it cannot be.

    The rebuilt status is the recorded one, but for ``observedGeneration``: the copy on the target
    starts its generations again, and a host in ``error`` is retried only when its spec changes
    after that (:func:`hoststate.controller_transition`).
    """
    generation = host.metadata.generation or 0
    text = (host.metadata.annotations or {}).get(STATUS_RECORD_ANNOTATION, "")
    try:
        record = decode(text)
        _check_owner(host, record)
    except RecordError as error:
        message = (
            f"its status record (annotation {STATUS_RECORD_ANNOTATION}) {error}: its state "
            "cannot be rebuilt, so nothing is done to the host (its disk is left as it is); "
            "check which server this is before giving it work"
        )
        return Change(
            {
                "state": "error",
                "errorReason": error.reason,
                "errorMessage": message,
                "observedGeneration": generation,
                "conditions": provisioned_condition(host, "False", error.reason, message, now),
            },
            (error.reason, message, "Warning"),
        )
    status = {**record.status, "observedGeneration": generation}
    consumer = f", for {record.consumer}" if record.consumer else ""
    message = f"status rebuilt from its record after a move: {status['state']}{consumer}"
    return Change(status, (RESTORED_REASON, message, "Normal"))


def _check_owner(host: PlunderHost, record: Record) -> None:
    """Raise :class:`RecordError` when the record is another host's, or another consumer's."""
    if record.mac != host.spec.boot_mac_address:
        raise RecordError(
            MISMATCH_REASON,
            f"is of the host with MAC {record.mac}, not of this one ({host.spec.boot_mac_address})",
        )
    if record.consumer != _consumer(host):
        raise RecordError(
            MISMATCH_REASON,
            f"was written while the host was claimed by {record.consumer or 'nobody'}, and it "
            f"is claimed by {_consumer(host) or 'nobody'} now",
        )


@dataclass(frozen=True)
class MoveMarks:
    """What a host's annotations say of moving it: who paused it, and what it carries."""

    paused_by: str | None = None
    recorded: bool = False
    move_blocked: bool = False
    restoring: bool = False
    """A record and no state: the status is to be rebuilt before anything acts on the host."""

    @classmethod
    def of(cls, annotations: Mapping[str, str], has_state: bool) -> MoveMarks:
        """Read them from a host's annotations (and whether its status has a state)."""
        recorded = STATUS_RECORD_ANNOTATION in annotations
        return cls(
            paused_by=annotations.get(PAUSED_ANNOTATION),
            recorded=recorded,
            move_blocked=BLOCK_MOVE_ANNOTATION in annotations,
            restoring=recorded and not has_state,
        )

    @property
    def paused(self) -> bool:
        """Paused, by anyone."""
        return self.paused_by is not None


def pause_annotations(host: PlunderHost) -> dict[str, str | None] | None:
    """The annotations that pause ``host`` for its paused machine; None: nothing to write.

    The pause, the record of the status it has now, and block-move lifted: in one write, so
    clusterctl never copies the host paused but without its record. A host paused already with
    its record is left alone (the record is the status when it was paused), and so is a host
    without a state (one that arrived by a move and waits for its status to be rebuilt).
    """
    annotations = host.metadata.annotations or {}
    if host.status is None or host.status.state is None:
        return None
    if PAUSED_ANNOTATION in annotations and STATUS_RECORD_ANNOTATION in annotations:
        return None
    return {
        PAUSED_ANNOTATION: annotations.get(PAUSED_ANNOTATION, PAUSED_BY_CLUSTER),
        STATUS_RECORD_ANNOTATION: encode(host),
        BLOCK_MOVE_ANNOTATION: None,
    }


def resume_annotations(marks: MoveMarks) -> dict[str, str | None] | None:
    """The annotations of a claimed host whose machine is not paused; None: nothing to write.

    The machine controller's pause goes (a person's stays, and with it the record), the record
    goes once the status is back, and block-move is put back (or on, for a host claimed before
    hosts carried it). A host whose status is still to be rebuilt is left alone.
    """
    if marks.restoring:
        return None
    still_paused = marks.paused and marks.paused_by != PAUSED_BY_CLUSTER
    change: dict[str, str | None] = {}
    if marks.paused and not still_paused:
        change[PAUSED_ANNOTATION] = None
    if marks.recorded and not still_paused:
        change[STATUS_RECORD_ANNOTATION] = None
    if not marks.move_blocked and not still_paused:
        change[BLOCK_MOVE_ANNOTATION] = ""
    return change or None
