"""PlunderMachine handlers: claim a host, mirror it, release it on delete.

One kopf daemon per PlunderMachine runs its reconcile loop and then sleeps until something it
depends on changes: its host, its Machine or Cluster, its IPAddressClaim, or (while it waits
for hardware) any host of its namespace becoming free. Those events only wake the daemon
(:class:`Wakeups`); a long timeout is the safety net. Nothing polls while waiting for a host.

Everything read is read from kopf indexes (watch caches) of PlunderHosts, Machines, Clusters
and PlunderClusters, never from list calls. The claim is a merge patch of the host carrying the
cached resourceVersion: a 409 means another machine (or controller) won, and the next host is
tried. Several controller replicas are therefore safe for hosts; a machine could still be given
two hosts by two replicas at once, so run one replica (or one per namespace).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import kopf
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from plunder.api.common import INFRASTRUCTURE_GROUP, StaticNetwork
from plunder.api.infrastructure import (
    PlunderCluster,
    PlunderMachine,
    PlunderMachineStatus,
)
from plunder.api.inventory import PlunderHost
from plunder.k8s import capi
from plunder.k8s.resources import as_dict, resource_for
from plunder.reconcile import machine as decide
from plunder.reconcile.hoststate import EventSpec
from plunder.reconcile.pause import is_paused
from plunder.reconcile.selection import Consumer, HostCandidate, bound_host, choose_host

_MACHINES = PlunderMachine.info
_HOSTS = PlunderHost.info
_CLUSTERS = PlunderCluster.info
log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a PlunderMachine."""

SETTLED_RESYNC = 300.0
"""Seconds between reconciles of a machine nothing woke: only a safety net."""
CONTENDED_RETRY = 1.0
"""Seconds before trying again after every host tried was claimed by someone else first."""
ERROR_RETRY = 5.0
"""Seconds before trying again after an unexpected error."""
PAUSED_RETRY = 5.0
"""Seconds between looks at a paused machine that is being deleted."""
MAX_CLAIM_ATTEMPTS = 20
CONCURRENT_RECONCILES = 16
"""Machines reconciled at once. A thousand at once would exhaust the client's connection pool
(and the memory of their requests in flight) for no gain: the API server is the bottleneck."""


class Wakeups:
    """In-process nudges from watch events to the machine daemons that depend on them."""

    def __init__(self) -> None:
        self._events: dict[Key, asyncio.Event] = {}
        self._listeners: dict[Key, int] = defaultdict(int)
        self._waiting_for_host: dict[str, set[str]] = defaultdict(set)
        self._by_cluster: dict[Key, set[str]] = defaultdict(set)
        self._host_watchers: dict[Key, Key] = {}

    def listen(self, key: Key) -> asyncio.Event:
        """Start keeping wakeups of ``key`` (before its first reconcile, so none is lost).

        Each ``listen`` is paired with one :meth:`forget`: a machine's daemon and its deletion
        handler both listen while it is deleted, and the daemon, stopping, must not drop what
        the deletion waits for.
        """
        self._listeners[key] += 1
        return self._events.setdefault(key, asyncio.Event())

    def wake(self, key: Key) -> None:
        """Wake one machine's daemon (a no-op for machines this process does not run)."""
        if (event := self._events.get(key)) is not None:
            event.set()

    def wake_waiting_for_host(self, namespace: str) -> None:
        """Wake every machine of ``namespace`` that waits for a free host."""
        for name in list(self._waiting_for_host.get(namespace, ())):
            self.wake((namespace, name))

    def wake_cluster(self, namespace: str, cluster: str) -> None:
        """Wake every machine of a Cluster."""
        for name in list(self._by_cluster.get((namespace, cluster), ())):
            self.wake((namespace, name))

    def note(self, key: Key, cluster: str | None, waiting_for_host: bool) -> None:
        """Record what wakes ``key``."""
        namespace, name = key
        if cluster:
            self._by_cluster[(namespace, cluster)].add(name)
        if waiting_for_host:
            self._waiting_for_host[namespace].add(name)
        else:
            self._waiting_for_host[namespace].discard(name)

    def watch_host(self, host: Key, key: Key) -> None:
        """Wake ``key`` when ``host`` changes, whoever it is claimed by (a release's wipe)."""
        self._host_watchers[host] = key

    def wake_host_watcher(self, host: Key) -> None:
        """``host`` changed."""
        if (key := self._host_watchers.get(host)) is not None:
            self.wake(key)

    def forget(self, key: Key) -> None:
        """The machine's daemon (or deletion) ended: drop its wakeups once no one listens."""
        self._listeners[key] -= 1
        if self._listeners[key] > 0:
            return
        del self._listeners[key]
        namespace, name = key
        self._events.pop(key, None)
        for host in [h for h, watcher in self._host_watchers.items() if watcher == key]:
            del self._host_watchers[host]
        self._waiting_for_host[namespace].discard(name)
        for members in self._by_cluster.values():
            members.discard(name)

    async def sleep(self, key: Key, seconds: float) -> None:
        """Sleep until woken or ``seconds`` pass (``key`` must be listened to)."""
        event = self._events.setdefault(key, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            pass
        event.clear()


class ClaimLedger:
    """Hosts this process claimed a moment ago, which its watch cache may still show free.

    The cache lags behind the process's own writes most when it is busiest: in a burst of
    claims, machines reconciled in the same moment would otherwise try hosts just taken here and
    each lose a round trip (a 409 and a fresh read). An entry goes when the cache shows the claim,
    or after :attr:`TTL` seconds at the latest.
    """

    TTL = 30.0

    def __init__(self) -> None:
        self._taken: dict[Key, float] = {}

    def record(self, host: Key) -> None:
        """This process just claimed ``host``."""
        self._taken[host] = time.monotonic()

    def seen(self, host: Key) -> None:
        """The cache shows ``host`` claimed (or released) now."""
        self._taken.pop(host, None)

    def taken(self, namespace: str) -> frozenset[str]:
        """The names of the hosts of ``namespace`` claimed here that the cache may not show."""
        now = time.monotonic()
        for host, at in list(self._taken.items()):
            if now - at > self.TTL:
                del self._taken[host]
        return frozenset(name for ns, name in self._taken if ns == namespace)


# -------------------------------------------------------------------------- watch caches


@kopf.index(_HOSTS.group, _HOSTS.version, _HOSTS.plural)
def plunderhosts_by_namespace(
    body: kopf.Body, namespace: str | None, **_: Any
) -> dict[str, HostCandidate]:
    """Every host, by namespace: what selection and mirroring read."""
    return {namespace or "": HostCandidate.from_body(body)}


@kopf.index(capi.CORE_GROUP, capi.CORE_VERSION, "machines")
def capi_machines(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> dict[Key, Any]:
    """Cluster API Machines by (namespace, name)."""
    return {(namespace or "", name): decide.OwnerMachine.from_body(body)}


@kopf.index(capi.CORE_GROUP, capi.CORE_VERSION, "clusters")
def capi_clusters(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, tuple[decide.ClusterFacts, str | None]]:
    """Cluster API Clusters by (namespace, name), with their infrastructure cluster's name."""
    infrastructure = (body.get("spec") or {}).get("infrastructureRef") or {}
    return {
        (namespace or "", name): (decide.ClusterFacts.from_body(body), infrastructure.get("name"))
    }


@kopf.index(_CLUSTERS.group, _CLUSTERS.version, _CLUSTERS.plural)
def plunderclusters_by_name(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, str | None]:
    """Each PlunderCluster's failure-domain label."""
    return {(namespace or "", name): (body.get("spec") or {}).get("failureDomainLabel")}


def _one(index: kopf.Index[Any, Any], key: Any) -> Any:
    store = index.get(key)
    return next(iter(store), None) if store else None


class Caches:
    """The indexes a machine's reconcile reads."""

    def __init__(self, indexes: dict[str, Any]) -> None:
        self.hosts: kopf.Index[str, HostCandidate] = indexes["plunderhosts_by_namespace"]
        self.machines: kopf.Index[Key, decide.OwnerMachine] = indexes["capi_machines"]
        self.clusters: kopf.Index[Key, tuple[decide.ClusterFacts, str | None]] = indexes[
            "capi_clusters"
        ]
        self.plunderclusters: kopf.Index[Key, str | None] = indexes["plunderclusters_by_name"]

    def hosts_in(self, namespace: str) -> list[HostCandidate]:
        """The cached hosts of one namespace."""
        return list(self.hosts.get(namespace, ()))

    def owner(self, body: kopf.Body) -> decide.OwnerMachine | None:
        """The PlunderMachine's Cluster API Machine, once it has one and it is cached."""
        meta = body.get("metadata") or {}
        ref = capi.owner_named(meta.get("ownerReferences"), "Machine")
        if ref is None:
            return None
        found: decide.OwnerMachine | None = _one(self.machines, (meta["namespace"], ref["name"]))
        return found

    def cluster(self, namespace: str | None, name: str | None) -> decide.ClusterFacts | None:
        """The Cluster's facts, with its PlunderCluster's failure-domain label."""
        if not name:
            return None
        found = _one(self.clusters, (namespace, name))
        if found is None:
            return None
        facts, infrastructure = found
        label = _one(self.plunderclusters, (namespace, infrastructure)) if infrastructure else None
        return decide.ClusterFacts(facts.paused, facts.infrastructure_provisioned, label)


# ------------------------------------------------------------------------------- wakeups


@kopf.on.startup()
def start_wakeups(memo: kopf.Memo, **_: Any) -> None:
    """One set of wakeups, shared by every handler through the memo."""
    memo.wakeups = Wakeups()
    memo.claims = ClaimLedger()
    memo.reconcile_slots = asyncio.Semaphore(CONCURRENT_RECONCILES)


@kopf.index(_MACHINES.group, _MACHINES.version, _MACHINES.plural)
def plundermachines_by_name(namespace: str | None, name: str, uid: str, **_: Any) -> dict[Key, str]:
    """Every PlunderMachine's uid, to tell a claim whose machine is gone."""
    return {(namespace or "", name): uid}


@kopf.on.event(_HOSTS.group, _HOSTS.version, _HOSTS.plural)
async def plunderhost_wakes_machines(
    type: str | None, body: kopf.Body, memo: kopf.Memo, **kwargs: Any
) -> None:
    """A host changed: wake its machine, or the machines waiting for one if it is free.

    A host claimed by a PlunderMachine that no longer exists (its deletion won the race with a
    claim in flight) is given back.
    """
    wakeups: Wakeups = memo.wakeups
    host = HostCandidate.from_body(body)
    if host.consumer is not None:
        memo.claims.seen((host.namespace, host.name))
    wakeups.wake_host_watcher((host.namespace, host.name))
    consumer = host.consumer
    if consumer is not None and consumer.kind == "PlunderMachine":
        key = (consumer.namespace, consumer.name)
        if type != "DELETED" and not kwargs["plundermachines_by_name"].get(key):
            await release_orphan(memo.client, host, consumer)
        wakeups.wake(key)
    elif host.free:
        wakeups.wake_waiting_for_host(host.namespace)


async def release_orphan(client: AsyncClient, host: HostCandidate, consumer: Consumer) -> None:
    """Release ``host`` if the API confirms that the machine that claimed it is gone."""
    try:
        await client.get(resource_for(PlunderMachine), consumer.name, namespace=consumer.namespace)
    except ApiError as error:
        if error.status.code != 404:
            raise
        log.warning("host %s: its machine %s is gone; releasing it", host.name, consumer.name)
        await release_host(client, host, consumer)


@kopf.on.event(_MACHINES.group, _MACHINES.version, _MACHINES.plural)
def plundermachine_wakes_itself(
    namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """Its spec, labels or annotations (pause, binding) changed."""
    memo.wakeups.wake((namespace or "", name))


@kopf.on.event(capi.CORE_GROUP, capi.CORE_VERSION, "machines")
def machine_wakes_plundermachine(
    body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A Machine changed (bootstrap data, failure domain): wake its PlunderMachine."""
    ref = (body.get("spec") or {}).get("infrastructureRef") or {}
    if ref.get("kind") == "PlunderMachine":
        memo.wakeups.wake((namespace or "", ref.get("name", "")))


@kopf.on.event(capi.CORE_GROUP, capi.CORE_VERSION, "clusters")
def cluster_wakes_plundermachines(
    namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """A Cluster changed (pause, infrastructure provisioned): wake its machines."""
    memo.wakeups.wake_cluster(namespace or "", name)


@kopf.on.event(capi.IPAM_GROUP, capi.IPAM_VERSION, "ipaddressclaims")
def ipaddressclaim_wakes_plundermachine(
    body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """The IPAM provider answered a claim: wake the machine that owns it."""
    owners = (body.get("metadata") or {}).get("ownerReferences")
    owner = capi.owner_named(owners, "PlunderMachine", INFRASTRUCTURE_GROUP)
    if owner is not None:
        memo.wakeups.wake((namespace or "", owner.get("name", "")))


# ----------------------------------------------------------------------------- reconcile


class ClaimContendedError(Exception):
    """Every host tried was claimed by someone else first; try again shortly."""


class MachineReconciler:
    """The reconcile loop of one PlunderMachine (kept by its daemon between iterations)."""

    def __init__(
        self,
        body: kopf.Body,
        client: AsyncClient,
        caches: Caches,
        wakeups: Wakeups,
        ledger: ClaimLedger,
    ) -> None:
        self.body = body
        self.ledger = ledger
        self.client = client
        self.caches = caches
        self.wakeups = wakeups
        self.key: Key = (body["metadata"]["namespace"], body["metadata"]["name"])
        current = body.get("status")
        self.previous = PlunderMachineStatus.model_validate(current) if current else None
        claimed = decide.find_condition(self.previous, decide.HOST_CLAIMED)
        self.announced = claimed is not None and claimed.reason == decide.NO_HARDWARE_REASON
        self.claimed: str | None = None
        """The host this process claimed, until the cache and the annotation show it."""

    async def reconcile(self) -> float:
        """One pass; returns how long to sleep unless woken."""
        machine = PlunderMachine.model_validate(dict(self.body))
        namespace = self.key[0]
        owner = self.caches.owner(self.body)
        cluster_name = decide.cluster_name(machine, owner)
        cluster = self.caches.cluster(namespace, cluster_name)
        self.wakeups.note(self.key, cluster_name, waiting_for_host=False)
        now = datetime.now(UTC)
        annotations = machine.metadata.annotations or {}
        if is_paused(annotations, cluster.paused if cluster else False):
            await self.write_status(
                machine, decide.machine_status(machine, self.previous, now, paused=True)
            )
            return SETTLED_RESYNC

        hosts = self.caches.hosts_in(namespace)
        host = self.bound(machine, hosts)
        if host is None and decide.bound_host_name(machine):
            missing = decide.host_missing(decide.bound_host_name(machine) or "")
            await self.write_status(
                machine, decide.machine_status(machine, self.previous, now, wait=missing)
            )
            return SETTLED_RESYNC
        if host is None:
            wait: decide.Wait | None = decide.gate(machine, owner, cluster)
            network = machine.spec.network
            if wait is None and machine.spec.address_from_pool is not None:
                network = await self.pool_address(machine, cluster_name)
                wait = decide.address_wait(machine) if network is None else None
            if wait is not None:
                await self.write_status(
                    machine, decide.machine_status(machine, self.previous, now, wait=wait)
                )
                return SETTLED_RESYNC
            assert owner is not None
            try:
                host = await self.claim(machine, owner, cluster, network, hosts)
            except ClaimContendedError:
                return CONTENDED_RETRY
            if host is None:
                return await self.wait_for_hardware(machine, now, cluster_name)
        self.wakeups.note(self.key, cluster_name, waiting_for_host=False)
        self.announced = False
        if not await self.record_binding(machine, host):
            return CONTENDED_RETRY
        await self.release_strays(machine, host, hosts)
        label = cluster.failure_domain_label if cluster else None
        status = decide.machine_status(
            machine,
            self.previous,
            now,
            host=host,
            failure_domain=host.labels.get(label) if label else None,
        )
        before = self.previous.state if self.previous else None
        await self.write_status(machine, status)
        self.post(decide.transition_events(before, status.state, host))
        return SETTLED_RESYNC

    def bound(self, machine: PlunderMachine, hosts: list[HostCandidate]) -> HostCandidate | None:
        """The machine's host: named by its annotation (or just claimed), else by consumerRef."""
        consumer = decide.consumer_of(machine)
        name = decide.bound_host_name(machine) or self.claimed
        if name is not None:
            host = next((h for h in hosts if h.name == name), None)
            if host is None or host.consumer not in (None, consumer):
                return None
            return host
        return bound_host(hosts, consumer)

    async def claim(
        self,
        machine: PlunderMachine,
        owner: decide.OwnerMachine,
        cluster: decide.ClusterFacts | None,
        network: StaticNetwork | None,
        hosts: list[HostCandidate],
    ) -> HostCandidate | None:
        """Claim a free host for the machine in a guarded write; None if none is free."""
        work = decide.host_work(machine, owner, network)
        failure_domain = decide.failure_domain_of(owner, cluster)
        tried: set[str] = set(self.ledger.taken(self.key[0]))
        fresh: dict[str, HostCandidate] = {}
        for _ in range(MAX_CLAIM_ATTEMPTS):
            candidates = [fresh.get(h.name, h) for h in hosts]
            host = choose_host(
                candidates,
                machine.metadata.uid or "",
                machine.spec.host_selector,
                failure_domain,
                frozenset(tried),
            )
            if host is None:
                return None
            # Other machines of this process skip it from now on, not only once it is won.
            self.ledger.record((host.namespace, host.name))
            try:
                written = await self.client.patch(
                    resource_for(PlunderHost),
                    host.name,
                    {"metadata": {"resourceVersion": host.resource_version}, "spec": work},
                    namespace=host.namespace,
                    patch_type=PatchType.MERGE,
                )
            except ApiError as error:
                if error.status.code not in (404, 409):
                    raise
                # The cache was behind: look again at this host before moving on.
                latest = await fetch_host(self.client, host.namespace, host.name)
                if latest is None or not latest.free:
                    tried.add(host.name)
                else:
                    fresh[host.name] = latest
                    self.ledger.seen((host.namespace, host.name))
                continue
            self.claimed = host.name
            claimed = HostCandidate.from_body(as_dict(written))
            log.info("machine %s/%s claimed host %s (%s)", *self.key, host.name, host.mac)
            return claimed
        raise ClaimContendedError

    async def wait_for_hardware(
        self, machine: PlunderMachine, now: datetime, cluster_name: str | None
    ) -> float:
        """No free host matches: say so once, and sleep until a host is freed."""
        self.wakeups.note(self.key, cluster_name, waiting_for_host=True)
        if not self.announced:
            self.post([decide.no_hardware_event(machine)])
            self.announced = True
        status = decide.machine_status(machine, self.previous, now, wait=decide.NO_HARDWARE)
        await self.write_status(machine, status)
        return SETTLED_RESYNC

    async def pool_address(
        self, machine: PlunderMachine, cluster_name: str | None
    ) -> StaticNetwork | None:
        """The address the IPAM provider allocated; the claim is made first if missing."""
        namespace, name = self.key
        try:
            claim = as_dict(await self.client.get(capi.IPAddressClaim, name, namespace=namespace))
        except ApiError as error:
            if error.status.code != 404:
                raise
            body = decide.ip_address_claim(
                machine, capi.controller_reference(dict(self.body)), cluster_name
            )
            body |= {
                "apiVersion": f"{capi.IPAM_GROUP}/{capi.IPAM_VERSION}",
                "kind": "IPAddressClaim",
            }
            try:
                await self.client.create(capi.IPAddressClaim.from_dict(body))
            except ApiError as create_error:
                if create_error.status.code != 409:
                    raise
            return None
        ref = (claim.get("status") or {}).get("addressRef") or {}
        if not ref.get("name"):
            return None
        try:
            address = await self.client.get(capi.IPAddress, ref["name"], namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        return decide.network_from_ip_address(as_dict(address))

    async def record_binding(self, machine: PlunderMachine, host: HostCandidate) -> bool:
        """Name the host on the machine: the annotation and ``spec.providerID``.

        ``spec.providerID`` is immutable once set (a CEL rule of the CRD), which makes this write
        its own guard: when two controllers each claimed a host for the same machine, the API
        server refuses the second binding (422), and its writer gives its host back. False
        means this one lost.
        """
        patch = decide.binding_patch(machine, host)
        if patch is None:
            return True
        try:
            await self.client.patch(
                resource_for(PlunderMachine),
                self.key[1],
                patch,
                namespace=self.key[0],
                patch_type=PatchType.MERGE,
            )
        except ApiError as error:
            if error.status.code != 422:
                raise
            fresh = await self.client.get(
                resource_for(PlunderMachine), self.key[1], namespace=self.key[0]
            )
            bound = (as_dict(fresh).get("spec") or {}).get("providerID")
            if bound is None or bound == decide.provider_id(host):
                raise
            log.warning("machine %s/%s is %s already: releasing %s", *self.key, bound, host.name)
            await release_host(self.client, host, decide.consumer_of(machine))
            self.claimed = None
            return False
        return True

    async def release_strays(
        self, machine: PlunderMachine, host: HostCandidate, hosts: list[HostCandidate]
    ) -> None:
        """Give back hosts claimed for this machine but not bound to it (a lost race)."""
        consumer = decide.consumer_of(machine)
        for stray in hosts:
            if stray.consumer == consumer and stray.name != host.name:
                log.warning("machine %s/%s: releasing stray claim of %s", *self.key, stray.name)
                await release_host(self.client, stray, consumer)

    async def write_status(self, machine: PlunderMachine, status: PlunderMachineStatus) -> None:
        """Write the status if it differs from what was last written or read."""
        if self.previous is not None and self.previous.to_api() == status.to_api():
            return
        await self.client.patch(
            resource_for(PlunderMachine).Status,
            self.key[1],
            {"status": status.to_api()},
            namespace=self.key[0],
            patch_type=PatchType.MERGE,
        )
        self.previous = status

    def post(self, events: Iterable[EventSpec]) -> None:
        """Record Events on the PlunderMachine."""
        for reason, message, kind in events:
            kopf.event(self.body, type=kind, reason=reason, message=message)


@kopf.daemon(_MACHINES.group, _MACHINES.version, _MACHINES.plural, cancellation_timeout=5.0)
async def plundermachine_daemon(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """Reconcile the machine, then sleep until woken; until the machine is deleted."""
    wakeups: Wakeups = memo.wakeups
    slots: asyncio.Semaphore = memo.reconcile_slots
    reconciler = MachineReconciler(body, memo.client, Caches(kwargs), wakeups, memo.claims)
    wakeups.listen(reconciler.key)
    try:
        while not stopped:
            try:
                async with slots:
                    delay = await reconciler.reconcile()
            except ApiError as error:
                log.warning("machine %s/%s: %s; retrying", *reconciler.key, error.status.message)
                delay = ERROR_RETRY
            except Exception as error:  # noqa: BLE001 - e.g. the API server is unreachable
                log.warning("machine %s/%s: %r; retrying", *reconciler.key, error)
                delay = ERROR_RETRY
            await wakeups.sleep(reconciler.key, delay)
    finally:
        wakeups.forget(reconciler.key)


# -------------------------------------------------------------------------------- delete


async def fetch_host(client: AsyncClient, namespace: str, name: str) -> HostCandidate | None:
    """The host as the API has it now (None if it is gone)."""
    try:
        body = await client.get(resource_for(PlunderHost), name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise
    return HostCandidate.from_body(as_dict(body))


async def release_host(client: AsyncClient, host: HostCandidate, consumer: Consumer) -> bool:
    """Take the claim and the work off ``host`` if ``consumer`` still holds it.

    The write is guarded by the host's resourceVersion; False if the host changed meanwhile
    (or is gone), so the caller looks again.
    """
    if host.consumer != consumer:
        return True
    try:
        await client.patch(
            resource_for(PlunderHost),
            host.name,
            {"metadata": {"resourceVersion": host.resource_version}, "spec": decide.RELEASE},
            namespace=host.namespace,
            patch_type=PatchType.MERGE,
        )
    except ApiError as error:
        if error.status.code in (404, 409):
            return False
        raise
    return True


@kopf.on.delete(_MACHINES.group, _MACHINES.version, _MACHINES.plural)
async def plundermachine_delete(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """Release the host, wait for its wipe, then let the machine go.

    A host that no longer exists does not hold the deletion up; a paused machine is not released
    (``clusterctl move`` deletes the source's objects after removing their finalizers itself).
    """
    machine = PlunderMachine.model_validate(dict(body))
    caches = Caches(kwargs)
    client: AsyncClient = memo.client
    namespace = machine.metadata.namespace or ""
    owner = caches.owner(body)
    cluster = caches.cluster(namespace, decide.cluster_name(machine, owner))
    if is_paused(machine.metadata.annotations or {}, cluster.paused if cluster else False):
        raise kopf.TemporaryError("paused: the host is not released", delay=PAUSED_RETRY)
    consumer = decide.consumer_of(machine)
    names = {h.name for h in caches.hosts_in(namespace) if h.consumer == consumer}
    if (named := decide.bound_host_name(machine)) is not None:
        names.add(named)
    wakeups: Wakeups = memo.wakeups
    key = (namespace, machine.metadata.name or "")
    wakeups.listen(key)
    for name in names:
        wakeups.watch_host((namespace, name), key)
    try:
        while names:
            names = await release_step(client, body, consumer, names)
            if names:
                await client.patch(
                    resource_for(PlunderMachine).Status,
                    key[1],
                    {"status": {"state": "Deprovisioning"}},
                    namespace=namespace,
                    patch_type=PatchType.MERGE,
                )
                await wakeups.sleep(key, SETTLED_RESYNC)
    finally:
        wakeups.forget(key)


async def release_step(
    client: AsyncClient, body: kopf.Body, consumer: Consumer, names: set[str]
) -> set[str]:
    """Release the machine's hosts; return those whose wipe is still to be waited for."""
    pending = set()
    for name in sorted(names):
        host = await fetch_host(client, consumer.namespace, name)
        if host is None:  # vanished: nothing to release
            continue
        if host.consumer == consumer:
            pending.add(name)
            if await release_host(client, host, consumer):
                kopf.event(
                    body,
                    type="Normal",
                    reason="Deprovisioning",
                    message=f"released host {host.name}; its disk is wiped",
                )
        elif host.consumer is None and host.state in decide.RELEASING_STATES:
            pending.add(name)
        elif host.consumer is None and host.state == "error":
            kopf.event(
                body,
                type="Warning",
                reason="WipeFailed",
                message=f"host {host.name} failed while it was wiped: {host.error_message}",
            )
    return pending
