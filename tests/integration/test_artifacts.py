"""The provider's shipped artifacts: release components, metadata, examples, Dockerfile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from plunder import __version__
from plunder.api import crdgen
from plunder.cli import release
from plunder.lab.capi import ClusterAPIControllers
from tests.conftest import run_kubectl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROVIDER_LABEL = "cluster.x-k8s.io/provider"


def components() -> list[dict[str, Any]]:
    text = (REPO / release.COMPONENTS_FILE).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_the_committed_components_are_built_from_config() -> None:
    assert release.render_components() == (REPO / release.COMPONENTS_FILE).read_text(), (
        "infrastructure-components.yaml is stale: run `make release`"
    )


def test_the_components_follow_the_clusterctl_contract() -> None:
    docs = components()
    namespaces = [doc for doc in docs if doc["kind"] == "Namespace"]
    assert [ns["metadata"]["name"] for ns in namespaces] == ["plunder-system"]
    for doc in docs:
        assert doc["metadata"]["labels"][PROVIDER_LABEL] == "infrastructure-plunder", doc
        if doc["kind"] in ("ServiceAccount", "Role", "RoleBinding", "Deployment"):
            assert doc["metadata"]["namespace"] == "plunder-system", doc
    (deployment,) = [doc for doc in docs if doc["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "manager"  # clusterctl looks for it by this name
    crds = [doc for doc in docs if doc["kind"] == "CustomResourceDefinition"]
    assert len(crds) == len(crdgen.ALL_KINDS)
    for crd in crds:
        if crd["spec"]["group"] == "infrastructure.cluster.x-k8s.io":
            assert crd["metadata"]["labels"]["cluster.x-k8s.io/v1beta2"] == "v1alpha1"


def test_metadata_maps_this_release_to_contract_v1beta2() -> None:
    metadata = yaml.safe_load((REPO / release.METADATA_FILE).read_text())
    assert metadata["apiVersion"] == "clusterctl.cluster.x-k8s.io/v1alpha3"
    assert metadata["kind"] == "Metadata"
    major, minor = (int(part) for part in __version__.split(".")[:2])
    series = [s for s in metadata["releaseSeries"] if (s["major"], s["minor"]) == (major, minor)]
    assert [s["contract"] for s in series] == ["v1beta2"]


def test_the_examples_are_accepted_with_cluster_apis_webhooks(
    cluster_api_controllers: ClusterAPIControllers, kubectl: list[str], namespace: str
) -> None:
    """Schema, CEL rules and Cluster API's admission webhooks all accept every example."""
    # The ClusterClass example's class, installed for real: the Cluster webhook looks it up.
    cluster_class = REPO / "templates" / "clusterclass-plunder.yaml"
    applied = run_kubectl(kubectl, "apply", "-n", namespace, "-f", str(cluster_class))
    assert applied.returncode == 0, applied.stderr
    for folder in sorted(path for path in (REPO / "examples").iterdir() if path.is_dir()):
        applied = run_kubectl(
            kubectl, "apply", "--dry-run=server", "-n", namespace, "-f", str(folder)
        )
        assert applied.returncode == 0, f"{folder.name}: {applied.stderr}"


def test_the_dockerfile_installs_the_wheel_with_the_constraints() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "constraints.txt" in dockerfile
    assert 'ENTRYPOINT ["plunderctl", "controller"]' in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored
