"""`clusterctl generate cluster` from a local provider repository, and what it generates.

What it generates is then run under Cluster API's real controllers: KubeadmControlPlane,
MachineDeployment and ClusterClass stamp out our kinds from our templates.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import Client

from plunder.api.infrastructure import PlunderCluster, PlunderMachine, PlunderMachineTemplate
from plunder.cli import release
from plunder.images import binaries
from plunder.k8s.resources import resource_for
from plunder.lab.capi import ClusterAPIControllers
from plunder.lab.plane import Plane
from tests.conftest import eventually, listed, nested, provider_controller, run_kubectl

pytestmark = pytest.mark.integration

IMAGE_URL = "http://172.31.99.1:8080/files/images/debian-12.raw"
IMAGE_CHECKSUM = "cd" * 32
TOPOLOGY_OWNED = "topology.cluster.x-k8s.io/owned"
VARIABLES = {
    "CONTROL_PLANE_ENDPOINT_IP": "172.31.99.50",
    "CONTROL_PLANE_GATEWAY": "172.31.99.1",
    "CONTROL_PLANE_NAMESERVER": "172.31.99.1",
    "IMAGE_URL": IMAGE_URL,
    "IMAGE_CHECKSUM": IMAGE_CHECKSUM,
}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local clusterctl repository with this checkout's release artifacts."""
    folder = tmp_path_factory.mktemp("clusterctl-repository")
    release.write_local_repository(folder)
    return folder


def generate(
    plane: Plane, repository: Path, namespace: str, flavor: str | None = None, workers: int = 2
) -> str:
    flavor_args = ["--flavor", flavor] if flavor else []
    generated = subprocess.run(
        [
            str(binaries.ensure_binary("clusterctl")),
            "generate",
            "cluster",
            "bm1",
            "--infrastructure",
            f"plunder:{release.release_version()}",  # nothing to look it up in: no `init` ran
            *flavor_args,
            "--config",
            str(repository / release.CLUSTERCTL_CONFIG),
            "--kubeconfig",
            str(plane.kubeconfig),
            "--target-namespace",
            namespace,
            "--kubernetes-version",
            "v1.36.3",
            "--control-plane-machine-count",
            "1",
            "--worker-machine-count",
            str(workers),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        # Its own config folder, so a person's ~/.config/cluster-api never leaks in.
        env={**os.environ, **VARIABLES, "XDG_CONFIG_HOME": str(repository / "xdg")},
    )
    assert generated.returncode == 0, generated.stderr
    return generated.stdout


def by_kind(manifest: str) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in yaml.safe_load_all(manifest):
        if doc:
            kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def test_generate_cluster_fills_the_template_variables(
    cluster_api_crds: list[str], plane: Plane, repository: Path
) -> None:
    manifest = generate(plane, repository, "site-a", workers=3)
    assert "${" not in manifest
    kinds = by_kind(manifest)
    assert sorted(kinds) == [
        "Cluster",
        "KubeadmConfigTemplate",
        "KubeadmControlPlane",
        "MachineDeployment",
        "PlunderCluster",
        "PlunderMachineTemplate",
    ]
    assert all(doc["metadata"]["namespace"] == "site-a" for docs in kinds.values() for doc in docs)
    (cluster,) = kinds["PlunderCluster"]
    assert cluster["spec"]["controlPlaneEndpoint"] == {"host": "172.31.99.50", "port": 6443}
    for template in kinds["PlunderMachineTemplate"]:
        image = template["spec"]["template"]["spec"]["image"]
        assert image == {"url": IMAGE_URL, "checksum": IMAGE_CHECKSUM, "format": "raw"}
    (control_plane,) = kinds["KubeadmControlPlane"]
    assert control_plane["spec"]["replicas"] == 1
    assert control_plane["spec"]["version"] == "v1.36.3"
    (workers,) = kinds["MachineDeployment"]
    assert workers["spec"]["replicas"] == 3


def plunder_machines(kube: Client, namespace: str) -> list[Any]:
    return listed(kube, resource_for(PlunderMachine), namespace)


def test_the_generated_cluster_gets_a_control_plane_machine_and_workers(
    cluster_api_controllers: ClusterAPIControllers,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    repository: Path,
    namespace: str,
    tmp_path: Path,
) -> None:
    """KubeadmControlPlane and the MachineDeployment stamp PlunderMachines from our templates."""
    manifest = generate(plane, repository, namespace)
    with provider_controller(plane.kubeconfig, tmp_path, namespace):
        applied = run_kubectl(kubectl, "apply", "-f", "-", stdin=manifest)
        assert applied.returncode == 0, applied.stderr

        def machines_by_role() -> dict[str, int]:
            roles: dict[str, int] = {}
            for made in plunder_machines(kube, namespace):
                labels = nested(made, "metadata", "labels") or {}
                role = "control-plane" if "cluster.x-k8s.io/control-plane" in labels else "worker"
                roles[role] = roles.get(role, 0) + 1
            return roles

        # KCP makes its first machine only once our PlunderCluster is provisioned.
        eventually(
            lambda: machines_by_role() == {"control-plane": 1, "worker": 2},
            "one control-plane and two worker PlunderMachines",
            timeout=90,
        )
        for made in plunder_machines(kube, namespace):
            assert nested(made, "spec", "image", "url") == IMAGE_URL


def test_the_topology_flavor_builds_the_cluster_from_the_cluster_class(
    cluster_api_controllers: ClusterAPIControllers,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    repository: Path,
    namespace: str,
) -> None:
    """The ClusterClass's patches put the variables into our PlunderCluster and machines."""
    manifest = generate(plane, repository, namespace, flavor="topology", workers=1)
    assert sorted(by_kind(manifest)) == [
        "Cluster",
        "ClusterClass",
        "KubeadmConfigTemplate",
        "KubeadmControlPlaneTemplate",
        "PlunderClusterTemplate",
        "PlunderMachineTemplate",
    ]
    applied = run_kubectl(kubectl, "apply", "-f", "-", stdin=manifest)
    assert applied.returncode == 0, applied.stderr

    def plunder_clusters() -> list[Any]:
        return listed(kube, resource_for(PlunderCluster), namespace)

    eventually(lambda: len(plunder_clusters()) == 1, "the topology's PlunderCluster")
    (made,) = plunder_clusters()
    assert nested(made, "spec", "controlPlaneEndpoint") == {"host": "172.31.99.50", "port": 6443}

    # The topology clones the class's PlunderMachineTemplates (control plane, md-0) with the
    # patched image. (Its Machines come only after the control plane is initialized, for
    # workers, which needs a workload cluster.)
    def cloned_templates() -> list[Any]:
        templates = listed(kube, resource_for(PlunderMachineTemplate), namespace)
        return [t for t in templates if nested(t, "metadata", "labels", TOPOLOGY_OWNED) == ""]

    eventually(lambda: len(cloned_templates()) == 2, "the topology's machine templates")
    for template in cloned_templates():
        assert nested(template, "spec", "template", "spec", "image") == {
            "url": IMAGE_URL,
            "checksum": IMAGE_CHECKSUM,
            "checksumType": "sha256",
            "format": "raw",
        }


def test_the_remediation_flavor_is_the_default_cluster_with_a_health_check_that_api_accepts(
    cluster_api_controllers: ClusterAPIControllers,
    plane: Plane,
    kubectl: list[str],
    repository: Path,
    namespace: str,
) -> None:
    """The flavour adds a MachineHealthCheck naming a PlunderRemediationTemplate, nothing else."""
    default = by_kind(generate(plane, repository, namespace))
    manifest = generate(plane, repository, namespace, flavor="remediation")
    assert "${" not in manifest
    kinds = by_kind(manifest)
    (check,) = kinds.pop("MachineHealthCheck")
    (template,) = kinds.pop("PlunderRemediationTemplate")
    assert kinds == default
    assert check["spec"]["remediation"]["templateRef"] == {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "PlunderRemediationTemplate",
        "name": template["metadata"]["name"],
    }
    assert check["spec"]["selector"]["matchLabels"] == {
        "cluster.x-k8s.io/deployment-name": kinds["MachineDeployment"][0]["metadata"]["name"]
    }
    # UNHEALTHY_NODE_TIMEOUT_SECONDS unset: NotReady or Unknown for 5 minutes
    assert [
        (c["status"], c["timeoutSeconds"])
        for c in check["spec"]["checks"]["unhealthyNodeConditions"]
    ] == [("Unknown", 300), ("False", 300)]
    assert template["spec"]["template"]["spec"]["strategy"] == {
        "type": "Reboot",
        "retryLimit": 1,
        "timeout": "10m",
    }
    # Cluster API's webhooks and our CRD's rules accept it as generated.
    applied = run_kubectl(kubectl, "apply", "--dry-run=server", "-f", "-", stdin=manifest)
    assert applied.returncode == 0, applied.stderr
