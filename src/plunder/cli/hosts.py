"""``plunderctl get unleased|hosts`` and ``plunderctl describe host``: the inventory for people."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import click
import yaml
from rich.console import Console
from rich.table import Table

from plunder.api.inventory import UNHEALTHY_ANNOTATION, PlunderHost
from plunder.boot.macs import InvalidMACError, normalise_mac
from plunder.cli import options
from plunder.k8s.client import sync_client
from plunder.k8s.resources import as_dict, resource_for

# Piped output keeps whole lines (for grep and scripts); a terminal gets its own width.
console = Console(width=None if sys.stdout.isatty() else 200)

_UNLEASED_STATES = frozenset({None, "discovered", "inspecting", "available"})


def list_hosts(kubeconfig: Path | None, namespace: str | None) -> list[PlunderHost]:
    """Every PlunderHost (of one namespace, or all), sorted by MAC."""
    client = sync_client(kubeconfig)
    hosts = [
        PlunderHost.model_validate(as_dict(obj))
        for obj in client.list(resource_for(PlunderHost), namespace=namespace or "*")
    ]
    return sorted(hosts, key=lambda host: host.spec.boot_mac_address)


def is_unleased(host: PlunderHost) -> bool:
    """Free for work: no consumer, and not being provisioned or in error."""
    state = host.status.state if host.status else None
    return host.spec.consumer_ref is None and state in _UNLEASED_STATES


def since(moment: datetime | None, now: datetime) -> str:
    """A short age, like the seed's "Time since": 0s, 42s, 5m3s, 2h10m, 3d4h."""
    if moment is None:
        return ""
    seconds = max(0, int((now - moment).total_seconds()))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes}m"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _seen(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%a %b %-d %H:%M:%S %Y") if moment else ""


def unleased_table(hosts: Iterable[PlunderHost], now: datetime) -> Table:
    """The original plunder's table: Mac Address, Hardware Vendor, Time Seen, Time since."""
    table = Table("Mac Address", "Hardware Vendor", "Time Seen", "Time since", box=None)
    for host in hosts:
        status = host.status
        last_seen = status.last_seen if status else None
        table.add_row(
            host.spec.boot_mac_address,
            (status.vendor if status else None) or "",
            _seen(last_seen),
            since(last_seen, now),
        )
    return table


def _state(host: PlunderHost) -> str:
    """The host's state, and whether a remediation marked it unhealthy."""
    state = (host.status.state if host.status else None) or ""
    if UNHEALTHY_ANNOTATION in (host.metadata.annotations or {}):
        return f"{state} (unhealthy)"
    return state


def hosts_table(hosts: Iterable[PlunderHost], now: datetime) -> Table:
    """Every host with its state, consumer, power and firmware."""
    table = Table(
        "Name",
        "Mac Address",
        "Vendor",
        "State",
        "Consumer",
        "Firmware",
        "IP",
        "Last Seen",
        box=None,
    )
    for host in hosts:
        status = host.status
        consumer = host.spec.consumer_ref
        table.add_row(
            host.metadata.name or "",
            host.spec.boot_mac_address,
            (status.vendor if status else None) or "",
            _state(host),
            consumer.name if consumer else "",
            (status.boot_firmware if status else None) or "",
            (status.ip_address if status else None) or "",
            since(status.last_seen if status else None, now),
        )
    return table


_NAMESPACE = click.option(
    "-n", "--namespace", default=None, help="One namespace (default: all namespaces)."
)


@click.group()
def get() -> None:
    """List hosts."""


@get.command("unleased")
@options.kubeconfig
@_NAMESPACE
def get_unleased(kubeconfig: Path | None, namespace: str | None) -> None:
    """Hosts that booted and wait for work (the original plunder's unleased hardware)."""
    hosts = [host for host in list_hosts(kubeconfig, namespace) if is_unleased(host)]
    console.print(unleased_table(hosts, datetime.now(UTC)))


@get.command("hosts")
@options.kubeconfig
@_NAMESPACE
def get_hosts(kubeconfig: Path | None, namespace: str | None) -> None:
    """Every host, with its state."""
    console.print(hosts_table(list_hosts(kubeconfig, namespace), datetime.now(UTC)))


@click.group()
def describe() -> None:
    """Show one object in full."""


@describe.command("host")
@click.argument("mac_or_name")
@options.kubeconfig
@_NAMESPACE
def describe_host(mac_or_name: str, kubeconfig: Path | None, namespace: str | None) -> None:
    """A host by MAC address or name: spec and status."""
    try:
        wanted_mac: str | None = normalise_mac(mac_or_name)
    except InvalidMACError:
        wanted_mac = None
    for host in list_hosts(kubeconfig, namespace):
        if host.spec.boot_mac_address == wanted_mac or host.metadata.name == mac_or_name:
            shown = {
                "name": host.metadata.name,
                "namespace": host.metadata.namespace,
                "labels": host.metadata.labels,
                "spec": host.spec.to_api(),
                "status": host.status.to_api() if host.status else {},
            }
            console.print(
                yaml.safe_dump(shown, sort_keys=False),
                end="",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
            return
    console.print(f"no host with MAC or name {mac_or_name!r}", style="red")
    sys.exit(1)
