"""Where the agents' logs are kept: one ConfigMap per host, written at a bounded rate.

Each upload holds the whole log of its boot (:mod:`plunder.boot.agentlog`), so uploads coalesce:
a host's log is written at most once per ``interval``; an upload arriving sooner waits in memory
and only the newest waiting one is written when it is due. The ConfigMap is created owned by its
PlunderHost (the garbage collector deletes it with the host) and replaced guarded by its
resourceVersion, read just before: of two replicas writing one host's log, the later rereads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import ConfigMap

from plunder.api.inventory import PlunderHost
from plunder.boot import agentlog

log = logging.getLogger(__name__)

_ATTEMPTS = 3


class AgentLogStore:
    """Keeps each host's latest agent log in its ConfigMap."""

    def __init__(self, client: AsyncClient, namespace: str, interval: float) -> None:
        self._client = client
        self._namespace = namespace
        self._interval = interval
        self._last: dict[str, float] = {}
        self._waiting: dict[str, tuple[PlunderHost, str, str]] = {}
        self._timers: dict[str, asyncio.Task[None]] = {}
        self.writes = 0
        """ConfigMap writes made (for tests and metrics)."""

    async def submit(self, host: PlunderHost, boot_id: str, text: str) -> bool:
        """Keep ``text`` as the log of ``host``'s boot ``boot_id``; False: it waits its turn."""
        name = host.metadata.name or ""
        since = time.monotonic() - self._last.get(name, float("-inf"))
        if since >= self._interval and name not in self._timers:
            self._last[name] = time.monotonic()
            await self._write(host, boot_id, text)
            return True
        self._waiting[name] = (host, boot_id, text)
        if name not in self._timers:
            task = asyncio.create_task(self._later(name, self._interval - since))
            self._timers[name] = task
        return False

    async def _later(self, name: str, delay: float) -> None:
        try:
            await asyncio.sleep(max(0.0, delay))
            host, boot_id, text = self._waiting.pop(name)
            self._last[name] = time.monotonic()
            await self._write(host, boot_id, text)
        except ApiError as error:
            log.warning("agent log of %s not kept: %s", name, error.status.message)
        except Exception as error:  # noqa: BLE001 - the API out of reach: the next upload tries
            log.warning("agent log of %s not kept: %s", name, error)
        finally:
            self._timers.pop(name, None)

    async def stop(self) -> None:
        """Cancel the waiting writes (a restarted agent sends its whole log again)."""
        for task in list(self._timers.values()):
            task.cancel()
        await asyncio.gather(*self._timers.values(), return_exceptions=True)

    async def _write(self, host: PlunderHost, boot_id: str, text: str) -> None:
        name = agentlog.configmap_name(host.metadata.name or "")
        host_mac = host.spec.boot_mac_address
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        for attempt in range(_ATTEMPTS):
            try:
                stored = await self._client.get(ConfigMap, name, namespace=self._namespace)
            except ApiError as error:
                if error.status.code != 404:
                    raise
                stored = None
            labels = (stored.metadata.labels if stored and stored.metadata else None) or {}
            if stored is not None and agentlog.HOST_LABEL not in labels:
                # Someone's own ConfigMap of that name: never overwritten with a host's log.
                log.warning("agent log of %s not kept: ConfigMap %s is not ours", host_mac, name)
                return
            data = agentlog.next_data(stored.data if stored else None, boot_id, text, now)
            fresh = self._new(host, name, data)
            try:
                if stored is None or stored.metadata is None:
                    await self._client.create(fresh)
                else:
                    stored.data = data
                    # the host's current owner reference (a host made again has a new uid)
                    stored.metadata.ownerReferences = (
                        fresh.metadata.ownerReferences if fresh.metadata else None
                    )
                    await self._client.replace(stored)  # guarded by its resourceVersion
            except ApiError as error:
                if error.status.code != 409 or attempt == _ATTEMPTS - 1:
                    raise
                continue
            self.writes += 1
            log.info("agent log of %s kept: %d bytes", host.spec.boot_mac_address, len(text))
            return

    def _new(self, host: PlunderHost, name: str, data: dict[str, str]) -> ConfigMap:
        owner = agentlog.owner_reference(
            PlunderHost.info.api_version,
            PlunderHost.info.kind,
            host.metadata.name or "",
            host.metadata.uid or "",
        )
        labels = {agentlog.HOST_LABEL: agentlog.label_value(host.metadata.name or "")}
        return ConfigMap(
            metadata=ObjectMeta(
                name=name,
                namespace=self._namespace,
                labels=labels,
                ownerReferences=[OwnerReference(**owner)] if host.metadata.uid else None,
            ),
            data=data,
        )
