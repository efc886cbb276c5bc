"""PlunderCluster handlers: endpoint, failure domains, provisioned status, pause.

Run on every change of the PlunderCluster and, because what it reports also depends on other
objects (its Cluster's pause, its control-plane machines, the hosts' labels), on a timer that
reads only watch caches and writes only when something changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from plunder.api.common import CLUSTER_NAME_LABEL
from plunder.api.infrastructure import PlunderCluster, PlunderClusterStatus, PlunderMachine
from plunder.k8s import capi
from plunder.operator.caches import Caches
from plunder.reconcile import cluster as decide
from plunder.reconcile.selection import failure_domains

_INFO = PlunderCluster.info
_MACHINES = PlunderMachine.info
RESYNC_SECONDS = 10.0


@kopf.index(_MACHINES.group, _MACHINES.version, _MACHINES.plural)
async def plundermachines_by_cluster(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[tuple[str, str], decide.ControlPlaneCandidate]:
    """Each PlunderMachine under its (namespace, cluster): control-plane endpoint candidates."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    cluster = labels.get(CLUSTER_NAME_LABEL)
    if not cluster:
        return {}
    network = (body.get("spec") or {}).get("network") or {}
    return {
        (namespace or "", cluster): decide.ControlPlaneCandidate(
            name=name,
            created=meta.get("creationTimestamp", ""),
            control_plane=decide.CONTROL_PLANE_LABEL in labels,
            static_ip=network.get("ipAddress"),
        )
    }


@kopf.on.resume(_INFO.group, _INFO.version, _INFO.plural)
@kopf.on.create(_INFO.group, _INFO.version, _INFO.plural)
@kopf.on.update(_INFO.group, _INFO.version, _INFO.plural)
@kopf.on.update(_INFO.group, _INFO.version, _INFO.plural, field="metadata.annotations")
def plundercluster_reconcile(
    body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, **kwargs: Any
) -> None:
    """Write the endpoint (once, if derived) and the status the contract asks for."""
    reconcile(body, meta, patch, kwargs)


@kopf.timer(_INFO.group, _INFO.version, _INFO.plural, interval=RESYNC_SECONDS)
def plundercluster_resync(
    body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, **kwargs: Any
) -> None:
    """Follow what the cluster depends on but kopf does not signal: pause, machines, hosts."""
    reconcile(body, meta, patch, kwargs)


def reconcile(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, kwargs: dict[str, Any]) -> None:
    """Compute the cluster's endpoint and status from it and the caches; patch what changed."""
    cluster = PlunderCluster.model_validate(dict(body))
    namespace = cluster.metadata.namespace or ""
    caches = Caches(kwargs)
    owner = capi.owner_named(meta.get("ownerReferences"), "Cluster")
    facts = caches.cluster(namespace, owner.get("name") if owner else None)
    paused = facts.paused if facts else False
    annotations = dict(meta.annotations)
    if not (paused or "cluster.x-k8s.io/paused" in annotations):
        index: kopf.Index[tuple[str, str], decide.ControlPlaneCandidate] = kwargs[
            "plundermachines_by_cluster"
        ]
        cluster_name = (owner.get("name") if owner else None) or cluster.metadata.name or ""
        endpoint = decide.derived_endpoint(cluster, index.get((namespace, cluster_name), ()))
        if endpoint is not None:
            patch.spec["controlPlaneEndpoint"] = endpoint.to_api()
            cluster.spec.control_plane_endpoint = endpoint
    label = cluster.spec.failure_domain_label
    status = decide.cluster_status(
        cluster,
        annotations,
        int(meta.get("generation", 0)),
        datetime.now(UTC),
        cluster_paused=paused,
        failure_domains=failure_domains(caches.hosts_in(namespace), label) if label else (),
    )
    current = PlunderClusterStatus.model_validate(body.get("status") or {})
    if status.to_api() != current.to_api():
        patch.status.update(status.to_api())
