"""Cluster API's real controllers (core, kubeadm bootstrap, kubeadm control plane) with ours.

The managers run as processes against the test plane, their webhooks served; these tests show
that Cluster API reacts to our kinds as the contract says, before any host is involved.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Secret

from plunder.api.infrastructure import PlunderMachine
from plunder.images import binaries
from plunder.k8s import capi
from plunder.k8s.resources import resource_for
from plunder.lab.capi import ClusterAPIControllers
from plunder.lab.plane import Plane
from tests.conftest import eventually, listed, nested, provider_controller, run_kubectl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "simple"
MachineDeployment = create_namespaced_resource(
    capi.CORE_GROUP, capi.CORE_VERSION, "MachineDeployment", "machinedeployments"
)


def apply(kubectl: list[str], namespace: str, *paths: Path) -> None:
    for path in paths:
        applied = run_kubectl(kubectl, "apply", "-n", namespace, "-f", str(path))
        assert applied.returncode == 0, applied.stderr


def test_the_walkthrough_cluster_is_provisioned_and_gets_kubeadm_bootstrap_data(
    cluster_api_controllers: ClusterAPIControllers,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    namespace: str,
    tmp_path: Path,
) -> None:
    with provider_controller(plane.kubeconfig, tmp_path, namespace):
        apply(kubectl, namespace, EXAMPLES / "cluster.yaml", EXAMPLES / "machine.yaml")

        def cluster() -> Any:
            return kube.get(capi.Cluster, "cluster-plunder", namespace=namespace)

        # Cluster API copies our PlunderCluster's endpoint and provisioned flag to the Cluster.
        eventually(
            lambda: nested(cluster(), "status", "initialization", "infrastructureProvisioned"),
            "Cluster infrastructureProvisioned",
        )
        assert nested(cluster(), "spec", "controlPlaneEndpoint") == {
            "host": "172.31.99.20",
            "port": 6443,
        }

        # ... and then the kubeadm bootstrap provider writes the control plane's cloud-init.
        def data_secret() -> str | None:
            machine = kube.get(capi.Machine, "controlplane", namespace=namespace)
            name: str | None = nested(machine, "spec", "bootstrap", "dataSecretName")
            return name

        eventually(lambda: data_secret() is not None, "bootstrap data Secret", timeout=90)
        secret = kube.get(Secret, str(data_secret()), namespace=namespace)
        data = secret.data or {}
        assert base64.b64decode(data["format"]).decode() == "cloud-config"
        user_data = base64.b64decode(data["value"]).decode()
        assert user_data.startswith("## template: jinja\n#cloud-config")
        assert "kubeadm init" in user_data

        # Cluster API made the Machine the owner of our PlunderMachine (the contract's link).
        plunder_machine = kube.get(
            resource_for(PlunderMachine), "controlplane", namespace=namespace
        )
        owners = nested(plunder_machine, "metadata", "ownerReferences") or []
        assert capi.owner_named(owners, "Machine") is not None

        # clusterctl describe shows our PlunderCluster's conditions.
        described = run_kubectl(
            [str(binaries.ensure_binary("clusterctl"))],
            "describe",
            "cluster",
            "cluster-plunder",
            "-n",
            namespace,
            "--show-conditions=all",
            "--kubeconfig",
            str(plane.kubeconfig),
        )
        assert described.returncode == 0, described.stderr
        ours = described.stdout.split(f"PlunderCluster {namespace}/cluster-plunder", 1)
        assert len(ours) == 2, described.stdout
        assert re.search(
            r"Ready\s+True\s+Provisioned\s.*control-plane endpoint 172.31.99.20:6443", ours[1]
        ), described.stdout


def machine_deployment(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{capi.CORE_GROUP}/{capi.CORE_VERSION}",
        "kind": "MachineDeployment",
        "metadata": {"name": "workers"},
        "spec": {
            "clusterName": "cluster-plunder",
            "replicas": replicas,
            "template": {
                "spec": {
                    "clusterName": "cluster-plunder",
                    "version": "v1.36.3",
                    "bootstrap": {
                        "configRef": {
                            "apiGroup": "bootstrap.cluster.x-k8s.io",
                            "kind": "KubeadmConfigTemplate",
                            "name": "workers",
                        }
                    },
                    "infrastructureRef": {
                        "apiGroup": "infrastructure.cluster.x-k8s.io",
                        "kind": "PlunderMachineTemplate",
                        "name": "workers",
                    },
                }
            },
        },
    }


TEMPLATES = """
apiVersion: infrastructure.cluster.x-k8s.io/v1alpha1
kind: PlunderMachineTemplate
metadata:
  name: workers
spec:
  template:
    metadata:
      labels:
        plunder.dev/pool: workers
    spec:
      hostSelector:
        matchLabels:
          plunder.dev/role: worker
      image:
        url: http://172.31.99.1:8080/files/images/debian-12.raw.gz
        checksum: "%s"
        format: raw-gzip
---
apiVersion: bootstrap.cluster.x-k8s.io/v1beta2
kind: KubeadmConfigTemplate
metadata:
  name: workers
spec:
  template:
    spec:
      joinConfiguration:
        nodeRegistration:
          name: "{{ ds.meta_data.local_hostname }}"
""" % ("ab" * 32)


def test_a_machine_deployment_scales_plunder_machines_up_and_down(
    cluster_api_controllers: ClusterAPIControllers,
    kube: Client,
    kubectl: list[str],
    namespace: str,
    tmp_path: Path,
) -> None:
    """The MachineSet stamps PlunderMachines out of the template, and deletes them again."""
    manifest = tmp_path / "workers.yaml"
    manifest.write_text(TEMPLATES + "---\n" + json.dumps(machine_deployment(2)))
    apply(kubectl, namespace, EXAMPLES / "cluster.yaml", manifest)

    def has(count: int) -> bool:
        """``count`` PlunderMachines, each owned by its Machine (a MachineSet owns it at first)."""
        made = listed(kube, resource_for(PlunderMachine), namespace)
        owned = [
            m for m in made if capi.owner_named(nested(m, "metadata", "ownerReferences"), "Machine")
        ]
        return len(made) == len(owned) == count

    eventually(lambda: has(2), "two PlunderMachines")
    for made in listed(kube, resource_for(PlunderMachine), namespace):
        assert nested(made, "spec", "hostSelector") == {
            "matchLabels": {"plunder.dev/role": "worker"}
        }
        assert nested(made, "metadata", "labels", "plunder.dev/pool") == "workers"
        assert nested(made, "metadata", "labels", "cluster.x-k8s.io/cluster-name") == (
            "cluster-plunder"
        )

    # The defaulting webhook gave the MachineDeployment its selector (it was not in the manifest).
    deployment = kube.get(MachineDeployment, "workers", namespace=namespace)
    assert nested(deployment, "spec", "selector", "matchLabels")

    for replicas in (3, 1):
        scaled = run_kubectl(
            kubectl, "scale", "-n", namespace, "machinedeployment/workers", f"--replicas={replicas}"
        )
        assert scaled.returncode == 0, scaled.stderr
        eventually(lambda count=replicas: has(count), f"{replicas} PlunderMachines")
