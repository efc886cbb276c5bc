"""Cluster API's providers recorded on a plane as ``clusterctl init`` records them.

The lab and the test planes run the providers as processes on loopback, not as Deployments:
the plane has no nodes to run them, and ``clusterctl init`` would wait for cert-manager. But
clusterctl's other commands read what init leaves behind, and ``clusterctl move`` found none of
the Cluster API objects without it (issue #13): one ``Provider`` object per provider in
clusterctl's inventory (``clusterctl.cluster.x-k8s.io``), in the namespace its release installs
into, with its version; and clusterctl's labels on each of its CRDs (move considers only the
kinds whose CRD carries ``clusterctl.cluster.x-k8s.io``; its provider is named by
``cluster.x-k8s.io/provider``). :func:`record` writes both, the same way on every plane, so a
move from one plane to another finds each provider of the source on the target.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml
from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType

from plunder import __version__
from plunder.api import crdgen
from plunder.api.common import CLUSTERCTL_LABEL, PROVIDER_LABEL
from plunder.images import binaries
from plunder.k8s import crds
from plunder.k8s.resources import as_dict

FIELD_MANAGER = "plunder-lab"
INVENTORY_GROUP = "clusterctl.cluster.x-k8s.io"
INVENTORY_VERSION = "v1alpha3"
INVENTORY_LABEL = "clusterctl.cluster.x-k8s.io/core"
"""clusterctl marks its inventory objects with this label, value ``inventory``."""

ProviderObject = create_namespaced_resource(
    INVENTORY_GROUP, INVENTORY_VERSION, "Provider", "providers"
)

_LABEL_PREFIXES = {
    "BootstrapProvider": "bootstrap-",
    "ControlPlaneProvider": "control-plane-",
    "InfrastructureProvider": "infrastructure-",
    "IPAMProvider": "ipam-",
}


@dataclass(frozen=True)
class Provider:
    """One provider as clusterctl's inventory knows it."""

    name: str
    """Its ``providerName``: cluster-api, kubeadm, plunder, in-cluster."""
    type: str
    """CoreProvider, BootstrapProvider, ControlPlaneProvider, InfrastructureProvider, …"""
    namespace: str
    """Where its release installs it (where clusterctl init would)."""

    @property
    def manifest_label(self) -> str:
        """Its ``cluster.x-k8s.io/provider`` label (and the name of its inventory object)."""
        if self.type == "CoreProvider":
            return self.name
        return _LABEL_PREFIXES[self.type] + self.name


PLUNDER = Provider("plunder", "InfrastructureProvider", "plunder-system")


def inventory_crd() -> dict[str, Any]:
    """The inventory CRD of clusterctl, from the pinned Cluster API release."""
    root = binaries.module_dir(binaries.PROGRAMS["clusterctl"].module)
    manifest = root / "cmd" / "clusterctl" / "config" / "manifest" / "clusterctl-api.yaml"
    crd: dict[str, Any] = yaml.safe_load(manifest.read_text())
    return crd


def inventory_object(provider: Provider, version: str) -> dict[str, Any]:
    """The ``Provider`` object clusterctl init leaves for ``provider`` at ``version``."""
    return {
        "apiVersion": f"{INVENTORY_GROUP}/{INVENTORY_VERSION}",
        "kind": "Provider",
        "metadata": {
            "name": provider.manifest_label,
            "namespace": provider.namespace,
            "labels": {
                CLUSTERCTL_LABEL: "",
                PROVIDER_LABEL: provider.manifest_label,
                INVENTORY_LABEL: "inventory",
            },
        },
        "providerName": provider.name,
        "type": provider.type,
        "version": version,
    }


def record(client: Client, provider: Provider, version: str, crd_names: Iterable[str]) -> None:
    """Record ``provider`` in clusterctl's inventory and label its CRDs as clusterctl does."""
    crds.wait_established(client, crds.apply_crds(client, [inventory_crd()]))
    labels = {CLUSTERCTL_LABEL: "", PROVIDER_LABEL: provider.manifest_label}
    for name in crd_names:
        client.patch(
            CustomResourceDefinition,
            name,
            {"metadata": {"labels": labels}},
            patch_type=PatchType.MERGE,
        )
    client.apply(
        Namespace(metadata=ObjectMeta(name=provider.namespace)),
        field_manager=FIELD_MANAGER,
        force=True,
    )
    client.apply(
        ProviderObject.from_dict(inventory_object(provider, version)),
        field_manager=FIELD_MANAGER,
        force=True,
    )


def record_plunder(client: Client) -> None:
    """Record this provider (its CRDs installed already) at this package's version."""
    names = [kind.info.crd_name for kind in crdgen.ALL_KINDS]
    record(client, PLUNDER, f"v{__version__}", names)


def recorded(client: Client) -> list[dict[str, Any]]:
    """The inventory's Provider objects on the plane (as clusterctl lists them)."""
    return [
        {"name": p["providerName"], "type": p["type"], "version": p["version"]}
        for p in (as_dict(obj) for obj in client.list(ProviderObject, namespace="*"))
    ]
