"""Start the boot service's parts together, and stop them together.

The parts: the host cache (watch) and its lastSeen writer, the HTTP server, and dnsmasq (unless
DHCP is off). Until the cache has synced, ``/healthz`` answers 503, scripts say "ask again" and
agent calls get 503: a host is never told "unknown", or sent into the agent, merely because the
service just started.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress
from pathlib import Path
from typing import Literal

from aiohttp import web
from lightkube.models.core_v1 import ObjectReference

from plunder.api.inventory import PlunderHost
from plunder.boot import netns, tokens
from plunder.boot.backend.kube import KubeHostBackend
from plunder.boot.backend.logstore import AgentLogStore
from plunder.boot.dhcp.leases import LeaseTable
from plunder.boot.dhcp.supervisor import DnsmasqSupervisor
from plunder.boot.http import one_line_errors
from plunder.boot.http.app import make_app
from plunder.boot.http.metrics import BootMetrics
from plunder.boot.settings import BootSettings
from plunder.k8s import events
from plunder.k8s.client import async_client

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 4096
"""A request line or header longer than this is refused with 400 before any handler runs."""

SHUTDOWN_TIMEOUT = 5.0
"""Seconds a stop waits for requests in flight before it cuts them (aiohttp's default is 60).

aiohttp waits this long twice: for the request to finish, then for its cancellation to take
(a file being sent to a client that does not read can outlast it), so a stop takes at most 10 s.

What is in flight at a stop is mostly a host downloading a boot file or an image, and a host
that was powered off or lost its link stops reading without closing: waiting for it only holds
up the restart or the new leader. A host whose download is cut boots again or fails its write
and is retried, as after any network fault.
"""


class BootService:
    """The boot service's parts, started and stopped together."""

    def __init__(self, settings: BootSettings, kubeconfig: Path | None) -> None:
        self.settings = settings
        self.client = async_client(kubeconfig, field_manager="plunder-boot")
        self.backend = KubeHostBackend(
            self.client,
            settings.namespace,
            settings.last_seen_interval,
            settings.last_seen_writes_per_second,
        )
        self.agent_logs = AgentLogStore(
            self.client, settings.namespace, settings.agent_log_interval
        )
        self.dnsmasq = DnsmasqSupervisor(settings) if settings.dhcp.mode != "off" else None
        self.leases = LeaseTable(
            self.dnsmasq.leases_path if self.dnsmasq and settings.dhcp.mode == "full" else None
        )
        self.ready = asyncio.Event()
        self.metrics = BootMetrics()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def _record_event(
        self, host: PlunderHost, reason: str, message: str, kind: Literal["Normal", "Warning"]
    ) -> None:
        involved = ObjectReference(
            apiVersion=PlunderHost.info.api_version,
            kind=PlunderHost.info.kind,
            name=host.metadata.name,
            namespace=host.metadata.namespace,
            uid=host.metadata.uid,
        )
        await events.post_event(self.client, involved, reason, message, kind)

    async def _mark_ready(self) -> None:
        await self.backend.synced.wait()
        self.ready.set()

    async def start(self) -> None:
        """Open the HTTP socket and start the cache, the lastSeen writer and dnsmasq."""
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        one_line_errors.install()
        key = await tokens.load_or_create_key(self.client, self.settings.namespace)
        app = make_app(
            self.settings,
            self.backend,
            self.leases,
            self.ready,
            self.metrics,
            self.client,
            tokens.TokenSigner(key),
            self._record_event,
            self.agent_logs,
        )
        self._runner = web.AppRunner(
            app,
            access_log=None,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_LINE_BYTES,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await self._runner.setup()
        sock = netns.listening_socket(
            str(self.settings.address), self.settings.http_port, self.settings.dhcp.netns
        )
        await web.SockSite(self._runner, sock).start()
        self._tasks = [
            asyncio.create_task(self.backend.run(), name="host-cache"),
            asyncio.create_task(self.backend.write_seen(), name="last-seen"),
            asyncio.create_task(self._mark_ready(), name="ready"),
        ]
        if self.dnsmasq is not None:
            self._tasks.append(asyncio.create_task(self.dnsmasq.run(), name="dnsmasq"))
        log.info(
            "boot service: HTTP on %s, DHCP %s", self.settings.http_base, self.settings.dhcp.mode
        )

    async def stop(self) -> None:
        """Stop every part (dnsmasq is terminated) and close the API connection."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
        await self.agent_logs.stop()
        await self.client.close()
        log.info("boot service stopped")


def run(settings: BootSettings, kubeconfig: Path | None) -> None:
    """Run until SIGTERM or SIGINT (the ``plunderctl boot`` entry point)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = BootService(settings, kubeconfig)
        await service.start()
        try:
            await stop.wait()
        finally:
            await service.stop()

    asyncio.run(main())
