"""Leader election's timing: no renewal, however slow the API server, outlasts the lease."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from plunder.operator import leader

TIMING = leader.LeaseTiming(duration=1.0, renew_deadline=0.6, retry=0.1)


class HangingAPI:
    """A Lease API that answers ``good`` renewals at once, then hangs (two client timeouts)."""

    def __init__(self, good: int, hang: float) -> None:
        self.good, self.hang = good, hang
        self.lease = Lease(
            metadata=ObjectMeta(name=leader.LEASE_NAME, namespace="ns", resourceVersion="1"),
            spec=LeaseSpec(
                holderIdentity="me", leaseDurationSeconds=1, renewTime=datetime.now(UTC)
            ),
        )
        self.attempt_starts: list[float] = []
        self.renewed: list[float] = []
        """The start of each attempt that wrote the Lease."""

    def get(self, *_: Any, **__: Any) -> Lease:
        self.attempt_starts.append(time.monotonic())
        if len(self.attempt_starts) > self.good:
            time.sleep(self.hang)
        return self.lease

    def replace(self, lease: Lease) -> Lease:
        self.renewed.append(self.attempt_starts[-1])
        return lease


def test_a_hanging_renewal_cannot_hold_the_exit_back_past_the_lease() -> None:
    api = HangingAPI(good=3, hang=2 * TIMING.duration)
    elector = leader.LeaderElector(api, "ns", timing=TIMING, holder="me")  # type: ignore[arg-type]
    lost_at: list[float] = []
    gone = threading.Event()
    elector.acquire()
    elector.keep_renewing(lambda: (lost_at.append(time.monotonic()), gone.set()))
    assert gone.wait(5 * TIMING.duration), "the lost lease was never noticed"
    elector._stop.set()
    # Another replica may take over `duration` after it saw the last renewal land, which was
    # after that renewal began: this replica must have stopped acting before then.
    since_renewal = lost_at[0] - api.renewed[-1]
    assert since_renewal < TIMING.duration, f"stopped {since_renewal:.2f}s after the last renewal"
    assert since_renewal >= TIMING.renew_deadline


def test_a_renewal_s_requests_end_well_inside_the_deadline_and_the_lease() -> None:
    timing = leader.LeaseTiming()
    assert 2 * timing.request_timeout <= timing.renew_deadline / 2
    assert timing.renew_deadline + leader.WATCHDOG_SECONDS < timing.duration
    with pytest.raises(ValueError):
        leader.LeaseTiming(duration=10.0, renew_deadline=10.0)


def test_the_lease_client_times_requests_out_at_the_timing_s_bound(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    timing = leader.LeaseTiming()
    client = leader.lease_client(kubeconfig, timing)
    timeout = client._client._client.timeout
    bounds = (timeout.connect, timeout.read, timeout.write, timeout.pool)
    assert all(b is not None and b <= timing.request_timeout for b in bounds), bounds
