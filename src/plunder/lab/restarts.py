"""One part of a running lab killed and started again, as its Deployment would restart it.

A Deployment's pod ends with its process (``kill -9``, the OOM killer, a lost node) and is
started again with the same arguments. The lab records each process's command line
(:mod:`plunder.lab.processes`), so :func:`restart` can do the same to the controller, the boot
service and kube-apiserver (etcd keeps the objects), from any process: the chaos runs
(``bench/chaos_lab.py``, ``tests/e2e/test_lab_chaos.py``) and ``plunderctl lab restart``.

A part is back when it answers as ``lab up`` waits for it: the controller's and the boot
service's ``/healthz``, kube-apiserver's ``/readyz``. dnsmasq is not the lab's process but the
boot service's child: it is killed alone, the boot service's supervisor starts it again, and it
is back when a new dnsmasq listens for DHCP.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from plunder.lab import lab, processes
from plunder.lab.pki import PlanePKI
from plunder.lab.plane import admin_ssl_context

CONTROLLER = "controller"
BOOT = "boot"
DNSMASQ = "dnsmasq"
APISERVER = "kube-apiserver"
COMPONENTS = (CONTROLLER, BOOT, DNSMASQ, APISERVER)
"""What :func:`restart` restarts."""

DHCP_PORT = 67


@dataclass(frozen=True)
class Restart:
    """One restart, as it happened."""

    component: str
    stopped: int
    """The pid that was signalled."""
    started: int
    """The pid of the new process."""
    back_after: float
    """Seconds from the signal until the new process answered."""


def restart(
    lab_dir: Path, component: str, sig: signal.Signals = signal.SIGKILL, timeout: float = 120.0
) -> Restart:
    """Send ``sig`` to ``component`` of the lab in ``lab_dir``; return once it answers again.

    Raises:
        processes.StartupError: It does not run, or did not answer within ``timeout``.
    """
    options = lab.recorded_options(lab_dir)
    if options is None:
        raise processes.StartupError(f"no lab in {lab_dir}")
    if component == DNSMASQ:
        return _restart_dnsmasq(lab_dir, sig, timeout)
    begun = time.monotonic()
    stopped, managed = processes.restart_recorded(lab_dir, component, sig)
    processes.wait_until(_answers(lab_dir, component), component, managed, timeout)
    return Restart(component, stopped, managed.pid, time.monotonic() - begun)


def _answers(lab_dir: Path, component: str) -> Callable[[], bool]:
    options = lab.recorded_options(lab_dir)
    assert options is not None
    if component == CONTROLLER:
        return processes.http_ok(f"http://127.0.0.1:{options.controller_port}/healthz")
    if component == APISERVER:
        context = admin_ssl_context(PlanePKI(lab_dir / "pki"))
        return processes.http_ok(f"https://127.0.0.1:{options.ports.apiserver}/readyz", context)
    if component == BOOT:
        network = lab.recorded_network(lab_dir)
        if network is None:
            raise processes.StartupError(f"the lab in {lab_dir} runs no boot service")
        url = f"http://{network.ipv4_address}:{options.boot_port}/healthz"
        return lambda: lab.ready_in_namespace(network.namespace, url)
    raise ValueError(f"not a lab component: {component} (one of {', '.join(COMPONENTS)})")


def dnsmasq_pid(lab_dir: Path) -> int | None:
    """The pid of the boot service's dnsmasq, while it runs."""
    boot = processes.recorded_pid(lab_dir, BOOT)
    if boot is None:
        return None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        if name.endswith("(dnsmasq") and int(rest.split()[1]) == boot:
            return int(stat.parent.name)
    return None


def _listens_for_dhcp(pid: int) -> bool:
    """Whether a UDP socket on port 67 is open in ``pid``'s network namespace."""
    try:
        table = Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(line.split()[1].endswith(f":{DHCP_PORT:04X}") for line in table)


def _restart_dnsmasq(lab_dir: Path, sig: signal.Signals, timeout: float) -> Restart:
    """Kill the boot service's dnsmasq (once it runs: the boot service may be starting)."""

    def serving() -> bool:
        pid = dnsmasq_pid(lab_dir)
        return pid is not None and _listens_for_dhcp(pid)

    processes.wait_until(serving, "the boot service's dnsmasq", timeout=timeout)
    stopped = dnsmasq_pid(lab_dir)
    assert stopped is not None
    begun = time.monotonic()
    os.kill(stopped, sig)
    started: list[int] = []

    def back() -> bool:
        pid = dnsmasq_pid(lab_dir)
        if pid is None or pid == stopped or not _listens_for_dhcp(pid):
            return False
        started.append(pid)
        return True

    processes.wait_until(back, "dnsmasq", timeout=timeout)
    return Restart(DNSMASQ, stopped, started[-1], time.monotonic() - begun)
