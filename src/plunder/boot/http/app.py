"""The aiohttp application: /chain.ipxe, /boot.ipxe, /files/, /healthz and /metrics.

/healthz and every answer wait for the host cache: before it has synced a script says "ask
again" and an agent call gets 503, so a restarted service never decides from an empty cache.

Every request is answered from the backend's memory. Bad input (an invalid or spoofed ``mac``,
an oversized request, an unknown path) gets a 4xx and one log line, and never stops the
service from answering others.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Literal

import httpx2
from aiohttp import web
from aiohttp.typedefs import Handler
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from plunder.api import rules
from plunder.api.inventory import PlunderHost
from plunder.boot import tokens, trust
from plunder.boot.backend.base import BootFacts, HostBackend
from plunder.boot.backend.logstore import AgentLogStore
from plunder.boot.dhcp.leases import LeaseTable
from plunder.boot.discovery import DiscoveryGate
from plunder.boot.http import agent
from plunder.boot.http.keys import (
    AGENT_LOGS_KEY,
    BACKEND_KEY,
    CLIENT_KEY,
    DISCOVERY_KEY,
    EVENTS_KEY,
    HOLDERS_KEY,
    LEASES_KEY,
    METRICS_KEY,
    PROGRESS_KEY,
    READY_KEY,
    SETTINGS_KEY,
    SIGNER_KEY,
    EventSink,
)
from plunder.boot.http.metrics import BootMetrics
from plunder.boot.installer import routes as installer_routes
from plunder.boot.ipxe import decide, scripts
from plunder.boot.macs import InvalidMACError, normalise_mac
from plunder.boot.progress import ProgressGate
from plunder.boot.settings import BootSettings
from plunder.reconcile import hoststate, statusrecord

log = logging.getLogger(__name__)

IPXE_CONTENT_TYPE = "text/plain"
DISCOVERY_TIMEOUT = 5.0
_FACT_MAX = 128


def _fact(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value[:_FACT_MAX] if value else None


def _firmware(platform: str | None) -> Literal["bios", "uefi"] | None:
    return {"pcbios": "bios", "efi": "uefi"}.get(platform or "")  # type: ignore[return-value]


def _reject(request: web.Request, status: int, reason: str, detail: str) -> web.Response:
    request.app[METRICS_KEY].rejected.labels(reason).inc()
    log.warning("%s %s from %s: %s", request.method, request.path, request.remote, detail)
    return web.Response(status=status, text=f"{detail}\n")


async def chain_ipxe(request: web.Request) -> web.Response:
    """The static script DHCP hands iPXE."""
    return web.Response(
        text=scripts.chain_script(request.app[SETTINGS_KEY].http_base),
        content_type=IPXE_CONTENT_TYPE,
    )


def _retry(request: web.Request, mac: str, reason: str) -> web.Response:
    """A script that asks again after a poll: not a decision about the host."""
    settings = request.app[SETTINGS_KEY]
    request.app[METRICS_KEY].scripts.labels("retry").inc()
    decision = scripts.BootDecision("park", reason)
    return web.Response(
        text=scripts.render_script(decision, mac, settings.http_base, settings.poll_seconds),
        content_type=IPXE_CONTENT_TYPE,
    )


async def _discover(request: web.Request, facts: BootFacts) -> str | None:
    """Record a new MAC within the bound on discovery; why not, if it was not recorded."""
    app = request.app
    backend = app[BACKEND_KEY]
    refusal = app[DISCOVERY_KEY].refusal(backend.pending_discoveries)
    if refusal is not None:
        app[METRICS_KEY].rejected.labels("discovery-bound").inc()
        log.info("discovery of %s from %s held back: %s", facts.mac, request.remote, refusal)
        return refusal
    try:
        accepted = app[SETTINGS_KEY].discovery.auto_accept
        await asyncio.wait_for(backend.discover(facts, accepted), DISCOVERY_TIMEOUT)
        app[METRICS_KEY].discovered.inc()
    except Exception as error:  # noqa: BLE001 - the host keeps polling; we retry then
        log.warning("discovery of %s failed: %s", facts.mac, error)
        return "discovery failed"
    finally:
        app[DISCOVERY_KEY].settled()
    return None


async def _installer_token(request: web.Request, host: PlunderHost) -> str | None:
    """The token of an installer boot (its kernel cannot make a lookup); None: not now."""
    try:
        return await agent.issue_token(request, host, "installer boot")
    except web.HTTPConflict:
        return None


async def _interrupted_write(request: web.Request, host: PlunderHost) -> None:
    """The host network-boots while its OS was being written: that write is lost."""
    change = hoststate.booted_agent(host, "", datetime.now(UTC))
    status = {key: value for key, value in (change.status or {}).items() if key != "agentBootID"}
    try:
        await request.app[BACKEND_KEY].patch_host_status(host, status)
    except ApiError as error:  # written meanwhile: the next request decides again
        log.info("interrupted write of %s not recorded: %s", host.spec.boot_mac_address, error)
        return
    if change.event is not None:
        await request.app[EVENTS_KEY](host, *change.event)


async def boot_ipxe(request: web.Request) -> web.Response:
    """The script for one host, by its state; an unknown MAC is recorded first.

    No script carries an agent token (anyone may ask for any MAC's script): the agent asks for
    its token itself (see :mod:`plunder.boot.trust`). Until the host cache has synced, and when
    a new MAC is held back by the bound on discovery, the answer is "ask again", not a decision.
    """
    app = request.app
    settings = app[SETTINGS_KEY]
    try:
        mac = normalise_mac(request.query.get("mac", ""))
    except InvalidMACError as error:
        return _reject(request, 400, "invalid-mac", str(error))
    not_a_nic = rules.first_failure(rules.mac_address("mac"), mac)
    if not_a_nic is not None:  # the schema would refuse its PlunderHost: no write is tried
        return _reject(request, 400, "not-a-nic", not_a_nic)
    leased_to = app[LEASES_KEY].mac_for(request.remote or "")
    if leased_to is not None and leased_to != mac:
        return _reject(
            request,
            403,
            "spoofed-mac",
            f"mac {mac} claimed from {request.remote}, which DHCP leased to {leased_to}",
        )
    if not app[READY_KEY].is_set():
        return _retry(request, mac, "the boot service is starting; asking again")
    facts = BootFacts(
        mac=mac,
        ip=_fact(request, "ip") or request.remote,
        firmware=_firmware(_fact(request, "platform")),
        manufacturer=_fact(request, "manufacturer"),
        product=_fact(request, "product"),
        serial=_fact(request, "serial"),
        seen=datetime.now(UTC),
    )
    backend = app[BACKEND_KEY]
    host = backend.by_mac(mac)
    if host is not None and statusrecord.awaits_restore(host):
        # Moved by clusterctl, its status not rebuilt yet: a decision now would take it for a
        # new host and boot its installed OS into the agent.
        return _retry(request, mac, "its status is being rebuilt after a move; asking again")
    if host is None:
        refusal = await _discover(request, facts)
        host = backend.by_mac(mac)
        if host is None:
            return _retry(request, mac, f"{refusal or 'not recorded yet'}; asking again")
    else:
        backend.seen(facts)
    files_base = f"{settings.http_base}/files"
    cmdline = f"plunder.server={settings.http_base} plunder.mac={mac} console=ttyS0 quiet"
    agent_available = _agent_available(settings)
    if trust.write_interrupted(host):
        await _interrupted_write(request, host)
        return _retry(request, mac, "the write was interrupted; asking again")
    token = ""
    if decide.installs(host):
        issued = await _installer_token(request, host)
        if issued is None:
            return _retry(request, mac, "the installer's token is not free now; asking again")
        token = issued
    decision = decide.decide(
        host, files_base, cmdline, agent_available, server=settings.http_base, token=token
    )
    app[METRICS_KEY].scripts.labels(decision.action).inc()
    return web.Response(
        text=scripts.render_script(decision, mac, settings.http_base, settings.poll_seconds),
        content_type=IPXE_CONTENT_TYPE,
    )


def _agent_available(settings: BootSettings) -> bool:
    files = settings.files_dir
    return files is not None and (files / decide.AGENT_KERNEL).is_file()


@web.middleware
async def api_trouble(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API's trouble is answered as such, with one line: "ask again", not a server error.

    A guarded write that lost to another writer is a 409; an API server that is restarting, busy
    or out of reach, a 503 (any other API error is this service's own, and stays a 500). Either
    way the caller asks again (agent.sh retries both), and the log says what happened instead
    of calling it a malformed request.
    """
    try:
        return await handler(request)
    except ApiError as error:
        code = error.status.code or 0
        if code == 409:
            log.info("%s %s: the host changed meanwhile (%s)", request.method, request.path, error)
            raise web.HTTPConflict(text="the host changed meanwhile; ask again\n") from None
        if code != 429 and code < 500:
            raise
        problem = f"{code} {error.status.message}"
    except httpx2.TransportError as error:
        problem = f"{type(error).__name__}: {error}"
    log.warning("%s %s: the API server did not take it (%s)", request.method, request.path, problem)
    raise web.HTTPServiceUnavailable(text="the API server is not answering; ask again\n")


async def healthz(request: web.Request) -> web.Response:
    """200 once the host cache is synced."""
    if not request.app[READY_KEY].is_set():
        return web.Response(status=503, text="host cache not synced yet\n")
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    registry = request.app[METRICS_KEY].registry
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def make_app(
    settings: BootSettings,
    backend: HostBackend,
    leases: LeaseTable,
    ready: asyncio.Event,
    boot_metrics: BootMetrics,
    client: AsyncClient,
    signer: tokens.TokenSigner,
    events: EventSink,
    agent_logs: AgentLogStore,
) -> web.Application:
    """The boot service's web application."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[api_trouble])
    app[CLIENT_KEY] = client
    app[SIGNER_KEY] = signer
    app[HOLDERS_KEY] = tokens.Holders()
    app[DISCOVERY_KEY] = DiscoveryGate(settings.discovery)
    app[EVENTS_KEY] = events
    app[AGENT_LOGS_KEY] = agent_logs
    app[PROGRESS_KEY] = ProgressGate(
        settings.progress_interval, settings.progress_writes_per_second
    )
    app[SETTINGS_KEY] = settings
    app[BACKEND_KEY] = backend
    app[LEASES_KEY] = leases
    app[READY_KEY] = ready
    app[METRICS_KEY] = boot_metrics
    app[METRICS_KEY].hosts.set_function(lambda: float(backend.count()))
    app.router.add_get("/chain.ipxe", chain_ipxe)
    app.router.add_get("/boot.ipxe", boot_ipxe)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    agent.add_routes(app)
    installer_routes.add_routes(app)
    if settings.files_dir is not None:
        # FileResponse underneath: Range requests and sendfile(2); no symlinks out of the folder.
        app.router.add_static("/files/", settings.files_dir, follow_symlinks=False)
    return app
