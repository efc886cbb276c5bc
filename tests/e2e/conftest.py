"""Fixtures of the virtual bare-metal lab: a namespace of the test's own, and its libvirt.

CI runs as root with the lab's Debian packages installed (scripts/setup.sh); a machine without
them fails these tests with the reason rather than skipping them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from plunder.boot.settings import BootSettings, DhcpMode, DhcpSettings
from plunder.lab import network, processes
from plunder.lab.hypervisor import Hypervisor
from plunder.lab.network import LabNetwork

REQUIRED_PROGRAMS = ("ip", "unshare", "libvirtd", "virsh", "qemu-system-x86_64", "qemu-img")
IPXE_BINARIES = (Path("/usr/lib/ipxe/undionly.kpxe"), Path("/usr/lib/ipxe/ipxe.efi"))


LAB_NICENESS = 10
"""The CPU priority (nice) of the process that runs the e2e tests, and so of all it starts."""


@pytest.fixture(scope="session", autouse=True)
def lab_yields_the_cpu() -> None:
    """Run the lab (its QEMU hosts, libvirtd, planes, controllers) at a lower CPU priority.

    `make test` runs the integration and unit tests beside the e2e tests (tests/conftest.py's
    ``LabScheduling``). Some of those assert timing (a boot answered within 2 s under a flood of new
    MACs, a stop within 15 s), and an emulated host takes every cycle it is given; at nice 10
    they get the CPU first when they want it. The e2e tests' own waits are generous (their
    hosts are emulated), and the clusters' kubeadm timeouts are made for slow hosts.
    Processes inherit the priority, so everything the lab starts from here on has it.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current < LAB_NICENESS:
        os.setpriority(os.PRIO_PROCESS, 0, LAB_NICENESS)


def _require_lab_host() -> None:
    if os.geteuid() != 0:
        pytest.fail("the VM lab needs root (network namespaces, bridges, libvirtd)")
    missing = [program for program in REQUIRED_PROGRAMS if shutil.which(program) is None]
    missing += [str(path) for path in IPXE_BINARIES if not path.exists()]
    if missing:
        pytest.fail(f"the VM lab needs {', '.join(missing)} (see the lab's Debian packages)")


@pytest.fixture
def lab_network() -> Iterator[LabNetwork]:
    """A fresh namespace + bridge with a random name and subnet; deleted afterwards."""
    _require_lab_host()
    octet = 140 + secrets.randbelow(100)  # 172.31.140-239.0/24: never the default lab's .99
    net = network.create_network(
        f"plunder-e2e-{secrets.token_hex(3)}",
        ipv4_cidr=f"172.31.{octet}.1/24",
        ipv6_cidr=f"fd00:31:{octet}::1/64",
    )
    yield net
    leftovers = subprocess.run(
        ["ip", "netns", "pids", net.namespace], capture_output=True, text=True, check=False
    ).stdout.split()
    network.delete_network(net)
    assert not leftovers, f"processes left in {net.namespace}: {leftovers}"


@pytest.fixture
def lab_hypervisor(
    lab_network: LabNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hypervisor]:
    """The lab's own libvirt daemon; stopped afterwards, with every guest.

    Its folder is a short one of its own, not under the test's ``tmp_path``: libvirt's socket
    path under it must fit in 107 bytes, and ``tmp_path`` holds the test's name (up to 30
    characters) and, under xdist, the worker's folder too.
    """
    hypervisor = Hypervisor.start(lab_network, tmp_path_factory.mktemp("hv"))
    yield hypervisor
    hypervisor.stop()
    assert not processes.is_running(hypervisor.daemon.pid), "libvirtd still runs"
    run_dir = str(hypervisor.run_dir)
    strays = [line for line in _processes_mentioning(run_dir) if "qemu-system" in line]
    assert not strays, f"QEMU left running: {strays}"


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(f"{cmdline.parent.name}: {command[:200]}")
    return found


def lab_boot_settings(
    net: LabNetwork, mode: DhcpMode, run_dir: Path, namespace: str
) -> BootSettings:
    """The boot service on the test's lab network, as the lab runs it."""
    return BootSettings(
        address=IPv4Address(net.ipv4_address),
        http_port=8080,
        run_dir=run_dir,
        namespace=namespace,
        dhcp=DhcpSettings(
            mode=mode,
            interface=net.bridge,
            network=IPv4Network(net.ipv4.network),
            netns=net.namespace,
        ),
    )
