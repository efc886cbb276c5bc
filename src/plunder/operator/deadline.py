"""Deadlines of the phases that wait on a host: nothing waits forever.

A host in ``provisioning`` is waited on until its installed OS phones home. kopf runs a timer
only for hosts that match its filter, so only the hosts provisioning at the moment cost a task;
each tick checks the deadline (:func:`hoststate.provisioning_deadline`) and writes the move to
``error`` guarded by the resourceVersion it was decided on, like every other move.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
from lightkube import AsyncClient

from plunder.api.inventory import PlunderHost
from plunder.operator import host as host_handlers
from plunder.reconcile import hoststate

_INFO = PlunderHost.info
CHECK_INTERVAL_S = 15.0


@dataclass
class DeadlineSettings:
    """How long a phase may take; set from ``plunderctl controller`` before kopf starts."""

    provisioning_timeout_s: float = 1800.0
    """From the start of provisioning to the installed OS's phone home. 30 minutes fits an
    emulated host (about 3 minutes for the node image) and real servers whose firmware takes
    minutes to POST at each of their two reboots."""


SETTINGS = DeadlineSettings()


def _provisioning(body: kopf.Body, **_: Any) -> bool:
    return bool(body.get("status", {}).get("state") == "provisioning")


@kopf.timer(
    _INFO.group,
    _INFO.version,
    _INFO.plural,
    interval=CHECK_INTERVAL_S,
    when=_provisioning,
)
async def plunderhost_provisioning_deadline(
    body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Fail the host with ``ProvisioningTimeout`` once its provisioning has taken too long.

    Not while it is paused (its Cluster is being moved): the deadline is taken once it is not.
    """
    if host_handlers.host_paused(memo, body):
        return
    host = PlunderHost.model_validate(dict(body))
    change = hoststate.provisioning_deadline(
        host, datetime.now(UTC), SETTINGS.provisioning_timeout_s
    )
    if change.status is None:
        return
    client: AsyncClient = memo.client
    if not await host_handlers.write_status(client, host, change.status, logger):
        return
    if change.event is not None:
        reason, message, kind = change.event
        kopf.event(body, type=kind, reason=reason, message=message)
    logger.warning("host %s: provisioning timed out", host.spec.boot_mac_address)
