"""Deadlines of the phases that wait on a host: nothing waits forever.

A host in ``provisioning`` is waited on until its installed OS phones home, one in
``deprovisioning`` until its agent reports the wipe. kopf runs a timer only for hosts that match
its filter, so only the hosts in those two states cost a task; each tick checks the deadline
(:func:`hoststate.provisioning_deadline`: the move to ``error``;
:func:`hoststate.deprovisioning_deadline`: deprovisioning begun again, so power-cycled again) and
writes it guarded by the resourceVersion it was decided on, like every other move.
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

    deprovisioning_timeout_s: float = 900.0
    """From the start of deprovisioning to the agent's report of the wipe; then the host is
    power-cycled again. A wipe is a power cycle, a network boot into the agent and a few writes:
    about 2 minutes on an emulated host; 15 minutes leaves room for slow firmware."""


SETTINGS = DeadlineSettings()


def _waiting_on_the_host(body: kopf.Body, **_: Any) -> bool:
    return body.get("status", {}).get("state") in ("provisioning", "deprovisioning")


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
