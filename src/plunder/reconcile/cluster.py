"""What a PlunderCluster's status should be (the InfraCluster side of the contract).

There is no load balancer to build on bare metal: the control-plane endpoint is a VIP the user
gives in ``spec.controlPlaneEndpoint`` or, when that is left empty, the static address of the
cluster's first control-plane PlunderMachine (the oldest one labelled
``cluster.x-k8s.io/control-plane`` that has ``spec.network``). The controller writes that into
the spec once, where Cluster API reads it. An address that is only known after a host is claimed
(DHCP, an IPAM pool) cannot serve: Cluster API creates control-plane machines only once the
infrastructure is provisioned, so the endpoint must be known first.

Failure domains are the distinct values of the host label ``spec.failureDomainLabel`` among the
hosts of the cluster's namespace; every one may hold control-plane machines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from plunder.api.common import APIEndpoint, FailureDomain, Initialization
from plunder.api.infrastructure import PlunderCluster, PlunderClusterStatus
from plunder.reconcile import conditions
from plunder.reconcile.pause import is_paused

READY = "Ready"
PAUSED = conditions.PAUSED
CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
API_SERVER_PORT = 6443


@dataclass(frozen=True)
class ControlPlaneCandidate:
    """What the cluster reads of one of its PlunderMachines."""

    name: str
    created: str
    """``metadata.creationTimestamp`` (RFC 3339 sorts as text)."""
    control_plane: bool
    static_ip: str | None


def derived_endpoint(
    cluster: PlunderCluster, machines: Iterable[ControlPlaneCandidate]
) -> APIEndpoint | None:
    """The endpoint to write into an empty ``spec.controlPlaneEndpoint``, if one is known."""
    endpoint = cluster.spec.control_plane_endpoint
    if endpoint is not None and endpoint.host:
        return None
    candidates = sorted(
        (m for m in machines if m.control_plane and m.static_ip), key=lambda m: (m.created, m.name)
    )
    if not candidates:
        return None
    port = endpoint.port if endpoint is not None and endpoint.port else API_SERVER_PORT
    return APIEndpoint(host=candidates[0].static_ip or "", port=port)


def cluster_status(
    cluster: PlunderCluster,
    annotations: Mapping[str, str],
    generation: int,
    now: datetime,
    *,
    cluster_paused: bool = False,
    failure_domains: Iterable[str] = (),
) -> PlunderClusterStatus:
    """The status the controller should write for ``cluster``.

    A paused cluster only reports that it is paused. Otherwise the cluster is provisioned once
    its control-plane endpoint is known.
    """
    status = cluster.status or PlunderClusterStatus()
    paused = is_paused(annotations, cluster_paused)
    current = conditions.set_condition(
        status.conditions, conditions.paused(paused, now, generation)
    )
    if paused:
        return status.model_copy(update={"conditions": current})

    endpoint = cluster.spec.control_plane_endpoint
    provisioned = endpoint is not None and endpoint.host != "" and endpoint.port != 0
    was = bool(status.initialization and status.initialization.provisioned)
    ready = (
        conditions.condition(
            READY,
            "True",
            "Provisioned",
            f"control-plane endpoint {endpoint.host}:{endpoint.port}",
            now,
            generation,
        )
        if provisioned and endpoint is not None
        else conditions.condition(
            READY,
            "False",
            "WaitingForControlPlaneEndpoint",
            "spec.controlPlaneEndpoint has no host and port yet, and no control-plane "
            "PlunderMachine has a static address (spec.network) to take it from",
            now,
            generation,
        )
    )
    current = conditions.set_condition(current, ready)
    domains = [FailureDomain(name=name, control_plane=True) for name in failure_domains]
    return status.model_copy(
        update={
            "initialization": Initialization(provisioned=(provisioned or was) or None),
            "ready": provisioned or was,
            "failure_domains": domains or None,
            "conditions": current,
            "deprecated": conditions.deprecated(current),
            "observed_generation": generation,
        }
    )
