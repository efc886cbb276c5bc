"""PlunderMachines take their addresses from the real in-cluster IPAM provider.

The provider (sigs.k8s.io/cluster-api-ipam-provider-in-cluster, built from ``tools/ipam``) runs
as a process against the plane, with its webhooks, and answers the IPAddressClaims the
controller makes: it allocates from an InClusterIPPool, writes the IPAddress and points the
claim's status at it. The hosts' agent is played (:class:`Agent`), as in the other machine tests.

The plane runs no kube-controller-manager, so no garbage collector: the controller itself
deletes a deleted machine's claim (and a claim left by an earlier machine of the same name),
and the provider then releases the address for real.
"""

from __future__ import annotations

import ipaddress
from functools import partial
from typing import Any

import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

from plunder.api.infrastructure import PlunderMachine
from plunder.k8s import capi
from plunder.k8s.resources import as_dict
from plunder.lab.capi import ClusterAPIControllers
from plunder.lab.plane import Plane
from tests.integration.test_machine import reason
from tests.integration.test_machine_world import (
    MACHINES,
    agent,
    claims,
    create_cluster,
    create_hosts,
    create_machine,
    hosts,
    machine,
    machine_controller,  # noqa: F401 - a fixture, used by name
    machine_gone,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("machine_controller")]

InClusterIPPool: type[GenericNamespacedResource] = create_namespaced_resource(
    capi.IPAM_GROUP, "v1alpha2", "InClusterIPPool", "inclusterippools"
)
POOL_REF = {"apiGroup": capi.IPAM_GROUP, "kind": "InClusterIPPool", "name": "pool"}
POOL_ADDRESSES = {"10.20.0.10", "10.20.0.11"}


def create_pool(kube: Client, namespace: str) -> None:
    """Two addresses of 10.20.0.0/16 (data only: nothing is sent to them)."""
    kube.create(
        InClusterIPPool.from_dict(
            {
                "apiVersion": f"{capi.IPAM_GROUP}/v1alpha2",
                "kind": "InClusterIPPool",
                "metadata": {"name": "pool", "namespace": namespace},
                "spec": {
                    "addresses": ["10.20.0.10-10.20.0.11"],
                    "prefix": 16,
                    "gateway": "10.20.0.1",
                },
            }
        )
    )


def host_networks(kube: Client, namespace: str) -> dict[str, dict[str, Any]]:
    """Machine name → the static network its host was given."""
    return {
        h["spec"]["consumerRef"]["name"]: h["spec"].get("network") or {}
        for h in hosts(kube, namespace)
        if h["spec"].get("consumerRef")
    }


def allocated(kube: Client, namespace: str, name: str) -> dict[str, Any] | None:
    """The IPAddress the provider made for claim ``name`` (None if there is none)."""
    try:
        return as_dict(kube.get(capi.IPAddress, name, namespace=namespace))
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


def reports_address(kube: Client, namespace: str, name: str, address: str) -> bool:
    """Whether PlunderMachine ``name`` lists ``address`` as its InternalIP."""
    status = machine(kube, namespace, name).get("status") or {}
    return {"type": "InternalIP", "address": address} in status.get("addresses", [])


def pool_usage(kube: Client, namespace: str) -> dict[str, int]:
    """The pool's ``status.ipAddresses`` (total, used, free), as the provider counts them."""
    usage: dict[str, int] = (
        as_dict(kube.get(InClusterIPPool, "pool", namespace=namespace))
        .get("status", {})
        .get("ipAddresses", {})
    )
    return usage


def claim_gone(kube: Client, namespace: str, name: str) -> bool:
    try:
        kube.get(capi.IPAddressClaim, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return True
        raise
    return False


def test_machines_take_distinct_addresses_and_deletion_releases_them(
    plane: Plane, kube: Client, namespace: str, ipam_in_cluster: ClusterAPIControllers
) -> None:
    create_cluster(kube, namespace)
    create_pool(kube, namespace)
    create_hosts(kube, namespace, 3)
    with agent(plane, namespace):
        for name in ("m0", "m1"):
            create_machine(kube, namespace, name, spec={"addressFromPool": POOL_REF})
        wait_for(
            lambda: set(host_networks(kube, namespace)) == {"m0", "m1"},
            what="both machines claimed a host with an allocated address",
        )
        networks = host_networks(kube, namespace)
        given = {networks[name]["ipAddress"] for name in ("m0", "m1")}
        assert given == POOL_ADDRESSES, "two machines, two different addresses of the pool"
        for name in ("m0", "m1"):
            address = allocated(kube, namespace, name)
            assert address is not None
            assert address["spec"]["poolRef"] == POOL_REF
            assert networks[name] == {
                "ipAddress": address["spec"]["address"],
                "prefixLength": 16,
                "gateway": "10.20.0.1",
            }
            assert ipaddress.ip_address(networks[name]["ipAddress"]) in ipaddress.ip_network(
                "10.20.0.0/16"
            )
            wait_for(
                partial(reports_address, kube, namespace, name, networks[name]["ipAddress"]),
                what=f"{name}'s address in its status",
            )
        wait_for(lambda: pool_usage(kube, namespace).get("used") == 2, what="pool counts 2 used")

        # The pool is exhausted: a third machine waits for an address and claims no host.
        create_machine(kube, namespace, "m2", spec={"addressFromPool": POOL_REF})
        wait_for(
            lambda: reason(kube, namespace, "m2") == "WaitingForIPAddress",
            what="m2 waits for an address",
        )
        claim = as_dict(kube.get(capi.IPAddressClaim, "m2", namespace=namespace))
        assert claim["spec"]["poolRef"] == POOL_REF and claim["spec"]["clusterName"] == "c1"
        [owner] = claim["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("PlunderMachine", "m2", True)
        assert not (claim.get("status") or {}).get("addressRef", {}).get("name")
        assert "m2" not in claims(kube, namespace).values()

        # Deleting m0 releases its host and deletes its claim (the plane has no garbage
        # collector to do it), so the provider frees its address for the waiting machine.
        released = networks["m0"]["ipAddress"]
        kube.delete(MACHINES, "m0", namespace=namespace)
        wait_for(lambda: machine_gone(kube, namespace, "m0"), what="m0 deleted")
        wait_for(lambda: claim_gone(kube, namespace, "m0"), what="m0's claim deleted")
        wait_for(lambda: allocated(kube, namespace, "m0") is None, what="m0's IPAddress released")
        wait_for(
            lambda: host_networks(kube, namespace).get("m2", {}).get("ipAddress") == released,
            what="m2 claimed a host with the released address",
        )
    m2_address = allocated(kube, namespace, "m2")
    assert m2_address is not None and m2_address["spec"]["address"] == released
    assert set(host_networks(kube, namespace)) == {"m1", "m2"}

    # The provider's admission webhooks are served too: a pool in use cannot be deleted.
    with pytest.raises(ApiError, match="Pool has IPAddresses allocated"):
        kube.delete(InClusterIPPool, "pool", namespace=namespace)


def test_a_claim_left_by_a_namesake_is_not_reused(
    plane: Plane, kube: Client, namespace: str, ipam_in_cluster: ClusterAPIControllers
) -> None:
    """A machine removed without its finalizer (as ``clusterctl move`` does) leaves its claim."""
    create_cluster(kube, namespace)
    create_pool(kube, namespace)
    create_hosts(kube, namespace, 1)
    gone_uid = "0d6f2a47-5b1c-4e8e-9a53-000000000001"
    stale = {
        "apiVersion": f"{capi.IPAM_GROUP}/{capi.IPAM_VERSION}",
        "kind": "IPAddressClaim",
        "metadata": {
            "name": "m0",
            "namespace": namespace,
            "ownerReferences": [
                {
                    "apiVersion": PlunderMachine.info.api_version,
                    "kind": "PlunderMachine",
                    "name": "m0",
                    "uid": gone_uid,
                    "controller": True,
                }
            ],
        },
        "spec": {"poolRef": POOL_REF, "clusterName": "c1"},
    }
    kube.create(capi.IPAddressClaim.from_dict(stale))
    wait_for(lambda: allocated(kube, namespace, "m0") is not None, what="the stale claim's address")

    with agent(plane, namespace):
        create_machine(kube, namespace, "m0", spec={"addressFromPool": POOL_REF})
        uid = machine(kube, namespace, "m0")["metadata"]["uid"]

        def own_claim_answered() -> bool:
            try:
                claim = as_dict(kube.get(capi.IPAddressClaim, "m0", namespace=namespace))
            except ApiError as error:
                if error.status.code == 404:
                    return False
                raise
            owners = [owner["uid"] for owner in claim["metadata"]["ownerReferences"]]
            return owners == [uid] and bool(claim.get("status", {}).get("addressRef"))

        wait_for(own_claim_answered, what="the namesake's claim replaced by the machine's own")
        wait_for(lambda: "m0" in host_networks(kube, namespace), what="m0 claimed a host")
    address = allocated(kube, namespace, "m0")
    assert address is not None
    claim_uid = as_dict(kube.get(capi.IPAddressClaim, "m0", namespace=namespace))["metadata"]["uid"]
    owners = {o["kind"]: o["uid"] for o in address["metadata"]["ownerReferences"]}
    assert owners["IPAddressClaim"] == claim_uid, "the address is the new claim's"
    assert host_networks(kube, namespace)["m0"]["ipAddress"] == address["spec"]["address"]
    assert pool_usage(kube, namespace).get("used") == 1, "the stale address was freed"
