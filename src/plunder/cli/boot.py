"""``plunderctl boot``: run the boot service."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import click

from plunder.boot.settings import BootSettings, DhcpSettings, DiscoverySettings
from plunder.cli import options


@click.command()
@options.kubeconfig
@click.option(
    "--address",
    required=True,
    type=IPv4Address,
    help="This service's address on the provisioning network.",
)
@click.option("--http-port", default=8080, show_default=True)
@click.option(
    "--interface", default="br0", show_default=True, help="The provisioning network's interface."
)
@click.option("--subnet", default="172.31.99.0/24", show_default=True, type=IPv4Network)
@click.option(
    "--dhcp",
    "dhcp_mode",
    type=click.Choice(["full", "proxy", "off"]),
    default="full",
    show_default=True,
    help="full: lease addresses; proxy: only boot information beside another DHCP "
    "server; off: no DHCP/TFTP.",
)
@click.option("--range-start", type=IPv4Address, default=None, help="Default: .100")
@click.option("--range-end", type=IPv4Address, default=None, help="Default: .199")
@click.option("--router", type=IPv4Address, default=None, help="Gateway handed out (full).")
@click.option(
    "--dns-server",
    "dns_servers",
    type=IPv4Address,
    multiple=True,
    help="A name server handed out (full); repeat for several.",
)
@click.option("--netns", default=None, help="The provisioning network is this namespace.")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/plunder/boot"),
    show_default=True,
)
@click.option(
    "--files-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Served under /files/ (kernels, initrds, images).",
)
@click.option(
    "--namespace",
    default="default",
    show_default=True,
    help="The Kubernetes namespace of the PlunderHosts.",
)
@click.option(
    "--poll-seconds", default=3, show_default=True, help="How often a parked host asks for work."
)
@click.option(
    "--work-polls-per-second",
    type=click.FloatRange(min=1),
    default=BootSettings.work_polls_per_second,
    show_default=True,
    help="Parked agents' work polls a second, together: each is told to wait hosts/this "
    "seconds (at least 2) before asking again.",
)
@click.option(
    "--last-seen-writes-per-second",
    type=click.FloatRange(min=1),
    default=BootSettings.last_seen_writes_per_second,
    show_default=True,
    help="lastSeen heartbeat writes a second, across every host (oldest due first).",
)
@click.option(
    "--auto-accept/--no-auto-accept",
    default=False,
    show_default=True,
    help="Mark discovered hosts accepted (else a person sets spec.accepted before any disk "
    "write or wipe).",
)
@click.option(
    "--discovery/--no-discovery",
    default=True,
    show_default=True,
    help="Record unknown MACs as PlunderHosts.",
)
@click.option(
    "--max-pending-hosts",
    default=DiscoverySettings.max_pending,
    show_default=True,
    help="At most this many discovered hosts not yet accepted.",
)
@click.option(
    "--discoveries-per-minute",
    default=DiscoverySettings.per_minute,
    show_default=True,
    help="New hosts recorded per minute (a burst of --discovery-burst first).",
)
@click.option("--discovery-burst", default=DiscoverySettings.burst, show_default=True)
def boot(
    kubeconfig: Path | None,
    address: IPv4Address,
    http_port: int,
    interface: str,
    subnet: IPv4Network,
    dhcp_mode: str,
    range_start: IPv4Address | None,
    range_end: IPv4Address | None,
    router: IPv4Address | None,
    dns_servers: tuple[IPv4Address, ...],
    netns: str | None,
    run_dir: Path,
    files_dir: Path | None,
    namespace: str,
    poll_seconds: int,
    work_polls_per_second: float,
    last_seen_writes_per_second: float,
    auto_accept: bool,
    discovery: bool,
    max_pending_hosts: int,
    discoveries_per_minute: float,
    discovery_burst: int,
) -> None:
    """Run the boot service: DHCP/TFTP (dnsmasq) and HTTP (iPXE scripts, files)."""
    from plunder.boot import service

    settings = BootSettings(
        address=address,
        run_dir=run_dir,
        http_port=http_port,
        files_dir=files_dir,
        namespace=namespace,
        poll_seconds=poll_seconds,
        work_polls_per_second=work_polls_per_second,
        last_seen_writes_per_second=last_seen_writes_per_second,
        discovery=DiscoverySettings(
            enabled=discovery,
            auto_accept=auto_accept,
            max_pending=max_pending_hosts,
            per_minute=discoveries_per_minute,
            burst=discovery_burst,
        ),
        dhcp=DhcpSettings(
            mode=dhcp_mode,  # type: ignore[arg-type]
            interface=interface,
            network=subnet,
            range_start=range_start,
            range_end=range_end,
            router=router,
            dns_servers=dns_servers,
            netns=netns,
        ),
    )
    service.run(settings, kubeconfig)
