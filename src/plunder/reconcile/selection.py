"""Choosing a host for a machine: which hosts qualify, and in what order they are tried.

The controller selects from its watch cache (a kopf index of the free hosts), never from one list
call, so the choice is made among every free host however many there are (Metal3 provider #2916
stalled at 200).
A host is kept there as a :class:`HostCandidate`, the few fields selection and mirroring read, so a
cache of thousands of hosts stays small.

The order is stable for a machine but differs between machines (rendezvous hashing of the
machine's uid with each host's name): machines that select at the same moment mostly try
different hosts first, so a burst of claims rarely collides, and a collision is only a retry,
because the claim itself is a write guarded by resourceVersion.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from plunder.api.common import LabelSelector, LabelSelectorRequirement
from plunder.api.inventory import UNHEALTHY_ANNOTATION
from plunder.reconcile.statusrecord import MoveMarks


@dataclass(frozen=True)
class Consumer:
    """Who claimed a host: ``spec.consumerRef`` without the uid (a moved machine gets a new one)."""

    kind: str
    namespace: str
    name: str


@dataclass(frozen=True)
class HostCandidate:
    """What the controller keeps of a PlunderHost in its cache."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    mac: str
    state: str
    labels: Mapping[str, str] = field(default_factory=dict)
    consumer: Consumer | None = None
    deleting: bool = False
    ip_address: str | None = None
    """The address the host last had on the provisioning network."""
    static_ip: str | None = None
    """The static address given to the installed OS (``spec.network``)."""
    error_reason: str | None = None
    error_message: str | None = None
    provisioned_in: float | None = None
    """Seconds the last provisioning took, once it finished."""
    accepted: bool = True
    """``spec.accepted``: a host nobody accepted is never given to a machine."""
    unhealthy: bool = False
    """Marked unhealthy by a remediation that ran out of tries: never given to a machine until
    a person removes the annotation."""
    marks: MoveMarks = MoveMarks()
    """Paused, recorded, blocking a move (:mod:`plunder.reconcile.statusrecord`)."""

    @property
    def restoring(self) -> bool:
        """Arrived by a move and waiting for its status to be rebuilt: not to be acted on."""
        return self.marks.restoring

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> HostCandidate:
        """Read a PlunderHost as the API (or kopf) delivers it."""
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        ref = spec.get("consumerRef")
        namespace = meta.get("namespace", "")
        return cls(
            name=meta.get("name", ""),
            namespace=namespace,
            uid=meta.get("uid", ""),
            resource_version=meta.get("resourceVersion", ""),
            mac=spec.get("bootMACAddress", ""),
            state=status.get("state") or "discovered",
            labels=dict(meta.get("labels") or {}),
            consumer=(
                Consumer(ref.get("kind", ""), ref.get("namespace") or namespace, ref["name"])
                if ref
                else None
            ),
            deleting=bool(meta.get("deletionTimestamp")),
            ip_address=status.get("ipAddress"),
            static_ip=(spec.get("network") or {}).get("ipAddress"),
            error_reason=status.get("errorReason"),
            error_message=status.get("errorMessage"),
            provisioned_in=_phase_seconds(status.get("phases") or [], "provisioning"),
            accepted=bool(spec.get("accepted", False)),
            unhealthy=UNHEALTHY_ANNOTATION in (meta.get("annotations") or {}),
            marks=MoveMarks.of(meta.get("annotations") or {}, bool(status.get("state"))),
        )

    @property
    def free(self) -> bool:
        """Accepted, inspected, healthy, unclaimed, not paused and not going away."""
        return (
            self.accepted
            and not self.unhealthy
            and not self.marks.paused
            and self.state == "available"
            and self.consumer is None
            and not self.deleting
        )


def _phase_seconds(phases: list[dict[str, Any]], name: str) -> float | None:
    for phase in phases:
        if phase.get("name") == name and phase.get("finished"):
            started = datetime.fromisoformat(phase["started"])
            return (datetime.fromisoformat(phase["finished"]) - started).total_seconds()
    return None


def requirement_holds(labels: Mapping[str, str], requirement: LabelSelectorRequirement) -> bool:
    """One ``matchExpressions`` entry, as Kubernetes evaluates it."""
    present = requirement.key in labels
    values = requirement.values or []
    match requirement.operator:
        case "In":
            return present and labels[requirement.key] in values
        case "NotIn":
            return not present or labels[requirement.key] not in values
        case "Exists":
            return present
        case "DoesNotExist":
            return not present


def selector_matches(labels: Mapping[str, str], selector: LabelSelector | None) -> bool:
    """Whether ``labels`` satisfy ``selector`` (an empty selector matches everything)."""
    if selector is None:
        return True
    if any(labels.get(key) != value for key, value in (selector.match_labels or {}).items()):
        return False
    return all(requirement_holds(labels, r) for r in selector.match_expressions or ())


def preference(machine_uid: str, host: HostCandidate) -> str:
    """The machine's rank of ``host``: stable for the pair, different across machines."""
    return hashlib.sha256(f"{machine_uid}/{host.name}".encode()).hexdigest()


SAMPLE = 64
"""Above this many candidates, a machine ranks a sample of this many first (see choose_host)."""


def choose_host(
    hosts: Sequence[HostCandidate],
    machine_uid: str,
    selector: LabelSelector | None = None,
    failure_domain: tuple[str, str] | None = None,
    exclude: frozenset[str] = frozenset(),
) -> HostCandidate | None:
    """The free host the machine should try to claim next, if any qualifies.

    Among more than :data:`SAMPLE` candidates, the machine ranks a sample of them drawn with its
    uid as the seed (so a retry after a lost race ranks the same sample, less what it tried),
    and looks at all of them only if none in the sample qualifies (a selector that few hosts
    match): ranking all 10,000 hosts for each of 10,000 claims was a third of the controller's
    time, and a sample spreads machines that claim at once over different hosts just as well.

    Args:
        hosts: The cached hosts of the machine's namespace (the free ones suffice).
        machine_uid: The machine's uid, which fixes its order of preference.
        selector: The machine's ``hostSelector``.
        failure_domain: (label key, value) the host must carry, when the Machine has a failure
            domain and the cluster names the label that defines them.
        exclude: Hosts already tried in this round (a lost race leaves the cache stale for a
            moment).
    """

    def qualifies(host: HostCandidate) -> bool:
        return (
            host.free
            and host.name not in exclude
            and selector_matches(host.labels, selector)
            and (failure_domain is None or host.labels.get(failure_domain[0]) == failure_domain[1])
        )

    def rank(host: HostCandidate) -> str:
        return preference(machine_uid, host)

    if len(hosts) > SAMPLE:
        sampled = [h for h in random.Random(machine_uid).sample(hosts, SAMPLE) if qualifies(h)]
        if sampled:
            return min(sampled, key=rank)
    return min(filter(qualifies, hosts), key=rank, default=None)


def failure_domains(hosts: Iterable[HostCandidate], label: str) -> list[str]:
    """The distinct values of ``label`` among the hosts, sorted."""
    return sorted({host.labels[label] for host in hosts if label in host.labels})
