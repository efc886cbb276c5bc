"""Chaos over simulated hosts: services killed with SIGKILL while hosts are given and taken back.

Shared by the bounded CI test (tests/integration/test_chaos.py) and the full run
(bench/chaos.py). One :class:`World` is a namespace of its own: a Cluster, available hosts and
as many machines (``populate``), the boot service and the controller as processes that are
killed with ``kill -9`` and started again (as their Deployments would), a simulated agent per
host that speaks to the boot service over HTTP (:mod:`tests.integration.sim_agent`), and a
ledger that watches every assignment and every return during the run
(:mod:`tests.integration.chaos_ledger`). :func:`run` provisions every machine while a
:class:`Plan` of disruptions runs (the kills, and a restart of kube-apiserver with etcd kept),
then deletes a share of the machines and adds as many new ones (which take the freed hosts once
they are wiped) while killing again, and reports what it found.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from plunder.api.infrastructure import HOST_ANNOTATION
from plunder.api.inventory import PlunderHost
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict
from plunder.lab import processes
from plunder.lab.plane import Plane, restart_apiserver
from plunder.reconcile import hoststate
from tests.integration.chaos_ledger import Ledger, consumer_uid
from tests.integration.sim_agent import HttpAgent
from tests.integration.test_machine_world import (
    HOSTS,
    MACHINES,
    Controller,
    Restartable,
    create_machine,
    populate,
)

CONTROLLER = "controller"
BOOT = "boot service"
APISERVER = "kube-apiserver"


# ------------------------------------------------------------------------------ the services


class LivePlane:
    """The plane, across restarts of its API server (each gives a new process to stop)."""

    def __init__(self, plane: Plane) -> None:
        self.plane = plane

    def restart_apiserver(self) -> int:
        """Restart kube-apiserver (etcd kept); the pid that was stopped."""
        stopped = self.plane.apiserver.pid
        self.plane = restart_apiserver(self.plane)
        return stopped

    def client(self) -> Client:
        """A new admin client (one made before a restart may hold dead connections)."""
        return k8s_client.sync_client(self.plane.kubeconfig, timeout=60)

    def stop(self) -> None:
        self.plane.stop()


class BootProcess(Restartable):
    """``plunderctl boot`` as a subprocess, on loopback with DHCP off, always on one port."""

    name = BOOT

    def __init__(self, kubeconfig: Path, log: Path, namespace: str, run_dir: Path) -> None:
        super().__init__(log)
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.run_dir = run_dir
        self.http_port = processes.free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def port(self) -> int:
        return self.http_port  # the hosts know this address: a restart keeps it

    def argv(self, port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "plunder.cli.main", "boot"),
            *("--kubeconfig", str(self.kubeconfig), "--namespace", self.namespace),
            *("--address", "127.0.0.1", "--http-port", str(port), "--dhcp", "off"),
            *("--run-dir", str(self.run_dir), "--no-discovery"),
        ]


# ------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Plan:
    """The disruptions of each phase (seconds from its start, what), and the machines deleted."""

    provisioning: list[tuple[float, str]]
    deletion: list[tuple[float, str]]
    delete: list[str]

    @classmethod
    def none(cls, size: int, fraction: float, seed: int) -> Plan:
        """No disruption: the baseline (the same machines deleted)."""
        return cls([], [], _victims(size, fraction, seed))

    @classmethod
    def drawn(
        cls,
        seed: int,
        size: int,
        spans: tuple[float, float],
        kills: dict[str, int],
        deletion_kills: dict[str, int],
        fraction: float,
    ) -> Plan:
        """Kills at moments drawn uniformly over each phase's span (from ``seed``)."""
        chance = random.Random(seed)

        def moments(span: float, counts: dict[str, int]) -> list[tuple[float, str]]:
            drawn = [
                (chance.uniform(0, span), what) for what, n in counts.items() for _ in range(n)
            ]
            return sorted((round(at, 2), what) for at, what in drawn)

        return cls(
            moments(spans[0], kills),
            moments(spans[1], deletion_kills),
            _victims(size, fraction, seed),
        )


def _victims(size: int, fraction: float, seed: int) -> list[str]:
    return sorted(random.Random(seed).sample(machine_names(size), round(size * fraction)))


def machine_names(size: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(size)]


# ------------------------------------------------------------------------------ the world


@dataclass(frozen=True)
class Disruption:
    """One kill -9 (or the API server's restart), as it happened."""

    at: float
    """Seconds since the phase began."""
    what: str
    pid: int
    back_after: float
    """Seconds until it answered again."""
    provisioned: int
    """Machines provisioned at that moment."""


@dataclass
class Phase:
    """The figures of one phase."""

    disruptions: list[Disruption]
    done_s: float | None
    """Seconds from the phase's start until every machine was provisioned (None: never)."""

    @property
    def recovery_s(self) -> float | None:
        """From the last disruption to every machine provisioned."""
        if self.done_s is None or not self.disruptions:
            return None
        return max(0.0, self.done_s - self.disruptions[-1].at)


@dataclass
class Findings:
    """What one run found."""

    label: str
    size: int
    provisioning: Phase
    deletion: Phase
    provisioned: int = 0
    total: int = 0
    given_twice: list[str] = field(default_factory=list)
    two_hosts: list[str] = field(default_factory=list)
    unwiped: list[str] = field(default_factory=list)
    given_unwiped: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    returns: int = 0
    gaps: int = 0

    @property
    def clean(self) -> bool:
        """Every machine provisioned, none given twice, stuck, or returned or given unwiped."""
        return self.provisioned == self.total and not (
            self.given_twice or self.two_hosts or self.unwiped or self.given_unwiped or self.stuck
        )


class ChaosRun:
    """What every chaos run does, whoever plays the hosts: disrupt on a plan, time, report.

    A run has a namespace with its hosts and machines, and a ledger watching them. Subclasses
    say how a disruption is done (:meth:`disrupt`) and may add what a stuck host last heard
    (:meth:`host_note`): :class:`World` with simulated hosts, the lab's chaos run
    (tests/e2e/lab_chaos.py) with virtual bare metal.
    """

    def __init__(self, size: int, namespace: str, ledger: Ledger) -> None:
        self.size = size
        self.namespace = namespace
        self.ledger = ledger
        self.live = set(machine_names(size))
        self.deleted: set[str] = set()

    def client(self) -> Client:
        """A new admin client (one made before an API server restart may hold dead ones)."""
        raise NotImplementedError

    def disrupt(self, what: str, started: float) -> Disruption:
        """Kill -9 ``what`` and start it again (the API server: restart it) until it answers."""
        raise NotImplementedError

    def host_note(self, host: PlunderHost) -> str:
        """What to say of a stuck host beside its state."""
        return ""

    def noted(
        self, what: str, started: float, provisioned: int, pid: int, begun: float, action: str
    ) -> Disruption:
        """The disruption begun at ``begun`` (``action``: kill -9, restart), printed."""
        at, back_after = begun - started, time.monotonic() - begun
        disruption = Disruption(at, what, pid, back_after, provisioned)
        print(
            f"  {at:7.1f}s  {action} {what} (pid {pid}) at {provisioned}/{self.size} "
            f"provisioned; answering again after {back_after:.1f}s",
            flush=True,
        )
        return disruption

    def disrupt_on(self, plan: list[tuple[float, str]], started: float) -> list[Disruption]:
        """Each disruption at its moment (a random moment is the point: nothing to wait for)."""
        done = []
        for at, what in plan:
            time.sleep(max(0.0, started + at - time.monotonic()))
            done.append(self.disrupt(what, started))
        return done

    def all_provisioned(self) -> bool:
        """Every live machine provisioned, every deleted one gone."""
        return self.ledger.provisioned() >= len(self.live) and self.deleted <= self.ledger.gone()

    def timed(self, started: float, timeout: float) -> Callable[[], float | None]:
        """Note, from now on, the first moment all are provisioned; the seconds from ``started``.

        A thread waits meanwhile, so the moment is known even if it comes before the last
        disruption. The returned function waits for it (None: not within ``timeout``).
        """
        moment: list[float] = []

        def note() -> None:
            with contextlib.suppress(processes.StartupError):
                processes.wait_until(self.all_provisioned, "all provisioned", timeout=timeout)
                moment.append(time.monotonic() - started)

        waiter = threading.Thread(target=note, daemon=True)
        waiter.start()

        def result() -> float | None:
            waiter.join()
            return moment[0] if moment else None

        return result

    def phase(self, plan: list[tuple[float, str]], started: float, patience: float) -> Phase:
        """The plan's disruptions, timed until all are provisioned."""
        last = plan[-1][0] if plan else 0.0
        done = self.timed(started, last + patience)
        disruptions = self.disrupt_on(plan, started)
        return Phase(disruptions, done())

    def findings(self, label: str, provisioning: Phase, deletion: Phase) -> Findings:
        """The ledger's record, and the state the API holds now."""
        self.ledger.cross_check()
        found = Findings(label, self.size, provisioning, deletion)
        found.provisioned, found.total = self.ledger.provisioned(), len(self.live)
        found.given_twice = sorted(self.ledger.given_twice | self.shared_now())
        found.two_hosts = sorted(self.ledger.two_hosts)
        found.unwiped = sorted(self.ledger.unwiped)
        found.given_unwiped = sorted(self.ledger.given_unwiped)
        found.stuck = self.stuck()
        found.unverified = self.ledger.unverified
        found.returns = self.ledger.returns
        found.gaps = self.ledger.host_watch.gaps + self.ledger.machine_watch.gaps
        return found

    def shared_now(self) -> set[str]:
        """Hosts that two machines name now, or whose claim is not the machine's naming them."""
        kube = self.client()
        hosts = {h.metadata.name: h for h in map(_host, kube.list(HOSTS, namespace=self.namespace))}
        named: dict[str, list[str]] = defaultdict(list)
        shared = set()
        for body in map(as_dict, kube.list(MACHINES, namespace=self.namespace)):
            meta = body["metadata"]
            name = (meta.get("annotations") or {}).get(HOST_ANNOTATION)
            if name is None or meta.get("deletionTimestamp"):
                continue
            named[name].append(meta["name"])
            host = hosts.get(name)
            if host is None or consumer_uid(host) != meta["uid"]:
                shared.add(name)
        return shared | {name for name, machines in named.items() if len(machines) > 1}

    def stuck(self) -> list[str]:
        """Hosts not at rest (with what their agent last heard), machines not done."""
        kube = self.client()
        found = []
        for host in map(_host, kube.list(HOSTS, namespace=self.namespace)):
            state = hoststate.state_of(host)
            claimed = host.spec.consumer_ref is not None
            if (state, claimed) not in (("provisioned", True), ("available", False)):
                found.append(f"host {host.metadata.name} {state} ({self.host_note(host)})")
        for body in map(as_dict, kube.list(MACHINES, namespace=self.namespace)):
            name, status = body["metadata"]["name"], (body.get("status") or {}).get("state")
            if name in self.deleted or status != "Provisioned":
                found.append(f"machine {name} {status}")
        return found


class World(ChaosRun):
    """One run's namespace with its hosts, machines, boot service, controller, agent, ledger."""

    def __init__(
        self,
        plane: LivePlane,
        folder: Path,
        size: int,
        seed: int,
        install_seconds: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.plane = plane
        namespace = f"chaos-{uuid.uuid4().hex[:6]}"
        folder.mkdir(parents=True, exist_ok=True)
        kubeconfig = plane.plane.kubeconfig
        # The provisioning throttle lifted, as in the benchmark the figures came from.
        limit = ("--provisioning-limit", str(size))
        self.controller = Controller(plane.plane, folder / "controller.log", namespace, limit)
        self.boot = BootProcess(kubeconfig, folder / "boot.log", namespace, folder / "boot")
        self.agent = HttpAgent(kubeconfig, namespace, self.boot.url, install_seconds, seed)
        super().__init__(size, namespace, Ledger(kubeconfig, namespace, self.agent.wiped_in))

    def client(self) -> Client:
        return self.plane.client()

    def services(self) -> dict[str, Restartable]:
        return {CONTROLLER: self.controller, BOOT: self.boot}

    def prepare(self) -> None:
        """Hosts and machines, the boot service, every host's agent parked with its token."""
        kube = self.client()
        kube.create(Namespace(metadata=ObjectMeta(name=self.namespace)))
        populate(kube, self.namespace, self.size)
        self.ledger.start()
        self.boot.start()
        self.agent.start()
        self.agent.parked.wait()
        if self.agent.failure is not None:
            raise self.agent.failure

    def stop(self) -> None:
        for service in self.services().values():
            service.stop()
        self.agent.stop()
        self.ledger.stop()

    def disrupt(self, what: str, started: float) -> Disruption:
        provisioned = self.ledger.provisioned()
        if what == APISERVER:
            begun = time.monotonic()
            pid = self.plane.restart_apiserver()
        else:
            service = self.services()[what]
            assert service.process is not None
            pid = service.process.pid
            begun = time.monotonic()
            service.kill()
            service.start()
        return self.noted(
            what, started, provisioned, pid, begun, "restart" if what == APISERVER else "kill -9"
        )

    def host_note(self, host: PlunderHost) -> str:
        agent = self.agent.agents.get(host.spec.boot_mac_address)
        return agent.refusal if agent else ""

    def provision(self, plan: Plan, patience: float) -> Phase:
        """Start the controller (the clock starts), disrupt, wait until all are provisioned."""
        started = time.monotonic()
        self.controller.start()
        return self.phase(plan.provisioning, started, patience)

    def churn(self, plan: Plan, patience: float) -> Phase:
        """Delete the plan's machines and add as many (they take the wiped hosts), disrupting."""
        kube = self.client()
        started = time.monotonic()
        fresh = machine_names(len(plan.delete), "n")
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda name: kube.delete(MACHINES, name, namespace=self.namespace), plan.delete
                )
            )
            list(pool.map(lambda name: create_machine(kube, self.namespace, name), fresh))
        self.live = (self.live - set(plan.delete)) | set(fresh)
        self.deleted = set(plan.delete)
        return self.phase(plan.deletion, started, patience)


def _host(obj: Any) -> PlunderHost:
    return PlunderHost.model_validate(as_dict(obj))


@contextlib.contextmanager
def world(plane: LivePlane, folder: Path, size: int, seed: int, **options: Any) -> Iterator[World]:
    """A prepared world, its processes stopped afterwards."""
    made = World(plane, folder, size, seed, **options)
    try:
        made.prepare()
        yield made
    finally:
        made.stop()


def run(
    plane: LivePlane,
    folder: Path,
    label: str,
    size: int,
    plan: Plan,
    seed: int,
    patience: float,
    install_seconds: tuple[float, float] = (0.0, 0.0),
) -> Findings:
    """Provision ``size`` machines under the plan's disruptions, then churn, and report.

    ``patience``: seconds after a phase's last disruption before what is not done is stuck.
    """
    print(f"{label}: {size} hosts and machines, seed {seed}", flush=True)
    with world(plane, folder / label, size, seed, install_seconds=install_seconds) as chaos:
        provisioning = chaos.provision(plan, patience)
        took = "never" if provisioning.done_s is None else f"{provisioning.done_s:.1f}s"
        print(f"  all provisioned after {took}; deleting {len(plan.delete)}", flush=True)
        deletion = chaos.churn(plan, patience)
        return chaos.findings(label, provisioning, deletion)
