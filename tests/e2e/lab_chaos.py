"""Chaos on the lab's virtual bare metal (issue #12): its parts killed while real hosts are given.

Shared by the bounded CI test (tests/e2e/test_lab_chaos.py) and the full run
(bench/chaos_lab.py). The simulated version's machinery is reused
(:mod:`tests.integration.chaos_world`: the plan, the timing, the findings; and its ledger,
:mod:`tests.integration.chaos_ledger`, watching every claim, binding and return); what differs
is who plays the hosts and how a part is disrupted. Here the hosts are the lab's QEMU VMs
(PXE, the agent, the image written to disk, cloud-init's phone home), and a disruption is
:func:`plunder.lab.restarts.restart` on the running lab: ``kill -9`` of the controller, of the
boot service or of its dnsmasq, each started again as its Deployment (or, for dnsmasq, the boot
service's supervisor) would, and one restart of kube-apiserver with etcd kept.

A run makes a Cluster API ``Machine`` (bootstrap data: a plain cloud-config Secret, no kubeadm)
with its ``PlunderMachine`` per host, all at once, with the lab's Debian + cloud-init image; when
every machine is provisioned, it deletes the Machines (each host is wiped and returns to the
pool) and waits until every PlunderMachine is gone. A host's return counts as wiped only if its
disk, read at that moment, holds no boot sector any more.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.resources.core_v1 import Event

from plunder.api.inventory import PlunderHost
from plunder.boot import macs
from plunder.boot.ipxe import scripts
from plunder.k8s import capi
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict
from plunder.lab import processes, restarts, vms
from plunder.lab.lab import OS_IMAGE_NAME
from plunder.reconcile import hoststate
from tests.e2e.test_lab_hosts import mbr_signature
from tests.integration.chaos_ledger import Ledger
from tests.integration.chaos_world import (
    APISERVER,
    BOOT,
    CONTROLLER,
    ChaosRun,
    Disruption,
    Findings,
    Phase,
    Plan,
)
from tests.integration.test_machine_world import HOSTS, create_cluster, create_machine

DNSMASQ = "dnsmasq"
COMPONENTS = {
    CONTROLLER: restarts.CONTROLLER,
    BOOT: restarts.BOOT,
    DNSMASQ: restarts.DNSMASQ,
    APISERVER: restarts.APISERVER,
}
"""What a plan names → the lab's part that :func:`restarts.restart` restarts."""
NAMESPACE = "default"
"""The lab's hosts are there, and machines claim hosts of their own namespace."""
CLUSTER = "chaos"


def lab_client(folder: Path) -> Client:
    """A new admin client of the lab's plane."""
    return k8s_client.sync_client(folder / "kubeconfig", timeout=60)


def os_image(server: str) -> dict[str, str]:
    """The lab's Debian + cloud-init image (not the Kubernetes node image), lzop'd."""
    url = f"{server}/files/images/{OS_IMAGE_NAME}.lzo"
    return {"url": url, "checksum": f"{url}.sha256", "format": "raw-lzop"}


def dhcp_servers(folder: Path) -> int:
    """How many dnsmasq processes of this lab run now."""
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() != "dnsmasq":
                continue
            if str(folder) in (proc / "cmdline").read_text(errors="replace"):
                count += 1
        except OSError:
            continue
    return count


def wait_until_available(folder: Path, timeout: float) -> None:
    """Every host of the lab inspected and parked in the agent."""
    expected = len(json.loads((folder / "hosts.json").read_text()))

    def all_available() -> bool:
        hosts = lab_client(folder).list(HOSTS, namespace=NAMESPACE)
        return [hoststate.state_of(_host(h)) for h in hosts].count("available") == expected

    processes.wait_until(all_available, "every host available", timeout=timeout, interval=1.0)


def prepare_cluster(folder: Path) -> None:
    """The Cluster and its PlunderCluster the machines belong to, once per lab."""
    create_cluster(lab_client(folder), NAMESPACE, CLUSTER)


class LabChaos(ChaosRun):
    """One run on the lab: a machine per host, given under disruption, then taken back."""

    def __init__(self, folder: Path, server: str, label: str) -> None:
        self.folder = folder
        self.server = server
        hosts: list[dict[str, Any]] = json.loads((folder / "hosts.json").read_text())
        self.disks = {
            macs.host_name(host["mac"]): vms.VMFiles.in_dir(folder / "vms", host["name"]).disk
            for host in hosts
        }
        ledger = Ledger(folder / "kubeconfig", NAMESPACE, self.wiped_in)
        super().__init__(len(hosts), NAMESPACE, ledger)
        self.names = [f"{label}-{i}" for i in range(len(hosts))]
        self.live = set(self.names)
        self.most_dhcp_servers = 0
        """The most dnsmasq processes seen at once, just after each disruption."""
        self.provisioned_then = 0
        self.stuck_then: list[str] = []

    def client(self) -> Client:
        return lab_client(self.folder)

    def wiped_in(self, host: str, cycle: str) -> bool:
        """The host's disk, as it is now, holds no boot sector: the agent zeroed its ends.

        A disk that cannot be read counts as not wiped (the return is flagged, not skipped).
        """
        disk = self.disks.get(host)
        try:
            return disk is not None and mbr_signature(disk) != b"\x55\xaa"
        except (OSError, subprocess.SubprocessError, StopIteration, ValueError):
            return False

    def host_note(self, host: PlunderHost) -> str:
        status = host.status
        return f"{status.error_reason}: {status.error_message}" if status else ""

    def disrupt(self, what: str, started: float) -> Disruption:
        provisioned = self.ledger.provisioned()
        begun = time.monotonic()
        if what == APISERVER:  # a restart: it finishes its requests and closes its watches
            done = restarts.restart(self.folder, COMPONENTS[what], signal.SIGTERM)
        else:
            done = restarts.restart(self.folder, COMPONENTS[what], signal.SIGKILL)
        self.most_dhcp_servers = max(self.most_dhcp_servers, dhcp_servers(self.folder))
        action = "restart" if what == APISERVER else "kill -9"
        return self.noted(what, started, provisioned, done.stopped, begun, action)

    def provision(self, plan: Plan, patience: float) -> Phase:
        """A Machine per host, all at once (the clock starts), disrupted; until all provisioned."""
        kube = self.client()
        started = time.monotonic()
        for name in self.names:
            create_machine(kube, NAMESPACE, name, CLUSTER, spec={"image": os_image(self.server)})
        phase = self.phase(plan.provisioning, started, patience)
        self.provisioned_then, self.stuck_then = self.ledger.provisioned(), self.stuck()
        return phase

    def release(self, plan: Plan, patience: float) -> Phase:
        """Delete every Machine, disrupted; until each PlunderMachine is gone (its host wiped)."""
        kube = self.client()
        started = time.monotonic()
        for name in self.names:
            kube.delete(capi.Machine, name, namespace=NAMESPACE)
        self.live, self.deleted = set(), set(self.names)
        return self.phase(plan.deletion, started, patience)

    def rides(self) -> dict[str, int]:
        """How often the hosts rode out a part that was away, so far in the lab's life.

        The agent's fetches that found no answer and were tried again (Warning events, by
        reason), and the chain script's waits for the boot service (the hosts' serial consoles).
        """
        ridden: dict[str, int] = {}
        for event in self.client().list(Event, namespace=NAMESPACE):
            if "the agent tries again" in (event.message or ""):
                what = f"{event.reason} tried again"
                ridden[what] = ridden.get(what, 0) + (event.count or 1)
        ridden["chain script waits"] = sum(
            log.read_text(errors="replace").count(scripts.CHAIN_WAIT_MESSAGE)
            for log in (self.folder / "vms").glob("*.serial.log")
        )
        return ridden

    def findings(self, label: str, provisioning: Phase, deletion: Phase) -> Findings:
        """As the simulated run's, with the machines provisioned and stuck before the release."""
        found = super().findings(label, provisioning, deletion)
        found.provisioned, found.total = self.provisioned_then, self.size
        found.stuck = self.stuck_then + found.stuck
        return found


def _host(obj: Any) -> PlunderHost:
    return PlunderHost.model_validate(as_dict(obj))


def run(
    folder: Path, server: str, label: str, plan: Plan, patience: float
) -> tuple[LabChaos, Findings]:
    """Provision a machine per host under the plan's disruptions, then release them all.

    ``patience``: seconds after a phase's last disruption before what is not done is stuck.
    """
    chaos = LabChaos(folder, server, label)
    print(f"{label}: {chaos.size} hosts and machines", flush=True)
    chaos.ledger.start()
    try:
        provisioning = chaos.provision(plan, patience)
        took = "never" if provisioning.done_s is None else f"{provisioning.done_s:.1f}s"
        print(f"  all provisioned after {took}; deleting the machines", flush=True)
        deletion = chaos.release(plan, patience)
        return chaos, chaos.findings(label, provisioning, deletion)
    finally:
        chaos.ledger.stop()
