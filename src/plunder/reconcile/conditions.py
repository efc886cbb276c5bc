"""Conditions in both forms Cluster API reads: ``metav1.Condition`` (v1beta2) and v1beta1's."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from plunder.api.common import Condition, DeprecatedStatus, V1Beta1Condition, V1Beta1Status
from plunder.reconcile.pause import PAUSED_ANNOTATION

Status = Literal["True", "False", "Unknown"]
Severity = Literal["Error", "Warning", "Info", ""]


def set_condition(
    conditions: Sequence[Condition] | None,
    new: Condition,
) -> list[Condition]:
    """Put ``new`` into ``conditions`` by type; keep the old transition time if status holds."""
    result: list[Condition] = []
    replaced = False
    for existing in conditions or ():
        if existing.type != new.type:
            result.append(existing)
            continue
        replaced = True
        if existing.status == new.status:
            new = new.model_copy(update={"last_transition_time": existing.last_transition_time})
        result.append(new)
    if not replaced:
        result.append(new)
    return result


def condition(
    type_: str,
    status: Status,
    reason: str,
    message: str | None,
    now: datetime,
    generation: int | None = None,
) -> Condition:
    """A v1beta2 condition."""
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now,
        observed_generation=generation,
    )


NEGATIVE_POLARITY = frozenset({"Paused"})
"""Condition types whose False is the normal state."""


def as_v1beta1(
    conditions: Sequence[Condition], severity: Severity = "Warning"
) -> list[V1Beta1Condition]:
    """The same conditions for v1beta1 readers: abnormal ones get a severity."""
    return [
        V1Beta1Condition(
            type=c.type,
            status=c.status,
            severity=_severity(c, severity),
            last_transition_time=c.last_transition_time,
            reason=c.reason,
            message=c.message,
        )
        for c in conditions
    ]


def deprecated(conditions: Sequence[Condition]) -> DeprecatedStatus:
    """``status.deprecated`` holding the v1beta1 form of ``conditions``."""
    return DeprecatedStatus(v1beta1=V1Beta1Status(conditions=as_v1beta1(conditions)))


PAUSED = "Paused"


def paused(is_paused: bool, now: datetime, generation: int | None = None) -> Condition:
    """The contract's Paused condition.

    True while the paused annotation or the Cluster's ``spec.paused`` holds.
    """
    if is_paused:
        return condition(
            PAUSED,
            "True",
            "Paused",
            f"reconciliation is paused (Cluster spec.paused or the {PAUSED_ANNOTATION} annotation)",
            now,
            generation,
        )
    return condition(PAUSED, "False", "NotPaused", None, now, generation)


def find(conditions: Sequence[Condition] | None, type_: str) -> Condition | None:
    """The condition of ``type_``, if present."""
    return next((c for c in conditions or () if c.type == type_), None)


def _severity(c: Condition, severity: Severity) -> Severity:
    abnormal = c.status == "True" if c.type in NEGATIVE_POLARITY else c.status == "False"
    return severity if abnormal else ""
