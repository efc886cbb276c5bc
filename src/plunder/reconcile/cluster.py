"""What a PlunderCluster's status should be (the InfraCluster side of the contract)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from plunder.api.common import DeprecatedStatus, Initialization, V1Beta1Status
from plunder.api.infrastructure import PlunderCluster, PlunderClusterStatus
from plunder.reconcile import conditions
from plunder.reconcile.pause import PAUSED_ANNOTATION, is_paused

READY = "Ready"
PAUSED = "Paused"


def cluster_status(
    cluster: PlunderCluster,
    annotations: Mapping[str, str],
    generation: int,
    now: datetime,
) -> PlunderClusterStatus:
    """The status the controller should write for ``cluster``.

    A paused cluster only reports that it is paused. Otherwise the cluster is provisioned once
    its control-plane endpoint is known: there is no load balancer to build on bare metal; the
    endpoint is a VIP the user gives or, later, the first control-plane host's address.
    """
    status = cluster.status or PlunderClusterStatus()
    current = list(status.conditions or ())
    paused = is_paused(annotations)
    current = conditions.set_condition(
        current,
        conditions.condition(
            PAUSED,
            "True" if paused else "False",
            "Paused" if paused else "NotPaused",
            f"reconciliation is paused by the {PAUSED_ANNOTATION} annotation" if paused else None,
            now,
            generation,
        ),
    )
    if paused:
        return status.model_copy(update={"conditions": current})

    endpoint = cluster.spec.control_plane_endpoint
    provisioned = endpoint is not None and endpoint.host != "" and endpoint.port != 0
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
            "spec.controlPlaneEndpoint has no host and port yet",
            now,
            generation,
        )
    )
    current = conditions.set_condition(current, ready)
    return status.model_copy(
        update={
            "initialization": Initialization(provisioned=provisioned or None),
            "ready": provisioned,
            "conditions": current,
            "deprecated": DeprecatedStatus(
                v1beta1=V1Beta1Status(conditions=conditions.as_v1beta1(current))
            ),
            "observed_generation": generation,
        }
    )
