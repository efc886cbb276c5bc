"""Cluster API's pause: ``clusterctl move`` and users stop reconciliation with it."""

from __future__ import annotations

from collections.abc import Mapping

PAUSED_ANNOTATION = "cluster.x-k8s.io/paused"


def is_paused(annotations: Mapping[str, str], cluster_paused: bool = False) -> bool:
    """Paused by the object's annotation or by ``Cluster.spec.paused``."""
    return cluster_paused or PAUSED_ANNOTATION in annotations
