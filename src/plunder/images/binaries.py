"""The Go programs the lab and the tests run, built from ``tools/`` into a cache keyed by version.

``tools/go.mod`` pins etcd, Kubernetes and Cluster API; each program is built once with
``go build`` into ``<cache>/bin/<name>-<version>-<linkage>`` and reused from then on. A new
version in ``go.mod`` is a new file name, so a stale binary is never picked up.

Every program is built static (``CGO_ENABLED=0``, linkage ``static``): the same etcd and
kube-apiserver then serve the test plane on this machine and run inside the node image's
container images, which hold no C library. The few that need cgo (runc, for libseccomp) link it
statically (linkage ``cgo-static``). The linkage is part of the cache key, so a binary built
before this rule (dynamically linked) is never mistaken for a static one.

A program whose dependencies disagree with that module's (the in-cluster IPAM provider pins an
older Cluster API and Kubernetes) has a module of its own under ``tools/`` (``tools/ipam``), so
building it never moves the versions the others are built from.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
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
    tools: str = "."
    """The folder under ``tools/`` of the go.mod that pins it."""
    cgo: bool = False
    """Needs cgo (linked statically all the same); every other program is built without it."""
    tags: tuple[str, ...] = ()
    """Go build tags."""

    @property
    def linkage(self) -> str:
        """The build's linkage, part of the cache key."""
        return "cgo-static" if self.cgo else "static"


_KUBE_VERSION_VARS = (
    "k8s.io/component-base/version.gitVersion",
    "k8s.io/client-go/pkg/version.gitVersion",
)
_CAPI_VERSION_VARS = ("sigs.k8s.io/cluster-api/version.gitVersion",)
IPAM_IN_CLUSTER_MODULE = "sigs.k8s.io/cluster-api-ipam-provider-in-cluster"

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
        # The node image's Kubernetes (static, so they also run inside its container images).
        *(
            GoProgram(
                name, f"k8s.io/kubernetes/cmd/{name}", "k8s.io/kubernetes", _KUBE_VERSION_VARS
            )
            for name in (
                "kubeadm",
                "kubelet",
                "kube-controller-manager",
                "kube-scheduler",
                "kube-proxy",
            )
        ),
        # The node's container runtime: containerd v2 (Debian 12's 1.6 is too old for
        # Kubernetes 1.36) and runc, which needs cgo for libseccomp (linked in statically).
        *(
            GoProgram(
                name,
                f"github.com/containerd/containerd/v2/cmd/{name}",
                "github.com/containerd/containerd/v2",
                ("github.com/containerd/containerd/v2/version.Version",),
                tools="containerd",
                tags=("no_btrfs", "no_devmapper", "no_zfs"),
            )
            for name in ("containerd", "ctr", "containerd-shim-runc-v2")
        ),
        GoProgram(
            "runc",
            "github.com/opencontainers/runc",
            "github.com/opencontainers/runc",
            tools="runc",
            cgo=True,
            tags=("seccomp", "netgo", "osusergo"),
        ),
        # The pod network: bridge + host-local addresses per node, plus loopback and portmap.
        *(
            GoProgram(
                f"cni-{path.rsplit('/', 1)[1]}",
                f"github.com/containernetworking/plugins/plugins/{path}",
                "github.com/containernetworking/plugins",
                tools="cni",
            )
            for path in ("main/bridge", "ipam/host-local", "main/loopback", "meta/portmap")
        ),
        GoProgram(
            "coredns", "github.com/coredns/coredns", "github.com/coredns/coredns", tools="coredns"
        ),
        GoProgram(
            "ipam-in-cluster-manager",
            IPAM_IN_CLUSTER_MODULE,
            IPAM_IN_CLUSTER_MODULE,
            ("k8s.io/client-go/pkg/version.gitVersion",),  # what its start-up log reports
            tools="ipam",
        ),
    )
}

PLANE_PROGRAMS = ("etcd", "kube-apiserver", "kubectl")

NODE_PROGRAMS = (
    "kubeadm",
    "kubelet",
    "kubectl",
    "containerd",
    "ctr",
    "containerd-shim-runc-v2",
    "runc",
    "cni-bridge",
    "cni-host-local",
    "cni-loopback",
    "cni-portmap",
)
"""What the node image installs on the host itself."""

CONTROL_PLANE_IMAGE_PROGRAMS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "etcd",
    "coredns",
)
"""What the node image's preloaded control-plane container images run."""


class BuildError(RuntimeError):
    """A Go program could not be built."""


def repository_root() -> Path:
    """The checkout this package runs from (it holds ``tools/``)."""
    override = os.environ.get("PLUNDER_REPO")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3]


def tools_dir(folder: str = ".") -> Path:
    """The Go module that pins the programs (``folder``: one of its nested modules)."""
    return repository_root() / "tools" / folder


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


def program_versions(name: str) -> dict[str, str]:
    """The versions pinned by the go.mod that builds the program ``name``."""
    return pinned_versions(tools_dir(PROGRAMS[name].tools) / "go.mod")


def binary_path(name: str, versions: dict[str, str] | None = None) -> Path:
    """Where the program ``name`` at its pinned version is (or will be) cached."""
    program = PROGRAMS[name]
    version = (versions or program_versions(name))[program.module]
    return cache_dir() / "bin" / f"{name}-{version}-{program.linkage}"


def ensure_binary(name: str) -> Path:
    """Return the cached program, building it first if it is missing."""
    return ensure_binaries((name,))[name]


def ensure_binaries(names: tuple[str, ...] = PLANE_PROGRAMS) -> dict[str, Path]:
    """Build (once) and return several programs.

    The missing ones are built in batches (:func:`build_batches`): one ``go build`` per module
    and set of flags, which loads the module's package graph once and links its programs side
    by side. A cache-wide lock makes a second builder (another thread, or another ``plunderctl``
    at once) wait for the first and then find the programs built, instead of building them too.
    """
    wanted = {name: binary_path(name) for name in names}
    if all(path.exists() for path in wanted.values()):
        return wanted
    folder = cache_dir() / "bin"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = tuple(name for name, path in wanted.items() if not path.exists())
        for batch in build_batches(missing):
            _build(batch)
    return wanted


def build_batches(names: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Group programs that one ``go build`` can make: same module folder, flags and version.

    Programs whose executables would have the same file name (Cluster API's two ``kubeadm``
    managers) go into different batches, since ``go build -o DIR/`` names each by its package.
    """
    batches: dict[tuple[object, ...], list[list[str]]] = {}
    for name in names:
        program = PROGRAMS[name]
        version = program_versions(name)[program.module]
        key = (program.tools, program.cgo, program.tags, program.version_ldflags, version)
        groups = batches.setdefault(key, [])
        for group in groups:
            if all(executable_name(other) != executable_name(name) for other in group):
                group.append(name)
                break
        else:
            groups.append([name])
    return [tuple(group) for groups in batches.values() for group in groups]


def executable_name(name: str) -> str:
    """The file ``go build -o DIR/`` writes for program ``name``: its package's last element.

    A major-version suffix (``/v3``) is skipped, as the go command does.
    """
    elements = PROGRAMS[name].package.split("/")
    if re.fullmatch(r"v[0-9]+", elements[-1]) and len(elements) > 1:
        return elements[-2]
    return elements[-1]


def _build(batch: tuple[str, ...]) -> None:
    """One ``go build`` for ``batch`` (:func:`build_batches`), each result renamed into place."""
    program = PROGRAMS[batch[0]]
    version = program_versions(batch[0])[program.module]
    targets = {name: binary_path(name) for name in batch}
    flags = ["-s", "-w", *(f"-X {var}={version}" for var in program.version_ldflags)]
    if program.cgo:
        flags.append("-extldflags=-static")
    out = cache_dir() / "bin" / f".build-{os.getpid()}-{executable_name(batch[0])}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log.info(
        "building %s %s from the Go module proxy (once; cached in %s)",
        ", ".join(batch),
        version,
        out.parent,
    )
    argv = ["go", "build", "-trimpath", f"-ldflags={' '.join(flags)}"]
    if program.tags:
        argv.append(f"-tags={','.join(program.tags)}")
    try:
        result = subprocess.run(
            [*argv, "-o", f"{out}/", *(PROGRAMS[name].package for name in batch)],
            cwd=tools_dir(program.tools),
            env={**os.environ, "CGO_ENABLED": "1" if program.cgo else "0"},
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            packages = " ".join(PROGRAMS[name].package for name in batch)
            raise BuildError(f"go build {packages} failed:\n{result.stderr[-4000:]}")
        for name, target in targets.items():
            built = out / executable_name(name)
            if not built.is_file():
                raise BuildError(f"go build left no {built.name} for {name} in {out}")
            built.rename(target)  # atomic: a concurrent reader never sees half a binary
    finally:
        shutil.rmtree(out, ignore_errors=True)


def link_dir(binaries: dict[str, Path]) -> Path:
    """A folder of unversioned links (``kubectl`` …) to put on a person's PATH."""
    folder = cache_dir() / "bin" / "current"
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in binaries.items():
        link = folder / name
        link.unlink(missing_ok=True)
        link.symlink_to(path)
    return folder


def module_dir(module: str, tools: str = ".") -> Path:
    """The unpacked source of a module pinned in tools/go.mod (downloaded once by Go).

    ``tools`` names the nested module under ``tools/`` that pins it instead.
    """
    version = pinned_versions(tools_dir(tools) / "go.mod")[module]
    result = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=tools_dir(tools),
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
    return program_crd_files("capi-manager", components)


def program_crd_files(name: str, components: tuple[str, ...] = (".",)) -> list[Path]:
    """The CRD manifests (``<component>/config/crd/bases``) in the source of program ``name``."""
    program = PROGRAMS[name]
    root = module_dir(program.module, program.tools)
    return sorted(
        path
        for component in components
        for path in (root / component / "config" / "crd" / "bases").glob("*.yaml")
    )


def ipam_in_cluster_crd_files() -> list[Path]:
    """The in-cluster IPAM provider's pool CRDs (InClusterIPPool, GlobalInClusterIPPool …)."""
    return program_crd_files("ipam-in-cluster-manager")
