"""The seed's walkthrough in the lab, to the end: a working Kubernetes cluster on its hosts.

`plunderctl lab up --hosts 2` runs everything (plane, Cluster API, the provider, the boot service,
two blank hosts: one BIOS, one UEFI, as the default lab mixes them) on the examples' subnet;
``kubectl apply -f examples/simple/`` then provisions the control-plane Machine with the node
image, its ``kubeadm init`` runs, the worker gets its bootstrap data and joins, and
``clusterctl get kubeconfig`` gives a kubeconfig on which both Nodes are Ready, registered with
``plunder://<mac>`` so that each Machine has its ``nodeRef``. A pod on the worker serves HTTP and
a pod on the control plane reaches it across the pod network, by the Service's DNS name
and through its Service (CoreDNS answers for it, kube-proxy routes to it).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any

import pytest
import yaml

from plunder.images import binaries
from plunder.k8s import capi
from plunder.k8s.client import sync_client
from tests.conftest import IsolatedLab, eventually, isolated_lab, nested, run_ok

pytestmark = pytest.mark.e2e

EXAMPLES = binaries.repository_root() / "examples" / "simple"
"""The repository's own files, as a person applies them."""
MARKER = "plunder-pod-network-ok"
WORKLOAD_RETRY_S = 600
"""How long a read of the workload cluster is tried again: its API server is emulated (a
restart of it there, if one comes, takes minutes)."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedLab]:
    """A lab of two hosts (BIOS and UEFI) on the examples' subnet (172.31.99.0/24)."""
    folder = tmp_path_factory.mktemp("lab")
    examples = IPv4Network("172.31.99.0/24")
    with isolated_lab(folder, "--hosts", "2", subnet=examples) as running:
        yield running


def _workload_kubectl(lab: IsolatedLab, env: dict[str, str]) -> list[str]:
    """The workload cluster's kubectl, with the kubeconfig clusterctl gives."""
    clusterctl = str(binaries.ensure_binary("clusterctl"))
    kubeconfig = run_ok([clusterctl, "get", "kubeconfig", "cluster-plunder"], env)
    path = lab.folder / "cluster-plunder.kubeconfig"
    path.write_text(kubeconfig)
    return [str(binaries.ensure_binary("kubectl")), f"--kubeconfig={path}"]


def _json(kubectl: list[str], env: dict[str, str], *args: str) -> dict[str, Any]:
    output = run_ok([*kubectl, *args, "-o", "json"], env, retry_for=WORKLOAD_RETRY_S)
    loaded: dict[str, Any] = yaml.safe_load(output)
    return loaded


def _ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


SERVER_POD = f"""
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {{app: web}}
spec:
  nodeName: worker
  containers:
    - name: web
      image: plunder.local/smoke/busybox:1.35
      imagePullPolicy: Never
      command:
        - sh
        - -c
        - mkdir -p /www && echo {MARKER} > /www/index.html && httpd -f -p 8080 -h /www
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"""

CLIENT_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  nodeName: controlplane
  restartPolicy: Never
  tolerations: [{operator: Exists}]
  containers:
    - name: client
      image: plunder.local/smoke/busybox:1.35
      imagePullPolicy: Never
      command:
        - sh
        - -c
        - >-
          printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 POD_IP 8080 &&
          nslookup web.default.svc.cluster.local &&
          printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 SERVICE_IP 80
"""


@pytest.mark.timeout(3600)  # two emulated hosts, one after the other, each with kubeadm
def test_the_walkthrough_ends_in_a_working_cluster(lab: IsolatedLab) -> None:
    env = {**os.environ, "KUBECONFIG": str(lab.kubeconfig)}
    started = time.monotonic()
    run_ok([str(binaries.ensure_binary("kubectl")), "apply", "-f", str(EXAMPLES)], env)
    kube = sync_client(lab.kubeconfig)

    def machine(name: str) -> Any:
        return kube.get(capi.Machine, name, namespace="default")

    marks: dict[str, float] = {}

    def reached(name: str, what: str, *path: str, timeout: float) -> None:
        eventually(lambda: nested(machine(name), *path), f"{name}: {what}", timeout=timeout)
        marks[f"{name} {what}"] = time.monotonic() - started

    # Under TCG: provisioning ~2-3 min a host, kubeadm init several minutes.
    reached(
        "controlplane",
        "provisioned",
        "status",
        "initialization",
        "infrastructureProvisioned",
        timeout=900,
    )
    reached("controlplane", "nodeRef", "status", "nodeRef", timeout=1500)
    reached(
        "worker",
        "provisioned",
        "status",
        "initialization",
        "infrastructureProvisioned",
        timeout=1200,
    )
    # the worker's join waits for the control plane's kubeadm init: up to 30 min there
    reached("worker", "nodeRef", "status", "nodeRef", timeout=2400)
    for name in ("controlplane", "worker"):
        eventually(
            lambda name=name: nested(machine(name), "status", "phase") == "Running",  # type: ignore[misc]
            f"{name} Running",
            timeout=120,
        )

    kubectl = _workload_kubectl(lab, env)
    try:
        _the_workload_cluster_works(lab, kubectl, env, machine, marks, started)
    except BaseException:
        print(_workload_report(lab, kubectl, env))
        raise
    print("\nwalkthrough, seconds from kubectl apply:")
    for what, seconds in marks.items():
        print(f"  {what:40s} {seconds:7.1f}")


def _the_workload_cluster_works(
    lab: IsolatedLab,
    kubectl: list[str],
    env: dict[str, str],
    machine: Any,
    marks: dict[str, float],
    started: float,
) -> None:
    """Nodes Ready and registered as their Machines; CoreDNS, the pod network and Services work."""

    def nodes() -> list[dict[str, Any]]:
        return list(_json(kubectl, env, "get", "nodes")["items"])

    eventually(
        lambda: len(nodes()) == 2 and all(_ready(n) for n in nodes()), "2 Nodes Ready", timeout=900
    )
    marks["all Nodes Ready"] = time.monotonic() - started
    firmware = {}
    for host in lab.hosts():
        firmware[host["mac"]] = host["firmware"]
    for node in nodes():
        name = node["metadata"]["name"]
        provider_id = node["spec"]["providerID"]
        assert provider_id == nested(machine(name), "spec", "providerID")
        assert provider_id.startswith("plunder://")
        node_ips = {a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"}
        machine_ips = {
            a["address"]
            for a in nested(machine(name), "status", "addresses")
            if a["type"] == "InternalIP"
        }
        assert node_ips == machine_ips, (name, node_ips, machine_ips)
    used = {firmware[n["spec"]["providerID"].removeprefix("plunder://")] for n in nodes()}
    assert used == {"bios", "uefi"}, f"the cluster's hosts' firmware: {used}"

    # CoreDNS runs; a pod on the worker is reached from the control plane across the pod network.
    eventually(
        lambda: all(
            _ready_pod(p)
            for p in _json(
                kubectl, env, "-n", "kube-system", "get", "pods", "-l", "k8s-app=kube-dns"
            )["items"]
        ),
        "CoreDNS ready",
        timeout=900,
    )
    run_ok([*kubectl, "apply", "-f", "-"], env, stdin=SERVER_POD)
    eventually(lambda: _ready_pod(_json(kubectl, env, "get", "pod", "web")), "web pod", 600)
    pod_ip = _json(kubectl, env, "get", "pod", "web")["status"]["podIP"]
    service_ip = _json(kubectl, env, "get", "service", "web")["spec"]["clusterIP"]
    client = CLIENT_POD.replace("POD_IP", pod_ip).replace("SERVICE_IP", service_ip)
    run_ok([*kubectl, "apply", "-f", "-"], env, stdin=client)
    eventually(
        lambda: (
            nested(_json(kubectl, env, "get", "pod", "client"), "status", "phase")
            in ("Succeeded", "Failed")
        ),
        "client pod done",
        timeout=600,
    )
    logs = run_ok([*kubectl, "logs", "client"], env)
    # by the pod's IP (the pod network), CoreDNS's answer, by the Service's IP (kube-proxy)
    assert logs.count(MARKER) == 2 and service_ip in logs, logs
    marks["pod reached across nodes"] = time.monotonic() - started


def _workload_report(lab: IsolatedLab, kubectl: list[str], env: dict[str, str]) -> str:
    """What a person looks at when the workload cluster does not work: pods, events, logs."""
    commands = [
        ["get", "nodes", "-o", "wide"],
        ["get", "pods", "-A", "-o", "wide"],
        ["describe", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns"],
        ["logs", "-n", "kube-system", "-l", "k8s-app=kube-dns", "--tail=50", "--all-containers"],
        ["get", "events", "-A", "--sort-by=.lastTimestamp"],
    ]
    parts = []
    for args in commands:
        try:
            done = subprocess.run(
                [*kubectl, *args], capture_output=True, text=True, env=env, timeout=120
            )
            parts.append(f"$ kubectl {' '.join(args)}\n{done.stdout}{done.stderr}")
        except subprocess.TimeoutExpired:
            parts.append(f"$ kubectl {' '.join(args)}: timed out")
    for log in sorted(lab.folder.rglob("*.serial.log")):
        tail = log.read_text(errors="replace").splitlines()[-40:]
        parts.append(f"--- {log.name} (last 40 lines)\n" + "\n".join(tail))
    return "\n".join(parts)


def _ready_pod(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
