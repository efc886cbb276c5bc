"""The watch caches the controllers read: kopf indexes of the objects a reconcile depends on.

Everything a reconcile reads comes from here, never from list calls. Each index keeps only what
is read: a :class:`HostCandidate` per host, a few facts per Cluster API object, and per
PlunderMachine its body without ``managedFields`` (the machine reconcile parses it). The index
functions are coroutines: kopf runs plain functions in a thread pool, a hop per object and event
that costs more than the function itself. kopf holds every handler back until all of them are
indexed; :mod:`plunder.operator.kopf_startup` keeps that wait linear in their number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from plunder.api.infrastructure import PlunderCluster, PlunderMachine
from plunder.api.inventory import PlunderHost
from plunder.k8s import capi
from plunder.operator import kopf_startup
from plunder.reconcile import machine as decide
from plunder.reconcile.selection import HostCandidate

# The indexes below hold thousands of objects: kopf's wait for them must stay linear.
kopf_startup.apply()

_MACHINES = PlunderMachine.info
_HOSTS = PlunderHost.info
_CLUSTERS = PlunderCluster.info

Key = tuple[str, str]
"""(namespace, name) of an object."""


@kopf.index(_HOSTS.group, _HOSTS.version, _HOSTS.plural)
async def plunderhosts_by_namespace(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[str, HostCandidate]:
    """Every host, by namespace: what selection and mirroring read."""
    return {namespace or "": HostCandidate.from_body(body)}


@kopf.index(_MACHINES.group, _MACHINES.version, _MACHINES.plural)
async def plundermachines_by_name(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, dict[str, Any]]:
    """Every PlunderMachine's body (without managedFields), for its reconcile."""
    return {(namespace or "", name): without_managed_fields(body)}


@kopf.index(capi.CORE_GROUP, capi.CORE_VERSION, "machines")
async def capi_machines(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, decide.OwnerMachine]:
    """Cluster API Machines by (namespace, name)."""
    return {(namespace or "", name): decide.OwnerMachine.from_body(body)}


@kopf.index(capi.CORE_GROUP, capi.CORE_VERSION, "clusters")
async def capi_clusters(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, tuple[decide.ClusterFacts, str | None]]:
    """Cluster API Clusters by (namespace, name), with their infrastructure cluster's name."""
    infrastructure = (body.get("spec") or {}).get("infrastructureRef") or {}
    return {
        (namespace or "", name): (decide.ClusterFacts.from_body(body), infrastructure.get("name"))
    }


@kopf.index(_CLUSTERS.group, _CLUSTERS.version, _CLUSTERS.plural)
async def plunderclusters_by_name(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, str | None]:
    """Each PlunderCluster's failure-domain label."""
    return {(namespace or "", name): (body.get("spec") or {}).get("failureDomainLabel")}


def without_managed_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """A body to keep in an index: ``managedFields`` is often most of it, and never read."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return {**body, "metadata": meta}


def first(index: kopf.Index[Any, Any], key: Any) -> Any:
    """The one object an index holds under ``key`` (None if none)."""
    store = index.get(key)
    return next(iter(store), None) if store else None


class Caches:
    """The indexes a reconcile reads (kopf's live views, as handlers and startup get them)."""

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        self.hosts: kopf.Index[str, HostCandidate] = indexes["plunderhosts_by_namespace"]
        self.plundermachines: kopf.Index[Key, dict[str, Any]] = indexes["plundermachines_by_name"]
        self.machines: kopf.Index[Key, decide.OwnerMachine] = indexes["capi_machines"]
        self.clusters: kopf.Index[Key, tuple[decide.ClusterFacts, str | None]] = indexes[
            "capi_clusters"
        ]
        self.plunderclusters: kopf.Index[Key, str | None] = indexes["plunderclusters_by_name"]

    def hosts_in(self, namespace: str) -> list[HostCandidate]:
        """The cached hosts of one namespace."""
        return list(self.hosts.get(namespace, ()))

    def plundermachine(self, key: Key) -> dict[str, Any] | None:
        """The cached body of a PlunderMachine, None once it is gone."""
        found: dict[str, Any] | None = first(self.plundermachines, key)
        return found

    def owner(self, body: Mapping[str, Any]) -> decide.OwnerMachine | None:
        """The PlunderMachine's Cluster API Machine, once it has one and it is cached."""
        meta = body.get("metadata") or {}
        ref = capi.owner_named(meta.get("ownerReferences"), "Machine")
        if ref is None:
            return None
        found: decide.OwnerMachine | None = first(self.machines, (meta["namespace"], ref["name"]))
        return found

    def cluster(self, namespace: str | None, name: str | None) -> decide.ClusterFacts | None:
        """The Cluster's facts, with its PlunderCluster's failure-domain label."""
        if not name:
            return None
        found = first(self.clusters, (namespace, name))
        if found is None:
            return None
        facts, infrastructure = found
        label = first(self.plunderclusters, (namespace, infrastructure)) if infrastructure else None
        return decide.ClusterFacts(facts.paused, facts.infrastructure_provisioned, label)
