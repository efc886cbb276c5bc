"""What a PlunderMachine should do next, and what its status should say.

This is the InfraMachine side of the Cluster API contract.

The contract's order before a host is claimed: the owner Machine exists, the Cluster's
infrastructure is provisioned, the Machine's bootstrap data Secret is named, and (for machines
that take their address from a pool) the IPAM provider has allocated an address. Once a host is
bound, the machine only mirrors it: the host's own state machine installs and wipes it.

The binding is recorded where ``clusterctl move`` carries it: the host's ``spec.consumerRef``,
the machine's ``plunder.dev/host`` annotation and ``spec.providerID``; ``status.hostRef`` is
derived from them. Hosts are claimed in the machine's own namespace only, as Metal3 does: the
host then references the bootstrap Secret in the namespace it shares with the Machine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from plunder.api.common import (
    CLUSTER_NAME_LABEL,
    Condition,
    Initialization,
    MachineAddress,
    StaticNetwork,
)
from plunder.api.infrastructure import (
    HOST_ANNOTATION,
    MachineState,
    PlunderMachine,
    PlunderMachineStatus,
)
from plunder.reconcile import conditions, hoststate, slots
from plunder.reconcile.hoststate import PROVISION_REASON, EventSpec
from plunder.reconcile.selection import Consumer, HostCandidate

READY = "Ready"
HOST_CLAIMED = "HostClaimed"
PROVISIONED = "Provisioned"
NO_HARDWARE_REASON = "NoHardwareFound"
NO_HARDWARE_MESSAGE = "No Hardware found"


@dataclass(frozen=True)
class OwnerMachine:
    """What the provider reads of the Cluster API Machine that owns a PlunderMachine."""

    name: str
    cluster_name: str | None
    data_secret_name: str | None
    failure_domain: str | None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> OwnerMachine:
        """Read a ``cluster.x-k8s.io/v1beta2`` Machine."""
        spec = body.get("spec") or {}
        return cls(
            name=(body.get("metadata") or {}).get("name", ""),
            cluster_name=spec.get("clusterName"),
            data_secret_name=(spec.get("bootstrap") or {}).get("dataSecretName"),
            failure_domain=spec.get("failureDomain") or None,
        )


@dataclass(frozen=True)
class ClusterFacts:
    """What the provider reads of the Cluster (and its PlunderCluster)."""

    paused: bool
    infrastructure_provisioned: bool
    failure_domain_label: str | None = None

    @classmethod
    def from_body(
        cls, body: Mapping[str, Any], failure_domain_label: str | None = None
    ) -> ClusterFacts:
        """Read a ``cluster.x-k8s.io/v1beta2`` Cluster."""
        initialization = (body.get("status") or {}).get("initialization") or {}
        return cls(
            paused=bool((body.get("spec") or {}).get("paused")),
            infrastructure_provisioned=bool(initialization.get("infrastructureProvisioned")),
            failure_domain_label=failure_domain_label,
        )


@dataclass(frozen=True)
class Wait:
    """The machine cannot go on yet: why, for its conditions."""

    reason: str
    message: str
    state: MachineState = "Pending"


def consumer_of(machine: PlunderMachine) -> Consumer:
    """How hosts claimed by ``machine`` name it."""
    return Consumer("PlunderMachine", machine.metadata.namespace or "", machine.metadata.name or "")


def cluster_name(machine: PlunderMachine, owner: OwnerMachine | None) -> str | None:
    """The Cluster the machine belongs to: its label, else its Machine's ``spec.clusterName``."""
    label = (machine.metadata.labels or {}).get(CLUSTER_NAME_LABEL)
    return label or (owner.cluster_name if owner else None)


def bound_host_name(machine: PlunderMachine) -> str | None:
    """The host the machine's annotation names, if any."""
    return (machine.metadata.annotations or {}).get(HOST_ANNOTATION) or None


def gate(
    machine: PlunderMachine, owner: OwnerMachine | None, cluster: ClusterFacts | None
) -> Wait | None:
    """The first of the contract's preconditions for a claim that does not hold yet.

    An address from a pool comes last (:func:`address_wait`): the claim for it is made only
    once the rest holds.
    """
    if owner is None:
        return Wait("WaitingForMachine", "waiting for a Cluster API Machine to own this object")
    if cluster is None or not cluster.infrastructure_provisioned:
        return Wait(
            "WaitingForClusterInfrastructure",
            "waiting for the Cluster's infrastructure to be provisioned",
        )
    if not owner.data_secret_name:
        return Wait(
            "WaitingForBootstrapData",
            f"waiting for Machine {owner.name} to have spec.bootstrap.dataSecretName",
        )
    return None


def address_wait(machine: PlunderMachine) -> Wait:
    """Waiting for the IPAM provider to allocate the machine's address."""
    pool = machine.spec.address_from_pool
    assert pool is not None
    return Wait(
        "WaitingForIPAddress",
        f"waiting for an address from {pool.kind} {pool.name} (IPAddressClaim "
        f"{machine.metadata.name})",
    )


def host_missing(name: str) -> Wait:
    """The bound host is gone (or was given to someone else): a person has to act."""
    return Wait(
        "HostMissing",
        f"host {name} named by the {HOST_ANNOTATION} annotation no longer exists or is not "
        "claimed by this machine; delete the machine to get another host",
        "Failed",
    )


def find_condition(status: PlunderMachineStatus | None, type_: str) -> Condition | None:
    """A condition of ``status`` by type."""
    return conditions.find(status.conditions if status else None, type_)


RELEASING_STATES = frozenset({"provisioning", "provisioned", "deprovisioning", "error"})
"""Host states in which a released host has not finished its wipe yet.

``error`` is among them: a released host that failed (its install, or the wipe itself) still
holds what was written to its disk; the controller sends it back to ``deprovisioning`` to be
wiped, and its machine keeps the finalizer until the host is ``available`` again or is gone."""


def wipe_pending(host: HostCandidate, consumer: Consumer) -> bool:
    """Whether a deleted machine must still wait for ``host``: claimed by it, or not yet wiped."""
    if host.consumer == consumer:
        return True
    return host.consumer is None and host.state in RELEASING_STATES


def failure_domain_of(
    owner: OwnerMachine | None, cluster: ClusterFacts | None
) -> tuple[str, str] | None:
    """(label, value) a host must carry for the Machine's failure domain, if one applies."""
    if owner is None or owner.failure_domain is None:
        return None
    if cluster is None or not cluster.failure_domain_label:
        return None
    return cluster.failure_domain_label, owner.failure_domain


def host_work(
    machine: PlunderMachine, owner: OwnerMachine, network: StaticNetwork | None
) -> dict[str, Any]:
    """The host's spec for this machine: who claimed it and what to install.

    Written in the same guarded write as the claim, so a host is never claimed without work or
    given work without a claim.
    """
    assert owner.data_secret_name is not None  # gate() holds
    namespace = machine.metadata.namespace
    spec = machine.spec
    return {
        "consumerRef": {
            "apiVersion": PlunderMachine.info.api_version,
            "kind": "PlunderMachine",
            "name": machine.metadata.name,
            "namespace": namespace,
            "uid": machine.metadata.uid,
        },
        "image": spec.image.to_api() if spec.image else None,
        "deploymentType": spec.deployment_type,
        "userData": {"name": owner.data_secret_name, "namespace": namespace},
        "network": network.to_api() if network else None,
    }


RELEASE: dict[str, Any] = {
    "consumerRef": None,
    "image": None,
    "deploymentType": None,
    "userData": None,
    "network": None,
}
"""The host's spec fields cleared on release; the host state machine then wipes it."""


def provider_id(host: HostCandidate) -> str:
    """``plunder://<boot MAC>``."""
    return hoststate.provider_id(host.mac)


def binding_patch(machine: PlunderMachine, host: HostCandidate) -> dict[str, Any] | None:
    """The machine's metadata/spec that record ``host``, or None if they already do."""
    annotated = bound_host_name(machine) == host.name
    has_id = machine.spec.provider_id is not None
    if annotated and has_id:
        return None
    patch: dict[str, Any] = {"metadata": {"annotations": {HOST_ANNOTATION: host.name}}}
    if not has_id:
        patch["spec"] = {"providerID": provider_id(host)}
    return patch


def _host_state_view(
    host: HostCandidate,
) -> tuple[MachineState, conditions.Status, str, str]:
    """(machine state, Provisioned status, reason, message) from the host's state."""
    match host.state:
        case "provisioned":
            return "Provisioned", "True", "Provisioned", f"host {host.name} is provisioned"
        case "error":
            return (
                "Failed",
                "False",
                host.error_reason or "HostError",
                f"host {host.name} failed: {host.error_message or 'see its events'}",
            )
        case "deprovisioning":
            return "Deprovisioning", "False", "Deprovisioning", f"host {host.name} is being wiped"
        case _:
            return "Provisioning", "False", "Provisioning", f"host {host.name} is being provisioned"


def addresses(machine: PlunderMachine, host: HostCandidate) -> list[MachineAddress]:
    """The machine's addresses.

    Its static (or pool) address, else the host's last known one, and its hostname (the
    host's ``local-hostname`` is the machine's name).
    """
    found = [MachineAddress(type="Hostname", address=machine.metadata.name or host.name)]
    ip = host.static_ip or host.ip_address
    if ip:
        found.append(MachineAddress(type="InternalIP", address=ip))
    return found


def machine_status(
    machine: PlunderMachine,
    previous: PlunderMachineStatus | None,
    now: datetime,
    *,
    paused: bool = False,
    wait: Wait | None = None,
    host: HostCandidate | None = None,
    failure_domain: str | None = None,
    slot_wait: Wait | None = None,
) -> PlunderMachineStatus:
    """The status to write for one of: paused, waiting (``wait``), or bound to ``host``.

    A bound host that waits for a provisioning slot (``slot_wait``) leaves the machine
    ``Pending``, its ``Provisioned`` condition saying why.

    ``initialization.provisioned`` and ``ready`` never go back to false once true: Cluster API
    does not expect them to.
    """
    generation = machine.metadata.generation
    status = previous or PlunderMachineStatus()
    current = conditions.set_condition(
        status.conditions, conditions.paused(paused, now, generation)
    )
    if paused:
        return status.model_copy(update={"conditions": current})

    def put(type_: str, value: conditions.Status, reason: str, message: str | None) -> None:
        nonlocal current
        current = conditions.set_condition(
            current, conditions.condition(type_, value, reason, message, now, generation)
        )

    update: dict[str, Any] = {}
    if host is None:
        assert wait is not None
        put(HOST_CLAIMED, "False", wait.reason, wait.message)
        put(PROVISIONED, "False", wait.reason, wait.message)
        update["state"] = wait.state
    else:
        state, provisioned, reason, message = _host_state_view(host)
        if slot_wait is not None:
            state, provisioned, reason, message = (
                slot_wait.state,
                "False",
                slot_wait.reason,
                slot_wait.message,
            )
        put(HOST_CLAIMED, "True", "Claimed", f"host {host.name} ({host.mac})")
        put(PROVISIONED, provisioned, reason, message)
        update |= {"state": state, "addresses": addresses(machine, host)}
        update["host_ref"] = {"name": host.name, "uid": host.uid or None}
        if failure_domain:
            update["failure_domain"] = failure_domain
    done = conditions.find(current, PROVISIONED)
    provisioned_now = done is not None and done.status == "True"
    was = bool(status.initialization and status.initialization.provisioned)
    put(
        READY,
        "True" if provisioned_now or was else "False",
        "Provisioned" if provisioned_now or was else (done.reason if done else "Pending") or "",
        done.message if done else None,
    )
    update |= {
        "initialization": Initialization(provisioned=True if provisioned_now or was else None),
        "ready": provisioned_now or was,
        "conditions": current,
        "deprecated": conditions.deprecated(current),
        "observed_generation": generation,
    }
    return PlunderMachineStatus.model_validate({**status.model_dump(), **update})


def transition_events(
    before: MachineState | None, after: MachineState | None, host: HostCandidate | None
) -> list[EventSpec]:
    """The seed's events on the machine, for the moves between ``before`` and ``after``.

    None for a machine that finds its host provisioned at its first status: it was provisioned
    before (the machine came by ``clusterctl move``, which carries no status), not now.
    """
    if before == after or host is None or (before is None and after == "Provisioned"):
        return []
    events: list[EventSpec] = []
    if after in ("Provisioning", "Provisioned") and before not in ("Provisioning", "Provisioned"):
        events.append(
            (PROVISION_REASON, "Plunder has begun provisioning the Operating System", "Normal")
        )
    if after == "Provisioned":
        took = host.provisioned_in
        duration = f"{took:.0f}s" if took is not None else "an unknown time"
        events.append(
            (PROVISION_REASON, f"Host has been successfully provisioned OS in {duration}", "Normal")
        )
    if after == "Failed":
        events.append(
            (host.error_reason or "HostError", f"host {host.name} failed provisioning", "Warning")
        )
    return events


def waiting_for_slot(
    host: HostCandidate, refusal: slots.Decision | None, previous: PlunderMachineStatus | None
) -> Wait | None:
    """The wait of a machine whose host waits for a provisioning slot (None: it does not).

    ``refusal`` is what the slot gate holds for the host. A restarted controller's gate knows
    nothing until it has decided the host again: while the host is still ``available``, a wait
    the machine already shows is kept rather than flipped to "provisioning" and back.
    """
    if host.state in slots.SLOT_STATES:
        return None
    if refusal is not None:
        return Wait(slots.WAITING_REASON, f"host {host.name}: {refusal.message}", "Pending")
    shown = find_condition(previous, PROVISIONED)
    if host.state == "available" and shown is not None and shown.reason == slots.WAITING_REASON:
        return Wait(slots.WAITING_REASON, shown.message or "", "Pending")
    return None


def slot_wait_events(
    previous: PlunderMachineStatus | None, status: PlunderMachineStatus
) -> list[EventSpec]:
    """The Event of a machine that begins to wait for a provisioning slot."""
    now = find_condition(status, PROVISIONED)
    if now is None or now.reason != slots.WAITING_REASON:
        return []
    before = find_condition(previous, PROVISIONED)
    if before is not None and before.reason == slots.WAITING_REASON:
        return []
    return [(slots.WAITING_REASON, now.message or "", "Normal")]


def no_hardware_event(machine: PlunderMachine) -> EventSpec:
    """The Warning a person sees when no host is free (the seed's words)."""
    selector = machine.spec.host_selector
    detail = f" matching {selector.to_api()}" if selector else ""
    return (NO_HARDWARE_REASON, f"{NO_HARDWARE_MESSAGE}{detail}; waiting for a host", "Warning")


NO_HARDWARE = Wait(
    NO_HARDWARE_REASON,
    "no available host matches; one is claimed as soon as one is free",
    "WaitingForHost",
)


def network_from_ip_address(body: Mapping[str, Any]) -> StaticNetwork:
    """The static network of an IPAM ``IPAddress`` (spec.address, prefix, gateway)."""
    spec = body.get("spec") or {}
    return StaticNetwork(
        ip_address=spec["address"],
        prefix_length=int(spec.get("prefix", 24)),
        gateway=spec.get("gateway") or None,
    )


def claim_is_mine(claim: Mapping[str, Any], machine_uid: str) -> bool:
    """Whether an IPAddressClaim named like the machine is this machine's, and still in use.

    A claim left by an earlier machine of the same name (its owner uid differs) is not: its
    address will be freed when the claim is collected, and must not go to a new host meanwhile.
    """
    meta = claim.get("metadata") or {}
    owners = meta.get("ownerReferences") or []
    return not meta.get("deletionTimestamp") and any(
        owner.get("uid") == machine_uid for owner in owners
    )


def ip_address_claim(
    machine: PlunderMachine, owner_ref: Mapping[str, Any], cluster: str | None
) -> dict[str, Any]:
    """The IPAddressClaim of a machine whose address comes from a pool.

    The machine owns it, so it goes when the machine goes.
    """
    pool = machine.spec.address_from_pool
    assert pool is not None
    spec: dict[str, Any] = {
        "poolRef": {"apiGroup": pool.api_group, "kind": pool.kind, "name": pool.name}
    }
    labels = {}
    if cluster:
        spec["clusterName"] = cluster
        labels[CLUSTER_NAME_LABEL] = cluster
    return {
        "metadata": {
            "name": machine.metadata.name,
            "namespace": machine.metadata.namespace,
            "labels": labels,
            "ownerReferences": [dict(owner_ref)],
        },
        "spec": spec,
    }
