"""What the boot service is told at start-up."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Literal

AGENT_POLL_SECONDS = 2
"""How often a parked agent asks for work when the fleet is small (agent.sh's own default)."""

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
class DiscoverySettings:
    """How far an unknown MAC may get: the bound on what a flood of new MACs can make.

    Any client on the provisioning network can name any MAC, so every new MAC would otherwise be
    a new object in the API. The cap counts the hosts this service discovered that nobody has
    accepted yet (an accepted host no longer counts); the rate limits how fast new ones appear.
    A MAC refused by either gets a script that asks again later, and nothing is written.
    """

    enabled: bool = True
    """Record unknown MACs as PlunderHosts at all (off: only hosts made by a person boot)."""
    auto_accept: bool = False
    """Mark discovered hosts ``spec.accepted: true`` (as Sidero's autoAcceptServers); off: a
    person accepts each host before its disk is written or wiped."""
    max_pending: int = 100
    """At most this many discovered, not yet accepted hosts exist at once."""
    per_minute: float = 60.0
    """New hosts recorded per minute, on average (per boot service replica)."""
    burst: int = 20
    """New hosts that may be recorded at once before the rate applies."""


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
    last_seen_writes_per_second: float = 50.0
    """lastSeen writes a second across every host: a fleet that polls at once gets its lastSeen
    written less often (oldest first), never more writes than this (issue #14: at 10,000 hosts
    the heartbeats were a sixth of the boot service's time, and each woke the controller)."""
    work_polls_per_second: float = 250.0
    """The parked agents' work polls a second, together: each is told to wait (hosts / this)
    seconds before it asks again, never less than :data:`AGENT_POLL_SECONDS` (at 10,000 hosts
    polling every 2 s, the boot service could not keep up and provisioning stalled)."""
    ipxe_dir: Path = Path("/usr/lib/ipxe")
    """Where Debian's ipxe package puts undionly.kpxe and ipxe.efi."""
    dhcp: DhcpSettings = field(default_factory=DhcpSettings)
    """DHCP and TFTP."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted."""
    discovery: DiscoverySettings = field(default_factory=DiscoverySettings)
    """The bound on discovery, and auto-accept."""
    agent_silence_seconds: float = 60.0
    """An agent token whose holder has made no call for this long may be issued again to a new
    lookup (only while no disk write is at stake: see :mod:`plunder.boot.trust`)."""
    progress_interval: float = 10.0
    """Record a host's image-write progress at most this often (the agent reports every 5 s)."""
    progress_writes_per_second: float = 20.0
    """Progress writes per second across every host (per replica): a fleet writing its images
    at once gets its progress recorded less often, never more writes than this."""
    agent_log_interval: float = 5.0
    """Write a host's agent log at most this often; an upload arriving sooner is kept in
    memory and written when due (the newest one: each upload holds the whole boot's log)."""

    @property
    def http_base(self) -> str:
        """The URL hosts use to reach this service."""
        return f"http://{self.address}:{self.http_port}"


def work_poll_seconds(hosts: int, polls_per_second: float) -> int:
    """How long a parked agent waits before it asks again, so ``hosts`` poll at the rate."""
    return max(AGENT_POLL_SECONDS, math.ceil(hosts / polls_per_second))
