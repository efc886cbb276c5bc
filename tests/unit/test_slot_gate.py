"""The controller's slot gate over a fake API that keeps resourceVersions as the real one does.

Two gates over one API stand for two controller processes (a replica that still thinks it
leads): whatever their caches show, the ledger's guard lets only one of two grants decided on
the same ledger land. A host's move after its grant is decided on the copy read at its turn, not
the stale one it asked with (issue #14), and a waiting host's own events keep its place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import httpx2
import kopf
import pytest
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap

from plunder.api.inventory import PlunderHost
from plunder.operator import host as host_handler
from plunder.operator.controller_settings import SlotSettings
from plunder.operator.slots import ProvisioningSlots
from plunder.reconcile import hoststate, slots
from plunder.reconcile.selection import HostCandidate

if TYPE_CHECKING:
    from plunder.operator.slots import Answer


def _api_error(code: int) -> ApiError:
    response = httpx2.Response(code, json={"code": code, "message": str(code)})
    return ApiError(response=response)


IMAGE = {"url": "http://172.31.99.1:8080/files/os.raw.gz", "checksum": "a" * 64}


class FakeAPI:
    """A ConfigMap and hosts, each with a resourceVersion; a guarded patch at another is a 409."""

    def __init__(self, hosts: Mapping[str, tuple[str, str]]) -> None:
        self.hosts = dict(hosts)
        """name → (state, resourceVersion)."""
        self.ledger: tuple[dict[str, str], int] | None = None
        self.calls = 0
        """Requests made (reads and writes)."""

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> Any:
        self.calls += 1
        await asyncio.sleep(0)  # let the other process run between the read and the write
        if resource is ConfigMap:
            if self.ledger is None:
                raise _api_error(404)
            data, counter = self.ledger
            return ConfigMap.from_dict(
                {"metadata": {"name": name, "resourceVersion": str(counter)}, "data": data}
            )
        if name not in self.hosts:
            raise _api_error(404)
        state, version = self.hosts[name]
        return _HostBody(name, state, version)

    async def create(self, obj: ConfigMap) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.ledger is not None:
            raise _api_error(409)
        self.ledger = (dict(obj.data or {}), 1)

    async def patch(self, resource: Any, name: str, patch: dict[str, Any], **_: Any) -> None:
        self.calls += 1
        await asyncio.sleep(0)
        if resource is not ConfigMap:  # a host's status: the move
            state, version = self.hosts[name]
            if patch["metadata"]["resourceVersion"] != version:
                raise _api_error(409)
            self.hosts[name] = (patch["status"].get("state", state), str(int(version) + 100))
            return
        assert self.ledger is not None
        if patch["metadata"]["resourceVersion"] != str(self.ledger[1]):
            raise _api_error(409)
        self.ledger = (dict(patch["data"]), self.ledger[1] + 1)


def _raw(name: str, state: str, version: str) -> dict[str, Any]:
    """A host with an image to install (available: its move takes a slot)."""
    return {
        "apiVersion": "metal.plunder.dev/v1alpha1",
        "kind": "PlunderHost",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"u-{name}",
            "resourceVersion": version,
        },
        "spec": {"bootMACAddress": "00:50:56:a5:11:01", "image": IMAGE},
        "status": {"state": state},
    }


class _HostBody:
    def __init__(self, name: str, state: str, version: str) -> None:
        self.body = _raw(name, state, version)

    def to_dict(self) -> dict[str, Any]:
        return self.body


def _cache(api: FakeAPI) -> dict[str, list[HostCandidate]]:
    """A watch cache, as of now (it does not follow later changes: a lagging cache)."""
    return {
        "ns": [
            HostCandidate(name, "ns", name, version, "00:50:56:a5:11:01", state)
            for name, (state, version) in api.hosts.items()
        ]
    }


def _gate(api: FakeAPI, cache: Mapping[str, Any], limit: int) -> ProvisioningSlots:
    async def move(_: Answer) -> bool:
        return True

    return ProvisioningSlots(
        cast(AsyncClient, api), cache, SlotSettings(limit, "ns"), move, lambda _: None
    )


def _host(name: str, version: str) -> PlunderHost:
    return PlunderHost.model_validate(_raw(name, "available", version))


def _decision(answer: Answer | None) -> slots.Decision | None:
    return answer.turn.decision if answer is not None else None


async def test_two_processes_deciding_at_once_grant_one_slot() -> None:
    api = FakeAPI({"a": ("available", "1"), "b": ("available", "2")})
    first, second = _gate(api, _cache(api), 1), _gate(api, _cache(api), 1)
    answers = await asyncio.gather(first.request(_host("a", "1")), second.request(_host("b", "2")))
    assert sorted(bool(answer and answer.turn.granted) for answer in answers) == [False, True]
    assert api.ledger is not None
    assert len(slots.parse_ledger(api.ledger[0])) == 1


async def test_a_cache_that_lags_never_frees_a_slot_the_api_shows_held() -> None:
    api = FakeAPI({"a": ("available", "0"), "b": ("available", "2")})
    lagging = _cache(api)  # the other process's cache, from before a changed
    api.hosts["a"] = ("available", "1")
    granted = _decision(await _gate(api, _cache(api), 1).request(_host("a", "1")))
    assert granted is not None and granted.granted
    other = _gate(api, lagging, 1)
    # a's move in flight, then landed: the lagging cache shows a free, the API does not
    for truth in (("available", "1"), ("provisioning", "3")):
        api.hosts["a"] = truth
        refused = _decision(await other.request(_host("b", "2")))
        assert refused is not None and not refused.granted, truth
        assert refused.message == "1 of 1 provisioning slots in use; waiting"
    api.hosts["a"] = ("provisioned", "4")  # it phoned home: the slot is free
    granted = _decision(await other.request(_host("b", "2")))
    assert granted is not None and granted.granted
    assert granted.ledger == {"ns/b": "2"}  # a's entry dropped


async def test_a_cache_that_shows_the_grant_still_in_flight_keeps_the_slot() -> None:
    """The safe direction: an entry looks held until the cache (or the API) shows it left."""
    api = FakeAPI({"a": ("available", "1"), "b": ("available", "2")})
    before_the_move = _cache(api)
    first = _decision(await _gate(api, _cache(api), 1).request(_host("a", "1")))
    assert first is not None and first.granted
    api.hosts["a"] = ("provisioned", "4")
    refused = _decision(await _gate(api, before_the_move, 1).request(_host("b", "2")))
    assert refused is not None and not refused.granted
    caught_up = _decision(await _gate(api, _cache(api), 1).request(_host("b", "2")))
    assert caught_up is not None and caught_up.granted


async def test_an_api_in_trouble_leaves_the_request_undecided() -> None:
    api = FakeAPI({"a": ("available", "1")})

    async def unavailable(*_: Any, **__: Any) -> Any:
        raise _api_error(503)

    api.get = unavailable  # type: ignore[method-assign]
    gate = _gate(api, _cache(api), 1)
    assert await gate.request(_host("a", "1")) is None


async def test_a_grant_asked_with_a_stale_copy_is_decided_on_the_fresh_one() -> None:
    # ns/a asked at version 1; its lastSeen was written while it waited for its turn
    api = FakeAPI({"a": ("available", "5")})
    answer = await _gate(api, _cache(api), 1).request(_host("a", "1"))
    assert answer is not None and answer.turn.granted
    assert answer.turn.host is not None and answer.turn.host.metadata.resource_version == "5"
    assert answer.body is not None and answer.body["metadata"]["resourceVersion"] == "5"
    assert api.ledger is not None and slots.parse_ledger(api.ledger[0]) == {"ns/a": "5"}


async def test_a_grant_asked_by_a_host_gone_meanwhile_takes_no_slot() -> None:
    api = FakeAPI({})
    answer = await _gate(api, _cache(api), 1).request(_host("a", "1"))
    assert answer is not None and answer.body is None and not answer.turn.granted
    assert api.ledger is None


class _Controller:
    """The host handler's move over the fake API: the gate, its wake-ups, the Events posted."""

    def __init__(self, api: FakeAPI, limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.api = api
        self.cache = _cache(api)
        self.memo = kopf.Memo()
        self.woken: list[str] = []
        self.decided = asyncio.Event()
        self.events: list[tuple[str, str]] = []

        async def move(answer: Answer) -> bool:
            written = await host_handler.carry_out(answer, cast(AsyncClient, api), _LOG)
            assert answer.body is not None
            self.woken.append(answer.body["metadata"]["name"])
            self.decided.set()
            return written

        self.memo.client = api
        self.memo.slots = ProvisioningSlots(
            cast(AsyncClient, api), self.cache, SlotSettings(limit, "ns"), move, lambda _: None
        )
        monkeypatch.setattr(kopf, "event", self._event)

    def _event(self, body: Any, *, type: str, reason: str, message: str) -> None:
        self.events.append((body["metadata"]["name"], reason))

    @property
    def gate(self) -> ProvisioningSlots:
        gate: ProvisioningSlots = self.memo.slots
        return gate

    async def event(self, name: str) -> None:
        """The host's event, with its copy as the API has it now."""
        state, version = self.api.hosts[name]
        await host_handler.move_host(_raw(name, state, version), self.memo, _LOG)

    def cache_catches_up(self) -> None:
        self.cache["ns"] = _cache(self.api)["ns"]


_LOG = cast(kopf.Logger, logging.getLogger("test"))


async def test_a_move_granted_after_a_long_wait_lands_on_the_fresh_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue #14: the move, decided on the event's copy, met a 409 after every grant."""
    api = FakeAPI({"a": ("available", "5")})
    controller = _Controller(api, 1, monkeypatch)
    # the event that asked carries version 1; by its turn the host is at version 5
    await host_handler.move_host(_raw("a", "available", "1"), controller.memo, _LOG)
    assert api.hosts["a"][0] == "provisioning"
    assert controller.events == [("a", hoststate.PROVISION_REASON)]
    assert not controller.gate.waiting


async def test_a_waiters_heartbeat_keeps_its_place_and_only_the_wake_task_decides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeAPI({"x": ("provisioning", "1"), "a": ("available", "2"), "b": ("available", "3")})
    controller = _Controller(api, 1, monkeypatch)
    gate = controller.gate
    await controller.event("a")
    await controller.event("b")
    assert list(gate.waiting) == ["ns/a", "ns/b"]
    first_since = gate.waiting["ns/a"].since

    # a's parked agent writes lastSeen: its event asks nothing of the API and keeps a first
    api.hosts["a"] = ("available", "4")
    calls = api.calls
    await controller.event("a")
    assert api.calls == calls
    assert gate.waiting["ns/a"].since == first_since
    assert gate.waiting["ns/a"].body["metadata"]["resourceVersion"] == "4"
    assert sorted(gate.waiting, key=lambda key: gate.waiting[key].since) == ["ns/a", "ns/b"]

    # x phoned home: its event wakes the waiters, the oldest is decided on a fresh copy
    api.hosts["x"] = ("provisioned", "9")
    api.hosts["a"] = ("available", "6")  # and a heartbeat landed since its last event
    controller.cache_catches_up()
    gate.kick()
    await asyncio.wait_for(controller.decided.wait(), timeout=5)
    await gate.stop()
    assert controller.woken[0] == "a"  # the oldest first (b, tried next, is refused)
    assert api.hosts["a"][0] == "provisioning"
    assert api.hosts["b"][0] == "available"
    assert list(gate.waiting) == ["ns/b"]


async def test_a_waiter_whose_work_was_taken_away_stops_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = FakeAPI({"x": ("provisioning", "1"), "a": ("available", "2")})
    controller = _Controller(api, 1, monkeypatch)
    await controller.event("a")
    assert "ns/a" in controller.gate.waiting
    released = _raw("a", "available", "3")
    released["spec"].pop("image")
    await host_handler.move_host(released, controller.memo, _LOG)
    assert not controller.gate.waiting
