"""The dashboard's server without an API server: read-only, loopback-only, strict headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from lightkube import AsyncClient, KubeConfig

from plunder.dashboard import fleet, server


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    config = KubeConfig.from_dict(  # never reached by these requests
        {
            "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "x", "user": "u"}}],
            "current-context": "c",
        }
    )
    state = fleet.Fleet()
    state.replace(
        fleet.HOSTS,
        [
            {
                "metadata": {"name": "h1", "namespace": "ns"},
                "spec": {},
                "status": {"state": "available"},
            }
        ],
    )
    app = server.make_app(state, AsyncClient(config), hosts=set())
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    app[server.ALLOWED_HOSTS].update(server.allowed_hosts("127.0.0.1", test_server.port or 0))
    try:
        yield f"http://127.0.0.1:{test_server.port}"
    finally:
        await test_server.close()


async def request(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as r:
        return r.status, dict(r.headers), await r.text()


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_only_reads_are_answered(base_url: str, method: str) -> None:
    status, headers, _ = await request(method, f"{base_url}/api/fleet")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"
    assert "default-src 'none'" in headers["Content-Security-Policy"]


async def test_page_and_json_carry_a_strict_policy(base_url: str) -> None:
    for path in ("/", "/static/app.js", "/api/fleet", "/api/hosts/ns/nope"):
        status, headers, _ = await request("GET", f"{base_url}{path}")
        assert status in (200, 404), path
        policy = headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "http" not in policy, path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "Access-Control-Allow-Origin" not in headers
    status, _, body = await request("GET", f"{base_url}/api/fleet")
    assert status == 200 and '"h1"' in body


async def test_another_host_name_is_refused(base_url: str) -> None:
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: it is not answered."""
    status, _, body = await request("GET", f"{base_url}/api/fleet", headers={"Host": "evil.test"})
    assert status == 421
    assert "h1" not in body


async def test_another_sites_page_is_refused(base_url: str) -> None:
    headers = {"Sec-Fetch-Site": "cross-site"}
    status, _, body = await request("GET", f"{base_url}/api/fleet", headers=headers)
    assert status == 403 and "h1" not in body
    headers = {"Sec-Fetch-Site": "same-origin"}
    assert (await request("GET", f"{base_url}/api/fleet", headers=headers))[0] == 200


async def test_no_static_file_outside_the_list(base_url: str) -> None:
    for name in ("..%2f__init__.py", "server.py", "nope.js"):
        status, _, _ = await request("GET", f"{base_url}/static/{name}")
        assert status == 404


def test_allowed_hosts() -> None:
    assert "localhost:8001" in server.allowed_hosts("127.0.0.1", 8001)
    assert "[::1]:8001" in server.allowed_hosts("::1", 8001)
    assert server.allowed_hosts("10.1.2.3", 8001) == {"10.1.2.3:8001"}


async def test_the_fleet_keeps_a_hosts_cycles_and_wakes_the_streams() -> None:
    state = fleet.Fleet()
    host: dict[str, Any] = {"metadata": {"name": "h", "namespace": "ns"}, "status": {}}
    first = [{"name": "provisioning", "started": "2026-12-07T01:00:00Z"}]
    second = [{"name": "provisioning", "started": "2026-12-07T02:00:00Z"}]
    state.replace(fleet.HOSTS, [host])
    version = state.version
    state.apply(fleet.HOSTS, "MODIFIED", {**host, "status": {"phases": first}})
    assert await state.changed(version, timeout=1) == version + 1
    state.apply(fleet.HOSTS, "MODIFIED", {**host, "status": {"phases": second}})
    assert state.cycles[("ns", "h")] == [first, second]
    state.apply(fleet.HOSTS, "DELETED", host)
    assert ("ns", "h") not in state.cycles and not state.objects[fleet.HOSTS]
    assert await state.changed(state.version, timeout=0.05) == state.version  # nothing new


def test_a_kind_that_cannot_be_listed_is_named_until_it_is() -> None:
    state = fleet.Fleet()
    state.failed(fleet.CLUSTERS, "404 the server could not find the requested resource")
    version = state.version
    state.failed(fleet.CLUSTERS, "404 the server could not find the requested resource")
    assert state.version == version  # the same news once
    assert state.problems == {
        fleet.CLUSTERS: "404 the server could not find the requested resource"
    }
    state.replace(fleet.CLUSTERS, [])
    assert state.problems == {}
