"""The world a PlunderMachine lives in, built on the real plane.

Cluster API objects, hosts, the controller as a subprocess, and an emulated host agent.

No tests here: the machine tests import these helpers. The agent is played by a thread that
watches the namespace's PlunderHosts and answers as the boot service does for a real host,
through the same state-machine functions (``hoststate.phoned_home`` when a provisioning host's
installed OS would phone home, ``hoststate.agent_progress`` when a wipe is done).
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from plunder.api.infrastructure import PlunderCluster, PlunderMachine
from plunder.api.inventory import PlunderHost
from plunder.k8s import capi
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import processes
from plunder.lab.plane import Plane
from plunder.reconcile import hoststate
from tests.integration.test_controller import controller_argv

HOSTS = resource_for(PlunderHost)
MACHINES = resource_for(PlunderMachine)
CLUSTERS = resource_for(PlunderCluster)
IMAGE = {"url": "http://172.31.99.1:8080/files/os.raw", "checksum": "a" * 64}


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, what: str = "") -> None:
    """Wait until ``predicate()`` is truthy (checked every 0.1 s)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not met in {timeout:.0f}s: {what}"
        time.sleep(0.1)


class Restartable:
    """A service as a subprocess that a test can kill -9 and start again, as a Deployment would.

    Subclasses say how it is started (:meth:`argv`) and on which port it answers ``/healthz``.
    """

    name = "service"

    def __init__(self, log: Path) -> None:
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def argv(self, port: int) -> list[str]:
        """The command line, answering /healthz on ``port``."""
        raise NotImplementedError

    def port(self) -> int:
        """The port of this start (a new free one unless the service keeps its own)."""
        return processes.free_port()

    def start(self) -> None:
        port = self.port()
        with self.log.open("ab") as log_file:
            self.process = subprocess.Popen(
                self.argv(port), stdout=log_file, stderr=subprocess.STDOUT
            )
        processes.wait_until(
            processes.http_ok(f"http://127.0.0.1:{port}/healthz"),
            self.name,
            processes.Managed(self.name, self.process.pid, self.log),
        )

    def kill(self) -> None:
        """SIGKILL: no handler finishes, nothing is cleaned up."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Controller(Restartable):
    """``plunderctl controller`` as a subprocess that a test can kill -9 and start again."""

    name = "controller"

    def __init__(
        self, plane: Plane, log: Path, namespace: str | None = None, args: tuple[str, ...] = ()
    ) -> None:
        super().__init__(log)
        self.plane = plane
        self.namespace = namespace
        self.args = args

    def argv(self, port: int) -> list[str]:
        return [
            *controller_argv(self.plane.kubeconfig, port),
            *(["--namespace", self.namespace] if self.namespace else []),
            *self.args,
        ]


@contextlib.contextmanager
def running_controller(plane: Plane, tmp_path: Path, *args: str) -> Iterator[Controller]:
    controller = Controller(plane, tmp_path / "controller.log", args=args)
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()
        # Captured output: pytest shows it only when the test failed.
        print("controller log (tail):", *controller.log.read_text().splitlines()[-80:], sep="\n")


@pytest.fixture
def machine_controller(
    plane: Plane, kube: Client, cluster_api_crds: list[str], tmp_path: Path
) -> Iterator[Controller]:
    """The controller, running for one test (Cluster API's CRDs installed first)."""
    with running_controller(plane, tmp_path) as running:
        yield running


# ------------------------------------------------------------------------------- objects


def create_cluster(
    kube: Client,
    namespace: str,
    name: str = "c1",
    provisioned: bool = True,
    paused: bool = False,
    failure_domain_label: str | None = None,
) -> None:
    """A Cluster API Cluster and the PlunderCluster it owns.

    The test plays Cluster API: the Cluster's infrastructure flag is set by hand, after the
    PlunderCluster has an endpoint (so a real Cluster API controller, if one runs, agrees).
    """
    created = kube.create(
        capi.Cluster.from_dict(
            {
                "apiVersion": f"{capi.CORE_GROUP}/{capi.CORE_VERSION}",
                "kind": "Cluster",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "paused": paused,
                    "infrastructureRef": {
                        "apiGroup": PlunderCluster.info.group,
                        "kind": "PlunderCluster",
                        "name": name,
                    },
                },
            }
        )
    )
    spec: dict[str, Any] = {}
    if failure_domain_label:
        spec["failureDomainLabel"] = failure_domain_label
    owner = capi.controller_reference(as_dict(created))
    kube.create(
        CLUSTERS.from_dict(
            {
                "apiVersion": PlunderCluster.info.api_version,
                "kind": "PlunderCluster",
                "metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner]},
                "spec": spec,
            }
        )
    )
    if provisioned:
        set_cluster_provisioned(kube, namespace, name)


def set_cluster_provisioned(kube: Client, namespace: str, name: str = "c1") -> None:
    endpoint = {"host": "172.31.99.20", "port": 6443}
    kube.patch(
        CLUSTERS,
        name,
        {"spec": {"controlPlaneEndpoint": endpoint}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    kube.patch(
        capi.Cluster.Status,
        name,
        {"status": {"initialization": {"infrastructureProvisioned": True}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


def set_cluster_paused(kube: Client, namespace: str, paused: bool, name: str = "c1") -> None:
    """``Cluster.spec.paused``, as clusterctl move and people set it."""
    kube.patch(
        capi.Cluster,
        name,
        {"spec": {"paused": paused}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


def create_host(
    kube: Client,
    namespace: str,
    name: str,
    mac: str,
    labels: dict[str, str] | None = None,
    state: str = "available",
) -> None:
    """A PlunderHost as inspection leaves it."""
    kube.create(
        HOSTS.from_dict(
            {
                "apiVersion": PlunderHost.info.api_version,
                "kind": "PlunderHost",
                "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                "spec": {"bootMACAddress": mac, "accepted": True},
            }
        )
    )
    kube.patch(
        HOSTS.Status,
        name,
        {"status": {"state": state, "ipAddress": f"172.31.99.{100 + int(mac[-2:], 16)}"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


def create_hosts(kube: Client, namespace: str, count: int, **labels: str) -> list[str]:
    names = [f"h{i}" for i in range(count)]
    for i, name in enumerate(names):
        create_host(kube, namespace, name, f"00:50:56:a5:11:{i:02x}", dict(labels))
    return names


def populate(kube: Client, namespace: str, size: int, workers: int = 16) -> None:
    """A Cluster, ``size`` available hosts, then ``size`` Machines, ``workers`` requests at once.

    Hosts ``h0000``…, machines ``m0000``… (with their bootstrap Secrets and PlunderMachines).
    """
    create_cluster(kube, namespace)
    with ThreadPoolExecutor(workers) as pool:
        list(
            pool.map(
                lambda i: create_host(
                    kube, namespace, f"h{i:04d}", f"00:50:56:{i >> 8:02x}:{i & 0xFF:02x}:01"
                ),
                range(size),
            )
        )
        list(pool.map(lambda i: create_machine(kube, namespace, f"m{i:04d}"), range(size)))


def create_machine(
    kube: Client,
    namespace: str,
    name: str,
    cluster: str = "c1",
    bootstrap: bool = True,
    with_owner: bool = True,
    spec: dict[str, Any] | None = None,
    failure_domain: str | None = None,
) -> None:
    """A Machine (with its bootstrap Secret) and the PlunderMachine it owns."""
    machine_uid = None
    if with_owner:
        machine_uid = create_capi_machine(kube, namespace, name, cluster, bootstrap, failure_domain)
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "labels": {"cluster.x-k8s.io/cluster-name": cluster},
    }
    if machine_uid:
        metadata["ownerReferences"] = [machine_owner_ref(name, machine_uid)]
    kube.create(
        MACHINES.from_dict(
            {
                "apiVersion": PlunderMachine.info.api_version,
                "kind": "PlunderMachine",
                "metadata": metadata,
                "spec": {"image": IMAGE, **(spec or {})},
            }
        )
    )


def machine_owner_ref(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{capi.CORE_GROUP}/{capi.CORE_VERSION}",
        "kind": "Machine",
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def create_capi_machine(
    kube: Client,
    namespace: str,
    name: str,
    cluster: str = "c1",
    bootstrap: bool = True,
    failure_domain: str | None = None,
) -> str:
    """A Cluster API Machine whose infrastructure is PlunderMachine ``name``; returns its uid."""
    secret = f"{name}-bootstrap"
    kube.create(
        Secret(
            metadata=ObjectMeta(name=secret, namespace=namespace),
            stringData={"value": "#cloud-config\nruncmd: [echo hello]\n", "format": "cloud-config"},
        )
    )
    spec: dict[str, Any] = {
        "clusterName": cluster,
        "bootstrap": {"dataSecretName": secret} if bootstrap else {"configRef": None},
        "infrastructureRef": {
            "apiGroup": PlunderMachine.info.group,
            "kind": "PlunderMachine",
            "name": name,
        },
    }
    if not bootstrap:
        spec["bootstrap"] = {
            "configRef": {
                "apiGroup": "bootstrap.cluster.x-k8s.io",
                "kind": "KubeadmConfig",
                "name": name,
            }
        }
    if failure_domain:
        spec["failureDomain"] = failure_domain
    created = kube.create(
        capi.Machine.from_dict(
            {
                "apiVersion": f"{capi.CORE_GROUP}/{capi.CORE_VERSION}",
                "kind": "Machine",
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }
        )
    )
    uid: str = as_dict(created)["metadata"]["uid"]
    return uid


def set_bootstrap_data(kube: Client, namespace: str, name: str) -> None:
    kube.patch(
        capi.Machine,
        name,
        {"spec": {"bootstrap": {"dataSecretName": f"{name}-bootstrap"}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


# -------------------------------------------------------------------------------- reading


def machine(kube: Client, namespace: str, name: str) -> dict[str, Any]:
    return as_dict(kube.get(MACHINES, name, namespace=namespace))


def machine_gone(kube: Client, namespace: str, name: str) -> bool:
    try:
        kube.get(MACHINES, name, namespace=namespace)
    except ApiError as error:
        return error.status.code == 404
    return False


def hosts(kube: Client, namespace: str) -> list[dict[str, Any]]:
    return [as_dict(h) for h in kube.list(HOSTS, namespace=namespace)]


def machine_condition(body: dict[str, Any], type_: str) -> tuple[str, str] | None:
    for c in (body.get("status") or {}).get("conditions") or ():
        if c["type"] == type_:
            return c["status"], c.get("reason", "")
    return None


def machine_state(kube: Client, namespace: str, name: str) -> str | None:
    state: str | None = (machine(kube, namespace, name).get("status") or {}).get("state")
    return state


def events_of(kube: Client, namespace: str, name: str) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the Events about PlunderMachine ``name``."""
    return [
        (e.type or "", e.reason or "", e.message or "")
        for e in kube.list(Event, namespace=namespace)
        if e.involvedObject.kind == "PlunderMachine" and e.involvedObject.name == name
    ]


def claims(kube: Client, namespace: str) -> dict[str, str]:
    """Host name → the PlunderMachine that claimed it."""
    return {
        h["metadata"]["name"]: h["spec"]["consumerRef"]["name"]
        for h in hosts(kube, namespace)
        if h["spec"].get("consumerRef")
    }


# ---------------------------------------------------------------------------- the agent


class Agent(threading.Thread):
    """Plays every host's agent and installed OS in one namespace, from a watch.

    A provisioning host phones home (after ``install_seconds``, drawn per host, which stands for
    the image write and first boot); a deprovisioning host reports its wipe done.
    """

    def __init__(
        self, plane: Plane, namespace: str, install_seconds: tuple[float, float] = (0.0, 0.0)
    ) -> None:
        super().__init__(daemon=True)
        self.client = k8s_client.sync_client(plane.kubeconfig)
        self.namespace = namespace
        self.install_seconds = install_seconds
        self.stopping = threading.Event()
        self.provisioned = 0
        self.wiped = 0
        self.requests = 1  # the watch
        self.holding = threading.Event()
        """While set, provisioning hosts are left alone (a test holds them mid-install)."""

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                for _, body in self.client.watch(HOSTS, namespace=self.namespace):
                    if self.stopping.is_set():
                        return
                    self.answer(PlunderHost.model_validate(as_dict(body)))

    def answer(self, host: PlunderHost) -> None:
        state = hoststate.state_of(host)
        now = datetime.now(UTC)
        if state == "provisioning" and hoststate.has_image_work(host) and not self.holding.is_set():
            low, high = self.install_seconds
            threading.Timer(
                random.uniform(low, high), self.phone_home, (host.metadata.name,)
            ).start()
        elif state == "deprovisioning":
            change = hoststate.agent_progress(host, {"phase": "done", "reason": "Wiped"}, now)
            if self.write(host, change.status):
                self.wiped += 1

    def phone_home(self, name: str) -> None:
        self.requests += 1
        body = self.client.get(HOSTS, name, namespace=self.namespace)
        host = PlunderHost.model_validate(as_dict(body))
        if hoststate.state_of(host) != "provisioning" or self.holding.is_set():
            return
        if self.write(host, hoststate.phoned_home(host, datetime.now(UTC)).status):
            self.provisioned += 1

    def release_held(self) -> None:
        """Let the held hosts finish."""
        self.holding.clear()
        for body in self.client.list(HOSTS, namespace=self.namespace):
            host = PlunderHost.model_validate(as_dict(body))
            if hoststate.state_of(host) == "provisioning" and hoststate.has_image_work(host):
                self.phone_home(host.metadata.name or "")

    def write(self, host: PlunderHost, status: dict[str, Any] | None) -> bool:
        if not status:
            return False
        self.requests += 1
        try:
            self.client.patch(
                HOSTS.Status,
                host.metadata.name or "",
                {"metadata": {"resourceVersion": host.metadata.resource_version}, "status": status},
                namespace=self.namespace,
                patch_type=PatchType.MERGE,
            )
        except ApiError as error:
            if error.status.code == 409:  # written meanwhile: the next event decides again
                return False
            raise
        return True

    def stop(self) -> None:
        self.stopping.set()


@contextlib.contextmanager
def agent(
    plane: Plane, namespace: str, install_seconds: tuple[float, float] = (0.0, 0.0)
) -> Iterator[Agent]:
    player = Agent(plane, namespace, install_seconds)
    player.start()
    try:
        yield player
    finally:
        player.stop()
