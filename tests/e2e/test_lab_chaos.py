"""Chaos, measured (issue #12), on the lab's virtual bare metal, bounded for CI.

Two VM hosts (one BIOS, one UEFI) are given a machine each, with the lab's Debian + cloud-init
image, while the controller, the boot service and its dnsmasq are killed with SIGKILL at seeded
random moments and kube-apiserver is restarted once with etcd kept; then the machines are
deleted while the controller and the boot service are killed again. No host is given twice,
none is stuck, none returns to the pool unwiped (its disk is read when it returns), every
machine is provisioned, and only ever one dnsmasq serves the network. The seed is printed;
``PLUNDER_CHAOS_SEED=N`` replays it. The full run, on three hosts beside an undisturbed
baseline, is ``bench/chaos_lab.py``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from tests.conftest import IsolatedLab, isolated_lab
from tests.e2e.lab_chaos import DNSMASQ, prepare_cluster, run, wait_until_available
from tests.integration.chaos_world import APISERVER, BOOT, CONTROLLER, Plan

pytestmark = pytest.mark.e2e

PROVISIONING_KILLS = {CONTROLLER: 3, BOOT: 2, DNSMASQ: 2, APISERVER: 1}
RELEASE_KILLS = {CONTROLLER: 1, BOOT: 1}
SPANS = (70.0, 20.0)
"""Seconds over which each phase's disruptions are drawn: about as long as each takes here."""


@pytest.fixture
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedLab]:
    # a short folder: libvirt's socket path under it must fit in 107 bytes (see lab_hypervisor)
    with isolated_lab(tmp_path_factory.mktemp("chaos"), "--hosts", "2") as running:
        assert [host["firmware"] for host in running.hosts()] == ["bios", "uefi"]
        yield running


@pytest.mark.timeout(900)
def test_kills_and_a_restart_on_the_lab_give_no_host_twice_and_leave_none_stuck_or_unwiped(
    two_hosts: IsolatedLab,
) -> None:
    folder = two_hosts.folder
    server = f"http://{two_hosts.subnet.network_address + 1}:8080"
    wait_until_available(folder, timeout=300)
    prepare_cluster(folder)
    seed = int(os.environ.get("PLUNDER_CHAOS_SEED") or random.randrange(1 << 30))
    print(f"\nseed {seed}")
    plan = Plan.drawn(seed, 2, SPANS, PROVISIONING_KILLS, RELEASE_KILLS, fraction=1.0)
    chaos, found = run(folder, server, "chaos", plan, patience=300.0)
    summary = f"seed {seed}: {found}"
    print(summary, chaos.rides())
    assert len(found.provisioning.disruptions) == sum(PROVISIONING_KILLS.values()), summary
    assert found.provisioned == found.total == 2, summary
    # The ledger saw the real claims: each machine named one host, and the two hosts differ.
    named = [sorted(machine.hosts) for machine in chaos.ledger.machines.values()]
    assert len(named) == 2 and all(len(hosts) == 1 for hosts in named), named
    assert len({hosts[0] for hosts in named}) == 2, named
    assert found.given_twice == [] and found.two_hosts == [], summary
    assert found.stuck == [], summary
    assert found.unwiped == [] and found.given_unwiped == [], summary
    assert found.returns == 2, summary  # each host came back, its disk wiped
    assert chaos.most_dhcp_servers <= 1, f"{chaos.most_dhcp_servers} dnsmasq at once"
