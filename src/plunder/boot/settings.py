"""What the boot service is told at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Literal

DhcpMode = Literal["full", "proxy", "off"]


@dataclass(frozen=True)
class DhcpSettings:
    """How dnsmasq serves the provisioning network."""

    mode: DhcpMode = "full"
    """full: hand out addresses; proxy: only boot information, beside an existing DHCP server
    (safer on a shared network); off: no DHCP/TFTP here (another server chains to our HTTP)."""
    interface: str = "br0"
    """The interface on the provisioning network."""
    network: IPv4Network = IPv4Network("172.31.99.0/24")
    """The provisioning subnet."""
    range_start: IPv4Address | None = None
    """First address handed out (full mode); default: .100 of the subnet."""
    range_end: IPv4Address | None = None
    """Last address handed out (full mode); default: .199 of the subnet."""
    lease_time: str = "1h"
    """dnsmasq's lease time."""
    router: IPv4Address | None = None
    """The default gateway handed to hosts (full mode); none by default."""
    dns_servers: tuple[IPv4Address, ...] = ()
    """Name servers handed to hosts (full mode); none by default. A Kubernetes node needs one
    in its resolv.conf (CoreDNS forwards to it and will not start without)."""
    ipv6_router_advertisements: bool = True
    """Answer router solicitations (iPXE otherwise waits ~13 s for IPv6)."""
    dnsmasq: str = "dnsmasq"
    """The dnsmasq program."""
    netns: str | None = None
    """Run dnsmasq inside this network namespace (the lab's provisioning network)."""


@dataclass(frozen=True)
class BootSettings:
    """Everything the boot service needs."""

    address: IPv4Address
    """This service's address on the provisioning network (what hosts fetch from)."""
    run_dir: Path
    """Where dnsmasq's config, leases and the TFTP root live."""
    http_port: int = 8080
    """The HTTP port for scripts, files and agent calls."""
    files_dir: Path | None = None
    """A folder served under /files/ (kernels, initrds, images)."""
    namespace: str = "default"
    """The Kubernetes namespace PlunderHosts are kept in."""
    poll_seconds: int = 3
    """How often a parked host asks again for work."""
    last_seen_interval: float = 30.0
    """Write a host's lastSeen at most this often (each poll would otherwise be a write)."""
    ipxe_dir: Path = Path("/usr/lib/ipxe")
    """Where Debian's ipxe package puts undionly.kpxe and ipxe.efi."""
    dhcp: DhcpSettings = field(default_factory=DhcpSettings)
    """DHCP and TFTP."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted."""

    @property
    def http_base(self) -> str:
        """The URL hosts use to reach this service."""
        return f"http://{self.address}:{self.http_port}"
