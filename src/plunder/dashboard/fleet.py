"""The objects the dashboard shows, kept current by watches (list, then watch from its version).

One task per kind: PlunderHosts, PlunderMachines, and Cluster API's Clusters and Machines. Each
lists its kind, replaces what it had, then watches from the list's resourceVersion; on any
error (the watch expired, the API server restarted, Cluster API is not installed) it waits and
lists again. Every change bumps :attr:`Fleet.version` and wakes the pages' event streams, which
tell the browser to read again: the browser never polls.

Only GET, LIST and WATCH are made, with the user's own kubeconfig; no Secret is ever read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from lightkube import AsyncClient
from lightkube.generic_resource import GenericNamespacedResource

from plunder.api.infrastructure import PlunderMachine
from plunder.api.inventory import PlunderHost
from plunder.dashboard import shaping
from plunder.k8s import capi
from plunder.k8s.resources import as_dict, resource_for

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name)."""

ALL_NAMESPACES = "*"
"""lightkube's name for every namespace, in a list or a watch."""

HOSTS = "hosts"
PLUNDER_MACHINES = "plundermachines"
MACHINES = "machines"
CLUSTERS = "clusters"


def kinds() -> dict[str, type[GenericNamespacedResource]]:
    """The kinds watched, by the name the fleet keeps them under."""
    return {
        HOSTS: resource_for(PlunderHost),
        PLUNDER_MACHINES: resource_for(PlunderMachine),
        MACHINES: capi.Machine,
        CLUSTERS: capi.Cluster,
    }


def _key(body: Mapping[str, Any]) -> Key:
    metadata = body.get("metadata") or {}
    return (str(metadata.get("namespace", "")), str(metadata.get("name", "")))


class Fleet:
    """What the watches brought, by kind and (namespace, name), and the hosts' past cycles."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[Key, dict[str, Any]]] = {kind: {} for kind in kinds()}
        self.cycles: dict[Key, list[list[shaping.Body]]] = {}
        self.synced: set[str] = set()
        self.problems: dict[str, str] = {}
        """Why a kind's last list or watch failed (cleared by its next list), for the page."""
        self.version = 0
        self._changed = asyncio.Event()

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _remember(self, kind: str, body: dict[str, Any]) -> None:
        if kind == HOSTS:
            key = _key(body)
            phases = (body.get("status") or {}).get("phases")
            self.cycles[key] = shaping.remember_cycle(self.cycles.get(key, ()), phases)

    def replace(self, kind: str, bodies: list[dict[str, Any]]) -> None:
        """A kind's full list (after a list call)."""
        self.objects[kind] = {_key(body): body for body in bodies}
        for body in bodies:
            self._remember(kind, body)
        if kind == HOSTS:
            for gone in set(self.cycles) - set(self.objects[kind]):
                del self.cycles[gone]
        self.synced.add(kind)
        self.problems.pop(kind, None)
        self._bump()

    def failed(self, kind: str, problem: str) -> None:
        """A kind's list or watch failed: say so on the page (its objects stay as they were)."""
        if self.problems.get(kind) != problem:
            self.problems[kind] = problem
            self._bump()

    def apply(self, kind: str, event: str, body: dict[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""
        key = _key(body)
        if event == "DELETED":
            self.objects[kind].pop(key, None)
            if kind == HOSTS:
                self.cycles.pop(key, None)
        else:
            self.objects[kind][key] = body
            self._remember(kind, body)
        self._bump()

    async def changed(self, after: int, timeout: float) -> int:
        """The version once it is past ``after`` (or as it is after ``timeout`` seconds)."""
        if self.version > after:
            return self.version
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version


async def follow(
    client: AsyncClient,
    fleet: Fleet,
    kind: str,
    resource: type[GenericNamespacedResource],
    namespace: str | None,
    retry_after: float = 2.0,
    retry_at_most: float = 60.0,
) -> None:
    """Keep ``fleet``'s objects of ``kind`` current, forever: list, watch, again on an error.

    The wait before listing again doubles with each failure in a row (a kind whose CRD is not
    installed, such as Cluster API's on an inventory-only plane, is asked about once a minute).
    """
    where = namespace or ALL_NAMESPACES
    wait = retry_after
    while True:
        try:
            listing = client.list(resource, namespace=where)
            bodies = [as_dict(obj) async for obj in listing]
            fleet.replace(kind, bodies)
            wait = retry_after
            async for event, obj in client.watch(
                resource, namespace=where, resource_version=listing.resourceVersion
            ):
                fleet.apply(kind, event, as_dict(obj))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # any failure: read everything again
            fleet.failed(kind, str(error) or type(error).__name__)
            level = logging.INFO if wait == retry_after else logging.DEBUG
            log.log(level, "watch of %s ended (%s); listing again in %.0f s", kind, error, wait)
            await asyncio.sleep(wait)
            wait = min(wait * 2, retry_at_most)


def start(client: AsyncClient, fleet: Fleet, namespace: str | None) -> list[asyncio.Task[None]]:
    """One watching task per kind."""
    return [
        asyncio.create_task(follow(client, fleet, kind, resource, namespace), name=f"watch-{kind}")
        for kind, resource in kinds().items()
    ]
