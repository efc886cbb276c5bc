"""``plunderctl``: the operator's command line."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Literal

import click
import httpx2 as httpx
import yaml
from lightkube.core.exceptions import ConfigError
from rich.console import Console
from rich.table import Table

from plunder import __version__
from plunder.api import crdgen
from plunder.cli import options
from plunder.operator.controller_settings import DEADLINE_DEFAULTS, SLOT_DEFAULTS
from plunder.operator.controller_settings import DEFAULTS as CONTROLLER_DEFAULTS

console = Console()
err_console = Console(stderr=True)

_LAB_DIR = click.option(
    "--dir",
    "lab_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The lab's folder (default: $PLUNDER_LAB_DIR or ~/.plunder/lab).",
)


@click.group()
@click.version_option(__version__, prog_name="plunderctl")
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def cli(verbose: bool) -> None:
    """Bare-metal machines for Cluster API: hosts, the boot service, the controller, the lab."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The HTTP client logs every request at INFO: too much for a person, kept for -v.
    for noisy in ("httpx", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@cli.command()
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one file per CRD here (as config/crd/bases), and the admission policies to "
    "config/policy beside it, instead of printing the CRDs.",
)
def crds(output_dir: Path | None) -> None:
    """Print the CustomResourceDefinitions, generated from the API models."""
    if output_dir is None:
        click.echo(crdgen.render_all(), nl=False)
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    for kind in crdgen.ALL_KINDS:
        path = output_dir / crdgen.crd_file_name(kind)
        path.write_text(crdgen.render(crdgen.custom_resource_definition(kind)))
        err_console.print(f"wrote {path}")
    policies_file = output_dir.parent.parent / "policy" / POLICIES_FILE
    policies_file.parent.mkdir(exist_ok=True)
    policies_file.write_text(render_policies())
    err_console.print(f"wrote {policies_file}")


POLICIES_FILE = "policies.yaml"


def render_policies() -> str:
    """config/policy/policies.yaml: the admission policies a CRD cannot hold, as YAML."""
    from plunder.api import policies

    header = "# Generated from src/plunder/api/policies.py by `make crds`; do not edit.\n"
    return header + yaml.safe_dump_all(policies.all_policies(), sort_keys=False)


@cli.command()
@options.kubeconfig
@click.option("--namespace", default=None, help="Watch one namespace only (default: all).")
@click.option("--liveness-port", type=int, default=None, help="Serve /healthz on this port.")
@click.option(
    "--leader-elect",
    is_flag=True,
    help="Run the handlers only while holding the Lease plunder-controller (for replicas > 1).",
)
@click.option(
    "--leader-election-namespace",
    default=None,
    help="The Lease's namespace (default: --namespace, else the pod's, else default).",
)
@click.option(
    "--provisioning-timeout",
    type=click.FloatRange(min=1),
    default=DEADLINE_DEFAULTS.provisioning_timeout_s,
    show_default=True,
    help="Seconds from the start of provisioning to the installed OS's phone home; then the "
    "host goes to error (ProvisioningTimeout).",
)
@click.option(
    "--deprovisioning-timeout",
    type=click.FloatRange(min=1),
    default=DEADLINE_DEFAULTS.deprovisioning_timeout_s,
    show_default=True,
    help="Seconds from the start of deprovisioning to the agent's report of the wipe; then "
    "the host is power-cycled again (DeprovisioningRetried). It is never given unwiped.",
)
@click.option(
    "--provisioning-limit",
    type=click.IntRange(min=1),
    default=SLOT_DEFAULTS.provisioning_limit,
    show_default=True,
    envvar="PLUNDER_PROVISIONING_LIMIT",
    show_envvar=True,
    help="Hosts provisioning or deprovisioning at once, across every host the controller "
    "manages (Metal3's PROVISIONING_LIMIT); the others wait (WaitingForProvisioningSlot).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    default=None,
    envvar="PLUNDER_METRICS_PORT",
    show_envvar=True,
    help="Serve Prometheus metrics at /metrics on this port (all addresses); off by default.",
)
@click.option(
    "--kube-api-qps",
    type=click.FloatRange(min=0, min_open=True),
    default=CONTROLLER_DEFAULTS.client.qps,
    show_default=True,
    help="The controller's own requests a second to the API server, after a burst "
    "(client-go's QPS; kopf's watches and bookkeeping patches are not counted).",
)
@click.option(
    "--kube-api-burst",
    type=click.IntRange(min=1),
    default=CONTROLLER_DEFAULTS.client.burst,
    show_default=True,
    help="Requests at once before --kube-api-qps applies.",
)
@click.option(
    "--kube-api-connections",
    type=click.IntRange(min=1),
    default=CONTROLLER_DEFAULTS.client.connections,
    show_default=True,
    help="Connections the controller's own client keeps open to the API server (its pool).",
)
@click.option(
    "--machine-workers",
    type=click.IntRange(min=1),
    default=CONTROLLER_DEFAULTS.machine_workers,
    show_default=True,
    help="PlunderMachines reconciled at once (controller-runtime's MaxConcurrentReconciles).",
)
@click.option(
    "--slot-grant-concurrency",
    type=click.IntRange(min=1),
    default=SLOT_DEFAULTS.grant_concurrency,
    show_default=True,
    help="API requests at once of the provisioning slots' granter (hosts read again before "
    "a grant, granted moves).",
)
@click.option(
    "--slot-grant-batch",
    type=click.IntRange(min=1),
    default=SLOT_DEFAULTS.grant_batch,
    show_default=True,
    help="Hosts granted a provisioning slot at most in one round, that is per write of the "
    "slots' ledger.",
)
def controller(
    kubeconfig: Path | None,
    namespace: str | None,
    liveness_port: int | None,
    leader_elect: bool,
    leader_election_namespace: str | None,
    provisioning_timeout: float,
    deprovisioning_timeout: float,
    provisioning_limit: int,
    metrics_port: int | None,
    kube_api_qps: float,
    kube_api_burst: int,
    kube_api_connections: int,
    machine_workers: int,
    slot_grant_concurrency: int,
    slot_grant_batch: int,
) -> None:
    """Run the controllers (kopf operator) until SIGTERM."""
    from plunder.k8s import client as k8s_client
    from plunder.k8s import crds as k8s_crds
    from plunder.k8s.ratelimit import ClientLimits
    from plunder.operator import controller_settings, deadline, metrics, slots
    from plunder.operator.main import run_operator

    if kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(kubeconfig)  # kopf's own login reads it
    missing = k8s_crds.missing_crds(k8s_client.sync_client(kubeconfig))
    if missing:
        err_console.print(
            f"[red]CRDs missing: {', '.join(missing)}[/red]\n"
            "install them with: plunderctl crds | kubectl apply --server-side -f -"
        )
        sys.exit(2)
    own_namespace = leader_election_namespace or namespace or _pod_namespace() or "default"
    lease_namespace = own_namespace if leader_elect else None
    deadline.SETTINGS.provisioning_timeout_s = provisioning_timeout
    deadline.SETTINGS.deprovisioning_timeout_s = deprovisioning_timeout
    slots.SETTINGS.provisioning_limit = provisioning_limit
    slots.SETTINGS.ledger_namespace = own_namespace
    slots.SETTINGS.grant_concurrency = slot_grant_concurrency
    slots.SETTINGS.grant_batch = slot_grant_batch
    metrics.SETTINGS.port = metrics_port
    controller_settings.SETTINGS.client = ClientLimits(
        qps=kube_api_qps, burst=kube_api_burst, connections=kube_api_connections
    )
    controller_settings.SETTINGS.machine_workers = machine_workers
    run_operator(namespace, liveness_port, lease_namespace)


def _pod_namespace() -> str | None:
    """The namespace this process runs in, when it runs in a pod."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.exists() else None


@cli.group()
def lab() -> None:
    """The local lab: management plane, controller (and, later, boot service and hosts)."""


LAB_EXTRA_MODULES = frozenset({"bcrypt", "libvirt", "sushy_tools", "virtualbmc"})
"""What the ``lab`` extra installs (the lab's emulated BMCs)."""


def _lab_module() -> ModuleType:
    """``plunder.lab.lab``, or a message saying to install the lab extra if it is missing."""
    try:
        from plunder.lab import lab as lab_module
    except ModuleNotFoundError as error:
        if error.name not in LAB_EXTRA_MODULES:
            raise
        raise click.ClickException(
            f"plunderctl lab needs the lab extra (no module {error.name!r}): "
            "pip install 'cluster-api-plunder[lab]' (from a checkout: pip install '.[lab]')"
        ) from None
    return lab_module


@lab.command("up")
@_LAB_DIR
@click.option("--apiserver-port", type=int, default=6443, show_default=True)
@click.option("--etcd-port", type=int, default=23790, show_default=True, help="Peer port: +10.")
@click.option("--controller-port", type=int, default=28080, show_default=True, help="/healthz.")
@click.option(
    "--hosts",
    type=int,
    default=3,
    show_default=True,
    help="Blank virtual bare-metal hosts (the second of every three boots UEFI); 0: none, and no "
    "provisioning network or boot service.",
)
@click.option(
    "--netns",
    default="plunder-lab",
    show_default=True,
    help="The provisioning network's namespace.",
)
@click.option(
    "--address",
    "ipv4",
    default="172.31.99.1/24",
    show_default=True,
    help="The boot service's address on the provisioning network, with prefix.",
)
@click.option("--dhcp", type=click.Choice(["full", "proxy"]), default="full", show_default=True)
@click.option(
    "--firmware",
    type=click.Choice(["mixed", "bios", "uefi"]),
    default="mixed",
    show_default=True,
    help="The hosts' firmware; mixed: the second of every three hosts boots UEFI.",
)
def lab_up(
    lab_dir: Path | None,
    apiserver_port: int,
    etcd_port: int,
    controller_port: int,
    hosts: int,
    netns: str,
    ipv4: str,
    dhcp: str,
    firmware: Literal["mixed", "bios", "uefi"],
) -> None:
    """Start the lab and say how to use it."""
    lab_module = _lab_module()
    from plunder.lab.plane import PlanePorts

    folder = lab_dir or lab_module.default_lab_dir()
    options = lab_module.LabOptions(
        ports=PlanePorts(etcd_client=etcd_port, etcd_peer=etcd_port + 10, apiserver=apiserver_port),
        controller_port=controller_port,
        hosts=hosts,
        netns=netns,
        ipv4=ipv4,
        dhcp=dhcp,
        firmware=firmware,
    )
    try:
        info = lab_module.up(folder, options)
    except lab_module.LabError as error:
        err_console.print(f"[red]{error}[/red]")
        sys.exit(1)
    console.print(f"[green]The lab is up[/green]: Kubernetes {info.version} at {info.server}")
    console.print(f"CRDs installed: {', '.join(info.crds)}", soft_wrap=True)
    if info.boot_url:
        console.print(f"Boot service: {info.boot_url} (namespace {netns})", soft_wrap=True)
        console.print(f"Hosts network-booting: {', '.join(info.hosts)}", soft_wrap=True)
        console.print("The seed's walkthrough: kubectl apply -f examples/simple/")
    console.print("Point kubectl and plunderctl at it:")
    exports = f"export KUBECONFIG={info.kubeconfig} PATH={info.bin_dir}:$PATH"
    console.print(f"  {exports}", soft_wrap=True)
    console.print("  plunderctl get unleased      # the hosts appear within seconds of booting")
    console.print("  kubectl get plunderhosts")
    console.print("  clusterctl describe cluster cluster-plunder --show-conditions all")
    console.print("Stop it with: plunderctl lab down")


@lab.command("cluster")
@_LAB_DIR
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=3600,
    show_default=True,
    help="Seconds to wait for the cluster's Nodes to be Ready.",
)
def lab_cluster(lab_dir: Path | None, timeout: float) -> None:
    """The seed's walkthrough: apply examples/simple/ and wait for a working cluster."""
    from plunder.k8s import client as k8s_client
    from plunder.lab import lab as lab_module
    from plunder.lab import walkthrough

    folder = lab_dir or lab_module.default_lab_dir()
    client = k8s_client.sync_client(folder / "kubeconfig")
    try:
        workload = walkthrough.run(folder, client, console.print, timeout)
    except walkthrough.WalkthroughError as error:
        err_console.print(f"[red]{error}[/red]")
        sys.exit(1)
    console.print(f"[green]The cluster {walkthrough.CLUSTER} works[/green]. Use it with:")
    console.print(f"  kubectl --kubeconfig {workload} get nodes", soft_wrap=True)
    name = walkthrough.CLUSTER
    console.print(f"  (or: clusterctl get kubeconfig {name} > {name}.kubeconfig)")


@lab.command("down")
@_LAB_DIR
def lab_down(lab_dir: Path | None) -> None:
    """Stop everything the lab started and remove its folder."""
    lab_module = _lab_module()

    stopped = lab_module.down(lab_dir or lab_module.default_lab_dir())
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@lab.command("restart")
@_LAB_DIR
@click.argument("component", type=click.Choice(["controller", "boot", "dnsmasq", "kube-apiserver"]))
@click.option("--kill", is_flag=True, help="SIGKILL it (as a crash would), not SIGTERM.")
def lab_restart(lab_dir: Path | None, component: str, kill: bool) -> None:
    """Stop one part of the lab and start it again with the same arguments, as its Deployment would.

    dnsmasq is the boot service's: it is stopped alone, and the boot service starts it again.
    """
    lab_module = _lab_module()
    from plunder.lab import processes, restarts

    folder = lab_dir or lab_module.default_lab_dir()
    try:
        done = restarts.restart(folder, component, signal.SIGKILL if kill else signal.SIGTERM)
    except processes.StartupError as error:
        err_console.print(f"[red]{error}[/red]")
        sys.exit(1)
    console.print(
        f"{component}: pid {done.stopped} stopped, pid {done.started} answering after "
        f"{done.back_after:.1f}s"
    )


@lab.command("status")
@_LAB_DIR
def lab_status(lab_dir: Path | None) -> None:
    """Say which parts of the lab run."""
    lab_module = _lab_module()

    folder = lab_dir or lab_module.default_lab_dir()
    table = Table("Component", "State", "PID", "Log")
    states = lab_module.status(folder)
    for name, pid in states.items():
        running = pid is not None
        table.add_row(
            name,
            "[green]running[/green]" if running else "[red]stopped[/red]",
            str(pid or ""),
            str(folder / f"{name}.log"),
        )
    for name, state in lab_module.host_states(folder).items():
        table.add_row(name, state, "", str(folder / "vms" / f"{name}.serial.log"))
    console.print(table)
    if all(pid is None for pid in states.values()):
        sys.exit(3)


@lab.command("build")
@click.option(
    "--all",
    "build_all",
    is_flag=True,
    help="Also Cluster API's controllers, clusterctl, the in-cluster IPAM provider, the "
    "node's programs and all the hosts boot: agent, OS and Kubernetes node images, installer.",
)
def lab_build(build_all: bool) -> None:
    """Build (once) what the lab runs, into the version-keyed caches."""
    from plunder.images import binaries

    if build_all:
        from plunder.images.everything import build_everything

        built = build_everything()
    else:
        built = binaries.ensure_binaries(binaries.PLANE_PROGRAMS)
    for name, path in built.items():
        console.print(f"{name}: {path}")
    if build_all:
        console.print("agent, OS and node images, installer: built")


@cli.group()
def agent() -> None:
    """The in-memory agent every host boots while it is not provisioned."""


@agent.command("build")
@click.option("--force", is_flag=True, help="Build again even if cached.")
def agent_build(force: bool) -> None:
    """Build (once, cached by version) the agent's kernel and initramfs from Debian's packages."""
    from plunder.images.agent import AGENT_VERSION, build_agent

    built = build_agent(force=force)
    console.print(
        f"agent {AGENT_VERSION}\n  kernel: {built.kernel}\n  initrd: {built.initrd}", soft_wrap=True
    )


@cli.group()
def image() -> None:
    """The disk images the lab installs on hosts: Debian + cloud-init, and a Kubernetes node."""


@image.command("build")
@click.option("--force", is_flag=True, help="Build again even if cached.")
@click.option(
    "--flavour",
    type=click.Choice(["base", "node"]),
    default="base",
    show_default=True,
    help="base: Debian 12 + cloud-init; node: that plus Kubernetes, containerd and the "
    "control-plane images kubeadm asks for, preloaded.",
)
def image_build(force: bool, flavour: str) -> None:
    """Build (once, cached by version) an OS image with debootstrap from Debian's mirror."""
    from plunder.images.nodeimage import build_node_image
    from plunder.images.osimage import build_os_image

    built = build_node_image(force=force) if flavour == "node" else build_os_image(force=force)
    console.print(
        f"raw:      {built.path}\n  sha256: {built.sha256}\n"
        f"raw-gzip: {built.gz_path}\n  sha256: {built.sha256_gz}\n"
        f"raw-lzop: {built.lzo_path}\n  sha256: {built.sha256_lzo}",
        soft_wrap=True,
    )


@cli.group()
def installer() -> None:
    """The distribution installers hosts boot for deploymentType preseed or kickstart."""


@installer.command("build")
@click.option("--force", is_flag=True, help="Fetch again even if cached.")
def installer_build(force: bool) -> None:
    """Fetch (once, cached by version) the Debian installer's netboot kernel and initrd."""
    from plunder.images.installer import PACKAGE, PACKAGE_VERSION, build_debian_installer

    built = build_debian_installer(force=force)
    console.print(
        f"{PACKAGE} {PACKAGE_VERSION}\n  kernel: {built.kernel}\n  initrd: {built.initrd}",
        soft_wrap=True,
    )


def main() -> None:
    """The console script's entry point."""
    from plunder.cli import boot, dashboard, health, hosts, power, release

    cli.add_command(boot.boot)
    cli.add_command(power.power)
    cli.add_command(health.host)
    cli.add_command(release.release)
    cli.add_command(hosts.get)
    cli.add_command(hosts.describe)
    cli.add_command(hosts.logs)
    cli.add_command(dashboard.dashboard)
    try:
        cli()
    except ConfigError as error:
        err_console.print(f"[red]no cluster to talk to: {error}[/red]")
        err_console.print("pass --kubeconfig or set KUBECONFIG (`plunderctl lab up` prints it)")
        sys.exit(2)
    except httpx.TransportError as error:
        err_console.print(f"[red]cannot reach the API server: {error}[/red]")
        sys.exit(2)


if __name__ == "__main__":
    main()
