"""Slot grants in rounds (issue #14): many grants per ledger write, first come first served.

Driven through the host handler as kopf drives it (``open_client``, then each host's event),
over the fake API of ``test_slot_gate`` that keeps resourceVersions as the real one does. Each
test failed before grants were decided in rounds: one grant per ledger write (three writes for
three slots freed), a waiting host's heartbeat kicked the wake task, and a host that asked for
the first time took a freed slot while an older host waited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

import kopf
import pytest

from plunder.operator import host as host_handler
from plunder.operator import slots as slot_gate
from plunder.operator.controller_settings import SlotSettings
from plunder.reconcile import slots
from plunder.reconcile.selection import HostCandidate
from tests.unit.test_slot_gate import FakeAPI, _api_error, _raw

_LOG = cast(kopf.Logger, logging.getLogger("test"))


class CountingAPI(FakeAPI):
    """The fake API, counting the ledger's writes."""

    def __init__(self, hosts: dict[str, tuple[str, str]]) -> None:
        super().__init__(hosts)
        self.ledger_writes = 0

    async def create(self, obj: Any) -> None:
        self.ledger_writes += 1
        await super().create(obj)

    async def patch(self, resource: Any, name: str, patch: dict[str, Any], **kw: Any) -> None:
        if "data" in patch:
            self.ledger_writes += 1
        await super().patch(resource, name, patch, **kw)


class Handler:
    """The host handler of one controller process over the fake API, with a watch cache."""

    def __init__(self, api: CountingAPI, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.api = api
        self.limit = limit
        self.cache: dict[str, list[HostCandidate]] = {"ns": []}
        self.catch_up()
        self.memo = kopf.Memo()
        self.events: list[tuple[str, str]] = []
        monkeypatch.setattr(host_handler, "async_client", lambda **_: api)
        monkeypatch.setattr(slot_gate, "SETTINGS", SlotSettings(limit, "ns"))
        monkeypatch.setattr(kopf, "event", self._event)

    async def start(self) -> None:
        await host_handler.open_client(self.memo, plunderhosts_by_namespace=self.cache)

    def _event(self, body: Any, *, type: str, reason: str, message: str) -> None:
        self.events.append((body["metadata"]["name"], reason))

    @property
    def gate(self) -> slot_gate.ProvisioningSlots:
        gate: slot_gate.ProvisioningSlots = self.memo.slots
        return gate

    def catch_up(self) -> None:
        """The watch cache shows the hosts as the API has them now."""
        self.cache["ns"] = [
            HostCandidate(name, "ns", name, version, "00:50:56:a5:11:01", state)
            for name, (state, version) in self.api.hosts.items()
        ]

    async def event(self, name: str) -> None:
        """The host's event, with its copy as the API has it now."""
        state, version = self.api.hosts[name]
        await host_handler.plunderhost_event(
            type="MODIFIED",
            body=cast(kopf.Body, _raw(name, state, version)),
            memo=self.memo,
            logger=_LOG,
        )

    def states(self, *names: str) -> list[str]:
        return [self.api.hosts[name][0] for name in names]


async def until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


def _fleet(busy: int, parked: int) -> CountingAPI:
    hosts = {f"x{i}": ("provisioning", str(10 + i)) for i in range(busy)}
    hosts |= {f"a{i}": ("available", str(100 + i)) for i in range(parked)}
    return CountingAPI(hosts)


async def test_slots_freed_together_are_granted_with_one_ledger_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: one grant per round trip (ledger read, host read, ledger write): three writes."""
    api = _fleet(busy=3, parked=6)
    handler = Handler(api, 3, monkeypatch)
    await handler.start()
    waiters = [f"a{i}" for i in range(6)]
    for name in waiters:
        await handler.event(name)
    assert list(handler.gate.waiting) == [f"ns/{name}" for name in waiters]
    assert api.ledger_writes == 0  # the cache showed every slot taken: nothing asked

    for i in range(3):  # the three provisioning hosts phone home
        api.hosts[f"x{i}"] = ("provisioned", str(20 + i))
    handler.catch_up()
    for i in range(3):
        await handler.event(f"x{i}")
    await until(lambda: handler.states("a0", "a1", "a2") == ["provisioning"] * 3)
    await handler.gate.stop()

    assert api.ledger_writes == 1
    assert handler.states("a3", "a4", "a5") == ["available"] * 3  # the oldest three went first
    assert list(handler.gate.waiting) == ["ns/a3", "ns/a4", "ns/a5"]
    assert api.ledger is not None
    assert set(slots.parse_ledger(api.ledger[0])) == {"ns/a0", "ns/a1", "ns/a2"}


async def test_the_heartbeats_of_waiting_and_parked_hosts_wake_nobody(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = _fleet(busy=1, parked=1)
    api.hosts["p"] = ("available", "50")
    handler = Handler(api, 1, monkeypatch)
    await handler.start()
    await handler.event("a0")
    assert "ns/a0" in handler.gate.waiting
    kicks: list[None] = []
    monkeypatch.setattr(handler.gate, "kick", lambda: kicks.append(None))

    parked = _raw("p", "available", "51")
    parked["spec"].pop("image")  # a parked host, no work
    for name, version in (("a0", "200"), ("a0", "201"), ("x0", "11")):
        api.hosts[name] = (api.hosts[name][0], version)  # lastSeen written: a new version
        await handler.event(name)
    await host_handler.plunderhost_event(
        type="MODIFIED", body=cast(kopf.Body, parked), memo=handler.memo, logger=_LOG
    )
    assert kicks == []

    api.hosts["x0"] = ("provisioned", "12")  # that one frees a slot
    await handler.event("x0")
    assert kicks == [None]
    await handler.gate.stop()


async def test_a_host_asking_first_does_not_take_a_slot_an_older_waiter_waits_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = _fleet(busy=1, parked=2)
    handler = Handler(api, 1, monkeypatch)
    await handler.start()
    await handler.event("a0")
    assert list(handler.gate.waiting) == ["ns/a0"]

    api.hosts["x0"] = ("provisioned", "12")  # a slot frees; its event is still on its way
    handler.catch_up()
    await handler.event("a1")  # a newcomer asks first
    await until(lambda: api.hosts["a0"][0] == "provisioning")
    await handler.gate.stop()
    assert api.hosts["a1"][0] == "available"
    assert list(handler.gate.waiting) == ["ns/a1"]


async def test_a_host_that_waited_silently_through_api_trouble_is_told_when_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = _fleet(busy=0, parked=1)
    handler = Handler(api, 1, monkeypatch)
    await handler.start()
    healthy = api.get

    async def unavailable(*_: Any, **__: Any) -> Any:
        raise _api_error(503)

    api.get = unavailable  # type: ignore[method-assign]
    await handler.event("a0")
    assert handler.gate.waiting_for("ns", "a0") is None  # waits, undecided, without a word
    assert "ns/a0" in handler.gate.waiting and handler.events == []

    api.get = healthy  # type: ignore[method-assign]
    api.hosts["x0"] = ("provisioning", "30")  # meanwhile another took the slot
    handler.catch_up()
    handler.gate.kick()  # the retry after the trouble
    await until(lambda: handler.gate.waiting_for("ns", "a0") is not None)
    await handler.gate.stop()
    assert handler.events == [("a0", slots.WAITING_REASON)]
