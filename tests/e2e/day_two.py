"""Helpers of the live cluster's day two (tests/e2e/test_cluster_template.py).

- :class:`AllocationWatch` polls every PlunderHost's ``spec.consumerRef`` and every
  PlunderMachine's host (its ``plunder.dev/host`` annotation and ``status.hostRef``) twice a
  second, in a thread, for the whole test, and records what would be a double allocation: a
  host's consumer going from one machine straight to another, two machines naming one host, a
  machine naming two hosts, a host claimed by one machine and named by another.
- :class:`LabVMs` does to the lab's VMs what happens to servers behind a cluster's back, through
  the lab's own libvirt (``plunder.lab.hypervisor``): a hang, a power cut, a cut network link.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plunder.api.infrastructure import HOST_ANNOTATION, PlunderMachine
from plunder.api.inventory import PlunderHost
from plunder.api.remediation import PlunderRemediation
from plunder.k8s.client import sync_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import hypervisor, vms


@dataclass
class AllocationWatch:
    """Who holds which host, polled; what would be a double allocation, recorded."""

    kubeconfig: Path
    namespace: str = "default"
    interval: float = 0.5
    consumers: dict[str, list[str | None]] = field(default_factory=dict)
    """Host → its consumers in order, ``None`` for none (each change once)."""
    hosts_of: dict[str, set[str]] = field(default_factory=dict)
    """PlunderMachine → the hosts it ever named."""
    remediations: dict[str, dict[str, Any]] = field(default_factory=dict)
    """PlunderRemediation → its last status seen."""
    violations: list[str] = field(default_factory=list)
    polls: int = 0
    failed_polls: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="allocation-watch", daemon=True)
        self._kube = sync_client(self.kubeconfig)

    def start(self) -> AllocationWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the API server away for a moment: poll again
                self.failed_polls += 1
            self._stop.wait(self.interval)

    def poll(self) -> None:
        """One look at the hosts, machines and remediations."""
        hosts = [
            as_dict(h) for h in self._kube.list(resource_for(PlunderHost), namespace=self.namespace)
        ]
        machines = [
            as_dict(m)
            for m in self._kube.list(resource_for(PlunderMachine), namespace=self.namespace)
        ]
        remediations = [
            as_dict(r)
            for r in self._kube.list(resource_for(PlunderRemediation), namespace=self.namespace)
        ]
        with self._lock:
            self.polls += 1
            self._look(hosts, machines)
            for remediation in remediations:
                name = remediation["metadata"]["name"]
                self.remediations[name] = dict(remediation.get("status") or {})

    def _look(self, hosts: list[dict[str, Any]], machines: list[dict[str, Any]]) -> None:
        claimed_by: dict[str, str | None] = {}
        for host in hosts:
            name = host["metadata"]["name"]
            consumer = ((host.get("spec") or {}).get("consumerRef") or {}).get("name")
            claimed_by[name] = consumer
            seen = self.consumers.setdefault(name, [None])
            if consumer != seen[-1]:
                if consumer is not None and seen[-1] is not None:
                    self.violations.append(f"{name}: consumer {seen[-1]} → {consumer}")
                seen.append(consumer)
        named: dict[str, list[str]] = {}
        for machine in machines:
            name = machine["metadata"]["name"]
            annotation = (machine["metadata"].get("annotations") or {}).get(HOST_ANNOTATION)
            status_ref = ((machine.get("status") or {}).get("hostRef") or {}).get("name")
            hosts_named = {h for h in (annotation, status_ref) if h}
            for host in hosts_named:
                named.setdefault(host, []).append(name)
                consumer = claimed_by.get(host)
                if consumer is not None and consumer != name:
                    self.violations.append(f"{name} names {host}, which {consumer} holds")
            ever = self.hosts_of.setdefault(name, set())
            ever |= hosts_named
            if len(ever) > 1:
                self.violations.append(f"{name} named hosts {sorted(ever)}")
        for host, names in named.items():
            if len(names) > 1:
                self.violations.append(f"{host} named by {sorted(names)}")

    def report(self) -> str:
        """Each host's consumers in order, as printed at the end of the test."""
        with self._lock:
            lines = [
                f"  {host}: {' → '.join(c or '-' for c in seen)}"
                for host, seen in sorted(self.consumers.items())
            ]
        return "\n".join(lines)

    def snapshot_remediations(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {name: dict(status) for name, status in self.remediations.items()}


@dataclass(frozen=True)
class LabVMs:
    """The lab's VMs, through the lab's own libvirt."""

    folder: Path

    @property
    def uri(self) -> str:
        return hypervisor.uri_for(self.folder / "hv")

    def state(self, name: str) -> str:
        return vms.state(self.uri, name)

    def hang(self, name: str) -> None:
        """Freeze the host (its CPUs stop; its BMC still says it is on): a hung kernel."""
        hypervisor.virsh(self.uri, "suspend", name)

    def power_off(self, name: str) -> None:
        """Pull the plug."""
        vms.destroy(self.uri, name)

    def set_link(self, name: str, mac: str, up: bool, live: bool = True) -> None:
        """The host's network link up or down, for its next start and (``live``) now."""
        state = "up" if up else "down"
        hypervisor.virsh(self.uri, "domif-setlink", name, mac, state, "--config")
        if live and self.state(name) == "running":
            hypervisor.virsh(self.uri, "domif-setlink", name, mac, state)

    def link(self, name: str, mac: str, inactive: bool = True) -> str:
        """The link state libvirt holds for the host (its next start's, if ``inactive``)."""
        flags = ["--config"] if inactive else []
        said = hypervisor.virsh(self.uri, "domif-getlink", name, mac, *flags)
        return "down" if "down" in said.split() else "up"


def mac_of(provider_id: str) -> str:
    return provider_id.removeprefix("plunder://")


def host_name(mac: str) -> str:
    return f"host-{mac.replace(':', '-')}"


def vm_of(lab_hosts: Iterable[dict[str, Any]], mac: str) -> str:
    """The lab VM whose MAC is ``mac``."""
    (name,) = [h["name"] for h in lab_hosts if h["mac"] == mac]
    return str(name)
