"""The Kubernetes backend: a watch cache of PlunderHosts, discovery, and rate-limited lastSeen.

A script request is answered from memory: the cache is filled by one list and kept current by
a watch (relisted from scratch after any error, so a missed deletion cannot linger). Writes are
the exception: creating a host for a new MAC (a deterministic name, so concurrent requests and
several boot-service replicas make exactly one), and ``lastSeen``, coalesced per host and
written at most once per interval, because a parked host asks every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.boot.backend.base import BootFacts
from plunder.boot.macs import host_name
from plunder.boot.vendors import vendor_of
from plunder.k8s.ratelimit import TokenBucket
from plunder.k8s.resources import as_dict, resource_for
from plunder.reconcile import statusmerge

log = logging.getLogger(__name__)

DISCOVERED_LABEL = "metal.plunder.dev/discovered-by"
_RELIST_BACKOFF = (0.5, 1.0, 2.0, 5.0)
_MERGE_ATTEMPTS = 5


def _timestamp(moment: datetime) -> str:
    """RFC 3339 with milliseconds: boot-to-discovered times are measured from it."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def discovery_status(facts: BootFacts) -> dict[str, Any]:
    """The status of a host seen for the first time."""
    hardware = {
        key: value
        for key, value in (
            ("systemVendor", facts.manufacturer),
            ("productName", facts.product),
            ("serialNumber", facts.serial),
        )
        if value
    }
    status: dict[str, Any] = {
        "state": "discovered",
        "firstSeen": _timestamp(facts.seen),
        "lastSeen": _timestamp(facts.seen),
    }
    if (vendor := vendor_of(facts.mac)) is not None:
        status["vendor"] = vendor
    if facts.firmware:
        status["bootFirmware"] = facts.firmware
    if facts.ip:
        status["ipAddress"] = facts.ip
    if hardware:
        status["hardware"] = hardware
    return status


def seen_status(facts: BootFacts, host: PlunderHost) -> dict[str, Any]:
    """The status fields refreshed when a known host asks again.

    A host without a state was created by someone else (an operator or the lab, with its BMC)
    or by a discovery that stopped between create and status: its first boot finishes the job.
    """
    status: dict[str, Any] = {"lastSeen": _timestamp(facts.seen)}
    if facts.ip:
        status["ipAddress"] = facts.ip
    if facts.firmware:
        status["bootFirmware"] = facts.firmware
    if not (host.status and host.status.state):
        status = discovery_status(facts) | status
    if host.status and host.status.first_seen:
        status.pop("firstSeen", None)
    return status


def older_than_cached(host: PlunderHost, cached: PlunderHost | None) -> bool:
    """Whether ``host`` is an older copy of the cached one.

    A write's answer is stored so that the next request reads it, but it can arrive after the
    watch has brought a newer version (another writer's, a moment later): storing it then would
    leave the cache behind until the host changes again, and every guarded write of its agent
    would fail with 409 meanwhile (seen at 1,000 hosts: one host's wipe never finished). The
    versions are compared as etcd's revisions, the numbers kube-apiserver gives them; a copy of
    another object of that name (another uid) or a version that is not a number always wins.
    """
    if cached is None or cached.metadata.uid != host.metadata.uid:
        return False
    new, old = host.metadata.resource_version or "", cached.metadata.resource_version or ""
    return new.isdigit() and old.isdigit() and int(new) < int(old)


def _never_inspected(host: PlunderHost) -> bool:
    state = host.status.state if host.status else None
    return state in (None, "discovered", "inspecting")


class KubeHostBackend:
    """PlunderHosts of one namespace, cached; implements ``HostBackend``."""

    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        last_seen_interval: float,
        last_seen_writes_per_second: float = 50.0,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._interval = last_seen_interval
        self._seen_writes = TokenBucket(last_seen_writes_per_second, burst=1)
        self._seen_due: list[tuple[float, str]] = []
        """(when, MAC) of each host in ``_pending_seen``: a heap, the first due on top."""
        self._resource = resource_for(PlunderHost)
        self._by_mac: dict[str, PlunderHost] = {}
        self._mac_by_name: dict[str, str] = {}
        self._mac_by_ip: dict[str, str] = {}
        self._creating: dict[str, asyncio.Task[None]] = {}
        self._pending_seen: dict[str, BootFacts] = {}
        self._last_written: dict[str, float] = {}
        self._seen_wakeup = asyncio.Event()
        self.synced = asyncio.Event()
        """Set once the first full list is in the cache."""
        self.writes = 0
        """API writes made (for the benchmark and metrics)."""

    # -------------------------------------------------------------------------- lookups

    def by_mac(self, mac: str) -> PlunderHost | None:
        """The cached host with this boot MAC."""
        return self._by_mac.get(mac)

    def by_ip(self, ip: str) -> PlunderHost | None:
        """The cached host last seen with this address."""
        mac = self._mac_by_ip.get(ip)
        return self._by_mac.get(mac) if mac else None

    def count(self) -> int:
        """How many hosts are cached."""
        return len(self._by_mac)

    def pending_discoveries(self) -> int:
        """Hosts a client making up MACs can add to: discovered here, not yet accepted.

        Counted: cached hosts with the discovery label that are not accepted (or accepted but
        never inspected), and the creates under way.
        """
        waiting = sum(
            1
            for host in self._by_mac.values()
            if DISCOVERED_LABEL in (host.metadata.labels or {})
            and (not host.spec.accepted or _never_inspected(host))
        )
        return waiting + len(self._creating)

    # -------------------------------------------------------------------------- cache

    def _store(self, raw: dict[str, Any]) -> None:
        host = PlunderHost.model_validate(raw)
        name = host.metadata.name or ""
        mac = host.spec.boot_mac_address
        if older_than_cached(host, self._by_mac.get(mac)):
            return
        self._by_mac[mac] = host
        self._mac_by_name[name] = mac
        if host.status and host.status.ip_address:
            self._mac_by_ip[host.status.ip_address] = mac

    def _forget(self, raw: dict[str, Any]) -> None:
        mac = self._mac_by_name.pop(raw["metadata"]["name"], None)
        if mac is not None:
            host = self._by_mac.pop(mac, None)
            if host and host.status and host.status.ip_address:
                self._mac_by_ip.pop(host.status.ip_address, None)

    async def _list_and_watch(self) -> None:
        listing = self._client.list(self._resource, namespace=self._namespace)
        fresh = [as_dict(obj) async for obj in listing]
        self._by_mac.clear()
        self._mac_by_name.clear()
        self._mac_by_ip.clear()
        for raw in fresh:
            self._store(raw)
        self.synced.set()
        log.info("host cache synced: %d hosts in namespace %s", len(fresh), self._namespace)
        async for event, obj in self._client.watch(
            self._resource, namespace=self._namespace, resource_version=listing.resourceVersion
        ):
            if event == "DELETED":
                self._forget(as_dict(obj))
            else:
                self._store(as_dict(obj))

    async def run(self) -> None:
        """Keep the cache current until cancelled; relist after any error."""
        failures = 0
        while True:
            try:
                await self._list_and_watch()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - any failure: relist after a pause
                delay = _RELIST_BACKOFF[min(failures, len(_RELIST_BACKOFF) - 1)]
                failures += 1
                log.warning("host watch ended (%s); relisting in %.1fs", error, delay)
                await asyncio.sleep(delay)

    # -------------------------------------------------------------------------- discovery

    async def discover(self, facts: BootFacts, accepted: bool = False) -> None:
        """Create the PlunderHost of a new MAC; calls for one MAC share one create."""
        if facts.mac in self._by_mac:
            return
        task = self._creating.get(facts.mac)
        if task is None:
            task = asyncio.create_task(self._create(facts, accepted))
            self._creating[facts.mac] = task
            task.add_done_callback(lambda _: self._creating.pop(facts.mac, None))
        await asyncio.shield(task)

    async def _create(self, facts: BootFacts, accepted: bool) -> None:
        name = host_name(facts.mac)
        body = self._resource.from_dict(
            {
                "apiVersion": PlunderHost.info.api_version,
                "kind": PlunderHost.info.kind,
                "metadata": {
                    "name": name,
                    "namespace": self._namespace,
                    "labels": {DISCOVERED_LABEL: "boot-service"},
                },
                "spec": {"bootMACAddress": facts.mac, "accepted": accepted},
            }
        )
        try:
            created = await self._client.create(body)
        except ApiError as error:
            if error.status.code == 409:  # another request or replica made it first
                return
            raise
        self.writes += 1
        self._store(as_dict(created))
        await self._patch_status(name, discovery_status(facts))
        self._last_written[facts.mac] = time.monotonic()
        log.info("discovered %s (%s) as %s", facts.mac, vendor_of(facts.mac) or "?", name)

    async def _patch_status(
        self, name: str, status: dict[str, Any], resource_version: str | None = None
    ) -> None:
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        patched = await self._client.patch(
            self._resource.Status,
            name,
            body,
            namespace=self._namespace,
            patch_type=PatchType.MERGE,
        )
        self.writes += 1
        self._store(as_dict(patched))

    async def fresh(self, host: PlunderHost) -> PlunderHost:
        """The host read from the API now; the cache is updated with it."""
        if host.metadata.name is None:
            raise ValueError("a host without a name cannot be read")
        obj = await self._client.get(self._resource, host.metadata.name, namespace=self._namespace)
        raw = as_dict(obj)
        self._store(raw)
        return PlunderHost.model_validate(raw)

    async def patch_host_status(
        self, host: PlunderHost, status: dict[str, Any], guarded: bool = True
    ) -> None:
        """Merge ``status`` into the host's status, guarded by the resourceVersion it was read at.

        A concurrent writer makes this fail with 409 (ApiError): the caller's request fails and
        is retried by the agent or the host, and decided again on fresh state.

        Unguarded (the last boot wins): still never a blind write. It is guarded by the freshest
        resourceVersion, and on a conflict the host is read again and ``status`` rebased onto it
        (``statusmerge.rebase``: the lists merged entry by entry, a move decided on a state that
        no longer holds dropped), so what other writers wrote meanwhile stays.
        """
        if host.metadata.name is None:
            raise ValueError("a host without a name cannot be patched")
        if guarded:
            await self._patch_status(host.metadata.name, status, host.metadata.resource_version)
        else:
            await self._merge_status(host, status)

    async def _merge_status(self, base: PlunderHost, status: dict[str, Any]) -> None:
        name = base.metadata.name or ""
        fresh = base
        for attempt in range(_MERGE_ATTEMPTS):
            try:
                await self._patch_status(
                    name, statusmerge.rebase(base, fresh, status), fresh.metadata.resource_version
                )
                return
            except ApiError as error:
                if error.status.code != 409 or attempt == _MERGE_ATTEMPTS - 1:
                    raise
            got = await self._client.get(self._resource, name, namespace=self._namespace)
            fresh = PlunderHost.model_validate(as_dict(got))

    # -------------------------------------------------------------------------- lastSeen

    def seen(self, facts: BootFacts) -> None:
        """Queue a lastSeen update; the writer coalesces them per host."""
        if facts.mac not in self._pending_seen:
            due = self._last_written.get(facts.mac, -math.inf) + self._interval
            heapq.heappush(self._seen_due, (due, facts.mac))
            self._seen_wakeup.set()
        self._pending_seen[facts.mac] = facts

    async def write_seen(self) -> None:
        """Write queued lastSeen updates until cancelled.

        The one due first goes first; each host is written at most once per interval, and all
        of them (but for a discovery's end, which is a change of state) at most at the rate.
        """
        while True:
            if not self._seen_due:
                self._seen_wakeup.clear()
                await self._seen_wakeup.wait()
                continue
            due, mac = self._seen_due[0]
            if due > time.monotonic():
                self._seen_wakeup.clear()  # a host seen for the first time may be due sooner
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._seen_wakeup.wait(), due - time.monotonic())
                continue
            heapq.heappop(self._seen_due)
            facts = self._pending_seen.pop(mac, None)
            host = self._by_mac.get(mac)
            if facts is None or host is None or host.metadata.name is None:
                continue
            status = seen_status(facts, host)
            try:
                if "state" in status:  # finishing a discovery: not over a newer state
                    self._last_written[mac] = time.monotonic()
                    await self._merge_status(host, status)
                else:
                    await self._seen_writes.take()
                    self._last_written[mac] = time.monotonic()
                    await self._patch_status(host.metadata.name, status)
            except ApiError as error:
                log.warning("lastSeen of %s not written: %s", facts.mac, error.status.message)
