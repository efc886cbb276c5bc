"""The PlunderMachine controller against the real plane.

Contract order, claim, provisioning mirrored into the machine, release on delete, pause.
Addresses from an IPAM pool: test_ipam_incluster.py (with the real in-cluster IPAM provider).

The controller runs as ``plunderctl controller``; the test plays Cluster API (Cluster, Machine,
bootstrap Secret) and the hosts' agent (:class:`Agent`).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.lab.plane import Plane
from plunder.operator.machine_delete import FINALIZER
from plunder.reconcile import hoststate
from tests.integration.test_machine_world import (
    HOSTS,
    IMAGE,
    MACHINES,
    agent,
    claims,
    create_capi_machine,
    create_cluster,
    create_host,
    create_machine,
    events_of,
    hosts,
    machine,
    machine_condition,
    machine_controller,  # noqa: F401 - a fixture, used by name
    machine_gone,
    machine_owner_ref,
    machine_state,
    set_bootstrap_data,
    set_cluster_paused,
    set_cluster_provisioned,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("machine_controller")]


def reason(kube: Client, namespace: str, name: str, type_: str = "HostClaimed") -> str | None:
    found = machine_condition(machine(kube, namespace, name), type_)
    return found[1] if found else None


def test_machine_waits_in_contract_order_then_provisions(
    plane: Plane, kube: Client, namespace: str
) -> None:
    create_host(kube, namespace, "h0", "00:50:56:a5:11:20")
    network = {"ipAddress": "172.31.99.50", "prefixLength": 24, "gateway": "172.31.99.1"}
    create_machine(kube, namespace, "m0", with_owner=False, spec={"network": network})
    wait_for(lambda: reason(kube, namespace, "m0") == "WaitingForMachine", what="no owner")

    create_cluster(kube, namespace, provisioned=False)
    uid = create_capi_machine(kube, namespace, "m0", bootstrap=False)
    kube.patch(
        MACHINES,
        "m0",
        {"metadata": {"ownerReferences": [machine_owner_ref("m0", uid)]}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    wait_for(lambda: reason(kube, namespace, "m0") == "WaitingForClusterInfrastructure")
    set_cluster_provisioned(kube, namespace)
    wait_for(lambda: reason(kube, namespace, "m0") == "WaitingForBootstrapData")
    assert claims(kube, namespace) == {}, "no host is claimed before the contract allows it"

    with agent(plane, namespace):
        set_bootstrap_data(kube, namespace, "m0")
        wait_for(lambda: machine_state(kube, namespace, "m0") == "Provisioned", what="provisioned")

    body = machine(kube, namespace, "m0")
    assert body["spec"]["providerID"] == "plunder://00:50:56:a5:11:20"
    assert body["metadata"]["annotations"]["plunder.dev/host"] == "h0"
    status = body["status"]
    assert status["ready"] is True and status["initialization"] == {"provisioned": True}
    assert status["hostRef"]["name"] == "h0"
    assert {"type": "InternalIP", "address": "172.31.99.50"} in status["addresses"]
    assert {"type": "Hostname", "address": "m0"} in status["addresses"]
    assert machine_condition(body, "Ready") == ("True", "Provisioned")
    v1beta1 = {c["type"]: c["status"] for c in status["deprecated"]["v1beta1"]["conditions"]}
    assert v1beta1["Ready"] == "True" and v1beta1["Paused"] == "False"

    [host] = hosts(kube, namespace)
    assert host["spec"]["consumerRef"]["name"] == "m0"
    assert host["spec"]["userData"] == {"name": "m0-bootstrap", "namespace": namespace}
    assert host["spec"]["image"]["url"] == IMAGE["url"]
    assert host["spec"]["network"]["ipAddress"] == "172.31.99.50"

    def seed_events() -> bool:
        messages = [message for _, _, message in events_of(kube, namespace, "m0")]
        return "Plunder has begun provisioning the Operating System" in messages and any(
            m.startswith("Host has been successfully provisioned OS in ") for m in messages
        )

    wait_for(seed_events, what="the seed's events on the machine")


def test_hosts_are_chosen_by_selector_and_failure_domain(
    plane: Plane, kube: Client, namespace: str
) -> None:
    create_cluster(kube, namespace, failure_domain_label="topology.kubernetes.io/zone")
    create_host(kube, namespace, "small", "00:50:56:a5:11:01", {"size": "small"})
    create_host(
        kube,
        namespace,
        "big-a",
        "00:50:56:a5:11:02",
        {"size": "big", "topology.kubernetes.io/zone": "a"},
    )
    create_host(
        kube,
        namespace,
        "big-b",
        "00:50:56:a5:11:03",
        {"size": "big", "topology.kubernetes.io/zone": "b"},
    )
    selector = {"hostSelector": {"matchLabels": {"size": "big"}}}
    create_machine(kube, namespace, "m-b", spec=selector, failure_domain="b")
    create_machine(
        kube,
        namespace,
        "m-not-small",
        spec={
            "hostSelector": {
                "matchExpressions": [{"key": "size", "operator": "NotIn", "values": ["big"]}]
            }
        },
    )
    wait_for(lambda: len(claims(kube, namespace)) == 2, what="two claims")
    assert claims(kube, namespace) == {"big-b": "m-b", "small": "m-not-small"}
    wait_for(lambda: (machine(kube, namespace, "m-b").get("status") or {}).get("failureDomain"))
    assert machine(kube, namespace, "m-b")["status"]["failureDomain"] == "b"


def test_delete_during_provisioning_releases_and_wipes_the_host(
    plane: Plane, kube: Client, namespace: str
) -> None:
    create_cluster(kube, namespace)
    create_host(kube, namespace, "h0", "00:50:56:a5:11:20")
    with agent(plane, namespace) as player:
        player.holding.set()  # the install never finishes on its own
        create_machine(kube, namespace, "m0")

        def provisioning() -> bool:
            [host] = hosts(kube, namespace)
            return (host.get("status") or {}).get("state") == "provisioning"

        wait_for(provisioning, what="host provisioning")
        kube.delete(MACHINES, "m0", namespace=namespace)
        wait_for(lambda: machine_gone(kube, namespace, "m0"), what="machine deleted")
    [host] = hosts(kube, namespace)
    assert host["status"]["state"] == "available"
    assert player.wiped == 1
    for field in ("consumerRef", "image", "userData", "network"):
        assert field not in host["spec"], field


def test_a_machine_whose_host_failed_keeps_its_finalizer_until_the_host_is_wiped(
    plane: Plane, kube: Client, namespace: str
) -> None:
    """No agent plays here: the test reports the host's failures and its wipe itself.

    Before, a released host seen in ``error`` let the finalizer go; here the controller sends
    it back to ``deprovisioning`` at once, so that was a race this test rarely loses:
    tests/unit/test_machine_delete.py holds the host in ``error`` to show it every time.
    """
    create_cluster(kube, namespace)
    create_host(kube, namespace, "h0", "00:50:56:a5:11:20")
    create_machine(kube, namespace, "m0")

    def host() -> PlunderHost:
        return PlunderHost.model_validate(hosts(kube, namespace)[0])

    def report(fields: dict[str, str], state: str) -> None:
        """The agent's report, once the host is in ``state``.

        Guarded by the resourceVersion it was decided on and, as the boot service does, decided
        and asked again on a 409 (the controller wrote the host in between).
        """

        def reported() -> bool:
            wait_for(lambda: hoststate.state_of(host()) == state, what=f"host {state}")
            current = host()
            change = hoststate.agent_progress(current, fields, datetime.now(UTC))
            assert change.status is not None
            try:
                kube.patch(
                    HOSTS.Status,
                    "h0",
                    {
                        "metadata": {"resourceVersion": current.metadata.resource_version},
                        "status": change.status,
                    },
                    namespace=namespace,
                    patch_type=PatchType.MERGE,
                )
            except ApiError as error:
                if error.status.code == 409:
                    return False
                raise
            return True

        wait_for(reported, what=f"{fields['reason']} reported")

    report({"phase": "failed", "reason": "ChecksumMismatch", "message": "bad"}, "provisioning")
    kube.delete(MACHINES, "m0", namespace=namespace)
    # Released, the failed host is wiped (deprovisioning); the wipe fails too; it is retried.
    report(
        {"phase": "failed", "reason": "WipeFailed", "message": "zeroing failed"}, "deprovisioning"
    )
    time.sleep(3)
    assert not machine_gone(kube, namespace, "m0"), "the finalizer went before the wipe"
    assert FINALIZER in machine(kube, namespace, "m0")["metadata"]["finalizers"]
    report({"phase": "done", "reason": "Wiped", "message": "metadata wipe"}, "deprovisioning")
    wait_for(lambda: machine_gone(kube, namespace, "m0"), what="machine deleted after the wipe")
    assert hoststate.state_of(host()) == "available"


def test_delete_finishes_when_the_host_vanished(plane: Plane, kube: Client, namespace: str) -> None:
    create_cluster(kube, namespace)
    create_host(kube, namespace, "h0", "00:50:56:a5:11:20")
    create_machine(kube, namespace, "m0")
    wait_for(lambda: claims(kube, namespace) == {"h0": "m0"}, what="claimed")
    kube.delete(HOSTS, "h0", namespace=namespace)
    wait_for(lambda: reason(kube, namespace, "m0") == "HostMissing", what="host missing")
    assert machine_state(kube, namespace, "m0") == "Failed"
    kube.delete(MACHINES, "m0", namespace=namespace)
    wait_for(lambda: machine_gone(kube, namespace, "m0"), what="machine deleted")


def test_pause_stops_changes_until_lifted(plane: Plane, kube: Client, namespace: str) -> None:
    create_cluster(kube, namespace, paused=True)
    create_host(kube, namespace, "h0", "00:50:56:a5:11:20")
    create_machine(kube, namespace, "m0")
    wait_for(
        lambda: machine_condition(machine(kube, namespace, "m0"), "Paused") == ("True", "Paused")
    )
    assert claims(kube, namespace) == {}
    assert machine_condition(machine(kube, namespace, "m0"), "HostClaimed") is None
    # Finalized before it showed any condition, so a deletion from now on waits for it.
    assert FINALIZER in machine(kube, namespace, "m0")["metadata"]["finalizers"]

    # Lifting the Cluster's pause but pausing the machine by annotation: still paused.
    annotation = {"metadata": {"annotations": {"cluster.x-k8s.io/paused": ""}}}
    kube.patch(MACHINES, "m0", annotation, namespace=namespace, patch_type=PatchType.MERGE)
    set_cluster_paused(kube, namespace, False)
    kube.delete(MACHINES, "m0", namespace=namespace)  # a paused machine keeps its finalizer
    wait_for(lambda: machine(kube, namespace, "m0")["metadata"].get("deletionTimestamp"))
    assert claims(kube, namespace) == {}
    assert machine_condition(machine(kube, namespace, "m0"), "Paused") == ("True", "Paused")

    unpause = {"metadata": {"annotations": {"cluster.x-k8s.io/paused": None}}}
    kube.patch(MACHINES, "m0", unpause, namespace=namespace, patch_type=PatchType.MERGE)
    wait_for(lambda: machine_gone(kube, namespace, "m0"), what="deleted once unpaused")


def test_a_moved_machine_finds_its_host_again(plane: Plane, kube: Client, namespace: str) -> None:
    """As ``clusterctl move`` does: pause, drop finalizers, delete, recreate without status."""
    create_cluster(kube, namespace)
    create_host(kube, namespace, "h0", "00:50:56:a5:11:20")
    create_host(kube, namespace, "h1", "00:50:56:a5:11:21")
    with agent(plane, namespace):
        create_machine(kube, namespace, "m0")
        wait_for(lambda: machine_state(kube, namespace, "m0") == "Provisioned", what="provisioned")
    [bound] = claims(kube, namespace)
    set_cluster_paused(kube, namespace, True)
    wait_for(
        lambda: machine_condition(machine(kube, namespace, "m0"), "Paused") == ("True", "Paused")
    )

    old = machine(kube, namespace, "m0")
    kube.patch(
        MACHINES,
        "m0",
        {"metadata": {"finalizers": None}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    kube.delete(MACHINES, "m0", namespace=namespace)
    wait_for(lambda: machine_gone(kube, namespace, "m0"))
    meta = old["metadata"]
    kept = {"plunder.dev/host": meta["annotations"]["plunder.dev/host"]}
    kube.create(
        MACHINES.from_dict(
            {
                "apiVersion": old["apiVersion"],
                "kind": "PlunderMachine",
                "metadata": {
                    "name": "m0",
                    "namespace": namespace,
                    "labels": meta["labels"],
                    "annotations": kept,
                    "ownerReferences": meta["ownerReferences"],
                },
                "spec": old["spec"],
            }
        )
    )
    set_cluster_paused(kube, namespace, False)
    wait_for(lambda: machine_state(kube, namespace, "m0") == "Provisioned", what="found again")
    assert claims(kube, namespace) == {bound: "m0"}
    body = machine(kube, namespace, "m0")
    assert body["status"]["hostRef"]["name"] == bound
    assert body["spec"]["providerID"] == old["spec"]["providerID"]
    [host] = [h for h in hosts(kube, namespace) if h["metadata"]["name"] == bound]
    assert host["status"]["state"] == "provisioned", "the host was not provisioned again"
