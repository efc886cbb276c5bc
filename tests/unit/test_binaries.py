"""The Go-program cache: keyed by the versions tools/go.mod pins."""

from __future__ import annotations

from pathlib import Path

import pytest

from plunder.images import binaries


def test_versions_come_from_tools_go_mod() -> None:
    versions = binaries.pinned_versions()
    assert versions["k8s.io/kubernetes"].startswith("v1.")
    assert versions["sigs.k8s.io/cluster-api"].startswith("v1.")
    assert versions["go.etcd.io/etcd/server/v3"].startswith("v3.")
    # every staging module is replaced by the published release of the same minor
    assert versions["k8s.io/apiserver"] == "v0." + versions["k8s.io/kubernetes"][len("v1.") :]


def test_cache_path_is_keyed_by_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLUNDER_CACHE", str(tmp_path))
    path = binaries.binary_path("kube-apiserver", {"k8s.io/kubernetes": "v1.99.0"})
    assert path == tmp_path / "bin" / "kube-apiserver-v1.99.0-static"


def test_a_cached_binary_is_not_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PLUNDER_CACHE", str(tmp_path))
    target = binaries.binary_path("etcd")
    target.parent.mkdir(parents=True)
    target.write_text("#!/bin/sh\n")
    monkeypatch.setenv("PATH", "")  # no go on PATH: a build attempt would fail
    assert binaries.ensure_binary("etcd") == target


def test_programs_of_one_module_and_flags_are_built_in_one_go_build() -> None:
    batches = binaries.build_batches(tuple(binaries.PROGRAMS))
    assert sorted(name for batch in batches for name in batch) == sorted(binaries.PROGRAMS)
    kubernetes = next(batch for batch in batches if "kube-apiserver" in batch)
    assert set(kubernetes) == {
        "kube-apiserver",
        "kubectl",
        "kubeadm",
        "kubelet",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
    }
    assert ("etcd",) in batches  # its own module, no version flags shared with anyone
    assert ("runc",) in batches  # cgo: never mixed with the static builds


def test_programs_whose_executables_share_a_name_are_never_in_one_batch() -> None:
    # Cluster API's bootstrap and control-plane managers are both packages named kubeadm.
    assert binaries.executable_name("kubeadm-bootstrap-manager") == "kubeadm"
    assert binaries.executable_name("kubeadm-control-plane-manager") == "kubeadm"
    for batch in binaries.build_batches(tuple(binaries.PROGRAMS)):
        names = [binaries.executable_name(name) for name in batch]
        assert len(names) == len(set(names)), batch


def test_a_major_version_suffix_is_not_the_executables_name() -> None:
    assert binaries.executable_name("etcd") == "server"  # go.etcd.io/etcd/server/v3
    assert binaries.executable_name("containerd-shim-runc-v2") == "containerd-shim-runc-v2"
