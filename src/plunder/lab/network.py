"""The lab's provisioning network: a network namespace holding one bridge.

Virtual bare-metal hosts PXE-boot, so the lab runs a DHCP server; a DHCP server must never
answer on a real network. Everything the lab's hosts see therefore lives in a network namespace
of its own: a bridge with an IPv4 and a private IPv6 address (the boot service listens there), the
hosts' tap devices (libvirt adds them), and, when a test needs a second server in the same layer-2
segment, a veth port. Nothing is routed out of the namespace; the one way in is the *uplink*
(:func:`add_uplink`): a veth whose one end is a port of the bridge and whose other end, in the
machine's own namespace, holds one address of the lab's subnet. It is how the management plane
(Cluster API's managers) reaches the workload clusters' API servers on the hosts, as a real
management cluster reaches its provisioning network. It adds a route to the lab's subnet only,
so two labs can run at the same time as long as their subnets differ.

All commands are ``ip``/``sysctl`` run as root; a failure raises :class:`NetworkError` with
the command's own message.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
"""Where ``ip netns add`` pins named namespaces."""

IFNAME_MAX = 15
"""The kernel's limit on an interface name's length (IFNAMSIZ - 1)."""


class NetworkError(RuntimeError):
    """A namespace, bridge or port could not be created as asked."""


@dataclass(frozen=True)
class LabNetwork:
    """A namespace with one bridge: the lab's layer-2 segment and the boot service's addresses."""

    namespace: str
    bridge: str
    ipv4: ipaddress.IPv4Interface
    ipv6: ipaddress.IPv6Interface

    @property
    def ipv4_address(self) -> str:
        """The bridge's IPv4 address, without prefix (where the boot service listens)."""
        return str(self.ipv4.ip)


def in_namespace(net: LabNetwork, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside the lab's namespace (prefixed with ``ip netns exec``)."""
    return ["ip", "netns", "exec", net.namespace, *argv]


def namespace_exists(name: str) -> bool:
    """Whether a named network namespace ``name`` exists."""
    return (NETNS_DIR / name).exists()


def create_network(
    name: str,
    ipv4_cidr: str = "172.31.99.1/24",
    ipv6_cidr: str = "fd00:99::1/64",
    bridge: str = "br0",
) -> LabNetwork:
    """Create namespace ``name`` with an up loopback and a bridge holding both addresses.

    Args:
        name: The namespace's name; it must not exist yet.
        ipv4_cidr: The bridge's IPv4 address with prefix, e.g. ``172.31.99.1/24``.
        ipv6_cidr: The bridge's private IPv6 address with prefix (a /64, for SLAAC).
        bridge: The bridge's name; it lives in the namespace, so it never clashes with the host's.

    Returns:
        The created network.

    Raises:
        NetworkError: The namespace exists already, a name is too long, or a command failed
            (then nothing is left behind).
    """
    _check_ifname(bridge)
    if namespace_exists(name):
        raise NetworkError(
            f"network namespace {name!r} exists already (another lab, or a leftover: "
            f"`ip netns del {name}` removes it)"
        )
    net = LabNetwork(
        namespace=name,
        bridge=bridge,
        ipv4=ipaddress.IPv4Interface(ipv4_cidr),
        ipv6=ipaddress.IPv6Interface(ipv6_cidr),
    )
    _run(["ip", "netns", "add", name])
    try:
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
        # Each interface answers ARP only for its own address: with a second addressed port
        # on the bridge (add_veth_port), hosts would otherwise learn the wrong MAC for ours.
        for conf in ("all", "default"):
            _sysctl(net, f"net.ipv4.conf.{conf}.arp_ignore", "1")
            _sysctl(net, f"net.ipv4.conf.{conf}.arp_announce", "2")
        _add_bridge(net)
    except NetworkError:
        delete_network(net)
        raise
    return net


def delete_network(net: LabNetwork) -> None:
    """Delete the namespace and so every device in it; a missing namespace is fine.

    Processes still running inside keep the namespace alive until they exit; stop them first.
    """
    if namespace_exists(net.namespace):
        _run(["ip", "netns", "del", net.namespace])
    # the uplink goes with its peer on the bridge; this catches a namespace kept by a process
    subprocess.run(["ip", "link", "del", uplink_name(net)], capture_output=True, check=False)


def add_veth_port(net: LabNetwork, name: str, ipv4_cidr: str) -> None:
    """Add an addressed interface ``name`` whose veth peer is a port of the lab's bridge.

    This gives a second server (e.g. a site's existing DHCP server, for proxyDHCP tests) its own
    address in the same layer-2 segment. Both ends stay inside the namespace; the bridge end is
    called ``<name>-br``. A server bound to ``name`` receives the segment's broadcasts through
    the bridge; its unicast replies share the namespace's routing table with the bridge's
    address, so they may leave through the bridge, which reaches the same hosts.

    Args:
        net: The lab network.
        name: The addressed end's name (at most 12 characters).
        ipv4_cidr: Its IPv4 address with prefix.
    """
    peer = f"{name}-br"
    _check_ifname(peer)
    ns = net.namespace
    _run(["ip", "-n", ns, "link", "add", name, "type", "veth", "peer", "name", peer])
    _run(["ip", "-n", ns, "link", "set", peer, "master", net.bridge, "up"])
    _run(["ip", "-n", ns, "addr", "add", str(ipaddress.IPv4Interface(ipv4_cidr)), "dev", name])
    _run(["ip", "-n", ns, "link", "set", name, "up"])


def uplink_name(net: LabNetwork) -> str:
    """The uplink's name in the machine's namespace: unique per lab namespace."""
    return "pl" + hashlib.sha256(net.namespace.encode()).hexdigest()[:8]


def add_uplink(net: LabNetwork, ipv4_cidr: str) -> str:
    """Join the machine's own namespace to the lab's bridge, at ``ipv4_cidr`` (in the lab subnet).

    The end in the machine's namespace answers ARP only for its own address, so the hosts never
    learn it for another. Deleting the lab's namespace deletes the bridge end, and with it this
    one.

    Returns:
        The interface's name in the machine's namespace.

    Raises:
        NetworkError: The address is outside the lab's subnet, the subnet is already routed
            here (another lab with the same subnet?), or a command failed.
    """
    address = ipaddress.IPv4Interface(ipv4_cidr)
    if address.network != net.ipv4.network:
        raise NetworkError(f"the uplink's {address} is not in the lab's {net.ipv4.network}")
    routes = subprocess.run(
        ["ip", "-4", "route", "show", str(address.network)], capture_output=True, text=True
    )
    if routes.stdout.strip():
        raise NetworkError(
            f"{address.network} is already routed on this machine ({routes.stdout.strip()}): "
            "another lab with the same subnet? Choose another with --address"
        )
    name = uplink_name(net)
    peer = f"{name}-br"
    _run(["ip", "link", "add", name, "type", "veth", "peer", "name", peer])
    try:
        _run(["ip", "link", "set", peer, "netns", net.namespace])
        _run(["ip", "-n", net.namespace, "link", "set", peer, "master", net.bridge, "up"])
        for key, value in (("arp_ignore", "1"), ("arp_announce", "2")):
            _run(["sysctl", "-q", "-w", f"net.ipv4.conf.{name}.{key}={value}"])
        _run(["ip", "addr", "add", str(address), "dev", name])
        _run(["ip", "link", "set", name, "up"])
    except NetworkError:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        raise
    return name


def _add_bridge(net: LabNetwork) -> None:
    ns, bridge = net.namespace, net.bridge
    # No STP and no forwarding delay: a host's tap port must forward its first DHCP packet.
    # A fixed MAC: otherwise the bridge takes its lowest port's, and changes as hosts come and go.
    _run(
        ["ip", "-n", ns, "link", "add", bridge, "address", _local_mac(), "type", "bridge"]
        + ["stp_state", "0", "forward_delay", "0"]
    )
    # Duplicate address detection would hold the addresses back for a second; nobody else
    # can have them in a fresh namespace.
    _sysctl(net, f"net.ipv6.conf.{bridge}.disable_ipv6", "0")
    _sysctl(net, f"net.ipv6.conf.{bridge}.accept_dad", "0")
    _run(["ip", "-n", ns, "addr", "add", str(net.ipv4), "dev", bridge])
    _run(["ip", "-n", ns, "addr", "add", str(net.ipv6), "dev", bridge, "nodad"])
    _run(["ip", "-n", ns, "link", "set", bridge, "up"])


def _sysctl(net: LabNetwork, key: str, value: str) -> None:
    _run(in_namespace(net, ["sysctl", "-q", "-w", f"{key}={value}"]))


def _local_mac() -> str:
    """A random unicast, locally administered MAC address."""
    octets = bytearray(secrets.token_bytes(6))
    octets[0] = (octets[0] & 0b1111_1100) | 0b0000_0010
    return ":".join(f"{octet:02x}" for octet in octets)


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAME_MAX:
        raise NetworkError(f"interface name {name!r} must have 1 to {IFNAME_MAX} characters")


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(  # noqa: S603 - argv is built here, not taken from input
        list(argv), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed: {result.stderr.strip()}")
