"""The lab: everything this project runs, on one machine, for a person to try and for CI.

``up`` starts, in order: the management plane (etcd + kube-apiserver) with our CRDs and Cluster
API's, and Cluster API's controllers (core, kubeadm bootstrap and control plane, webhooks
served), so the examples come alive; the controller; the provisioning network (a namespace with a
bridge); the boot service on it; a private libvirt; and N blank virtual bare-metal hosts that
PXE-boot and appear as unleased PlunderHosts. Each process is recorded in the lab folder, with
the facts ``down`` needs in ``lab.json``, so ``down`` (another process) stops it all and removes
the namespace; ``status`` says what runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from ipaddress import IPv4Interface, IPv6Interface
from pathlib import Path
from typing import Literal

from plunder.api import crdgen
from plunder.boot import netns
from plunder.images import binaries
from plunder.images.agent import build_agent
from plunder.images.diskboot import build_disk_boot
from plunder.images.installer import build_debian_installer
from plunder.images.nodeimage import build_node_image
from plunder.images.osimage import OSImage, build_os_image
from plunder.k8s import client as k8s_client
from plunder.lab import bmc, capi, hypervisor, network, processes, vms
from plunder.lab.plane import PlanePorts, start_plane

# The order they are stopped in.
COMPONENTS = (
    "boot",
    "controller",
    capi.IPAM_IN_CLUSTER.program,
    *capi.PROGRAMS,
    "kube-apiserver",
    "etcd",
)
LAB_FACTS = "lab.json"
HOSTS_FACTS = "hosts.json"
HOST_MACS = ("00:50:56:a5:11:20", "00:50:56:a5:b5:f1", "00:50:56:a5:c3:07")
"""The first hosts' MACs (VMware's OUI, as in the original plunder's walkthrough)."""


def default_lab_dir() -> Path:
    """``$PLUNDER_LAB_DIR``, else ``~/.plunder/lab``."""
    return Path(os.environ.get("PLUNDER_LAB_DIR", Path.home() / ".plunder" / "lab"))


FirmwareMix = Literal["mixed", "bios", "uefi"]


def host_specs(count: int, mix: FirmwareMix = "mixed") -> list[vms.VMSpec]:
    """``count`` blank hosts; ``mixed``: the second of every three boots UEFI, the others BIOS.

    So a lab of two or more hosts has both firmwares, and a cluster of two machines uses both.
    """
    specs = []
    for i in range(count):
        mac = HOST_MACS[i] if i < len(HOST_MACS) else f"52:54:00:a5:00:{i:02x}"
        firmware: vms.Firmware = ("uefi" if i % 3 == 1 else "bios") if mix == "mixed" else mix
        # Two vCPUs: QEMU runs each on its own thread (multi-threaded TCG), so the agent's
        # download | check | gunzip | write pipeline runs in parallel. Measured here: the 1 GiB
        # image was written in 104 s instead of 190 s, and provisioned in 146 s instead of 231 s.
        # 2 GiB and an 8 GiB disk: what kubeadm asks of a control-plane node (2 CPUs, 1.7 GB),
        # and room for the node image, its containers and their logs.
        specs.append(
            vms.VMSpec(
                name=f"plunder-host-{i + 1}",
                mac=mac,
                firmware=firmware,
                cpus=2,
                memory_mib=HOST_MEMORY_MIB,
                disk_gib=HOST_DISK_GIB,
            )
        )
    return specs


HOST_MEMORY_MIB = 2048
HOST_DISK_GIB = 8


@dataclass(frozen=True)
class LabOptions:
    """How the lab is laid out; the defaults suit a person, tests pass their own."""

    ports: PlanePorts = PlanePorts(etcd_client=23790, etcd_peer=23800, apiserver=6443)
    controller_port: int = 28080
    hosts: int = 3
    netns: str = "plunder-lab"
    ipv4: str = "172.31.99.1/24"
    ipv6: str = "fd00:99::1/64"
    boot_port: int = 8080
    dhcp: str = "full"
    firmware: FirmwareMix = "mixed"


@dataclass(frozen=True)
class LabInfo:
    """What a person needs to use a running lab."""

    kubeconfig: Path
    bin_dir: Path
    server: str
    version: str
    crds: list[str]
    boot_url: str | None = None
    hosts: list[str] = field(default_factory=list)


class LabError(RuntimeError):
    """The lab cannot do what was asked (already up, a port taken, …)."""


def _check_free(lab_dir: Path, options: LabOptions) -> None:
    running = [name for name in COMPONENTS if processes.recorded_pid(lab_dir, name)]
    if running:
        raise LabError(
            f"the lab in {lab_dir} is already up ({', '.join(running)}); "
            "run `plunderctl lab down` first"
        )
    ports = (*options.ports.all(), options.controller_port)
    taken = [port for port in ports if not processes.port_is_free(port)]
    if taken:
        raise LabError(
            f"port {', '.join(map(str, taken))} already in use: another lab or API server? "
            "Choose others with --apiserver-port, --etcd-port, --controller-port"
        )
    if options.hosts and network.namespace_exists(options.netns):
        raise LabError(
            f"network namespace {options.netns} exists: another lab? Choose another with --netns "
            f"(or remove a leftover with `ip netns del {options.netns}`)"
        )


def ready_in_namespace(namespace: str, url: str) -> bool:
    """Whether ``url`` answers 200 when asked from inside network namespace ``namespace``."""
    with netns.entered(namespace):
        return processes.http_ok(url)()


def up(lab_dir: Path, options: LabOptions) -> LabInfo:
    """Start the lab; on any failure, stop what was started."""
    _check_free(lab_dir, options)
    shutil.rmtree(lab_dir, ignore_errors=True)
    bin_dir = binaries.link_dir(binaries.ensure_binaries((*binaries.PLANE_PROGRAMS, "clusterctl")))
    plane = start_plane(lab_dir, options.ports)
    (lab_dir / LAB_FACTS).write_text(json.dumps(asdict(options), default=str))
    try:
        client = k8s_client.sync_client(plane.kubeconfig)
        # Our CRDs; Cluster API core + kubeadm bootstrap + control plane, so the examples come
        # alive; the in-cluster IPAM provider, for PlunderMachines' addressFromPool (~0.5 s,
        # ~55 MB): each recorded as clusterctl init records it, so clusterctl move works.
        capi.start_providers(client, plane.kubeconfig, plane.pki, lab_dir)
        installed = [kind.info.crd_name for kind in crdgen.ALL_KINDS]
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
                str(options.controller_port),
            ],
            lab_dir,
        )
        processes.wait_until(
            processes.http_ok(f"http://127.0.0.1:{options.controller_port}/healthz"),
            "controller",
            controller,
            timeout=60,
        )
        boot_url, names = (
            (None, []) if not options.hosts else _start_hosts(lab_dir, options, plane.kubeconfig)
        )
    except BaseException:
        down(lab_dir, remove=False)
        raise
    return LabInfo(
        plane.kubeconfig, bin_dir, plane.server, plane.version(), installed, boot_url, names
    )


def _start_hosts(lab_dir: Path, options: LabOptions, kubeconfig: Path) -> tuple[str, list[str]]:
    """The provisioning network, the boot service on it, libvirt, and the blank hosts."""
    files = lab_dir / "files"
    publish_boot_files(files)
    net = network.create_network(options.netns, options.ipv4, options.ipv6)
    address = net.ipv4_address
    # The management plane's way to the workload clusters on the hosts: the subnet's last address.
    subnet = IPv4Interface(options.ipv4).network
    network.add_uplink(net, f"{subnet.broadcast_address - 1}/{subnet.prefixlen}")
    boot = processes.start(
        "boot",
        [
            sys.executable,
            "-m",
            "plunder.cli.main",
            "boot",
            "--kubeconfig",
            str(kubeconfig),
            "--address",
            address,
            "--http-port",
            str(options.boot_port),
            "--netns",
            net.namespace,
            "--interface",
            net.bridge,
            "--subnet",
            str(IPv4Interface(options.ipv4).network),
            "--dhcp",
            options.dhcp,
            # A default route and a name server, as a site's DHCP gives: Kubernetes nodes need
            # both (kubelet's address, CoreDNS). Nothing is routed or answered past the lab.
            "--router",
            address,
            "--dns-server",
            address,
            "--run-dir",
            str(lab_dir / "boot"),
            "--files-dir",
            str(files),
        ],
        lab_dir,
    )
    boot_url = f"http://{address}:{options.boot_port}"
    processes.wait_until(
        lambda: ready_in_namespace(net.namespace, f"{boot_url}/healthz"),
        "boot service",
        boot,
        timeout=60,
    )
    libvirt = hypervisor.Hypervisor.start(net, lab_dir / "hv")
    names, started = [], []
    for spec in host_specs(options.hosts, options.firmware):
        vms.define(libvirt.uri, spec, net.bridge, lab_dir / "vms")
        vms.start(libvirt.uri, spec.name)
        started.append({**asdict(spec), "powered_on": time.time()})
        names.append(f"{spec.name} ({spec.firmware}, {spec.mac})")
    # When each host was powered on: what boot-to-discovered times are measured from.
    (lab_dir / HOSTS_FACTS).write_text(json.dumps(started, indent=1))
    bmc.start_lab_bmcs(lab_dir, libvirt.uri, started, kubeconfig)  # one BMC per host
    return boot_url, names


def _publish(source: Path, target: Path) -> None:
    """Put a cached build where the boot service serves it.

    A hard link (no copy) when the cache is on the same file system, else a copy; not a
    symlink, which /files/ refuses.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def publish_boot_files(files: Path) -> None:
    """Build (once) and serve all the hosts boot: agent, UEFI disk boot, images, installer."""
    publish_agent(files)
    publish_os_image(files)
    publish_node_image(files)
    publish_installer(files)


def publish_agent(files: Path) -> None:
    """Build (once) the agent and serve it as files/agent/{vmlinuz,initrd.img}."""
    agent = build_agent()
    _publish(agent.kernel, files / "agent" / "vmlinuz")
    _publish(agent.initrd, files / "agent" / "initrd.img")
    _publish(build_disk_boot(), files / "agent" / "disk-boot.efi")  # UEFI hosts' way to disk


def publish_installer(files: Path) -> None:
    """Fetch (once) Debian's installer and serve it as files/installer/debian/{linux,initrd.gz}."""
    built = build_debian_installer()
    _publish(built.kernel, files / "installer" / "debian" / "linux")
    _publish(built.initrd, files / "installer" / "debian" / "initrd.gz")


OS_IMAGE_NAME = "debian-12.raw"


NODE_IMAGE_NAME = "debian-12-kubernetes.raw"


def publish_os_image(files: Path) -> None:
    """Build (once) the OS image; serve it raw, gzipped and lzop'd, each with its sha256."""
    _publish_image(build_os_image(), files, OS_IMAGE_NAME)


def publish_node_image(files: Path) -> None:
    """Build (once) the Kubernetes node image; serve it as the OS image is served."""
    _publish_image(build_node_image(), files, NODE_IMAGE_NAME)


def _publish_image(built: OSImage, files: Path, image_name: str) -> None:
    images = files / "images"
    for source, suffix, digest in (
        (built.path, "", built.sha256),
        (built.gz_path, ".gz", built.sha256_gz),
        (built.lzo_path, ".lzo", built.sha256_lzo),
    ):
        name = image_name + suffix
        _publish(source, images / name)
        (images / f"{name}.sha256").write_text(f"{digest}  {name}\n")


def recorded_options(lab_dir: Path) -> LabOptions | None:
    """The options the lab in ``lab_dir`` was started with; None if none was."""
    try:
        facts = json.loads((lab_dir / LAB_FACTS).read_text())
    except FileNotFoundError:
        return None
    facts["ports"] = PlanePorts(**facts["ports"])
    return LabOptions(**facts)


def recorded_network(lab_dir: Path) -> network.LabNetwork | None:
    """The provisioning network of the lab in ``lab_dir``; None if it runs without hosts."""
    options = recorded_options(lab_dir)
    if options is None or not options.hosts:
        return None
    return network.LabNetwork(
        options.netns, "br0", IPv4Interface(options.ipv4), IPv6Interface(options.ipv6)
    )


def down(lab_dir: Path, remove: bool = True) -> list[str]:
    """Stop the hosts and every recorded process; remove the namespace and the lab folder."""
    lab_network = recorded_network(lab_dir)
    stopped = ["bmcs"] if bmc.stop_bmcs(lab_dir / "bmc") else []
    if (lab_dir / "hv").exists():
        hypervisor.stop_hypervisor(lab_dir / "hv")
        stopped.append("hosts")
    stopped += [name for name in COMPONENTS if processes.stop_recorded(lab_dir, name)]
    if lab_network is not None:
        network.delete_network(lab_network)
    if remove:
        shutil.rmtree(lab_dir, ignore_errors=True)
    return stopped


def status(lab_dir: Path) -> dict[str, int | None]:
    """Each component's pid, or None where it does not run."""
    components = {name: processes.recorded_pid(lab_dir, name) for name in reversed(COMPONENTS)}
    return components | bmc.bmc_states(lab_dir / "bmc")


def host_states(lab_dir: Path) -> dict[str, str]:
    """Each virtual host's libvirt state (running, shut off, …); empty without hosts."""
    run_dir = lab_dir / "hv"
    if processes.recorded_pid(run_dir, hypervisor.DAEMON) is None:
        return {}
    uri = hypervisor.uri_for(run_dir)
    names = hypervisor.virsh(uri, "list", "--all", "--name", check=False).split()
    return {name: vms.state(uri, name) for name in names}
