"""A rolling upgrade over 100 simulated hosts, with only the hosts it needs (issue #13, item 2).

Everything but the hosts and the kubelets is real: the test plane, Cluster API's own controllers
(its MachineDeployment and MachineSet controllers decide the rollout), this provider's controller
and boot service as processes. The hosts are simulated agents that speak to the boot service
over HTTP as agent.sh and cloud-init do (:class:`tests.integration.sim_agent.HttpAgent`): they
write the image, phone home and wipe their disk when they are released. The plane stands for the
workload cluster too (as in test_remediation): a :class:`Kubelets` thread registers each
Machine's Node, Ready, once its host runs the OS, so Cluster API sees the Machines available,
drains their Nodes before deleting them, and deletes the Nodes afterwards.

The numbers: 100 worker hosts (and one for the control plane), a MachineDeployment of 95 with
``maxSurge: 5`` and ``maxUnavailable: 3``: replicas + maxSurge = the hosts, so once the five
spare hosts are taken every further new Machine waits for an old Machine's host to be wiped.
Changing the deployment's PlunderMachineTemplate to one with another image rolls all 95.

A ledger (:class:`tests.integration.chaos_ledger.Ledger`) watches the hosts and PlunderMachines
through the whole rollout: no host passes from one machine to another, no machine names two
hosts or a host that is not its own, no host is claimed again before its wipe is done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import NodeSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Node, Secret
from lightkube.types import PatchType

from plunder.api.infrastructure import HOST_ANNOTATION
from plunder.k8s import capi
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict
from plunder.lab.capi import ClusterAPIControllers
from plunder.lab.plane import Plane
from plunder.lab.processes import StartupError
from tests.conftest import eventually, listed, nested, provider_controller, run_kubectl
from tests.integration.chaos_ledger import Follower, Ledger
from tests.integration.chaos_world import BootProcess
from tests.integration.sim_agent import HttpAgent
from tests.integration.test_capi import MachineDeployment, machine_deployment
from tests.integration.test_machine_world import HOSTS, MACHINES, create_host
from tests.integration.test_remediation import node, node_ready, workload_cluster

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
POOL = 100
REPLICAS = 95
MAX_SURGE = 5
MAX_UNAVAILABLE = 3
INSTALL_SECONDS = (1.0, 3.0)
"""The image write and first boot of a simulated host (also the time a wiped host's old Node
has to be deleted before the host's next Machine registers one with the same providerID)."""
IMAGES = {
    "workers-v1": "http://172.31.99.1:8080/files/images/debian-12.raw.gz",
    "workers-v2": "http://172.31.99.1:8080/files/images/debian-13.raw.gz",
}
DEPLOYMENT_LABEL = "cluster.x-k8s.io/deployment-name"
NODE_LABEL = "plunder.dev/test-namespace"


def template(name: str) -> dict[str, Any]:
    """A PlunderMachineTemplate of workers on the pool's hosts, writing ``IMAGES[name]``."""
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "PlunderMachineTemplate",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "hostSelector": {"matchLabels": {"plunder.dev/role": "worker"}},
                    "image": {"url": IMAGES[name], "checksum": "ab" * 32, "format": "raw-gzip"},
                }
            }
        },
    }


def deployment() -> dict[str, Any]:
    """The workers: bootstrap data given (the Secret ``bootstrap``), rolled with a surge."""
    made = machine_deployment(REPLICAS)
    made["spec"]["rollout"] = {
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": MAX_SURGE, "maxUnavailable": MAX_UNAVAILABLE},
        }
    }
    machine = made["spec"]["template"]["spec"]
    machine["bootstrap"] = {"dataSecretName": "bootstrap"}
    machine["infrastructureRef"]["name"] = "workers-v1"
    return made


class Kubelets:
    """The workers' kubelets: each Machine's Node registered, Ready, once its host runs the OS.

    A Node is named after its Machine (the host's ``local-hostname`` is the machine's name) and
    carries the host's providerID, as a kubelet's does. The host runs the OS once its
    PlunderMachine is provisioned, which is when Cluster API copies the providerID to the
    Machine: that is the moment the Node appears here.
    """

    def __init__(self, plane: Plane, kube: Client, namespace: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.registered: dict[str, str] = {}
        """Machine name → its Node's name."""
        self.created: dict[str, float] = {}
        """Machine name → when its first event came (monotonic seconds)."""
        self.waits: dict[str, float] = {}
        """Machine name → seconds from its first event to its Node (its host running the OS)."""
        self.watch = Follower(plane.kubeconfig, capi.Machine, namespace, self.on_machine)

    def on_machine(self, kind: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        name, provider_id = meta["name"], nested(body, "spec", "providerID")
        if (meta.get("labels") or {}).get(DEPLOYMENT_LABEL) != "workers":
            return
        self.created.setdefault(name, time.monotonic())
        if kind == "DELETED" or meta.get("deletionTimestamp") or not provider_id:
            return
        if name in self.registered:
            return
        node_name = f"{self.namespace}-{name}"
        labels = {NODE_LABEL: self.namespace}
        self.kube.create(
            Node(
                metadata=ObjectMeta(name=node_name, labels=labels),
                spec=NodeSpec(providerID=provider_id),
            )
        )
        node_ready(self.kube, node_name, "True")
        self.registered[name] = node_name
        self.waits[name] = time.monotonic() - self.created[name]

    def start(self) -> None:
        self.watch.start()

    def stop(self) -> None:
        self.watch.stopping.set()
        for left in self.kube.list(Node, labels={NODE_LABEL: self.namespace}):
            try:
                self.kube.delete(Node, left.metadata.name or "")
            except ApiError as error:
                if error.status.code != 404:
                    raise


@contextmanager
def pool(
    plane: Plane, kube: Client, kubectl: list[str], namespace: str, folder: Path
) -> Iterator[tuple[Ledger, HttpAgent, Kubelets]]:
    """The workload cluster and the pool's hosts; the boot service, agents, ledger, kubelets."""
    with ThreadPoolExecutor(16) as threads:
        list(
            threads.map(
                lambda i: create_host(
                    kube,
                    namespace,
                    f"h{i:03d}",
                    f"00:50:56:00:{i:02x}:01",
                    {"plunder.dev/role": "worker"},
                ),
                range(POOL),
            )
        )
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bootstrap", namespace=namespace),
            stringData={"value": "#cloud-config\n", "format": "cloud-config"},
        )
    )
    manifest = folder / "templates.yaml"
    manifest.write_text("\n---\n".join(json.dumps(template(name)) for name in IMAGES))
    for path in (REPO / "examples" / "simple" / "cluster.yaml", manifest):
        applied = run_kubectl(kubectl, "apply", "-n", namespace, "-f", str(path))
        assert applied.returncode == 0, applied.stderr
    boot = BootProcess(plane.kubeconfig, folder / "boot.log", namespace, folder / "boot")
    agents = HttpAgent(plane.kubeconfig, namespace, boot.url, INSTALL_SECONDS)
    ledger = Ledger(plane.kubeconfig, namespace, agents.wiped_in)
    kubelets = Kubelets(plane, kube, namespace)
    with node(kube, f"{namespace}-cp", "plunder://00:50:56:a5:11:30"):
        workload_cluster(kube, plane, namespace)  # the control plane's host and Machine
        try:
            ledger.start()
            kubelets.start()
            boot.start()
            agents.start()
            agents.parked.wait()
            if agents.failure is not None:
                raise agents.failure
            with provider_controller(plane.kubeconfig, folder, namespace):
                yield ledger, agents, kubelets
        except BaseException:
            print((folder / "controller.log").read_text()[-20000:])
            raise
        finally:
            agents.stop()
            boot.stop()
            ledger.stop()
            kubelets.stop()


def workers(kube: Client, namespace: str) -> list[dict[str, Any]]:
    """The deployment's Machines (those being deleted too)."""
    return [
        as_dict(m)
        for m in listed(kube, capi.Machine, namespace)
        if (m.metadata.labels or {}).get(DEPLOYMENT_LABEL) == "workers"
    ]


def available(machine: dict[str, Any]) -> bool:
    conditions = nested(machine, "status", "conditions") or []
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)


def machines_of_deployment(kube: Client, namespace: str) -> list[dict[str, Any]]:
    """The workers' PlunderMachines (not the control plane's)."""
    return [
        as_dict(m) for m in listed(kube, MACHINES, namespace) if m.metadata.name != "controlplane"
    ]


def cloned_from(machine: dict[str, Any]) -> str | None:
    """The PlunderMachineTemplate Cluster API made the PlunderMachine from."""
    name: str | None = (machine["metadata"].get("annotations") or {}).get(
        "cluster.x-k8s.io/cloned-from-name"
    )
    return name


def deployment_done(kube: Client, namespace: str) -> bool:
    """The deployment's status: its spec seen, every replica up to date and available."""
    body = as_dict(kube.get(MachineDeployment, "workers", namespace=namespace))
    status = body.get("status") or {}
    counts = [status.get(key) for key in ("replicas", "upToDateReplicas", "availableReplicas")]
    seen = status.get("observedGeneration") == body["metadata"]["generation"]
    return seen and counts == [REPLICAS] * 3


def rolled_out(kube: Client, namespace: str, template_name: str) -> bool:
    """``REPLICAS`` workers available, each from ``template_name``; no other, even deleting.

    The deployment's status is asked first (one read): the lists only once it says done.
    """
    if not deployment_done(kube, namespace):
        return False
    found = workers(kube, namespace)
    made = machines_of_deployment(kube, namespace)
    return (
        len(found) == len(made) == REPLICAS
        and all(available(m) and not m["metadata"].get("deletionTimestamp") for m in found)
        and all(cloned_from(m) == template_name for m in made)
    )


def census(kube: Client, namespace: str) -> str:
    """What the deployment's Machines, PlunderMachines and hosts are doing (shown on a timeout)."""
    counted: dict[str, int] = {}
    for m in workers(kube, namespace):
        key = (
            f"Machine {nested(m, 'status', 'phase')} available={available(m)} "
            f"nodeRef={bool(nested(m, 'status', 'nodeRef'))} "
            f"deleting={bool(m['metadata'].get('deletionTimestamp'))}"
        )
        counted[key] = counted.get(key, 0) + 1
    for m in machines_of_deployment(kube, namespace):
        key = f"PlunderMachine {nested(m, 'status', 'state')} from {cloned_from(m)}"
        counted[key] = counted.get(key, 0) + 1
    for h in map(as_dict, kube.list(HOSTS, namespace=namespace)):
        key = f"host {nested(h, 'status', 'state')} claimed={bool(h['spec'].get('consumerRef'))}"
        counted[key] = counted.get(key, 0) + 1
    deployment = as_dict(kube.get(MachineDeployment, "workers", namespace=namespace))
    lines = [f"{n:4d} {key}" for key, n in sorted(counted.items())]
    return "\n".join([*lines, f"MachineDeployment status: {deployment.get('status')}"])


def waited(
    kube: Client, namespace: str, ready: Callable[[], object], what: str, timeout: float
) -> None:
    """``eventually``, and on a timeout what every object was doing."""
    try:
        eventually(ready, what, timeout=timeout)
    except StartupError:
        print(census(kube, namespace))
        raise


@pytest.mark.timeout(900)
def test_a_rolling_upgrade_over_100_hosts_gives_no_host_twice_and_reuses_the_wiped_ones(
    cluster_api_controllers: ClusterAPIControllers,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    namespace: str,
    tmp_path: Path,
) -> None:
    kube = k8s_client.sync_client(plane.kubeconfig, timeout=60)  # the API server is busy
    with pool(plane, kube, kubectl, namespace, tmp_path) as (ledger, agents, kubelets):
        begun = time.monotonic()
        manifest = tmp_path / "workers.yaml"
        manifest.write_text(json.dumps(deployment()))
        applied = run_kubectl(kubectl, "apply", "-n", namespace, "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
        waited(
            kube,
            namespace,
            lambda: rolled_out(kube, namespace, "workers-v1"),
            f"{REPLICAS} workers",
            300,
        )
        first = time.monotonic() - begun
        print(f"{REPLICAS} workers available {first:.1f} s after the deployment was applied")

        # The upgrade: the deployment's template now names the new image's PlunderMachineTemplate.
        old = {m["metadata"]["name"] for m in workers(kube, namespace)}
        assert old <= set(kubelets.waits)
        started = time.monotonic()
        kube.patch(
            MachineDeployment,
            "workers",
            {"spec": {"template": {"spec": {"infrastructureRef": {"name": "workers-v2"}}}}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
        waited(
            kube, namespace, lambda: rolled_out(kube, namespace, "workers-v2"), "the rollout", 600
        )
        took = time.monotonic() - started
        # The old PlunderMachines are gone: their finalizer waited for their hosts' wipe.
        assert not old & {m["metadata"]["name"] for m in machines_of_deployment(kube, namespace)}

        ledger.cross_check()
        with ledger.lock:
            summary = (
                f"given twice {sorted(ledger.given_twice)}, two hosts {sorted(ledger.two_hosts)}, "
                f"returned unwiped {sorted(ledger.unwiped)}, "
                f"given unwiped {sorted(ledger.given_unwiped)}, "
                f"unverified {ledger.unverified}"
            )
            assert not (
                ledger.given_twice or ledger.two_hosts or ledger.unwiped or ledger.given_unwiped
            ), summary
            workers_used = {name for name in ledger.hosts_used if name != "hcp"}
            reused = {
                name
                for name in workers_used
                if len({uid for _, uid in ledger.hosts[name].history if uid}) > 1
            }
            peak_machines = ledger.machines_peak - 1  # the control plane's PlunderMachine
            peak_claimed = ledger.claimed_peak - 1  # its host
        # Every worker runs the new image, on a host of its own, with its own Node.
        new = machines_of_deployment(kube, namespace)
        assert len(new) == REPLICAS
        claims = {
            h["metadata"]["name"]: h["spec"]
            for h in map(as_dict, kube.list(HOSTS, namespace=namespace))
        }
        named = [(m["metadata"].get("annotations") or {}).get(HOST_ANNOTATION) for m in new]
        assert len(set(named)) == REPLICAS and None not in named, named
        for machine, host in zip(new, named, strict=True):
            assert nested(machine, "status", "state") == "Provisioned", machine["metadata"]["name"]
            assert nested(machine, "spec", "image", "url") == IMAGES["workers-v2"]
            assert claims[host]["image"]["url"] == IMAGES["workers-v2"]
            assert claims[host]["consumerRef"]["name"] == machine["metadata"]["name"]
        for machine in workers(kube, namespace):
            own = kubelets.registered[machine["metadata"]["name"]]
            assert nested(machine, "status", "nodeRef", "name") == own, machine["metadata"]
        # No Machine waited for ever: each new one got its host, and its Node.
        new_waits = sorted(wait for name, wait in kubelets.waits.items() if name not in old)
        assert set(kubelets.created) - old == set(kubelets.waits) - old, "a Machine never ran"
        assert len(new_waits) == REPLICAS, new_waits
        left = [n.metadata.name for n in kube.list(Node, labels={NODE_LABEL: namespace})]
        assert len(left) == REPLICAS, f"old Nodes not deleted: {sorted(left)}"
        drained = {
            e.involvedObject.name
            for e in kube.list(Event, namespace=namespace)
            if e.involvedObject.kind == "Machine" and e.reason == "SuccessfulDrainNode"
        }
        assert drained == old, f"old Machines whose Node was not drained: {sorted(old - drained)}"
        assert len(workers_used) <= POOL
        assert len(reused) >= REPLICAS - MAX_SURGE  # the wiped hosts served the new Machines
        print(
            f"rolling upgrade of {REPLICAS} workers (maxSurge {MAX_SURGE}, maxUnavailable "
            f"{MAX_UNAVAILABLE}) over {POOL} hosts: {took:.1f} s; hosts used {len(workers_used)} "
            f"({len(reused)} of them by an old and a new Machine, none by two at once); "
            f"at most {peak_machines} machines at once, at most {peak_claimed} hosts claimed "
            f"at once; wipes {sum(len(c) for c in agents.wiped.values())}; a new Machine "
            f"waited for its Node {new_waits[len(new_waits) // 2]:.1f} s (median), at most "
            f"{new_waits[-1]:.1f} s"
        )
