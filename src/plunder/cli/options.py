"""Options several plunderctl commands share."""

from __future__ import annotations

from pathlib import Path

import click

kubeconfig = click.option(
    "--kubeconfig",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="KUBECONFIG",
    help="The management cluster's kubeconfig (default: $KUBECONFIG, else in-cluster).",
)
