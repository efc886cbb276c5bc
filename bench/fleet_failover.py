"""Benchmark: past one machine: segments, each with its boot service, and two controller replicas.

Issue #14, item 5. The fleet of ``bench/fleet_scale.py`` (N simulated hosts of ``bench/fleet.py``
making the real HTTP calls of iPXE, the agent and cloud-init), split over S provisioning
segments. A segment is a namespace with its own ``plunderctl boot --namespace`` (its own port
and run directory) and its own share of the hosts, which only ever talk to it (their MACs have a
prefix of the segment's). Two ``plunderctl controller --leader-elect`` replicas, watching every
namespace, share one Lease namespace (which also holds the slot ledger). Each segment has its
Cluster; N Machines are made, spread over the segments, as ``fleet_scale.py`` makes them.
``--connections`` (the simulator's requests in flight) is shared out over the segments' fleets.

Two runs, each on a plane of its own (etcd + kube-apiserver), one after the other:

- baseline: up (all Provisioned) and down (all deleted: until every host is wiped, available
  and unclaimed, and until every machine is gone);
- failover: the same, but when about half are Provisioned the replica holding the Lease is
  killed with ``kill -9`` (as ``bench/chaos.py`` does); measured from the kill: until the Lease
  is held by the other replica, and until the next Machine says Provisioned by a write of the
  new leader (its resourceVersion past the Lease's takeover write). Statuses that land between
  the kill and the takeover (the revision read right after the kill, and the takeover's) are
  counted apart: the killed leader's requests in flight. The killed replica is then started
  again and becomes the standby. In down, when half the machines are gone, the leader (the
  other one now) is killed the same way (``--no-down-kill``: not).

Printed side by side: the times, the kills, the checks of the chaos runs' ledger
(``tests/integration/chaos_ledger.py``) per segment (no host given to two machines, no machine
given two hosts, none given unwiped; and at the end of up, every machine's host its own); per
segment the boot service's requests (as its hosts saw them, over up + down), their p99 latency,
its peak RSS and CPU; then what is shared and what fails over, read from the API at the end of
the failover run. The load averages before and after are printed: on a shared machine the
figures are noisy.

Run from the repository:
  nice -n 19 .venv/bin/python bench/fleet_failover.py --hosts 1000 --segments 2
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Namespace, Secret

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' object builders

from controller_scale import peak_rss_mb  # noqa: E402
from fleet import Fleet  # noqa: E402
from fleet_scale import (  # noqa: E402
    WORKERS,
    DiscoveringBoot,
    add_fleet_options,
    answer_notes,
    cpu_seconds,
    timings,
    wait,
)
from tests.integration.chaos_ledger import Ledger  # noqa: E402
from tests.integration.chaos_world import ChaosRun  # noqa: E402
from tests.integration.test_machine_world import (  # noqa: E402
    HOSTS,
    MACHINES,
    Controller,
    create_cluster,
    create_machine,
)

from plunder.api.inventory import PlunderHost  # noqa: E402
from plunder.boot.tokens import KEY_SECRET  # noqa: E402
from plunder.images import binaries  # noqa: E402
from plunder.k8s import client as k8s_client  # noqa: E402
from plunder.k8s import crds  # noqa: E402
from plunder.k8s.resources import as_dict  # noqa: E402
from plunder.lab import processes  # noqa: E402
from plunder.lab.plane import Plane, start_plane  # noqa: E402
from plunder.operator.leader import LEASE_NAME, LeaseTiming  # noqa: E402
from plunder.reconcile import hoststate  # noqa: E402
from plunder.reconcile.slots import LEDGER_NAME, parse_ledger  # noqa: E402

IDENTITY = re.compile(r"waiting for the lease \S+ as (\S+)")
"""The line a replica logs when it starts to wait for the Lease, with its identity on it."""

T = TypeVar("T")

POLL = 0.1
"""Seconds between looks at the Lease and at the ledgers while a failover is timed."""


# ---------------------------------------------------------------------------- the parts


class Replica(Controller):
    """``plunderctl controller --leader-elect``, watching every namespace.

    Its identity on the Lease (the host name and a random suffix: ``leader.identity``) is read
    from its log after each start, so the benchmark knows which process leads.
    """

    def __init__(self, plane: Plane, log: Path, lease_namespace: str, limit: int) -> None:
        options = ("--leader-elect", "--leader-election-namespace", lease_namespace)
        super().__init__(plane, log, None, (*options, "--provisioning-limit", str(limit)))
        self.identity = ""

    def identities(self) -> list[str]:
        """Every identity this replica's starts took, in order."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return IDENTITY.findall(text)

    def start(self) -> None:
        """Start, and wait for the line that names this start's identity."""
        before = len(self.identities())
        super().start()
        assert self.process is not None
        managed = processes.Managed(self.name, self.process.pid, self.log)
        processes.wait_until(lambda: len(self.identities()) > before, "identity", managed)
        self.identity = self.identities()[-1]


class Timeline(Ledger):
    """The chaos runs' ledger, which also times each machine's first Provisioned and its end.

    Each moment is kept with the resourceVersion (etcd's revision) of its write.

    The simulated hosts keep no record of their wipes: a return counts as wiped when the host's
    conditions record the wipe (the ledger's other checks are whole).
    """

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        super().__init__(kubeconfig, namespace, lambda _host, _cycle: True)
        self.moments: dict[str, dict[str, tuple[int, float]]] = {"provisioned": {}, "gone": {}}
        """"provisioned" / "gone" → machine uid → (resourceVersion, when the event arrived)."""

    def check_host(self, name: str, before: PlunderHost, host: PlunderHost, gap: bool) -> None:
        """As the ledger does, but a first inspection's end is no return.

        The chaos runs' hosts are made available; these are discovered and inspected.
        """
        first = name not in self.hosts_used and hoststate.state_of(before) == "inspecting"
        if not (first and hoststate.state_of(host) == "available"):
            super().check_host(name, before, host, gap)

    def on_machine(self, kind: str, body: dict[str, Any]) -> None:
        """As the ledger does; and the first Provisioned and the deletion, timed."""
        super().on_machine(kind, body)
        meta, now = body["metadata"], time.monotonic()
        moment = (int(meta["resourceVersion"]), now)
        with self.lock:
            if kind == "DELETED":
                self.moments["gone"].setdefault(meta["uid"], moment)
            elif (body.get("status") or {}).get("state") == "Provisioned":
                self.moments["provisioned"].setdefault(meta["uid"], moment)

    def written_between(self, what: str, low: int, high: int) -> int:
        """Machines ``what`` by a write with a resourceVersion in (low, high]."""
        with self.lock:
            return sum(1 for version, _ in self.moments[what].values() if low < version <= high)

    def first_after(self, what: str, revision: int) -> float | None:
        """When the first ``what`` ("provisioned", "gone") written after ``revision`` arrived."""
        with self.lock:
            after = [at for version, at in self.moments[what].values() if version > revision]
        return min(after, default=None)


class Segment(ChaosRun):
    """One provisioning segment: a namespace, its Cluster, boot service, hosts and ledger."""

    def __init__(
        self, plane: Plane, kube: Client, index: int, size: int, folder: Path, args: Any
    ) -> None:
        namespace = f"segment{index}-{uuid.uuid4().hex[:6]}"
        kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
        create_cluster(kube, namespace)
        here = folder / namespace
        here.mkdir(parents=True)
        self.plane = plane
        self.mac_prefix = f"02:{index:02x}"
        self.boot = DiscoveringBoot(
            plane.kubeconfig, here / "boot.log", namespace, here / "boot", size
        )
        connections = max(1, args.connections // args.segments)
        self.fleet = Fleet(
            plane.kubeconfig,
            namespace,
            self.boot.url,
            size,
            timings(args),
            connections,
            seed=index,
            mac_prefix=self.mac_prefix,
        )
        self.machines: list[str] = []
        self.timeline = Timeline(plane.kubeconfig, namespace)
        super().__init__(size, namespace, self.timeline)

    def client(self) -> Client:
        """A new admin client."""
        return k8s_client.sync_client(self.plane.kubeconfig, timeout=60)


# ------------------------------------------------------------------------------ figures


@dataclass
class Failover:
    """One kill -9 of the leading replica, and what followed."""

    at_s: float
    """Seconds since the phase began."""
    done: int
    """Machines provisioned (up) or gone (down) at the kill."""
    pid: int
    lease_s: float = float("nan")
    """From the kill until the Lease named the other replica."""
    resumed_s: float = float("nan")
    """From the kill until the first machine provisioned (gone) by a write after the takeover."""
    landed: int = 0
    """Machines provisioned (gone) by writes that landed after the kill, before the takeover:
    the killed leader's requests in flight (nobody else writes them)."""
    hosts_meanwhile: int = 0
    """Hosts that reached the phase's state (provisioned; available) while no replica led."""
    grants: int = 0
    """Slot grants the killed leader left in the ledger."""


@dataclass
class SegmentFigures:
    """One segment's boot service, over up + down."""

    namespace: str
    hosts: int
    requests: int
    rate: float
    p99_ms: float
    rss_mb: float
    cpu_s: float


@dataclass
class Run:
    """The figures of one run."""

    label: str
    size: int
    available_s: float = float("nan")
    up_s: float = float("nan")
    down_s: float = float("nan")
    """Until every host is wiped, available and unclaimed."""
    gone_s: float = float("nan")
    """Until every machine is gone (its finalizer removed)."""
    up_kill: Failover | None = None
    down_kill: Failover | None = None
    given_twice: list[str] = field(default_factory=list)
    two_hosts: list[str] = field(default_factory=list)
    given_unwiped: list[str] = field(default_factory=list)
    unwiped: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    lease_transitions: int = 0
    segments: list[SegmentFigures] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------- a run


def lease_holder(kube: Client, namespace: str) -> str | None:
    """Who holds the controller's Lease now (None: nobody, or not readable)."""
    try:
        lease = kube.get(Lease, LEASE_NAME, namespace=namespace)
    except ApiError:
        return None
    return lease.spec.holderIdentity if lease.spec else None


def revision(kube: Client, namespace: str) -> int:
    """The revision of etcd now: the resourceVersion of a (consistent) list."""
    listing = kube.list(ConfigMap, namespace=namespace)
    list(listing)
    return int(listing.resourceVersion)


def slot_grants(kube: Client, namespace: str) -> int:
    """Entries of the slot ledger (the ConfigMap in the controller's namespace)."""
    try:
        ledger = kube.get(ConfigMap, LEDGER_NAME, namespace=namespace)
    except ApiError:
        return 0
    return len(parse_ledger(ledger.data))


def poll(done: Callable[[], T | None], timeout: float) -> T | None:
    """The first value of ``done()`` that is not None, tried every :data:`POLL` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value is not None:
            return value
        time.sleep(POLL)
    return None


class World:
    """One run's plane, segments and replicas."""

    def __init__(self, plane: Plane, kube: Client, folder: Path, args: Any) -> None:
        self.plane, self.kube, self.args = plane, kube, args
        self.size = args.hosts
        self.lease_namespace = f"plunder-system-{uuid.uuid4().hex[:6]}"
        kube.create(Namespace(metadata=ObjectMeta(name=self.lease_namespace)))
        shares = [len(range(s, self.size, args.segments)) for s in range(args.segments)]
        self.segments = [
            Segment(plane, kube, s, share, folder, args) for s, share in enumerate(shares)
        ]
        self.replicas = [
            Replica(plane, folder / f"controller-{r}.log", self.lease_namespace, self.size)
            for r in "ab"
        ]

    # ----------------------------------------------------------------- counts over segments

    def machines(self, what: str) -> int:
        """Machines provisioned ("provisioned", live ones) or gone ("gone"), in all segments."""
        if what == "gone":
            return sum(len(s.timeline.gone()) for s in self.segments)
        return sum(s.timeline.provisioned() for s in self.segments)

    def hosts(self, state: str, claimed: bool | None = None) -> int:
        """Hosts in ``state`` (as each segment's fleet last saw them), in all segments."""
        return sum(s.fleet.count(state, claimed) for s in self.segments)

    # ------------------------------------------------------------------------ the phases

    def start(self, run: Run) -> None:
        """Boot services, ledgers, replica a (it takes the Lease), then b; the fleet."""
        for segment in self.segments:
            segment.boot.start()
            segment.ledger.start()
        first, second = self.replicas
        first.start()
        processes.wait_until(
            lambda: lease_holder(self.kube, self.lease_namespace) == first.identity, "the lease"
        )
        second.start()
        for segment in self.segments:
            segment.fleet.start()
            segment.fleet.ready.wait()
        run.available_s = wait(
            "available (discovered, inspected, parked)",
            lambda: self.hosts("available") >= self.size,
            self.size,
            lambda: self.hosts("available"),
            self.args.timeout,
        )

    def up(self, run: Run, pool: ThreadPoolExecutor, kill: bool) -> float:
        """Make the machines (killing the leader halfway if ``kill``); when up began."""
        began = time.monotonic()
        made: list[Future[None]] = []
        for i in range(self.size):
            segment = self.segments[i % len(self.segments)]
            segment.machines.append(f"m{i:05d}")
            made.append(pool.submit(create_machine, self.kube, segment.namespace, f"m{i:05d}"))
        if kill:
            run.up_kill = self.halfway("provisioned", "provisioned", began)
        run.up_s = self.until("provisioned", self.size, began)
        for future in made:
            future.result()
        if run.up_s != run.up_s:
            run.notes.append(
                f"up stalled: {self.machines('provisioned')}/{self.size} provisioned "
                f"({self.hosts('provisioning')} hosts provisioning)"
            )
        for segment in self.segments:  # every machine's host its own, as the API has it now
            run.given_twice += [f"{segment.namespace}/{name}" for name in segment.shared_now()]
        return began

    def down(self, run: Run, pool: ThreadPoolExecutor, kill: bool) -> None:
        """Delete every machine (killing the leader halfway if ``kill``) until all are wiped."""
        began = time.monotonic()
        gone = [
            pool.submit(self.kube.delete, MACHINES, name, namespace=segment.namespace)
            for segment in self.segments
            for name in segment.machines
        ]
        if kill:
            run.down_kill = self.halfway("gone", "available", began)
        run.down_s = wait(
            "released (wiped, available, unclaimed)",
            lambda: self.hosts("available", claimed=False) >= self.size,
            self.size,
            lambda: self.hosts("available", claimed=False),
            self.args.timeout,
            since=began,
        )
        run.gone_s = self.until("gone", self.size, began)
        for future in gone:
            future.result()
        if run.down_s != run.down_s or run.gone_s != run.gone_s:
            free, ended = self.hosts("available", claimed=False), self.machines("gone")
            run.notes.append(f"down stalled: {free}/{self.size} released, {ended} gone")

    def until(self, what: str, count: int, began: float) -> float:
        """Seconds from ``began`` until ``count`` machines are ``what`` (NaN: not in time)."""
        return wait(
            what,
            lambda: self.machines(what) >= count,
            self.size,
            lambda: self.machines(what),
            self.args.timeout,
            since=began,
        )

    def halfway(self, what: str, state: str, began: float) -> Failover | None:
        """When half the machines are ``what``, kill -9 the leader; time the failover."""
        half = self.until(what, self.size // 2, began)
        return None if half != half else self.fail_over(what, state, began)

    def taken_by(self, replica: Replica) -> tuple[float, int] | None:
        """When ``replica`` was seen holding the Lease, and the revision of its takeover.

        Looked at every :data:`POLL` seconds, the Lease's last write is the takeover (the next
        renewal comes :attr:`LeaseTiming.retry` seconds later).
        """
        try:
            lease = self.kube.get(Lease, LEASE_NAME, namespace=self.lease_namespace)
        except ApiError:
            return None
        if lease.spec is None or lease.spec.holderIdentity != replica.identity:
            return None
        assert lease.metadata is not None and lease.metadata.resourceVersion is not None
        return time.monotonic(), int(lease.metadata.resourceVersion)

    def first_after(self, what: str, revision: int) -> float | None:
        """When the first machine of any segment was ``what`` by a write after ``revision``."""
        moments = (s.timeline.first_after(what, revision) for s in self.segments)
        return min((at for at in moments if at is not None), default=None)

    def fail_over(self, what: str, state: str, began: float) -> Failover | None:
        """Kill -9 the replica holding the Lease; time the other's takeover and first write."""
        holder = lease_holder(self.kube, self.lease_namespace)
        leading = [r for r in self.replicas if r.identity == holder]
        if not leading:
            print(f"  no replica holds the Lease (holder {holder}): no kill", flush=True)
            return None
        victim = leading[0]
        other = next(r for r in self.replicas if r is not victim)
        assert victim.process is not None
        done, hosts_before = self.machines(what), self.hosts(state)
        killed = time.monotonic()
        failover = Failover(killed - began, done, victim.process.pid)
        victim.kill()
        written = revision(self.kube, self.lease_namespace)
        failover.grants = slot_grants(self.kube, self.lease_namespace)
        print(
            f"  {failover.at_s:7.1f}s  kill -9 of the leading replica (pid {failover.pid}, "
            f"{victim.identity}) at {done}/{self.size} {what}",
            flush=True,
        )
        taken = poll(lambda: self.taken_by(other), timeout=120.0)
        if taken is None:
            print("  the Lease was not taken over in 120 s", flush=True)
        else:
            at, taken_at = taken
            failover.lease_s = at - killed
            failover.hosts_meanwhile = self.hosts(state) - hosts_before
            failover.landed = sum(
                s.timeline.written_between(what, written, taken_at) for s in self.segments
            )
            resumed = poll(lambda: self.first_after(what, taken_at), timeout=self.args.timeout)
            if resumed is not None:
                failover.resumed_s = resumed - killed
        print(
            f"           the Lease held by the other replica after {failover.lease_s:.1f}s; "
            f"the next machine {what} by the new leader after {failover.resumed_s:.1f}s "
            f"({failover.landed} by writes landing after the kill); "
            f"{failover.hosts_meanwhile} hosts {state} meanwhile; starting the killed one again",
            flush=True,
        )
        victim.start()
        return failover

    # ------------------------------------------------------------------ what was found

    def check(self, run: Run) -> None:
        """The ledgers' findings (after their cross-check) and what is not at rest, per segment."""
        for segment in self.segments:
            ledger, where = segment.timeline, segment.namespace
            ledger.cross_check()
            run.given_twice += [f"{where}/{name}" for name in sorted(ledger.given_twice)]
            run.two_hosts += [f"{where}/{name}" for name in sorted(ledger.two_hosts)]
            run.given_unwiped += [f"{where}/{name}" for name in sorted(ledger.given_unwiped)]
            run.unwiped += [f"{where}/{name}" for name in sorted(ledger.unwiped)]
            run.unverified += [f"{where}: {line}" for line in ledger.unverified]
            run.stuck += [f"{where}: {line}" for line in segment.stuck()]
            run.notes += [f"{where}: {line}" for line in answer_notes(segment.fleet)]
        for replica in self.replicas:
            assert replica.process is not None
            if replica.process.poll() is not None:
                run.notes.append(
                    f"replica {replica.log.stem} ({replica.identity}) exited on its own, "
                    f"code {replica.process.returncode}"
                )

    def boot_figures(self, began: float, ended: float, cpu: list[float]) -> list[SegmentFigures]:
        """Each boot service over [began, ended]: requests, p99, peak RSS, CPU since ``cpu``."""
        figures = []
        for segment, cpu_before in zip(self.segments, cpu, strict=True):
            assert segment.boot.process is not None
            pid = segment.boot.process.pid
            rate, p99 = segment.fleet.calls.rate_and_p99(began, ended)
            figures.append(
                SegmentFigures(
                    segment.namespace,
                    segment.size,
                    len(segment.fleet.calls.between(began, ended)),
                    rate,
                    p99 * 1000,
                    peak_rss_mb(pid),
                    cpu_seconds(pid) - cpu_before,
                )
            )
        return figures

    def facts(self, run: Run) -> list[str]:
        """What is shared and what is a segment's own, as the API has it at the end."""
        kube, own = self.kube, self.lease_namespace
        lease = kube.get(Lease, LEASE_NAME, namespace=own)
        spec = lease.spec
        assert spec is not None
        run.lease_transitions = spec.leaseTransitions or 0
        segments = [s.namespace for s in self.segments]
        ledgers = [ns for ns in [own, *segments] if _exists(kube, ConfigMap, LEDGER_NAME, ns)]
        keys = {ns: _secret_key(kube, ns) for ns in [own, *segments]}
        held = [ns for ns, key in keys.items() if key is not None]
        distinct = len({key for key in keys.values() if key is not None})
        hosts = []
        for segment in self.segments:
            listed = kube.list(HOSTS, namespace=segment.namespace)
            macs = [as_dict(host)["spec"]["bootMACAddress"] for host in listed]
            theirs = sum(1 for mac in macs if mac.startswith(segment.mac_prefix + ":"))
            hosts.append(
                f"{segment.namespace}: {len(macs)} PlunderHosts, {theirs} with its fleet's MAC "
                f"prefix {segment.mac_prefix}"
            )
        apiserver = self.plane.apiserver.pid
        return [
            f"shared by all: one kube-apiserver + etcd; kube-apiserver peak RSS "
            f"{peak_rss_mb(apiserver):.0f} MB, {cpu_seconds(apiserver):.0f} s CPU over the run",
            f"the Lease {own}/{LEASE_NAME}: {run.lease_transitions} transitions, holder at the "
            f"end {spec.holderIdentity}",
            f"the slot ledger ConfigMap {LEDGER_NAME}: found in {', '.join(ledgers) or 'none'} "
            f"(the replicas' --leader-election-namespace; one ledger for every segment)",
            f"the token key Secret {KEY_SECRET}: found in {', '.join(held) or 'none'}, "
            f"{distinct} distinct keys (each boot service makes its own in its namespace)",
            *hosts,
        ]

    def stop(self) -> None:
        """Stop the fleets, the replicas, the boot services and the ledgers."""
        for segment in self.segments:
            segment.fleet.stop()
        for replica in self.replicas:
            replica.stop()
        for segment in self.segments:
            segment.boot.stop()
            segment.ledger.stop()
        for segment in self.segments:
            if segment.fleet.failure is not None:
                raise segment.fleet.failure


def _exists(kube: Client, kind: Any, name: str, namespace: str) -> bool:
    try:
        kube.get(kind, name, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return False
        raise
    return True


def _secret_key(kube: Client, namespace: str) -> bytes | None:
    """The boot token key in ``namespace`` (None: no such Secret)."""
    try:
        secret = kube.get(Secret, KEY_SECRET, namespace=namespace)
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise
    return base64.b64decode((secret.data or {})["key"])


def one_run(label: str, kill: bool, folder: Path, args: Any) -> Run:
    """One run on a plane of its own: start, up, down, checks, figures."""
    print(f"{label}: {args.hosts} hosts over {args.segments} segments", flush=True)
    here = folder / label
    plane = start_plane(here / "plane")
    run = Run(label, args.hosts)
    try:
        kube = k8s_client.sync_client(plane.kubeconfig, timeout=60)
        crds.install_plunder_crds(kube)
        crds.install_crd_files(kube, binaries.cluster_api_crd_files())
        world = World(plane, kube, here, args)
        try:
            world.start(run)
            cpu = [cpu_seconds(s.boot.process.pid) for s in world.segments if s.boot.process]
            with ThreadPoolExecutor(WORKERS) as pool:
                began = world.up(run, pool, kill)
                world.down(run, pool, kill and args.down_kill)
            ended = time.monotonic()
            run.segments = world.boot_figures(began, ended, cpu)
            world.check(run)
            run.facts = world.facts(run)
        finally:
            world.stop()
    finally:
        plane.stop()
    return run


# ------------------------------------------------------------------------------ report


def seconds(value: float) -> str:
    return "-" if value != value else f"{value:.1f}s"


def kill_rows(name: str, what: str, state: str) -> list[tuple[str, Callable[[Run], str]]]:
    """The rows of one phase's kill (``name``: the Run's field)."""

    def cell(figure: Callable[[Failover], str]) -> Callable[[Run], str]:
        def shown(run: Run) -> str:
            failover = getattr(run, name)
            return "-" if failover is None else figure(failover)

        return shown

    return [
        ("  kill -9 of the leader", cell(lambda f: f"{f.at_s:.1f}s, {f.done} {what}")),
        ("  the Lease held by the other", cell(lambda f: seconds(f.lease_s))),
        (f"  the next machine {what}", cell(lambda f: seconds(f.resumed_s))),
        ("  in flight at the kill, landed after", cell(lambda f: str(f.landed))),
        (f"  hosts {state}, no leader", cell(lambda f: str(f.hosts_meanwhile))),
        ("  slot grants the killed one left", cell(lambda f: str(f.grants))),
    ]


ROWS: list[tuple[str, Callable[[Run], str]]] = [
    ("hosts available (inspected)", lambda r: seconds(r.available_s)),
    ("up (all Provisioned)", lambda r: seconds(r.up_s)),
    *kill_rows("up_kill", "provisioned", "provisioned"),
    ("down: all hosts wiped, available", lambda r: seconds(r.down_s)),
    ("down: all machines gone", lambda r: seconds(r.gone_s)),
    *kill_rows("down_kill", "gone", "wiped"),
    ("Lease transitions", lambda r: str(r.lease_transitions)),
    ("hosts given twice", lambda r: str(len(r.given_twice))),
    ("machines given two hosts", lambda r: str(len(r.two_hosts))),
    ("hosts given unwiped", lambda r: str(len(r.given_unwiped))),
    ("hosts back without a wipe", lambda r: str(len(r.unwiped))),
    ("hosts or machines stuck", lambda r: str(len(r.stuck))),
    ("watch gaps (unverified)", lambda r: str(len(r.unverified))),
]


def report(runs: list[Run], args: Any, load: tuple[str, str]) -> None:
    version = binaries.pinned_versions()["k8s.io/kubernetes"]
    timing = LeaseTiming()
    print(
        f"\npast one machine: {args.hosts} hosts over {args.segments} segments (a boot service "
        f"each), two controller replicas with --leader-elect (lease {timing.duration:.0f}s, "
        f"renew {timing.renew_deadline:.0f}s, retry {timing.retry:.0f}s); kube-apiserver "
        f"{version}"
    )
    print(f"load average (1, 5, 15 min) before: {load[0]}; after: {load[1]}")
    print(f"{'':38}" + "".join(f"{run.label:>24}" for run in runs))
    for title, cell in ROWS:
        print(f"{title:38}" + "".join(f"{cell(run):>24}" for run in runs))
    print("\nper segment: its boot service over up + down, as its hosts saw it")
    print(
        f"{'run':10} {'segment':16} {'hosts':>6} {'requests':>9} {'req/s':>7} {'p99':>8} "
        f"{'peak RSS':>9} {'CPU':>7}"
    )
    for run in runs:
        for s in run.segments:
            print(
                f"{run.label:10} {s.namespace:16} {s.hosts:>6} {s.requests:>9} {s.rate:>7.0f} "
                f"{s.p99_ms:>6.0f}ms {s.rss_mb:>7.0f}MB {s.cpu_s:>6.1f}s"
            )
    for run in runs[-1:]:
        print(f"\nwhat is shared, what is a segment's own ({run.label} run, read at its end)")
        for fact in run.facts:
            print(f"  {fact}")
    for run in runs:
        for kind, items in (
            ("given twice", run.given_twice),
            ("two hosts", run.two_hosts),
            ("given unwiped", run.given_unwiped),
            ("back without a wipe", run.unwiped),
            ("stuck", run.stuck),
            ("unverified", run.unverified),
            ("note", run.notes),
        ):
            for item in items[:10]:
                print(f"  {run.label} {kind}: {item}")
            if len(items) > 10:
                print(f"  {run.label} {kind}: … and {len(items) - 10} more")


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def main(args: argparse.Namespace) -> int:
    before = load_average()
    print(f"load average (1, 5, 15 min): {before}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fleet-failover-") as temporary:
        folder = Path(args.keep or temporary)
        runs = [one_run("baseline", False, folder, args)] if args.baseline else []
        runs.append(one_run("failover", True, folder, args))
    report(runs, args, (before, load_average()))
    clean = all(
        not (r.given_twice or r.two_hosts or r.given_unwiped or r.unwiped or r.stuck) for r in runs
    )
    return 0 if clean else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=1000, help="hosts, and as many machines")
    parser.add_argument("--segments", type=int, default=2, help="namespaces, a boot service each")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a run of the same size without kills first",
    )
    parser.add_argument(
        "--down-kill",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="kill the leader again when half the machines are gone",
    )
    add_fleet_options(parser)
    parser.add_argument("--keep", type=Path, help="keep logs here (else a temporary folder)")
    sys.exit(main(parser.parse_args()))
