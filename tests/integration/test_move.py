"""``clusterctl move`` of a provisioned cluster between two real management planes.

Plane A is the session's, with Cluster API's managers, the in-cluster IPAM provider and this
provider recorded as ``clusterctl init`` leaves them; plane B is this test's own, started here
with the same providers installed the same way (:func:`capi.start_providers`, the lab's), so
what the rest of the session did to plane A cannot break it. A cluster of a control-plane and
a worker Machine is provisioned on A through the real boot service (its agents simulated over
HTTP); plane A stands for the workload cluster too (its Nodes, named by providerID), so Cluster
API sets each Machine's nodeRef, as ``clusterctl move`` demands. Then the real clusterctl moves
the namespace to B, where the controller already runs: nothing is provisioned, wiped or powered
again, the hosts' status is rebuilt from their records, and the boot service started against B
sends the control-plane host to its disk.

The second test plays hosts that arrive with a record as clusterctl creates them: one is rebuilt
(the boot service tells it to ask again until then), two whose record does not fit go to
``error`` with the cause.
"""

from __future__ import annotations

import os
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from plunder.api.common import BLOCK_MOVE_ANNOTATION, MOVE_LABEL
from plunder.api.infrastructure import PlunderCluster, PlunderMachine
from plunder.api.inventory import PAUSED_ANNOTATION, STATUS_RECORD_ANNOTATION, PlunderHost
from plunder.images import binaries
from plunder.k8s import capi as capi_kinds
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import capi, providers
from plunder.lab.capi import ClusterAPIControllers
from plunder.lab.plane import Plane, start_plane
from plunder.reconcile import statusrecord
from tests.conftest import eventually, listed, nested, provider_controller, run_kubectl, run_ok
from tests.integration.chaos_ledger import Follower
from tests.integration.chaos_world import BootProcess
from tests.integration.sim_agent import HttpAgent
from tests.integration.test_machine_world import IMAGE, create_host
from tests.integration.test_power_faults import (
    FAKE_SYSTEM,
    PASSWORD,
    fake_redfish,  # noqa: F401 - a fixture
)
from tests.integration.test_remediation import node

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HOSTS = resource_for(PlunderHost)
MACHINES = resource_for(PlunderMachine)
CLUSTERS = resource_for(PlunderCluster)
CLUSTER = "cluster-plunder"
ROLE = "plunder.dev/role"
CONTROL_PLANE_MAC = "00:50:56:a5:12:30"
WORKER_MAC = "00:50:56:a5:12:31"
PROVISIONING_REASONS = {"PlunderProvision", "Deprovisioning", "DeprovisioningRetried", "PoweringOn"}


# ------------------------------------------------------------------------------ the planes


@contextmanager
def second_plane(folder: Path) -> Iterator[tuple[Plane, Client, ClusterAPIControllers]]:
    """Plane B: its own etcd and API server, with every provider installed as on the lab's."""
    plane = start_plane(folder / "plane")
    try:
        client = k8s_client.sync_client(plane.kubeconfig)
        managers = capi.start_providers(client, plane.kubeconfig, plane.pki, folder / "managers")
        try:
            yield plane, client, managers
        finally:
            managers.stop()
    finally:
        plane.stop()


class States:
    """The states each object of a kind went through on one plane, from a watch."""

    def __init__(self, kubeconfig: Path, resource: Any, namespace: str) -> None:
        self.seen: dict[str, list[str | None]] = defaultdict(list)
        self.follower = Follower(kubeconfig, resource, namespace, self.handle)

    def handle(self, kind: str, body: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        trail = self.seen[body["metadata"]["name"]]
        state = (body.get("status") or {}).get("state")
        if not trail or trail[-1] != state:
            trail.append(state)

    def __enter__(self) -> States:
        self.follower.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.follower.stopping.set()


# ----------------------------------------------------------------------------- the cluster


def machine(kube: Client, namespace: str, name: str, role: str) -> None:
    """A Machine, its bootstrap Secret and its PlunderMachine, which takes a host of ``role``.

    The Secret is owned by the Machine, as the kubeadm provider's is: it moves with it.
    """
    labels = {"cluster.x-k8s.io/cluster-name": CLUSTER}
    if role == "control-plane":
        labels["cluster.x-k8s.io/control-plane"] = ""
    created = kube.create(
        capi_kinds.Machine.from_dict(
            {
                "apiVersion": f"{capi_kinds.CORE_GROUP}/{capi_kinds.CORE_VERSION}",
                "kind": "Machine",
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {
                    "clusterName": CLUSTER,
                    "version": "v1.36.3",
                    "bootstrap": {"dataSecretName": f"{name}-bootstrap"},
                    "infrastructureRef": {
                        "apiGroup": PlunderMachine.info.group,
                        "kind": "PlunderMachine",
                        "name": name,
                    },
                },
            }
        )
    )
    owner = capi_kinds.controller_reference(as_dict(created))
    kube.create(
        Secret(
            metadata=ObjectMeta(
                name=f"{name}-bootstrap", namespace=namespace, ownerReferences=[owner]
            ),
            stringData={"value": "#cloud-config\n", "format": "cloud-config"},
        )
    )
    kube.create(
        MACHINES.from_dict(
            {
                "apiVersion": PlunderMachine.info.api_version,
                "kind": "PlunderMachine",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": labels,
                    "ownerReferences": [owner],
                },
                "spec": {"image": IMAGE, "hostSelector": {"matchLabels": {ROLE: role}}},
            }
        )
    )


def hosts(kube: Client, namespace: str, fake_redfish: str) -> None:  # noqa: F811 - a URL
    """The control plane's host with a BMC (its Secret labelled to move), a worker's, a spare."""
    kube.create(
        Secret(
            metadata=ObjectMeta(
                name="bmc-credentials", namespace=namespace, labels={MOVE_LABEL: ""}
            ),
            stringData={"username": "admin", "password": PASSWORD},
        )
    )
    create_host(kube, namespace, "hcp", CONTROL_PLANE_MAC, {ROLE: "control-plane"})
    create_host(kube, namespace, "hw", WORKER_MAC, {ROLE: "worker"})
    create_host(kube, namespace, "hspare", "00:50:56:a5:12:32", {ROLE: "spare"})  # its Node: none
    bmc = {"address": fake_redfish.replace("http://", "redfish+http://")}
    kube.patch(
        HOSTS,
        "hcp",
        {"spec": {"bmc": {**bmc, "credentialsName": "bmc-credentials"}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


def workload_kubeconfig(kube: Client, plane: Plane, namespace: str) -> None:
    """The cluster's kubeconfig Secret: plane A stands for the workload cluster (its Nodes)."""
    kube.create(
        Secret(
            metadata=ObjectMeta(
                name=f"{CLUSTER}-kubeconfig",
                namespace=namespace,
                labels={"cluster.x-k8s.io/cluster-name": CLUSTER},
            ),
            type="cluster.x-k8s.io/secret",
            stringData={"value": plane.kubeconfig.read_text()},
        )
    )


def state(client: Client, resource: Any, namespace: str, name: str) -> str | None:
    try:
        found: str | None = nested(
            client.get(resource, name, namespace=namespace), "status", "state"
        )
    except ApiError:
        return None
    return found


def node_ref(client: Client, namespace: str, name: str) -> bool:
    return bool(
        nested(client.get(capi_kinds.Machine, name, namespace=namespace), "status", "nodeRef")
    )


def ready_to_move(kube: Client, namespace: str) -> bool:
    """What clusterctl move checks first: infrastructure, control plane, every Node."""
    cluster = as_dict(kube.get(capi_kinds.Cluster, CLUSTER, namespace=namespace))
    initialized = any(
        c["type"] == "ControlPlaneInitialized" and c["status"] == "True"
        for c in nested(cluster, "status", "conditions") or ()
    )
    provisioned = nested(cluster, "status", "initialization", "infrastructureProvisioned")
    machines = ("controlplane", "worker")
    return bool(provisioned and initialized and all(node_ref(kube, namespace, m) for m in machines))


def sushy_requests(tmp_path: Path, verb: str) -> int:
    """Requests of ``verb`` the Redfish emulator answered for the host's system."""
    log = (tmp_path / "sushy.log").read_text()
    return sum(
        1 for line in log.splitlines() if f'"{verb} /redfish/v1/Systems/{FAKE_SYSTEM}' in line
    )


def power_actions(tmp_path: Path) -> int:
    """What changes power or boot: resets (in any form) and boot-override PATCHes."""
    return sushy_requests(tmp_path, "POST") + sushy_requests(tmp_path, "PATCH")


def clusterctl_move(plane: Plane, target: Plane, namespace: str, folder: Path) -> str:
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(folder / "xdg"),  # never a person's ~/.config/cluster-api
        "CLUSTERCTL_DISABLE_VERSIONCHECK": "true",
    }
    argv = [str(binaries.ensure_binary("clusterctl")), "move", "--namespace", namespace]
    argv += ["--kubeconfig", str(plane.kubeconfig), "--to-kubeconfig", str(target.kubeconfig)]
    return run_ok([*argv, "-v", "2"], env)


def boot_script(url: str, mac: str) -> str:
    with urllib.request.urlopen(f"{url}/boot.ipxe?mac={mac}", timeout=10) as answer:  # noqa: S310
        return str(answer.read().decode())


def events(client: Client, namespace: str) -> list[tuple[str, str, str, str]]:
    """(kind, name, reason, message) of the Events about our kinds in ``namespace``."""
    return [
        (e.involvedObject.kind or "", e.involvedObject.name or "", e.reason or "", e.message or "")
        for e in client.list(Event, namespace=namespace)
        if e.involvedObject.kind in ("PlunderHost", "PlunderMachine")
    ]


# ---------------------------------------------------------------------------------- tests


def test_clusterctl_move_of_a_provisioned_cluster_provisions_nothing_again(
    cluster_api_controllers: ClusterAPIControllers,
    ipam_in_cluster: ClusterAPIControllers,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    namespace: str,
    tmp_path: Path,
    fake_redfish: str,  # noqa: F811 - the fixture
) -> None:
    started = time.monotonic()
    with (
        second_plane(tmp_path / "b") as (plane_b, kube_b, _),
        node(kube, f"{namespace}-cp", f"plunder://{CONTROL_PLANE_MAC}"),
        node(kube, f"{namespace}-w", f"plunder://{WORKER_MAC}"),
    ):
        b_ready = time.monotonic() - started
        # B records the same providers as A (clusterctl checks before it moves anything).
        assert sorted(map(str, providers.recorded(kube_b))) == sorted(
            map(str, providers.recorded(kube))
        )

        # ---- plane A: the cluster, provisioned through the boot service.
        hosts(kube, namespace, fake_redfish)
        # The workload cluster's kubeconfig is there before the Cluster that uses it.
        workload_kubeconfig(kube, plane, namespace)
        applied = run_kubectl(
            kubectl, "apply", "-n", namespace, "-f", str(REPO / "examples/simple/cluster.yaml")
        )
        assert applied.returncode == 0, applied.stderr
        boot_a = BootProcess(plane.kubeconfig, tmp_path / "boot-a.log", namespace, tmp_path / "ba")
        agents = HttpAgent(plane.kubeconfig, namespace, boot_a.url)
        with (
            provider_controller(plane.kubeconfig, tmp_path / "a", namespace),
            States(plane.kubeconfig, HOSTS, namespace) as on_a,
        ):
            boot_a.start()
            agents.start()
            try:
                agents.parked.wait(60)
                assert agents.failure is None, agents.failure
                machine(kube, namespace, "controlplane", "control-plane")
                machine(kube, namespace, "worker", "worker")
                for name in ("controlplane", "worker"):
                    eventually(
                        lambda n=name: state(kube, MACHINES, namespace, n) == "Provisioned",
                        f"{name} provisioned on A",
                        timeout=90,
                    )
                # A cluster of plain Machines: each nodeRef once the control plane's is set.
                try:
                    eventually(lambda: ready_to_move(kube, namespace), "ready to move", 150)
                except Exception:
                    cluster = kube.get(capi_kinds.Cluster, CLUSTER, namespace=namespace)
                    print("Cluster conditions:", nested(cluster, "status", "conditions"))
                    for made in kube.list(capi_kinds.Machine, namespace=namespace):
                        print(made.metadata.name, "status:", nested(made, "status"))
                    raise
                provisioned = time.monotonic() - started
            finally:
                agents.stop()
                boot_a.stop()  # the boot service follows the hosts to B
            bound = {
                h["metadata"]["name"]: h
                for h in (as_dict(o) for o in kube.list(HOSTS, namespace=namespace))
            }
            assert all(
                BLOCK_MOVE_ANNOTATION in bound[n]["metadata"]["annotations"] for n in ("hcp", "hw")
            ), "a claimed host blocks a move until it is paused with its record"
            actions_before = power_actions(tmp_path)

            # ---- the move, with the controller running against both planes.
            with (
                provider_controller(plane_b.kubeconfig, tmp_path / "b-controller", namespace),
                States(plane_b.kubeconfig, HOSTS, namespace) as hosts_b,
                States(plane_b.kubeconfig, MACHINES, namespace) as machines_b,
            ):
                moving = time.monotonic()
                clusterctl_move(plane, plane_b, namespace, tmp_path)
                moved = time.monotonic() - moving

                # ---- B: the same machines on the same hosts, provisioned, nothing redone.
                def resumed(name: str) -> bool:
                    body = as_dict(kube_b.get(HOSTS, name, namespace=namespace))
                    annotations = body["metadata"].get("annotations") or {}
                    return (
                        nested(body, "status", "state") == "provisioned"
                        and PAUSED_ANNOTATION not in annotations
                        and STATUS_RECORD_ANNOTATION not in annotations
                        and BLOCK_MOVE_ANNOTATION in annotations
                    )

                for host_name, machine_name in (("hcp", "controlplane"), ("hw", "worker")):
                    eventually(lambda h=host_name: resumed(h), f"{host_name} resumed on B")
                    eventually(
                        lambda m=machine_name: (
                            state(kube_b, MACHINES, namespace, m) == "Provisioned"
                        ),
                        f"{machine_name} provisioned on B",
                    )
                    host_b = as_dict(kube_b.get(HOSTS, host_name, namespace=namespace))
                    assert host_b["spec"]["consumerRef"]["name"] == machine_name
                    assert host_b["status"]["agentBootID"] == nested(
                        bound[host_name], "status", "agentBootID"
                    ), "the status is A's, rebuilt"
                    made = as_dict(kube_b.get(MACHINES, machine_name, namespace=namespace))
                    assert (
                        made["spec"]["providerID"]
                        == f"plunder://{host_b['spec']['bootMACAddress']}"
                    )
                    assert made["status"]["hostRef"]["name"] == host_name
                # Cluster API on B reads the rebuilt status: the Machines' infrastructure is
                # provisioned, with the same providerIDs.
                for machine_name in ("controlplane", "worker"):
                    eventually(
                        lambda m=machine_name: nested(
                            kube_b.get(capi_kinds.Machine, m, namespace=namespace),
                            "status",
                            "initialization",
                            "infrastructureProvisioned",
                        ),
                        f"Cluster API on B sees {machine_name}'s infrastructure",
                    )
                # The boot service, started against B, sends the control plane's host to its disk.
                boot_b = BootProcess(
                    plane_b.kubeconfig, tmp_path / "boot-b.log", namespace, tmp_path / "bb"
                )
                boot_b.start()
                try:
                    script = boot_script(boot_b.url, CONTROL_PLANE_MAC)
                finally:
                    boot_b.stop()
                assert "provisioned; booting from disk" in script and "sanboot" in script, script
                # B's power loop has looked at the control plane's BMC since it resumed (its
                # Secret moved too), and changed nothing.
                looked = sushy_requests(tmp_path, "GET")
                eventually(lambda: sushy_requests(tmp_path, "GET") > looked, "a power round on B")
                assert power_actions(tmp_path) == actions_before

                on_b = events(kube_b, namespace)
                assert not [e for e in on_b if e[2] in PROVISIONING_REASONS], on_b
                restored = {name for kind, name, reason, _ in on_b if reason == "StatusRestored"}
                assert restored == {"hcp", "hw"}, on_b
                for trail in hosts_b.seen.values():
                    assert set(trail) <= {None, "provisioned"}, hosts_b.seen
                assert hosts_b.seen["hcp"][-1] == "provisioned"
                for trail in machines_b.seen.values():
                    assert set(trail) <= {None, "Provisioned"}, machines_b.seen
                # The spare came along too, and starts over as a host found anew (no record:
                # only a paused machine's host gets one).
                spare = as_dict(kube_b.get(HOSTS, "hspare", namespace=namespace))
                assert nested(spare, "status", "state") is None
                assert kube_b.get(Secret, "bmc-credentials", namespace=namespace)

            # ---- A: nothing left, nothing wiped.
            for kind in (HOSTS, MACHINES, CLUSTERS, capi_kinds.Machine, capi_kinds.Cluster):
                assert listed(kube, kind, namespace) == [], kind
            for secret in ("bmc-credentials", "controlplane-bootstrap", f"{CLUSTER}-kubeconfig"):
                with pytest.raises(ApiError):
                    kube.get(Secret, secret, namespace=namespace)
            assert not agents.wiped
            assert all("deprovisioning" not in trail for trail in on_a.seen.values()), on_a.seen
    print(
        f"plane B with its providers ready in {b_ready:.1f} s; the cluster ready to move "
        f"{provisioned:.1f} s after the start; clusterctl move took {moved:.1f} s"
    )


def arrived(kube: Client, namespace: str, name: str, mac: str, record: str) -> None:
    """A host as clusterctl move creates it on the target: its annotations, no status."""
    kube.create(
        HOSTS.from_dict(
            {
                "apiVersion": PlunderHost.info.api_version,
                "kind": "PlunderHost",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "annotations": {STATUS_RECORD_ANNOTATION: record},
                },
                "spec": {"bootMACAddress": mac, "accepted": True, "image": IMAGE},
            }
        )
    )


def test_a_moved_host_is_rebuilt_before_it_is_answered_and_a_bad_record_is_an_error(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> None:
    source = PlunderHost.model_validate(
        {
            "metadata": {"name": "h1"},
            "spec": {"bootMACAddress": "00:50:56:a5:13:01", "image": IMAGE, "accepted": True},
            "status": {"state": "provisioned", "agentBootID": "b42", "bootFirmware": "bios"},
        }
    )
    record = statusrecord.encode(source)
    arrived(kube, namespace, "h1", "00:50:56:a5:13:01", record)
    arrived(kube, namespace, "h2", "00:50:56:a5:13:02", '{"status": "garbled')
    arrived(kube, namespace, "h3", "00:50:56:a5:13:03", record)  # another host's record
    boot = BootProcess(plane.kubeconfig, tmp_path / "boot.log", namespace, tmp_path / "boot")
    boot.start()
    try:
        # Nothing has rebuilt it yet: the boot service does not take it for a new host.
        script = boot_script(boot.url, "00:50:56:a5:13:01")
        assert "its status is being rebuilt after a move; asking again" in script, script
        with provider_controller(plane.kubeconfig, tmp_path, namespace):
            eventually(lambda: state(kube, HOSTS, namespace, "h1") == "provisioned", "h1 rebuilt")
            eventually(
                lambda: "booting from disk" in boot_script(boot.url, "00:50:56:a5:13:01"),
                "h1 sent to its disk",
            )
            for name in ("h2", "h3"):
                eventually(lambda n=name: state(kube, HOSTS, namespace, n) == "error", name)
    finally:
        boot.stop()
    h1 = as_dict(kube.get(HOSTS, "h1", namespace=namespace))["status"]
    assert (h1["agentBootID"], h1["bootFirmware"]) == ("b42", "bios")
    h2 = as_dict(kube.get(HOSTS, "h2", namespace=namespace))["status"]
    assert h2["errorReason"] == "StatusRecordUnreadable"
    assert "is not JSON" in h2["errorMessage"]
    h3 = as_dict(kube.get(HOSTS, "h3", namespace=namespace))["status"]
    assert h3["errorReason"] == "StatusRecordMismatch"
    assert "MAC 00:50:56:a5:13:01, not of this one (00:50:56:a5:13:03)" in h3["errorMessage"]
    warnings = {(name, reason) for _, name, reason, _ in events(kube, namespace)}
    assert {("h2", "StatusRecordUnreadable"), ("h3", "StatusRecordMismatch")} <= warnings
    assert ("h1", "StatusRestored") in warnings
    assert not [w for w in warnings if w[1] in PROVISIONING_REASONS], warnings
