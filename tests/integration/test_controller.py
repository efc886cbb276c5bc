"""`plunderctl controller` against the real plane: it starts, reconciles, and stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from plunder.api.infrastructure import PlunderCluster
from plunder.api.inventory import PlunderHost
from plunder.k8s.resources import resource_for
from plunder.lab import processes
from plunder.lab.plane import Plane, start_plane
from tests.conftest import create_available_host

pytestmark = pytest.mark.integration


def controller_argv(kubeconfig: Path, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "plunder.cli.main",
        "controller",
        "--kubeconfig",
        str(kubeconfig),
        "--liveness-port",
        str(port),
    ]


@pytest.fixture
def controller(plane: Plane, kube: Client, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    port = processes.free_port()
    log = (tmp_path / "controller.log").open("w")
    process = subprocess.Popen(
        controller_argv(plane.kubeconfig, port), stdout=log, stderr=subprocess.STDOUT, text=True
    )
    processes.wait_until(
        processes.http_ok(f"http://127.0.0.1:{port}/healthz"),
        "controller",
        processes.Managed("controller", process.pid, tmp_path / "controller.log"),
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()
    log.close()


def wait_for(predicate: object, timeout: float = 30.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_controller_reconciles_a_plundercluster_and_stops_on_sigterm(
    controller: subprocess.Popen[str], kube: Client, namespace: str
) -> None:
    resource = resource_for(PlunderCluster)
    kube.create(
        resource.from_dict(
            {
                "apiVersion": PlunderCluster.info.api_version,
                "kind": "PlunderCluster",
                "metadata": {"name": "c1", "namespace": namespace},
                "spec": {"controlPlaneEndpoint": {"host": "172.31.99.20", "port": 6443}},
            }
        )
    )

    def provisioned() -> bool:
        body = kube.get(resource, "c1", namespace=namespace)
        status = body.get("status") or {}
        return bool(status.get("initialization", {}).get("provisioned")) and status.get("ready")

    wait_for(provisioned)
    conditions = kube.get(resource, "c1", namespace=namespace)["status"]["conditions"]
    assert {(c["type"], c["status"]) for c in conditions} >= {
        ("Ready", "True"),
        ("Paused", "False"),
    }

    # Pausing is seen and reported.
    kube.patch(
        resource,
        "c1",
        {"metadata": {"annotations": {"cluster.x-k8s.io/paused": ""}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )

    def paused() -> bool:
        found = kube.get(resource, "c1", namespace=namespace)["status"]["conditions"]
        return any(c["type"] == "Paused" and c["status"] == "True" for c in found)

    wait_for(paused)

    started = time.monotonic()
    controller.send_signal(signal.SIGTERM)
    assert controller.wait(timeout=30) == 0
    assert time.monotonic() - started < 30


def test_controller_refuses_to_start_without_the_crds(tmp_path: Path) -> None:
    bare = start_plane(tmp_path / "bare")
    try:
        result = subprocess.run(
            controller_argv(bare.kubeconfig, processes.free_port()),
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "200"},
        )
    finally:
        bare.stop()
    assert result.returncode == 2
    assert "CRDs missing" in result.stderr
    assert "plunderctl crds | kubectl apply --server-side -f -" in result.stderr


def test_controller_moves_hosts_when_work_is_set_and_taken_away(
    controller: subprocess.Popen[str], kube: Client, namespace: str
) -> None:
    hosts = resource_for(PlunderHost)
    create_available_host(kube, namespace, "h1", "00:50:56:a5:11:20")
    image = {"url": "http://172.31.99.1:8080/files/os.raw", "checksum": "a" * 64}
    kube.patch(
        hosts, "h1", {"spec": {"image": image}}, namespace=namespace, patch_type=PatchType.MERGE
    )

    def state() -> str | None:
        return (kube.get(hosts, "h1", namespace=namespace).get("status") or {}).get("state")

    wait_for(lambda: state() == "provisioning")
    begun = ("PlunderProvision", "Plunder has begun provisioning the Operating System")
    # kopf posts events from a queue of its own, a moment after the write
    wait_for(
        lambda: begun in {(e.reason, e.message) for e in kube.list(Event, namespace=namespace)}
    )
    kube.patch(
        hosts, "h1", {"spec": {"image": None}}, namespace=namespace, patch_type=PatchType.MERGE
    )
    wait_for(lambda: state() == "deprovisioning")
