"""Cluster API's pause: ``clusterctl move`` and users stop reconciliation with it."""

from __future__ import annotations

from collections.abc import Mapping

PAUSED_ANNOTATION = "cluster.x-k8s.io/paused"


def is_paused(annotations: Mapping[str, str], cluster_paused: bool = False) -> bool:
    """Paused by the object's annotation or by ``Cluster.spec.paused``."""
    return cluster_paused or PAUSED_ANNOTATION in annotations


def host_paused(
    annotations: Mapping[str, str], cluster_name: str | None, cluster_paused: bool | None
) -> bool:
    """Whether a host is left alone: paused itself, or claimed for a Cluster that is paused.

    ``clusterctl move`` pauses only the Cluster. A host carries its Cluster's name (the
    ``cluster.x-k8s.io/cluster-name`` label the claim writes), so the pause reaches it even
    while its machine is gone from the source and not yet created on the target.
    ``cluster_paused`` None: that Cluster is not (or not yet) here, which during a move means it
    is on its way; the host waits for it rather than being taken for an orphan.
    """
    if PAUSED_ANNOTATION in annotations:
        return True
    if not cluster_name:
        return False
    return cluster_paused is None or cluster_paused
