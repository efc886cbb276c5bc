"""The lab: everything this project runs, on one machine, for a person to try and for CI.

``up`` starts the management plane (etcd + kube-apiserver), installs our CRDs and Cluster API's
(so the examples apply) and runs the controller, each as a background process recorded in the
lab folder; ``down`` stops them and removes the folder; ``status`` says what runs. Later parts
(the boot service, virtual hosts, Cluster API's controllers) join the same sequence.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from plunder.k8s import client as k8s_client
from plunder.k8s import crds
from plunder.lab import binaries, processes
from plunder.lab.plane import PlanePorts, start_plane

COMPONENTS = ("controller", "kube-apiserver", "etcd")  # the order they are stopped in


def default_lab_dir() -> Path:
    """``$PLUNDER_LAB_DIR``, else ``~/.plunder/lab``."""
    return Path(os.environ.get("PLUNDER_LAB_DIR", Path.home() / ".plunder" / "lab"))


@dataclass(frozen=True)
class LabInfo:
    """What a person needs to use a running lab."""

    kubeconfig: Path
    bin_dir: Path
    server: str
    version: str
    crds: list[str]


class LabError(RuntimeError):
    """The lab cannot do what was asked (already up, a port taken, …)."""


def up(lab_dir: Path, ports: PlanePorts, controller_port: int) -> LabInfo:
    """Start the plane, install the CRDs and start the controller."""
    running = [name for name in COMPONENTS if processes.recorded_pid(lab_dir, name)]
    if running:
        raise LabError(
            f"the lab in {lab_dir} is already up ({', '.join(running)}); "
            "run `plunderctl lab down` first"
        )
    taken = [port for port in (*ports.all(), controller_port) if not processes.port_is_free(port)]
    if taken:
        raise LabError(
            f"port {', '.join(map(str, taken))} already in use: another lab or API "
            "server? Choose others with --apiserver-port, --etcd-port, --controller-port"
        )
    shutil.rmtree(lab_dir, ignore_errors=True)
    bin_dir = binaries.link_dir(binaries.ensure_binaries(binaries.PLANE_PROGRAMS))
    plane = start_plane(lab_dir, ports)
    try:
        client = k8s_client.sync_client(plane.kubeconfig)
        installed = crds.install_plunder_crds(client)
        crds.install_crd_files(client, binaries.cluster_api_crd_files())
        controller = processes.start(
            "controller",
            [
                sys.executable,
                "-m",
                "plunder.cli.main",
                "controller",
                "--kubeconfig",
                str(plane.kubeconfig),
                "--liveness-port",
                str(controller_port),
            ],
            lab_dir,
        )
        processes.wait_until(
            processes.http_ok(f"http://127.0.0.1:{controller_port}/healthz"),
            "controller",
            controller,
            timeout=60,
        )
    except Exception:
        down(lab_dir, remove=False)
        raise
    return LabInfo(plane.kubeconfig, bin_dir, plane.server, plane.version(), installed)


def down(lab_dir: Path, remove: bool = True) -> list[str]:
    """Stop every recorded process (controller first, etcd last); remove the lab folder."""
    stopped = [name for name in COMPONENTS if processes.stop_recorded(lab_dir, name)]
    if remove:
        shutil.rmtree(lab_dir, ignore_errors=True)
    return stopped


def status(lab_dir: Path) -> dict[str, int | None]:
    """Each component's pid, or None where it does not run."""
    return {name: processes.recorded_pid(lab_dir, name) for name in reversed(COMPONENTS)}
