"""PlunderMachine reconcile: claim a host, mirror it, release it when the machine is deleted.

Watch events do not reconcile: they queue the keys of the machines they concern in one work queue
(:mod:`plunder.operator.workqueue`), and ``--machine-workers`` workers reconcile one machine at a
time by key, reading it and everything else from the watch caches (:mod:`plunder.operator.caches`),
never from list calls. A machine's own events queue it; its host, Machine, Cluster and
IPAddressClaim, and a host becoming free while it waits for hardware, queue it through
:class:`Wakeups`. A reconcile asks to run again after a long timeout only as a safety net; nothing
polls while waiting for a host. What a reconcile keeps between passes (the status it last wrote, the
host it just claimed) is a small :class:`MachineMemory` per machine, dropped when it is gone: memory
and concurrency do not grow with one task per machine.

The claim is a merge patch of the host carrying the cached resourceVersion: a 409 means another
machine (or controller) won, and the next host is tried. Several controller replicas are
therefore safe for hosts; a machine could still be given two hosts by two replicas at once (the
loser gives its host back), so replicas run with leader election (:mod:`plunder.operator.leader`)
and only one acts. The binding written on the machine carries its
finalizer; a deleted machine is reconciled by :mod:`plunder.operator.machine_delete`. Status is
written only when it changed, so once per transition.

A claimed host whose move into ``provisioning`` waits for a provisioning slot leaves the machine
``Pending`` with the reason ``WaitingForProvisioningSlot``: the slot gate of the host handler
(:mod:`plunder.operator.slots`, in the same process) says which hosts wait, and wakes the machine
when its host begins or ends waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from plunder.api.common import BLOCK_MOVE_ANNOTATION, INFRASTRUCTURE_GROUP, StaticNetwork
from plunder.api.infrastructure import PlunderMachine, PlunderMachineStatus
from plunder.api.inventory import PlunderHost
from plunder.k8s import capi
from plunder.k8s.resources import as_dict, resource_for
from plunder.operator import controller_settings, hostpause, machine_delete
from plunder.operator.caches import Caches, Key
from plunder.operator.machine_delete import delete_ip_address_claim, fetch_host, release_host
from plunder.operator.slots import ProvisioningSlots
from plunder.operator.wakeups import Wakeups
from plunder.operator.workqueue import WorkQueue
from plunder.reconcile import machine as decide
from plunder.reconcile.hoststate import EventSpec
from plunder.reconcile.pause import is_paused
from plunder.reconcile.selection import Consumer, HostCandidate, choose_host

_MACHINES = PlunderMachine.info
_HOSTS = PlunderHost.info
log = logging.getLogger(__name__)

SETTLED_RESYNC = 300.0
"""Seconds between reconciles of a machine nothing woke: only a safety net."""
CONTENDED_RETRY = 1.0
"""Seconds before trying again after every host tried was claimed by someone else first."""
ERROR_RETRY = 5.0
"""Seconds before trying again after an unexpected error."""
MAX_CLAIM_ATTEMPTS = 20


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


@dataclass
class MachineMemory:
    """What the reconcile of one machine keeps between passes."""

    previous: PlunderMachineStatus | None
    """The status last written (or read at the first pass)."""
    announced: bool
    """Whether NoHardwareFound was posted since the machine last had a host."""
    claimed: str | None = None
    """The host this process claimed, until the cache and the annotation show it."""
    finalized: bool = False
    """The finalizer was written here (the cache may not show it yet)."""
    releasing: set[str] = field(default_factory=set)
    """Deleted: the hosts whose wipe the machine waits for."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> MachineMemory:
        """Start from what the machine's cached status says."""
        current = body.get("status")
        previous = PlunderMachineStatus.model_validate(current) if current else None
        claimed = decide.find_condition(previous, decide.HOST_CLAIMED)
        return cls(previous, claimed is not None and claimed.reason == decide.NO_HARDWARE_REASON)


# ------------------------------------------------------------------------ queue and events


class MachineController:
    """The work queue of machine keys, its workers' reconcile, and each machine's memory."""

    def __init__(self, memo: kopf.Memo, caches: Caches) -> None:
        self.memo = memo
        self.caches = caches
        self.ledger = ClaimLedger()
        self.queue: WorkQueue[Key] = WorkQueue(
            self.reconcile, controller_settings.SETTINGS.machine_workers, ERROR_RETRY
        )
        self.wakeups = Wakeups(self.queue.add)
        self.memories: dict[Key, MachineMemory] = {}

    def forget(self, key: Key) -> None:
        """The machine is gone."""
        self.memories.pop(key, None)
        self.wakeups.forget(key)
        self.queue.forget(key)

    async def reconcile(self, key: Key) -> float | None:
        """Reconcile one machine by key from the cache; when to look again."""
        body = self.caches.plundermachine(key)
        if body is None:
            self.forget(key)
            return None
        memory = self.memories.get(key)
        if memory is None:
            memory = self.memories[key] = MachineMemory.from_body(body)
        client: AsyncClient = self.memo.client
        try:
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                delay, memory.releasing = await machine_delete.finalize(
                    client, self.caches, self.wakeups, body, memory.releasing
                )
                return delay
            reconciler = MachineReconciler(
                body, client, self.caches, self.wakeups, self.ledger, memory, self.memo.slots
            )
            delay = await reconciler.reconcile()
            if not memory.finalized and machine_delete.with_finalizer(body) is not None:
                await machine_delete.add_finalizer(client, body)
                memory.finalized = True
            return delay
        except ApiError as error:
            log.warning("machine %s/%s: %s; retrying", *key, error.status.message)
        except Exception as error:  # noqa: BLE001 - e.g. the API server is unreachable
            log.warning("machine %s/%s: %r; retrying", *key, error)
        return ERROR_RETRY


@kopf.on.startup()
async def start_machine_controller(memo: kopf.Memo, **kwargs: Any) -> None:
    """One work queue and its workers, shared by every handler through the memo.

    The indexes are kopf's live views, empty until kopf has listed every resource; the queue
    stays empty until then too, because only handlers (run once indexing is done) fill it.
    """
    memo.machines = MachineController(memo, Caches(kwargs))


@kopf.on.cleanup()
async def stop_machine_controller(memo: kopf.Memo, **_: Any) -> None:
    """Stop the workers (a reconcile in flight is cancelled: each resumes from the API)."""
    controller: MachineController = memo.machines
    await controller.queue.stop()


@kopf.on.event(_MACHINES.group, _MACHINES.version, _MACHINES.plural)
async def plundermachine_event(
    type: str | None, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """Its spec, labels, annotations (pause, binding) or deletion changed; or it is gone."""
    controller: MachineController = memo.machines
    key = (namespace or "", name)
    if type == "DELETED":
        controller.forget(key)
    else:
        controller.queue.add(key)


@kopf.on.event(_HOSTS.group, _HOSTS.version, _HOSTS.plural)
async def plunderhost_wakes_machines(
    type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
) -> None:
    """A host changed: wake its machine, or the machines waiting for one if it is free.

    A host claimed by a PlunderMachine that no longer exists (its deletion won the race with a
    claim in flight) is given back, unless it is paused: ``clusterctl move`` deletes a machine
    before its host on the source, and creates the host before its machine on the target.
    """
    controller: MachineController = memo.machines
    wakeups = controller.wakeups
    host = HostCandidate.from_body(body)
    if host.consumer is not None:
        controller.ledger.seen((host.namespace, host.name))
    wakeups.wake_host_watcher((host.namespace, host.name))
    consumer = host.consumer
    if consumer is not None and consumer.kind == "PlunderMachine":
        key = (consumer.namespace, consumer.name)
        orphan = type != "DELETED" and controller.caches.plundermachine(key) is None
        if orphan and not (host.marks.paused or host.restoring):
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


@kopf.on.event(capi.CORE_GROUP, capi.CORE_VERSION, "machines")
async def machine_wakes_plundermachine(
    body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """A Machine changed (bootstrap data, failure domain): wake its PlunderMachine."""
    ref = (body.get("spec") or {}).get("infrastructureRef") or {}
    if ref.get("kind") == "PlunderMachine":
        memo.machines.wakeups.wake((namespace or "", ref.get("name", "")))


@kopf.on.event(capi.CORE_GROUP, capi.CORE_VERSION, "clusters")
async def cluster_wakes_plundermachines(
    namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """A Cluster changed (pause, infrastructure provisioned): wake its machines."""
    memo.machines.wakeups.wake_cluster(namespace or "", name)


@kopf.on.event(capi.IPAM_GROUP, capi.IPAM_VERSION, "ipaddressclaims")
async def ipaddressclaim_wakes_plundermachine(
    body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """The IPAM provider answered a claim: wake the machine that owns it."""
    owners = (body.get("metadata") or {}).get("ownerReferences")
    owner = capi.owner_named(owners, "PlunderMachine", INFRASTRUCTURE_GROUP)
    if owner is not None:
        memo.machines.wakeups.wake((namespace or "", owner.get("name", "")))


# ----------------------------------------------------------------------------- reconcile


def claimed_by(machine: PlunderMachine, host: HostCandidate) -> bool:
    """Whether ``host`` (as cached) shows the machine's claim; a stale copy may not yet."""
    return host.consumer == decide.consumer_of(machine)


class ClaimContendedError(Exception):
    """Every host tried was claimed by someone else first; try again shortly."""


class MachineReconciler:
    """One pass over one live PlunderMachine (what outlives the pass is in its memory)."""

    def __init__(
        self,
        body: Mapping[str, Any],
        client: AsyncClient,
        caches: Caches,
        wakeups: Wakeups,
        ledger: ClaimLedger,
        memory: MachineMemory,
        slots: ProvisioningSlots,
    ) -> None:
        self.body = body
        self.slots = slots
        self.ledger = ledger
        self.client = client
        self.caches = caches
        self.wakeups = wakeups
        self.memory = memory
        self.key: Key = machine_delete.key_of(body)

    async def reconcile(self) -> float:
        """One pass; the seconds until the next, unless an event queues the machine first."""
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
                machine, decide.machine_status(machine, self.memory.previous, now, paused=True)
            )
            host = self.bound(machine)
            if host is not None and claimed_by(machine, host):
                if not await hostpause.pause(self.client, host):
                    return CONTENDED_RETRY
            return SETTLED_RESYNC

        host = self.bound(machine)
        if host is not None and host.restoring:
            return SETTLED_RESYNC  # arrived by a move: its status comes back first, and wakes us
        if host is None and decide.bound_host_name(machine):
            missing = decide.host_missing(decide.bound_host_name(machine) or "")
            await self.write_status(
                machine, decide.machine_status(machine, self.memory.previous, now, wait=missing)
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
                    machine, decide.machine_status(machine, self.memory.previous, now, wait=wait)
                )
                return SETTLED_RESYNC
            assert owner is not None
            if await self.paused_now(cluster_name):
                return CONTENDED_RETRY  # the caches catch up, and their events queue it again
            try:
                host = await self.claim(machine, owner, cluster, network)
            except ClaimContendedError:
                return CONTENDED_RETRY
            if host is None:
                return await self.wait_for_hardware(machine, now, cluster_name)
        self.wakeups.note(self.key, cluster_name, waiting_for_host=False)
        self.memory.announced = False
        if not await self.record_binding(machine, host):
            return CONTENDED_RETRY
        if claimed_by(machine, host) and not await hostpause.resume(self.client, host):
            return CONTENDED_RETRY
        await self.release_strays(machine, host)
        label = cluster.failure_domain_label if cluster else None
        status = decide.machine_status(
            machine,
            self.memory.previous,
            now,
            host=host,
            failure_domain=host.labels.get(label) if label else None,
            slot_wait=decide.waiting_for_slot(
                host, self.slots.waiting_for(namespace, host.name), self.memory.previous
            ),
        )
        previous = self.memory.previous
        await self.write_status(machine, status)
        self.post(
            decide.transition_events(previous.state if previous else None, status.state, host)
        )
        self.post(decide.slot_wait_events(previous, status))
        return SETTLED_RESYNC

    def bound(self, machine: PlunderMachine) -> HostCandidate | None:
        """The machine's host: named by its annotation (or just claimed), else by consumerRef."""
        consumer = decide.consumer_of(machine)
        name = decide.bound_host_name(machine) or self.memory.claimed
        if name is not None:
            host = self.caches.host(self.key[0], name)
            if host is None or host.consumer not in (None, consumer):
                return None
            return host
        return next(iter(self.caches.hosts_of(consumer)), None)

    async def claim(
        self,
        machine: PlunderMachine,
        owner: decide.OwnerMachine,
        cluster: decide.ClusterFacts | None,
        network: StaticNetwork | None,
    ) -> HostCandidate | None:
        """Claim a free host for the machine in a guarded write; None if none is free."""
        work = decide.host_work(machine, owner, network)
        failure_domain = decide.failure_domain_of(owner, cluster)
        tried: set[str] = set(self.ledger.taken(self.key[0]))
        fresh: dict[str, HostCandidate] = {}
        free = self.caches.free_hosts_in(self.key[0])
        for _ in range(MAX_CLAIM_ATTEMPTS):
            candidates = free
            if fresh:
                # A lost race read a fresher copy: it replaces the cache's, and a host the API
                # showed free that the cache does not yet is a candidate too.
                cached = {h.name for h in free}
                candidates = [fresh.get(h.name, h) for h in free]
                candidates += [h for name, h in fresh.items() if name not in cached]
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
                # Block-move goes on with the claim: clusterctl move waits until the host is
                # paused with its status recorded (:mod:`plunder.operator.hostpause`).
                meta = {
                    "resourceVersion": host.resource_version,
                    "annotations": {BLOCK_MOVE_ANNOTATION: ""},
                }
                written = await self.client.patch(
                    resource_for(PlunderHost),
                    host.name,
                    {"metadata": meta, "spec": work},
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
            self.memory.claimed = host.name
            claimed = HostCandidate.from_body(as_dict(written))
            log.info("machine %s/%s claimed host %s (%s)", *self.key, host.name, host.mac)
            return claimed
        raise ClaimContendedError

    async def wait_for_hardware(
        self, machine: PlunderMachine, now: datetime, cluster_name: str | None
    ) -> float:
        """No free host matches: say so once, and wait until a host is freed."""
        self.wakeups.note(self.key, cluster_name, waiting_for_host=True)
        if not self.memory.announced:
            self.post([decide.no_hardware_event(machine)])
            self.memory.announced = True
        status = decide.machine_status(machine, self.memory.previous, now, wait=decide.NO_HARDWARE)
        await self.write_status(machine, status)
        return SETTLED_RESYNC

    async def paused_now(self, cluster_name: str | None) -> bool:
        """Whether the API has the machine paused or deleted, or its Cluster paused, right now.

        The caches of machines and of Clusters come from separate watches, and one may run ahead
        of the other: a person who pauses the machine and then unpauses its Cluster must not get
        a claim made from the Cluster's newer state and the machine's older one. The claim is
        the step that gives hardware away, so it alone is checked against fresh reads (two GETs
        per claim, not per reconcile).
        """
        namespace, name = self.key
        fresh = await self.client.get(resource_for(PlunderMachine), name, namespace=namespace)
        meta = as_dict(fresh).get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return True
        cluster_paused = False
        if cluster_name:
            try:
                cluster = await self.client.get(capi.Cluster, cluster_name, namespace=namespace)
            except ApiError as error:
                if error.status.code != 404:
                    raise
            else:
                cluster_paused = decide.ClusterFacts.from_body(as_dict(cluster)).paused
        return is_paused(meta.get("annotations") or {}, cluster_paused)

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
        if not decide.claim_is_mine(claim, machine.metadata.uid or ""):
            if not (claim.get("metadata") or {}).get("deletionTimestamp"):
                log.info("machine %s/%s: deleting the IP claim of its namesake", *self.key)
                await delete_ip_address_claim(self.client, namespace, name)
            return None  # the claim's deletion event queues the machine again
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
        means this one lost. The first binding also carries the machine's finalizer.
        """
        patch = decide.binding_patch(machine, host)
        if patch is None:
            return True
        if not self.memory.finalized and (finalizers := machine_delete.with_finalizer(self.body)):
            patch["metadata"]["finalizers"] = finalizers
        try:
            await self.client.patch(
                resource_for(PlunderMachine),
                self.key[1],
                patch,
                namespace=self.key[0],
                patch_type=PatchType.MERGE,
            )
            self.memory.finalized = self.memory.finalized or "finalizers" in patch["metadata"]
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
            self.memory.claimed = None
            return False
        return True

    async def release_strays(self, machine: PlunderMachine, host: HostCandidate) -> None:
        """Give back hosts claimed for this machine but not bound to it (a lost race)."""
        consumer = decide.consumer_of(machine)
        for stray in self.caches.hosts_of(consumer):
            if stray.name != host.name:
                log.warning("machine %s/%s: releasing stray claim of %s", *self.key, stray.name)
                await release_host(self.client, stray, consumer)

    async def write_status(self, machine: PlunderMachine, status: PlunderMachineStatus) -> None:
        """Write the status if it differs from what was last written or read.

        The finalizer goes on first, if it is not on yet.
        """
        if self.memory.previous is not None and self.memory.previous.to_api() == status.to_api():
            return
        if not self.memory.finalized:
            # Before anything a person sees (a condition): a machine deleted as soon as it
            # shows it is handled must still be finalized. A binding carries it already.
            await machine_delete.add_finalizer(self.client, self.body)
            self.memory.finalized = True
        await self.client.patch(
            resource_for(PlunderMachine).Status,
            self.key[1],
            {"status": status.to_api()},
            namespace=self.key[0],
            patch_type=PatchType.MERGE,
        )
        self.memory.previous = status

    def post(self, events: Iterable[EventSpec]) -> None:
        """Record Events on the PlunderMachine."""
        machine_delete.post(self.body, events)
