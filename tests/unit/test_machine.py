"""The PlunderMachine decisions: contract order, the claim's host spec, status, events."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from plunder.api.base import ObjectMeta
from plunder.api.common import Image, PoolReference, StaticNetwork
from plunder.api.infrastructure import PlunderMachine, PlunderMachineSpec
from plunder.reconcile import conditions
from plunder.reconcile import machine as decide
from plunder.reconcile.selection import HostCandidate

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
IMAGE = Image(url="http://10.0.0.1/os.raw", checksum="a" * 64)
OWNER = decide.OwnerMachine("m1", "c1", "m1-bootstrap", None)
READY_CLUSTER = decide.ClusterFacts(paused=False, infrastructure_provisioned=True)
HOST = HostCandidate(
    "h1",
    "ns",
    "uid-h1",
    "5",
    "00:50:56:a5:11:20",
    "available",
    {"zone": "a"},
    ip_address="172.31.99.20",
)


def machine(**spec: object) -> PlunderMachine:
    return PlunderMachine(
        metadata=ObjectMeta(
            name="m1",
            namespace="ns",
            uid="uid-m1",
            generation=1,
            labels={"cluster.x-k8s.io/cluster-name": "c1"},
        ),
        spec=PlunderMachineSpec.model_validate({"image": IMAGE, **spec}),
    )


def test_reads_machines_and_clusters_of_cluster_api() -> None:
    owner = decide.OwnerMachine.from_body(
        {
            "metadata": {"name": "m1"},
            "spec": {
                "clusterName": "c1",
                "bootstrap": {"dataSecretName": "s"},
                "failureDomain": "a",
            },
        }
    )
    assert owner == decide.OwnerMachine("m1", "c1", "s", "a")
    cluster = decide.ClusterFacts.from_body(
        {
            "spec": {"paused": True},
            "status": {"initialization": {"infrastructureProvisioned": True}},
        }
    )
    assert cluster == decide.ClusterFacts(True, True)
    assert decide.ClusterFacts.from_body({}) == decide.ClusterFacts(False, False)


def reason_of(wait: decide.Wait | None) -> str | None:
    return wait.reason if wait else None


def test_contract_order() -> None:
    m = machine()
    assert reason_of(decide.gate(m, None, None)) == "WaitingForMachine"
    assert reason_of(decide.gate(m, OWNER, None)) == "WaitingForClusterInfrastructure"
    unprovisioned = decide.ClusterFacts(False, False)
    assert reason_of(decide.gate(m, OWNER, unprovisioned)) == "WaitingForClusterInfrastructure"
    no_data = replace(OWNER, data_secret_name=None)
    assert reason_of(decide.gate(m, no_data, READY_CLUSTER)) == "WaitingForBootstrapData"
    assert decide.gate(m, OWNER, READY_CLUSTER) is None
    pool = PoolReference(api_group="ipam.cluster.x-k8s.io", kind="InClusterIPPool", name="p")
    assert decide.address_wait(machine(addressFromPool=pool)).reason == "WaitingForIPAddress"


def test_failure_domain_applies_only_with_a_label_and_a_domain() -> None:
    labelled = replace(READY_CLUSTER, failure_domain_label="zone")
    assert decide.failure_domain_of(replace(OWNER, failure_domain="a"), labelled) == ("zone", "a")
    assert decide.failure_domain_of(OWNER, labelled) is None
    assert decide.failure_domain_of(replace(OWNER, failure_domain="a"), READY_CLUSTER) is None


def test_the_claim_gives_the_host_its_work_and_the_release_takes_it_away() -> None:
    network = StaticNetwork(ip_address="10.0.0.9", prefix_length=24)
    work = decide.host_work(machine(), OWNER, network)
    assert work["consumerRef"] == {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "PlunderMachine",
        "name": "m1",
        "namespace": "ns",
        "uid": "uid-m1",
    }
    assert work["userData"] == {"name": "m1-bootstrap", "namespace": "ns"}
    assert work["image"]["url"] == IMAGE.url and work["deploymentType"] is None
    assert work["network"] == {"ipAddress": "10.0.0.9", "prefixLength": 24}
    assert set(decide.RELEASE) == set(work) and not any(decide.RELEASE.values())
    preseed = PlunderMachine(
        metadata=machine().metadata, spec=PlunderMachineSpec(deployment_type="preseed")
    )
    assert decide.host_work(preseed, OWNER, None)["image"] is None


def test_binding_is_recorded_on_the_machine_once() -> None:
    m = machine()
    patch = decide.binding_patch(m, HOST)
    assert patch == {
        "metadata": {"annotations": {"plunder.dev/host": "h1"}},
        "spec": {"providerID": "plunder://00:50:56:a5:11:20"},
    }
    bound = m.model_copy(
        update={
            "metadata": m.metadata.model_copy(update={"annotations": {"plunder.dev/host": "h1"}}),
            "spec": m.spec.model_copy(update={"provider_id": "plunder://00:50:56:a5:11:20"}),
        }
    )
    assert decide.binding_patch(bound, HOST) is None
    assert decide.bound_host_name(bound) == "h1"


def test_status_mirrors_the_host() -> None:
    provisioning = decide.machine_status(machine(), None, NOW, host=HOST, failure_domain="a")
    assert provisioning.state == "Provisioning" and provisioning.ready is False
    assert provisioning.host_ref is not None and provisioning.host_ref.name == "h1"
    assert provisioning.failure_domain == "a"
    assert [a.to_api() for a in provisioning.addresses or ()] == [
        {"type": "Hostname", "address": "m1"},
        {"type": "InternalIP", "address": "172.31.99.20"},
    ]
    done = decide.machine_status(
        machine(),
        provisioning,
        NOW + timedelta(seconds=40),
        host=replace(HOST, state="provisioned"),
    )
    assert done.state == "Provisioned" and done.ready is True
    assert done.initialization is not None and done.initialization.provisioned is True
    ready = conditions.find(done.conditions, "Ready")
    assert ready is not None and (ready.status, ready.last_transition_time) == (
        "True",
        NOW + timedelta(seconds=40),
    )
    claimed = conditions.find(done.conditions, "HostClaimed")
    assert claimed is not None and claimed.last_transition_time == NOW
    assert done.deprecated is not None and done.deprecated.v1beta1 is not None
    # Provisioned never goes back to false, even if the host fails later.
    failed = decide.machine_status(
        machine(), done, NOW, host=replace(HOST, state="error", error_reason="ImageChecksum")
    )
    assert failed.state == "Failed" and failed.ready is True
    provisioned = conditions.find(failed.conditions, "Provisioned")
    assert provisioned is not None and provisioned.reason == "ImageChecksum"
    static = decide.machine_status(machine(), None, NOW, host=replace(HOST, static_ip="10.0.0.9"))
    assert static.addresses is not None and static.addresses[1].address == "10.0.0.9"


def test_status_while_waiting_and_paused() -> None:
    waiting = decide.machine_status(machine(), None, NOW, wait=decide.NO_HARDWARE)
    assert waiting.state == "WaitingForHost" and waiting.ready is False
    claimed = conditions.find(waiting.conditions, "HostClaimed")
    assert claimed is not None and (claimed.status, claimed.reason) == ("False", "NoHardwareFound")
    paused = decide.machine_status(machine(), waiting, NOW, paused=True)
    assert paused.state == "WaitingForHost"
    condition = conditions.find(paused.conditions, "Paused")
    assert condition is not None and condition.status == "True"
    missing = decide.machine_status(machine(), None, NOW, wait=decide.host_missing("h1"))
    assert missing.state == "Failed"


def test_the_seeds_events_on_transitions() -> None:
    took = replace(HOST, provisioned_in=41.2)
    assert decide.transition_events("WaitingForHost", "Provisioning", HOST) == [
        ("PlunderProvision", "Plunder has begun provisioning the Operating System", "Normal")
    ]
    assert decide.transition_events("Provisioning", "Provisioned", took) == [
        ("PlunderProvision", "Host has been successfully provisioned OS in 41s", "Normal")
    ]
    # A machine whose first status finds its host provisioned came by clusterctl move: the OS
    # was provisioned before, not now.
    assert decide.transition_events(None, "Provisioned", took) == []
    assert decide.transition_events("Provisioned", "Provisioned", took) == []
    assert decide.no_hardware_event(machine())[:1] == ("NoHardwareFound",)
    assert decide.no_hardware_event(machine())[1].startswith("No Hardware found")


def test_ipam_claim_and_address() -> None:
    pool = PoolReference(api_group="ipam.cluster.x-k8s.io", kind="InClusterIPPool", name="p")
    owner = {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "PlunderMachine",
        "name": "m1",
        "uid": "uid-m1",
        "controller": True,
    }
    claim = decide.ip_address_claim(machine(addressFromPool=pool), owner, "c1")
    assert claim["spec"] == {
        "poolRef": {"apiGroup": "ipam.cluster.x-k8s.io", "kind": "InClusterIPPool", "name": "p"},
        "clusterName": "c1",
    }
    assert claim["metadata"]["ownerReferences"] == [owner]
    network = decide.network_from_ip_address(
        {"spec": {"address": "10.0.0.7", "prefix": 16, "gateway": "10.0.0.1"}}
    )
    assert network == StaticNetwork(ip_address="10.0.0.7", prefix_length=16, gateway="10.0.0.1")
