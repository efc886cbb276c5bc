"""The installer's last step: fetch the host's NoCloud seed from the boot service, report done.

The same steps end a preseed install (``late_command``, in the Debian installer's busybox shell
with GNU wget, the target mounted at ``/target``) and a kickstart install (``%post``, chrooted
into the target, with curl). They mirror what the agent does after writing an image:

- The per-boot token is read from the kernel command line (``plunder.token=``), never written
  into the answer file: both installers keep their answer file on the installed disk
  (``/var/log/installer/cdebconf``, ``/root/original-ks.cfg``) and in their logs.
- meta-data, user-data (the bootstrap Secret), vendor-data (cloud-init's phone home, which moves
  the host to ``provisioned``) and, for a static address, network-config are written to
  ``/var/lib/cloud/seed/nocloud``; user-data and vendor-data stay readable by root only. Every
  fetch must succeed, or the command fails and the installer stops with its error screen.
- cloud-init then owns the installed OS's network, as on the image path: the installer's own
  configuration of the interface is dropped (``handover``), so the two never fight over it.
- ``phase=done`` to the agent's status endpoint finishes the ``writing`` phase, so the host's
  next network boot goes to its disk instead of into the installer again.

No step echoes what it fetches, and the commands contain no backslashes, which the Debian
installer's shell-based ``debconf-set-selections`` would pass through ``echo``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from plunder.boot.installer.target import InstallTarget

SEED_DIR = "/var/lib/cloud/seed/nocloud"
TOKEN_PARAMETER = "plunder.token"


@dataclass(frozen=True)
class Shell:
    """How one installer's environment fetches and posts, and where the target is mounted.

    ``get`` and ``post`` are shell function bodies: ``get NAME FILE`` writes the cloud-init
    item NAME to FILE, ``post DATA`` posts DATA to the status endpoint; both see ``$T`` (the
    token) and ``$U`` (the host's agent API URL).
    """

    root: str
    get: str
    post: str
    handover: tuple[str, ...]


WGET = Shell(
    root="/target",
    get='/usr/bin/wget -q --header="Authorization: Bearer $T" -O "$2" "$U/cloud-init/$1"',
    post='/usr/bin/wget -q -O /dev/null --header="Authorization: Bearer $T" '
    '--post-data="$1" "$U/status"',
    # Debian: netcfg wrote the interface into /etc/network/interfaces; cloud-init writes its
    # own into interfaces.d/50-cloud-init.
    handover=(
        "echo 'auto lo' > /target/etc/network/interfaces",
        "echo 'iface lo inet loopback' >> /target/etc/network/interfaces",
        "echo 'source /etc/network/interfaces.d/*' >> /target/etc/network/interfaces",
    ),
)
"""The Debian installer: GNU wget (its busybox wget cannot send headers), target at /target."""

CURL = Shell(
    root="",
    get='curl -fsS -H "Authorization: Bearer $T" -o "$2" "$U/cloud-init/$1"',
    post='curl -fsS -o /dev/null -H "Authorization: Bearer $T" --data-binary "$1" "$U/status"',
    # RHEL: anaconda wrote NetworkManager keyfiles for the installer's interface.
    handover=("rm -f /etc/NetworkManager/system-connections/*.nmconnection",),
)
"""Kickstart ``%post`` (chrooted into the installed RHEL, where curl is part of @core)."""


def seed_commands(target: InstallTarget, shell: Shell) -> list[str]:
    """The shell commands of the last step, in order (each a single line).

    Args:
        target: The host being installed.
        shell: The installer environment the commands run in.

    Returns:
        Commands to run under ``sh -e`` (joined by ``;`` for preseed, by newlines for %post).
    """
    seed = f"{shell.root}{SEED_DIR}"
    items = ["meta-data", "user-data", "vendor-data"]
    if target.static is not None:
        items.append("network-config")  # DHCP: no network-config (the endpoint answers 404)
    return [
        f"for w in $(cat /proc/cmdline); do case $w in {TOKEN_PARAMETER}=*) "
        f"T=${{w#{TOKEN_PARAMETER}=}};; esac; done",
        'test -n "$T"',
        f"U={target.server}/agent/v1/{target.mac}",
        f"get() {{ {shell.get}; }}",
        f"post() {{ {shell.post}; }}",
        f"mkdir -p {seed}",
        f"for f in {' '.join(items)}; do (umask 077; get $f {seed}/$f); done",
        f"chmod 0644 {seed}/meta-data" + (f" {seed}/network-config" if target.static else ""),
        *shell.handover,
        "post phase=done",
    ]


def ssh_commands(target: InstallTarget, shell: Shell) -> list[str]:
    """Commands that give root the host's SSH keys (each key quoted for the shell)."""
    if not target.ssh_authorized_keys:
        return []
    folder = f"{shell.root}/root/.ssh"
    return [
        f"mkdir -p -m 0700 {folder}",
        *(
            f"echo {shlex.quote(key)} >> {folder}/authorized_keys"
            for key in target.ssh_authorized_keys
        ),
        f"chmod 0600 {folder}/authorized_keys",
    ]
