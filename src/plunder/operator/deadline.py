"""Deadlines of the phases that wait on a host: nothing waits forever.

A host in ``provisioning`` is waited on until its installed OS phones home, one in
``deprovisioning`` until its agent reports the wipe. kopf runs a timer only for hosts that match
its filter, so only the hosts in those two states cost a task; each tick checks the deadline
(:func:`hoststate.provisioning_deadline`: the move to ``error``;
:func:`hoststate.deprovisioning_deadline`: deprovisioning begun again, so power-cycled again) and
writes it guarded by the resourceVersion it was decided on, like every other move. A paused host
is not timed (its Cluster may be paused for ``clusterctl move``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf
from lightkube import AsyncClient

from plunder.api.inventory import PAUSED_ANNOTATION, PlunderHost
from plunder.operator import host as host_handlers
from plunder.operator.controller_settings import DeadlineSettings
from plunder.reconcile import hoststate

_INFO = PlunderHost.info
CHECK_INTERVAL_S = 15.0


SETTINGS = DeadlineSettings()
"""What this process uses: set from ``plunderctl controller`` before kopf starts."""


def _waiting_on_the_host(body: kopf.Body, **_: Any) -> bool:
    paused = PAUSED_ANNOTATION in (body.get("metadata", {}).get("annotations") or {})
    return not paused and body.get("status", {}).get("state") in ("provisioning", "deprovisioning")


@kopf.timer(
    _INFO.group,
    _INFO.version,
    _INFO.plural,
    interval=CHECK_INTERVAL_S,
    when=_waiting_on_the_host,
)
async def plunderhost_deadline(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Fail a host whose provisioning took too long; power-cycle again one whose wipe did."""
    host = PlunderHost.model_validate(dict(body))
    now = datetime.now(UTC)
    if hoststate.state_of(host) == "provisioning":
        change = hoststate.provisioning_deadline(host, now, SETTINGS.provisioning_timeout_s)
    else:
        change = hoststate.deprovisioning_deadline(host, now, SETTINGS.deprovisioning_timeout_s)
    if change.status is None:
        return
    client: AsyncClient = memo.client
    if not await host_handlers.write_status(client, host, change.status, logger):
        return
    if change.event is not None:
        reason, message, kind = change.event
        kopf.event(body, type=kind, reason=reason, message=message)
        logger.warning("host %s: %s", host.spec.boot_mac_address, message)
