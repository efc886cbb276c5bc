"""A deleted PlunderMachine: release its host, wait for the wipe, then let the machine go.

The machine carries the finalizer :data:`FINALIZER` from its first reconcile (written together
with the host binding when it is claimed at once). A deleted machine is reconciled by the same
work queue as a live one: each pass releases the hosts still claimed for it (a write guarded by
the host's resourceVersion), and while a released host is being wiped the machine waits,
``Deprovisioning``, woken by that host's events. Then the finalizer goes.

A host that no longer exists does not hold the deletion up; one that failed does (its disk
still holds what was written to it) until it is wiped or deleted; a paused machine is not released
(``clusterctl move`` deletes the source's objects after removing their finalizers itself).
The finalizer is our own rather than kopf's: kopf would add and remove its finalizer, and keep a
copy of the spec in an annotation, with a write each, for a handler that only deletion needs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from plunder.api.common import BLOCK_MOVE_ANNOTATION
from plunder.api.infrastructure import PlunderMachine
from plunder.api.inventory import PlunderHost
from plunder.k8s import capi
from plunder.k8s.resources import as_dict, resource_for
from plunder.operator.caches import Caches, Key
from plunder.operator.wakeups import Wakeups
from plunder.reconcile import machine as decide
from plunder.reconcile.hoststate import EventSpec
from plunder.reconcile.pause import is_paused
from plunder.reconcile.selection import Consumer, HostCandidate

log = logging.getLogger(__name__)

FINALIZER = "plundermachine.infrastructure.cluster.x-k8s.io"
"""Held by every PlunderMachine until its hosts are released and wiped."""
PAUSED_RETRY = 5.0
"""Seconds between looks at a paused machine that is being deleted."""
WIPE_RESYNC = 300.0
"""Seconds between looks at a wipe nothing woke: only a safety net (the host's events wake)."""


def post(body: Mapping[str, Any], events: Iterable[EventSpec]) -> None:
    """Record Events on the PlunderMachine."""
    for reason, message, kind in events:
        kopf.event(kopf.Body(cast(Any, body)), type=kind, reason=reason, message=message)


async def finalize(
    client: AsyncClient,
    caches: Caches,
    wakeups: Wakeups,
    body: Mapping[str, Any],
    releasing: set[str],
) -> tuple[float | None, set[str]]:
    """One pass over a deleted machine: (when to look again, the hosts still being released).

    ``releasing`` are the hosts the previous pass waited for: a stray claim, once released, is
    no longer the machine's in the cache, and its wipe is still waited for.
    """
    if FINALIZER not in finalizers_of(body):
        return None, set()
    machine = PlunderMachine.model_validate(dict(body))
    namespace = machine.metadata.namespace or ""
    owner = caches.owner(body)
    cluster = caches.cluster(namespace, decide.cluster_name(machine, owner))
    if is_paused(machine.metadata.annotations or {}, cluster.paused if cluster else False):
        log.debug("machine %s/%s is paused: its host is not released", *key_of(body))
        return PAUSED_RETRY, releasing
    consumer = decide.consumer_of(machine)
    names = {h.name for h in caches.hosts_of(consumer)} | releasing
    if (named := decide.bound_host_name(machine)) is not None:
        names.add(named)
    key = key_of(body)
    for name in names:
        wakeups.watch_host((namespace, name), key)
    pending = await release_step(client, body, consumer, names)
    if pending:
        if (machine.status.state if machine.status else None) != "Deprovisioning":
            await write_deprovisioning(client, machine)
        return WIPE_RESYNC, pending
    if machine.spec.address_from_pool is not None:
        await delete_ip_address_claim(client, namespace, machine.metadata.name or "")
    await remove_finalizer(client, body)
    return None, set()


async def delete_ip_address_claim(client: AsyncClient, namespace: str, name: str) -> None:
    """Give the machine's pool address back (its IPAM provider frees it once the claim goes).

    Not left to the garbage collector: a management cluster without one (or a slow one) would
    keep the address allocated, and a new machine of the same name must not find this claim.
    """
    try:
        await client.delete(capi.IPAddressClaim, name, namespace=namespace)
    except ApiError as error:
        if error.status.code != 404:
            raise


def key_of(body: Mapping[str, Any]) -> Key:
    """(namespace, name) of a cached body."""
    meta = body["metadata"]
    return (meta.get("namespace", ""), meta["name"])


def finalizers_of(body: Mapping[str, Any]) -> list[str]:
    """The machine's finalizers as cached."""
    return list((body.get("metadata") or {}).get("finalizers") or [])


def with_finalizer(body: Mapping[str, Any]) -> list[str] | None:
    """The finalizers to write so that ours is among them; None if it is already."""
    current = finalizers_of(body)
    return None if FINALIZER in current else [*current, FINALIZER]


async def add_finalizer(client: AsyncClient, body: Mapping[str, Any]) -> None:
    """Write our finalizer on its own (when no binding is written that could carry it)."""
    finalizers = with_finalizer(body)
    if finalizers is None:
        return
    meta = body["metadata"]
    await client.patch(
        resource_for(PlunderMachine),
        meta["name"],
        {"metadata": {"finalizers": finalizers}},
        namespace=meta["namespace"],
        patch_type=PatchType.MERGE,
    )


async def remove_finalizer(client: AsyncClient, body: Mapping[str, Any]) -> None:
    """Let the machine go: a JSON patch that tests the finalizer is where it was seen."""
    meta = body["metadata"]
    index = finalizers_of(body).index(FINALIZER)
    path = f"/metadata/finalizers/{index}"
    try:
        await client.patch(
            resource_for(PlunderMachine),
            meta["name"],
            [{"op": "test", "path": path, "value": FINALIZER}, {"op": "remove", "path": path}],
            namespace=meta["namespace"],
            patch_type=PatchType.JSON,
        )
    except ApiError as error:
        if error.status.code != 404:  # gone already; a failed test (422) is tried again
            raise


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
    (or is gone), so the caller looks again. A paused host is not released (False): nothing acts
    on it until it is resumed, which wakes its machine. The released host no longer blocks
    ``clusterctl move``: it is nobody's now.
    """
    if host.consumer != consumer:
        return True
    if host.marks.paused or host.restoring:
        return False
    meta = {"resourceVersion": host.resource_version, "annotations": {BLOCK_MOVE_ANNOTATION: None}}
    try:
        await client.patch(
            resource_for(PlunderHost),
            host.name,
            {"metadata": meta, "spec": decide.RELEASE},
            namespace=host.namespace,
            patch_type=PatchType.MERGE,
        )
    except ApiError as error:
        if error.status.code in (404, 409):
            return False
        raise
    return True


async def release_step(
    client: AsyncClient, body: Mapping[str, Any], consumer: Consumer, names: set[str]
) -> set[str]:
    """Release the machine's hosts; return those whose wipe is still to be waited for."""
    pending = set()
    for name in sorted(names):
        host = await fetch_host(client, consumer.namespace, name)
        if host is None:  # vanished: nothing to release
            continue
        if not decide.wipe_pending(host, consumer):
            continue
        pending.add(name)
        if host.consumer == consumer:
            if await release_host(client, host, consumer):
                message = f"released host {host.name}; its disk is wiped"
                post(body, [("Deprovisioning", message, "Normal")])
        elif host.state == "error":
            message = (
                f"host {host.name} failed after it was released ({host.error_message}); the "
                "machine waits until the host is wiped (it is retried) or the host is deleted"
            )
            post(body, [("WipeFailed", message, "Warning")])
    return pending


async def write_deprovisioning(client: AsyncClient, machine: PlunderMachine) -> None:
    """Say that the machine waits for its hosts' wipe."""
    await client.patch(
        resource_for(PlunderMachine).Status,
        machine.metadata.name or "",
        {"status": {"state": "Deprovisioning"}},
        namespace=machine.metadata.namespace,
        patch_type=PatchType.MERGE,
    )
