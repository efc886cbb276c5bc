"""The answer files on the boot service: ``/installer/v1/{mac}/preseed.cfg`` and ``kickstart.cfg``.

An installer fetches its answer file with a plain GET (neither d-i nor anaconda can send a
header), so the per-boot token comes in the query, and is checked as for the agent's calls. A
file is served only to an accepted host in ``provisioning`` whose ``deploymentType`` asks for it;
the token is the one its iPXE script carried, issued once per install (see
:mod:`plunder.boot.trust`). Serving it marks the start of the ``writing`` phase (the installer
now writes the OS to the disk), which the answer file's last step finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from plunder.api.common import DeploymentType
from plunder.boot.http import agent
from plunder.boot.http.keys import BACKEND_KEY, EVENTS_KEY, SETTINGS_KEY
from plunder.boot.installer import kickstart, preseed
from plunder.boot.installer.boot import ANSWER_FILES
from plunder.boot.installer.target import InstallTarget, install_target
from plunder.reconcile import hoststate

log = logging.getLogger(__name__)

RENDERERS: dict[DeploymentType, Callable[[InstallTarget], str]] = {
    "preseed": preseed.render_preseed,
    "kickstart": kickstart.render_kickstart,
}


def _answer_file(kind: DeploymentType) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        host = agent.authorised_host(request, token=request.query.get("token", ""))
        mac = host.spec.boot_mac_address
        state = hoststate.state_of(host)
        if not host.spec.accepted or state != "provisioning" or host.spec.deployment_type != kind:
            log.warning(
                "%s of %s refused: the host is %s, not a %s install", kind, mac, state, kind
            )
            raise web.HTTPNotFound(text=f"no {kind} install for this host (it is {state})\n")
        try:
            text = RENDERERS[kind](install_target(host, request.app[SETTINGS_KEY].http_base))
        except ValueError as error:
            log.warning("%s of %s cannot be rendered: %s", kind, mac, error)
            raise web.HTTPUnprocessableEntity(text=f"{error}\n") from None
        change = hoststate.agent_progress(host, {"phase": "writing"}, datetime.now(UTC))
        if change.status:
            # Unguarded, as the boot id is: the boot service's own last-seen writes move the
            # resourceVersion under it, and a refused answer file stops the installer for good.
            await request.app[BACKEND_KEY].patch_host_status(host, change.status, guarded=False)
        await request.app[EVENTS_KEY](
            host, "Installing", f"the installer fetched its {kind} file; installing", "Normal"
        )
        log.info("served the %s file of %s", kind, mac)
        return web.Response(text=text, content_type="text/plain")

    return handler


def add_routes(app: web.Application) -> None:
    """Mount the answer files under /installer/v1/."""
    for kind, name in ANSWER_FILES.items():
        app.router.add_get(f"/installer/v1/{{mac}}/{name}", _answer_file(kind))
