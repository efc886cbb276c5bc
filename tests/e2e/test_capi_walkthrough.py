"""The seed's walkthrough in the lab, end to end, with Cluster API's real controllers.

`plunderctl lab up --hosts 1` runs everything (plane, Cluster API, the provider, the boot service,
one blank BIOS host with its BMC); `kubectl apply -f examples/simple/` then takes the
control-plane Machine to provisioned on that host with a ``plunder://<mac>`` provider ID, and the
kubeadm bootstrap data reaches the host: cloud-init runs its ``kubeadm init`` (which fails, as the
image carries no Kubernetes: that is as far as a lab without container images goes). The worker
Machine waits for its bootstrap data, which needs an initialized control plane.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from plunder.images import binaries
from plunder.k8s import capi
from plunder.k8s.client import sync_client
from tests.conftest import eventually, isolated_lab, nested

pytestmark = pytest.mark.e2e

HOST_MAC = "00:50:56:a5:11:20"
EXAMPLES = binaries.repository_root() / "examples" / "simple"
"""The repository's own files, as a person applies them."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A lab of one host on the examples' subnet (172.31.99.0/24), in a namespace of its own."""
    folder = tmp_path_factory.mktemp("lab")
    examples = IPv4Network("172.31.99.0/24")
    with isolated_lab(folder, "--hosts", "1", "--firmware", "bios", subnet=examples) as running:
        yield running.folder


def test_the_walkthrough_provisions_the_control_plane_machine_with_its_kubeadm_data(
    lab: Path,
) -> None:
    env = {**os.environ, "KUBECONFIG": str(lab / "kubeconfig")}
    applied = subprocess.run(
        [str(binaries.ensure_binary("kubectl")), "apply", "-f", str(EXAMPLES)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stderr
    kube = sync_client(lab / "kubeconfig")

    def machine(name: str) -> object:
        return kube.get(capi.Machine, name, namespace="default")

    # Discovery, inspection, the claim, the image, cloud-init's phone home: minutes under TCG.
    eventually(
        lambda: nested(
            machine("controlplane"), "status", "initialization", "infrastructureProvisioned"
        ),
        "the control-plane Machine's infrastructure provisioned",
        timeout=540,
    )
    assert nested(machine("controlplane"), "spec", "providerID") == f"plunder://{HOST_MAC}"
    addresses = nested(machine("controlplane"), "status", "addresses")
    assert {"type": "InternalIP", "address": "172.31.99.20"} in addresses

    # The host ran the kubeadm bootstrap data: cloud-init's runcmd is `kubeadm init`.
    serial = (lab / "vms" / "plunder-host-1.serial.log").read_text(errors="replace")
    assert "runcmd: 2: kubeadm: not found" in serial, serial[-3000:]

    # The worker waits for bootstrap data that needs an initialized control plane.
    assert nested(machine("worker"), "spec", "bootstrap", "dataSecretName") is None
    assert nested(machine("worker"), "status", "phase") == "Pending"
