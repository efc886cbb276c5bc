"""The agent's side of the boot service: lookup, inspection, work, seed, progress, log, phone home.

Every call names the host's MAC in its path. The first, ``lookup``, is answered with the token of
the host's boot, once per boot (see :mod:`plunder.boot.trust` for what opens a boot); every other
call carries that token (``Authorization: Bearer``; cloud-init's phone home, which cannot send
headers, puts its own token in the query). A call with a wrong token is refused with 403 and one
log line; bootstrap data is served only with the token of the boot that installs the host, only
while it is being installed, and is never logged. Answers to the agent are ``key=value`` lines,
which a busybox shell reads without a JSON parser.

The agent's log of its boot (``POST …/log``) is taken from the holder of the current token only,
scrubbed and bounded (:mod:`plunder.boot.agentlog`), and kept in the host's ConfigMap; its text
is never logged here. Its byte counts during an image write (``POST …/progress``) are recorded
in ``status.writeProgress`` at a bounded rate (:mod:`plunder.boot.progress`).
"""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime

import yaml
from aiohttp import web
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret
from pydantic import ValidationError

from plunder.api.inventory import HardwareDetails, PlunderHost
from plunder.boot import agentlog, trust
from plunder.boot.backend.base import BootFacts
from plunder.boot.http.keys import (
    AGENT_LOGS_KEY,
    BACKEND_KEY,
    CLIENT_KEY,
    EVENTS_KEY,
    HOLDERS_KEY,
    LEASES_KEY,
    METRICS_KEY,
    PROGRESS_KEY,
    READY_KEY,
    SETTINGS_KEY,
    SIGNER_KEY,
)
from plunder.boot.macs import InvalidMACError, normalise_mac
from plunder.boot.settings import work_poll_seconds
from plunder.reconcile import hoststate

log = logging.getLogger(__name__)

MAX_INSPECTION_BYTES = 256 * 1024


def _kv(fields: dict[str, str]) -> web.Response:
    return web.Response(text="".join(f"{key}={value}\n" for key, value in fields.items()))


def _mac_of(request: web.Request) -> str:
    if not request.app[READY_KEY].is_set():
        raise web.HTTPServiceUnavailable(text="the boot service is starting; ask again\n")
    try:
        mac = normalise_mac(request.match_info["mac"])
    except InvalidMACError as error:
        raise web.HTTPBadRequest(text=f"{error}\n") from None
    leased_to = request.app[LEASES_KEY].mac_for(request.remote or "")
    if leased_to is not None and leased_to != mac:
        log.warning("call for %s from %s, leased to %s: refused", mac, request.remote, leased_to)
        request.app[METRICS_KEY].rejected.labels("spoofed-mac").inc()
        raise web.HTTPForbidden(text="this address is leased to another MAC\n")
    return mac


def authorised_host(request: web.Request, token: str | None = None) -> PlunderHost:
    """The host named in the path, if the request carries its current token; else raise."""
    mac = _mac_of(request)
    host = request.app[BACKEND_KEY].by_mac(mac)
    if token is None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    boot_id = trust.current_boot_id(host) if host else None
    purpose = "phone-home" if token and request.path.endswith("/phone-home") else "agent"
    if host is None or not request.app[SIGNER_KEY].verify(mac, boot_id, token, purpose):
        log.warning(
            "agent call %s %s from %s refused: no valid token for %s",
            request.method,
            request.path,
            request.remote,
            mac,
        )
        request.app[METRICS_KEY].rejected.labels("bad-token").inc()
        raise web.HTTPForbidden(text="no valid token for this host\n")
    request.app[HOLDERS_KEY].heard(mac)
    return host


def _silent_for(request: web.Request, host: PlunderHost) -> float:
    """How long the host's token holder has been silent, as far as any replica can tell.

    This replica's memory, or the host's ``lastSeen`` (written by any replica, at most every
    ``last_seen_interval``), whichever says it was heard more recently.
    """
    silent = request.app[HOLDERS_KEY].silent_for(host.spec.boot_mac_address)
    last_seen = host.status.last_seen if host.status else None
    if last_seen is not None:
        silent = min(silent, max(0.0, (datetime.now(UTC) - last_seen).total_seconds()))
    return silent


async def issue_token(
    request: web.Request, host: PlunderHost, who: str, nonce: str | None = None
) -> str:
    """The token of a new boot of ``host``, if :func:`trust.refuse_lookup` allows one now.

    The boot id is written guarded by the resourceVersion the decision was made on, so of two
    requests (on any replicas) exactly one wins. A conflict with a write that issued no token
    (this service's own lastSeen, say) is decided again, once, on a fresh read.

    Raises:
        web.HTTPConflict: No token now (the reason is the body).
    """
    app = request.app
    mac = host.spec.boot_mac_address
    for attempt in (1, 2):
        refusal = trust.refuse_lookup(
            host, _silent_for(request, host), app[SETTINGS_KEY].agent_silence_seconds
        )
        if refusal is not None:
            log.warning("%s of %s from %s refused: %s", who, mac, request.remote, refusal)
            app[METRICS_KEY].rejected.labels("token-issued-already").inc()
            raise web.HTTPConflict(text=f"{refusal}\n")
        read = host.status.agent_boot_id if host.status else None
        boot_id = trust.new_boot_id(host, nonce)
        change = hoststate.booted_agent(host, boot_id, datetime.now(UTC))
        try:
            await app[BACKEND_KEY].patch_host_status(host, change.status or {})
        except ApiError as error:
            fresh = await app[BACKEND_KEY].fresh(host) if error.status.code == 409 else None
            fresh_id = fresh.status.agent_boot_id if fresh and fresh.status else None
            if fresh is None or attempt == 2 or fresh_id != read:
                log.warning("%s of %s from %s lost: %s", who, mac, request.remote, error)
                raise web.HTTPConflict(text="another request was answered first\n") from None
            host = fresh  # the conflicting write issued no token: decide again on it
            continue
        app[HOLDERS_KEY].heard(mac)  # before any await: a racing request sees it in use
        if change.event is not None:
            await app[EVENTS_KEY](host, *change.event)
        log.info("issued the token of a new boot of %s to %s (%s)", mac, request.remote, who)
        return app[SIGNER_KEY].token(mac, boot_id)
    raise AssertionError("unreachable")  # pragma: no cover


async def lookup(request: web.Request) -> web.Response:
    """The agent of a new boot asks for its token: the first lookup of a boot gets it.

    A lookup with the nonce the current token was issued for is answered again with that token
    (:func:`trust.asked_again`: the first answer was lost).
    """
    mac = _mac_of(request)
    host = request.app[BACKEND_KEY].by_mac(mac)
    if host is None:
        raise web.HTTPNotFound(text="no such host (yet)\n")
    nonce = trust.lookup_nonce(str((await request.post()).get("nonce", "")))
    boot_id = trust.current_boot_id(host)
    if boot_id is not None and trust.asked_again(host, nonce):
        request.app[HOLDERS_KEY].heard(mac)
        log.info("lookup of %s from %s answered again: its boot asked", mac, request.remote)
        return _kv({"token": request.app[SIGNER_KEY].token(mac, boot_id)})
    return _kv({"token": await issue_token(request, host, "lookup", nonce)})


async def inspection(request: web.Request) -> web.Response:
    """The agent reports the host's hardware; the host becomes available."""
    host = authorised_host(request)
    body = await request.content.read(MAX_INSPECTION_BYTES + 1)
    if len(body) > MAX_INSPECTION_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_INSPECTION_BYTES, actual_size=len(body))
    try:
        hardware = HardwareDetails.model_validate_json(body)
    except ValidationError as error:
        log.warning("inspection of %s refused: %s", host.spec.boot_mac_address, error)
        raise web.HTTPBadRequest(text="inspection data does not parse\n") from None
    now = datetime.now(UTC)
    status = hoststate.inspected(host, hardware, now)
    await request.app[BACKEND_KEY].patch_host_status(host, status)
    return web.Response(status=204)


async def work(request: web.Request) -> web.Response:
    """What the agent should do now."""
    host = authorised_host(request)
    # The agent polls here as a parked iPXE polls /boot.ipxe: that is the host being seen.
    request.app[BACKEND_KEY].seen(
        BootFacts(
            mac=host.spec.boot_mac_address,
            ip=request.remote,
            firmware=None,
            manufacturer=None,
            product=None,
            serial=None,
            seen=datetime.now(UTC),
        )
    )
    work = hoststate.agent_work(host)
    if work.get("action") in ("provision", "wipe") and not trust.writes_allowed(host):
        work = {"action": "wait", "reason": "not accepted"}
    if work.get("action") == "wait":
        polls = request.app[SETTINGS_KEY].work_polls_per_second
        work["retry"] = str(work_poll_seconds(request.app[BACKEND_KEY].count(), polls))
    return _kv(work)


async def progress(request: web.Request) -> web.Response:
    """The agent reports a phase of its work (key=value lines)."""
    host = authorised_host(request)
    if not trust.takes_progress(host):
        log.warning(
            "progress of %s refused: no work under way (%s)",
            host.spec.boot_mac_address,
            hoststate.state_of(host),
        )
        raise web.HTTPConflict(text="no work is under way on this host\n")
    text = (await request.content.read(8192)).decode(errors="replace")
    change = hoststate.agent_progress(host, _fields(text), datetime.now(UTC))
    if change.status:
        await request.app[BACKEND_KEY].patch_host_status(host, change.status)
    if change.event is not None:
        await request.app[EVENTS_KEY](host, *change.event)
    return web.Response(status=204)


def _fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


async def write_progress(request: web.Request) -> web.Response:
    """The agent's byte counts during its image write (downloaded, written, total).

    204: recorded; 202: taken but not recorded (the host's last record is recent, or the fleet's
    budget of progress writes is spent: the next report carries newer counts).
    """
    host = authorised_host(request)
    mac = host.spec.boot_mac_address
    if not trust.takes_write_progress(host):
        raise web.HTTPConflict(text="no image write is under way on this host\n")
    fields = _fields((await request.content.read(4096)).decode(errors="replace"))
    status = hoststate.write_progress(host, fields, datetime.now(UTC))
    metrics = request.app[METRICS_KEY].write_progress
    if status is None or not request.app[PROGRESS_KEY].admit(mac):
        metrics.labels("dropped").inc()
        return web.Response(status=202)
    await request.app[BACKEND_KEY].patch_host_status(host, status)
    metrics.labels("recorded").inc()
    return web.Response(status=204)


async def agent_log(request: web.Request) -> web.Response:
    """The agent sends the log of its boot (all of it, newest last): it replaces the kept one.

    204: written; 202: kept in memory, written when the host's turn comes. The text is scrubbed
    of the host's tokens (and anything that looks like a credential) before it is kept.
    """
    host = authorised_host(request)
    mac = host.spec.boot_mac_address
    if not trust.takes_agent_log(host):
        log.warning("agent log of %s refused: its write has ended", mac)
        raise web.HTTPConflict(text="this host's install has ended; its log is kept\n")
    body = await request.content.read(agentlog.MAX_UPLOAD_BYTES + 1)
    if len(body) > agentlog.MAX_UPLOAD_BYTES:
        raise web.HTTPRequestEntityTooLarge(
            max_size=agentlog.MAX_UPLOAD_BYTES, actual_size=len(body)
        )
    boot_id = trust.current_boot_id(host) or ""
    signer = request.app[SIGNER_KEY]
    secrets = (signer.token(mac, boot_id), signer.token(mac, boot_id, "phone-home"))
    text = agentlog.clean(body, secrets)
    written = await request.app[AGENT_LOGS_KEY].submit(host, boot_id, text)
    request.app[METRICS_KEY].agent_logs.labels("written" if written else "waiting").inc()
    return web.Response(status=204 if written else 202)


async def phone_home(request: web.Request) -> web.Response:
    """cloud-init of the installed OS reports in: the host is provisioned."""
    host = authorised_host(request, token=request.query.get("token", ""))
    if not trust.takes_phone_home(host):
        log.warning("phone home of %s refused: its write has not ended", host.spec.boot_mac_address)
        raise web.HTTPConflict(text="this host is not waiting for its installed OS\n")
    change = hoststate.phoned_home(host, datetime.now(UTC))
    if change.status:
        await request.app[BACKEND_KEY].patch_host_status(host, change.status)
    if change.event is not None:
        await request.app[EVENTS_KEY](host, *change.event)
    return web.Response(status=204)


async def _user_data(request: web.Request, host: PlunderHost) -> str:
    reference = host.spec.user_data
    if reference is None:
        return "#cloud-config\n{}\n"
    namespace = host.metadata.namespace
    if reference.namespace not in (None, namespace):
        # Whoever may write a PlunderHost must not get any Secret of the cluster served.
        log.warning(
            "user-data of %s refused: its Secret is in namespace %s, not the host's (%s)",
            host.spec.boot_mac_address,
            reference.namespace,
            namespace,
        )
        raise web.HTTPForbidden(text="the user-data Secret must be in the host's namespace\n")
    try:
        secret = await request.app[CLIENT_KEY].get(Secret, reference.name, namespace=namespace)
    except ApiError as error:
        log.warning(
            "user-data Secret %s/%s of %s not readable: %s",
            namespace,
            reference.name,
            host.spec.boot_mac_address,
            error.status.reason,
        )
        raise web.HTTPServiceUnavailable(text="user-data not available yet\n") from None
    data = secret.data or {}
    if "value" not in data:
        raise web.HTTPServiceUnavailable(text="user-data Secret has no 'value'\n")
    return base64.b64decode(data["value"]).decode()


async def cloud_init(request: web.Request) -> web.Response:
    """The NoCloud seed of the host's installation: meta-data, user-data, vendor-data, network."""
    host = authorised_host(request)
    name = request.match_info["file"]
    settings = request.app[SETTINGS_KEY]
    if name in ("user-data", "vendor-data") and not trust.serves_seed(host):
        log.warning(
            "%s of %s refused: not being installed (%s)",
            name,
            host.spec.boot_mac_address,
            hoststate.state_of(host),
        )
        raise web.HTTPForbidden(text=f"{name} is served only while the host is installed\n")
    if name == "meta-data":
        text = yaml.safe_dump(hoststate.meta_data(host), sort_keys=False)
    elif name == "user-data":
        text = await _user_data(request, host)  # never logged
    elif name == "vendor-data":
        boot_id = trust.current_boot_id(host) or ""
        token = request.app[SIGNER_KEY].token(host.spec.boot_mac_address, boot_id, "phone-home")
        url = f"{settings.http_base}/agent/v1/{host.spec.boot_mac_address}/phone-home?token={token}"
        text = "#cloud-config\n" + yaml.safe_dump(
            {"phone_home": {"url": url, "post": ["instance_id"], "tries": 10}}, sort_keys=False
        )
    elif name == "network-config":
        config = hoststate.network_config(host)
        if config is None:
            raise web.HTTPNotFound(text="no network-config: DHCP\n")
        text = yaml.safe_dump(config, sort_keys=False)
    else:
        raise web.HTTPNotFound()
    return web.Response(text=text)


def add_routes(app: web.Application) -> None:
    """Mount the agent API under /agent/v1/."""
    app.router.add_post("/agent/v1/{mac}/lookup", lookup)
    app.router.add_post("/agent/v1/{mac}/inspection", inspection)
    app.router.add_get("/agent/v1/{mac}/work", work)
    app.router.add_post("/agent/v1/{mac}/status", progress)
    app.router.add_post("/agent/v1/{mac}/progress", write_progress)
    app.router.add_post("/agent/v1/{mac}/log", agent_log)
    app.router.add_post("/agent/v1/{mac}/phone-home", phone_home)
    app.router.add_get("/agent/v1/{mac}/cloud-init/{file}", cloud_init)
