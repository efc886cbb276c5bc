"""The chaos runs' ledger: every claim, binding and return of a host seen during a run.

No tests here: the chaos world (:mod:`tests.integration.chaos_world`) keeps one per run.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube.core.exceptions import ApiError
from lightkube.generic_resource import GenericNamespacedResource

from plunder.api.infrastructure import HOST_ANNOTATION
from plunder.api.inventory import PlunderHost
from plunder.boot import trust
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict
from plunder.reconcile import hoststate
from tests.integration.test_machine_world import HOSTS, MACHINES


class Follower(threading.Thread):
    """One resource's watch events in order, to ``handle``, whatever happens to the API server.

    A broken watch goes on from the last resourceVersion seen; one too old for the API server
    (410, after a restart) starts afresh, and that gap is counted: the states of the gap are not
    seen, so a check across it is not certain.
    """

    def __init__(
        self,
        kubeconfig: Path,
        resource: type[GenericNamespacedResource],
        namespace: str,
        handle: Callable[[str, dict[str, Any]], None],
    ) -> None:
        super().__init__(daemon=True)
        self.client = k8s_client.sync_client(kubeconfig, timeout=60)
        self.resource = resource
        self.namespace = namespace
        self.handle = handle
        self.gaps = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        version: str | None = None
        while not self.stopping.is_set():
            try:
                for kind, obj in self.client.watch(
                    self.resource, namespace=self.namespace, resource_version=version
                ):
                    body = as_dict(obj)
                    version = body["metadata"]["resourceVersion"]
                    self.handle(kind, body)
            except ApiError as error:
                if error.status.code == 410:
                    version = None
                    self.gaps += 1
            except Exception:  # noqa: BLE001, S110 - the API server restarts: watch again
                pass
            self.stopping.wait(0.5)


@dataclass
class HostSeen:
    """The last event of a host, and the consumer uid it named at each resourceVersion."""

    host: PlunderHost
    gaps: int
    """The host watch's gap count when this was seen."""
    history: list[tuple[int, str | None]] = field(default_factory=list)


@dataclass
class MachineSeen:
    name: str
    state: str | None = None
    deleting: bool = False
    gone: bool = False
    hosts: dict[str, int] = field(default_factory=dict)
    """Every host its annotation ever named, with the resourceVersion it was first seen at."""


def consumer_uid(host: PlunderHost) -> str | None:
    ref = host.spec.consumer_ref
    return (ref.uid or ref.name) if ref is not None else None


def _resource_version(body: dict[str, Any]) -> int:
    """The resourceVersion as a number: etcd's revision, one order over all its writes."""
    return int(body["metadata"]["resourceVersion"])


class Ledger:
    """Every assignment and every return during a run, from watches of hosts and of machines.

    Checked as the events arrive (a violation is printed at once), and by :meth:`cross_check`:

    - a host's claim never passes from one machine to another without a release between;
    - a machine never names two hosts, and names only a host claimed for it at that moment (the
      claim is written before the binding, so by resourceVersion it comes first);
    - a host returns to ``available`` only from ``deprovisioning``, with the wipe recorded
      (Provisioned=False, Deprovisioned) and done by its agent in that deprovisioning's cycle;
    - a host is claimed only while ``available``, and once it has had a consumer, only after
      such a return (its wipe) since that consumer's release.

    It also keeps the run's figures: the hosts ever claimed, and the most hosts claimed and the
    most machines present (not yet gone) at one moment.

    A check that a watch gap (410) may have hidden the truth of is counted as unverified.
    """

    def __init__(
        self, kubeconfig: Path, namespace: str, wiped_in: Callable[[str, str], bool]
    ) -> None:
        self.namespace = namespace
        self.wiped_in = wiped_in
        self.hosts: dict[str, HostSeen] = {}
        self.machines: dict[str, MachineSeen] = {}
        """By uid."""
        self.given_twice: set[str] = set()
        self.two_hosts: set[str] = set()
        self.unwiped: set[str] = set()
        self.given_unwiped: set[str] = set()
        self.unverified: list[str] = []
        self.returns = 0
        self.not_wiped_since: dict[str, str] = {}
        """Host → the consumer whose use of it no wipe has followed yet."""
        self.hosts_used: set[str] = set()
        self.claimed_peak = 0
        self.machines_peak = 0
        self.lock = threading.Lock()
        self.host_watch = Follower(kubeconfig, HOSTS, namespace, self.on_host)
        self.machine_watch = Follower(kubeconfig, MACHINES, namespace, self.on_machine)

    def start(self) -> None:
        self.host_watch.start()
        self.machine_watch.start()

    def stop(self) -> None:
        for watch in (self.host_watch, self.machine_watch):
            watch.stopping.set()

    def flag(self, found: set[str], subject: str, message: str, gap: bool) -> None:
        """Record a violation (or, across a watch gap, an unverified one) and print it."""
        if gap:
            self.unverified.append(f"{subject}: {message}")
            return
        found.add(subject)
        print(f"  VIOLATION {subject}: {message}", flush=True)

    def on_host(self, kind: str, body: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        host = PlunderHost.model_validate(body)
        name = host.metadata.name or ""
        with self.lock:
            before = self.hosts.get(name)
            gaps = self.host_watch.gaps
            seen = HostSeen(host, gaps, before.history if before else [])
            seen.history.append((_resource_version(body), consumer_uid(host)))
            self.hosts[name] = seen
            if before is not None:
                self.check_host(name, before.host, host, gap=before.gaps != gaps)
                self.check_claim(name, before.host, host, gap=before.gaps != gaps)
            if consumer_uid(host) is not None:
                self.hosts_used.add(name)
                self.not_wiped_since[name] = consumer_uid(host) or ""
            claimed = sum(1 for h in self.hosts.values() if consumer_uid(h.host) is not None)
            self.claimed_peak = max(self.claimed_peak, claimed)

    def check_host(self, name: str, before: PlunderHost, host: PlunderHost, gap: bool) -> None:
        was, now = consumer_uid(before), consumer_uid(host)
        if was is not None and now is not None and was != now:
            self.flag(self.given_twice, name, f"claim passed from {was} to {now}", gap)
        state = hoststate.state_of(before)
        if hoststate.state_of(host) != "available" or state in ("available", "discovered"):
            return
        self.returns += 1
        cycle = trust.controller_cycle(before)
        if state != "deprovisioning":
            self.flag(self.unwiped, name, f"available again straight from {state}", gap)
        elif not self.wiped_in(name, cycle) or not _wipe_recorded(host):
            self.flag(self.unwiped, name, f"available again with no wipe in cycle {cycle}", gap)
        else:
            self.not_wiped_since.pop(name, None)

    def check_claim(self, name: str, before: PlunderHost, host: PlunderHost, gap: bool) -> None:
        """A new claim lands on an available host that was wiped since its last consumer."""
        now = consumer_uid(host)
        if now is None or consumer_uid(before) is not None:
            return
        state = hoststate.state_of(before)
        if state != "available":
            self.flag(self.given_unwiped, name, f"claimed by {now} while {state}", gap)
        elif name in self.not_wiped_since:
            was = self.not_wiped_since[name]
            self.flag(self.given_unwiped, name, f"claimed by {now}, not wiped since {was}", gap)

    def on_machine(self, kind: str, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        with self.lock:
            seen = self.machines.setdefault(meta["uid"], MachineSeen(meta["name"]))
            seen.state = (body.get("status") or {}).get("state")
            seen.deleting = bool(meta.get("deletionTimestamp"))
            seen.gone = kind == "DELETED"
            present = sum(1 for m in self.machines.values() if not m.gone)
            self.machines_peak = max(self.machines_peak, present)
            host = (meta.get("annotations") or {}).get(HOST_ANNOTATION)
            if host and host not in seen.hosts:
                seen.hosts[host] = _resource_version(body)
                if len(seen.hosts) > 1:
                    self.flag(self.two_hosts, seen.name, f"named {sorted(seen.hosts)}", False)

    def cross_check(self) -> None:
        """Each machine named its host only while the host's claim was its own."""
        with self.lock:
            for uid, machine in self.machines.items():
                for host, version in machine.hosts.items():
                    seen = self.hosts.get(host)
                    history = seen.history if seen else []
                    at = bisect.bisect_left([rv for rv, _ in history], version)
                    holder = history[at - 1][1] if at else None
                    if holder != uid:
                        gap = holder is None and self.host_watch.gaps > 0
                        message = f"named host {host} while its claim was {holder}'s"
                        self.flag(self.given_twice, host, f"{machine.name} {message}", gap)

    def gone(self) -> set[str]:
        """The names of the machines that were deleted and are gone."""
        with self.lock:
            return {m.name for m in self.machines.values() if m.gone}

    def provisioned(self) -> int:
        """Live machines that say Provisioned."""
        with self.lock:
            return sum(
                1
                for m in self.machines.values()
                if m.state == "Provisioned" and not m.deleting and not m.gone
            )


def _wipe_recorded(host: PlunderHost) -> bool:
    conditions = host.status.conditions if host.status else None
    return any(
        c.type == hoststate.PROVISIONED_CONDITION and c.reason == "Deprovisioned"
        for c in conditions or ()
    )
