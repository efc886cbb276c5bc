"""The provisioning throttle (issue #13, item 3): at most N hosts provisioning at once.

Five machines and five available hosts, the controller run with ``--provisioning-limit 2``. A
watch of the namespace's hosts records, event by event, how many hosts are provisioning or
deprovisioning: the most ever seen must be 2 (and not less: the slots are used). The machines
that wait say so (condition, Event, metric), the controller is killed with SIGKILL while they
wait and started again, and every machine still ends provisioned, then wiped, within the limit.
Two controllers without leader election, deciding on the same hosts at once, keep it too. The
waiting hosts' heartbeats (the ``lastSeen`` a parked agent's polls make the boot service write)
only refresh the copies they wait with: they ask the ledger nothing (issue #14).
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict
from plunder.lab import processes
from plunder.lab.plane import Plane
from plunder.reconcile import hoststate, slots
from tests.integration.test_machine_world import (
    HOSTS,
    MACHINES,
    Controller,
    agent,
    create_cluster,
    create_hosts,
    create_machine,
    events_of,
    machine,
    machine_gone,
    machine_state,
    wait_for,
)

pytestmark = pytest.mark.integration

LIMIT = 2
NAMES = [f"m{i}" for i in range(5)]


class SlotWatch(threading.Thread):
    """Follows the namespace's hosts and records the most that were in a slot state at once.

    A watch delivers one namespace's changes in the order the API server made them, so the
    states it holds after each event are the fleet's states at that revision.
    """

    def __init__(self, plane: Plane, namespace: str) -> None:
        super().__init__(daemon=True)
        self.client = k8s_client.sync_client(plane.kubeconfig)
        self.namespace = namespace
        self.states: dict[str, str] = {}
        self.most = 0
        self.stopping = threading.Event()

    def busy(self) -> int:
        return sum(1 for state in self.states.values() if state in slots.SLOT_STATES)

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(Exception):
                for kind, body in self.client.watch(HOSTS, namespace=self.namespace):
                    host = PlunderHost.model_validate(as_dict(body))
                    name = host.metadata.name or ""
                    if kind == "DELETED":
                        self.states.pop(name, None)
                    else:
                        self.states[name] = hoststate.state_of(host)
                    self.most = max(self.most, self.busy())
                    if self.stopping.is_set():
                        return


@dataclass(frozen=True)
class Fleet:
    """A Cluster and five available hosts in the test's namespace, watched from the start."""

    plane: Plane
    kube: Client
    namespace: str
    watch: SlotWatch
    tmp_path: Path

    def parts(self) -> tuple[Plane, Client, str, SlotWatch, Path]:
        return self.plane, self.kube, self.namespace, self.watch, self.tmp_path


@pytest.fixture
def fleet(
    plane: Plane, kube: Client, cluster_api_crds: list[str], namespace: str, tmp_path: Path
) -> Iterator[Fleet]:
    following = SlotWatch(plane, namespace)
    following.start()
    create_cluster(kube, namespace)
    create_hosts(kube, namespace, 5)
    try:
        yield Fleet(plane, kube, namespace, following, tmp_path)
    finally:
        following.stopping.set()


@contextlib.contextmanager
def controller(plane: Plane, namespace: str, log: Path, *args: str) -> Iterator[Controller]:
    running = Controller(plane, log, namespace, ("--provisioning-limit", str(LIMIT), *args))
    running.start()
    try:
        yield running
    finally:
        running.stop()
        print("controller log (tail):", *log.read_text().splitlines()[-60:], sep="\n")


def slot_condition(kube: Client, namespace: str, name: str) -> tuple[str, str, str] | None:
    for c in (machine(kube, namespace, name).get("status") or {}).get("conditions") or ():
        if c["type"] == "Provisioned":
            return c["status"], c.get("reason", ""), c.get("message", "")
    return None


def waiting(kube: Client, namespace: str) -> list[str]:
    """The machines whose Provisioned condition says they wait for a slot."""
    return [
        name
        for name in NAMES
        if (found := slot_condition(kube, namespace, name)) and found[1] == slots.WAITING_REASON
    ]


def wait_announced(kube: Client, namespace: str, name: str) -> bool:
    """Whether machine ``name`` has its Normal WaitingForProvisioningSlot Event."""
    events = events_of(kube, namespace, name)
    return ("Normal", slots.WAITING_REASON) in [(kind, reason) for kind, reason, _ in events]


def metrics(port: int) -> dict[str, float]:
    """The controller's gauges, by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:  # noqa: S310
        text = answer.read().decode()
    return {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("plunder_")
    }


def test_five_machines_provision_two_at_a_time_through_a_restart(fleet: Fleet) -> None:
    plane, kube, namespace, watch, tmp_path = fleet.parts()
    port = processes.free_port()
    with (
        agent(plane, namespace, install_seconds=(0.5, 1.5)) as hosts,
        controller(
            plane, namespace, tmp_path / "controller.log", "--metrics-port", str(port)
        ) as running,
    ):
        hosts.holding.set()  # the first two stay provisioning until the test lets them finish
        for name in NAMES:
            create_machine(kube, namespace, name)
        wait_for(lambda: watch.busy() == LIMIT, what="two hosts provisioning")
        wait_for(lambda: len(waiting(kube, namespace)) == 3, what="three machines waiting")
        message = f"{LIMIT} of {LIMIT} provisioning slots in use; waiting"
        for name in waiting(kube, namespace):
            status, _, text = slot_condition(kube, namespace, name) or ("", "", "")
            assert status == "False" and text.endswith(message), text
            assert machine_state(kube, namespace, name) == "Pending"
            wait_for(
                functools.partial(wait_announced, kube, namespace, name),
                what=f"the Event of {name}'s wait",
            )
        gauges = metrics(port)
        assert gauges["plunder_provisioning_limit"] == LIMIT
        assert gauges["plunder_hosts_provisioning"] == LIMIT
        assert gauges["plunder_machines_waiting_for_slot"] == 3

        # A restart forgets nothing that matters: the slots are counted from the API again.
        running.kill()
        running.start()
        wait_for(lambda: metrics(port)["plunder_machines_waiting_for_slot"] == 3, what="waiters")
        assert watch.busy() == LIMIT
        assert len(waiting(kube, namespace)) == 3
        for name in waiting(kube, namespace):  # still the one Event each: no flap on restart
            announced = [r for _, r, _ in events_of(kube, namespace, name)]
            assert announced.count(slots.WAITING_REASON) == 1, (name, announced)

        hosts.release_held()  # slots free as hosts phone home: the waiters go on, unpolled
        wait_for(
            lambda: all(machine_state(kube, namespace, n) == "Provisioned" for n in NAMES),
            timeout=120,
            what="all five provisioned",
        )
        assert watch.most == LIMIT, f"{watch.most} hosts were provisioning at once"
        assert waiting(kube, namespace) == []
        assert metrics(port)["plunder_machines_waiting_for_slot"] == 0

    # Releasing them all with no agent to wipe them: two are wiped (deprovisioning), three wait.
    with controller(plane, namespace, tmp_path / "again.log", "--metrics-port", str(port)):
        released = datetime.now(UTC).replace(microsecond=0)
        for name in NAMES:
            kube.delete(MACHINES, name, namespace=namespace)
        wait_for(lambda: watch.busy() == LIMIT, what="two hosts deprovisioning")
        wait_for(lambda: metrics(port)["plunder_hosts_waiting_for_slot"] == 3, what="the gauge")
        still = {name for name, state in watch.states.items() if state == "provisioned"}
        assert len(still) == 3, watch.states
        wait_for(lambda: hosts_waiting(kube, namespace, released) == still, what="their Events")
        with agent(plane, namespace):
            wait_for(
                lambda: all(machine_gone(kube, namespace, n) for n in NAMES),
                timeout=120,
                what="all five wiped and their machines gone",
            )
    assert watch.most == LIMIT, f"{watch.most} hosts were in a slot state at once"
    assert set(watch.states.values()) == {"available"}, watch.states


def hosts_waiting(kube: Client, namespace: str, since: datetime) -> set[str]:
    """The hosts with a WaitingForProvisioningSlot Event made ``since`` (to the second)."""
    return {
        e.involvedObject.name or ""
        for e in kube.list(Event, namespace=namespace)
        if e.involvedObject.kind == "PlunderHost"
        and e.reason == slots.WAITING_REASON
        and e.metadata is not None
        and e.metadata.creationTimestamp is not None
        and e.metadata.creationTimestamp >= since
        and e.message == f"{LIMIT} of {LIMIT} provisioning slots in use; waiting"
    }


def test_two_controllers_never_both_slip_past_the_limit(fleet: Fleet) -> None:
    """No leader election: both decide every host at once; the ledger's guard keeps the limit."""
    plane, kube, namespace, watch, tmp_path = fleet.parts()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        agent(plane, namespace, install_seconds=(0.5, 1.0)),
        controller(plane, namespace, tmp_path / "a" / "controller.log"),
        controller(plane, namespace, tmp_path / "b" / "controller.log"),
    ):
        for name in NAMES:
            create_machine(kube, namespace, name)
        wait_for(
            lambda: all(machine_state(kube, namespace, n) == "Provisioned" for n in NAMES),
            timeout=120,
            what="all five provisioned by two controllers",
        )
    assert watch.most == LIMIT, f"{watch.most} hosts were provisioning at once"


class Heartbeats(threading.Thread):
    """Every parked (``available``) host's ``lastSeen``, written as the boot service writes it.

    A merge of that one field, without a guard, every ``interval`` seconds: what a parked agent's
    work polls make the boot service write (every 30 s in a real fleet; faster here).
    """

    def __init__(self, plane: Plane, namespace: str, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.client = k8s_client.sync_client(plane.kubeconfig)
        self.namespace = namespace
        self.interval = interval
        self.written: Counter[str] = Counter()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            with contextlib.suppress(Exception):  # a dropped request: the next beat writes
                for body in self.client.list(HOSTS, namespace=self.namespace):
                    host = PlunderHost.model_validate(as_dict(body))
                    if hoststate.state_of(host) != "available":
                        continue
                    seen = datetime.now(UTC).isoformat(timespec="milliseconds")
                    self.client.patch(
                        HOSTS.Status,
                        host.metadata.name or "",
                        {"status": {"lastSeen": seen.replace("+00:00", "Z")}},
                        namespace=self.namespace,
                        patch_type=PatchType.MERGE,
                    )
                    self.written[host.metadata.name or ""] += 1


_REQUESTS = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$", re.MULTILINE)


def configmap_reads(plane: Plane) -> int:
    """The GETs of ConfigMaps the API server has answered so far (the ledger's reads, here)."""
    with urllib.request.urlopen(  # noqa: S310 - the plane's own loopback URL
        f"{plane.server}/metrics", timeout=10, context=plane.ssl_context()
    ) as answer:
        text = answer.read().decode()
    return sum(
        int(float(value))
        for labels, value in _REQUESTS.findall(text)
        if 'verb="GET"' in labels and 'resource="configmaps"' in labels
    )


def test_the_heartbeats_of_waiting_hosts_ask_the_ledger_nothing(fleet: Fleet) -> None:
    """Before, each heartbeat of a waiting host queued one more grant request (issue #14)."""
    plane, kube, namespace, watch, tmp_path = fleet.parts()
    beats = Heartbeats(plane, namespace)
    try:
        with (
            agent(plane, namespace, install_seconds=(0.5, 1.0)) as hosts,
            controller(plane, namespace, tmp_path / "controller.log"),
        ):
            hosts.holding.set()
            for name in NAMES:
                create_machine(kube, namespace, name)
            wait_for(lambda: watch.busy() == LIMIT, what="two hosts provisioning")
            wait_for(lambda: len(waiting(kube, namespace)) == 3, what="three machines waiting")
            parked = [name for name, state in watch.states.items() if state == "available"]
            assert len(parked) == 3, watch.states

            before = configmap_reads(plane)
            beats.start()
            wait_for(
                lambda: min(beats.written[name] for name in parked) >= 10,
                what="ten heartbeats of each waiting host",
            )
            reads = configmap_reads(plane) - before
            heartbeats = sum(beats.written[name] for name in parked)
            assert reads <= 2, f"{reads} ledger reads for {heartbeats} heartbeats of waiting hosts"

            hosts.release_held()  # the waiters, their copies refreshed, still get their turns
            wait_for(
                lambda: all(machine_state(kube, namespace, n) == "Provisioned" for n in NAMES),
                timeout=120,
                what="all five provisioned",
            )
            for name in NAMES:  # one Event each: a heartbeat is no new wait
                announced = [r for _, r, _ in events_of(kube, namespace, name)]
                assert announced.count(slots.WAITING_REASON) <= 1, (name, announced)
    finally:
        beats.stopping.set()
    assert watch.most == LIMIT, f"{watch.most} hosts were provisioning at once"
