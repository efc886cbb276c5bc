"""A deleted machine's release pass: which hosts it still waits for before its finalizer goes."""

from __future__ import annotations

from typing import Any

import pytest

from plunder.operator import machine_delete
from plunder.reconcile.selection import Consumer

CONSUMER = Consumer("PlunderMachine", "ns", "m1")
MACHINE = {"metadata": {"name": "m1", "namespace": "ns", "finalizers": [machine_delete.FINALIZER]}}


class _Found:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_dict(self) -> dict[str, Any]:
        return self.body


class StubClient:
    """Answers ``get`` with one host body; records patches."""

    def __init__(self, host: dict[str, Any]) -> None:
        self.host = host
        self.patches: list[Any] = []

    async def get(self, *_: Any, **__: Any) -> _Found:
        return _Found(self.host)

    async def patch(self, *args: Any, **kwargs: Any) -> None:
        self.patches.append((args, kwargs))


def host(state: str, consumer: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"bootMACAddress": "00:50:56:a5:11:20"}
    if consumer:
        spec["consumerRef"] = {"kind": "PlunderMachine", "namespace": "ns", "name": consumer}
    return {
        "metadata": {"name": "h1", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
        "spec": spec,
        "status": {"state": state, "errorReason": "WipeFailed", "errorMessage": "zeroing failed"},
    }


@pytest.fixture(autouse=True)
def no_events(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    posted: list[Any] = []
    monkeypatch.setattr(machine_delete, "post", lambda _, events: posted.extend(events))
    return posted


async def test_a_released_host_that_failed_holds_the_machine_until_it_is_wiped(
    no_events: list[Any],
) -> None:
    client = StubClient(host("error"))
    pending = await machine_delete.release_step(client, MACHINE, CONSUMER, {"h1"})  # type: ignore[arg-type]
    assert pending == {"h1"}, "the finalizer must stay while the failed host is unwiped"
    assert [reason for reason, _, _ in no_events] == ["WipeFailed"]


@pytest.mark.parametrize("state", ["provisioning", "provisioned", "deprovisioning", "error"])
async def test_a_claimed_host_is_released_and_waited_for(state: str) -> None:
    client = StubClient(host(state, consumer="m1"))
    pending = await machine_delete.release_step(client, MACHINE, CONSUMER, {"h1"})  # type: ignore[arg-type]
    assert pending == {"h1"} and len(client.patches) == 1


@pytest.mark.parametrize("state", ["available", "discovered"])
async def test_a_wiped_or_never_written_host_lets_the_machine_go(state: str) -> None:
    client = StubClient(host(state))
    assert await machine_delete.release_step(client, MACHINE, CONSUMER, {"h1"}) == set()  # type: ignore[arg-type]


async def test_a_host_claimed_by_another_machine_is_not_waited_for() -> None:
    client = StubClient(host("provisioning", consumer="m2"))
    assert await machine_delete.release_step(client, MACHINE, CONSUMER, {"h1"}) == set()  # type: ignore[arg-type]
    assert client.patches == []
