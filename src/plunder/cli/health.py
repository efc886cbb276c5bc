"""``plunderctl host clear-unhealthy HOST``: give a host that failed remediation back to the pool.

A PlunderRemediation that ran out of tries marks its host with ``plunder.dev/unhealthy`` (the
value says which remediation and why), and no machine claims the host while the mark is there.
A person who repaired the server removes it: this command, or
``kubectl annotate plunderhost HOST plunder.dev/unhealthy-``.
"""

from __future__ import annotations

from pathlib import Path

import click
from lightkube.types import PatchType
from rich.console import Console

from plunder.api.inventory import UNHEALTHY_ANNOTATION, PlunderHost
from plunder.cli import options
from plunder.cli.power import find_host
from plunder.k8s.client import sync_client
from plunder.k8s.resources import resource_for

console = Console()


@click.group()
def host() -> None:
    """One host's standing in the pool."""


@host.command("clear-unhealthy")
@click.argument("host_id", metavar="HOST")
@options.kubeconfig
@click.option("--namespace", default=None, help="The host's namespace (default: all).")
def clear_unhealthy(host_id: str, kubeconfig: Path | None, namespace: str | None) -> None:
    """Remove HOST's unhealthy mark, so machines may claim it again."""
    found = find_host(host_id, kubeconfig, namespace)
    mark = (found.metadata.annotations or {}).get(UNHEALTHY_ANNOTATION)
    if mark is None:
        console.print(f"{found.metadata.name} is not marked unhealthy")
        return
    sync_client(kubeconfig).patch(
        resource_for(PlunderHost),
        found.metadata.name or "",
        {"metadata": {"annotations": {UNHEALTHY_ANNOTATION: None}}},
        namespace=found.metadata.namespace,
        patch_type=PatchType.MERGE,
    )
    console.print(f"{found.metadata.name}: cleared ({mark})")
