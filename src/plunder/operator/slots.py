"""The provisioning throttle in the controller: slots granted through the ledger, and waiters.

The decisions are :mod:`plunder.reconcile.slots`; this module reads and writes the ledger (a
ConfigMap in the controller's namespace, written with the resourceVersion it was read at), keeps
the hosts that wait for a slot, and wakes them when one frees. Grants of another process (a
replica that still thinks it leads) are kept apart by the ledger's resourceVersion.

Grants are decided in *rounds* by one task, the granter (issue #14). A host's request is queued
and answered by the next round; a round takes every waiter (oldest first) and then every queued
request (in the order they came), reads the ledger once, reads the hosts that fit the free slots
again (at most :attr:`SlotSettings.grant_concurrency` reads at once), decides each move on its
fresh copy (:func:`plunder.reconcile.slots.decide_turn`), and records all of that round's grants
in one guarded write of the ledger. One grant at a time, each with its own ledger read and write
under a lock, served 1.2-1.7 hosts a second at 1,000 hosts; a round serves as many hosts as there
are free slots (up to :attr:`SlotSettings.grant_batch`) for the price of one.

The order is first come, first served: the waiters come before every request queued after them,
so a host that asks for the first time does not take a slot that freed while older hosts wait.
A waiter's own events (its ``lastSeen``, say) only refresh the copy it waits with: it keeps its
place. A granted waiter's move is written by the granter (bounded as above); if the move is
refused (the host changed between its read and the write), the host waits again in its place.

Nothing polls: a round runs when a request is queued, and when a host event frees a slot as far
as this process knows (:meth:`ProvisioningSlots.observe`: a host leaves a slot state or is
deleted, or a host the ledger names changed before its move landed). A heartbeat of a parked or
waiting host frees nothing and wakes nobody. The waiters are memory only, and need not be more:
after a restart, kopf's first listing sends every host's event, and each host that still needs a
slot asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
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
from plunder.operator.controller_settings import SlotSettings
from plunder.reconcile import hoststate, slots
from plunder.reconcile.selection import HostCandidate

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name) of a PlunderMachine."""

_GRANT_ATTEMPTS = 10
TROUBLE_RETRY = 5.0
"""Seconds before the waiters are decided again after a round the API did not let decide."""


SETTINGS = SlotSettings()
"""What this process uses: set from ``plunderctl controller`` before kopf starts."""


@dataclass
class Waiter:
    """A host that waits for a slot."""

    body: Mapping[str, Any]
    """Its latest copy (refreshed by its events)."""
    decision: slots.Decision | None
    """The refusal: how many slots were in use (None: not decided yet, the API in trouble)."""
    consumer: Key | None
    """The PlunderMachine that claimed it, if any (a released host has none)."""
    since: float
    """When it began waiting (monotonic): the first to wait is served first."""


@dataclass(frozen=True)
class Answer:
    """The answer to a request: the turn decided on a fresh copy, and that copy's raw body."""

    turn: slots.Turn
    body: Mapping[str, Any] | None
    """The fresh copy's raw body (None: the host is gone); a refusal's is the copy that asked."""


@dataclass
class _Ask:
    """A request queued for the next round: the copy it asked with, and where its answer goes."""

    key: str
    body: Mapping[str, Any]
    answer: asyncio.Future[Answer | None]


@dataclass(frozen=True)
class _Queued:
    """One host of a round, in its place: a waiter (``ask`` None) or a queued request."""

    key: str
    body: Mapping[str, Any]
    ask: _Ask | None


class _UndecidedError(Exception):
    """The round could not be decided (the ledger changed under every try)."""


def consumer_of(body: Mapping[str, Any]) -> Key | None:
    """The PlunderMachine a host's ``spec.consumerRef`` names (read as the host cache reads it)."""
    consumer = HostCandidate.from_body(body).consumer
    if consumer is None or consumer.kind != "PlunderMachine" or not consumer.name:
        return None
    return (consumer.namespace, consumer.name)


def _key_of(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return slots.host_key(meta.get("namespace", ""), meta.get("name", ""))


def _refusal(queued: _Queued, decision: slots.Decision) -> Answer:
    """A refusal decided without reading the host (no slot was free for it)."""
    host = PlunderHost.model_validate(dict(queued.body))
    return Answer(slots.Turn(host, hoststate.Change(), decision), queued.body)


class ProvisioningSlots:
    """The slots of one controller process: grants, waiters, and their wake-ups."""

    def __init__(
        self,
        client: AsyncClient,
        hosts: Mapping[str, Any],
        settings: SlotSettings,
        move: Callable[[Answer], Awaitable[bool]],
        wake_machine: Callable[[Key], None],
    ) -> None:
        self.client = client
        self.hosts: Mapping[str, Any] = hosts
        """kopf's live index ``plunderhosts_by_namespace``: namespace → HostCandidates."""
        self.limit = slots.validate_limit(settings.provisioning_limit)
        self.namespace = settings.ledger_namespace
        self.batch = max(1, settings.grant_batch)
        self.move = move
        """Write a granted waiter's move (the host handler's); whether it was written."""
        self.wake_machine = wake_machine
        self.waiting: dict[str, Waiter] = {}
        self.ledger_writes = 0
        """Writes of the ledger this process made (for tests and the curious)."""
        self._asks: dict[str, _Ask] = {}
        self._moving: dict[str, Waiter] = {}
        """Granted waiters whose move the granter is writing."""
        self._holding: dict[str, str] = {}
        """Hosts this process knows hold a slot: the version their entry names, or "" (state)."""
        self._calls = asyncio.Semaphore(max(1, settings.grant_concurrency))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._moves: set[asyncio.Task[None]] = set()

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

    def _views(self) -> dict[str, slots.HostView]:
        """Every cached host's state and version, by key (one pass, not one per ledger entry)."""
        return {
            slots.host_key(h.namespace, h.name): slots.HostView(h.state, h.resource_version)
            for h in self.cached_hosts()
        }

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
        self.ledger_writes += 1
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
        async with self._calls:
            try:
                found = await self.client.get(resource_for(PlunderHost), name, namespace=namespace)
            except ApiError as error:
                if error.status.code == 404:
                    return None
                raise
        return as_dict(found)

    async def _read_hosts(self, keys: Iterable[str]) -> list[Mapping[str, Any] | None]:
        """The hosts as the API shows them now, read side by side (bounded)."""
        return list(await asyncio.gather(*(self._read_host(key) for key in keys)))

    async def _live(self, ledger: slots.Ledger) -> slots.Ledger:
        """The entries that still hold a slot.

        An entry the cache shows free is confirmed against the API (a cache may lag), those
        reads side by side.
        """
        views = self._views()
        doubtful = [
            key
            for key, decided_on in ledger.items()
            if not slots.holds_slot(decided_on, views.get(key))
        ]
        fresh = dict(zip(doubtful, await self._read_hosts(doubtful), strict=True))
        live: slots.Ledger = {}
        for key, decided_on in ledger.items():
            if key in fresh:
                body = fresh[key]
                if body is None:
                    continue
                found = HostCandidate.from_body(body)
                if not slots.holds_slot(
                    decided_on, slots.HostView(found.state, found.resource_version)
                ):
                    continue
            live[key] = decided_on
        return live

    # ----------------------------------------------------------------------------- grants

    async def request(
        self, host: PlunderHost, body: Mapping[str, Any] | None = None
    ) -> Answer | None:
        """Ask for a slot for ``host``'s move; answered by the granter's next round.

        ``body`` is the raw copy that asks (``host`` dumped, without it). If a slot is free for
        it, after every older waiter, the move is decided on the copy the round reads again (read
        after the ledger, so that only the ledger's write lies between that read and the move's);
        else it is refused without a read.

        None: it could not be decided (the API server in trouble, or the ledger changing under
        every try); the waiters are decided again after :data:`TROUBLE_RETRY` seconds.
        """
        raw = (
            body
            if body is not None
            else host.model_dump(mode="json", by_alias=True, exclude_none=True)
        )
        key = slots.host_key(host.metadata.namespace or "", host.metadata.name or "")
        earlier = self._asks.get(key)
        if earlier is not None and not earlier.answer.done():
            earlier.answer.set_result(None)  # superseded: this newer copy asks in its place
        answer: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._asks[key] = _Ask(key, raw, answer)
        self._start()
        return await answer

    def _start(self) -> None:
        """Run a round soon (coalesced).

        The granter is started by the first request or kick, from a handler: it inherits the
        handler's context, in which kopf lets Events be posted (a startup hook's has not).
        """
        if self._task is None:
            self._task = asyncio.create_task(self._grant(), name="provisioning-slots")
        self._wake.set()

    async def _grant(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                more = await self._round()
            except Exception:  # noqa: BLE001 - a bug must not leave a request unanswered forever
                log.exception("provisioning slots: a round failed")
                self._answer_every_ask(None)
                more = False
            if more:
                self._wake.set()

    def _answer_every_ask(self, answer: Answer | None) -> None:
        asks, self._asks = self._asks, {}
        for ask in asks.values():
            if not ask.answer.done():
                ask.answer.set_result(answer)

    async def _round(self) -> bool:
        """Decide the waiters and the queued requests in order; whether some are left to decide."""
        for key, ask in list(self._asks.items()):
            if ask.answer.done():  # its handler was cancelled: nobody would write its move
                del self._asks[key]
        order = sorted(self.waiting.items(), key=lambda item: item[1].since)
        queue = [_Queued(key, waiter.body, None) for key, waiter in order if key not in self._asks]
        queue += [_Queued(ask.key, ask.body, ask) for ask in self._asks.values()]
        if not queue:
            return False
        try:
            answers, more = await self._decide(queue)
        except (ApiError, httpx2.TransportError, _UndecidedError) as error:
            if isinstance(error, ApiError):
                problem = f"{error.status.code} {error.status.message}"
            elif isinstance(error, httpx2.TransportError):
                problem = f"{type(error).__name__}: {error}"
            else:
                problem = "the ledger kept changing"
            log.warning(
                "no slot decided for %d hosts (%s); trying again shortly", len(queue), problem
            )
            self._answer_every_ask(None)
            asyncio.get_running_loop().call_later(TROUBLE_RETRY, self.kick)
            return False
        for queued in queue:
            answer = answers.get(queued.key)
            if answer is None:
                continue  # not reached in this round: it keeps its place
            if queued.ask is not None:
                if self._asks.get(queued.key) is queued.ask:
                    del self._asks[queued.key]
                if not queued.ask.answer.done():
                    queued.ask.answer.set_result(answer)
            elif self.waiting.get(queued.key) is not None:
                self._settle(queued.key, answer)
        return more

    async def _decide(self, queue: list[_Queued]) -> tuple[dict[str, Answer], bool]:
        """Each host of ``queue`` that a slot is free for, in order, decided on a fresh copy.

        The grants are written to the ledger in one guarded write; a refusal is given to the
        queued requests that no slot was free for (the waiters just keep waiting). The second
        value: whether hosts are left that a free slot could be given to (the batch was full).
        """
        for _ in range(_GRANT_ATTEMPTS):
            busy = self.busy()
            for key in busy:  # their events that leave the slot states will wake the waiters
                self._holding.setdefault(key, "")
            if len(busy) >= self.limit:  # the cache already shows every slot taken
                refusal = slots.Decision(False, {}, len(busy), self.limit)
                return {q.key: _refusal(q, refusal) for q in queue if self._refused(q)}, False
            ledger, read_at = await self._read_ledger()
            held = await self._live(ledger)
            for key, decided_on in held.items():
                self._holding.setdefault(key, decided_on)
            answers: dict[str, Answer] = {}
            granted: dict[str, str] = {}
            rest = list(queue)
            read = 0
            while rest and read < self.batch:
                free = self.limit - slots.in_use(held, busy)
                turn: list[_Queued] = []
                for queued in rest:
                    if read + len(turn) >= self.batch:
                        break
                    if queued.key in held:  # its own slot (its earlier move was refused)
                        turn.append(queued)
                    elif free > 0:
                        turn.append(queued)
                        free -= 1
                if not turn:
                    break
                taken = {queued.key for queued in turn}
                rest = [queued for queued in rest if queued.key not in taken]
                read += len(turn)
                bodies = await self._read_hosts(queued.key for queued in turn)
                for queued, body in zip(turn, bodies, strict=True):
                    fresh = None if body is None else PlunderHost.model_validate(body)
                    decided = slots.decide_turn(fresh, held, busy, self.limit, datetime.now(UTC))
                    if decided.decision is not None and decided.decision.granted:
                        held = dict(decided.decision.ledger)
                        granted[queued.key] = held[queued.key]
                    answers[queued.key] = Answer(decided, body)
            full = slots.in_use(held, busy) >= self.limit
            if full:
                refusal = slots.Decision(False, held, slots.in_use(held, busy), self.limit)
                answers |= {q.key: _refusal(q, refusal) for q in rest if self._refused(q)}
            if not granted or await self._write_ledger(held, read_at):
                self._holding |= granted
                return answers, bool(rest) and not full
        raise _UndecidedError

    def _refused(self, queued: _Queued) -> bool:
        """Whether a host no slot was free for is told so: a request, or a waiter never told.

        A waiter that was told keeps its place without a word (nothing changed for it); one
        that waits silently (its request met an API in trouble) gets its Event now.
        """
        if queued.ask is not None:
            return True
        waiter = self.waiting.get(queued.key)
        return waiter is not None and waiter.decision is None

    # ---------------------------------------------------------------------------- waiters

    def _settle(self, key: str, answer: Answer) -> None:
        """A waiter's answer from a round: its move is written, or it waits on, or is done."""
        turn = answer.turn
        namespace, _, name = key.partition("/")
        if answer.body is None or turn.host is None:
            self.stop_waiting(namespace, name)
        elif not turn.granted:
            self.wait(answer.body, turn.decision)
        elif turn.change.status is None:  # the fresh copy needs no move (any more)
            self.stop_waiting(namespace, name)
        else:
            waiter = self.waiting.pop(key)
            self._moving[key] = dataclasses.replace(waiter, body=answer.body)
            task = asyncio.create_task(self._carry_out(key, answer), name=f"slot-move {key}")
            self._moves.add(task)
            task.add_done_callback(self._moves.discard)

    async def _carry_out(self, key: str, answer: Answer) -> None:
        """Write a granted waiter's move; if it is refused, the host waits again in its place."""
        try:
            async with self._calls:
                written = await self.move(answer)
        except Exception as error:  # noqa: BLE001 - it waits again; the next round decides it
            log.warning("host %s: its granted move failed: %r", key, error)
            written = False
        waiter = self._moving.pop(key, None)
        if waiter is None:
            return
        if written:
            if waiter.consumer is not None:
                self.wake_machine(waiter.consumer)
            return
        self.waiting[key] = waiter
        self.kick()

    def wait(self, body: Mapping[str, Any], decision: slots.Decision | None) -> None:
        """``body``'s host waits; the first time, its Event is posted and its machine woken.

        A host whose request could not be decided (``decision`` None) waits silently.
        """
        key = _key_of(body)
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

        A waiter's own events (a heartbeat, a condition) are no new request: the granter decides
        waiters in their order, and reads the host afresh anyway. A host whose granted move is
        being written counts as waiting too (if the move is refused, it waits on).
        """
        key = _key_of(body)
        moving = self._moving.get(key)
        if moving is not None:
            self._moving[key] = dataclasses.replace(moving, body=body)
            return True
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

    def observe(self, body: Mapping[str, Any], *, gone: bool = False) -> None:
        """Note a host's event; if it frees a slot this process knows of, the waiters are decided.

        A slot frees when a host leaves a slot state or is deleted, or when a host the ledger
        names (as this process wrote or read it) shows another version outside the slot states:
        its move was refused, or it came and went. A heartbeat (``lastSeen``) of a parked or
        waiting host frees nothing, and wakes nobody.
        """
        key = _key_of(body)
        state = (body.get("status") or {}).get("state")
        version = (body.get("metadata") or {}).get("resourceVersion")
        if not gone and state in slots.SLOT_STATES:
            self._holding[key] = ""
            return
        held = self._holding.get(key)
        if held is None or (not gone and held == version):
            return
        del self._holding[key]
        self.kick()

    def kick(self) -> None:
        """A slot may have freed: decide the waiters again (coalesced; in the background)."""
        if self.waiting or self._asks:
            self._start()

    async def stop(self) -> None:
        """Stop it."""
        tasks = [*self._moves, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for ask in self._asks.values():
            ask.answer.cancel()
        self._asks.clear()
