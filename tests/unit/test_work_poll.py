"""How long a parked agent is told to wait: a small fleet polls every 2 s, a big one is spread."""

from __future__ import annotations

import pytest

from plunder.boot.settings import AGENT_POLL_SECONDS, work_poll_seconds


@pytest.mark.parametrize(
    ("hosts", "seconds"),
    [(0, AGENT_POLL_SECONDS), (1, 2), (500, 2), (501, 3), (1000, 4), (10_000, 40), (10_001, 41)],
)
def test_the_fleet_polls_no_faster_than_the_rate_together(hosts: int, seconds: int) -> None:
    waited = work_poll_seconds(hosts, polls_per_second=250.0)
    assert waited == seconds
    assert hosts / waited <= 250.0
