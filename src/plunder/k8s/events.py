"""Kubernetes Events: what a person should see (``kubectl get events``, ``describe``)."""

from __future__ import annotations

import logging
import secrets
from datetime import UTC, datetime
from typing import Literal

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

log = logging.getLogger(__name__)


async def post_event(
    client: AsyncClient,
    involved: ObjectReference,
    reason: str,
    message: str,
    kind: Literal["Normal", "Warning"] = "Normal",
    component: str = "plunder-boot",
) -> None:
    """Record an Event about ``involved``; a failure to record is logged, never raised."""
    now = datetime.now(UTC)
    name = f"{involved.name}.{secrets.token_hex(6)}"
    event = Event(
        metadata=ObjectMeta(name=name, namespace=involved.namespace),
        involvedObject=involved,
        reason=reason,
        message=message,
        type=kind,
        source=EventSource(component=component),
        firstTimestamp=now,
        lastTimestamp=now,
        count=1,
    )
    try:
        await client.create(event)
    except ApiError as error:
        log.warning("event %s for %s not recorded: %s", reason, involved.name, error)
