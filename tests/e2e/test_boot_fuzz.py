"""A bounded fuzz run against the boot service's DHCP and TFTP, in a namespace of the test's own.

The boot service runs as in the lab (dnsmasq inside the namespace, full DHCP); a fuzzer inside
the same namespace sends a few thousand malformed DHCP packets and hostile TFTP requests from a
port of the bridge. Afterwards dnsmasq must be the same process (never crashed or restarted),
and a well-formed PXE DISCOVER and TFTP read must still be answered correctly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
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

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FUZZ_COUNT = 3000
FUZZ_SECONDS = 60


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
    fuzzer = await asyncio.create_subprocess_exec(
        *network.in_namespace(
            lab_network,
            [
                sys.executable,
                "-m",
                "tests.e2e.dhcp_fuzzer",
                "--iface",
                "fz0",
                "--server",
                lab_network.ipv4_address,
                "--count",
                str(FUZZ_COUNT),
                "--seconds",
                str(FUZZ_SECONDS),
            ],
        ),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(fuzzer.communicate(), FUZZ_SECONDS + 60)
    assert fuzzer.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    print(f"\nfuzz run: {report}")

    assert report["dhcp_sent"] >= 1000
    assert dnsmasq.pid == pid_before and dnsmasq.starts == 1, "dnsmasq crashed or restarted"
    offer = report["discover"]
    assert offer["answered"], "a well-formed DISCOVER went unanswered after the fuzz run"
    assert offer["file"] == "undionly.kpxe"
    assert IPv4Address(offer["yiaddr"]) in lab_network.ipv4.network
    assert report["tftp_boot_file"] == {"answered": True, "opcode": 3, "bytes": 512}
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
    probe = await asyncio.create_subprocess_exec(
        *network.in_namespace(
            lab_network,
            [
                sys.executable,
                "-m",
                "tests.e2e.dhcp_fuzzer",
                "--iface",
                "fz1",
                "--server",
                lab_network.ipv4_address,
                "--count",
                "0",
            ],
        ),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(probe.communicate(), 60)
    assert probe.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["discover"]["answered"] and report["discover"]["file"] == "undionly.kpxe"
