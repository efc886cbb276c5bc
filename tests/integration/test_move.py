"""``clusterctl move`` of a provisioned cluster, with its inventory, to a second management plane.

Two real planes (etcd + kube-apiserver), each with Cluster API's real managers, clusterctl's
inventory and this provider's controller. On plane A a Cluster's control-plane Machine is
provisioned on a host (the hosts' agent is played by :class:`Agent`); the real
``clusterctl move`` then takes the namespace to plane B. On B everything is there, the host is
what it was (its status restored from its record, never re-inspected, re-provisioned or
power-cycled), and a boot service pointed at B sends the host to its disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Namespace, Secret
from lightkube.types import PatchType

from plunder.api.common import MOVE_LABEL
from plunder.api.infrastructure import PlunderCluster
from plunder.api.inventory import PlunderHost, PlunderHostStatus
from plunder.boot.service import BootService
from plunder.boot.settings import BootSettings, DhcpSettings
from plunder.images import binaries
from plunder.k8s import capi as capi_kinds
from plunder.k8s import client as k8s_client
from plunder.k8s import crds
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import capi, processes
from plunder.lab.plane import Plane, start_plane
from plunder.reconcile import statusrecord
from tests.conftest import eventually, nested, provider_controller, run_kubectl, running
from tests.integration.test_machine_world import HOSTS, MACHINES, agent, create_host

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "simple"
MAC, FREE_MAC = "00:50:56:a5:11:20", "00:50:56:a5:11:21"
CP = "controlplane"
BMC_SECRET = "bmc-credentials"
BMC = {
    # Nothing answers here: a power action the host did not need would show as a round that
    # failed, and its wish would stay undone; either way nothing reaches a server.
    "address": "redfish://127.0.0.1:9/redfish/v1/Systems/h0",
    "credentialsName": BMC_SECRET,
}
KubeadmConfig = create_namespaced_resource(
    "bootstrap.cluster.x-k8s.io", "v1beta2", "KubeadmConfig", "kubeadmconfigs"
)


@pytest.fixture(scope="module")
def plane_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Plane, Client]]:
    """The second management plane, set up as the first: CRDs, Cluster API, the inventory."""
    folder = tmp_path_factory.mktemp("plane-b")
    plane = start_plane(folder / "plane")
    try:
        client = k8s_client.sync_client(plane.kubeconfig)
        crds.install_plunder_crds(client)
        crds.install_crd_files(client, binaries.cluster_api_crd_files())
        managers = capi.start_cluster_api(client, plane.kubeconfig, plane.pki, folder)
        try:
            capi.record_providers(client, [capi.PLUNDER])
            yield plane, client
        finally:
            managers.stop()
    finally:
        plane.stop()


def control_plane_manifest() -> str:
    """The walkthrough's Cluster and its control-plane Machine.

    Not its worker: that would wait for a control plane only a real host can run.
    """
    docs = [doc for doc in yaml.safe_load_all((EXAMPLES / "machine.yaml").read_text()) if doc]
    kept = [doc for doc in docs if doc["metadata"]["name"] == "controlplane"]
    return (EXAMPLES / "cluster.yaml").read_text() + "---\n" + yaml.safe_dump_all(kept)


class StateWatch(threading.Thread):
    """Every (state, consumer) the hosts of a namespace show on a plane, in order.

    None: no state yet, or no consumer.
    """

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        super().__init__(daemon=True)
        self.client = k8s_client.sync_client(kubeconfig)
        self.namespace = namespace
        self.seen: dict[str, list[tuple[str | None, str | None]]] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                for _, body in self.client.watch(HOSTS, namespace=self.namespace):
                    raw = as_dict(body)
                    states = self.seen.setdefault(raw["metadata"]["name"], [])
                    state = (raw.get("status") or {}).get("state")
                    consumer = (raw["spec"].get("consumerRef") or {}).get("name")
                    if not states or states[-1] != (state, consumer):
                        states.append((state, consumer))
                    if self.stopping.is_set():
                        return


def clusterctl_move(source: Path, target: Path, namespace: str, home: Path) -> str:
    moved = subprocess.run(
        [
            str(binaries.ensure_binary("clusterctl")),
            *("move", "--kubeconfig", str(source), "--to-kubeconfig", str(target)),
            *("--namespace", namespace, "-v", "3"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # Its own config folder, so a person's ~/.config/cluster-api never leaks in.
        env={**os.environ, "XDG_CONFIG_HOME": str(home)},
    )
    assert moved.returncode == 0, moved.stdout + moved.stderr
    return moved.stdout + moved.stderr


def power_done_mark(host: dict[str, Any]) -> str | None:
    mark: str | None = (host["metadata"].get("annotations") or {}).get("plunder.dev/power-done")
    return mark


def names(client: Client, resource: Any, namespace: str) -> set[str]:
    return {obj.metadata.name for obj in client.list(resource, namespace=namespace)}


def host_of(client: Client, namespace: str, name: str = "h0") -> dict[str, Any]:
    return as_dict(client.get(HOSTS, name, namespace=namespace))


async def boot_script(plane: Plane, namespace: str, run_dir: Path) -> str:
    (run_dir / "files").mkdir(parents=True)
    settings = BootSettings(
        address=IPv4Address("127.0.0.1"),
        http_port=processes.free_port(),
        run_dir=run_dir,
        files_dir=run_dir / "files",
        namespace=namespace,
        last_seen_interval=3600,
        dhcp=DhcpSettings(mode="off"),
    )
    async with running(BootService(settings, plane.kubeconfig)) as service:
        url = f"{service.settings.http_base}/boot.ipxe?mac={MAC}"
        async with aiohttp.ClientSession() as session, session.get(url) as answer:
            assert answer.status == 200
            return await answer.text()


async def test_clusterctl_move_takes_a_provisioned_cluster_and_its_hosts_along(
    cluster_api_controllers: capi.ClusterAPIControllers,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    plane_b: tuple[Plane, Client],
    namespace: str,
    tmp_path: Path,
) -> None:
    target, kube_b = plane_b
    capi.record_providers(kube, [capi.PLUNDER])
    # The inventory: a host with a BMC (its Secret labelled to move); later a free one.
    kube.create(
        Secret(
            metadata=ObjectMeta(name=BMC_SECRET, namespace=namespace, labels={MOVE_LABEL: ""}),
            stringData={"username": "admin", "password": "secret"},
        )
    )
    create_host(kube, namespace, "h0", MAC)
    kube.patch(HOSTS, "h0", {"spec": {"bmc": BMC}}, namespace=namespace, patch_type=PatchType.MERGE)

    with provider_controller(plane.kubeconfig, tmp_path / "a", namespace):
        with agent(plane, namespace):
            applied = run_kubectl(
                kubectl, "apply", "-n", namespace, "-f", "-", stdin=control_plane_manifest()
            )
            assert applied.returncode == 0, applied.stderr
            eventually(
                lambda: (
                    nested(
                        kube.get(capi_kinds.Machine, "controlplane", namespace=namespace),
                        "status",
                        "phase",
                    )
                    == "Provisioned"
                ),
                "the Machine Provisioned on plane A",
                timeout=120,
            )
        create_host(kube, namespace, "h1", FREE_MAC)  # free inventory moves too
        # The node would join from the host's cloud-init; there is no workload cluster here, so
        # the test says it did (clusterctl moves only clusters whose machines have their node).
        kube.patch(
            capi_kinds.Machine.Status,
            "controlplane",
            {"status": {"nodeRef": {"name": "controlplane"}}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )

        def control_plane_initialized() -> bool:
            cluster = kube.get(capi_kinds.Cluster, "cluster-plunder", namespace=namespace)
            conditions = nested(cluster, "status", "conditions") or []
            return any(
                c["type"] == "ControlPlaneInitialized" and c["status"] == "True" for c in conditions
            )

        eventually(control_plane_initialized, "the Cluster's control plane initialized")
        before = host_of(kube, namespace)
        assert before["status"]["state"] == "provisioned"
        eventually(
            lambda: (
                '"state":"provisioned"'
                in host_of(kube, namespace)["metadata"]["annotations"].get(
                    statusrecord.STATUS_ANNOTATION, ""
                )
            ),
            "the host's status record",
        )
        before = host_of(kube, namespace)

        with provider_controller(target.kubeconfig, tmp_path / "b"):
            watch, watch_a = (StateWatch(p.kubeconfig, namespace) for p in (target, plane))
            watch.start()
            watch_a.start()
            try:
                out = clusterctl_move(plane.kubeconfig, target.kubeconfig, namespace, tmp_path)

                # On B: every object, the Machine Provisioned with the same host.
                def provisioned_on_b() -> bool:
                    machine = kube_b.get(capi_kinds.Machine, "controlplane", namespace=namespace)
                    return nested(machine, "status", "phase") == "Provisioned"

                eventually(provisioned_on_b, "the Machine Provisioned on plane B", timeout=90)
                machine_b = as_dict(kube_b.get(MACHINES, "controlplane", namespace=namespace))
                eventually(
                    lambda: (
                        nested(
                            kube_b.get(MACHINES, "controlplane", namespace=namespace),
                            "status",
                            "hostRef",
                            "name",
                        )
                        == "h0"
                    ),
                    "the PlunderMachine's hostRef rebuilt on B",
                )
                assert machine_b["spec"]["providerID"] == f"plunder://{MAC}"
                after = host_of(kube_b, namespace)
                assert after["status"]["state"] == "provisioned"
                assert after["spec"]["consumerRef"]["name"] == "controlplane"
                assert after["spec"]["image"] == before["spec"]["image"]
                was, now = (
                    PlunderHostStatus.model_validate(body["status"]) for body in (before, after)
                )
                assert now.phases == was.phases and now.hardware == was.hardware
                assert now.ip_address == was.ip_address and now.agent_boot_id == was.agent_boot_id
                assert host_of(kube_b, namespace, "h1")["status"]["state"] == "available"
                assert names(kube_b, Secret, namespace) >= {BMC_SECRET, "controlplane"}
                assert names(kube_b, capi_kinds.Cluster, namespace) == {"cluster-plunder"}
                assert names(kube_b, KubeadmConfig, namespace) == {"controlplane"}
                assert names(kube_b, HOSTS, namespace) == {"h0", "h1"}
                assert names(kube_b, resource_for(PlunderCluster), namespace) == {"cluster-plunder"}
                cluster_b = kube_b.get(capi_kinds.Cluster, "cluster-plunder", namespace=namespace)
                assert not nested(cluster_b, "spec", "paused"), "clusterctl resumed it on B"

                # Nothing was re-provisioned or power-cycled: the host went from no status
                # (as created) to provisioned, nothing between; no power wish was done.
                assert watch.seen["h0"] == [(None, CP), ("provisioned", CP)], watch.seen
                assert watch.seen["h1"] == [(None, None), ("available", None)], watch.seen
                # ... and on A, until clusterctl deleted it, the host was neither released as
                # an orphan (its PlunderMachine deleted first) nor wiped.
                assert watch_a.seen["h0"] == [("provisioned", CP)], watch_a.seen
                power_done = "plunder.dev/power-done"
                assert after["metadata"]["annotations"].get(power_done) == before["metadata"][
                    "annotations"
                ].get(power_done)
                reasons = {
                    e.reason
                    for e in kube_b.list(Event, namespace=namespace)
                    if e.involvedObject.name == "h0"
                }
                assert "StatusRestored" in reasons
                assert not reasons & {"PoweringOn", "Deprovisioning", "PlunderProvision"}

                # On A: nothing left for its controller to act on.
                assert names(kube, HOSTS, namespace) == set()
                assert names(kube, MACHINES, namespace) == set()

                # A boot service pointed at B sends the host to its disk.
                script = await boot_script(target, namespace, tmp_path / "boot")
                assert "booting from disk" in script and "vmlinuz" not in script, script
                assert host_of(kube_b, namespace)["status"]["state"] == "provisioned"
            finally:
                watch.stopping.set()
                watch_a.stopping.set()
    assert "Deleting objects from the source cluster" in out, out


def test_a_host_whose_record_does_not_match_it_is_not_trusted(
    plane_b: tuple[Plane, Client], tmp_path: Path
) -> None:
    """A record copied from another host (here: another MAC) is neither restored nor ignored."""
    target, kube_b = plane_b
    namespace = "tampered"
    kube_b.apply(Namespace(metadata=ObjectMeta(name=namespace)), field_manager="test", force=True)
    record = {
        "version": statusrecord.RECORD_VERSION,
        "mac": FREE_MAC,  # not this host's
        "consumer": None,
        "work": None,
        "status": {"state": "available", "observedGeneration": 1},
    }
    with provider_controller(target.kubeconfig, tmp_path, namespace):
        kube_b.create(
            HOSTS.from_dict(
                {
                    "apiVersion": PlunderHost.info.api_version,
                    "kind": "PlunderHost",
                    "metadata": {
                        "name": "h0",
                        "namespace": namespace,
                        "annotations": {statusrecord.STATUS_ANNOTATION: json.dumps(record)},
                    },
                    "spec": {"bootMACAddress": MAC, "accepted": True, "bmc": BMC},
                }
            )
        )
        eventually(
            lambda: nested(host_of(kube_b, namespace), "status", "state") == "error",
            "the host in error",
        )
        status = host_of(kube_b, namespace)["status"]
        assert status["errorReason"] == statusrecord.NOT_RESTORED_REASON
        assert "records mac" in status["errorMessage"]
        time.sleep(3)  # it stays so: not wiped, not powered on
        assert host_of(kube_b, namespace)["status"]["state"] == "error"
        assert power_done_mark(host_of(kube_b, namespace)) is None  # never powered on
        # From now on the record is this host's own: its error, should it move again.

        def own_record() -> dict[str, Any]:
            annotations = host_of(kube_b, namespace)["metadata"]["annotations"]
            found: dict[str, Any] = json.loads(annotations[statusrecord.STATUS_ANNOTATION])
            return found

        eventually(lambda: own_record()["mac"] == MAC, "the host's own record")
        assert own_record()["status"]["state"] == "error"
