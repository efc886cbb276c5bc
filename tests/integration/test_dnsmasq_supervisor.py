"""The boot service's dnsmasq ends with the boot service, even one killed with SIGKILL.

Found for the lab's chaos run (bench/chaos_lab.py): a boot service killed with ``kill -9`` left
its dnsmasq running, and the next boot service started a second one on the same interface; both
bound the DHCP and TFTP ports (``bind-interfaces``) and answered from lease tables of their own.
The supervisor runs here in a process of its own, as in ``plunderctl boot``, with a stand-in for
dnsmasq that only records its pid and sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from plunder.lab import processes

SUPERVISE = """
import asyncio, sys
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from plunder.boot.dhcp.supervisor import DnsmasqSupervisor
from plunder.boot.settings import BootSettings, DhcpSettings

dhcp = DhcpSettings(
    mode="proxy", interface="lo", network=IPv4Network("127.0.0.0/8"), dnsmasq=sys.argv[2]
)
settings = BootSettings(address=IPv4Address("127.0.0.1"), run_dir=Path(sys.argv[1]), dhcp=dhcp)
asyncio.run(DnsmasqSupervisor(settings).run())
"""


def test_dnsmasq_does_not_outlive_a_killed_boot_service(tmp_path: Path) -> None:
    pid_file = tmp_path / "dnsmasq.pid"
    fake = tmp_path / "fake-dnsmasq"
    fake.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 300\n")
    fake.chmod(0o755)
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISE, str(tmp_path / "run"), str(fake)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
