"""Day one and two on a live cluster, from the shipped templates.

`clusterctl generate cluster` with the remediation flavour (`templates/cluster-template.yaml`'s
KubeadmControlPlane of one and MachineDeployment of one, and a MachineHealthCheck on the workers:
tests/integration/test_clusterctl.py checks the flavour adds only that) in a lab of
three blank UEFI hosts, applied as a person applies it, comes up Ready: a control-plane Node
and a worker's. Once both are Ready, ``plunderctl dashboard`` shows the live cluster in headless
Chromium: both machines' timelines on the cluster's page (screenshots:
build/artifacts/dashboard/lab-*.png).

Scaling the MachineDeployment up and down is not a step of its own here (it was until
2026-12-08): the rollout below provisions a new host for a new Machine, then drains and deletes
the old Node and wipes its host, which is what a scale up and a scale down do, and each step on
these emulated hosts costs CI minutes. tests/integration/test_capi.py scales one with Cluster
API's real controllers.

Day two (issue #13), on the same cluster:

- Rolling upgrade: the MachineDeployment is pointed at a new PlunderMachineTemplate whose image
  has another URL (a second name, served by the lab's boot service, for the same node image: the
  same OS, only the template differs). A new host is provisioned, the old Node drained and
  deleted, the old host wiped and back in the pool.
- Remediation: the worker's VM hangs (``virsh suspend``: its BMC still says it is on). The Node
  goes NotReady, the MachineHealthCheck fires, its PlunderRemediation power-cycles the host
  through its BMC, and the same Machine's Node is Ready again. (A VM powered off, rather than
  hung, needs no remediation: the power loop powers a host that should be on back on within
  its 15 s poll; the next step shows it.)
- A host that stays dead: its network link is cut and its VM powered off. The power loop powers
  it back on, without a network; the remediation's one reboot does not help; the tries run out,
  the Machine is replaced on the spare host, and the sick host is marked unhealthy. The link is
  restored once the host is being deprovisioned, so it is wiped like any other.

Throughout, a watch (tests/e2e/day_two.py) checks that no host is ever given to two machines.
Deleting the Cluster returns every host, wiped, to the pool; the sick host keeps its unhealthy
mark until `plunderctl host clear-unhealthy`.

The KubeadmControlPlane's rollout is not run: the control-plane machine's own static address is
the API endpoint (no VIP), so a second control-plane machine cannot take it over.

All three hosts boot UEFI so that every run has a UEFI control plane and a UEFI host wiped and
given again: the walkthrough's mixed lab (one BIOS, one UEFI host) puts the control plane on
either firmware, since host selection hashes the machine's uid.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube.types import PatchType

from plunder.api.infrastructure import PlunderMachine, PlunderMachineTemplate
from plunder.api.inventory import UNHEALTHY_ANNOTATION, PlunderHost
from plunder.api.remediation import PlunderRemediation, PlunderRemediationTemplate
from plunder.cli import release
from plunder.images import binaries
from plunder.k8s import capi
from plunder.k8s.client import sync_client
from plunder.k8s.resources import as_dict, resource_for
from tests.browser import look_at_a_live_cluster
from tests.conftest import IsolatedLab, eventually, isolated_lab, nested, plunderctl, run_ok
from tests.e2e.day_two import AllocationWatch, LabVMs, host_name, mac_of, vm_of

pytestmark = pytest.mark.e2e

CLUSTER = "bm1"
MD = f"{CLUSTER}-md-0"
UNHEALTHY_NODE_TIMEOUT_SECONDS = 60
"""The MachineHealthCheck's wait on a NotReady Node (the template's default is 300)."""
DEAD_HOST_REMEDIATION_TIMEOUT = "60s"
"""The wait after the reboot of a host that stays dead (the first remediation keeps 10m: its
reboot must have time to bring the Node back)."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedLab]:
    """A lab of three blank UEFI hosts on a subnet of its own."""
    folder = tmp_path_factory.mktemp("lab")
    with isolated_lab(folder, "--hosts", "3", "--firmware", "uefi") as running:
        yield running


def _image_url(lab: IsolatedLab, name: str) -> str:
    return f"http://{lab.subnet.network_address + 1}:8080/files/images/{name}"


def _generate(lab: IsolatedLab, repository: Path, env: dict[str, str]) -> str:
    server = lab.subnet.network_address + 1
    image = _image_url(lab, "debian-12-kubernetes.raw.lzo")
    variables = {
        "CONTROL_PLANE_ENDPOINT_IP": str(lab.subnet.network_address + 20),
        "CONTROL_PLANE_GATEWAY": str(server),
        "CONTROL_PLANE_NAMESERVER": str(server),
        "IMAGE_URL": image,
        "IMAGE_CHECKSUM": f"{image}.sha256",
        "IMAGE_FORMAT": "raw-lzop",
        "UNHEALTHY_NODE_TIMEOUT_SECONDS": str(UNHEALTHY_NODE_TIMEOUT_SECONDS),
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
            "--flavor",
            "remediation",
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


def _nodes(kubectl: list[str], env: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """Node name → (providerID, Ready)."""
    # the workload API server is emulated: a read that times out is tried again (10 min)
    listing = run_ok([*kubectl, "get", "nodes", "-o", "json"], env, retry_for=600)
    return {
        node["metadata"]["name"]: (
            node["spec"].get("providerID", ""),
            any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in node["status"].get("conditions") or []
            ),
        )
        for node in yaml.safe_load(listing)["items"]
    }


def _ready_nodes(kubectl: list[str], env: dict[str, str]) -> dict[str, str]:
    """Ready Node name → providerID."""
    return {name: pid for name, (pid, ready) in _nodes(kubectl, env).items() if ready}


def _second_image_name(lab: IsolatedLab) -> tuple[str, str]:
    """The node image under a second name the boot service serves; its name and sha256.

    A hard link: the same bytes (the same OS) under another URL, which is all a template change
    needs to roll the MachineDeployment.
    """
    images = lab.folder / "files" / "images"
    second = images / "debian-12-kubernetes-b.raw.lzo"
    if not second.exists():
        os.link(images / "debian-12-kubernetes.raw.lzo", second)
    digest = (images / "debian-12-kubernetes.raw.lzo.sha256").read_text().split()[0]
    return second.name, digest


@pytest.mark.timeout(7200)  # three emulated hosts, provisioned four times in all
def test_a_cluster_rolls_out_is_remediated_and_goes_back_to_the_pool(
    lab: IsolatedLab, tmp_path: Path
) -> None:
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
    kubectl_mgmt = [str(binaries.ensure_binary("kubectl"))]
    repository = tmp_path / "repository"
    release.write_local_repository(repository)
    started = time.monotonic()
    marks: dict[str, float] = {}
    steps: dict[str, float] = {}
    watch = AllocationWatch(lab.kubeconfig).start()
    run_ok([*kubectl_mgmt, "apply", "-f", "-"], env, stdin=_generate(lab, repository, env))
    kube = sync_client(lab.kubeconfig)
    hosts = resource_for(PlunderHost)
    vm = LabVMs(lab.folder)

    def machines() -> list[dict[str, Any]]:
        return [as_dict(m) for m in kube.list(capi.Machine, namespace="default")]

    def workers() -> list[dict[str, Any]]:
        return [
            m
            for m in machines()
            if (m["metadata"].get("labels") or {}).get("cluster.x-k8s.io/deployment-name") == MD
        ]

    def running(count: int) -> bool:
        found = machines()
        return len(found) == count and all(nested(m, "status", "phase") == "Running" for m in found)

    def host(mac: str) -> dict[str, Any]:
        return as_dict(kube.get(hosts, host_name(mac), namespace="default"))

    def host_states() -> dict[str, str | None]:
        found = (as_dict(h) for h in kube.list(hosts, namespace="default"))
        return {h["spec"]["bootMACAddress"]: (h.get("status") or {}).get("state") for h in found}

    def wiped(mac: str) -> bool:
        """The host is available, its consumer gone and its last deprovisioning finished."""
        found = host(mac)
        phases = [
            p
            for p in (found.get("status") or {}).get("phases") or []
            if p["name"] == "deprovisioning"
        ]
        return (
            (found.get("status") or {}).get("state") == "available"
            and found["spec"].get("consumerRef") is None
            and bool(phases)
            and bool(phases[-1].get("finished"))
        )

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

    provider_ids = set(_ready_nodes(kubectl, env).values())
    assert len(provider_ids) == 2 and provider_ids <= {f"plunder://{h['mac']}" for h in lab.hosts()}
    assert {host["firmware"] for host in lab.hosts()} == {"uefi"}

    # Day two. Rolling upgrade: a new template, with another image URL; a new host, the old
    # Node drained and deleted, the old host wiped.
    step = time.monotonic()
    (old_worker,) = workers()
    old_mac = mac_of(old_worker["spec"]["providerID"])
    image_name, digest = _second_image_name(lab)
    template = as_dict(kube.get(resource_for(PlunderMachineTemplate), MD, namespace="default"))
    new_template = {
        "apiVersion": template["apiVersion"],
        "kind": template["kind"],
        "metadata": {"name": f"{MD}-b", "namespace": "default"},
        "spec": template["spec"],
    }
    image = {"url": _image_url(lab, image_name), "checksum": digest, "format": "raw-lzop"}
    new_template["spec"]["template"]["spec"]["image"] = image
    run_ok([*kubectl_mgmt, "apply", "-f", "-"], env, stdin=yaml.safe_dump(new_template))
    patch = {"spec": {"template": {"spec": {"infrastructureRef": {"name": f"{MD}-b"}}}}}
    run_ok(
        [
            *kubectl_mgmt,
            "patch",
            "machinedeployment",
            MD,
            "--type=merge",
            "-p",
            json.dumps(patch),
        ],
        env,
    )

    def rolled_out() -> str | None:
        """The new worker's MAC, once it alone is the worker and its Node is Ready."""
        found = workers()
        if len(found) != 1 or found[0]["metadata"]["name"] == old_worker["metadata"]["name"]:
            return None
        pid = found[0]["spec"].get("providerID")
        ready = set(_ready_nodes(kubectl, env).values())
        return mac_of(pid) if pid in ready and len(ready) == 2 else None

    eventually(rolled_out, "the rollout: a new worker Ready, the old one gone", timeout=2400)
    worker = workers()[0]
    worker_mac = rolled_out()
    assert worker_mac is not None and worker_mac != old_mac
    plunder_machine = as_dict(
        kube.get(
            resource_for(PlunderMachine),
            worker["spec"]["infrastructureRef"]["name"],
            namespace="default",
        )
    )
    assert plunder_machine["spec"]["image"]["url"] == image["url"]
    steps["rollout: new worker Ready, old Node gone"] = time.monotonic() - step
    eventually(lambda: wiped(old_mac), "the old worker's host wiped and available", timeout=900)
    steps["rollout: old host wiped, available"] = time.monotonic() - step

    # Remediation: the worker hangs; the health check fires; its host is power-cycled through
    # its BMC; the same Machine's Node is Ready again.
    worker_name = worker["metadata"]["name"]
    worker_vm = vm_of(lab.hosts(), worker_mac)
    worker_node = next(
        n for n, (pid, _) in _nodes(kubectl, env).items() if pid == worker["spec"]["providerID"]
    )
    fault = time.monotonic()
    vm.hang(worker_vm)
    eventually(
        lambda: not _nodes(kubectl, env)[worker_node][1],
        "the hung worker's Node NotReady",
        timeout=600,
    )
    steps["hang: Node NotReady"] = time.monotonic() - fault
    eventually(
        lambda: worker_name in watch.snapshot_remediations(),
        "the MachineHealthCheck's PlunderRemediation",
        timeout=900,
    )
    steps["hang: PlunderRemediation made"] = time.monotonic() - fault
    eventually(
        lambda: (watch.snapshot_remediations().get(worker_name) or {}).get("retryCount", 0) >= 1,
        "the remediation's reboot",
        timeout=300,
    )
    eventually(
        lambda: _nodes(kubectl, env).get(worker_node, ("", False))[1],
        "the rebooted worker's Node Ready again",
        timeout=1800,
    )
    healed = time.monotonic() - fault
    steps["hang: fault → Node Ready again"] = healed
    print(f"\nremediation: fault → Node Ready again in {healed:.1f} s")
    eventually(
        lambda: (
            worker_name
            not in {
                r.metadata.name
                for r in kube.list(resource_for(PlunderRemediation), namespace="default")
            }
        ),
        "the healed Machine's remediation deleted by Cluster API",
        timeout=600,
    )
    assert [m["metadata"]["name"] for m in workers()] == [worker_name]  # not replaced
    assert vm.state(worker_vm) == "running"
    assert UNHEALTHY_ANNOTATION not in (host(worker_mac)["metadata"].get("annotations") or {})

    # A host that stays dead: link cut, power cut. The power loop powers it back on (no network),
    # the one reboot does not help; the Machine is replaced on the spare host (the old worker's),
    # the sick host marked unhealthy.
    kube.patch(
        resource_for(PlunderRemediationTemplate),
        MD,
        {"spec": {"template": {"spec": {"strategy": {"timeout": DEAD_HOST_REMEDIATION_TIMEOUT}}}}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )
    fault = time.monotonic()
    vm.set_link(worker_vm, worker_mac, up=False)
    vm.power_off(worker_vm)
    assert vm.link(worker_vm, worker_mac) == "down"
    eventually(
        lambda: vm.state(worker_vm) == "running",
        "the power loop to power the host back on",
        timeout=300,
    )
    steps["dead: powered on again by the power loop"] = time.monotonic() - fault
    eventually(
        lambda: UNHEALTHY_ANNOTATION in (host(worker_mac)["metadata"].get("annotations") or {}),
        "the tries to run out: the host marked unhealthy",
        timeout=1800,
    )
    steps["dead: tries ran out, host marked unhealthy"] = time.monotonic() - fault
    remediation = watch.snapshot_remediations()[worker_name]
    assert remediation.get("retryCount") == 1, remediation
    eventually(
        lambda: (host(worker_mac).get("status") or {}).get("state") == "deprovisioning",
        "the sick host released, to be wiped",
        timeout=900,
    )
    # Repaired: powered off (its OS, still cut off, must not rejoin), its link restored, and the
    # power loop starts it into the agent (it is deprovisioning), which wipes it.
    vm.power_off(worker_vm)

    def link_restored() -> bool:
        # The power loop may be powering the host on meanwhile, and the BMC (sushy-tools) sets
        # the boot device by defining the domain again from a copy it read earlier: the link can
        # come back down. A start with the link down is stopped again (the OS it falls back to
        # must not rejoin later), until the host runs with its link up.
        if vm.link(worker_vm, worker_mac) != "up":
            vm.set_link(worker_vm, worker_mac, up=True, live=False)
            return False
        if vm.state(worker_vm) != "running":
            return False
        if vm.link(worker_vm, worker_mac, inactive=False) != "up":
            vm.power_off(worker_vm)
            return False
        return True

    eventually(link_restored, "the repaired host running with its link up", timeout=600)

    def replaced() -> str | None:
        found = workers()
        if len(found) != 1 or found[0]["metadata"]["name"] == worker_name:
            return None
        pid = found[0]["spec"].get("providerID")
        return mac_of(pid) if pid in set(_ready_nodes(kubectl, env).values()) else None

    eventually(replaced, "the replacement worker's Node Ready", timeout=2400)
    assert replaced() == old_mac  # the spare host
    steps["dead: replacement Node Ready"] = time.monotonic() - fault
    eventually(lambda: wiped(worker_mac), "the sick host wiped", timeout=1200)
    steps["dead: sick host wiped"] = time.monotonic() - fault
    assert UNHEALTHY_ANNOTATION in (host(worker_mac)["metadata"].get("annotations") or {})
    marks["day two done"] = time.monotonic() - started

    # Delete the Cluster: every host goes back, wiped; the sick one still marked.
    run_ok([*kubectl_mgmt, "delete", "cluster", CLUSTER, "--wait=false"], env)
    eventually(lambda: not machines(), "every Machine gone", timeout=1200)
    eventually(
        lambda: all(state == "available" for state in host_states().values()),
        "every host wiped and available",
        timeout=900,
    )
    marks["cluster deleted: all hosts available"] = time.monotonic() - started
    watch.stop()
    assert UNHEALTHY_ANNOTATION in (host(worker_mac)["metadata"].get("annotations") or {})
    cleared = plunderctl(
        "host", "clear-unhealthy", host_name(worker_mac), "--kubeconfig", str(lab.kubeconfig)
    )
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    assert UNHEALTHY_ANNOTATION not in (host(worker_mac)["metadata"].get("annotations") or {})
    assert all(
        h["spec"].get("consumerRef") is None
        for h in (as_dict(x) for x in kube.list(hosts, namespace="default"))
    )

    print("\nday one from the template, seconds from kubectl apply:")
    for what, seconds in marks.items():
        print(f"  {what:45s} {seconds:7.1f}")
    print("day two, seconds from each step's start (rollout) or fault:")
    for what, seconds in steps.items():
        print(f"  {what:45s} {seconds:7.1f}")
    print(f"hosts' consumers, in order ({watch.polls} polls, {watch.failed_polls} failed):")
    print(watch.report())
    assert watch.polls > 100
    assert not watch.violations, watch.violations
