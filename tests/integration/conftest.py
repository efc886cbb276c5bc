"""Integration tests share the session's real plane (fixtures in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from lightkube import Client

from plunder.lab import capi
from plunder.lab.plane import Plane
from tests.conftest import session_managers


@pytest.fixture(scope="session")
def ipam_in_cluster(
    plane: Plane,
    kube: Client,
    cluster_api_crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[capi.ClusterAPIControllers]:
    """The real in-cluster IPAM provider (from tools/ipam), with its pool CRDs and webhooks."""
    yield from session_managers(
        "in-cluster IPAM provider", capi.start_ipam_in_cluster, plane, kube, tmp_path_factory
    )
