"""Least privilege: the controller and the boot service run as their released ServiceAccounts.

The release components are installed on the test plane; each component then runs with a token
of its own ServiceAccount (as it would in a pod, or on the provisioning network with a
kubeconfig Secret), does its work, and is refused what it has no business with.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap

from plunder.api.infrastructure import PlunderCluster
from plunder.api.inventory import PlunderHost
from plunder.boot import agentlog
from plunder.boot.service import BootService
from plunder.boot.settings import BootSettings, DhcpSettings
from plunder.cli import release
from plunder.k8s.resources import resource_for
from plunder.lab import processes
from plunder.lab.plane import Plane
from tests.conftest import eventually, nested, provider_controller, run_kubectl, running
from tests.integration import test_machine_world as world

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "plunder-system"
CONTROLLER = f"system:serviceaccount:{SYSTEM}:plunder-controller"
BOOT = f"system:serviceaccount:{SYSTEM}:plunder-boot"


@pytest.fixture(scope="module")
def components(cluster_api_crds: list[str], kubectl: list[str]) -> None:
    """The release components, installed as `clusterctl init` would (no pods run here).

    Cluster API's CRDs come first, as in a real management cluster (`kubectl auth can-i`
    answers "no" about kinds the server does not know).
    """
    applied = run_kubectl(
        kubectl,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        str(REPO / release.COMPONENTS_FILE),
    )
    assert applied.returncode == 0, applied.stderr


def service_account_kubeconfig(kubectl: list[str], plane: Plane, account: str, path: Path) -> Path:
    """A kubeconfig with a fresh token of ``account``: what the boot service's Secret holds."""
    token = run_kubectl(kubectl, "create", "token", account, "-n", SYSTEM, "--duration=1h")
    assert token.returncode == 0, token.stderr
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "management",
                "cluster": {
                    "server": plane.server,
                    "certificate-authority-data": base64.b64encode(
                        plane.pki.ca_cert.read_bytes()
                    ).decode(),
                },
            }
        ],
        "users": [{"name": account, "user": {"token": token.stdout.strip()}}],
        "contexts": [{"name": account, "context": {"cluster": "management", "user": account}}],
        "current-context": account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def can_i(kubectl: list[str], who: str, verb: str, resource: str, namespace: str) -> bool:
    # kubectl reads "kind/status" as the object named status: the subresource is a flag.
    extra = []
    if resource.endswith("/status"):
        resource, extra = resource.removesuffix("/status"), ["--subresource=status"]
    answer = run_kubectl(
        kubectl, "auth", "can-i", verb, resource, *extra, "-n", namespace, "--as", who
    )
    return answer.stdout.strip() == "yes"


@pytest.mark.parametrize(
    ("who", "verb", "resource", "allowed"),
    [
        (CONTROLLER, "patch", "plundermachines.infrastructure.cluster.x-k8s.io", True),
        (CONTROLLER, "patch", "plunderclusters.infrastructure.cluster.x-k8s.io/status", True),
        (CONTROLLER, "update", "plunderhosts.metal.plunder.dev", True),
        (CONTROLLER, "watch", "machines.cluster.x-k8s.io", True),
        (CONTROLLER, "get", "clusters.cluster.x-k8s.io", True),
        (CONTROLLER, "get", "secrets", True),
        (CONTROLLER, "create", "ipaddressclaims.ipam.cluster.x-k8s.io", True),
        (CONTROLLER, "create", "events", True),
        (CONTROLLER, "list", "secrets", False),
        (CONTROLLER, "create", "secrets", False),
        (CONTROLLER, "delete", "plunderhosts.metal.plunder.dev", False),
        (CONTROLLER, "patch", "machines.cluster.x-k8s.io", False),
        (CONTROLLER, "patch", "machines.cluster.x-k8s.io/status", True),  # the hand-back
        (CONTROLLER, "delete", "machines.cluster.x-k8s.io", False),
        (CONTROLLER, "patch", "plunderremediations.infrastructure.cluster.x-k8s.io/status", True),
        (CONTROLLER, "create", "plunderremediations.infrastructure.cluster.x-k8s.io", False),
        (CONTROLLER, "delete", "plunderremediations.infrastructure.cluster.x-k8s.io", False),
        (CONTROLLER, "delete", "clusters.cluster.x-k8s.io", False),
        (CONTROLLER, "get", "pods", False),
        (CONTROLLER, "get", "configmaps", False),
        (CONTROLLER, "create", "plunderhosts.metal.plunder.dev", False),
        (BOOT, "create", "plunderhosts.metal.plunder.dev", True),
        (BOOT, "patch", "plunderhosts.metal.plunder.dev/status", True),
        (BOOT, "get", "secrets", False),  # only in its own namespace: below
        (BOOT, "create", "events", True),
        (BOOT, "delete", "plunderhosts.metal.plunder.dev", False),
        (BOOT, "update", "plunderhosts.metal.plunder.dev", False),
        (BOOT, "list", "secrets", False),
        (BOOT, "get", "plundermachines.infrastructure.cluster.x-k8s.io", False),
        (BOOT, "get", "machines.cluster.x-k8s.io", False),
        (BOOT, "get", "pods", False),
    ],
)
def test_each_component_can_do_its_job_and_no_more(
    components: None, kubectl: list[str], who: str, verb: str, resource: str, allowed: bool
) -> None:
    assert can_i(kubectl, who, verb, resource, "default") is allowed


def test_the_boot_service_makes_its_key_only_in_its_own_namespace(
    components: None, kubectl: list[str]
) -> None:
    assert can_i(kubectl, BOOT, "create", "secrets", SYSTEM)
    assert not can_i(kubectl, BOOT, "create", "secrets", "default")


def test_the_boot_service_reads_secrets_only_in_the_namespace_it_serves(
    components: None, kubectl: list[str]
) -> None:
    assert can_i(kubectl, BOOT, "get", "secrets", SYSTEM)
    for namespace in ("default", "kube-system"):
        assert not can_i(kubectl, BOOT, "get", "secrets", namespace), namespace
    assert not can_i(kubectl, BOOT, "list", "secrets", SYSTEM)


def test_the_controller_holds_its_lease_only_in_its_own_namespace(
    components: None, kubectl: list[str]
) -> None:
    assert can_i(kubectl, CONTROLLER, "update", "leases.coordination.k8s.io", SYSTEM)
    assert not can_i(kubectl, CONTROLLER, "update", "leases.coordination.k8s.io", "default")
    assert not can_i(kubectl, CONTROLLER, "delete", "leases.coordination.k8s.io", SYSTEM)


def test_the_controller_writes_its_slot_ledger_only_in_its_own_namespace(
    components: None, kubectl: list[str]
) -> None:
    ledger = "configmaps/plunder-provisioning-slots"
    assert can_i(kubectl, CONTROLLER, "patch", ledger, SYSTEM)
    assert can_i(kubectl, CONTROLLER, "create", "configmaps", SYSTEM)
    assert not can_i(kubectl, CONTROLLER, "patch", ledger, "default")
    assert not can_i(kubectl, CONTROLLER, "patch", "configmaps/other", SYSTEM)
    assert not can_i(kubectl, CONTROLLER, "delete", ledger, SYSTEM)


def test_the_controller_reconciles_as_its_service_account(
    components: None,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    namespace: str,
    tmp_path: Path,
) -> None:
    """A cluster provisioned and a host claimed for a machine, with no 403 on the way."""
    kubeconfig = service_account_kubeconfig(
        kubectl, plane, "plunder-controller", tmp_path / "kubeconfig"
    )
    lease = ("--leader-elect", "--leader-election-namespace", SYSTEM)
    with provider_controller(kubeconfig, tmp_path, namespace, *lease) as controller:
        world.create_cluster(kube, namespace)
        world.create_host(kube, namespace, "h0", "00:50:56:a5:11:30")
        world.create_machine(kube, namespace, "m0")
        eventually(
            lambda: nested(
                kube.get(resource_for(PlunderCluster), "c1", namespace=namespace),
                "status",
                "initialization",
                "provisioned",
            ),
            "the PlunderCluster provisioned by the controller as its ServiceAccount",
        )
        # The claim: the bootstrap Secret read, the host updated with what to install.
        eventually(lambda: world.claims(kube, namespace) == {"h0": "m0"}, "the host claimed")
        (host,) = world.hosts(kube, namespace)
        assert host["spec"]["image"]["url"] == world.IMAGE["url"]
        # Its move into provisioning took a slot: the ledger was written as the ServiceAccount.
        eventually(
            lambda: world.hosts(kube, namespace)[0]["status"]["state"] == "provisioning",
            "the host provisioning",
        )
    log = controller.log.read_text()
    assert "Forbidden" not in log and "forbidden" not in log, log[-3000:]
    assert "became the leader" in log


@pytest.fixture
def boot_as_service_account(
    components: None, plane: Plane, kubectl: list[str], tmp_path: Path
) -> Iterator[BootService]:
    kubeconfig = service_account_kubeconfig(kubectl, plane, "plunder-boot", tmp_path / "kc")
    settings = BootSettings(
        address=IPv4Address("127.0.0.1"),
        http_port=processes.free_port(),
        run_dir=tmp_path / "run",
        namespace=SYSTEM,
        last_seen_interval=3600,
        dhcp=DhcpSettings(mode="off"),
    )
    yield BootService(settings, kubeconfig)


async def test_the_boot_service_discovers_a_host_as_its_service_account(
    boot_as_service_account: BootService, kube: Client
) -> None:
    """Outside the cluster, with only its kubeconfig: key Secret, discovery, status, agent log.

    The agent's lookup and its log (a ConfigMap, in the namespace the service serves) too.
    """
    mac = "02:00:00:7b:ac:01"
    name = "host-" + mac.replace(":", "-")
    try:
        async with running(boot_as_service_account) as boot:
            base = f"{boot.settings.http_base}"
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"{base}/boot.ipxe", params={"mac": mac})
                assert answer.status_code == 200, answer.text
                host = kube.get(resource_for(PlunderHost), name, namespace=SYSTEM)
                assert nested(host, "spec", "bootMACAddress") == mac
                assert nested(host, "status", "state") == "discovered"
                looked_up = await client.post(f"{base}/agent/v1/{mac}/lookup")
                assert looked_up.status_code == 200, looked_up.text
                token = looked_up.text.removeprefix("token=").strip()
                sent = await client.post(
                    f"{base}/agent/v1/{mac}/log",
                    content=b"[1.0] plunder-agent: starting\n",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert sent.status_code == 204, sent.text
        kept = kube.get(ConfigMap, agentlog.configmap_name(name), namespace=SYSTEM)
        assert "plunder-agent: starting" in (kept.data or {})["log"]
    finally:
        kube.delete(resource_for(PlunderHost), name, namespace=SYSTEM)
        with contextlib.suppress(ApiError):
            kube.delete(ConfigMap, agentlog.configmap_name(name), namespace=SYSTEM)


def test_the_boot_service_deployment_is_accepted(components: None, kubectl: list[str]) -> None:
    """config/bootservice, for running on the provisioning network with the kubeconfig Secret."""
    applied = run_kubectl(
        kubectl, "apply", "--dry-run=server", "-k", str(REPO / "config" / "bootservice")
    )
    assert applied.returncode == 0, applied.stderr
    assert "deployment.apps/plunder-boot created (server dry run)" in applied.stdout
