"""PlunderCluster handlers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from plunder.api.infrastructure import PlunderCluster
from plunder.reconcile.cluster import cluster_status

_INFO = PlunderCluster.info


@kopf.on.resume(_INFO.group, _INFO.version, _INFO.plural)
@kopf.on.create(_INFO.group, _INFO.version, _INFO.plural)
@kopf.on.update(_INFO.group, _INFO.version, _INFO.plural)
@kopf.on.update(_INFO.group, _INFO.version, _INFO.plural, field="metadata.annotations")
def plundercluster_reconcile(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
    """Write the status the contract asks for: provisioned once the endpoint is known."""
    cluster = PlunderCluster.model_validate(dict(body))
    status = cluster_status(
        cluster, dict(meta.annotations), int(meta.get("generation", 0)), datetime.now(UTC)
    )
    patch.status.update(status.to_api())
