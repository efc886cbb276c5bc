"""Leader election: one replica acts, the other takes over when it dies or steps down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lightkube import Client
from lightkube.resources.coordination_v1 import Lease

from plunder.lab.plane import Plane
from plunder.operator.leader import LEASE_NAME, LeaderElector, LeaseTiming
from tests.integration.test_machine_world import (
    agent,
    claims,
    create_cluster,
    create_host,
    create_hosts,
    create_machine,
    machine_state,
    running_controller,
    wait_for,
)

pytestmark = pytest.mark.integration

QUICK = LeaseTiming(duration=2.0, renew_deadline=1.5, retry=0.2)


def test_one_holder_until_it_releases_or_stops_renewing(kube: Client, namespace: str) -> None:
    a = LeaderElector(kube, namespace, timing=QUICK, holder="a")
    b = LeaderElector(kube, namespace, timing=QUICK, holder="b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.try_acquire_or_renew()  # a renews
    assert not b.try_acquire_or_renew()

    a.release()  # a clean stop: no need to wait for the lease to run out
    assert b.try_acquire_or_renew()
    assert not a.try_acquire_or_renew()

    # b stops renewing (a crash): a takes over once the record has not moved for 2 s.
    started = time.monotonic()
    wait_for(a.try_acquire_or_renew, timeout=10, what="a takes over the expired lease")
    assert time.monotonic() - started >= QUICK.duration
    spec = kube.get(Lease, LEASE_NAME, namespace=namespace).spec
    assert spec is not None
    assert (spec.holderIdentity, spec.leaseTransitions) == ("a", 2)


def leader_log(tmp_path: Path, replica: str) -> str:
    return (tmp_path / replica / "controller.log").read_text()


def test_only_the_leader_claims_and_the_standby_takes_over_after_kill_9(
    plane: Plane, kube: Client, cluster_api_crds: list[str], namespace: str, tmp_path: Path
) -> None:
    create_cluster(kube, namespace)
    create_hosts(kube, namespace, 2)
    elect = ("--leader-elect",)  # the Lease goes in the watched namespace
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        agent(plane, namespace),
        running_controller(plane, tmp_path / "a", "--namespace", namespace, *elect) as a,
    ):
        wait_for(lambda: "became the leader" in leader_log(tmp_path, "a"), what="a leads")
        with running_controller(plane, tmp_path / "b", "--namespace", namespace, *elect):
            create_machine(kube, namespace, "m0")
            wait_for(lambda: machine_state(kube, namespace, "m0") == "Provisioned")
            assert "became the leader" not in leader_log(tmp_path, "b")
            assert "claimed host" not in leader_log(tmp_path, "b")

            a.kill()
            killed = time.monotonic()
            create_host(kube, namespace, "h9", "00:50:56:a5:11:99")
            create_machine(kube, namespace, "m1")
            wait_for(lambda: machine_state(kube, namespace, "m1") == "Provisioned", timeout=90)
            takeover = time.monotonic() - killed
            assert "became the leader" in leader_log(tmp_path, "b")
            assert sorted(claims(kube, namespace).values()) == ["m0", "m1"]
            print(f"the standby provisioned a new machine {takeover:.1f} s after kill -9")
