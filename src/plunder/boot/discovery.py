"""The bound on discovery: a cap on hosts nobody has accepted, and a rate of new ones.

Any client on the provisioning network can send ``/boot.ipxe?mac=…`` with MACs it makes up, and
each new MAC would be a new PlunderHost: without a bound, one client fills the API server. The
cap is counted from the host cache (so it holds across restarts and, within a cache's lag,
across replicas); the rate is a token bucket in this replica's memory. A MAC that is refused is
told to ask again later, and nothing is written for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from plunder.boot.settings import DiscoverySettings


class DiscoveryGate:
    """Admits new MACs within the cap and the rate of :class:`DiscoverySettings`."""

    def __init__(self, settings: DiscoverySettings) -> None:
        self.settings = settings
        self._allowance = float(settings.burst)
        self._at = time.monotonic()
        self.admitted = 0
        """Admitted and not yet settled (the create under way): counted against the cap."""

    def _refill(self) -> None:
        now = time.monotonic()
        rate = self.settings.per_minute / 60.0
        self._allowance = min(float(self.settings.burst), self._allowance + (now - self._at) * rate)
        self._at = now

    def refusal(self, pending: Callable[[], int]) -> str | None:
        """Why a new MAC is not recorded now (None: record it, and count it against the rate).

        A MAC admitted counts against the cap until :meth:`settled` is called for it. The rate
        is looked at first: in a flood most requests are refused without counting the cache.

        Args:
            pending: Counts the hosts discovered and not accepted, with those being created.
        """
        if not self.settings.enabled:
            return "discovery is off"
        self._refill()
        if self._allowance < 1.0:
            return "too many new hosts at once (the rate limit)"
        waiting = pending() + self.admitted
        if waiting >= self.settings.max_pending:
            return f"{waiting} discovered hosts are waiting to be accepted (the cap)"
        self._allowance -= 1.0
        self.admitted += 1
        return None

    def settled(self) -> None:
        """An admitted MAC's create has ended (made, or failed): the cache counts it now."""
        self.admitted -= 1
