"""``plunderctl get unleased|hosts [-w]``, ``describe host``, ``logs``: the inventory for people.

``get hosts -w`` follows a watch of the hosts: a host writing its image shows a bar of how far
its write has got (``status.writeProgress``, the agent's byte counts). ``logs HOST`` prints what
the host's agent printed during its last boot (kept by the boot service in a ConfigMap beside
the host: :mod:`plunder.boot.agentlog`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import click
import yaml
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from plunder.api.inventory import UNHEALTHY_ANNOTATION, PlunderHost
from plunder.boot import agentlog
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


BAR_WIDTH = 20
_MIB = 1024 * 1024


def _writing(host: PlunderHost) -> bool:
    status = host.status
    if status is None or status.state != "provisioning":
        return False
    return any(phase.name == "writing" and phase.finished is None for phase in status.phases or ())


def write_fraction(host: PlunderHost) -> float | None:
    """How far the host's image write has got (0..1), if it is writing and the total is known."""
    progress = host.status.write_progress if host.status else None
    if progress is None or not _writing(host) or not progress.image_bytes:
        return None
    done = progress.downloaded_bytes
    if done is None:
        done = progress.written_bytes  # no download count: a raw image writes what it gets
    return None if done is None else min(1.0, done / progress.image_bytes)


def progress_cell(host: PlunderHost) -> str:
    """A bar and the counts of the host's image write ("" when it is not writing)."""
    if not _writing(host):
        return ""
    progress = host.status.write_progress if host.status else None
    if progress is None:
        return "writing"
    written = f"{(progress.written_bytes or 0) // _MIB} MiB written"
    fraction = write_fraction(host)
    if fraction is None:
        return written
    filled = round(fraction * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    return f"[{bar}] {fraction * 100:3.0f}% {written}"


def hosts_table(hosts: Iterable[PlunderHost], now: datetime, header: bool = True) -> Table:
    """Every host with its state, consumer, power, firmware and image-write progress."""
    table = Table(
        "Name",
        "Mac Address",
        "Vendor",
        "State",
        "Consumer",
        "Firmware",
        "IP",
        "Last Seen",
        "Progress",
        box=None,
        show_header=header,
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
            Text(progress_cell(host)),  # its brackets are not markup
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
@click.option(
    "-w", "--watch", is_flag=True, help="Follow changes (and image writes' progress) until ^C."
)
def get_hosts(kubeconfig: Path | None, namespace: str | None, watch: bool) -> None:
    """Every host, with its state."""
    if not watch:
        console.print(hosts_table(list_hosts(kubeconfig, namespace), datetime.now(UTC)))
        return
    try:
        watch_hosts(sync_client(kubeconfig), namespace)
    except KeyboardInterrupt:
        pass


def _key(host: PlunderHost) -> tuple[str, str]:
    return host.metadata.namespace or "", host.metadata.name or ""


def watch_hosts(client: Client, namespace: str | None) -> None:
    """The hosts table, kept current from a watch (a terminal) or one row per change (a pipe)."""
    resource = resource_for(PlunderHost)
    hosts: dict[tuple[str, str], PlunderHost] = {}
    listing = client.list(resource, namespace=namespace or "*")
    for obj in listing:
        host = PlunderHost.model_validate(as_dict(obj))
        hosts[_key(host)] = host
    version: str | None = getattr(listing, "resourceVersion", None)

    def table() -> Table:
        shown = sorted(hosts.values(), key=lambda host: host.spec.boot_mac_address)
        return hosts_table(shown, datetime.now(UTC))

    def events() -> Iterable[tuple[str, PlunderHost]]:
        nonlocal version
        while True:  # a watch the server ends (its timeout) goes on from the last version
            try:
                for kind, obj in client.watch(
                    resource, namespace=namespace or "*", resource_version=version
                ):
                    host = PlunderHost.model_validate(as_dict(obj))
                    version = host.metadata.resource_version or version
                    yield kind, host
            except ApiError as error:
                if error.status.code != 410:
                    raise
                version = None  # too old: start afresh (each host is shown again)

    if not console.is_terminal:
        console.print(table())
        for kind, host in events():
            if kind == "DELETED":
                hosts.pop(_key(host), None)
            else:
                hosts[_key(host)] = host
            console.print(hosts_table([host], datetime.now(UTC), header=False))
        return
    with Live(table(), console=console, auto_refresh=False) as live:
        for kind, host in events():
            if kind == "DELETED":
                hosts.pop(_key(host), None)
            else:
                hosts[_key(host)] = host
            live.update(table(), refresh=True)


def find_host(hosts: Iterable[PlunderHost], mac_or_name: str) -> PlunderHost | None:
    """The host with this boot MAC or name (the first, by MAC order)."""
    try:
        wanted_mac: str | None = normalise_mac(mac_or_name)
    except InvalidMACError:
        wanted_mac = None
    for host in hosts:
        if host.spec.boot_mac_address == wanted_mac or host.metadata.name == mac_or_name:
            return host
    return None


@click.command("logs")
@click.argument("mac_or_name")
@options.kubeconfig
@_NAMESPACE
@click.option("-p", "--previous", is_flag=True, help="The log of the boot before the last.")
def logs(mac_or_name: str, kubeconfig: Path | None, namespace: str | None, previous: bool) -> None:
    """What a host's agent printed during its last boot (inspection, image write, wipe)."""
    host = find_host(list_hosts(kubeconfig, namespace), mac_or_name)
    if host is None:
        raise click.ClickException(f"no host with MAC or name {mac_or_name!r}")
    name = host.metadata.name or ""
    try:
        found = sync_client(kubeconfig).get(
            ConfigMap, agentlog.configmap_name(name), namespace=host.metadata.namespace
        )
    except ApiError as error:
        if error.status.code != 404:
            raise
        found = None
    kept = agentlog.from_configmap(name, found.data if found else None)
    if kept is None:
        raise click.ClickException(f"host {name} has no agent log yet: its agent sent none")
    if previous and not kept.previous_text:
        raise click.ClickException(f"host {name} has no log of an earlier boot")
    click.echo(agentlog.render(kept, previous=previous), nl=False)


@click.group()
def describe() -> None:
    """Show one object in full."""


@describe.command("host")
@click.argument("mac_or_name")
@options.kubeconfig
@_NAMESPACE
def describe_host(mac_or_name: str, kubeconfig: Path | None, namespace: str | None) -> None:
    """A host by MAC address or name: spec and status."""
    host = find_host(list_hosts(kubeconfig, namespace), mac_or_name)
    if host is None:
        console.print(f"no host with MAC or name {mac_or_name!r}", style="red")
        sys.exit(1)
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
