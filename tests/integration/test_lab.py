"""`plunderctl lab up/status/down` as a person runs them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from plunder.api import crdgen
from plunder.lab import processes
from tests.conftest import lab_up, plunderctl

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "simple"


def test_lab_up_status_down(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    # The management plane alone (--hosts 0); tests/e2e/test_lab_hosts.py runs the hosts too.
    up = lab_up(lab_dir, "--hosts", "0")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "The lab is up: Kubernetes v1.36.3" in up.stdout
        assert f"export KUBECONFIG={lab_dir / 'kubeconfig'}" in up.stdout

        # The printed instructions work: kubectl from the printed PATH sees the CRDs.
        exports = dict(
            item.split("=", 1) for item in up.stdout.split("export ", 1)[1].splitlines()[0].split()
        )
        kubectl = Path(exports["PATH"].split(":")[0]) / "kubectl"
        crds = subprocess.run(
            [str(kubectl), "get", "crds", "-o", "name"],
            capture_output=True,
            text=True,
            env={**os.environ, "KUBECONFIG": exports["KUBECONFIG"]},
            timeout=60,
        )
        ours = {n.split("/", 1)[1] for n in crds.stdout.split() if "plunder" in n}
        assert ours == {kind.info.crd_name for kind in crdgen.ALL_KINDS}, crds.stderr

        # The seed's walkthrough applies, and the lab's controller provisions the PlunderCluster.
        env = {**os.environ, "KUBECONFIG": exports["KUBECONFIG"]}
        for manifest in ("cluster.yaml", "machine.yaml"):
            applied = subprocess.run(
                [str(kubectl), "apply", "-f", str(EXAMPLES / manifest)],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert applied.returncode == 0, applied.stderr
        waited = subprocess.run(
            [
                str(kubectl),
                "wait",
                "plundercluster/cluster-plunder",
                "--timeout=60s",
                "--for=jsonpath={.status.initialization.provisioned}=true",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=90,
        )
        assert waited.returncode == 0, waited.stderr

        again = plunderctl("lab", "up", "--dir", str(lab_dir))
        assert again.returncode == 1 and "already up" in again.stderr

        status = plunderctl("lab", "status", "--dir", str(lab_dir))
        assert status.returncode == 0
        # etcd, kube-apiserver, the controller, Cluster API's three managers and the IPAM provider.
        assert status.stdout.count("running") == 7

        # A part killed and started again with its arguments, as its Deployment would; the API
        # server restarted with etcd kept, every object still there.
        for component, *kill in (("controller", "--kill"), ("kube-apiserver",)):
            before = int((lab_dir / f"{component}.pid").read_text())
            restart = plunderctl("lab", "restart", component, *kill, "--dir", str(lab_dir))
            assert restart.returncode == 0, restart.stdout + restart.stderr
            after = int((lab_dir / f"{component}.pid").read_text())
            assert after != before and not processes.is_running(before)
            assert f"pid {before} stopped, pid {after} answering after" in restart.stdout
        waited = subprocess.run(
            [str(kubectl), "get", "plundercluster/cluster-plunder", "-o", "name"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert waited.returncode == 0, waited.stderr
        no_boot = plunderctl("lab", "restart", "boot", "--dir", str(lab_dir))
        assert no_boot.returncode == 1 and "boot: no running process" in no_boot.stderr
        pids = [
            int((lab_dir / f"{name}.pid").read_text())
            for name in ("etcd", "kube-apiserver", "controller")
        ]
    finally:
        down = plunderctl("lab", "down", "--dir", str(lab_dir))
    assert down.returncode == 0
    assert (
        "stopped: controller, ipam-in-cluster-manager, capi-manager, kubeadm-bootstrap-manager, "
        "kubeadm-control-plane-manager, kube-apiserver, etcd" in down.stdout
    )
    assert not any(processes.is_running(pid) for pid in pids)
    assert not lab_dir.exists()
    assert plunderctl("lab", "status", "--dir", str(lab_dir)).returncode == 3
