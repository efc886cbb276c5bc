"""Handles on Cluster API's own kinds: the Cluster, the Machine, and the IPAM contract's claims.

The provider reads Clusters and Machines (owner lookups, pause, bootstrap data) and creates
IPAddressClaims; it never owns their schemas, so they are generic resources here, read as
plain dicts (typed where the code looks into them).
"""

from __future__ import annotations

from typing import Any, TypedDict

from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

CORE_GROUP = "cluster.x-k8s.io"
CORE_VERSION = "v1beta2"
IPAM_GROUP = "ipam.cluster.x-k8s.io"
IPAM_VERSION = "v1beta2"
"""The IPAM contract version the pinned Cluster API (v1.14) stores and serves."""

Cluster: type[GenericNamespacedResource] = create_namespaced_resource(
    CORE_GROUP, CORE_VERSION, "Cluster", "clusters"
)
Machine: type[GenericNamespacedResource] = create_namespaced_resource(
    CORE_GROUP, CORE_VERSION, "Machine", "machines"
)
IPAddressClaim: type[GenericNamespacedResource] = create_namespaced_resource(
    IPAM_GROUP, IPAM_VERSION, "IPAddressClaim", "ipaddressclaims"
)
IPAddress: type[GenericNamespacedResource] = create_namespaced_resource(
    IPAM_GROUP, IPAM_VERSION, "IPAddress", "ipaddresses"
)


class OwnerReference(TypedDict, total=False):
    """``metadata.ownerReferences[*]`` as the API sends it."""

    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: bool
    blockOwnerDeletion: bool


def owner_named(
    owners: list[OwnerReference] | None, kind: str, group: str = CORE_GROUP
) -> OwnerReference | None:
    """The owner of ``kind`` in ``group``, if there is one.

    Any version matches: an owner reference keeps the version it was written with.
    """
    for owner in owners or ():
        if owner.get("kind") == kind and owner.get("apiVersion", "").split("/")[0] == group:
            return owner
    return None


def controller_reference(body: dict[str, Any]) -> OwnerReference:
    """An owner reference to ``body`` that makes it the controller of what it owns."""
    meta = body["metadata"]
    return OwnerReference(
        apiVersion=body["apiVersion"],
        kind=body["kind"],
        name=meta["name"],
        uid=meta["uid"],
        controller=True,
        blockOwnerDeletion=True,
    )
