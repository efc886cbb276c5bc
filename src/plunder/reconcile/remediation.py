"""Remediating an unhealthy Machine's host: what to do next, decided from what the API holds.

Cluster API's external remediation contract: a MachineHealthCheck creates a PlunderRemediation
for an unhealthy Machine (same name, owned by it) and deletes it once the Machine is healthy
again. So the remediation never has to tell a healthy Machine apart: while it exists, the
Machine is unhealthy, and each pass decides only whether a try is due, a try is still running,
or the tries ran out.

- A try is a power cycle of the Machine's host, asked of the power loop as a person asks it
  (the ``plunder.dev/reboot`` annotation, ``operator/power.py``): one power path, whose BMC
  faults the host's ``BMCReachable`` condition already reports.
- After each try the remediation waits ``timeout`` (status ``Waiting``); Cluster API deleting it
  in that time is the success. Then the next try, up to ``retryLimit``.
- When they run out, the Machine is handed back to its owner (the contract's condition
  ``OwnerRemediated=False``: a MachineSet then deletes the Machine and makes a new one, on
  another host) and the host is marked unhealthy (:data:`UNHEALTHY_ANNOTATION`), which host
  selection honours until a person removes it. Status ``Deleting``.
- A Machine whose host cannot be rebooted (no PlunderMachine, no host, no BMC) fails at once,
  saying why (``Failed``), and is handed back too: waiting would only hold the cluster down.

The order of writes makes a crash at any line safe: the reboot ask and the hand-back come
before the status that records them, so a crash repeats one (a second power cycle, or the same
condition again), never loses one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from plunder.api.inventory import UNHEALTHY_ANNOTATION
from plunder.api.remediation import PlunderRemediation, PlunderRemediationStatus
from plunder.reconcile import conditions
from plunder.reconcile.hoststate import EventSpec

REMEDIATED = "Remediated"
"""The remediation's condition: False while it runs and when it stopped, with the reason."""
OWNER_REMEDIATED = "OwnerRemediated"
"""The Machine condition that hands an unhealthy Machine to its owner (MachineSet, control
plane) to be remediated by replacement (Cluster API's ``MachineOwnerRemediatedCondition``)."""
WAITING_FOR_REMEDIATION = "WaitingForRemediation"
"""The reason Cluster API's own MachineHealthCheck gives that condition."""


@dataclass(frozen=True)
class Target:
    """What a remediation found of its Machine's host."""

    host: str | None
    """The PlunderHost's name; None when there is none to reboot."""
    has_bmc: bool = False
    missing: str = ""
    """Why there is no host (a sentence), when ``host`` is None."""


@dataclass(frozen=True)
class Step:
    """What one pass does, in this order: reboot, mark, hand back, status, event."""

    reboot: bool = False
    """Ask the power loop to power-cycle the host."""
    mark_unhealthy: str | None = None
    """The value of the host's unhealthy annotation to set (why), if it is to be set."""
    hand_back: str | None = None
    """The message of the Machine's ``OwnerRemediated=False``, if it is to be handed back."""
    status: dict[str, Any] | None = None
    """The remediation's new status, if it changes."""
    event: EventSpec | None = None
    requeue_after: float | None = None
    """Seconds until the next pass; None: nothing more to do (a terminal phase)."""


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _status(
    remediation: PlunderRemediation,
    now: datetime,
    reason: str,
    message: str,
    **fields: Any,
) -> dict[str, Any]:
    """The status with ``fields`` changed and the Remediated condition set to False."""
    current = remediation.status or PlunderRemediationStatus()
    condition = conditions.condition(REMEDIATED, "False", reason, message, now)
    updated = current.model_copy(
        update={**fields, "conditions": conditions.set_condition(current.conditions, condition)}
    )
    return updated.to_api()


def _seconds(value: float) -> str:
    """``timeout`` for a message: 300 s as 5m, 90 s as 90s."""
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:.0f}m"
    return f"{value:g}s"


def unhealthy_mark(remediation: PlunderRemediation, why: str) -> str:
    """The unhealthy annotation's value: which remediation marked the host, and why."""
    meta = remediation.metadata
    return f"PlunderRemediation {meta.namespace}/{meta.name}: {why}"


def decide(remediation: PlunderRemediation, target: Target, now: datetime) -> Step:
    """The next step of ``remediation``, whose Machine is unhealthy while it exists."""
    status = remediation.status or PlunderRemediationStatus()
    if status.phase in ("Deleting", "Failed"):
        return Step()
    strategy = remediation.spec.strategy
    machine = remediation.metadata.name
    if target.host is None:
        message = f"{target.missing}: nothing to reboot; the Machine is handed back to be replaced"
        return Step(
            hand_back=f"PlunderRemediation could not remediate: {message}",
            status=_status(remediation, now, "HostNotFound", message, phase="Failed"),
            event=("HostNotFound", message, "Warning"),
        )
    host = target.host
    if not target.has_bmc:
        message = (
            f"host {host} has no BMC (spec.bmc), so it cannot be rebooted: the Machine is handed "
            f"back to be replaced, and the host kept out of the pool until someone removes its "
            f"annotation {UNHEALTHY_ANNOTATION}"
        )
        return Step(
            mark_unhealthy=unhealthy_mark(remediation, "no BMC to reboot it with"),
            hand_back=f"PlunderRemediation could not remediate: host {host} has no BMC",
            status=_status(
                remediation, now, "HostHasNoBMC", message, phase="Failed", host_ref=host
            ),
            event=("HostHasNoBMC", message, "Warning"),
        )
    timeout = strategy.timeout_seconds
    if status.phase == "Waiting" and status.last_remediated is not None:
        due = status.last_remediated + timedelta(seconds=timeout)
        if now < due:
            return Step(requeue_after=max(1.0, (due - now).total_seconds()))
    if status.retry_count < strategy.retry_limit:
        attempt = status.retry_count + 1
        message = (
            f"power-cycling host {host} through its BMC (try {attempt} of "
            f"{strategy.retry_limit}); waiting {_seconds(timeout)} for Machine {machine} to be "
            "healthy again"
        )
        return Step(
            reboot=True,
            status=_status(
                remediation,
                now,
                "Rebooting",
                message,
                phase="Waiting",
                retry_count=attempt,
                last_remediated=now,
                host_ref=host,
            ),
            event=("Rebooting", message, "Normal"),
            requeue_after=timeout,
        )
    tries = f"rebooted {status.retry_count} time{'s' if status.retry_count != 1 else ''}"
    message = (
        f"host {host} was {tries} and Machine {machine} is still unhealthy: the Machine is "
        f"handed back to Cluster API to be replaced, and host {host} kept out of the pool "
        f"until someone removes its annotation {UNHEALTHY_ANNOTATION}"
    )
    return Step(
        mark_unhealthy=unhealthy_mark(remediation, f"still unhealthy after being {tries}"),
        hand_back=f"PlunderRemediation {tries} host {host}; the Machine is still unhealthy",
        status=_status(remediation, now, "RetriesExhausted", message, phase="Deleting"),
        event=("RetriesExhausted", message, "Warning"),
    )


def healed_event(remediation: PlunderRemediation) -> EventSpec | None:
    """The event for a remediation Cluster API deleted: its Machine is healthy again."""
    status = remediation.status
    if status is None or status.phase != "Waiting":
        return None
    tries = f"{status.retry_count} reboot{'s' if status.retry_count != 1 else ''}"
    return (
        "Remediated",
        f"Machine {remediation.metadata.name} is healthy again after {tries} of host "
        f"{status.host_ref}",
        "Normal",
    )


def target_of(
    machine: Mapping[str, Any] | None,
    plunder_machine: Mapping[str, Any] | None,
    host: Mapping[str, Any] | None,
    host_name: str | None,
) -> Target:
    """The host to reboot, from the Machine, its PlunderMachine and the host the API holds."""
    if machine is None:
        return Target(None, missing="the Machine is gone")
    ref = (machine.get("spec") or {}).get("infrastructureRef") or {}
    if ref.get("kind") != "PlunderMachine":
        return Target(None, missing=f"the Machine's infrastructure is a {ref.get('kind')}")
    if plunder_machine is None:
        return Target(None, missing=f"PlunderMachine {ref.get('name')} does not exist")
    if host_name is None:
        return Target(None, missing=f"PlunderMachine {ref.get('name')} has no host")
    if host is None:
        return Target(None, missing=f"host {host_name} does not exist")
    return Target(host_name, has_bmc=bool((host.get("spec") or {}).get("bmc")))


def owner_remediated_patch(
    machine: Mapping[str, Any], message: str, now: datetime
) -> dict[str, Any] | None:
    """The Machine status patch that hands it to its owner; None if it is handed over already.

    Both forms Cluster API reads: ``status.conditions`` (v1beta2, what MachineSets act on) and
    ``status.deprecated.v1beta1.conditions``, each list whole (a merge patch replaces lists), the
    other conditions kept as they are. It is written guarded by the Machine's resourceVersion.
    """
    status = machine.get("status") or {}
    current: list[dict[str, Any]] = list(status.get("conditions") or [])
    legacy: list[dict[str, Any]] = list(
        ((status.get("deprecated") or {}).get("v1beta1") or {}).get("conditions") or []
    )
    if any(c.get("type") == OWNER_REMEDIATED and c.get("status") == "False" for c in current):
        return None
    stamp = _stamp(now)
    condition = {
        "type": OWNER_REMEDIATED,
        "status": "False",
        "reason": WAITING_FOR_REMEDIATION,
        "message": message,
        "lastTransitionTime": stamp,
    }
    generation = (machine.get("metadata") or {}).get("generation")
    if generation is not None:
        condition["observedGeneration"] = generation
    v1beta1 = {
        "type": OWNER_REMEDIATED,
        "status": "False",
        "severity": "Warning",
        "reason": WAITING_FOR_REMEDIATION,
        "message": message,
        "lastTransitionTime": stamp,
    }
    return {
        "metadata": {"resourceVersion": (machine.get("metadata") or {}).get("resourceVersion")},
        "status": {
            "conditions": [c for c in current if c.get("type") != OWNER_REMEDIATED] + [condition],
            "deprecated": {
                "v1beta1": {
                    "conditions": [c for c in legacy if c.get("type") != OWNER_REMEDIATED]
                    + [v1beta1]
                }
            },
        },
    }
