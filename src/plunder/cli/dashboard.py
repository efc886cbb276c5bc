"""``plunderctl dashboard``: the fleet, its hosts and clusters in a browser, read-only.

Like ``kubectl proxy``, it runs on the user's machine with the user's kubeconfig and listens on
loopback; unlike it, it only reads (GET, LIST, WATCH) and answers only GET. See
:mod:`plunder.dashboard.server` for what keeps it so.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import click

from plunder.cli import options


@click.command("dashboard")
@options.kubeconfig
@click.option("-n", "--namespace", default=None, help="One namespace (default: all namespaces).")
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on. Anything but loopback lets others read the fleet with "
    "your credentials.",
)
@click.option(
    "--port",
    default=8002,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="The port (kubectl proxy's is 8001).",
)
def dashboard(kubeconfig: Path | None, namespace: str | None, address: str, port: int) -> None:
    """Serve a read-only web page of the hosts, their timelines and the clusters, live."""
    from plunder.dashboard import server
    from plunder.k8s.client import async_client

    if not server.is_loopback(address):
        click.echo(
            f"warning: listening on {address}: anyone who reaches it reads what your kubeconfig "
            "may read",
            err=True,
        )
    shown = f"[{address}]" if ":" in address else address
    click.echo(f"plunder dashboard on http://{shown}:{port}/ (read-only; Ctrl-C stops it)")

    async def run() -> None:
        client = async_client(kubeconfig)
        try:
            await server.serve(client, namespace, address, port)
        finally:
            await client.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
