"""Run dnsmasq, keep it running, and fold its log into ours.

dnsmasq runs in the foreground as our child (inside the provisioning namespace when there is
one). If it exits it is started again after a growing pause; a new configuration restarts it
(SIGHUP makes dnsmasq re-read only its hosts and leases files, not its configuration).

It never outlives us: the kernel kills it when the boot service ends, however it ends (a
parent-death signal, which dnsmasq keeps only because its configuration keeps its user and
group: a change of credentials clears it, as the lab's chaos run showed). Without
that, a boot service killed with SIGKILL left its dnsmasq running, and the next one started a
second dnsmasq beside it on the same interface (``bind-interfaces`` lets both bind ports 67 and
69): two DHCP servers handing out one range from two lease tables (found for the lab's chaos run).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import shutil
import signal
from pathlib import Path

from plunder.boot.dhcp.config import ARCH_BOOTS, CHAIN_FILE, pxe_stem, render_dnsmasq_conf
from plunder.boot.ipxe import scripts
from plunder.boot.settings import BootSettings

log = logging.getLogger(__name__)
dnsmasq_log = logging.getLogger("plunder.boot.dnsmasq")

_RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)


def prepare_tftp_root(settings: BootSettings, tftp_root: Path) -> None:
    """Copy Debian's iPXE binaries in, also under the ``<stem>.0`` name PXE menus ask for.

    And the chain script iPXE clients load (:data:`plunder.boot.dhcp.config.CHAIN_FILE`).
    """
    tftp_root.mkdir(parents=True, exist_ok=True)
    for arch in ARCH_BOOTS:
        source = settings.ipxe_dir / arch.boot_file
        for name in (arch.boot_file, f"{pxe_stem(arch.boot_file)}.0"):
            shutil.copyfile(source, tftp_root / name)
    (tftp_root / CHAIN_FILE).write_text(scripts.chain_script(settings.http_base))


_PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl
"""Looked up here, not in the forked child, which should take no loader locks."""


def _die_with_parent(parent: int) -> None:
    """In the child before exec: SIGKILL when ``parent`` ends (kept across exec).

    If the parent ended already, before the request was made, exit at once.
    """
    if _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(1)


class DnsmasqSupervisor:
    """One dnsmasq, configured from the settings, restarted when it stops."""

    def __init__(self, settings: BootSettings) -> None:
        self._settings = settings
        self._dir = settings.run_dir / "dnsmasq"
        self.conf_path = self._dir / "dnsmasq.conf"
        self.leases_path = self._dir / "leases"
        self.tftp_root = self._dir / "tftp"
        self._process: asyncio.subprocess.Process | None = None
        self._restart = asyncio.Event()
        self.starts = 0
        """How many times dnsmasq was started (restarts included)."""

    def write_config(self) -> bool:
        """Write dnsmasq.conf and the TFTP root; True if the configuration changed."""
        self._dir.mkdir(parents=True, exist_ok=True)
        prepare_tftp_root(self._settings, self.tftp_root)
        self.leases_path.touch()
        text = render_dnsmasq_conf(self._settings, str(self.leases_path), str(self.tftp_root))
        if self.conf_path.exists() and self.conf_path.read_text() == text:
            return False
        self.conf_path.write_text(text)
        return True

    def argv(self) -> list[str]:
        """The command line, wrapped in ``ip netns exec`` when the network is a namespace."""
        command = [
            self._settings.dhcp.dnsmasq,
            "--keep-in-foreground",
            "--pid-file",
            f"--conf-file={self.conf_path}",
        ]
        netns = self._settings.dhcp.netns
        return ["ip", "netns", "exec", netns, *command] if netns else command

    def reload(self) -> None:
        """Apply a changed configuration by restarting dnsmasq."""
        if self.write_config():
            self._restart.set()

    @property
    def pid(self) -> int | None:
        """Dnsmasq's pid while it runs."""
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    async def _fold_log(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            dnsmasq_log.info("%s", line.decode(errors="replace").rstrip())

    async def run(self) -> None:
        """Run dnsmasq until cancelled; start it again whenever it exits."""
        self.write_config()
        failures = 0
        while True:
            self._restart.clear()
            self._process = await asyncio.create_subprocess_exec(
                *self.argv(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            )
            self.starts += 1
            assert self._process.stdout is not None
            folding = asyncio.create_task(self._fold_log(self._process.stdout))
            exited = asyncio.create_task(self._process.wait())
            restart = asyncio.create_task(self._restart.wait())
            try:
                done, _ = await asyncio.wait({exited, restart}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if self._process.returncode is None:
                    self._process.terminate()
                    await self._process.wait()
                restart.cancel()
                await folding
            if restart in done:
                log.info("dnsmasq restarted for a new configuration")
                failures = 0
                continue
            delay = _RESTART_BACKOFF[min(failures, len(_RESTART_BACKOFF) - 1)]
            failures += 1
            log.warning(
                "dnsmasq exited with %s; starting it again in %.1fs",
                self._process.returncode,
                delay,
            )
            await asyncio.sleep(delay)
