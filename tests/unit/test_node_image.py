"""The node image's parts that need no build: container archives, configuration, the pod network."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from plunder.images import containers, nodeimage

KUBEADM_LISTING = """registry.k8s.io/kube-apiserver:v1.36.3
registry.k8s.io/kube-controller-manager:v1.36.3
registry.k8s.io/kube-scheduler:v1.36.3
registry.k8s.io/kube-proxy:v1.36.3
registry.k8s.io/coredns/coredns:v1.14.2
registry.k8s.io/pause:3.10.2
registry.k8s.io/etcd:3.6.8-0
"""


def _spec(tmp_path: Path) -> containers.ImageSpec:
    program = tmp_path / "etcd"
    program.write_bytes(b"\x7fELF pretend")
    program.chmod(0o755)
    return containers.ImageSpec(
        "registry.k8s.io/etcd:3.6.8-0",
        {"usr/local/bin/etcd": program},
        links={"bin": "usr/bin"},
        entrypoint=["/usr/local/bin/etcd"],
    )


def test_an_archive_is_an_oci_layout_named_as_kubeadm_expects(tmp_path: Path) -> None:
    built = containers.write_archive(_spec(tmp_path), tmp_path / "etcd.tar")
    with tarfile.open(built.path) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        docker = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        descriptor = index["manifests"][0]
        assert descriptor["annotations"][containers.NAME_ANNOTATION] == (
            "registry.k8s.io/etcd:3.6.8-0"
        )
        assert descriptor["annotations"][containers.REF_ANNOTATION] == "3.6.8-0"
        assert docker[0]["RepoTags"] == ["registry.k8s.io/etcd:3.6.8-0"]
        digest = descriptor["digest"].split(":", 1)[1]
        manifest_bytes = tar.extractfile(f"blobs/sha256/{digest}").read()  # type: ignore[union-attr]
        assert hashlib.sha256(manifest_bytes).hexdigest() == digest  # content-addressed
        manifest = json.loads(manifest_bytes)
        layer_digest = manifest["layers"][0]["digest"].split(":", 1)[1]
        layer = tar.extractfile(f"blobs/sha256/{layer_digest}").read()  # type: ignore[union-attr]
        config_digest = manifest["config"]["digest"].split(":", 1)[1]
        config = json.loads(tar.extractfile(f"blobs/sha256/{config_digest}").read())  # type: ignore[union-attr]
    assert config["rootfs"]["diff_ids"] == [f"sha256:{layer_digest}"]  # an uncompressed layer
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/etcd"]
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    (tmp_path / "layer.tar").write_bytes(layer)
    with tarfile.open(tmp_path / "layer.tar") as rootfs:
        program = rootfs.getmember("usr/local/bin/etcd")
        assert (program.mode, program.uid, program.mtime) == (0o755, 0, 0)
        assert rootfs.getmember("bin").linkname == "usr/bin"
        assert rootfs.getmember("tmp").mode == 0o1777
        assert b"root:x:0:0" in rootfs.extractfile("etc/passwd").read()  # type: ignore[union-attr]


def test_the_same_inputs_give_the_same_digest(tmp_path: Path) -> None:
    first = containers.write_archive(_spec(tmp_path), tmp_path / "a.tar")
    second = containers.write_archive(_spec(tmp_path), tmp_path / "b.tar")
    assert first.manifest_digest == second.manifest_digest


def test_kubeadms_listing_names_every_image() -> None:
    images = nodeimage.KubeadmImages.parse(KUBEADM_LISTING)
    assert images.names["coredns"] == "registry.k8s.io/coredns/coredns:v1.14.2"
    assert images.names["pause"] == "registry.k8s.io/pause:3.10.2"
    assert containers.archive_name(images.names["etcd"]) == "etcd_3.6.8-0.tar"


def test_a_listing_with_an_unknown_image_is_refused() -> None:
    with pytest.raises(nodeimage.NodeImageError, match="other images"):
        nodeimage.KubeadmImages.parse(KUBEADM_LISTING + "registry.k8s.io/something:v1\n")


def test_containerd_runs_runc_with_the_systemd_cgroup_driver_and_the_preloaded_pause() -> None:
    config = nodeimage.containerd_config("registry.k8s.io/pause:3.10.2")
    assert "version = 3" in config
    assert "SystemdCgroup = true" in config
    assert "sandbox = 'registry.k8s.io/pause:3.10.2'" in config
    assert f"bin_dirs = ['{nodeimage.CNI_BIN}']" in config


def test_the_cni_config_gives_pods_addresses_from_the_nodes_pod_cidr() -> None:
    config = json.loads(nodeimage.cni_config("192.168.1.0/24"))
    bridge = config["plugins"][0]
    assert bridge["type"] == "bridge" and bridge["isGateway"] is True
    assert bridge["ipMasq"] is False  # pods see each other's real addresses across nodes
    assert bridge["ipam"]["ranges"] == [[{"subnet": "192.168.1.0/24"}]]


def test_the_pod_network_script_is_clean_shell(tmp_path: Path) -> None:
    script = tmp_path / "plunder-podnet"
    script.write_text(nodeimage.podnet_script())
    result = subprocess.run(
        ["shellcheck", "--shell=sh", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_the_pod_network_script_configures_its_node_and_routes_to_the_others(
    tmp_path: Path,
) -> None:
    """Run the script's per-node step with stand-ins for ip/iptables, and read what it did."""
    script = nodeimage.podnet_script()
    body = script.split("until [ -s", 1)[0]  # the functions, not the watch loop
    fake = tmp_path / "bin"
    fake.mkdir()
    calls = tmp_path / "calls"
    for tool in ("ip", "iptables", "iptables-restore"):
        (fake / tool).write_text(
            f'#!/bin/sh\necho "{tool} $*" >> {calls}\ncat >> {calls} || true\n'
        )
        (fake / tool).chmod(0o755)
    (fake / "hostname").write_text("#!/bin/sh\necho controlplane\n")
    (fake / "hostname").chmod(0o755)
    cni = tmp_path / "10-plunder.conflist"
    body = body.replace("/run/plunder-podnet", str(tmp_path / "state"))
    body = body.replace(nodeimage.CNI_CONF, str(cni)).replace("/etc/cni/net.d", str(tmp_path))
    steps = body + (
        "node controlplane 192.168.0.0/24 172.31.99.20 </dev/null\n"
        "node worker 192.168.1.0/24 172.31.99.21 </dev/null\n"
    )
    result = subprocess.run(
        ["sh", "-c", steps],
        capture_output=True,
        text=True,
        env={"PATH": f"{fake}:/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(cni.read_text())["plugins"][0]["ipam"]["ranges"] == [
        [{"subnet": "192.168.0.0/24"}]
    ]
    done = calls.read_text()
    assert "ip route replace 192.168.1.0/24 via 172.31.99.21" in done
    assert "192.168.0.0/24 via" not in done  # no route to its own pods
    assert "-A PLUNDER-PODNET -d 192.168.1.0/24 -j RETURN" in done  # other pods: not rewritten
    assert "-A PLUNDER-PODNET -j MASQUERADE" in done  # everything else leaving: masqueraded


def test_on_a_control_plane_node_the_script_lets_nodes_read_the_nodes(tmp_path: Path) -> None:
    """Kubernetes 1.32+ lets a node read only its own Node: the script grants the rest."""
    script = nodeimage.podnet_script()
    body = script.split("until [ -s", 1)[0]
    applied = tmp_path / "applied.yaml"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/args\ncat > {applied}\n')
    kubectl.chmod(0o755)
    admin = tmp_path / "admin.conf"
    admin.write_text("pretend\n")
    body = body.replace(nodeimage.BIN + "/kubectl", str(kubectl))
    body = body.replace("/run/plunder-podnet", str(tmp_path / "state"))
    body = body.replace("/etc/cni/net.d", str(tmp_path)).replace(
        "/etc/kubernetes/admin.conf", str(admin)
    )
    result = subprocess.run(
        ["sh", "-c", body + "grant\n"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"--kubeconfig={admin} apply -f -" in (tmp_path / "args").read_text()
    role, binding = yaml.safe_load_all(applied.read_text())
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
    ]
    assert binding["subjects"][0]["name"] == "system:nodes"
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == "plunder:podnet"
