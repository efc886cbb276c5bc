"""What an answer file needs to know of a host, taken from its PlunderHost once.

The renderers are pure functions of an :class:`InstallTarget`; nothing in them reads the API
object, so each rule (the hostname, the disk, the static address) is decided here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from urllib.parse import urlsplit

from plunder.api.inventory import PlunderHost
from plunder.reconcile import hoststate

DEFAULT_DOMAIN = "localdomain"
"""The domain of a host whose name has none (installers insist on one)."""


@dataclass(frozen=True)
class StaticAddress:
    """A fixed address for the installer and the installed OS."""

    address: str
    prefix_length: int
    gateway: str | None
    nameservers: tuple[str, ...]

    @property
    def version(self) -> int:
        """4 or 6."""
        return ip_address(self.address).version

    @property
    def netmask(self) -> str:
        """The prefix as a mask (255.255.255.0, ffff:ffff:ffff:ffff::), as the installers ask."""
        return str(ip_network(f"{self.address}/{self.prefix_length}", strict=False).netmask)


@dataclass(frozen=True)
class InstallTarget:
    """One host's install, as both answer files see it.

    Attributes:
        mac: The boot MAC (the installer's interface; the boot service's key for the host).
        hostname: A single DNS label.
        domain: The rest of the name (``localdomain`` if the name has no dots).
        server: The boot service's base URL, as the host reaches it.
        disk: The disk to install on (``/dev/vda``).
        static: The static address, or None for DHCP.
        ssh_authorized_keys: Root's public keys on the installed OS.
    """

    mac: str
    hostname: str
    domain: str
    server: str
    disk: str
    static: StaticAddress | None
    ssh_authorized_keys: tuple[str, ...]

    @property
    def nameservers(self) -> tuple[str, ...]:
        """The static address's name servers; else the boot server's address.

        The Debian installer stops to ask for a name server when neither the answer file nor
        DHCP gives one (the lab's DHCP gives none), before it fetches the answer file. The boot
        server answers no DNS, but every URL the installer needs from it is by address.
        """
        if self.static is not None and self.static.nameservers:
            return self.static.nameservers
        return (urlsplit(self.server).hostname or "",)

    @property
    def fqdn(self) -> str:
        """hostname.domain."""
        return f"{self.hostname}.{self.domain}"


def split_name(name: str) -> tuple[str, str]:
    """A host name as (hostname, domain): the first DNS label, and the rest.

    Kubernetes names may be 253 characters of DNS subdomain; a hostname is one label of at most
    63, so a longer first label is cut (and a trailing ``-`` dropped, which a label cannot end in).
    """
    label, _, domain = name.lower().partition(".")
    return label[:63].rstrip("-") or "plunder-host", domain or DEFAULT_DOMAIN


def install_target(host: PlunderHost, server: str) -> InstallTarget:
    """The install of ``host``, served from ``server`` (the boot service's base URL)."""
    hostname, domain = split_name(hoststate.meta_data(host)["local-hostname"])
    network = host.spec.network
    static = (
        StaticAddress(
            network.ip_address,
            network.prefix_length,
            network.gateway,
            tuple(network.nameservers or ()),
        )
        if network is not None
        else None
    )
    return InstallTarget(
        mac=host.spec.boot_mac_address,
        hostname=hostname,
        domain=domain,
        server=server,
        disk=hoststate.root_device(host),
        static=static,
        ssh_authorized_keys=tuple(host.spec.ssh_authorized_keys or ()),
    )
