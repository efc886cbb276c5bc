"""The dashboard's HTTP server: the page, its JSON, and a stream of "something changed".

Read-only by construction: the server answers GET and HEAD and nothing else (405), and talks to
the API server only to list, watch and get. It listens on loopback by default, like
``kubectl proxy``, yet it holds the user's credentials, so it also guards against the ways a web
page elsewhere could reach it:

- a strict Content-Security-Policy (``default-src 'none'``; script, style and data from this
  origin only, no inline script or style, no frames) and ``nosniff``;
- the ``Host`` header must name the address it listens on (a DNS-rebinding page has another);
- no CORS headers, so another origin's script cannot read a response, and a browser's request
  that says it comes from another site's page (``Sec-Fetch-Site``) is refused outright.

The page is plain JavaScript with inline SVG (``static/``): nothing is fetched from elsewhere
and nothing needs a build step.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap, Event

from plunder.boot import agentlog
from plunder.dashboard import fleet as fleet_
from plunder.dashboard import shaping
from plunder.k8s.resources import as_dict

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this origin's files; no inline script or style, no frames, no form posts."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
READ_METHODS = frozenset({"GET", "HEAD"})
SAME_SITE = frozenset({"same-origin", "none"})
"""``Sec-Fetch-Site`` values answered: the page's own requests, and a person typing the URL."""
STATIC_FILES = {
    "app.js": "text/javascript",
    "app.css": "text/css",
    "index.html": "text/html",
}
KEEPALIVE_SECONDS = 15.0
"""How often an idle event stream sends a comment (so proxies and the browser keep it open)."""

FLEET: web.AppKey[fleet_.Fleet] = web.AppKey("fleet", fleet_.Fleet)
CLIENT: web.AppKey[AsyncClient] = web.AppKey("client", AsyncClient)
ALLOWED_HOSTS: web.AppKey[set[str]] = web.AppKey("allowed_hosts", set)


def allowed_hosts(address: str, port: int) -> set[str]:
    """The ``Host`` headers a browser sends for this server: its address, and localhost's."""
    names = {address, "localhost", "127.0.0.1", "[::1]"} if is_loopback(address) else {address}
    if ":" in address and not address.startswith("["):
        names.add(f"[{address}]")
    return {f"{name}:{port}" for name in names} | ({"localhost"} if port == 80 else set())


def is_loopback(address: str) -> bool:
    """Whether ``address`` is a loopback address (or localhost)."""
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return address == "localhost"


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse what is not a read, or not addressed to this server; add the security headers."""
    if request.method not in READ_METHODS:
        response: web.StreamResponse = web.Response(
            status=405, text="read-only: only GET and HEAD\n", headers={"Allow": "GET, HEAD"}
        )
    elif request.host not in request.app[ALLOWED_HOSTS]:
        response = web.Response(status=421, text="this server answers on loopback only\n")
    elif request.headers.get("Sec-Fetch-Site", "none") not in SAME_SITE:
        response = web.Response(status=403, text="not from another site's page\n")
    else:
        try:
            response = await handler(request)
        except web.HTTPException as error:
            response = web.Response(status=error.status, text=error.text)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def _json(data: Any) -> web.Response:
    return web.json_response(
        data, dumps=lambda value: json.dumps(value), headers={"Cache-Control": "no-store"}
    )


def _static(name: str) -> bytes:
    return resources.files("plunder.dashboard").joinpath("static", name).read_bytes()


async def page(request: web.Request) -> web.Response:
    """The single page; its script draws the view the URL's fragment names."""
    return web.Response(body=_static("index.html"), content_type="text/html", charset="utf-8")


async def static(request: web.Request) -> web.Response:
    """The page's script and style."""
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound()
    return web.Response(body=_static(name), content_type=STATIC_FILES[name], charset="utf-8")


def _now() -> datetime:
    return datetime.now(UTC)


async def fleet_json(request: web.Request) -> web.Response:
    """Every host's row, the counts by state, and the clusters."""
    fleet = request.app[FLEET]
    rows = shaping.fleet(fleet.objects[fleet_.HOSTS].values(), _now())
    return _json(
        {
            "version": fleet.version,
            "synced": sorted(fleet.synced),
            "problems": dict(sorted(fleet.problems.items())),
            "hosts": rows,
            "states": shaping.state_counts(rows),
            "clusters": shaping.clusters(
                fleet.objects[fleet_.CLUSTERS].values(), fleet.objects[fleet_.MACHINES].values()
            ),
        }
    )


async def _events_of(client: AsyncClient, namespace: str, kind: str, name: str) -> list[Any]:
    fields: dict[str, Any] = {"involvedObject.kind": kind, "involvedObject.name": name}
    try:
        return [
            as_dict(event) async for event in client.list(Event, namespace=namespace, fields=fields)
        ]
    except ApiError as error:
        log.info("events of %s/%s: %s", namespace, name, error)
        return []


async def _agent_log(client: AsyncClient, namespace: str, name: str) -> str | None:
    try:
        found = await client.get(ConfigMap, agentlog.configmap_name(name), namespace=namespace)
    except ApiError:
        return None
    kept = agentlog.from_configmap(name, found.data)
    return agentlog.render(kept) if kept else None


async def host_json(request: web.Request) -> web.Response:
    """One host: hardware, conditions, events, its cycles' timelines, its agent's last log."""
    fleet, client = request.app[FLEET], request.app[CLIENT]
    key = (request.match_info["namespace"], request.match_info["name"])
    host = fleet.objects[fleet_.HOSTS].get(key)
    if host is None:
        raise web.HTTPNotFound(text=f"no host {key[0]}/{key[1]}\n")
    found_events, log_text = await asyncio.gather(
        _events_of(client, key[0], "PlunderHost", key[1]), _agent_log(client, *key)
    )
    detail = shaping.host_detail(host, fleet.cycles.get(key, ()), found_events, log_text, _now())
    return _json({"version": fleet.version, **detail})


async def cluster_json(request: web.Request) -> web.Response:
    """One Cluster: its Machines, their hosts, and each host's newest timeline on one clock."""
    fleet = request.app[FLEET]
    key = (request.match_info["namespace"], request.match_info["name"])
    cluster = fleet.objects[fleet_.CLUSTERS].get(key)
    if cluster is None:
        raise web.HTTPNotFound(text=f"no cluster {key[0]}/{key[1]}\n")
    view = shaping.cluster_view(
        cluster,
        fleet.objects[fleet_.MACHINES].values(),
        fleet.objects[fleet_.PLUNDER_MACHINES],
        fleet.objects[fleet_.HOSTS],
        fleet.cycles,
        _now(),
    )
    return _json({"version": fleet.version, **view})


async def changes(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``change`` with the fleet's version each time a watch brought news."""
    fleet = request.app[FLEET]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
    )
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    await response.prepare(request)
    seen = -1
    with contextlib.suppress(ConnectionResetError):
        while True:
            version = await fleet.changed(seen, KEEPALIVE_SECONDS)
            if version > seen:
                await response.write(f"event: change\ndata: {version}\n\n".encode())
                seen = version
            else:
                await response.write(b": idle\n\n")
    return response


async def healthz(request: web.Request) -> web.Response:
    """Alive, and which kinds the watches have listed."""
    return _json({"synced": sorted(request.app[FLEET].synced)})


def make_app(fleet: fleet_.Fleet, client: AsyncClient, hosts: Iterable[str]) -> web.Application:
    """The dashboard's app, reading ``fleet`` (and ``client`` for a host's events and log)."""
    app = web.Application(middlewares=[guard])
    app[FLEET] = fleet
    app[CLIENT] = client
    app[ALLOWED_HOSTS] = set(hosts)
    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/api/fleet", fleet_json)
    app.router.add_get("/api/hosts/{namespace}/{name}", host_json)
    app.router.add_get("/api/clusters/{namespace}/{name}", cluster_json)
    app.router.add_get("/api/changes", changes)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(client: AsyncClient, namespace: str | None, address: str, port: int) -> None:
    """Watch, serve on ``address``:``port`` until cancelled."""
    fleet = fleet_.Fleet()
    tasks = fleet_.start(client, fleet, namespace)
    runner = web.AppRunner(make_app(fleet, client, allowed_hosts(address, port)))
    await runner.setup()
    try:
        await web.TCPSite(runner, address, port).start()
        await _forever(tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()


async def _forever(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks)
