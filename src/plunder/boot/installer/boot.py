"""How a host boots into its installer: the kernel, initrd and command line iPXE is given.

Debian's installer comes from its netboot package (``linux`` and ``initrd.gz``, published by
the lab under ``files/installer/debian/``); its command line asks for a fully automatic install
from the host's preseed URL. A RHEL installer cannot be built from Debian's packages: an
operator publishes ``vmlinuz``, ``initrd.img`` and the install tree (``inst.repo``) under
``files/installer/rhel/``; nothing here checks that tree.

Both command lines carry the per-boot token twice: in the answer file's URL (the installer
fetches it without headers) and as ``plunder.token=`` for the answer file's last step, which
reads it from ``/proc/cmdline`` (see :mod:`plunder.boot.installer.seed`).
"""

from __future__ import annotations

from plunder.api.common import DeploymentType
from plunder.boot.installer.seed import TOKEN_PARAMETER
from plunder.boot.installer.target import InstallTarget
from plunder.boot.ipxe.scripts import BootDecision

DEBIAN_KERNEL = "installer/debian/linux"
DEBIAN_INITRD = "installer/debian/initrd.gz"
RHEL_KERNEL = "installer/rhel/vmlinuz"
RHEL_INITRD = "installer/rhel/initrd.img"
RHEL_TREE = "installer/rhel/"

ANSWER_FILES: dict[DeploymentType, str] = {
    "preseed": "preseed.cfg",
    "kickstart": "kickstart.cfg",
}


def answer_file_url(target: InstallTarget, kind: DeploymentType, token: str) -> str:
    """Where the installer fetches its answer file (the token in the query: no headers)."""
    return f"{target.server}/installer/v1/{target.mac}/{ANSWER_FILES[kind]}?token={token}"


def _debian_cmdline(target: InstallTarget, token: str) -> str:
    bootif = "01-" + target.mac.replace(":", "-")
    return " ".join(
        [
            "auto=true",
            "priority=critical",
            f"url={answer_file_url(target, 'preseed', token)}",
            "interface=auto",
            f"BOOTIF={bootif}",
            f"hostname={target.hostname}",
            f"domain={target.domain}",
            "netcfg/dhcp_timeout=60",
            # A provisioning network need not route anywhere: don't stop to ask before the
            # preseed (which would answer it) is fetched.
            "netcfg/no_default_route=true",
            f"netcfg/get_nameservers={target.nameservers[0]}",  # one: no spaces here
            f"{TOKEN_PARAMETER}={token}",
            "console=ttyS0,115200n8",
            "---",
            "console=ttyS0,115200n8",
        ]
    )


def _rhel_cmdline(target: InstallTarget, token: str, files_base: str) -> str:
    # The installer itself takes DHCP on the provisioning network; the kickstart's `network`
    # line configures the installed system.
    return " ".join(
        [
            f"inst.ks={answer_file_url(target, 'kickstart', token)}",
            f"inst.repo={files_base}/{RHEL_TREE}",
            "ip=dhcp",
            f"{TOKEN_PARAMETER}={token}",
            "inst.text",
            "console=ttyS0,115200n8",
        ]
    )


def boot_decision(
    target: InstallTarget, kind: DeploymentType, files_base: str, token: str
) -> BootDecision:
    """Boot the installer of ``kind`` for ``target``."""
    if kind == "preseed":
        return BootDecision(
            "kernel",
            "provisioning; booting the Debian installer (preseed)",
            kernel=f"{files_base}/{DEBIAN_KERNEL}",
            initrd=f"{files_base}/{DEBIAN_INITRD}",
            cmdline=_debian_cmdline(target, token),
        )
    return BootDecision(
        "kernel",
        "provisioning; booting the RHEL installer (kickstart)",
        kernel=f"{files_base}/{RHEL_KERNEL}",
        initrd=f"{files_base}/{RHEL_INITRD}",
        cmdline=_rhel_cmdline(target, token, files_base),
    )
