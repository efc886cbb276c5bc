"""The boot service's dnsmasq ends with the boot service, even one killed with SIGKILL.

Found for the lab's chaos run (bench/chaos_lab.py): a boot service killed with ``kill -9`` left
its dnsmasq running, and the next boot service started a second one on the same interface; both
bound the DHCP and TFTP ports (``bind-interfaces``) and answered from lease tables of their own.
The supervisor runs here in a process of its own, as in ``plunderctl boot``: with a stand-in for
dnsmasq that only records its pid and sleeps, and with the real dnsmasq on a bridge in a network
namespace of the test's own (dnsmasq changes its group as it starts, which a parent-death signal
does not survive unless the group stays the same).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plunder.lab import network, processes
from plunder.lab.network import LabNetwork

SUPERVISE = """
import asyncio, sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from plunder.boot.dhcp.supervisor import DnsmasqSupervisor
from plunder.boot.settings import BootSettings, DhcpSettings

run_dir, program, address, network, netns = sys.argv[1:]
dhcp = DhcpSettings(
    interface="br0" if netns else "lo",
    network=IPv4Network(network),
    dnsmasq=program,
    netns=netns or None,
    ipv6_router_advertisements=False,
)
settings = BootSettings(address=IPv4Address(address), run_dir=Path(run_dir), dhcp=dhcp)
asyncio.run(DnsmasqSupervisor(settings).run())
"""


def supervise(run_dir: Path, program: str, netns: LabNetwork | None) -> subprocess.Popen[bytes]:
    """The supervisor in a process of its own (full DHCP on the namespace's bridge, if given)."""
    address, network = ("127.0.0.1", "127.0.0.0/8")
    if netns is not None:
        address, network = netns.ipv4_address, str(netns.ipv4.network)
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            SUPERVISE,
            str(run_dir),
            program,
            address,
            network,
            netns.namespace if netns else "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def dnsmasq_children(parent: int) -> list[int]:
    """The pids of the dnsmasq processes whose parent is ``parent``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if name.endswith("(dnsmasq") and int(rest.split()[1]) == parent:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def bridge() -> Iterator[LabNetwork]:
    net = network.create_network(
        f"plunder-dq-{secrets.token_hex(3)}", "172.31.251.1/24", "fd00:251::1/64"
    )
    yield net
    network.delete_network(net)


def test_the_real_dnsmasq_does_not_outlive_a_killed_boot_service(
    bridge: LabNetwork, tmp_path: Path
) -> None:
    supervisor = supervise(tmp_path / "run", "dnsmasq", bridge)
    dnsmasq: list[int] = []
    try:
        processes.wait_until(lambda: len(dnsmasq_children(supervisor.pid)) == 1, "dnsmasq")
        (child,) = dnsmasq_children(supervisor.pid)
        dnsmasq.append(child)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait()
        processes.wait_until(lambda: not processes.is_running(child), "dnsmasq to end", timeout=10)
    finally:
        supervisor.kill()
        for pid in dnsmasq:
            if processes.is_running(pid):
                os.kill(pid, signal.SIGKILL)


def test_dnsmasq_does_not_outlive_a_killed_boot_service(tmp_path: Path) -> None:
    pid_file = tmp_path / "dnsmasq.pid"
    fake = tmp_path / "fake-dnsmasq"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 300\n")
    fake.chmod(0o755)
    supervisor = supervise(tmp_path / "run", str(fake), None)
    try:
        processes.wait_until(
            lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(), "dnsmasq"
        )
        dnsmasq = int(pid_file.read_text())
        assert processes.is_running(dnsmasq)
        supervisor.send_signal(signal.SIGKILL)
        supervisor.wait()
        processes.wait_until(
            lambda: not processes.is_running(dnsmasq), "dnsmasq to end", timeout=10
        )
    finally:
        supervisor.kill()
        if pid_file.exists() and processes.is_running(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
