"""Starting, watching and stopping the lab's background processes.

Every process gets its own log file and a pid file beside it, and its own session, so that
``plunderctl lab up`` can return while the processes go on, and ``lab down`` (another process)
can find and stop them. Its command line is recorded too (``<name>.argv.json``), so that it can
be killed and started again with the same arguments, as its Deployment would restart it
(:func:`restart_recorded`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class StartupError(RuntimeError):
    """A process did not become ready in time."""


@dataclass(frozen=True)
class Managed:
    """A process started by the lab: its name, pid and log."""

    name: str
    pid: int
    log: Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a TCP port on loopback can be listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers do: a port whose old connections linger in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def start(
    name: str,
    argv: Sequence[str],
    run_dir: Path,
    env: Mapping[str, str] | None = None,
) -> Managed:
    """Start ``argv`` in its own session, logging to ``<run_dir>/<name>.log``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - argv is built by the lab, not from input
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    (run_dir / f"{name}.pid").write_text(str(process.pid))
    (run_dir / f"{name}.argv.json").write_text(json.dumps({"argv": list(argv), "env": env or {}}))
    return Managed(name, process.pid, log_path)


def restart_recorded(
    run_dir: Path, name: str, sig: signal.Signals = signal.SIGKILL, grace: float = 15.0
) -> tuple[int, Managed]:
    """Send ``sig`` to the recorded process ``name``; once it is gone, start it again.

    Only that process is signalled, not its session: what it started must end by itself (as
    the boot service's dnsmasq does). One that is still there ``grace`` seconds after a gentler
    signal gets SIGKILL, as a kubelet does after a pod's grace period. It is started again with
    its recorded command line and extra environment, logging to the same file. Returns the pid
    that was stopped and the new process.

    Raises:
        StartupError: No such process was recorded, or it did not end even after SIGKILL.
    """
    pid = recorded_pid(run_dir, name)
    command_file = run_dir / f"{name}.argv.json"
    if pid is None or not command_file.exists():
        raise StartupError(f"{name}: no running process recorded in {run_dir}")
    command = json.loads(command_file.read_text())
    for signalled in dict.fromkeys((sig, signal.SIGKILL)):
        os.kill(pid, signalled)
        deadline = time.monotonic() + grace
        while is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not is_running(pid):
            return pid, start(name, command["argv"], run_dir, command["env"])
    raise StartupError(f"{name} (pid {pid}) still runs {grace:.0f}s after SIGKILL")


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie of ours is reaped and counts as gone)."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        finished = 0
    if finished == pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and waits to be reaped by a parent that is not us."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def stop(pid: int, timeout: float = 15.0, group: bool = True) -> None:
    """SIGTERM the process (its whole session, with ``group``), SIGKILL it after ``timeout``.

    ``group=False`` for a process that does not lead its group (one a daemon forked).
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not is_running(pid):
                return
            time.sleep(0.05)


def stop_recorded(run_dir: Path, name: str) -> bool:
    """Stop the process whose pid file is ``<run_dir>/<name>.pid``; False if none was running."""
    pid_file = run_dir / f"{name}.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    running = is_running(pid)
    if running:
        stop(pid)
    pid_file.unlink()
    return running


def recorded_pid(run_dir: Path, name: str) -> int | None:
    """The pid in ``<run_dir>/<name>.pid`` if that process still runs."""
    pid_file = run_dir / f"{name}.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text())
    return pid if is_running(pid) else None


def wait_until(
    ready: Callable[[], bool],
    what: str,
    managed: Managed | None = None,
    timeout: float = 60.0,
    interval: float = 0.1,
) -> None:
    """Poll ``ready`` until it is true; fail early if ``managed`` exits, with its log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if managed is not None and not is_running(managed.pid):
            raise StartupError(f"{what}: {managed.name} exited:\n{_tail(managed.log)}")
        time.sleep(interval)
    tail = _tail(managed.log) if managed else ""
    raise StartupError(f"{what}: not ready after {timeout:.0f}s\n{tail}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def http_ok(url: str, context: ssl.SSLContext | None = None) -> Callable[[], bool]:
    """A readiness check: GET ``url`` answers 200."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return check
