"""A host's status, kept in an annotation so that it survives ``clusterctl move``.

``clusterctl move`` creates each object on the target without its status (the status
subresource is not written by a create). Most of a host's status is rebuilt by itself (its
power, when it was last seen, its conditions), but not its place in the state machine: a
provisioned host that appears on the target without a state would look like a new one, be
inspected again and, once its machine asked, written again. As Metal3 keeps a BareMetalHost's
status in its ``baremetalhost.metal3.io/status`` annotation, the controller keeps here what cannot
be rebuilt (:data:`KEPT_FIELDS`), and restores it on a host that has the annotation and no state.

The record also names what it was the status *of*: the host's boot MAC, its consumer and its
work (the image checksum or the deployment type). A record that does not match the host it is
on (copied from another host, edited, or older than a change of the spec) is not trusted: the
host goes to ``error`` with :data:`NOT_RESTORED_REASON` and waits for a person, instead of being
taken for new (inspected, given to a machine, wiped) or for provisioned.

Anyone who may write the annotation may write the host's spec too, so the record is not a
secret and not signed: the match only stops a mistake from being taken for the truth.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from plunder.api.inventory import PlunderHost, PlunderHostStatus

STATUS_ANNOTATION = "plunder.dev/status"
"""The annotation holding the record (JSON)."""
RECORD_VERSION = 1
NOT_RESTORED_REASON = "StatusNotRestored"

KEPT_FIELDS = (
    "state",
    "errorReason",
    "errorMessage",
    "vendor",
    "bootFirmware",
    "ipAddress",
    "firstSeen",
    "agentBootID",
    "hardware",
    "phases",
    "observedGeneration",
)
"""What cannot be rebuilt. Left out: ``lastSeen`` (it changes with every boot and poll, and the
boot service writes it again), ``poweredOn`` and the ``BMCReachable`` condition (the power loop
measures them again)."""
KEPT_CONDITIONS = ("Provisioned",)


def binding(host: PlunderHost) -> dict[str, Any]:
    """What the record is the status of: the host, its consumer and its work."""
    consumer = host.spec.consumer_ref
    work = host.spec.image.checksum if host.spec.image else host.spec.deployment_type
    return {
        "mac": host.spec.boot_mac_address.lower(),
        "consumer": (
            f"{consumer.kind}/{consumer.namespace or ''}/{consumer.name}" if consumer else None
        ),
        "work": work,
    }


def record(host: PlunderHost) -> str | None:
    """The annotation's value for the host's status now; None for a host without a state."""
    if host.status is None or host.status.state is None:
        return None
    status = host.status.model_dump(by_alias=True, exclude_none=True, mode="json")
    kept: dict[str, Any] = {name: status[name] for name in KEPT_FIELDS if name in status}
    conditions = [c for c in status.get("conditions", ()) if c.get("type") in KEPT_CONDITIONS]
    if conditions:
        kept["conditions"] = conditions
    body = {"version": RECORD_VERSION, **binding(host), "status": kept}
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def record_due(host: PlunderHost) -> str | None:
    """The record to write, if the annotation does not already hold it."""
    wanted = record(host)
    if wanted is None or (host.metadata.annotations or {}).get(STATUS_ANNOTATION) == wanted:
        return None
    return wanted


def awaiting_restore(host: PlunderHost) -> bool:
    """A host with a record and no state: moved here; nobody may act on it until it is restored."""
    has_state = host.status is not None and host.status.state is not None
    return not has_state and STATUS_ANNOTATION in (host.metadata.annotations or {})


def restored(host: PlunderHost) -> tuple[dict[str, Any] | None, str]:
    """The status the record restores, or None and why it is not trusted."""
    raw = (host.metadata.annotations or {}).get(STATUS_ANNOTATION, "")
    try:
        body = json.loads(raw)
    except ValueError:
        return None, f"the {STATUS_ANNOTATION} annotation is not JSON"
    if not isinstance(body, dict) or body.get("version") != RECORD_VERSION:
        return None, f"the {STATUS_ANNOTATION} annotation is not a version {RECORD_VERSION} record"
    expected = binding(host)
    for key, value in expected.items():
        if body.get(key) != value:
            return None, (
                f"the {STATUS_ANNOTATION} annotation records {key} {body.get(key)!r}, "
                f"the host has {value!r}"
            )
    status = body.get("status")
    if not isinstance(status, dict) or not status.get("state"):
        return None, f"the {STATUS_ANNOTATION} annotation records no state"
    unknown = sorted(set(status) - {*KEPT_FIELDS, "conditions"})
    if unknown:
        return None, f"the {STATUS_ANNOTATION} annotation records unknown fields {unknown}"
    try:
        PlunderHostStatus.model_validate(status)
    except ValidationError as error:
        return None, f"the {STATUS_ANNOTATION} annotation's status is invalid: {error}"
    return status, ""
