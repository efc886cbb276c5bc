"""Day one on a live cluster, from the shipped template: scale a MachineDeployment, delete it all.

`clusterctl generate cluster` with `templates/cluster-template.yaml` (a KubeadmControlPlane of
one and a MachineDeployment of one) in a lab of three blank UEFI hosts, applied as a person
applies it, comes up Ready. Scaling the MachineDeployment to two makes a new Node join on the
third host; scaling back to one drains and deletes a Node, and its host is wiped and
``available`` again; deleting the Cluster returns every host, wiped, to the pool. Once the first
two Nodes are Ready, ``plunderctl dashboard`` shows the live cluster in headless Chromium: both
machines' timelines on the cluster's page (screenshots: build/artifacts/dashboard/lab-*.png).

The day-two flow on this cluster (a rollout, a hung worker remediated, a dead one replaced) is
on branch stop21-full: it failed its first CI run, and is not in CI until it passes.

All three hosts boot UEFI so that every run has a UEFI control plane and a UEFI host wiped and
given again: the walkthrough's mixed lab (one BIOS, one UEFI host) puts the control plane on
either firmware, since host selection hashes the machine's uid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from plunder.api.inventory import PlunderHost
from plunder.cli import release
from plunder.images import binaries
from plunder.k8s import capi
from plunder.k8s.client import sync_client
from plunder.k8s.resources import as_dict, resource_for
from tests.browser import look_at_a_live_cluster
from tests.conftest import IsolatedLab, eventually, isolated_lab, nested, run_ok

pytestmark = pytest.mark.e2e

CLUSTER = "bm1"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedLab]:
    """A lab of three blank UEFI hosts on a subnet of its own."""
    folder = tmp_path_factory.mktemp("lab")
    with isolated_lab(folder, "--hosts", "3", "--firmware", "uefi") as running:
        yield running


def _generate(lab: IsolatedLab, repository: Path, env: dict[str, str]) -> str:
    server = lab.subnet.network_address + 1
    image = f"http://{server}:8080/files/images/debian-12-kubernetes.raw.lzo"
    variables = {
        "CONTROL_PLANE_ENDPOINT_IP": str(lab.subnet.network_address + 20),
        "CONTROL_PLANE_GATEWAY": str(server),
        "CONTROL_PLANE_NAMESERVER": str(server),
        "IMAGE_URL": image,
        "IMAGE_CHECKSUM": f"{image}.sha256",
        "IMAGE_FORMAT": "raw-lzop",
        "XDG_CONFIG_HOME": str(repository / "xdg"),
    }
    return run_ok(
        [
            str(binaries.ensure_binary("clusterctl")),
            "generate",
            "cluster",
            CLUSTER,
            "--infrastructure",
            f"plunder:{release.release_version()}",
            "--config",
            str(repository / release.CLUSTERCTL_CONFIG),
            "--kubernetes-version",
            "v1.36.3",
            "--control-plane-machine-count",
            "1",
            "--worker-machine-count",
            "1",
        ],
        {**env, **variables},
    )


def _ready_nodes(kubectl: list[str], env: dict[str, str]) -> dict[str, str]:
    """Ready Node name → providerID."""
    # the workload API server is emulated: a read that times out is tried again (10 min)
    listing = run_ok([*kubectl, "get", "nodes", "-o", "json"], env, retry_for=600)
    nodes = yaml.safe_load(listing)["items"]
    return {
        node["metadata"]["name"]: node["spec"].get("providerID", "")
        for node in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    }


@pytest.mark.timeout(4200)  # three emulated hosts, each provisioned, one of them twice
def test_a_machine_deployment_scales_and_the_cluster_goes_back_to_the_pool(
    lab: IsolatedLab, tmp_path: Path
) -> None:
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
    kubectl_mgmt = [str(binaries.ensure_binary("kubectl"))]
    repository = tmp_path / "repository"
    release.write_local_repository(repository)
    started = time.monotonic()
    marks: dict[str, float] = {}
    run_ok([*kubectl_mgmt, "apply", "-f", "-"], env, stdin=_generate(lab, repository, env))
    kube = sync_client(lab.kubeconfig)

    def machines() -> list[dict[str, Any]]:
        return [as_dict(m) for m in kube.list(capi.Machine, namespace="default")]

    def running(count: int) -> bool:
        found = machines()
        return len(found) == count and all(nested(m, "status", "phase") == "Running" for m in found)

    eventually(lambda: running(2), "control plane and worker Running", timeout=2700)
    marks["2 Machines Running"] = time.monotonic() - started
    clusterctl = str(binaries.ensure_binary("clusterctl"))
    kubeconfig = tmp_path / "workload.kubeconfig"
    kubeconfig.write_text(run_ok([clusterctl, "get", "kubeconfig", CLUSTER], env))
    kubectl = [*kubectl_mgmt, f"--kubeconfig={kubeconfig}"]
    eventually(lambda: len(_ready_nodes(kubectl, env)) == 2, "2 Nodes Ready", timeout=900)
    marks["2 Nodes Ready"] = time.monotonic() - started
    # The dashboard on the live lab: both machines' timelines on the cluster's page.
    (tmp_path / "dashboard").mkdir()
    rows = look_at_a_live_cluster(lab.kubeconfig, "default", CLUSTER, 2, tmp_path / "dashboard")
    assert sorted(row.split(" · ")[0] for row in rows) == sorted(
        m["metadata"]["name"] for m in machines()
    )

    # Scale up: a new Node joins, on the third host.
    md = f"{CLUSTER}-md-0"
    run_ok([*kubectl_mgmt, "scale", "machinedeployment", md, "--replicas=2"], env)
    eventually(lambda: len(_ready_nodes(kubectl, env)) == 3, "3 Nodes Ready", timeout=1800)
    marks["scaled to 2: 3 Nodes Ready"] = time.monotonic() - started
    provider_ids = set(_ready_nodes(kubectl, env).values())
    assert provider_ids == {f"plunder://{host['mac']}" for host in lab.hosts()}  # one host each
    assert {host["firmware"] for host in lab.hosts()} == {"uefi"}

    # Scale down: a Node is drained and deleted, its host wiped and back in the pool.
    run_ok([*kubectl_mgmt, "scale", "machinedeployment", md, "--replicas=1"], env)
    eventually(lambda: len(_ready_nodes(kubectl, env)) == 2, "back to 2 Nodes", timeout=900)
    hosts = resource_for(PlunderHost)

    def host_states() -> dict[str, str | None]:
        found = (as_dict(h) for h in kube.list(hosts, namespace="default"))
        return {h["spec"]["bootMACAddress"]: (h.get("status") or {}).get("state") for h in found}

    in_use = {pid.removeprefix("plunder://") for pid in _ready_nodes(kubectl, env).values()}
    freed = {host["mac"] for host in lab.hosts()} - in_use
    assert len(freed) == 1
    eventually(
        lambda: all(host_states()[mac] == "available" for mac in freed),
        "the freed host wiped and available",
        timeout=900,
    )
    marks["scaled to 1: host available"] = time.monotonic() - started
    released = as_dict(
        kube.get(hosts, f"host-{next(iter(freed)).replace(':', '-')}", namespace="default")
    )
    assert released["spec"].get("consumerRef") is None
    wiped = [p for p in released["status"]["phases"] if p["name"] == "deprovisioning"]
    assert wiped and wiped[0].get("finished"), released["status"]["phases"]

    # Delete the Cluster: every host goes back, wiped.
    run_ok([*kubectl_mgmt, "delete", "cluster", CLUSTER, "--wait=false"], env)
    eventually(lambda: not machines(), "every Machine gone", timeout=1200)
    eventually(
        lambda: all(state == "available" for state in host_states().values()),
        "every host wiped and available",
        timeout=900,
    )
    marks["cluster deleted: all hosts available"] = time.monotonic() - started
    print("\nday one from the template, seconds from kubectl apply:")
    for what, seconds in marks.items():
        print(f"  {what:40s} {seconds:7.1f}")
