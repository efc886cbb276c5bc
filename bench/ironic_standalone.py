"""Ironic standalone, measured doing what ``bench/fleet_scale.py`` makes this project do.

Ironic (``pip install ironic``, into a virtualenv of its own under ``$PLUNDER_CACHE/ironic``,
never into this project's) runs as its all-in-one ``ironic`` process (API and conductor, no
message bus: ``rpc_transport = none``), on sqlite, without authentication, with only the
``fake-hardware`` type and fake interfaces. Through its REST API, for N nodes: enroll, manage,
provide (to ``available``), deploy (``active``), undeploy (``deleted``, with automated cleaning
on, so the node passes through ``cleaning`` as ours pass through their wipe, back to
``available``), timed phase by phase.

What is unlike: the fake driver does no power action, boots nothing and runs no agent; a
deploy is the conductor's state machine and database writes only. This project's side has
every host's agent calling the boot service, which writes the API server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

IRONIC_VERSION = "39.0.0"
HEADERS = {"X-OpenStack-Ironic-API-Version": "1.115", "Content-Type": "application/json"}
FAKE_INTERFACES = {
    name: "fake"
    for name in (
        "bios_interface",
        "boot_interface",
        "console_interface",
        "deploy_interface",
        "inspect_interface",
        "management_interface",
        "power_interface",
        "raid_interface",
        "rescue_interface",
        "vendor_interface",
    )
}
CONFIG = """[DEFAULT]
auth_strategy = noauth
enabled_hardware_types = fake-hardware
enabled_boot_interfaces = fake
enabled_console_interfaces = fake
enabled_deploy_interfaces = fake
enabled_inspect_interfaces = fake
enabled_management_interfaces = fake
enabled_power_interfaces = fake
enabled_raid_interfaces = fake
enabled_vendor_interfaces = fake
enabled_bios_interfaces = fake
enabled_rescue_interfaces = fake
enabled_network_interfaces = noop
enabled_storage_interfaces = noop
default_network_interface = noop
rpc_transport = none
host = bench
log_file = {folder}/ironic.log
[api]
host_ip = 127.0.0.1
port = {port}
[database]
connection = sqlite:///{folder}/ironic.sqlite
[conductor]
automated_clean = true
workers_pool_size = {workers}
[dhcp]
dhcp_provider = none
[oslo_concurrency]
lock_path = {folder}/locks
"""


def cache() -> Path:
    """Where Ironic's virtualenv lives."""
    return Path(os.environ.get("PLUNDER_CACHE", Path.home() / ".cache" / "plunder")) / "ironic"


def install() -> Path:
    """Ironic's virtualenv (made and installed on first use); its ``bin`` folder."""
    venv = cache() / f"venv-{IRONIC_VERSION}"
    binary = venv / "bin" / "ironic"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q", f"ironic=={IRONIC_VERSION}"]
        print("installing Ironic:", " ".join(pip), flush=True)
        subprocess.run(pip, check=True)
    return venv / "bin"


@dataclass
class Phases:
    """Seconds each phase took for all N nodes (from the first request to the last arrival)."""

    size: int
    enroll_s: float = float("nan")
    available_s: float = float("nan")
    """manage + provide."""
    deploy_s: float = float("nan")
    undeploy_s: float = float("nan")
    """Undeploy and automated cleaning, back to available."""
    rss_mb: float = float("nan")
    """Peak RSS of Ironic's processes, summed (master and its service)."""
    cpu_s: float = float("nan")


class Ironic:
    """A running all-in-one Ironic in ``folder``."""

    def __init__(self, folder: Path, port: int, workers: int = 300) -> None:
        self.folder = folder
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "ironic.conf"
        self.config.write_text(CONFIG.format(folder=folder, port=port, workers=workers))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Its database made, then the process, until its API answers."""
        binaries = install()
        subprocess.run(
            [str(binaries / "ironic-dbsync"), "--config-file", str(self.config), "create_schema"],
            check=True,
            capture_output=True,
        )
        with (self.folder / "ironic.out").open("ab") as out:
            self.process = subprocess.Popen(
                [str(binaries / "ironic"), "--config-file", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/v1", timeout=2).close()  # noqa: S310
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"Ironic did not answer; see {self.folder / 'ironic.out'}")

    def pids(self) -> list[int]:
        """The master process and its children (forked from any of its threads)."""
        assert self.process is not None
        found = [self.process.pid]
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            found += [int(pid) for pid in children.read_text().split()]
        return found

    def stop(self) -> None:
        """SIGTERM (its master stops its service), SIGKILL after 30 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def _all(session: aiohttp.ClientSession, calls: Sequence[tuple[str, str, object]]) -> None:
    """Each (method, path, body), at most 32 at once; a 409 (node locked) is asked again."""
    slots = asyncio.Semaphore(32)

    async def one(method: str, path: str, body: object) -> None:
        while True:
            async with slots, session.request(method, path, json=body) as reply:
                if reply.status < 300:
                    return
                text = await reply.text()
                if reply.status not in (409, 503):
                    raise RuntimeError(f"{method} {path}: {reply.status} {text[:300]}")
            await asyncio.sleep(0.5)

    await asyncio.gather(*(one(*call) for call in calls))


async def _until(
    session: aiohttp.ClientSession, state: str, size: int, timeout: float = 3600.0
) -> None:
    """Until every node is in ``state`` (a paged list of them a second); raise after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = await _nodes(session)
        failed = [n for n in nodes if n.get("last_error")]
        if failed:
            raise RuntimeError(f"Ironic node {failed[0]['uuid']}: {failed[0]['last_error']}")
        if sum(1 for n in nodes if n["provision_state"] == state) == size:
            return
        await asyncio.sleep(1.0)
    raise RuntimeError(f"Ironic: not every node {state} within {timeout:.0f}s")


async def _nodes(session: aiohttp.ClientSession) -> list[dict[str, Any]]:
    """Every node's uuid, provision state and last error (pages of 1,000, Ironic's most)."""
    found: list[dict[str, Any]] = []
    params = {"fields": "uuid,provision_state,last_error", "limit": "1000"}
    while True:
        async with session.get("/v1/nodes", params=params) as reply:
            body = await reply.json()
        if "nodes" not in body:
            raise RuntimeError(f"Ironic's node list: {reply.status} {body}")
        found += body["nodes"]
        if len(body["nodes"]) < 1000:
            return found
        params["marker"] = body["nodes"][-1]["uuid"]


def _shown(size: int, what: str, began: float) -> float:
    """Seconds since ``began``, printed (a long run shows each phase as it ends)."""
    took = time.monotonic() - began
    print(f"  {size}: Ironic: all {what} after {took:.1f}s", flush=True)
    return took


async def _run(url: str, size: int) -> Phases:
    phases = Phases(size)
    names = [f"node{i:05d}" for i in range(size)]
    image = {"image_source": "http://172.31.99.1:8080/files/os.raw", "image_checksum": "a" * 64}
    async with aiohttp.ClientSession(url, headers=HEADERS) as session:
        began = time.monotonic()
        enroll = [
            ("POST", "/v1/nodes", {"name": n, "driver": "fake-hardware", **FAKE_INTERFACES})
            for n in names
        ]
        await _all(session, enroll)
        await _until(session, "enroll", size)
        phases.enroll_s = _shown(size, "enrolled", began)

        def moves(target: str) -> list[tuple[str, str, object]]:
            return [("PUT", f"/v1/nodes/{n}/states/provision", {"target": target}) for n in names]

        began = time.monotonic()
        await _all(session, moves("manage"))
        await _until(session, "manageable", size)
        await _all(session, moves("provide"))
        await _until(session, "available", size)
        phases.available_s = _shown(size, "available", began)

        info = [
            {"op": "add", "path": f"/instance_info/{key}", "value": value}
            for key, value in image.items()
        ]
        began = time.monotonic()
        await _all(session, [("PATCH", f"/v1/nodes/{n}", info) for n in names])
        await _all(session, moves("active"))
        await _until(session, "active", size)
        phases.deploy_s = _shown(size, "active", began)

        began = time.monotonic()
        await _all(session, moves("deleted"))
        await _until(session, "available", size)
        phases.undeploy_s = _shown(size, "available again", began)
    return phases


def measure(
    folder: Path,
    port: int,
    size: int,
    rss_of: Callable[[int], float],
    cpu_of: Callable[[int], float],
) -> Phases:
    """A fresh Ironic in ``folder`` taking ``size`` nodes through their life; then stopped.

    ``rss_of`` and ``cpu_of``: functions of a pid (the benchmark's own /proc readers).
    """
    ironic = Ironic(folder, port)
    ironic.start()
    try:
        phases = asyncio.run(_run(ironic.url, size))
        pids = ironic.pids()
        phases.rss_mb = sum(rss_of(pid) for pid in pids)
        phases.cpu_s = sum(cpu_of(pid) for pid in pids)
    finally:
        ironic.stop()
    return phases
