"""Remediation with Cluster API's real MachineHealthCheck and MachineSet controllers.

A MachineDeployment of one worker on the test plane, a MachineHealthCheck whose
``remediation.templateRef`` names a PlunderRemediationTemplate, and hosts: one with a BMC (sushy-
tools' Redfish emulator), one without. From the unhealthy Machine on, everything is Cluster API's
and ours: the MachineHealthCheck creates the PlunderRemediation, the controller power-cycles the
host through the emulator, and either the Machine heals (Cluster API deletes the remediation) or
the tries run out, the MachineSet replaces the Machine on the spare host, and the sick host stays
out of the pool until ``plunderctl host clear-unhealthy``. The hosts' agent is played by the test
(``Agent``).

In the first test the plane is the workload cluster too (:func:`workload_cluster`): the worker's
Node is an object the test writes, made NotReady and then Ready again, as a kubelet would. The
second makes its Machines unhealthy with Cluster API's own ``cluster.x-k8s.io/remediate-machine``
annotation, which needs no Node.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.core_v1 import NodeSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Node, Secret
from lightkube.types import PatchType

from plunder.api.infrastructure import PlunderMachine
from plunder.api.inventory import UNHEALTHY_ANNOTATION, PlunderHost
from plunder.api.remediation import PlunderRemediation
from plunder.k8s import capi
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab.capi import ClusterAPIControllers
from plunder.lab.plane import Plane
from plunder.operator.power import REBOOT_ANNOTATION
from plunder.reconcile.selection import HostCandidate
from tests.conftest import eventually, listed, plunderctl, provider_controller, run_kubectl
from tests.integration.test_machine_world import Agent, create_host
from tests.integration.test_power_faults import (
    FAKE_SYSTEM,
    PASSWORD,
    fake_redfish,  # noqa: F401 - a fixture
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
REMEDIATE = "cluster.x-k8s.io/remediate-machine"
HOSTS = resource_for(PlunderHost)
REMEDIATIONS = resource_for(PlunderRemediation)
DEPLOYMENT_LABEL = "cluster.x-k8s.io/deployment-name"


def manifests(
    retry_limit: int, timeout: str, checks: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """A MachineDeployment of one worker (bootstrap data given), its template, the health check."""
    infra = "infrastructure.cluster.x-k8s.io"
    return [
        {
            "apiVersion": f"{infra}/v1alpha1",
            "kind": "PlunderMachineTemplate",
            "metadata": {"name": "workers"},
            "spec": {
                "template": {
                    "spec": {
                        "hostSelector": {"matchLabels": {"plunder.dev/role": "worker"}},
                        "image": {
                            "url": "http://172.31.99.1:8080/files/images/debian-12.raw.gz",
                            "checksum": "ab" * 32,
                            "format": "raw-gzip",
                        },
                    }
                }
            },
        },
        {
            "apiVersion": f"{infra}/v1alpha1",
            "kind": "PlunderRemediationTemplate",
            "metadata": {"name": "workers"},
            "spec": {
                "template": {
                    "spec": {
                        "strategy": {
                            "type": "Reboot",
                            "retryLimit": retry_limit,
                            "timeout": timeout,
                        }
                    }
                }
            },
        },
        {
            "apiVersion": f"{capi.CORE_GROUP}/{capi.CORE_VERSION}",
            "kind": "MachineDeployment",
            "metadata": {"name": "workers"},
            "spec": {
                "clusterName": "cluster-plunder",
                "replicas": 1,
                "template": {
                    "spec": {
                        "clusterName": "cluster-plunder",
                        "version": "v1.36.3",
                        "bootstrap": {"dataSecretName": "bootstrap"},
                        "infrastructureRef": {
                            "apiGroup": infra,
                            "kind": "PlunderMachineTemplate",
                            "name": "workers",
                        },
                    }
                },
            },
        },
        {
            "apiVersion": f"{capi.CORE_GROUP}/{capi.CORE_VERSION}",
            "kind": "MachineHealthCheck",
            "metadata": {"name": "workers"},
            "spec": {
                "clusterName": "cluster-plunder",
                "selector": {"matchLabels": {DEPLOYMENT_LABEL: "workers"}},
                "checks": checks or {"nodeStartupTimeoutSeconds": 0},
                "remediation": {
                    "templateRef": {
                        "apiVersion": f"{infra}/v1alpha1",
                        "kind": "PlunderRemediationTemplate",
                        "name": "workers",
                    }
                },
            },
        },
    ]


def host_with_bmc(kube: Client, namespace: str, name: str, mac: str, redfish: str) -> None:
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bmc-credentials", namespace=namespace),
            stringData={"username": "admin", "password": PASSWORD},
        )
    )
    create_host(kube, namespace, name, mac, {"plunder.dev/role": "worker"})
    address = redfish.replace("http://", "redfish+http://")
    kube.patch(
        HOSTS,
        name,
        {"spec": {"bmc": {"address": address, "credentialsName": "bmc-credentials"}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


@contextmanager
def workers(
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    namespace: str,
    tmp_path: Path,
    retry_limit: int,
    timeout: str,
    checks: dict[str, Any] | None = None,
) -> Iterator[Agent]:
    """The cluster, the deployment and its health check, the controller and the hosts' agent."""
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bootstrap", namespace=namespace),
            stringData={"value": "#cloud-config\n", "format": "cloud-config"},
        )
    )
    manifest = tmp_path / "workers.yaml"
    manifest.write_text(
        "\n---\n".join(json.dumps(m) for m in manifests(retry_limit, timeout, checks))
    )
    player = Agent(plane, namespace)
    player.start()
    try:
        with provider_controller(plane.kubeconfig, tmp_path, namespace):
            for path in (REPO / "examples" / "simple" / "cluster.yaml", manifest):
                applied = run_kubectl(kubectl, "apply", "-n", namespace, "-f", str(path))
                assert applied.returncode == 0, applied.stderr
            try:
                yield player
            except BaseException:
                print((tmp_path / "controller.log").read_text()[-20000:])
                raise
    finally:
        player.stop()


def machines(kube: Client, namespace: str) -> list[dict[str, Any]]:
    """The deployment's Machines that are not being deleted."""
    return [
        as_dict(m)
        for m in listed(kube, capi.Machine, namespace)
        if not m.metadata.deletionTimestamp
        and (m.metadata.labels or {}).get(DEPLOYMENT_LABEL) == "workers"
    ]


def the_machine(kube: Client, namespace: str) -> str:
    eventually(lambda: len(machines(kube, namespace)) == 1, "one Machine")
    name: str = machines(kube, namespace)[0]["metadata"]["name"]
    return name


def host(kube: Client, namespace: str, name: str) -> dict[str, Any]:
    return as_dict(kube.get(HOSTS, name, namespace=namespace))


def state_of(kube: Client, namespace: str, name: str) -> str | None:
    state: str | None = (host(kube, namespace, name).get("status") or {}).get("state")
    return state


def consumer_of(kube: Client, namespace: str, name: str) -> str | None:
    ref = host(kube, namespace, name)["spec"].get("consumerRef") or {}
    consumer: str | None = ref.get("name")
    return consumer


def remediation(kube: Client, namespace: str, name: str) -> dict[str, Any] | None:
    found = [as_dict(r) for r in listed(kube, REMEDIATIONS, namespace)]
    return next((r for r in found if r["metadata"]["name"] == name), None)


def status_of(kube: Client, namespace: str, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (remediation(kube, namespace, name) or {}).get("status") or {}
    return status


def mark_unhealthy(kubectl: list[str], namespace: str, machine: str) -> None:
    marked = run_kubectl(
        kubectl, "annotate", "-n", namespace, f"machine/{machine}", f"{REMEDIATE}="
    )
    assert marked.returncode == 0, marked.stderr


def events(kube: Client, namespace: str, kind: str, name: str) -> list[tuple[str, str, str]]:
    return [
        (e.type or "", e.reason or "", e.message or "")
        for e in kube.list(Event, namespace=namespace)
        if e.involvedObject.kind == kind and e.involvedObject.name == name
    ]


def resets(tmp_path: Path) -> int:
    """Power actions the Redfish emulator was asked for (a power cycle is ForceOff, then On)."""
    log = (tmp_path / "sushy.log").read_text()
    return log.count(f"/Systems/{FAKE_SYSTEM}/Actions/ComputerSystem.Reset")


def workload_cluster(kube: Client, plane: Plane, namespace: str) -> None:
    """The plane stands for the workload cluster too: its kubeconfig is the Cluster's.

    Cluster API then reads Nodes there by providerID; a control-plane Machine whose Node exists
    initializes the control plane (a cluster of plain Machines), and only then does a
    MachineHealthCheck look at the workers' Nodes.
    """
    kube.create(
        Secret(
            metadata=ObjectMeta(
                name="cluster-plunder-kubeconfig",
                namespace=namespace,
                labels={"cluster.x-k8s.io/cluster-name": "cluster-plunder"},
            ),
            type="cluster.x-k8s.io/secret",
            stringData={"value": plane.kubeconfig.read_text()},
        )
    )
    create_host(kube, namespace, "hcp", "00:50:56:a5:11:30", {"plunder.dev/role": "cp"})
    infra = "infrastructure.cluster.x-k8s.io"
    kube.create(
        resource_for(PlunderMachine).from_dict(
            {
                "apiVersion": f"{infra}/v1alpha1",
                "kind": "PlunderMachine",
                "metadata": {"name": "controlplane", "namespace": namespace},
                "spec": {
                    "hostSelector": {"matchLabels": {"plunder.dev/role": "cp"}},
                    "image": manifests(1, "1s")[0]["spec"]["template"]["spec"]["image"],
                },
            }
        )
    )
    kube.create(
        capi.Machine.from_dict(
            {
                "apiVersion": f"{capi.CORE_GROUP}/{capi.CORE_VERSION}",
                "kind": "Machine",
                "metadata": {
                    "name": "controlplane",
                    "namespace": namespace,
                    "labels": {"cluster.x-k8s.io/control-plane": ""},
                },
                "spec": {
                    "clusterName": "cluster-plunder",
                    "version": "v1.36.3",
                    "bootstrap": {"dataSecretName": "bootstrap"},
                    "infrastructureRef": {
                        "apiGroup": infra,
                        "kind": "PlunderMachine",
                        "name": "controlplane",
                    },
                },
            }
        )
    )


def node_ready(kube: Client, name: str, ready: str) -> None:
    """The Node's conditions as its kubelet reports them: ``Ready`` as given, no pressure."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    condition = {
        "type": "Ready",
        "status": ready,
        "reason": "KubeletReady" if ready == "True" else "KubeletNotReady",
        "message": "played by the test",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }
    pressures = [
        {
            "type": pressure,
            "status": "False",
            "reason": f"KubeletHasNo{pressure}",
            "message": "played by the test",
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": stamp,
        }
        for pressure in ("MemoryPressure", "DiskPressure", "PIDPressure")
    ]
    kube.patch(
        Node.Status,
        name,
        {"status": {"conditions": [condition, *pressures]}},
        patch_type=PatchType.MERGE,
    )


@contextmanager
def node(kube: Client, name: str, provider_id: str) -> Iterator[str]:
    kube.create(Node(metadata=ObjectMeta(name=name), spec=NodeSpec(providerID=provider_id)))
    try:
        node_ready(kube, name, "True")
        yield name
    finally:
        kube.delete(Node, name)


def test_a_worker_whose_node_went_not_ready_is_rebooted_and_the_remediation_ends_when_ready(
    cluster_api_controllers: ClusterAPIControllers,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    namespace: str,
    tmp_path: Path,
    fake_redfish: str,  # noqa: F811 - the fixture
) -> None:
    host_with_bmc(kube, namespace, "h1", "00:50:56:a5:11:21", fake_redfish)
    not_ready = {
        "nodeStartupTimeoutSeconds": 0,
        "unhealthyNodeConditions": [{"type": "Ready", "status": "False", "timeoutSeconds": 1}],
    }
    with (
        workers(plane, kube, kubectl, namespace, tmp_path, 3, "1h", not_ready),
        node(kube, f"{namespace}-cp", "plunder://00:50:56:a5:11:30"),
        node(kube, f"{namespace}-w", "plunder://00:50:56:a5:11:21") as worker,
    ):
        workload_cluster(kube, plane, namespace)
        machine = the_machine(kube, namespace)

        def node_ref(name: str) -> bool:
            return bool(
                (
                    as_dict(kube.get(capi.Machine, name, namespace=namespace)).get("status") or {}
                ).get("nodeRef")
            )

        eventually(lambda: node_ref("controlplane"), "the control plane's nodeRef", timeout=90)
        eventually(lambda: node_ref(machine), "the worker's nodeRef", timeout=90)
        eventually(lambda: state_of(kube, namespace, "h1") == "provisioned", "h1 provisioned")
        before = resets(tmp_path)
        node_ready(kube, worker, "False")

        # The MachineHealthCheck saw the Node NotReady and made the remediation ...
        eventually(lambda: remediation(kube, namespace, machine) is not None, "remediation", 90)
        made = remediation(kube, namespace, machine)
        assert made is not None
        owner = capi.owner_named(made["metadata"].get("ownerReferences"), "Machine")
        assert owner is not None and owner["name"] == machine
        assert made["spec"]["strategy"] == {"type": "Reboot", "retryLimit": 3, "timeout": "1h"}
        # ... the controller asked for one power cycle, and the BMC did it.
        eventually(lambda: status_of(kube, namespace, machine).get("phase") == "Waiting", "wait")
        status = status_of(kube, namespace, machine)
        assert status["retryCount"] == 1 and status["hostRef"] == "h1"
        assert status["lastRemediated"]
        eventually(lambda: resets(tmp_path) >= before + 2, "the BMC's power cycle")
        eventually(
            lambda: (
                REBOOT_ANNOTATION
                not in (host(kube, namespace, "h1")["metadata"].get("annotations") or {})
            ),
            "the reboot done",
        )
        rebooting = events(kube, namespace, "PlunderRemediation", machine)
        assert any(r == "Rebooting" and "try 1 of 3" in m for _, r, m in rebooting), rebooting

        # The Node is Ready again: Cluster API deletes the remediation; nothing is replaced.
        node_ready(kube, worker, "True")
        eventually(lambda: remediation(kube, namespace, machine) is None, "remediation deleted")
        eventually(
            lambda: any(
                r == "Remediated"
                for _, r, _ in events(kube, namespace, "PlunderRemediation", machine)
            ),
            "the Remediated event",
        )
        assert [m["metadata"]["name"] for m in machines(kube, namespace)] == [machine]
        assert consumer_of(kube, namespace, "h1") is not None
        annotations = host(kube, namespace, "h1")["metadata"].get("annotations") or {}
        assert UNHEALTHY_ANNOTATION not in annotations


def test_a_host_that_stays_sick_is_replaced_on_a_spare_and_kept_out_of_the_pool(
    cluster_api_controllers: ClusterAPIControllers,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    namespace: str,
    tmp_path: Path,
    fake_redfish: str,  # noqa: F811 - the fixture
) -> None:
    host_with_bmc(kube, namespace, "h1", "00:50:56:a5:11:21", fake_redfish)
    with workers(plane, kube, kubectl, namespace, tmp_path, retry_limit=2, timeout="10s"):
        first = the_machine(kube, namespace)
        eventually(lambda: state_of(kube, namespace, "h1") == "provisioned", "h1 provisioned")
        # The spare, without a BMC, once the first machine holds h1.
        create_host(kube, namespace, "h2", "00:50:56:a5:11:22", {"plunder.dev/role": "worker"})
        before = resets(tmp_path)
        mark_unhealthy(kubectl, namespace, first)

        # Two power cycles, ten seconds apart (time for the power loop to do each under load), then
        # the Machine is handed back.
        def handed_back() -> bool:
            return status_of(kube, namespace, first).get("phase") == "Deleting"

        eventually(handed_back, "the tries run out", timeout=90)
        status = status_of(kube, namespace, first)
        assert status["retryCount"] == 2
        [condition] = status["conditions"]
        assert (condition["type"], condition["reason"]) == ("Remediated", "RetriesExhausted")
        eventually(lambda: resets(tmp_path) >= before + 4, "both power cycles at the BMC")
        reasons = [r for _, r, _ in events(kube, namespace, "PlunderRemediation", first)]
        assert reasons.count("Rebooting") == 2 and "RetriesExhausted" in reasons, reasons
        annotations = host(kube, namespace, "h1")["metadata"].get("annotations") or {}
        assert annotations[UNHEALTHY_ANNOTATION].startswith(
            f"PlunderRemediation {namespace}/{first}"
        )

        # The MachineSet replaced the Machine (OwnerRemediated=False); the new one is on the spare.
        eventually(
            lambda: [m["metadata"]["name"] for m in machines(kube, namespace)] not in ([], [first]),
            "a replacement Machine",
            timeout=90,
        )
        second = the_machine(kube, namespace)
        eventually(lambda: consumer_of(kube, namespace, "h2") is not None, "the spare claimed")
        eventually(lambda: state_of(kube, namespace, "h1") == "available", "h1 wiped", timeout=90)
        assert consumer_of(kube, namespace, "h1") is None
        assert not HostCandidate.from_body(host(kube, namespace, "h1")).free

        # The spare has no BMC: its remediation fails at once, saying why.
        mark_unhealthy(kubectl, namespace, second)
        eventually(lambda: status_of(kube, namespace, second).get("phase") == "Failed", "failed")
        [condition] = status_of(kube, namespace, second)["conditions"]
        assert condition["reason"] == "HostHasNoBMC"
        assert "host h2 has no BMC (spec.bmc)" in condition["message"]
        assert any(
            r == "HostHasNoBMC" and kind == "Warning"
            for kind, r, _ in events(kube, namespace, "PlunderRemediation", second)
        )

        # Its replacement finds no healthy host, until a person clears h1.
        eventually(
            lambda: (
                [m["metadata"]["name"] for m in machines(kube, namespace)] not in ([], [second])
            ),
            "a third Machine",
            timeout=90,
        )
        eventually(lambda: state_of(kube, namespace, "h2") == "available", "h2 wiped", timeout=90)
        assert consumer_of(kube, namespace, "h1") is None
        assert consumer_of(kube, namespace, "h2") is None
        cleared = plunderctl(
            "host",
            "clear-unhealthy",
            "h1",
            "--namespace",
            namespace,
            "--kubeconfig",
            str(plane.kubeconfig),
        )
        assert cleared.returncode == 0, cleared.stderr
        eventually(lambda: consumer_of(kube, namespace, "h1") is not None, "h1 claimed again")
        assert consumer_of(kube, namespace, "h2") is None
