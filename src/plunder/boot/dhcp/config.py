"""dnsmasq's configuration, rendered from the boot settings.

dnsmasq does the DHCP and TFTP wire protocols (robust, and fuzzed by others for decades); this
module decides what it answers. The decision is a table: a client that is already iPXE gets the
chain script (a script, so it never loops back into the iPXE binary); a plain PXE ROM gets the
iPXE binary for its architecture (RFC 4578 client-arch, option 93). ``boot_file_for`` states the
same table as a function so that the choice is unit-tested without dnsmasq.

The chain script is served over TFTP by dnsmasq itself, not over HTTP by the boot service: the
server that just answered DHCP is up, and the script waits for the boot service's HTTP while that
restarts (:func:`plunder.boot.ipxe.scripts.chain_script`).
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from plunder.boot.settings import BootSettings

CHAIN_PATH = "/chain.ipxe"
"""The chain script over HTTP, for a site's own DHCP server to hand out (``--dhcp off``)."""
CHAIN_FILE = "chain.ipxe"
"""The chain script in dnsmasq's TFTP root: what iPXE clients are told to load."""


@dataclass(frozen=True)
class ArchBoot:
    """The iPXE binary for one family of PXE client architectures."""

    tag: str
    arches: tuple[int, ...]
    boot_file: str
    csa: str
    """dnsmasq's client-system-architecture name, for pxe-service in proxy mode."""


ARCH_BOOTS = (
    ArchBoot("bios", (0,), "undionly.kpxe", "x86PC"),
    ArchBoot("efi64", (7, 9), "ipxe.efi", "x86-64_EFI"),
)
"""RFC 4578: 0 is x86 BIOS, 7 and 9 are x86-64 UEFI."""


def boot_file_for(client_arch: int | None, is_ipxe: bool, settings: BootSettings) -> str | None:
    """The boot file dnsmasq hands a client; None if it is no PXE client we serve."""
    if is_ipxe:
        return CHAIN_FILE
    for arch in ARCH_BOOTS:
        if client_arch in arch.arches:
            return arch.boot_file
    return None


def pxe_stem(boot_file: str) -> str:
    """The name pxe-service announces; the client asks TFTP for ``<stem>.0``."""
    return boot_file.rsplit(".", 1)[0]


def _ipxe_boot_line(settings: BootSettings) -> str:
    """IPXE clients get the chain script over TFTP, with our address as next-server (siaddr).

    iPXE accepts a ProxyDHCP answer only if it carries PXE options: a boot file *and* a
    next-server. Without siaddr a BIOS iPXE ROM asks the proxy again and again, then gives up
    with "Nothing to boot" (seen in the lab, proxy mode).
    """
    return f"dhcp-boot=tag:ipxe,{CHAIN_FILE},,{settings.address}"


def _range_bounds(settings: BootSettings) -> tuple[IPv4Address, IPv4Address]:
    network = settings.dhcp.network
    start = settings.dhcp.range_start or network.network_address + 100
    end = settings.dhcp.range_end or network.network_address + 199
    return start, end


def render_dnsmasq_conf(settings: BootSettings, leases: str, tftp_root: str) -> str:
    """The whole dnsmasq.conf for the boot service's DHCP mode."""
    dhcp = settings.dhcp
    lines = [
        "# Written by the plunder boot service; changes are overwritten.",
        "port=0",  # no DNS server
        f"interface={dhcp.interface}",
        "bind-interfaces",
        "log-dhcp",
        "log-facility=-",
        f"dhcp-leasefile={leases}",
        "enable-tftp",
        f"tftp-root={tftp_root}",
        # dnsmasq keeps root here: its run folder may sit in a home only root can enter. It runs
        # in the provisioning network's namespace and serves nothing but this configuration.
        "user=root",
        # Its group too: a change of group (to "dip", its default) clears the parent-death
        # signal that ends it with the boot service (dhcp/supervisor.py).
        "group=root",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:ipxe,175",
    ]
    for arch in ARCH_BOOTS:
        lines.extend(f"dhcp-match=set:{arch.tag},option:client-arch,{n}" for n in arch.arches)
    netmask = dhcp.network.netmask
    if dhcp.mode == "full":
        start, end = _range_bounds(settings)
        lines += [
            f"dhcp-range={start},{end},{netmask},{dhcp.lease_time}",
            "dhcp-authoritative",
            "no-ping",  # a blank host has no address to defend; ping costs 3 s per offer
            # iPXE waits for a proxyDHCP answer unless told there is none (option 175.176).
            "dhcp-option=tag:ipxe,encap:175,176,1b",
            _ipxe_boot_line(settings),
        ]
        lines += [f"dhcp-boot=tag:!ipxe,tag:{a.tag},{a.boot_file}" for a in ARCH_BOOTS]
        if dhcp.router is not None:
            lines.append(f"dhcp-option=option:router,{dhcp.router}")
        else:
            lines.append("dhcp-option=option:router")  # no gateway: the network is closed
        if dhcp.dns_servers:
            lines.append(f"dhcp-option=option:dns-server,{','.join(map(str, dhcp.dns_servers))}")
    else:
        lines += [
            f"dhcp-range={dhcp.network.network_address},proxy,{netmask}",
            _ipxe_boot_line(settings),
        ]
        # The PXE client appends the layer suffix ".0" itself: TFTP serves <stem>.0 copies.
        lines += [
            f'pxe-service=tag:!ipxe,{a.csa},"plunder",{pxe_stem(a.boot_file)}' for a in ARCH_BOOTS
        ]
    if dhcp.ipv6_router_advertisements:
        lines += ["enable-ra", f"dhcp-range=::,constructor:{dhcp.interface},ra-only"]
    return "\n".join(lines) + "\n"
