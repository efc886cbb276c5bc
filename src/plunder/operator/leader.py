"""Leader election on a coordination.k8s.io Lease, as controller-runtime does it.

Only the replica holding the Lease runs the handlers; the others wait. The holder renews the
Lease every :attr:`LeaseTiming.retry` seconds; when it cannot renew within
:attr:`LeaseTiming.renew_deadline` it exits at once, so it stops acting before another replica
may take over (after :attr:`LeaseTiming.duration` without renewals). A replica that stops
cleanly gives the Lease up, so its successor need not wait for it to expire.

The deadline is kept by a watchdog thread of its own, counted from the *start* of the last
renewal that succeeded (its write landed after that, so another replica's count starts later):
a renewal that hangs in the API client cannot hold the exit back. And the Lease's client gives
each request :attr:`LeaseTiming.request_timeout` (2 s by default, not the client's usual 10 s),
so one renewal (a read and a write) ends well inside the deadline, which ends inside the lease.

Expiry is judged by when *this* replica last saw the record change (its own clock), never by
comparing another host's ``renewTime`` with it: clocks of two machines may disagree.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from plunder.k8s import client as k8s_client

log = logging.getLogger(__name__)

LEASE_NAME = "plunder-controller"


WATCHDOG_SECONDS = 0.1
"""How often the watchdog looks at the time since the last renewal."""


@dataclass(frozen=True)
class LeaseTiming:
    """controller-runtime's defaults."""

    duration: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.renew_deadline + WATCHDOG_SECONDS < self.duration:
            raise ValueError("the renewal deadline must end well inside the lease's duration")

    @property
    def request_timeout(self) -> float:
        """Seconds one API request of a renewal may take.

        A renewal makes two, so it ends within half the deadline whatever the API server does.
        """
        return min(2.0, self.renew_deadline / 4)


def lease_client(kubeconfig: Path | None, timing: LeaseTiming) -> Client:
    """The client the elector renews with: each request bounded by the timing's timeout."""
    return k8s_client.sync_client(kubeconfig, timeout=timing.request_timeout)


def identity() -> str:
    """This replica's name on the Lease: its host (the pod's name in a pod), made unique."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class LeaderElector:
    """Acquires, renews and releases one Lease."""

    def __init__(
        self,
        client: Client,
        namespace: str,
        name: str = LEASE_NAME,
        timing: LeaseTiming | None = None,
        holder: str | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.timing = timing or LeaseTiming()
        self.holder = holder or identity()
        self._observed: tuple[str | None, float] = (None, 0.0)
        """The record last seen (holder and renew time) and when, on this replica's clock."""
        self._stop = threading.Event()
        self._renewed_at = float("-inf")
        """When the last attempt that held the Lease began (monotonic)."""

    def try_acquire_or_renew(self) -> bool:
        """One attempt; True if this replica holds the Lease now."""
        now = datetime.now(UTC)
        try:
            lease = self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as error:
            if error.status.code != 404:
                raise
            return self._create(now)
        spec = lease.spec or LeaseSpec()
        record = f"{spec.holderIdentity}@{spec.renewTime}"
        if record != self._observed[0]:
            self._observed = (record, time.monotonic())
        held_by_other = bool(spec.holderIdentity) and spec.holderIdentity != self.holder
        expired = time.monotonic() - self._observed[1] > (
            spec.leaseDurationSeconds or self.timing.duration
        )
        if held_by_other and not expired:
            return False
        taking_over = spec.holderIdentity != self.holder
        lease.spec = self._held(
            now,
            acquired=now if taking_over else spec.acquireTime,
            transitions=(spec.leaseTransitions or 0) + (1 if taking_over else 0),
        )
        # Guarded by the resourceVersion just read: one winner among racing replicas.
        return self._won(lambda: self.client.replace(lease))

    def _create(self, now: datetime) -> bool:
        lease = Lease(
            metadata=ObjectMeta(name=self.name, namespace=self.namespace),
            spec=self._held(now, acquired=now, transitions=0),
        )
        return self._won(lambda: self.client.create(lease))

    def _held(self, now: datetime, acquired: datetime | None, transitions: int) -> LeaseSpec:
        """The record of this replica holding the Lease, renewed ``now``."""
        return LeaseSpec(
            holderIdentity=self.holder,
            leaseDurationSeconds=int(self.timing.duration),
            acquireTime=acquired,
            renewTime=now,
            leaseTransitions=transitions,
        )

    @staticmethod
    def _won(write: Callable[[], object]) -> bool:
        """Make a guarded write; False if another replica's write came first (409)."""
        try:
            write()
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise
        return True

    def acquire(self) -> None:
        """Block until this replica holds the Lease."""
        log.info("waiting for the lease %s/%s as %s", self.namespace, self.name, self.holder)
        while not self._attempt():
            time.sleep(self.timing.retry)
        log.info("became the leader (lease %s/%s)", self.namespace, self.name)

    def _attempt(self) -> bool:
        started = time.monotonic()
        try:
            held = self.try_acquire_or_renew()
        except Exception as error:  # noqa: BLE001 - the API server may be away a moment
            log.warning("lease %s/%s: %r", self.namespace, self.name, error)
            return False
        if held:
            self._renewed_at = max(self._renewed_at, started)
        return held

    def keep_renewing(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a background thread; call ``on_lost`` once the renewal deadline passes.

        A watchdog thread keeps the deadline, so it passes on time even while a renewal hangs.
        """
        lost = threading.Event()

        def renew() -> None:
            while not self._stop.wait(self.timing.retry) and not lost.is_set():
                self._attempt()

        def watch() -> None:
            while not self._stop.wait(WATCHDOG_SECONDS):
                if time.monotonic() - self._renewed_at > self.timing.renew_deadline:
                    lost.set()
                    on_lost()
                    return

        threading.Thread(target=watch, name="lease-watchdog", daemon=True).start()
        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Stop renewing and give the Lease up, if it is still ours."""
        self._stop.set()
        try:
            lease = self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec is None or lease.spec.holderIdentity != self.holder:
                return
            lease.spec.holderIdentity = None
            lease.spec.leaseDurationSeconds = 1
            self.client.replace(lease)
        except ApiError as error:
            log.warning("lease %s/%s not released: %s", self.namespace, self.name, error)


def exit_on_lost_leadership() -> None:
    """Exit at once, like controller-runtime.

    Finishing the handlers in flight would let them write after another replica took over.
    """
    log.error("leader election lost: exiting")
    logging.shutdown()
    os._exit(1)
