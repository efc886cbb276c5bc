"""The controller's slot gate over a fake API that keeps resourceVersions as the real one does.

Two gates over one API stand for two controller processes (a replica that still thinks it
leads): whatever their caches show, the ledger's guard lets only one of two grants decided on
the same ledger land.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import httpx2
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import ConfigMap

from plunder.api.inventory import PlunderHost
from plunder.operator.slots import ProvisioningSlots, SlotSettings
from plunder.reconcile import slots
from plunder.reconcile.selection import HostCandidate


def _api_error(code: int) -> ApiError:
    response = httpx2.Response(code, json={"code": code, "message": str(code)})
    return ApiError(response=response)


class FakeAPI:
    """A ConfigMap and hosts, each with a resourceVersion; a guarded patch at another is a 409."""

    def __init__(self, hosts: Mapping[str, tuple[str, str]]) -> None:
        self.hosts = dict(hosts)
        """name → (state, resourceVersion)."""
        self.ledger: tuple[dict[str, str], int] | None = None

    async def get(self, resource: Any, name: str, namespace: str | None = None) -> Any:
        await asyncio.sleep(0)  # let the other process run between the read and the write
        if resource is ConfigMap:
            if self.ledger is None:
                raise _api_error(404)
            data, counter = self.ledger
            return ConfigMap.from_dict(
                {"metadata": {"name": name, "resourceVersion": str(counter)}, "data": data}
            )
        state, version = self.hosts[name]
        return _HostBody(name, state, version)

    async def create(self, obj: ConfigMap) -> None:
        await asyncio.sleep(0)
        if self.ledger is not None:
            raise _api_error(409)
        self.ledger = (dict(obj.data or {}), 1)

    async def patch(self, resource: Any, name: str, patch: dict[str, Any], **_: Any) -> None:
        await asyncio.sleep(0)
        assert self.ledger is not None
        if patch["metadata"]["resourceVersion"] != str(self.ledger[1]):
            raise _api_error(409)
        self.ledger = (dict(patch["data"]), self.ledger[1] + 1)


class _HostBody:
    def __init__(self, name: str, state: str, version: str) -> None:
        self.body = {
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": version},
            "status": {"state": state},
        }

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
    async def retry(_: Mapping[str, Any]) -> None:
        return None

    return ProvisioningSlots(
        cast(AsyncClient, api), cache, SlotSettings(limit, "ns"), retry, lambda _: None
    )


def _host(name: str, version: str) -> PlunderHost:
    return PlunderHost.model_validate(
        {
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": version},
            "spec": {"bootMACAddress": "00:50:56:a5:11:01"},
            "status": {"state": "available"},
        }
    )


async def test_two_processes_deciding_at_once_grant_one_slot() -> None:
    api = FakeAPI({"a": ("available", "1"), "b": ("available", "2")})
    first, second = _gate(api, _cache(api), 1), _gate(api, _cache(api), 1)
    answers = await asyncio.gather(first.request(_host("a", "1")), second.request(_host("b", "2")))
    assert sorted(bool(answer and answer.granted) for answer in answers) == [False, True]
    assert api.ledger is not None
    assert len(slots.parse_ledger(api.ledger[0])) == 1


async def test_a_cache_that_lags_never_frees_a_slot_the_api_shows_held() -> None:
    api = FakeAPI({"a": ("available", "0"), "b": ("available", "2")})
    lagging = _cache(api)  # the other process's cache, from before a changed
    api.hosts["a"] = ("available", "1")
    granted = await _gate(api, _cache(api), 1).request(_host("a", "1"))
    assert granted is not None and granted.granted
    other = _gate(api, lagging, 1)
    # a's move in flight, then landed: the lagging cache shows a free, the API does not
    for truth in (("available", "1"), ("provisioning", "3")):
        api.hosts["a"] = truth
        refused = await other.request(_host("b", "2"))
        assert refused is not None and not refused.granted, truth
        assert refused.message == "1 of 1 provisioning slots in use; waiting"
    api.hosts["a"] = ("provisioned", "4")  # it phoned home: the slot is free
    granted = await other.request(_host("b", "2"))
    assert granted is not None and granted.granted
    assert granted.ledger == {"ns/b": "2"}  # a's entry dropped


async def test_a_cache_that_shows_the_grant_still_in_flight_keeps_the_slot() -> None:
    """The safe direction: an entry looks held until the cache (or the API) shows it left."""
    api = FakeAPI({"a": ("available", "1"), "b": ("available", "2")})
    before_the_move = _cache(api)
    assert (await _gate(api, _cache(api), 1).request(_host("a", "1"))).granted  # type: ignore[union-attr]
    api.hosts["a"] = ("provisioned", "4")
    refused = await _gate(api, before_the_move, 1).request(_host("b", "2"))
    assert refused is not None and not refused.granted
    caught_up = await _gate(api, _cache(api), 1).request(_host("b", "2"))
    assert caught_up is not None and caught_up.granted


async def test_an_api_in_trouble_leaves_the_request_undecided() -> None:
    api = FakeAPI({"a": ("available", "1")})

    async def unavailable(*_: Any, **__: Any) -> Any:
        raise _api_error(503)

    api.get = unavailable  # type: ignore[method-assign]
    gate = _gate(api, _cache(api), 1)
    assert await gate.request(_host("a", "1")) is None
