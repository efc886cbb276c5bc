"""The provider's release artifacts, as clusterctl reads them from a provider repository.

``infrastructure-components.yaml`` is built from ``config/default`` with the pinned kubectl's
kustomize and committed (a test fails when it drifts from config/). A local clusterctl repository
is the layout ``infrastructure-plunder/<version>/`` holding the components, ``metadata.yaml``
and the ``templates/`` (cluster templates and ClusterClass definitions).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import click
import yaml

from plunder import __version__
from plunder.images import binaries

PROVIDER = "infrastructure-plunder"
COMPONENTS_FILE = "infrastructure-components.yaml"
METADATA_FILE = "metadata.yaml"
CLUSTERCTL_CONFIG = "clusterctl.yaml"
HEADER = (
    "# Generated from config/default by `plunderctl release` (make release); do not edit.\n"
    "# Install with: clusterctl init --infrastructure plunder (or kubectl apply --server-side -f)\n"
)


def release_version() -> str:
    """The version clusterctl sees: the package's, with a ``v``."""
    return f"v{__version__}"


def render_components(root: Path | None = None) -> str:
    """``kubectl kustomize`` of config/default and config/policy, with a header.

    The admission policies are cluster-scoped and kept out of config/default, whose namespace
    transformer does not know their kind and would give them a namespace.
    """
    root = root or binaries.repository_root()
    kubectl = binaries.ensure_binary("kubectl")
    built = [
        subprocess.run(
            [str(kubectl), "kustomize", str(root / "config" / folder)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for folder in ("default", "policy")
    ]
    return HEADER + "---\n".join(built)


def write_components(root: Path | None = None) -> Path:
    """Write the release components file at the repository's root."""
    root = root or binaries.repository_root()
    target = root / COMPONENTS_FILE
    target.write_text(render_components(root))
    return target


def write_local_repository(folder: Path, root: Path | None = None) -> Path:
    """Lay out a clusterctl local repository in ``folder``; return the version's folder.

    ``<folder>/clusterctl.yaml`` points clusterctl at it: ``clusterctl generate cluster NAME
    --infrastructure plunder:<version> --config <folder>/clusterctl.yaml``.
    """
    root = root or binaries.repository_root()
    version_dir = folder / PROVIDER / release_version()
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / COMPONENTS_FILE).write_text(render_components(root))
    shutil.copyfile(root / METADATA_FILE, version_dir / METADATA_FILE)
    for template in sorted((root / "templates").glob("*.yaml")):
        shutil.copyfile(template, version_dir / template.name)
    # "latest": clusterctl init picks the newest version folder.
    write_clusterctl_config(
        folder / CLUSTERCTL_CONFIG, folder / PROVIDER / "latest" / COMPONENTS_FILE
    )
    return version_dir


def write_clusterctl_config(path: Path, components: Path) -> None:
    """A clusterctl configuration that finds this provider in a local repository.

    The version check is off: clusterctl would otherwise ask GitHub for its latest release.
    """
    config = {
        "providers": [
            {
                "name": "plunder",
                "type": "InfrastructureProvider",
                "url": components.absolute().as_uri(),
            }
        ],
        "CLUSTERCTL_DISABLE_VERSIONCHECK": "true",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


@click.command()
@click.option(
    "--repository",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also lay out a clusterctl local repository here (infrastructure-plunder/<version>/).",
)
def release(repository: Path | None) -> None:
    """Build infrastructure-components.yaml from config/default (and a local repository)."""
    click.echo(f"wrote {write_components()}", err=True)
    if repository is not None:
        click.echo(f"wrote {write_local_repository(repository)}", err=True)
