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
from plunder.reconcile.selection import Consumer, HostCandidate

# The indexes below hold thousands of objects: kopf's wait for them must stay linear.
kopf_startup.apply()

_MACHINES = PlunderMachine.info
_HOSTS = PlunderHost.info
_CLUSTERS = PlunderCluster.info

Key = tuple[str, str]
"""(namespace, name) of an object."""


NOWHERE: dict[Any, Any] = {}
"""What an index function returns for an object that belongs under no key (any more). Not None:
kopf keeps an object's earlier entries when its index function returns None, so a host once free
(or claimed) would stay listed as such after it was claimed (or released)."""

_PARSED: dict[tuple[str, str], HostCandidate] = {}
"""The last few hosts read, by (uid, resourceVersion): the host indexes below see each event in
turn, and share one candidate instead of reading the body once each."""
_PARSED_KEEP = 64


def candidate(body: Mapping[str, Any]) -> HostCandidate:
    """The body's :class:`HostCandidate`, read once per version however many indexes ask."""
    meta = body.get("metadata") or {}
    version = (meta.get("uid", ""), meta.get("resourceVersion", ""))
    found = _PARSED.get(version)
    if found is None:
        found = _PARSED[version] = HostCandidate.from_body(body)
        while len(_PARSED) > _PARSED_KEEP:
            del _PARSED[next(iter(_PARSED))]
    return found


@kopf.index(_HOSTS.group, _HOSTS.version, _HOSTS.plural)
async def plunderhosts_by_namespace(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[str, HostCandidate]:
    """Every host, by namespace: what mirroring, failure domains and the slot gate read."""
    return {namespace or "": candidate(body)}


@kopf.index(_HOSTS.group, _HOSTS.version, _HOSTS.plural)
async def free_plunderhosts_by_namespace(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[str, HostCandidate]:
    """The hosts a machine may claim, by namespace.

    A claim looks at these, not at every host: at 10,000 hosts, scanning them all for each
    claim was a third of the controller's time.
    """
    host = candidate(body)
    return {namespace or "": host} if host.free else NOWHERE


@kopf.index(_HOSTS.group, _HOSTS.version, _HOSTS.plural)
async def plunderhosts_by_name(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, HostCandidate]:
    """Every host by (namespace, name): a machine's bound host in one lookup."""
    return {(namespace or "", name): candidate(body)}


@kopf.index(_HOSTS.group, _HOSTS.version, _HOSTS.plural)
async def plunderhosts_by_consumer(body: kopf.Body, **_: Any) -> dict[Consumer, HostCandidate]:
    """Claimed hosts by their consumer: a machine's claims (strays included) in one lookup."""
    host = candidate(body)
    return {host.consumer: host} if host.consumer is not None else NOWHERE


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
        self.free_hosts: kopf.Index[str, HostCandidate] = indexes["free_plunderhosts_by_namespace"]
        self.hosts_by_name: kopf.Index[Key, HostCandidate] = indexes["plunderhosts_by_name"]
        self.hosts_by_consumer: kopf.Index[Consumer, HostCandidate] = indexes[
            "plunderhosts_by_consumer"
        ]
        self.plundermachines: kopf.Index[Key, dict[str, Any]] = indexes["plundermachines_by_name"]
        self.machines: kopf.Index[Key, decide.OwnerMachine] = indexes["capi_machines"]
        self.clusters: kopf.Index[Key, tuple[decide.ClusterFacts, str | None]] = indexes[
            "capi_clusters"
        ]
        self.plunderclusters: kopf.Index[Key, str | None] = indexes["plunderclusters_by_name"]

    def hosts_in(self, namespace: str) -> list[HostCandidate]:
        """The cached hosts of one namespace."""
        return list(self.hosts.get(namespace, ()))

    def free_hosts_in(self, namespace: str) -> list[HostCandidate]:
        """The cached hosts of one namespace a machine may claim (:attr:`HostCandidate.free`)."""
        return list(self.free_hosts.get(namespace, ()))

    def host(self, namespace: str, name: str) -> HostCandidate | None:
        """One cached host, None if the cache has none of that name."""
        found: HostCandidate | None = first(self.hosts_by_name, (namespace, name))
        return found

    def hosts_of(self, consumer: Consumer) -> list[HostCandidate]:
        """The cached hosts that name ``consumer`` as theirs (one, unless a race left a stray)."""
        return list(self.hosts_by_consumer.get(consumer, ()))

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
