"""PlunderHost handlers: the controller's moves of the host state machine.

Every event of a host (status changes included: the boot service moves hosts too) is run
through ``hoststate.controller_transition``; a move is written with the resourceVersion the
decision was made on, so a write that raced another writer fails and is decided again on the
next event instead of overwriting newer state.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.client import async_client
from plunder.k8s.resources import resource_for
from plunder.reconcile import hoststate

_INFO = PlunderHost.info
log = logging.getLogger(__name__)


@kopf.on.startup()
async def open_client(memo: kopf.Memo, **_: Any) -> None:
    """One API client for the handlers' own writes."""
    memo.client = async_client(field_manager="plunder-controller")


@kopf.on.cleanup()
async def close_client(memo: kopf.Memo, **_: Any) -> None:
    """Close it on the way out."""
    client: AsyncClient = memo.client
    await client.close()


@kopf.on.event(_INFO.group, _INFO.version, _INFO.plural)
async def plunderhost_event(
    type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Move the host if the controller's part of the state machine says so."""
    if type == "DELETED" or body.get("metadata", {}).get("deletionTimestamp"):
        return
    host = PlunderHost.model_validate(dict(body))
    change = hoststate.controller_transition(host, datetime.now(UTC))
    if change.status is None:
        return
    client: AsyncClient = memo.client
    try:
        await client.patch(
            resource_for(PlunderHost).Status,
            host.metadata.name or "",
            {
                "metadata": {"resourceVersion": host.metadata.resource_version},
                "status": change.status,
            },
            namespace=host.metadata.namespace,
            patch_type=PatchType.MERGE,
        )
    except ApiError as error:
        if error.status.code == 409:  # someone wrote first: the next event decides again
            return
        raise
    if change.event is not None:
        reason, message, kind = change.event
        kopf.event(body, type=kind, reason=reason, message=message)
    logger.info(
        "host %s: %s → %s",
        host.spec.boot_mac_address,
        hoststate.state_of(host),
        change.status.get("state"),
    )
