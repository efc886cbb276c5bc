"""The provisioning throttle in the controller: slots granted through the ledger, and waiters.

The decisions are :mod:`plunder.reconcile.slots`; this module reads and writes the ledger (a
ConfigMap in the controller's namespace, written with the resourceVersion it was read at), keeps
the hosts that wait for a slot, and wakes them when one frees. Grants of this process are
serialized by a lock (a grant is three quick API calls); grants of another process (a replica
that still thinks it leads) are kept apart by the ledger's resourceVersion.

A request waits for the lock behind every other, which at a thousand hosts is longer than the
30 s in which a parked agent's ``lastSeen`` changes its host. So when its turn comes the host is
read again, and its move decided (:func:`plunder.reconcile.slots.decide_turn`), granted and
written on that fresh copy: only a change that lands while the ledger is written voids the move.
Decided on the event's copy, it failed with a 409 Conflict and asked again, forever (issue #14).

Nothing polls: the waiters are decided again, oldest first and only by the wake task, when a
host event shows a host outside the slot states (one that may have just left one) or a host
deleted. A waiter's own events (its ``lastSeen``, say) only refresh the copy it waits with: it
keeps its place, and is not decided again by them (that would put a thousand heartbeats in the
lock's queue, each one behind all the others). The waiters are memory only, and need not be
more: after a restart, kopf's first listing sends every host's event, and each host that still
needs a slot asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import httpx2
import kopf
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.resources import as_dict, resource_for
from plunder.reconcile import slots
from plunder.reconcile.selection import HostCandidate

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a PlunderMachine."""

_GRANT_ATTEMPTS = 10
TROUBLE_RETRY = 5.0
"""Seconds before the waiters are decided again after a request the API did not let decide."""


@dataclass
class SlotSettings:
    """Set from ``plunderctl controller`` before kopf starts."""

    provisioning_limit: int = slots.DEFAULT_LIMIT
    """Hosts provisioning or deprovisioning at once, across every host the controller sees."""
    ledger_namespace: str = "default"
    """Where the ledger ConfigMap lives: the controller's own namespace."""


SETTINGS = SlotSettings()


@dataclass
class Waiter:
    """A host that waits for a slot."""

    body: Mapping[str, Any]
    """Its latest copy (refreshed by its events), decided again when a slot frees."""
    decision: slots.Decision | None
    """The refusal: how many slots were in use (None: not decided yet, the API in trouble)."""
    consumer: Key | None
    """The PlunderMachine that claimed it, if any (a released host has none)."""
    since: float
    """When it began waiting (monotonic): the first to wait is woken first."""


@dataclass(frozen=True)
class Answer:
    """The answer to a request: the turn decided on a fresh copy, and that copy's raw body."""

    turn: slots.Turn
    body: Mapping[str, Any] | None
    """The fresh copy's raw body (None: the host is gone)."""


def consumer_of(body: Mapping[str, Any]) -> Key | None:
    """The PlunderMachine a host's ``spec.consumerRef`` names (read as the host cache reads it)."""
    consumer = HostCandidate.from_body(body).consumer
    if consumer is None or consumer.kind != "PlunderMachine" or not consumer.name:
        return None
    return (consumer.namespace, consumer.name)


class ProvisioningSlots:
    """The slots of one controller process: grants, waiters, and their wake-ups."""

    def __init__(
        self,
        client: AsyncClient,
        hosts: Mapping[str, Any],
        settings: SlotSettings,
        retry: Callable[[Mapping[str, Any]], Awaitable[None]],
        wake_machine: Callable[[Key], None],
    ) -> None:
        self.client = client
        self.hosts: Mapping[str, Any] = hosts
        """kopf's live index ``plunderhosts_by_namespace``: namespace → HostCandidates."""
        self.limit = slots.validate_limit(settings.provisioning_limit)
        self.namespace = settings.ledger_namespace
        self.retry = retry
        """Decide a waiting host again (the host handler's move)."""
        self.wake_machine = wake_machine
        self.waiting: dict[str, Waiter] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --------------------------------------------------------------------------- reading

    def cached_hosts(self) -> list[HostCandidate]:
        """Every host in the watch cache."""
        return [host for store in self.hosts.values() for host in store]

    def busy(self) -> set[str]:
        """Keys of the cached hosts in a slot state."""
        return {
            slots.host_key(h.namespace, h.name)
            for h in self.cached_hosts()
            if h.state in slots.SLOT_STATES
        }

    def _view(self, key: str) -> slots.HostView | None:
        namespace, _, name = key.partition("/")
        for host in self.hosts.get(namespace, ()):
            if host.name == name:
                return slots.HostView(host.state, host.resource_version)
        return None

    def in_use(self) -> int:
        """Slots in use as the cache shows them (for the metric; grants read the ledger too)."""
        return len(self.busy())

    def waiting_for(self, namespace: str, name: str) -> slots.Decision | None:
        """The refusal a host waits with, if it waits."""
        waiter = self.waiting.get(slots.host_key(namespace, name))
        return waiter.decision if waiter else None

    def machines_waiting(self) -> int:
        """Waiting hosts claimed by a machine (waiting to provision)."""
        return sum(
            1
            for waiter in self.waiting.values()
            if waiter.consumer is not None and waiter.decision is not None
        )

    # ----------------------------------------------------------------------------- ledger

    async def _read_ledger(self) -> tuple[slots.Ledger, str | None]:
        """The ledger and its resourceVersion (None: there is no ledger yet)."""
        try:
            found = await self.client.get(ConfigMap, slots.LEDGER_NAME, namespace=self.namespace)
        except ApiError as error:
            if error.status.code == 404:
                return {}, None
            raise
        return slots.parse_ledger(
            found.data
        ), found.metadata.resourceVersion if found.metadata else None

    async def _write_ledger(self, ledger: slots.Ledger, read_at: str | None) -> bool:
        """Write the ledger guarded by the version it was read at; False if someone wrote first."""
        data = slots.render_ledger(ledger)
        try:
            if read_at is None:
                meta = ObjectMeta(name=slots.LEDGER_NAME, namespace=self.namespace)
                await self.client.create(ConfigMap(metadata=meta, data=data))
            else:
                await self.client.patch(
                    ConfigMap,
                    slots.LEDGER_NAME,
                    {"metadata": {"resourceVersion": read_at}, "data": data},
                    namespace=self.namespace,
                    patch_type=PatchType.MERGE,
                )
        except ApiError as error:
            if error.status.code == 409:
                return False
            raise
        return True

    async def _read_host(self, key: str) -> Mapping[str, Any] | None:
        """The host as the API shows it now (None: it is gone)."""
        namespace, _, name = key.partition("/")
        try:
            found = await self.client.get(resource_for(PlunderHost), name, namespace=namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        return as_dict(found)

    async def _confirmed_free(self, key: str, decided_on: str) -> bool:
        """Whether the API (not a cache that may lag) shows that an entry's slot is free."""
        body = await self._read_host(key)
        if body is None:
            return True
        fresh = HostCandidate.from_body(body)
        return not slots.holds_slot(decided_on, slots.HostView(fresh.state, fresh.resource_version))

    async def _live(self, ledger: slots.Ledger) -> slots.Ledger:
        """The entries that still hold a slot."""
        live: slots.Ledger = {}
        for key, decided_on in ledger.items():
            if slots.holds_slot(decided_on, self._view(key)) or not await self._confirmed_free(
                key, decided_on
            ):
                live[key] = decided_on
        return live

    async def request(self, host: PlunderHost) -> Answer | None:
        """Ask for a slot for ``host``'s move; at its turn, the move is decided on a fresh copy.

        The copy ``host`` names which host asks; its move, the ledger entry and the guard of the
        move are those of the copy read when the lock is held (read after the ledger, so that
        only the ledger's write lies between that read and the move's).

        None: it could not be decided (the API server in trouble, or the ledger changing under
        every try); the waiters are decided again after :data:`TROUBLE_RETRY` seconds.
        """
        key = slots.host_key(host.metadata.namespace or "", host.metadata.name or "")
        async with self._lock:
            try:
                for _ in range(_GRANT_ATTEMPTS):
                    ledger, read_at = await self._read_ledger()
                    live = await self._live(ledger)
                    body = await self._read_host(key)
                    fresh = None if body is None else PlunderHost.model_validate(body)
                    turn = slots.decide_turn(
                        fresh, live, self.busy(), self.limit, datetime.now(UTC)
                    )
                    decision = turn.decision
                    if (
                        decision is None
                        or not decision.granted
                        or await self._write_ledger(decision.ledger, read_at)
                    ):
                        return Answer(turn, body)
                problem = "the ledger kept changing"
            except ApiError as error:
                problem = f"{error.status.code} {error.status.message}"
            except httpx2.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
        log.warning("host %s: no slot decided (%s); trying again shortly", key, problem)
        asyncio.get_running_loop().call_later(TROUBLE_RETRY, self.kick)
        return None

    # ---------------------------------------------------------------------------- waiters

    def wait(self, body: Mapping[str, Any], decision: slots.Decision | None) -> None:
        """``body``'s host waits; the first time, its Event is posted and its machine woken.

        A host whose request could not be decided (``decision`` None) waits silently.
        """
        meta = body.get("metadata") or {}
        key = slots.host_key(meta.get("namespace", ""), meta.get("name", ""))
        consumer = consumer_of(body)
        before = self.waiting.get(key)
        since = before.since if before else time.monotonic()
        if decision is None:
            self.waiting[key] = Waiter(body, before.decision if before else None, consumer, since)
            return
        self.waiting[key] = Waiter(body, decision, consumer, since)
        if before is None or before.decision is None:
            kopf.event(
                kopf.Body(cast(Any, body)),
                type="Normal",
                reason=slots.WAITING_REASON,
                message=decision.message,
            )
            log.info("host %s waits for a slot: %s", key, decision.message)
        if consumer is not None and (before is None or before.decision != decision):
            self.wake_machine(consumer)

    def refresh(self, body: Mapping[str, Any]) -> bool:
        """Whether ``body``'s host waits; if so, it now waits with this copy, in the same place.

        A waiter's own events (a heartbeat, a condition) are no new request: only the wake task
        decides waiters, oldest first, and its request reads the host afresh anyway.
        """
        meta = body.get("metadata") or {}
        key = slots.host_key(meta.get("namespace", ""), meta.get("name", ""))
        waiter = self.waiting.get(key)
        if waiter is None:
            return False
        consumer = consumer_of(body)
        self.waiting[key] = dataclasses.replace(waiter, body=body, consumer=consumer)
        if consumer != waiter.consumer and waiter.decision is not None:
            for machine in (waiter.consumer, consumer):
                if machine is not None:
                    self.wake_machine(machine)
        return True

    def stop_waiting(self, namespace: str, name: str) -> None:
        """The host no longer waits (it got its slot, or no longer needs one, or is gone)."""
        waiter = self.waiting.pop(slots.host_key(namespace, name), None)
        if waiter is not None and waiter.consumer is not None:
            self.wake_machine(waiter.consumer)

    def kick(self) -> None:
        """A slot may have freed: decide the waiters again (coalesced; in the background).

        The task that does it is started at the first kick, from a handler: it inherits the
        handler's context, in which kopf lets Events be posted (a startup hook's has not).
        """
        if not self.waiting:
            return
        if self._task is None:
            self._task = asyncio.create_task(self._wake_waiters(), name="provisioning-slots")
        self._wake.set()

    async def stop(self) -> None:
        """Stop it."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _wake_waiters(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for key, waiter in sorted(self.waiting.items(), key=lambda item: item[1].since):
                if self.in_use() >= self.limit:
                    break  # the cache already shows every slot taken: the next kick decides
                if self.waiting.get(key) is not waiter:
                    continue
                try:
                    await self.retry(waiter.body)
                except Exception as error:  # noqa: BLE001 - the next kick tries again
                    log.warning("host %s: deciding it again failed: %r", key, error)
                    break
                if key in self.waiting:
                    # Refused: the ledger counts grants the cache does not show yet. The rest
                    # would be refused too; a thousand waiters cost one request, not a thousand.
                    break
