"""Benchmark: 100,000 malformed DHCP frames and 100,000 hostile HTTP requests at the boot service.

The long version of the bounded fuzz run in CI (tests/e2e/test_boot_fuzz.py). The boot service
runs as in the lab: full DHCP (dnsmasq inside a network namespace the benchmark creates, on a
bridge of its own), its HTTP socket in the same namespace, a real etcd + kube-apiserver behind
it. Two clients inside the namespace play the attacker (tests/e2e/dhcp_fuzzer.py and
tests/e2e/http_fuzzer.py, one after the other).

Printed: what was sent, how fast, what came back (HTTP answers by status class; a 500 would be a
handler that failed on bad input), whether dnsmasq is the same process and the boot service still
ready, and what survived, beside the same probes measured before the fuzz in the same run (a
well-formed PXE DISCOVER, a TFTP read, an iPXE script request, ``/healthz``: answered, and in how
many milliseconds). Also how many PlunderHosts discovery created (bounded by its cap).

Run from the repository, as root: .venv/bin/python bench/boot_fuzz.py [--count 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' fuzzers

from lightkube import Client  # noqa: E402
from tests.e2e.conftest import lab_boot_settings  # noqa: E402
from tests.e2e.fuzzing import dhcp_fuzzer, http_fuzzer, run_in_lab  # noqa: E402

from plunder.api.inventory import PlunderHost  # noqa: E402
from plunder.boot.service import BootService  # noqa: E402
from plunder.k8s import client as k8s_client  # noqa: E402
from plunder.k8s import crds  # noqa: E402
from plunder.k8s.resources import resource_for  # noqa: E402
from plunder.lab import network  # noqa: E402
from plunder.lab.network import LabNetwork  # noqa: E402
from plunder.lab.plane import start_plane  # noqa: E402


def probes(dhcp: dict[str, Any], http: dict[str, Any]) -> dict[str, str]:
    """The well-formed requests' outcomes, as ``answered in N ms`` (or what went wrong)."""

    def shown(probe: dict[str, Any], good: bool) -> str:
        return f"answered in {probe['ms']:.0f} ms" if good else f"FAILED {probe}"

    discover, tftp = dhcp["discover"], dhcp["tftp_boot_file"]
    script, health = http["boot_script"], http["healthz"]
    return {
        "PXE DISCOVER": shown(discover, discover["answered"] and bool(discover.get("file"))),
        "TFTP read": shown(tftp, tftp["answered"] and tftp.get("opcode") == 3),
        "iPXE script": shown(script, script.get("status") == "200"),
        "/healthz": shown(health, health.get("status") == "200"),
    }


async def run(count: int, seconds: float) -> None:
    with tempfile.TemporaryDirectory(prefix="boot-fuzz-") as folder:
        work = Path(folder)
        plane = start_plane(work / "plane")
        octet = 140 + secrets.randbelow(100)
        lab = network.create_network(
            f"plunder-fuzz-{secrets.token_hex(3)}",
            ipv4_cidr=f"172.31.{octet}.1/24",
            ipv6_cidr=f"fd00:31:{octet}::1/64",
        )
        try:
            kube = k8s_client.sync_client(plane.kubeconfig)
            crds.install_plunder_crds(kube)
            service = BootService(
                lab_boot_settings(lab, "full", work / "boot", "default"), plane.kubeconfig
            )
            await service.start()
            try:
                await asyncio.wait_for(service.ready.wait(), 60)
                network.add_veth_port(lab, "fz0", f"{lab.ipv4.network.network_address + 250}/24")
                await fuzz(lab, service, kube, count, seconds)
            finally:
                await service.stop()
        finally:
            network.delete_network(lab)
            plane.stop()


async def fuzz(
    lab: LabNetwork, service: BootService, kube: Client, count: int, seconds: float
) -> None:
    assert service.dnsmasq is not None
    before = probes(
        await run_in_lab(lab, dhcp_fuzzer(lab, "fz0", 0, 1)),
        await run_in_lab(lab, http_fuzzer(lab, 0, 1)),
    )
    pid = service.dnsmasq.pid
    started = time.monotonic()
    dhcp = await run_in_lab(lab, dhcp_fuzzer(lab, "fz0", count, seconds))
    http = await run_in_lab(lab, http_fuzzer(lab, count, seconds))
    took = time.monotonic() - started
    after = probes(dhcp, http)
    hosts = len(list(kube.list(resource_for(PlunderHost), namespace="default")))
    sent = dhcp["dhcp_sent"]
    print(f"boot service fuzz: {took:.0f} s in all")
    print(
        f"  DHCP: {sent} malformed frames in {dhcp['dhcp_seconds']:.0f} s "
        f"({sent / max(dhcp['dhcp_seconds'], 0.1):.0f}/s), "
        f"{dhcp['dhcp_oversized_not_sent']} over the MTU not sent; {dhcp['tftp_sent']} TFTP"
    )
    rate = http["http_sent"] / max(http["http_seconds"], 0.1)
    print(
        f"  HTTP: {http['http_sent']} hostile requests in {http['http_seconds']:.0f} s "
        f"({rate:.0f}/s)"
    )
    print(f"        answers: {http['http_outcomes']}")
    print(f"  TFTP ../../../../etc/passwd: {dhcp['tftp_traversal']}")
    same = service.dnsmasq.pid == pid and service.dnsmasq.starts == 1
    print(
        f"  dnsmasq the same process throughout: {same}; "
        f"boot service ready: {service.ready.is_set()}"
    )
    print(
        f"  PlunderHosts discovery created: {hosts} (cap {service.settings.discovery.max_pending})"
    )
    print(f"  {'probe':14} {'before the fuzz':>24} {'after':>24}")
    for name, outcome in before.items():
        print(f"  {name:14} {outcome:>24} {after[name]:>24}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000, help="of each: DHCP and HTTP")
    parser.add_argument("--seconds", type=float, default=900, help="at most, for each fuzzer")
    arguments = parser.parse_args()
    asyncio.run(run(arguments.count, arguments.seconds))
