"""The machine controller under contention and crashes (issue #6, item 8).

Ten machines race for five hosts; the controller is killed with SIGKILL at random moments while
machines provision. Whatever happens, a host is never given twice and a machine never gets two.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest
from lightkube import Client

from plunder.lab.plane import Plane
from tests.integration.test_machine_world import (
    MACHINES,
    agent,
    claims,
    create_cluster,
    create_hosts,
    create_machine,
    events_of,
    machine,
    machine_state,
    running_controller,
    wait_for,
)

pytestmark = pytest.mark.integration


def no_hardware_events(kube: Client, namespace: str, name: str) -> int:
    return sum(
        1
        for kind, reason, message in events_of(kube, namespace, name)
        if (kind, reason) == ("Warning", "NoHardwareFound")
        and message.startswith("No Hardware found")
    )


def bindings(kube: Client, namespace: str, names: list[str]) -> dict[str, str]:
    """PlunderMachine → the host its annotation names."""
    found = {}
    for name in names:
        host = (machine(kube, namespace, name)["metadata"].get("annotations") or {}).get(
            "plunder.dev/host"
        )
        if host:
            found[name] = host
    return found


def assert_one_to_one(kube: Client, namespace: str, names: list[str]) -> None:
    """Each claimed host names one machine, which names that host back, and no other."""
    by_host = claims(kube, namespace)
    by_machine = bindings(kube, namespace, names)
    assert len(set(by_host.values())) == len(by_host), f"a machine got two hosts: {by_host}"
    assert {m: h for h, m in by_host.items()} == by_machine


def test_ten_machines_race_for_five_hosts(
    plane: Plane, kube: Client, cluster_api_crds: list[str], namespace: str, tmp_path: Path
) -> None:
    create_cluster(kube, namespace)
    create_hosts(kube, namespace, 5)
    names = [f"m{i}" for i in range(10)]
    for name in names:
        create_machine(kube, namespace, name)
    with running_controller(plane, tmp_path):  # all ten are there when it starts: one burst
        wait_for(lambda: len(claims(kube, namespace)) == 5, what="five claims")

        def settled() -> bool:
            states = Counter(machine_state(kube, namespace, n) for n in names)
            waiting = [n for n in names if machine_state(kube, namespace, n) == "WaitingForHost"]
            return states["WaitingForHost"] == 5 and all(
                no_hardware_events(kube, namespace, n) == 1 for n in waiting
            )

        wait_for(settled, what="five claimed, five waiting with one event each")
        assert_one_to_one(kube, namespace, names)
        waiting = sorted(n for n in names if machine_state(kube, namespace, n) == "WaitingForHost")
        claimed = sorted(set(names) - set(waiting))
        for name in waiting:
            body = machine(kube, namespace, name)
            [cond] = [c for c in body["status"]["conditions"] if c["type"] == "HostClaimed"]
            assert (cond["status"], cond["reason"]) == ("False", "NoHardwareFound")

        # Freeing a host (deleting a claimed machine) lets one waiting machine claim it.
        with agent(plane, namespace):
            kube.delete(MACHINES, claimed[0], namespace=namespace)
            wait_for(
                lambda: (
                    sum(machine_state(kube, namespace, n) == "WaitingForHost" for n in waiting) == 4
                ),
                what="a waiting machine claims the freed host",
            )
        remaining = [n for n in names if n != claimed[0]]
        wait_for(lambda: len(claims(kube, namespace)) == 5)
        assert_one_to_one(kube, namespace, remaining)
        # Woken again, the four still waiting did not announce their wait a second time.
        still = [n for n in waiting if machine_state(kube, namespace, n) == "WaitingForHost"]
        assert [no_hardware_events(kube, namespace, n) for n in still] == [1, 1, 1, 1]


def test_kill_9_while_three_machines_provision(
    plane: Plane, kube: Client, cluster_api_crds: list[str], namespace: str, tmp_path: Path
) -> None:
    create_cluster(kube, namespace)
    create_hosts(kube, namespace, 4)  # one spare: a machine that took two would show it
    names = ["m0", "m1", "m2"]
    seed = random.randrange(1 << 30)
    chance = random.Random(seed)
    kills = []
    with (
        agent(plane, namespace, install_seconds=(0.5, 3.0)),
        running_controller(plane, tmp_path) as controller,
    ):
        started = time.monotonic()
        for name in names:
            create_machine(kube, namespace, name)
        for _ in range(3):
            moment = chance.uniform(0.0, 1.5)
            time.sleep(moment)  # a random moment is the point: nothing to wait for
            controller.kill()
            kills.append(round(time.monotonic() - started, 2))
            controller.start()
        wait_for(
            lambda: all(machine_state(kube, namespace, n) == "Provisioned" for n in names),
            timeout=120,
            what=f"all provisioned after kills at {kills}s (seed {seed})",
        )
    assert_one_to_one(kube, namespace, names)
    assert len(claims(kube, namespace)) == 3
    for name in names:
        body = machine(kube, namespace, name)
        assert body["status"]["ready"] is True
        assert body["spec"]["providerID"].startswith("plunder://")


def test_two_controllers_end_one_to_one(
    plane: Plane, kube: Client, cluster_api_crds: list[str], namespace: str, tmp_path: Path
) -> None:
    """Without ``--leader-elect``, guarded writes on both sides bring two replicas to one-to-one.

    A host is never given to two machines (its claim is one guarded write). A replica whose cache
    is behind may claim a second host for a machine the other replica already served; it gives
    that host back. One replica (the shipped deployment) never does, as the race test shows.
    """
    create_cluster(kube, namespace)
    create_hosts(kube, namespace, 6)
    names = [f"m{i}" for i in range(4)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        agent(plane, namespace),
        running_controller(plane, tmp_path / "a"),
        running_controller(plane, tmp_path / "b"),
    ):
        for name in names:  # both controllers see each machine appear at once
            create_machine(kube, namespace, name)
        wait_for(
            lambda: all(machine_state(kube, namespace, n) == "Provisioned" for n in names),
            what="all provisioned by two controllers",
        )

        def one_to_one() -> bool:
            by_host = claims(kube, namespace)
            by_machine = bindings(kube, namespace, names)
            return len(by_host) == 4 and {m: h for h, m in by_host.items()} == by_machine

        wait_for(one_to_one, what="stray claims given back")
