"""The Kubernetes node image: the OS image plus kubeadm, the kubelet and a container runtime.

A Cluster API bootstrap provider (kubeadm's) hands each machine a cloud-config that runs
``kubeadm init`` or ``kubeadm join``; this image is what that needs, and nothing is downloaded
when it runs: no registry or package mirror is reachable from the hosts.

What it holds, and why:

- **Kubernetes v1.36 from the Go module proxy**: kubeadm, kubelet and kubectl, built static from
  ``tools/go.mod`` (:mod:`plunder.images.binaries`), in ``/usr/local/bin``, with the kubelet's
  systemd unit and kubeadm's drop-in as the Kubernetes packages ship them.
- **containerd v2 + runc** (Debian 12's containerd 1.6 is older than Kubernetes 1.36 supports),
  with the systemd cgroup driver (the kubelet's default) and the ``overlayfs`` snapshotter.
- **The control-plane images kubeadm asks for** (``kubeadm config images list``): kube-apiserver,
  kube-controller-manager, kube-scheduler, kube-proxy (with Debian's iptables inside), etcd,
  CoreDNS and pause, each made here as a one-layer OCI archive
  (:mod:`plunder.images.containers`) and **imported into containerd's store at build time**, by
  a containerd started for the purpose on the building machine with its root in the image's
  tree. The layers are unpacked there too, so a node never spends emulated CPU on it. The
  examples set ``imagePullPolicy: Never``: a missing image is an error, not a download.
- **A smoke-test image** (busybox, ``plunder.local/smoke/busybox``) for workloads in tests.
- **The pod network**: the CNI bridge plugin with host-local addresses from the node's
  ``spec.podCIDR`` (kube-controller-manager allocates them), and a route to every other node's
  pod subnet via that node's address (``plunder-podnet``, a small service that watches Nodes with
  the kubelet's own credentials). It is flannel's ``host-gw`` without flannel: correct whenever
  the nodes share a layer-2 segment, as a provisioning network's hosts do, and it needs no
  overlay, no extra image and no daemon in the cluster. Pod traffic to anything outside the
  pod subnets is masqueraded.
- Kernel modules and sysctls kubeadm's preflight asks for (``overlay``, ``br_netfilter``,
  forwarding), and the tools it checks for (``conntrack``, ``iptables``, ``socat``, ``ethtool``).
- cloud-init phones home at the end of its network stage (:func:`osimage.cloud_init_config`):
  the host is provisioned when its OS is up; kubeadm's minutes are the bootstrap's, which
  Cluster API follows through the Node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from plunder.images import binaries, containers, osimage

log = logging.getLogger(__name__)

NODE_RECIPE_VERSION = "1"
"""Bump whenever this recipe changes; the versions of what it installs are keyed separately."""

NODE_PACKAGES = (
    *osimage.PACKAGES,
    "iptables",
    "conntrack",
    "ethtool",
    "socat",
    "ebtables",
    "libseccomp2",
)
"""Debian packages on top of the OS image's: what kubeadm's preflight and kube-proxy look for."""

PAUSE_SOURCE = "build/pause/linux/pause.c"
"""The pause container's C source, in the ``k8s.io/kubernetes`` module."""

SMOKE_IMAGE = "plunder.local/smoke/busybox:1.35"
"""A workload image for tests: busybox with its applets (``httpd``, ``wget``, ``sh`` …)."""

BUSYBOX = Path("/bin/busybox")
SMOKE_APPLETS = (
    "sh",
    "httpd",
    "wget",
    "nslookup",
    "sleep",
    "cat",
    "echo",
    "hostname",
    "ip",
    "nc",
    "ls",
    "mkdir",
)

BIN = "/usr/local/bin"
CNI_BIN = "/opt/cni/bin"
CNI_CONF = "/etc/cni/net.d/10-plunder.conflist"
PODNET_SCRIPT = "/usr/local/sbin/plunder-podnet"

IPTABLES_TOOLS = (
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
)


class NodeImageError(osimage.ImageBuildError):
    """The node image could not be built."""


# --- the files the node is configured with (pure) ----------------------------------------------


def containerd_config(sandbox_image: str) -> str:
    """``/etc/containerd/config.toml`` (version 3, containerd 2.x)."""
    return (
        "# Written by plunder's node image build (plunder/images/nodeimage.py).\n"
        "version = 3\n"
        "\n"
        "[plugins.'io.containerd.cri.v1.images']\n"
        "  snapshotter = 'overlayfs'\n"
        "\n"
        "[plugins.'io.containerd.cri.v1.images'.pinned_images]\n"
        f"  sandbox = '{sandbox_image}'\n"
        "\n"
        "[plugins.'io.containerd.cri.v1.runtime'.cni]\n"
        f"  bin_dirs = ['{CNI_BIN}']\n"
        "  conf_dir = '/etc/cni/net.d'\n"
        "\n"
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n"
        "  runtime_type = 'io.containerd.runc.v2'\n"
        "\n"
        "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n"
        "  SystemdCgroup = true\n"
        f"  BinaryName = '{BIN}/runc'\n"
    )


def containerd_unit() -> str:
    """The systemd unit of containerd, as containerd ships it (paths under /usr/local/bin)."""
    return (
        "[Unit]\n"
        "Description=containerd container runtime\n"
        "After=network.target local-fs.target\n"
        "\n"
        "[Service]\n"
        "ExecStartPre=-/sbin/modprobe overlay\n"
        f"ExecStart={BIN}/containerd\n"
        "Type=notify\n"
        "Delegate=yes\n"
        "KillMode=process\n"
        "Restart=always\n"
        "RestartSec=5\n"
        "LimitNPROC=infinity\n"
        "LimitCORE=infinity\n"
        "TasksMax=infinity\n"
        "OOMScoreAdjust=-999\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def kubelet_unit() -> str:
    """The kubelet's systemd unit: the packages' one, started once kubeadm wrote its config.

    kubeadm starts it then. The packages' unit restarts the kubelet every few seconds until
    then; each start costs seconds of CPU on an emulated host, and a worker waits for its
    control plane's ``kubeadm init`` to finish before it can join: that loop took CPU from the
    control plane the worker was waiting for.
    """
    return (
        "[Unit]\n"
        "Description=kubelet: The Kubernetes Node Agent\n"
        "Wants=network-online.target containerd.service\n"
        "After=network-online.target containerd.service\n"
        "ConditionPathExists=/var/lib/kubelet/config.yaml\n"
        "\n"
        "[Service]\n"
        f"ExecStart={BIN}/kubelet\n"
        "Restart=always\n"
        "StartLimitInterval=0\n"
        "RestartSec=5\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def kubeadm_dropin() -> str:
    """``kubelet.service.d/10-kubeadm.conf``: the kubelet started with what kubeadm writes."""
    return (
        "[Service]\n"
        'Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/'
        'bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"\n'
        'Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"\n'
        "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n"
        "EnvironmentFile=-/etc/default/kubelet\n"
        "ExecStart=\n"
        f"ExecStart={BIN}/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS "
        "$KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS\n"
    )


def modules_load() -> str:
    """``/etc/modules-load.d/kubernetes.conf``: overlay for containerd, br_netfilter for pods."""
    return "overlay\nbr_netfilter\n"


def sysctl_conf() -> str:
    """``/etc/sysctl.d/90-kubernetes.conf``: forwarding, and bridged traffic through iptables."""
    return (
        "net.ipv4.ip_forward = 1\n"
        "net.ipv6.conf.all.forwarding = 1\n"
        "net.bridge.bridge-nf-call-iptables = 1\n"
        "net.bridge.bridge-nf-call-ip6tables = 1\n"
    )


def cni_config(pod_cidr: str) -> str:
    """The node's CNI configuration: bridge ``cni0`` with host-local addresses from ``pod_cidr``.

    The bridge is the pods' gateway; masquerading is ``plunder-podnet``'s (only traffic that
    leaves the pod subnets is rewritten, so pods see each other's real addresses).
    """
    document = {
        "cniVersion": "1.0.0",
        "name": "plunder",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def podnet_script() -> str:
    """``plunder-podnet``: this node's CNI config, routes to other nodes' pods, masquerading.

    It watches Nodes with the kubelet's credentials and, for each Node with a ``spec.podCIDR``:
    its own → the CNI configuration; another's → a route via that node's InternalIP. Pod
    traffic to anything outside the known pod subnets is masqueraded. When the watch ends (an
    API server restart), it starts again.

    Since Kubernetes 1.32 the Node authorizer lets a node read only its own Node, so on a
    control-plane node (the one with ``admin.conf``) it first grants the group ``system:nodes``
    read access to Nodes (ClusterRole ``plunder:podnet``), as every CNI's service account has.
    """
    template = _PODNET_TEMPLATE
    cni = json.dumps(json.loads(cni_config("@CIDR@")), separators=(",", ":")) + "\\n"
    return template.replace("@CNI_CONF@", CNI_CONF).replace("@CNI_JSON@", cni).replace("@BIN@", BIN)


_PODNET_TEMPLATE = r"""#!/bin/sh
# plunder-podnet: the pod network of a plunder node (bridge + host-local + routes per node).
# Written by plunder's node image build (plunder/images/nodeimage.py).
set -u
KUBECONFIG=/etc/kubernetes/kubelet.conf
ADMIN=/etc/kubernetes/admin.conf
STATE=/run/plunder-podnet
SELF=$(hostname)
mkdir -p "$STATE" /etc/cni/net.d
touch "$STATE/subnets"

# Each kubectl start costs seconds of CPU on an emulated host, where the control plane starts
# slowly: while the API server does not answer, wait longer each time (5 s up to 60 s).
backoff() {
    if [ "$1" -lt 60 ]; then echo $(($1 * 2)); else echo 60; fi
}

grant() {  # on a control-plane node: every node may read the Nodes (subnets, addresses)
    [ -s "$ADMIN" ] || return 0
    delay=5
    until printf '%s\n' \
        'apiVersion: rbac.authorization.k8s.io/v1' 'kind: ClusterRole' \
        'metadata: {name: "plunder:podnet"}' \
        'rules: [{apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}]' \
        '---' \
        'apiVersion: rbac.authorization.k8s.io/v1' 'kind: ClusterRoleBinding' \
        'metadata: {name: "plunder:podnet"}' \
        'roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole,' \
        '  name: "plunder:podnet"}' \
        'subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: "system:nodes"}]' |
        @BIN@/kubectl --kubeconfig="$ADMIN" apply -f - >/dev/null; do
        delay=$(backoff "$delay")
        sleep "$delay"
    done
    echo "plunder-podnet: nodes may read the Nodes (ClusterRole plunder:podnet)"
}

masquerade() {  # everything from this node's pods to outside every known pod subnet
    own=$1
    {
        echo '*nat'
        echo ':PLUNDER-PODNET - [0:0]'
        sort -u "$STATE/subnets" | while read -r subnet; do
            echo "-A PLUNDER-PODNET -d $subnet -j RETURN"
        done
        echo '-A PLUNDER-PODNET -j MASQUERADE'
        echo 'COMMIT'
    } | iptables-restore --noflush
    iptables -t nat -C POSTROUTING -s "$own" -j PLUNDER-PODNET 2>/dev/null ||
        iptables -t nat -A POSTROUTING -s "$own" -j PLUNDER-PODNET
}

node() {  # name podCIDR internalIP: act only on what changed
    name=$1 subnet=$2 address=$3
    [ -n "$subnet" ] || return 0
    changed=
    if ! grep -qx "$subnet" "$STATE/subnets"; then
        echo "$subnet" >> "$STATE/subnets"
        changed=yes
    fi
    if [ "$name" = "$SELF" ]; then
        printf '@CNI_JSON@' | sed "s#@CIDR@#$subnet#" > "$STATE/cni.tmp"
        if ! cmp -s "$STATE/cni.tmp" @CNI_CONF@; then
            mv "$STATE/cni.tmp" @CNI_CONF@
            echo "plunder-podnet: pods of $name get addresses from $subnet"
        fi
        [ "$(cat "$STATE/own" 2>/dev/null)" = "$subnet" ] || changed=yes
        echo "$subnet" > "$STATE/own"
    elif [ -n "$address" ] &&
        [ "$(cat "$STATE/via-$name" 2>/dev/null)" != "$subnet $address" ]; then
        ip route replace "$subnet" via "$address" &&
            echo "$subnet $address" > "$STATE/via-$name" &&
            echo "plunder-podnet: $subnet via $address ($name)"
    fi
    if [ -n "$changed" ] && [ -s "$STATE/own" ]; then
        masquerade "$(cat "$STATE/own")"
    fi
    return 0
}

until [ -s "$KUBECONFIG" ]; do sleep 5; done
grant &
delay=5
while :; do
    started=$(date +%s)
    fields='{.metadata.name} {.spec.podCIDR}'
    fields="$fields"' {.status.addresses[?(@.type=="InternalIP")].address}{"\n"}'
    @BIN@/kubectl --kubeconfig="$KUBECONFIG" get nodes --watch --request-timeout=0 \
        -o jsonpath="$fields" |
        while read -r name subnet address; do node "$name" "$subnet" "${address%% *}"; done
    # a watch that ran a while was working (the server ended it): start again soon
    if [ $(($(date +%s) - started)) -gt 60 ]; then delay=5; else delay=$(backoff "$delay"); fi
    sleep "$delay"
done
"""


def podnet_unit() -> str:
    """The systemd unit of ``plunder-podnet``: started with the kubelet, restarted if it dies."""
    return (
        "[Unit]\n"
        "Description=plunder pod network (CNI config, routes to the other nodes' pods)\n"
        "After=kubelet.service\n"
        "\n"
        "[Service]\n"
        f"ExecStart={PODNET_SCRIPT}\n"
        "Restart=always\n"
        "RestartSec=5\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def build_time_containerd_config(root: Path, state: Path, socket: Path) -> str:
    """The configuration of the containerd that imports images into the tree at build time.

    Only the content store, the metadata and the overlayfs snapshotter are wanted; the CRI
    plugins would set up networking and a sandbox on the building machine.
    """
    return (
        "version = 3\n"
        f"root = '{root}'\n"
        f"state = '{state}'\n"
        "disabled_plugins = ['io.containerd.grpc.v1.cri', 'io.containerd.cri.v1.runtime',"
        " 'io.containerd.cri.v1.images', 'io.containerd.podsandbox.controller.v1.podsandbox',"
        " 'io.containerd.sandbox.controller.v1.shim']\n"
        "[grpc]\n"
        f"  address = '{socket}'\n"
        "[ttrpc]\n"
        f"  address = '{socket}.ttrpc'\n"
    )


# --- what kubeadm asks for ---------------------------------------------------------------------


@dataclass(frozen=True)
class KubeadmImages:
    """The image names ``kubeadm config images list`` gives for the pinned Kubernetes."""

    names: dict[str, str]
    """Short name (``kube-apiserver``, ``etcd``, ``coredns``, ``pause`` …) → full reference."""

    @classmethod
    def parse(cls, listing: str) -> KubeadmImages:
        """From kubeadm's output: one reference a line."""
        names = {}
        for line in listing.split():
            short = line.rsplit("/", 1)[-1].split(":", 1)[0]
            names[short] = line
        expected = {"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"}
        expected |= {"etcd", "coredns", "pause"}
        if set(names) != expected:
            raise NodeImageError(f"kubeadm asks for other images than expected: {listing!r}")
        return cls(names)


def kubeadm_images(kubeadm: Path, kubernetes_version: str) -> KubeadmImages:
    """Ask the built kubeadm which images it will run."""
    listing = osimage.run_program(
        [str(kubeadm), "config", "images", "list", f"--kubernetes-version={kubernetes_version}"],
        "kubeadm config images list",
    )
    return KubeadmImages.parse(listing)


# --- the version key ---------------------------------------------------------------------------


def node_programs() -> tuple[str, ...]:
    """Every Go program the node image carries (on the host or in an image)."""
    return tuple(dict.fromkeys((*binaries.NODE_PROGRAMS, *binaries.CONTROL_PLANE_IMAGE_PROGRAMS)))


def node_image_version() -> str:
    """What the cached image's name carries: Kubernetes' version and a hash of the recipe.

    The hash covers this module's and the OS image's source and every program's cache name
    (which carries its version and linkage), so any change is a new image.
    """
    digest = hashlib.sha256()
    for source in (Path(__file__), Path(osimage.__file__), Path(containers.__file__)):
        digest.update(source.read_bytes())
    for name in node_programs():
        digest.update(binaries.binary_path(name).name.encode())
    kubernetes = binaries.pinned_versions()["k8s.io/kubernetes"]
    return f"{kubernetes}-{NODE_RECIPE_VERSION}-{digest.hexdigest()[:10]}"


def node_recipe() -> osimage.Recipe:
    """The OS image recipe of the node flavour."""
    return osimage.Recipe(
        family="debian-12-kubernetes",
        version=node_image_version(),
        packages=NODE_PACKAGES,
        customise=install_kubernetes,
        phone_home_early=True,
    )


def build_node_image(force: bool = False) -> osimage.OSImage:
    """Return the cached node image, building it (and the Go programs it needs) first.

    The programs are asked for only once Debian's base is in place (:func:`install_kubernetes`),
    so a build beside the Go builds (:mod:`plunder.images.everything`) lays that base meanwhile.
    """
    return osimage.build_os_image(force=force, recipe=node_recipe())


# --- the build steps ---------------------------------------------------------------------------


def install_kubernetes(tree: Path, workspace: Path) -> None:
    """Install Kubernetes, containerd and the pod network into ``tree``; preload the images."""
    programs = binaries.ensure_binaries(node_programs())
    for name in ("kubeadm", "kubelet", "kubectl", "containerd", "ctr"):
        _install(programs[name], tree, f"{BIN}/{name}")
    _install(programs["containerd-shim-runc-v2"], tree, f"{BIN}/containerd-shim-runc-v2")
    _install(programs["runc"], tree, f"{BIN}/runc")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        _install(programs[f"cni-{plugin}"], tree, f"{CNI_BIN}/{plugin}")
    kubernetes = binaries.pinned_versions()["k8s.io/kubernetes"]
    images = kubeadm_images(programs["kubeadm"], kubernetes)
    write = osimage.write_into
    write(tree, "/etc/containerd/config.toml", containerd_config(images.names["pause"]))
    write(tree, "/etc/systemd/system/containerd.service", containerd_unit())
    write(tree, "/etc/systemd/system/kubelet.service", kubelet_unit())
    write(tree, "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf", kubeadm_dropin())
    write(tree, "/etc/systemd/system/plunder-podnet.service", podnet_unit())
    write(tree, PODNET_SCRIPT, podnet_script(), mode=0o755)
    write(tree, "/etc/modules-load.d/kubernetes.conf", modules_load())
    write(tree, "/etc/sysctl.d/90-kubernetes.conf", sysctl_conf())
    (tree / "etc/cni/net.d").mkdir(parents=True, exist_ok=True)
    osimage.run_in_tree(
        tree,
        "systemctl",
        "enable",
        "containerd.service",
        "kubelet.service",
        "plunder-podnet.service",
        what="enable the node's units",
    )
    archives = workspace / "container-images"
    archives.mkdir()
    specs = image_specs(images, programs, tree, workspace)
    built = [
        containers.write_archive(spec, archives / containers.archive_name(spec.name))
        for spec in specs
    ]
    for image in built:
        log.info("node image: %s, %d MiB", image.name, image.layer_bytes >> 20)
    preload(programs, tree, workspace, built)


def _install(source: Path, tree: Path, path: str) -> None:
    target = tree / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(0o755)


def image_specs(
    images: KubeadmImages, programs: Mapping[str, Path], tree: Path, workspace: Path
) -> list[containers.ImageSpec]:
    """The container images: what kubeadm asks for, and the smoke-test image."""
    specs = [
        containers.ImageSpec(images.names[name], {f"usr/local/bin/{name}": programs[name]})
        for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")
    ]
    specs.append(
        containers.ImageSpec(
            images.names["kube-proxy"],
            {"usr/local/bin/kube-proxy": programs["kube-proxy"], **iptables_files(tree)},
            links={
                **{f"usr/sbin/{tool}": "xtables-nft-multi" for tool in IPTABLES_TOOLS},
                "bin": "usr/bin",
                "sbin": "usr/sbin",
                "lib": "usr/lib",
                "lib64": "usr/lib64",
            },
        )
    )
    specs.append(
        containers.ImageSpec(
            images.names["coredns"], {"coredns": programs["coredns"]}, entrypoint=["/coredns"]
        )
    )
    specs.append(
        containers.ImageSpec(
            images.names["pause"], {"pause": build_pause(workspace)}, entrypoint=["/pause"]
        )
    )
    specs.append(
        containers.ImageSpec(
            SMOKE_IMAGE,
            {"bin/busybox": BUSYBOX},
            links={f"bin/{applet}": "busybox" for applet in SMOKE_APPLETS},
            cmd=["sh"],
        )
    )
    return specs


def iptables_files(tree: Path) -> dict[str, Path]:
    """Debian's iptables (nft backend) from the tree, with its extensions and libraries.

    kube-proxy runs ``iptables-restore``; the same backend as the host's (Debian 12 defaults to
    nft) keeps their rules in one place. The libraries are found with the tree's own ``ldd``.
    """
    programs = ["usr/sbin/xtables-nft-multi", "usr/sbin/conntrack"]
    extensions = sorted((tree / "usr/lib/x86_64-linux-gnu/xtables").glob("*.so"))
    files: dict[str, Path] = {path: tree / path for path in programs}
    files.update({str(path.relative_to(tree)): path for path in extensions})
    for program in [*programs, *(str(path.relative_to(tree)) for path in extensions)]:
        listing = osimage.run_in_tree(tree, "ldd", f"/{program}", what=f"ldd {program}")
        for library in _ldd_paths(listing):
            files[_in_usr(library)] = (tree / library.lstrip("/")).resolve()
    return files


def _ldd_paths(listing: str) -> list[str]:
    """The absolute paths of the libraries in ``ldd``'s output."""
    paths = []
    for line in listing.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1:
            candidate = words[words.index("=>") + 1]
        else:
            candidate = words[0] if words else ""
        if candidate.startswith("/"):
            paths.append(candidate)
    return paths


def _in_usr(path: str) -> str:
    """A library's path under Debian's merged /usr (``/lib/x`` → ``usr/lib/x``)."""
    relative = path.lstrip("/")
    return relative if relative.startswith("usr/") else f"usr/{relative}"


def build_pause(workspace: Path) -> Path:
    """The pause container's program, compiled static from Kubernetes' own C source."""
    source = binaries.module_dir("k8s.io/kubernetes") / PAUSE_SOURCE
    target = workspace / "pause"
    pause_version = "3.10.2"
    osimage.run_program(
        ["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{pause_version}-0"]
        + ["-o", str(target), str(source)],
        "compile pause",
    )
    return target


STORE_LEFTOVERS = (
    "io.containerd.grpc.v1.introspection",  # this containerd's uuid: each node makes its own
    "io.containerd.runtime.v2.task",
    "io.containerd.snapshotter.v1.blockfile",
    "io.containerd.snapshotter.v1.erofs",
    "io.containerd.snapshotter.v1.native",
    "tmpmounts",
)
"""What the build-time containerd leaves in its root that a node must not inherit."""


def preload(
    programs: Mapping[str, Path],
    tree: Path,
    workspace: Path,
    images: Sequence[containers.BuiltImage],
) -> None:
    """Import and unpack the images into containerd's store inside ``tree``.

    Once unpacked, the layers' blobs are deleted from the content store, as containerd's own
    ``discard_unpacked_layers`` does after a pull: a container starts from the unpacked
    snapshot, and every layer would otherwise be in the image twice (430 MB more to write to
    each host's disk).
    """
    root = tree / "var/lib/containerd"
    state = workspace / "containerd-state"
    socket = workspace / "containerd.sock"
    config = workspace / "containerd-build.toml"
    config.write_text(build_time_containerd_config(root, state, socket))
    log_file = workspace / "containerd.log"
    with log_file.open("w") as output:
        daemon = subprocess.Popen(  # noqa: S603 - our own program and arguments
            [str(programs["containerd"]), "--config", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for_socket(socket, daemon, log_file)
        ctr = [str(programs["ctr"]), "--address", str(socket), "--namespace", "k8s.io"]
        for image in images:
            osimage.run_program(
                [
                    *ctr,
                    "images",
                    "import",
                    "--local",
                    "--snapshotter",
                    "overlayfs",
                    str(image.path),
                ],
                f"import {image.path.name} into containerd",
            )
        listing = osimage.run_program([*ctr, "images", "list", "--quiet"], "list images")
        log.info("node image: containerd holds %s", ", ".join(listing.split()))
        osimage.run_program(
            [*ctr, "content", "rm", *(image.layer_digest for image in images)],
            "discard the unpacked layers",
        )
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
    for leftover in STORE_LEFTOVERS:
        shutil.rmtree(root / leftover, ignore_errors=True)
    # `content rm` forgets the blobs at once; their files go at the next garbage collection,
    # which this short-lived containerd never reaches
    blobs = root / "io.containerd.content.v1.content" / "blobs" / "sha256"
    for image in images:
        (blobs / image.layer_digest.removeprefix("sha256:")).unlink(missing_ok=True)


def _wait_for_socket(socket: Path, daemon: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + 60
    while not socket.exists():
        if daemon.poll() is not None or time.monotonic() > deadline:
            raise NodeImageError(
                f"the build-time containerd did not start:\n{log_file.read_text()[-3000:]}"
            )
        time.sleep(0.2)
