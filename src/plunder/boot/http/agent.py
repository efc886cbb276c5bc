"""The agent's side of the boot service: inspection, work, cloud-init data, progress, phone home.

Every call names the host's MAC in its path and carries the per-boot token (``Authorization:
Bearer``; cloud-init's phone home, which cannot send headers, puts it in the query). A call with a
wrong token is refused with 403 and one log line; bootstrap data is served only to the host it
belongs to and is never logged. Answers to the agent are ``key=value`` lines, which a busybox
shell reads without a JSON parser.
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
from plunder.boot.backend.base import BootFacts
from plunder.boot.http.keys import (
    BACKEND_KEY,
    CLIENT_KEY,
    EVENTS_KEY,
    SETTINGS_KEY,
    SIGNER_KEY,
)
from plunder.boot.macs import InvalidMACError, normalise_mac
from plunder.reconcile import hoststate

log = logging.getLogger(__name__)

MAX_INSPECTION_BYTES = 256 * 1024


def _kv(fields: dict[str, str]) -> web.Response:
    return web.Response(text="".join(f"{key}={value}\n" for key, value in fields.items()))


def authorised_host(request: web.Request, token: str | None = None) -> PlunderHost:
    """The host named in the path, if the request carries its current token; else raise."""
    try:
        mac = normalise_mac(request.match_info["mac"])
    except InvalidMACError as error:
        raise web.HTTPBadRequest(text=f"{error}\n") from None
    host = request.app[BACKEND_KEY].by_mac(mac)
    if token is None:
        header = request.headers.get("Authorization", "")
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    boot_id = host.status.agent_boot_id if host and host.status else None
    purpose = "phone-home" if token and request.path.endswith("/phone-home") else "agent"
    if host is None or not request.app[SIGNER_KEY].verify(mac, boot_id, token, purpose):
        log.warning(
            "agent call %s %s from %s refused: no valid token for %s",
            request.method,
            request.path,
            request.remote,
            mac,
        )
        raise web.HTTPForbidden(text="no valid token for this host\n")
    return host


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
    return _kv(hoststate.agent_work(host))


async def progress(request: web.Request) -> web.Response:
    """The agent reports a phase of its work (key=value lines)."""
    host = authorised_host(request)
    text = (await request.content.read(8192)).decode(errors="replace")
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    change = hoststate.agent_progress(host, fields, datetime.now(UTC))
    if change.status:
        await request.app[BACKEND_KEY].patch_host_status(host, change.status)
    if change.event is not None:
        await request.app[EVENTS_KEY](host, *change.event)
    return web.Response(status=204)


async def phone_home(request: web.Request) -> web.Response:
    """cloud-init of the installed OS reports in: the host is provisioned."""
    host = authorised_host(request, token=request.query.get("token", ""))
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
    if name == "meta-data":
        text = yaml.safe_dump(hoststate.meta_data(host), sort_keys=False)
    elif name == "user-data":
        text = await _user_data(request, host)  # never logged
    elif name == "vendor-data":
        status = host.status
        boot_id = status.agent_boot_id if status else None
        token = request.app[SIGNER_KEY].token(
            host.spec.boot_mac_address, boot_id or "", "phone-home"
        )
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
    app.router.add_post("/agent/v1/{mac}/inspection", inspection)
    app.router.add_get("/agent/v1/{mac}/work", work)
    app.router.add_post("/agent/v1/{mac}/status", progress)
    app.router.add_post("/agent/v1/{mac}/phone-home", phone_home)
    app.router.add_get("/agent/v1/{mac}/cloud-init/{file}", cloud_init)
