"""Chaos, measured (issue #12), bounded for CI: kill -9 and an API server restart mid-provisioning.

Thirty simulated hosts are provisioned while the controller and the boot service are killed
with SIGKILL at random moments (seeded; the seed is printed) and kube-apiserver is restarted
once with etcd kept; then a fifth of the machines are deleted and as many new ones made, which
take the freed hosts once they are wiped, while both are killed again. No host is given twice,
none is stuck, none returns to the pool unwiped, and every machine is provisioned in the end.
The full run, over 1,000 hosts, is ``bench/chaos.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from plunder.images import binaries
from plunder.k8s import crds
from plunder.lab.plane import start_plane
from tests.integration.chaos_world import APISERVER, BOOT, CONTROLLER, LivePlane, Plan, run

pytestmark = pytest.mark.integration

SIZE = 30


@pytest.fixture(scope="module")
def own_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePlane]:
    """A plane of the test's own: its API server is restarted, which the session's must not be."""
    live = LivePlane(start_plane(tmp_path_factory.mktemp("chaos-plane")))
    try:
        kube = live.client()
        crds.install_plunder_crds(kube)
        crds.install_crd_files(kube, binaries.cluster_api_crd_files())
        yield live
    finally:
        live.stop()


@pytest.mark.timeout(300)
def test_kills_and_a_restart_give_no_host_twice_and_leave_none_stuck_or_unwiped(
    own_plane: LivePlane, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    plan = Plan.drawn(
        seed,
        SIZE,
        spans=(15.0, 8.0),
        kills={CONTROLLER: 5, BOOT: 2, APISERVER: 1},
        deletion_kills={CONTROLLER: 1, BOOT: 1},
        fraction=0.2,
    )
    found = run(own_plane, tmp_path, "chaos", SIZE, plan, seed, 90.0, install_seconds=(1.0, 8.0))
    summary = f"seed {seed}: {found}"
    assert found.provisioned == found.total == SIZE, summary
    assert found.given_twice == [] and found.two_hosts == [], summary
    assert found.stuck == [], summary
    assert found.unwiped == [] and found.given_unwiped == [], summary
    assert found.returns == len(plan.delete), summary  # each freed host came back, wiped
