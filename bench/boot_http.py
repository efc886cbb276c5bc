"""Benchmark the boot service's HTTP side against a real API server holding 1,000 hosts.

Prints, for 1, 100 and 1,000 concurrent clients, iPXE script requests per second beside a
baseline measured in the same run and server: a static file from /files/ (aiohttp's own file
path, no host lookup). Then a burst of 500 new MACs at once: the seconds until all 500
PlunderHosts exist in the API.

The load comes from wrk (Debian's package), a separate process, so the Python server has the
event loop to itself. Run: .venv/bin/python bench/boot_http.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path

import aiohttp
from lightkube import Client

from plunder.api.inventory import PlunderHost
from plunder.boot.service import BootService
from plunder.boot.settings import BootSettings, DhcpSettings, DiscoverySettings
from plunder.k8s import client as k8s_client
from plunder.k8s import crds
from plunder.k8s.resources import resource_for
from plunder.lab import processes
from plunder.lab.plane import start_plane

HOSTS = 1000
BURST = 500
CONCURRENCY = (1, 100, 1000)


def mac(i: int, prefix: str = "52:54:00") -> str:
    return f"{prefix}:{(i >> 16) & 0xFF:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"


def create_hosts(client: Client, namespace: str) -> None:
    resource = resource_for(PlunderHost)
    for i in range(HOSTS):
        client.create(
            resource.from_dict(
                {
                    "apiVersion": PlunderHost.info.api_version,
                    "kind": "PlunderHost",
                    "metadata": {"name": f"host-{i}", "namespace": namespace},
                    "spec": {"bootMACAddress": mac(i)},
                }
            )
        )


WRK_SCRIPT = """
local i = 0
request = function()
  i = (i + 7919) %% %(hosts)d
  local m = string.format("52:54:00:00:%%02x:%%02x", math.floor(i / 256), i %% 256)
  return wrk.format("GET", "/boot.ipxe?mac=" .. m .. "&poll=1")
end
"""


def wrk(url: str, connections: int, seconds: int, script: Path | None) -> float:
    """Requests per second that wrk measured (non-2xx answers make the run fail)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(out)
    return float(match.group(1))


async def burst(service: BootService, client: Client, namespace: str) -> float:
    """Seconds from 500 simultaneous first requests until all 500 hosts exist in the API."""
    resource = resource_for(PlunderHost)
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=BURST)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            url = f"{service.settings.http_base}/boot.ipxe?mac={mac(i, '02:00:00')}"
            async with session.get(url) as response:
                response.raise_for_status()

        await asyncio.gather(*(one(i) for i in range(BURST)))
    while True:
        made = sum(
            1
            for obj in client.list(resource, namespace=namespace)
            if obj.metadata.name.startswith("host-02-00-00")
        )
        if made == BURST:
            return time.monotonic() - started
        await asyncio.sleep(0.05)


async def main(seconds: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        plane = start_plane(work / "plane")
        try:
            client = k8s_client.sync_client(plane.kubeconfig)
            crds.install_plunder_crds(client)
            create_hosts(client, "default")
            files = work / "files"
            files.mkdir()
            (files / "static.ipxe").write_text("#!ipxe\necho a static script of similar size\n")
            service = BootService(
                BootSettings(
                    address=IPv4Address("127.0.0.1"),
                    http_port=processes.free_port(),
                    run_dir=work / "boot",
                    files_dir=files,
                    dhcp=DhcpSettings(mode="off"),
                    # The burst measures how fast creates go, not the bound on discovery.
                    discovery=DiscoverySettings(
                        max_pending=2 * BURST, per_minute=60.0 * BURST, burst=BURST
                    ),
                ),
                plane.kubeconfig,
            )
            await service.start()
            await service.ready.wait()
            script = work / "hosts.lua"
            script.write_text(WRK_SCRIPT % {"hosts": HOSTS})
            base = service.settings.http_base
            print(
                f"boot HTTP benchmark: {service.backend.count()} hosts cached, "
                f"{seconds}s per run, median of {rounds} runs"
            )
            print(f"{'clients':>8} {'iPXE scripts/s':>15} {'static file/s':>14} {'ratio':>6}")
            for connections in CONCURRENCY:
                loop = asyncio.get_running_loop()
                scripts, statics = [], []
                for _ in range(rounds):
                    scripts.append(
                        await loop.run_in_executor(
                            None, wrk, f"{base}/boot.ipxe", connections, seconds, script
                        )
                    )
                    statics.append(
                        await loop.run_in_executor(
                            None, wrk, f"{base}/files/static.ipxe", connections, seconds, None
                        )
                    )
                s, b = statistics.median(scripts), statistics.median(statics)
                print(f"{connections:>8} {s:>15.0f} {b:>14.0f} {s / b:>6.2f}")
            took = await burst(service, client, "default")
            print(
                f"burst: {BURST} new MACs at once -> all {BURST} PlunderHosts exist after "
                f"{took:.1f}s ({service.backend.writes} API writes in all)"
            )
            await service.stop()
        finally:
            plane.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.seconds, arguments.rounds))
