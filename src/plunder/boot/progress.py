"""The bound on write-progress records: per host, and across the fleet.

The agent reports its byte counts every few seconds while it writes an image; each recorded
report is a write of the host's status, which every watch of PlunderHosts then carries. So a
report is recorded only if the host's last one is at least ``interval`` old, and only within a
token bucket of ``per_second`` writes across all hosts (this replica's memory). A report that
is not recorded is dropped, not queued: the next one carries newer counts, and the write's end
records its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class ProgressGate:
    """Admits progress writes: one per host per ``interval``, ``per_second`` in all."""

    def __init__(
        self,
        interval: float,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._rate = per_second
        self._burst = max(1.0, per_second)
        self._clock = clock
        self._allowance = self._burst
        self._at = clock()
        self._last: dict[str, float] = {}

    def admit(self, mac: str) -> bool:
        """Whether a progress report of ``mac`` is written now (if so, it is counted)."""
        now = self._clock()
        self._allowance = min(self._burst, self._allowance + (now - self._at) * self._rate)
        self._at = now
        last = self._last.get(mac)
        if last is not None and now - last < self._interval:
            return False
        if self._allowance < 1.0:
            return False
        self._allowance -= 1.0
        self._last[mac] = now
        if len(self._last) > 100_000:  # forget hosts long done, keep the map bounded
            self._last = {key: at for key, at in self._last.items() if now - at < self._interval}
        return True
