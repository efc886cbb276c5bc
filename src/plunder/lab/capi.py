"""Cluster API's own controllers, run as processes against a plane (the lab's or the tests').

Three managers from the pinned Cluster API release: the core manager (Clusters, Machines,
MachineSets, MachineDeployments, ClusterClass topologies), the kubeadm bootstrap manager (it
writes each Machine's bootstrap data Secret) and the kubeadm control-plane manager.

Their webhooks are served, not switched off (the managers have no switch for that, and the
defaulting webhooks fill fields the controllers rely on, such as a MachineDeployment's
selector): each manager gets a serving certificate signed by the plane's CA, and the webhook
configurations of its release (``<component>/config/webhook/manifests.yaml``) are installed with a
URL client config, ``https://127.0.0.1:<port><path>``, instead of an in-cluster Service.

The CRDs are re-applied as a release installs them. ``config/crd/bases`` lacks what the
release's kustomizations add: the contract labels (``cluster.x-k8s.io/v1beta2: v1beta2``; without
them the core manager cannot resolve a Machine's KubeadmConfig and no bootstrap data is ever
written), the provider label, and the conversion webhook stanza (so clients of v1beta1 get
converted objects, not v1beta2 data under an old apiVersion).

controller-runtime's webhook server has no bind-address flag: it listens on every interface,
on a port chosen free on loopback.

The in-cluster IPAM provider (:data:`IPAM_IN_CLUSTER`, built from ``tools/ipam``) is a manager of
the same make, started the same way: it answers IPAddressClaims against its InClusterIPPools.

Each provider started here is recorded in clusterctl's inventory, its CRDs labelled, as
``clusterctl init`` leaves them (:mod:`plunder.lab.providers`); :func:`start_providers` installs
every provider the lab runs, this one included, in the lab's order.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client
from lightkube.resources.admissionregistration_v1 import (
    MutatingWebhookConfiguration,
    ValidatingWebhookConfiguration,
)

from plunder.images import binaries
from plunder.k8s import crds
from plunder.lab import processes, providers
from plunder.lab.pki import PlanePKI, issue_serving_certificate

log = logging.getLogger(__name__)

FEATURE_GATES = "ClusterTopology=true"
"""ClusterClass (managed topologies) is still behind this gate in v1.14."""


@dataclass(frozen=True)
class ClusterAPIManager:
    """One of Cluster API's managers: its program, its source folder and its release prefix."""

    program: str
    """The program's name in :data:`plunder.images.binaries.PROGRAMS`."""
    component: str
    """Its folder in the Cluster API module (config/crd and config/webhook are under it)."""
    prefix: str
    """The name prefix its release gives cluster-scoped objects (webhook configurations)."""
    provider: providers.Provider
    """What clusterctl's inventory calls it, and the namespace its release installs into."""
    health_flag: str = "--health-addr"
    """The flag that places its health endpoint."""
    feature_gates: str | None = FEATURE_GATES
    """Its ``--feature-gates`` (None: it has no such flag)."""
    sync_period: str | None = None
    """Its ``--sync-period`` (None: its default, 10 minutes)."""


CORE_SYNC_PERIOD = "1m"
"""The core manager's resync. Its Machine controller watches a workload cluster's Nodes only once
the control plane is initialized, and a Cluster without a KubeadmControlPlane (the seed's
walkthrough: plain Machines) is initialized only when a control-plane Machine has its nodeRef:
the first nodeRef is therefore set by a resync, not by the Node's event (10 minutes by default,
seen here: the Node Ready at 20:11:30, its Machine still without a nodeRef at 20:19)."""

MANAGERS = (
    ClusterAPIManager(
        "capi-manager",
        "core",
        "capi-",
        providers.Provider("cluster-api", "CoreProvider", "capi-system"),
        sync_period=CORE_SYNC_PERIOD,
    ),
    ClusterAPIManager(
        "kubeadm-bootstrap-manager",
        "bootstrap/kubeadm",
        "capi-kubeadm-bootstrap-",
        providers.Provider("kubeadm", "BootstrapProvider", "capi-kubeadm-bootstrap-system"),
    ),
    ClusterAPIManager(
        "kubeadm-control-plane-manager",
        "controlplane/kubeadm",
        "capi-kubeadm-control-plane-",
        providers.Provider("kubeadm", "ControlPlaneProvider", "capi-kubeadm-control-plane-system"),
    ),
)
PROGRAMS = tuple(manager.program for manager in MANAGERS)

IPAM_IN_CLUSTER = ClusterAPIManager(
    "ipam-in-cluster-manager",
    ".",
    "capi-ipam-in-cluster-",
    providers.Provider("in-cluster", "IPAMProvider", "capi-ipam-in-cluster-system"),
    health_flag="--health-probe-bind-address",
    feature_gates=None,
)
"""The in-cluster IPAM provider: InClusterIPPool and GlobalInClusterIPPool, at module root."""


@dataclass(frozen=True)
class RunningManager:
    """A started manager and the loopback ports it serves on."""

    manager: ClusterAPIManager
    process: processes.Managed
    webhook_port: int
    health_port: int


@dataclass(frozen=True)
class ClusterAPIControllers:
    """The running managers."""

    managers: tuple[RunningManager, ...]

    def stop(self) -> None:
        """Stop every manager."""
        for running in self.managers:
            processes.stop(running.process.pid)


def manager_argv(
    binary: Path,
    cert_dir: Path,
    webhook_port: int,
    health_port: int,
    manager: ClusterAPIManager = MANAGERS[0],
) -> list[str]:
    """A manager watching every namespace, without leader election or a metrics endpoint."""
    argv = [
        str(binary),
        "--leader-elect=false",
        f"--webhook-port={webhook_port}",
        f"--webhook-cert-dir={cert_dir}",
        f"{manager.health_flag}=127.0.0.1:{health_port}",
        "--diagnostics-address=0",  # "0" switches the metrics server off
    ]
    if manager.feature_gates is not None:
        argv.append(f"--feature-gates={manager.feature_gates}")
    if manager.sync_period is not None:
        argv.append(f"--sync-period={manager.sync_period}")
    return argv


def webhook_configurations(
    manager: ClusterAPIManager, module_root: Path, port: int, ca_bundle: str
) -> list[dict[str, Any]]:
    """The manager's webhook configurations, pointed at ``https://127.0.0.1:<port>``."""
    manifests = module_root / manager.component / "config" / "webhook" / "manifests.yaml"
    configurations = [doc for doc in yaml.safe_load_all(manifests.read_text()) if doc]
    for configuration in configurations:
        configuration["metadata"]["name"] = manager.prefix + configuration["metadata"]["name"]
        for webhook in configuration["webhooks"]:
            path = webhook["clientConfig"]["service"]["path"]
            webhook["clientConfig"] = {
                "url": f"https://127.0.0.1:{port}{path}",
                "caBundle": ca_bundle,
            }
    return configurations


def conversion(port: int, ca_bundle: str) -> dict[str, Any]:
    """A CRD's ``spec.conversion`` that sends conversions to the manager's ``/convert``."""
    return {
        "strategy": "Webhook",
        "webhook": {
            "conversionReviewVersions": ["v1"],
            "clientConfig": {"url": f"https://127.0.0.1:{port}/convert", "caBundle": ca_bundle},
        },
    }


def release_labels(manager: ClusterAPIManager, module_root: Path) -> dict[str, str]:
    """The labels the release's kustomizations put on the manager's CRDs.

    ``config/crd`` adds the contract labels (``cluster.x-k8s.io/v1beta2: v1beta2``), without
    which Cluster API cannot tell which version of a referenced kind serves a contract;
    ``config/default`` adds the provider label that clusterctl looks for.
    """
    labels: dict[str, str] = {}
    for layer in ("crd", "default"):
        kustomization = module_root / manager.component / "config" / layer / "kustomization.yaml"
        layout = yaml.safe_load(kustomization.read_text())
        labels.update(layout.get("commonLabels", {}))  # the older spelling (the IPAM provider)
        for entry in layout.get("labels", []):
            labels.update(entry["pairs"])
    return labels


def release_crds(
    manager: ClusterAPIManager, module_root: Path, port: int, ca_bundle: str
) -> list[dict[str, Any]]:
    """The manager's CRDs as its release installs them: labelled, converted by its webhook."""
    labels = release_labels(manager, module_root)
    made = []
    for path in binaries.program_crd_files(manager.program, (manager.component,)):
        crd = yaml.safe_load(path.read_text())
        crd["metadata"].setdefault("labels", {}).update(labels)
        crd["spec"]["conversion"] = conversion(port, ca_bundle)
        made.append(crd)
    return made


def register_webhooks(client: Client, running: RunningManager, ca_bundle: str) -> None:
    """Install the manager's CRDs (as released) and admission webhooks, served by it.

    The provider is recorded in clusterctl's inventory at the version it was built from.
    """
    program = binaries.PROGRAMS[running.manager.program]
    root = binaries.module_dir(program.module, program.tools)
    names = crds.apply_crds(
        client, release_crds(running.manager, root, running.webhook_port, ca_bundle)
    )
    crds.wait_established(client, names)
    version = binaries.program_versions(program.name)[program.module]
    providers.record(client, running.manager.provider, version, names)
    for configuration in webhook_configurations(
        running.manager, root, running.webhook_port, ca_bundle
    ):
        if configuration["kind"] == "MutatingWebhookConfiguration":
            mutating = MutatingWebhookConfiguration.from_dict(configuration)
            assert isinstance(mutating, MutatingWebhookConfiguration)  # from_dict is typed loosely
            client.apply(mutating, field_manager="plunder-lab", force=True)
        else:
            validating = ValidatingWebhookConfiguration.from_dict(configuration)
            assert isinstance(validating, ValidatingWebhookConfiguration)
            client.apply(validating, field_manager="plunder-lab", force=True)


def start_manager(
    manager: ClusterAPIManager, kubeconfig: Path, pki: PlanePKI, run_dir: Path
) -> RunningManager:
    """Start one manager (building it first if needed); return once it is ready."""
    binary = binaries.ensure_binary(manager.program)
    cert_dir = issue_serving_certificate(pki, run_dir / f"{manager.program}-certs", manager.program)
    webhook_port, health_port = processes.free_port(), processes.free_port()
    process = processes.start(
        manager.program,
        manager_argv(binary, cert_dir, webhook_port, health_port, manager),
        run_dir,
        env={"KUBECONFIG": str(kubeconfig)},
    )
    try:
        processes.wait_until(
            processes.http_ok(f"http://127.0.0.1:{health_port}/readyz"),
            manager.program,
            process,
            timeout=120,
        )
    except processes.StartupError:
        processes.stop(process.pid)
        raise
    return RunningManager(manager, process, webhook_port, health_port)


def start_cluster_api(
    client: Client,
    kubeconfig: Path,
    pki: PlanePKI,
    run_dir: Path,
    managers: tuple[ClusterAPIManager, ...] = MANAGERS,
) -> ClusterAPIControllers:
    """Start the three managers (or ``managers``) against the plane and route its webhooks to them.

    Their CRDs must be installed already (:func:`binaries.cluster_api_crd_files`): a manager
    does not start while a kind it watches is unknown.
    """
    ca_bundle = base64.b64encode(pki.ca_cert.read_bytes()).decode()
    started: list[RunningManager] = []
    try:
        for manager in managers:
            started.append(start_manager(manager, kubeconfig, pki, run_dir))
        for running in started:
            register_webhooks(client, running, ca_bundle)
    except BaseException:
        ClusterAPIControllers(tuple(started)).stop()
        raise
    log.info(
        "Cluster API controllers running: %s",
        ", ".join(f"{r.manager.program} (pid {r.process.pid})" for r in started),
    )
    return ClusterAPIControllers(tuple(started))


def start_ipam_in_cluster(
    client: Client, kubeconfig: Path, pki: PlanePKI, run_dir: Path
) -> ClusterAPIControllers:
    """Install the in-cluster IPAM provider's pool CRDs and start it, with its webhooks.

    Cluster API's CRDs (its IPAddressClaim, IPAddress and Cluster) must be installed already.
    """
    crds.install_crd_files(client, binaries.ipam_in_cluster_crd_files())
    return start_cluster_api(client, kubeconfig, pki, run_dir, (IPAM_IN_CLUSTER,))


def start_providers(
    client: Client, kubeconfig: Path, pki: PlanePKI, run_dir: Path
) -> ClusterAPIControllers:
    """Every provider the lab runs, as ``clusterctl init`` with the in-cluster IPAM would leave.

    This provider's CRDs (the controller itself is started by the caller), Cluster API's core,
    kubeadm bootstrap and control-plane managers and the in-cluster IPAM provider, each recorded
    in clusterctl's inventory.
    """
    crds.install_plunder_crds(client)
    providers.record_plunder(client)
    crds.install_crd_files(client, binaries.cluster_api_crd_files())
    core = start_cluster_api(client, kubeconfig, pki, run_dir)
    try:
        ipam = start_ipam_in_cluster(client, kubeconfig, pki, run_dir)
    except BaseException:
        core.stop()
        raise
    return ClusterAPIControllers(core.managers + ipam.managers)
