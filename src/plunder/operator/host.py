"""PlunderHost handlers: the controller's moves of the host state machine.

Every event of a host (status changes included: the boot service moves hosts too) is run
through ``hoststate.controller_transition``; a move is written with the resourceVersion the
decision was made on, so a write that raced another writer fails and is decided again on the
next event instead of overwriting newer state. The move is the only write: what the host's BMC
must do follows from the new state, and the power loop (:mod:`plunder.operator.power`) does it.

A move into ``provisioning`` or ``deprovisioning`` first takes one of the provisioning slots
(:mod:`plunder.operator.slots`); without one the host stays where it is and waits, and is decided
again when a slot frees. A granted move is the one decided on the copy the slot gate read at the
host's turn, guarded by that copy's resourceVersion, not the event's copy, which may have gone
stale while the request waited its turn. A waiting host's own events only refresh the copy it
waits with: the gate's granter alone decides waiters, oldest first, and writes their moves
(:func:`carry_out`, the same write as a move granted to a host's own request).

A paused host (:mod:`plunder.reconcile.statusrecord`) is not moved, and neither is one that
arrived by ``clusterctl move`` and waits for its status to be rebuilt
(:mod:`plunder.operator.restore`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import httpx2
import kopf
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.client import async_client
from plunder.k8s.resources import resource_for
from plunder.operator import controller_settings
from plunder.operator import slots as slot_gate
from plunder.reconcile import hoststate, slots, statusrecord

_INFO = PlunderHost.info
log = logging.getLogger(__name__)


@kopf.on.startup()
async def open_client(memo: kopf.Memo, **kwargs: Any) -> None:
    """One API client for the handlers' own writes, and the provisioning slots that use it."""
    memo.client = async_client(
        field_manager="plunder-controller", limits=controller_settings.SETTINGS.client
    )

    async def move(answer: slot_gate.Answer) -> bool:
        return await carry_out(answer, memo.client, log)

    def wake_machine(key: tuple[str, str]) -> None:
        machines = getattr(memo, "machines", None)  # the machine controller, once it runs
        if machines is not None:
            machines.wakeups.wake(key)

    memo.slots = slot_gate.ProvisioningSlots(
        memo.client, kwargs["plunderhosts_by_namespace"], slot_gate.SETTINGS, move, wake_machine
    )


@kopf.on.cleanup()
async def close_client(memo: kopf.Memo, **_: Any) -> None:
    """Close it on the way out."""
    await memo.slots.stop()
    client: AsyncClient = memo.client
    await client.close()


@kopf.on.event(_INFO.group, _INFO.version, _INFO.plural)
async def plunderhost_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Move the host if the controller's part of the state machine says so.

    The slot gate notes the event first: if it frees a slot (the host left a slot state, or is
    gone), the waiters are decided again; a heartbeat wakes nobody.
    """
    gate: slot_gate.ProvisioningSlots = memo.slots
    meta = body.get("metadata", {})
    gone = type == "DELETED" or bool(meta.get("deletionTimestamp"))
    if gone:
        gate.stop_waiting(meta.get("namespace", ""), meta.get("name", ""))
    gate.observe(body, gone=gone)
    if not gone:
        await move_host(dict(body), memo, logger)


async def move_host(body: Mapping[str, Any], memo: kopf.Memo, logger: kopf.Logger) -> None:
    """Decide the host's move and write it; a move into a slot state takes a slot first.

    A waiting host's own events do not ask again: the slot gate's granter decides it.
    """
    gate: slot_gate.ProvisioningSlots = memo.slots
    host = PlunderHost.model_validate(dict(body))
    namespace, name = host.metadata.namespace or "", host.metadata.name or ""
    if statusrecord.is_paused(host) or statusrecord.awaits_restore(host):
        gate.stop_waiting(namespace, name)  # resumed or rebuilt, its next event decides it
        return
    change = hoststate.controller_decision(host, datetime.now(UTC))
    if change.status is None:
        gate.stop_waiting(namespace, name)
        return
    status = change.status
    if slots.takes_slot(hoststate.state_of(host), status.get("state")):
        if gate.refresh(body):
            return
        answer = await gate.request(host, body)
        if answer is None:
            gate.wait(body, None)
            return
        turn = answer.turn
        if answer.body is None or turn.host is None:  # gone meanwhile
            gate.stop_waiting(namespace, name)
            return
        if not turn.granted:
            gate.wait(answer.body, turn.decision)
            return
        gate.stop_waiting(namespace, name)
        await carry_out(answer, memo.client, logger)
        return
    await write_move(body, host, change, memo.client, logger)


async def carry_out(answer: slot_gate.Answer, client: AsyncClient, logger: kopf.Logger) -> bool:
    """Write the move a slot was granted for (decided on the gate's fresh copy); whether it was.

    A fresh copy that needs no move (any more) is done, and counts as written.
    """
    turn = answer.turn
    if answer.body is None or turn.host is None or turn.change.status is None:
        return True
    return await write_move(answer.body, turn.host, turn.change, client, logger)


async def write_move(
    body: Mapping[str, Any],
    host: PlunderHost,
    change: hoststate.Change,
    client: AsyncClient,
    logger: kopf.Logger,
) -> bool:
    """Write ``change`` (decided on ``host``, whose raw copy is ``body``) and post its Event."""
    status = change.status
    if status is None:
        return True
    if not await write_status(client, host, status, logger):
        return False
    if change.event is not None:
        reason, message, kind = change.event
        kopf.event(kopf.Body(cast(Any, body)), type=kind, reason=reason, message=message)
    logger.info(
        "host %s: %s → %s",
        host.spec.boot_mac_address,
        hoststate.state_of(host),
        status.get("state"),
    )
    return True


_WRITE_ATTEMPTS = 5


async def write_status(
    client: AsyncClient,
    host: PlunderHost,
    status: dict[str, Any],
    logger: kopf.Logger,
) -> bool:
    """Write the move, guarded by the resourceVersion it was decided on; whether it was written.

    An event handler is not retried by kopf, and a host may send no other event for a long time
    (a parked agent), so a transient failure (a busy API server, a full connection pool) is
    retried here with a growing delay. A conflict or a deleted host ends it: the next event, if
    any, decides again.
    """
    for attempt in range(_WRITE_ATTEMPTS):
        try:
            await client.patch(
                resource_for(PlunderHost).Status,
                host.metadata.name or "",
                {"metadata": {"resourceVersion": host.metadata.resource_version}, "status": status},
                namespace=host.metadata.namespace,
                patch_type=PatchType.MERGE,
            )
            return True
        except ApiError as error:
            if error.status.code in (404, 409):
                return False
            if error.status.code != 429 and (error.status.code or 0) < 500:
                raise
            problem = f"{error.status.code} {error.status.message}"
        except httpx2.TransportError as error:
            problem = f"{type(error).__name__}: {error}"
        logger.warning("host %s: status not written (%s); retrying", host.metadata.name, problem)
        await asyncio.sleep(0.5 * 2**attempt)
    return False
