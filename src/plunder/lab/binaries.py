"""The Go programs the lab and the tests run, built from ``tools/`` into a cache keyed by version.

``tools/go.mod`` pins etcd, Kubernetes and Cluster API; each program is built once with
``go build`` into ``<cache>/bin/<name>-<version>`` and reused from then on. A new version in
``go.mod`` is a new file name, so a stale binary is never picked up.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GoProgram:
    """A ``main`` package of a module pinned in tools/go.mod."""

    name: str
    package: str
    module: str
    version_ldflags: tuple[str, ...] = ()
    """``-X`` variables that take the module's version (so ``--version`` tells the truth)."""


_KUBE_VERSION_VARS = (
    "k8s.io/component-base/version.gitVersion",
    "k8s.io/client-go/pkg/version.gitVersion",
)
_CAPI_VERSION_VARS = ("sigs.k8s.io/cluster-api/version.gitVersion",)

PROGRAMS: dict[str, GoProgram] = {
    program.name: program
    for program in (
        GoProgram("etcd", "go.etcd.io/etcd/server/v3", "go.etcd.io/etcd/server/v3"),
        GoProgram(
            "kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes",
            _KUBE_VERSION_VARS,
        ),
        GoProgram(
            "kubectl", "k8s.io/kubernetes/cmd/kubectl", "k8s.io/kubernetes", _KUBE_VERSION_VARS
        ),
        GoProgram(
            "capi-manager",
            "sigs.k8s.io/cluster-api/core",
            "sigs.k8s.io/cluster-api",
            _CAPI_VERSION_VARS,
        ),
        GoProgram(
            "kubeadm-bootstrap-manager",
            "sigs.k8s.io/cluster-api/bootstrap/kubeadm",
            "sigs.k8s.io/cluster-api",
            _CAPI_VERSION_VARS,
        ),
        GoProgram(
            "kubeadm-control-plane-manager",
            "sigs.k8s.io/cluster-api/controlplane/kubeadm",
            "sigs.k8s.io/cluster-api",
            _CAPI_VERSION_VARS,
        ),
        GoProgram(
            "clusterctl",
            "sigs.k8s.io/cluster-api/cmd/clusterctl",
            "sigs.k8s.io/cluster-api",
            _CAPI_VERSION_VARS,
        ),
    )
}

PLANE_PROGRAMS = ("etcd", "kube-apiserver", "kubectl")


class BuildError(RuntimeError):
    """A Go program could not be built."""


def repository_root() -> Path:
    """The checkout this package runs from (it holds ``tools/``)."""
    override = os.environ.get("PLUNDER_REPO")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3]


def tools_dir() -> Path:
    """The Go module that pins the programs."""
    return repository_root() / "tools"


def cache_dir() -> Path:
    """Where heavy builds are kept: ``$PLUNDER_CACHE``, else ``~/.cache/plunder``."""
    override = os.environ.get("PLUNDER_CACHE")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "plunder"


def pinned_versions(go_mod: Path | None = None) -> dict[str, str]:
    """Module path → version, from the ``require`` lines of tools/go.mod."""
    text = (go_mod or tools_dir() / "go.mod").read_text()
    return dict(re.findall(r"^\s*([\w./-]+)\s+(v[\w.+-]+)(?:\s*//.*)?$", text, re.MULTILINE))


def binary_path(name: str, versions: dict[str, str] | None = None) -> Path:
    """Where the program ``name`` at its pinned version is (or will be) cached."""
    program = PROGRAMS[name]
    version = (versions or pinned_versions())[program.module]
    return cache_dir() / "bin" / f"{name}-{version}"


def ensure_binary(name: str) -> Path:
    """Return the cached program, building it first if it is missing."""
    versions = pinned_versions()
    target = binary_path(name, versions)
    if target.exists():
        return target
    program = PROGRAMS[name]
    version = versions[program.module]
    target.parent.mkdir(parents=True, exist_ok=True)
    ldflags = " ".join(["-s", "-w", *(f"-X {var}={version}" for var in program.version_ldflags)])
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    log.info("building %s %s from the Go module proxy (once; cached as %s)", name, version, target)
    result = subprocess.run(
        ["go", "build", "-trimpath", f"-ldflags={ldflags}", "-o", str(partial), program.package],
        cwd=tools_dir(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"go build {program.package} failed:\n{result.stderr[-4000:]}")
    partial.rename(target)  # atomic: a concurrent builder never sees half a binary
    return target


def ensure_binaries(names: tuple[str, ...] = PLANE_PROGRAMS) -> dict[str, Path]:
    """Build (once) and return several programs."""
    return {name: ensure_binary(name) for name in names}


def link_dir(binaries: dict[str, Path]) -> Path:
    """A folder of unversioned links (``kubectl`` …) to put on a person's PATH."""
    folder = cache_dir() / "bin" / "current"
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in binaries.items():
        link = folder / name
        link.unlink(missing_ok=True)
        link.symlink_to(path)
    return folder


def module_dir(module: str) -> Path:
    """The unpacked source of a module pinned in tools/go.mod (downloaded once by Go)."""
    version = pinned_versions()[module]
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=tools_dir(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"go mod download {module}@{version} failed:\n{result.stderr[-4000:]}")
    return Path(json.loads(result.stdout)["Dir"])


CLUSTER_API_CRD_FOLDERS = ("core", "bootstrap/kubeadm", "controlplane/kubeadm")


def cluster_api_crd_files(components: tuple[str, ...] = CLUSTER_API_CRD_FOLDERS) -> list[Path]:
    """Cluster API's own CRD manifests, from the pinned release's module source."""
    root = module_dir("sigs.k8s.io/cluster-api")
    return sorted(
        path
        for component in components
        for path in (root / component / "config" / "crd" / "bases").glob("*.yaml")
    )
