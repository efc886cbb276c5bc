"""Render the iPXE script for a host, from its state.

A host without work *parks*: the script waits a few seconds and asks again, in the same iPXE
session, so work set on the host is picked up within one poll and without a reboot. The
original plunder's reboot loop stays available (``parkMode: reboot``) for hosts whose firmware
cannot keep iPXE running. A provisioned host is sent to its disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

Platform = Literal["pcbios", "efi"]

# The facts iPXE reports on every request; :uristring makes them safe inside a URL.
FACTS_QUERY = (
    "mac=${net0/mac}&ip=${net0/ip}&platform=${platform}&arch=${buildarch}"
    "&manufacturer=${manufacturer:uristring}&product=${product:uristring}"
    "&serial=${serial:uristring}&uuid=${uuid}"
)


@dataclass(frozen=True)
class BootDecision:
    """What a host should do now: park (poll or reboot), boot a kernel, or boot its disk."""

    action: Literal["park", "reboot-loop", "kernel", "disk"]
    reason: str
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""


CHAIN_TRIES = 20
"""How often the chain script asks for /boot.ipxe, 3 s apart, before it gives up (``exit``)."""
CHAIN_WAIT_MESSAGE = "plunder: no answer from the boot service, asking again"


def chain_script(http_base: str) -> str:
    """The static script that DHCP hands iPXE: it chains to /boot.ipxe with the host's facts.

    It asks again, 3 s apart, for about a minute: the boot service may be restarting (a
    rolling update, a crash). A host whose iPXE gave up at once went on to its disk: a host to
    be wiped booted its old OS and was never wiped, a UEFI host with a fresh image stopped in
    the firmware's menu. After that it still gives up (``exit``, to the next boot device), so a
    long outage does not keep provisioned servers from their disks.
    Unrolled, as iPXE's counters are not in every build.
    """
    ask = f"chain --replace --autofree {http_base}/boot.ipxe?{FACTS_QUERY}"
    wait = f"prompt --timeout 3000 {CHAIN_WAIT_MESSAGE} ||"
    return "#!ipxe\n" + f"{ask} || {wait}\n" * CHAIN_TRIES + "exit\n"


def _poll_url(http_base: str, mac: str) -> str:
    query = f"mac={quote(mac, safe=':')}&ip=${{net0/ip}}&platform=${{platform}}&poll=1"
    return f"{http_base}/boot.ipxe?{query}"


def render_script(decision: BootDecision, mac: str, http_base: str, poll_seconds: int) -> str:
    """The iPXE script for ``decision``."""
    header = f"#!ipxe\necho plunder: {mac}: {decision.reason}\n"
    if decision.action == "park":
        return header + (
            ":poll\n"
            f"prompt --timeout {poll_seconds * 1000} plunder: waiting for work ||\n"
            f"chain --replace --autofree {_poll_url(http_base, mac)} || goto poll\n"
        )
    if decision.action == "reboot-loop":
        return header + (
            f"prompt --timeout {poll_seconds * 1000} plunder: rebooting (reboot loop) ||\nreboot\n"
        )
    if decision.action == "disk":
        # BIOS: boot the first disk's MBR. UEFI: chain to the EFI disk booter, which finds the
        # disk's EFI loader itself (a freshly written disk has no firmware boot entry, so
        # iPXE's `exit` would leave the host in the firmware's menu); without it, `exit`.
        efi = f"chain --autofree {decision.kernel} || exit\n" if decision.kernel else "exit\n"
        return header + (
            "iseq ${platform} efi && goto efi ||\n"
            "sanboot --no-describe --drive 0x80 || exit\n"
            f":efi\n{efi}"
        )
    if decision.kernel is None:
        raise ValueError("a kernel boot needs a kernel URL")
    # A failed command ends an iPXE script: each one falls back to asking again instead.
    cmdline = decision.cmdline
    if decision.initrd:
        # UEFI: the kernel's EFI stub loads the initrd only if the command line names it.
        cmdline = f"initrd={decision.initrd.rsplit('/', 1)[-1]} {cmdline}"
    kernel = f"kernel {decision.kernel} {cmdline}".rstrip()
    lines = [header.rstrip("\n"), f"{kernel} || goto failed"]
    if decision.initrd:
        lines.append(f"initrd {decision.initrd} || goto failed")
    lines += [
        "boot || goto failed",
        ":failed",
        "echo plunder: boot failed, asking again",
        f"prompt --timeout {poll_seconds * 1000} ||",
        f"chain --replace --autofree {_poll_url(http_base, mac)}",
    ]
    return "\n".join(lines) + "\n"
