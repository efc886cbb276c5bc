"""A bounded fuzz run against the boot service's DHCP and TFTP, in a namespace of the test's own.

The boot service runs as in the lab (dnsmasq inside the namespace, full DHCP); a fuzzer inside
the same namespace sends a few thousand malformed DHCP packets and hostile TFTP requests from a
port of the bridge. Afterwards dnsmasq must be the same process (never crashed or restarted),
and a well-formed PXE DISCOVER and TFTP read must still be answered correctly.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from lightkube import Client

from plunder.boot.service import BootService
from plunder.lab import network
from plunder.lab.network import LabNetwork
from plunder.lab.plane import Plane
from tests.conftest import running
from tests.e2e.conftest import lab_boot_settings
from tests.e2e.fuzzing import dhcp_fuzzer, http_fuzzer, run_in_lab

pytestmark = pytest.mark.e2e

FUZZ_COUNT = 3000
FUZZ_SECONDS = 60
TIMEOUT_S = FUZZ_SECONDS + 120


@pytest.fixture
async def boot_in_lab(
    plane: Plane, kube: Client, namespace: str, lab_network: LabNetwork, tmp_path: Path
) -> AsyncIterator[BootService]:
    service = BootService(
        lab_boot_settings(lab_network, "full", tmp_path / "boot", namespace), plane.kubeconfig
    )
    async with running(service):
        assert service.dnsmasq is not None
        for _ in range(100):  # dnsmasq binds within a moment of starting
            if service.dnsmasq.pid is not None:
                break
            await asyncio.sleep(0.05)
        yield service


async def test_malformed_dhcp_and_tftp_never_stop_the_boot_service(
    boot_in_lab: BootService, lab_network: LabNetwork
) -> None:
    dnsmasq = boot_in_lab.dnsmasq
    assert dnsmasq is not None and dnsmasq.pid is not None
    pid_before = dnsmasq.pid
    network.add_veth_port(
        lab_network, "fz0", f"{lab_network.ipv4.network.network_address + 250}/24"
    )
    report = await run_in_lab(
        lab_network, dhcp_fuzzer(lab_network, "fz0", FUZZ_COUNT, FUZZ_SECONDS), TIMEOUT_S
    )
    print(f"\nfuzz run: {report}")

    assert report["dhcp_sent"] >= 1000
    assert dnsmasq.pid == pid_before and dnsmasq.starts == 1, "dnsmasq crashed or restarted"
    offer = report["discover"]
    assert offer["answered"], "a well-formed DISCOVER went unanswered after the fuzz run"
    assert offer["file"] == "undionly.kpxe"
    assert IPv4Address(offer["yiaddr"]) in lab_network.ipv4.network
    boot_file = report["tftp_boot_file"]
    assert boot_file["answered"] and (boot_file["opcode"], boot_file["bytes"]) == (3, 512)
    assert report["tftp_traversal"]["answered"] and report["tftp_traversal"]["opcode"] == 5
    # and the HTTP side still answers
    assert boot_in_lab.ready.is_set()


async def test_dnsmasq_is_started_again_when_it_dies(
    boot_in_lab: BootService, lab_network: LabNetwork
) -> None:
    dnsmasq = boot_in_lab.dnsmasq
    assert dnsmasq is not None and dnsmasq.pid is not None
    killed = dnsmasq.pid
    os.kill(killed, signal.SIGKILL)
    for _ in range(200):
        if dnsmasq.pid not in (None, killed):
            break
        await asyncio.sleep(0.05)
    assert dnsmasq.pid not in (None, killed) and dnsmasq.starts == 2
    network.add_veth_port(
        lab_network, "fz1", f"{lab_network.ipv4.network.network_address + 251}/24"
    )
    report = await run_in_lab(lab_network, dhcp_fuzzer(lab_network, "fz1", 0), TIMEOUT_S)
    assert report["discover"]["answered"] and report["discover"]["file"] == "undionly.kpxe"


async def test_malformed_http_never_stops_the_boot_service(
    boot_in_lab: BootService, lab_network: LabNetwork
) -> None:
    """Hostile HTTP from a client on the provisioning network: refused, never a crash or a file."""
    report = await run_in_lab(
        lab_network, http_fuzzer(lab_network, FUZZ_COUNT, FUZZ_SECONDS), TIMEOUT_S
    )
    print(f"\nHTTP fuzz run: {report}")
    outcomes = report["http_outcomes"]
    assert report["http_sent"] >= 1000
    assert "500" not in outcomes, f"a handler failed on bad input: {outcomes}"
    assert "traversal-served" not in outcomes, outcomes
    assert "connect-failed" not in outcomes, outcomes
    assert outcomes.get("4xx", 0) > report["http_sent"] // 2, outcomes
    assert report["healthz"]["status"] == "200"
    script = report["boot_script"]
    assert script["status"] == "200" and script["body"].startswith("#!ipxe"), script
    assert boot_in_lab.ready.is_set()
