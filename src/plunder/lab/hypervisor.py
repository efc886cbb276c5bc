"""A private libvirt daemon per lab, whose guests' NICs join the lab's bridge.

Lab hosts are libvirt domains so that both BMC emulators (sushy-tools for Redfish, virtualbmc
for IPMI) can drive them. But a test's lab and a person's lab may run at the same time, each with
its own namespace and bridge, so each lab needs its own libvirt:

- *Session* mode (``qemu:///session`` with ``XDG_*`` pointing into a run dir) is not open to us:
  libvirtd run as root is always the privileged daemon, and an unprivileged one could only reach
  a bridge through the setuid ``qemu-bridge-helper`` and a host-wide ``/etc/qemu/bridge.conf``.
- The privileged daemon's directories are fixed (``/etc/libvirt``, ``/run/libvirt``,
  ``/var/lib/libvirt``, ``/var/cache/libvirt``, ``/var/log/libvirt``). So it is started in a
  private mount namespace where each of them is a bind mount of a directory under the lab's run
  dir, and (via ``ip netns exec``) inside the lab's network namespace, so the taps it creates
  land there and ``<source bridge='br0'/>`` names the lab's bridge. Its sockets appear in the run
  dir, and clients outside both namespaces (virsh, sushy-tools) connect with
  ``qemu:///system?socket=<run dir>/libvirt/run/libvirt-sock``.
- The daemon's ``qemu.conf`` runs QEMU as root with no security driver and no cgroups, and
  writes QEMU's output to files itself (no virtlogd); the system D-Bus is hidden from it, so it
  neither registers guests with a host's systemd-machined nor touches a host's firewalld.

Nothing of this touches the host's own libvirt, if it has one. :func:`stop_hypervisor` needs
only the run dir, so another process (``plunderctl lab down``) can stop what one started.
"""

from __future__ import annotations

import shlex
import subprocess
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from plunder.lab import network, processes
from plunder.lab.network import LabNetwork

DAEMON = "libvirtd"
"""The process name in the run dir (``libvirtd.log``, ``libvirtd.pid``)."""

SYSTEM_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
"""The privileged daemon's directories, by the name of their stand-in under the run dir."""

SOCKET_PATH_MAX = 107
"""The longest path a unix socket can be connected to (sun_path is 108 bytes with its NUL)."""

LIBVIRTD_CONF = """\
# Written by plunder's lab: only root, on the unix sockets in this lab's run dir.
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
log_outputs = "3:stderr"
"""

QEMU_CONF = """\
# Written by plunder's lab: QEMU as root, unconfined, no cgroups, output to files (no virtlogd).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
stdio_handler = "file"
"""

NO_DBUS = {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/nonexistent/plunder-lab-has-no-dbus"}


class HypervisorError(RuntimeError):
    """The lab's libvirt could not be started, or a virsh command failed."""


def libvirt_dir(run_dir: Path) -> Path:
    """Where the daemon's directories live under the lab's run dir."""
    return run_dir / "libvirt"


def socket_path(run_dir: Path) -> Path:
    """The daemon's read-write socket, as seen from outside its namespaces."""
    return libvirt_dir(run_dir) / "run" / "libvirt-sock"


def uri_for(run_dir: Path) -> str:
    """The libvirt URI of the daemon whose run dir is ``run_dir``."""
    socket = urllib.parse.quote(str(socket_path(run_dir).absolute()), safe="/")
    return f"qemu:///system?socket={socket}"


def virsh(uri: str, *args: str, check: bool = True) -> str:
    """Run ``virsh -c uri args``; return its output.

    Args:
        uri: The daemon's URI.
        *args: The virsh command and its arguments.
        check: Raise when virsh fails (else return what it wrote).

    Raises:
        HypervisorError: virsh failed, with its message.
    """
    result = subprocess.run(  # noqa: S603 - argv is built here, not taken from input
        ["virsh", "--quiet", "-c", uri, *args], capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise HypervisorError(f"virsh {shlex.join(args)}: {result.stderr.strip()}")
    return result.stdout


@dataclass(frozen=True)
class Hypervisor:
    """A running libvirt daemon that serves one lab network."""

    network: LabNetwork
    run_dir: Path
    daemon: processes.Managed

    @property
    def uri(self) -> str:
        """The URI a client such as virsh or sushy-tools uses."""
        return uri_for(self.run_dir)

    @classmethod
    def start(cls, net: LabNetwork, run_dir: Path, timeout: float = 60.0) -> Hypervisor:
        """Start a libvirt daemon for ``net`` with its state under ``run_dir``.

        Args:
            net: The lab network; guests' bridge interfaces name its bridge.
            run_dir: A directory of this lab's own (created if missing).
            timeout: How long the daemon may take to answer.

        Raises:
            HypervisorError: A daemon already runs for this run dir, or the socket path is too
                long.
            processes.StartupError: The daemon exited or did not answer in time.
        """
        run_dir = run_dir.absolute()
        if processes.recorded_pid(run_dir, DAEMON) is not None:
            raise HypervisorError(f"a libvirt daemon already runs for {run_dir}")
        _check_socket_path(run_dir)
        _write_config(libvirt_dir(run_dir))
        daemon = processes.start(DAEMON, _daemon_argv(net, run_dir), run_dir, env=NO_DBUS)
        hypervisor = cls(net, run_dir, daemon)
        try:
            processes.wait_until(hypervisor.answers, "libvirt daemon", daemon, timeout=timeout)
        except processes.StartupError:
            stop_hypervisor(run_dir)
            raise
        return hypervisor

    def answers(self) -> bool:
        """Whether the daemon answers on its socket."""
        if not socket_path(self.run_dir).exists():
            return False
        return bool(virsh(self.uri, "uri", check=False).strip())

    def virsh(self, *args: str) -> str:
        """Run a virsh command against this daemon; return its output."""
        return virsh(self.uri, *args)

    def stop(self) -> None:
        """Stop every guest, then the daemon (see :func:`stop_hypervisor`)."""
        stop_hypervisor(self.run_dir)


def stop_hypervisor(run_dir: Path) -> None:
    """Stop the daemon of ``run_dir`` and everything it started; safe to call twice.

    Guests are destroyed and undefined (with their UEFI variables) while the daemon still
    answers; then the daemon is stopped; then any QEMU it left behind (the daemon was killed,
    say) is stopped by the pid file libvirt keeps for it. A guest's tap device goes with its QEMU.
    """
    run_dir = run_dir.absolute()
    if processes.recorded_pid(run_dir, DAEMON) is not None:
        _remove_domains(uri_for(run_dir))
    processes.stop_recorded(run_dir, DAEMON)
    for pid_file in (libvirt_dir(run_dir) / "run" / "qemu").glob("*.pid"):
        _stop_qemu(pid_file)


def _remove_domains(uri: str) -> None:
    names = virsh(uri, "list", "--all", "--name", check=False).split()
    for name in names:
        virsh(uri, "destroy", name, check=False)
        virsh(uri, "undefine", name, "--nvram", check=False)


def _stop_qemu(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
        command = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, ValueError):
        return  # gone already, or not a pid
    if command.startswith("qemu-system"):  # not a pid reused by something else
        # libvirt daemonizes QEMU: it does not lead a process group of its own.
        processes.stop(pid, timeout=5.0, group=False)


def _check_socket_path(run_dir: Path) -> None:
    longest = libvirt_dir(run_dir) / "run" / "libvirt-admin-sock"
    if len(str(longest)) > SOCKET_PATH_MAX:
        raise HypervisorError(
            f"run dir {run_dir} is too deep: the libvirt socket path {longest} would exceed "
            f"{SOCKET_PATH_MAX} bytes; choose a shorter run dir"
        )


def _write_config(root: Path) -> None:
    for name in SYSTEM_DIRS:
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
    (root / "etc" / "qemu.conf").write_text(QEMU_CONF)


def _daemon_argv(net: LabNetwork, run_dir: Path) -> list[str]:
    """``libvirtd`` in the lab's network namespace and a private mount namespace of its own."""
    return network.in_namespace(
        net,
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", _mount_script(run_dir)],
    )


def _mount_script(run_dir: Path) -> str:
    root = libvirt_dir(run_dir)
    lines: list[Sequence[str]] = []
    for name, target in SYSTEM_DIRS.items():
        # The mount points are the ones Debian's libvirt packages create; make sure they exist.
        lines.append(["mkdir", "-p", target])
        lines.append(["mount", "--bind", str(root / name), target])
    lines.append(
        ["exec", "libvirtd", "--config", "/etc/libvirt/libvirtd.conf"]
        + ["--pid-file", "/run/libvirt/libvirtd.pid"]
    )
    return "\n".join(shlex.join(line) for line in lines)
