"""``plunderctl power on|off|cycle|status HOST``: a host's power, through the controller.

``on`` and ``off`` set ``spec.online``; ``cycle`` sets the ``plunder.dev/reboot`` annotation
(as Metal3's ``reboot.metal3.io``), which the host's power daemon carries out and removes; all
three wait until the controller reports the outcome. ``status`` prints what the controller last
observed (``status.poweredOn`` and the ``BMCReachable`` condition).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from lightkube.types import PatchType
from rich.console import Console

from plunder.api.inventory import PlunderHost
from plunder.boot.macs import InvalidMACError, normalise_mac
from plunder.cli import options
from plunder.cli.hosts import list_hosts
from plunder.k8s.client import sync_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.operator.power import CONDITION, REBOOT_ANNOTATION

console = Console()


def find_host(mac_or_name: str, kubeconfig: Path | None, namespace: str | None) -> PlunderHost:
    """The host with this MAC address or name; exits 1 when there is none."""
    try:
        mac: str | None = normalise_mac(mac_or_name)
    except InvalidMACError:
        mac = None
    for host in list_hosts(kubeconfig, namespace):
        if host.metadata.name == mac_or_name or host.spec.boot_mac_address == mac:
            return host
    console.print(f"[red]no host {mac_or_name}[/red]")
    sys.exit(1)


def _condition(body: dict[str, Any]) -> dict[str, Any]:
    for condition in (body.get("status") or {}).get("conditions", []):
        if condition["type"] == CONDITION:
            found: dict[str, Any] = condition
            return found
    return {}


def _show(body: dict[str, Any]) -> None:
    powered = (body.get("status") or {}).get("poweredOn")
    condition = _condition(body)
    state = {True: "on", False: "off", None: "unknown"}[powered]
    console.print(f"{body['metadata']['name']}: power {state}", soft_wrap=True)
    if condition:
        console.print(
            f"  {CONDITION}={condition['status']} {condition['reason']}: {condition['message']}",
            soft_wrap=True,
        )


@click.group()
def power() -> None:
    """A host's power, through its BMC (Redfish or IPMI)."""


def _change(
    host_id: str,
    kubeconfig: Path | None,
    namespace: str | None,
    patch: dict[str, Any],
    timeout: float,
) -> None:
    host = find_host(host_id, kubeconfig, namespace)
    if host.spec.bmc is None:
        console.print(
            f"[red]{host.metadata.name} has no BMC (spec.bmc): nothing can power it[/red]"
        )
        sys.exit(2)
    client = sync_client(kubeconfig)
    resource = resource_for(PlunderHost)
    name, ns = host.metadata.name or "", host.metadata.namespace
    client.patch(resource, name, patch, namespace=ns, patch_type=PatchType.MERGE)
    wanted_on = patch["spec"]["online"] if "spec" in patch else True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = as_dict(client.get(resource, name, namespace=ns))
        annotations = body["metadata"].get("annotations") or {}
        condition = _condition(body)
        done = (body.get("status") or {}).get("poweredOn") == wanted_on
        if REBOOT_ANNOTATION not in annotations and done and condition.get("status") == "True":
            _show(body)
            return
        if condition.get("status") == "False" and time.monotonic() > deadline - timeout + 5:
            _show(body)
            sys.exit(3)
        time.sleep(0.5)
    _show(as_dict(client.get(resource, name, namespace=ns)))
    console.print("[red]the controller did not report the change in time[/red]")
    sys.exit(3)


_HOST = click.argument("host_id", metavar="HOST")
_NAMESPACE = click.option("--namespace", default=None, help="The host's namespace (default: all).")
_TIMEOUT = click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")


@power.command("on")
@_HOST
@options.kubeconfig
@_NAMESPACE
@_TIMEOUT
def power_on(host_id: str, kubeconfig: Path | None, namespace: str | None, timeout: float) -> None:
    """Power HOST on (spec.online: true)."""
    _change(host_id, kubeconfig, namespace, {"spec": {"online": True}}, timeout)


@power.command("off")
@_HOST
@options.kubeconfig
@_NAMESPACE
@_TIMEOUT
def power_off(host_id: str, kubeconfig: Path | None, namespace: str | None, timeout: float) -> None:
    """Power HOST off (spec.online: false)."""
    _change(host_id, kubeconfig, namespace, {"spec": {"online": False}}, timeout)


@power.command("cycle")
@_HOST
@options.kubeconfig
@_NAMESPACE
@_TIMEOUT
def power_cycle(
    host_id: str, kubeconfig: Path | None, namespace: str | None, timeout: float
) -> None:
    """Power-cycle HOST (the plunder.dev/reboot annotation, done by the controller)."""
    patch = {"metadata": {"annotations": {REBOOT_ANNOTATION: str(int(time.time()))}}}
    _change(host_id, kubeconfig, namespace, patch, timeout)


@power.command("status")
@_HOST
@options.kubeconfig
@_NAMESPACE
def power_status(host_id: str, kubeconfig: Path | None, namespace: str | None) -> None:
    """Print HOST's power as the controller last saw it."""
    _show(find_host(host_id, kubeconfig, namespace).to_api())
