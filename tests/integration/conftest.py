"""Integration tests share the session's real plane (fixtures in tests/conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from lightkube import Client

from plunder.lab import capi
from plunder.lab.plane import Plane
from tests.conftest import PLANE_FACTS


@pytest.fixture(scope="session")
def ipam_in_cluster(
    plane: Plane,
    kube: Client,
    cluster_api_crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[capi.ClusterAPIControllers]:
    """The real in-cluster IPAM provider (from tools/ipam), with its pool CRDs and webhooks."""
    started = time.monotonic()
    running = capi.start_ipam_in_cluster(
        kube, plane.kubeconfig, plane.pki, tmp_path_factory.mktemp("ipam-in-cluster")
    )
    PLANE_FACTS.append(
        f"in-cluster IPAM provider: ready {time.monotonic() - started:.1f} s after start"
    )
    yield running
    running.stop()
