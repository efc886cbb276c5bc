"""A host that arrived by ``clusterctl move``: its status rebuilt from its record, first.

clusterctl creates the host on the target with its annotations and without its status. One
that carries a status record (:mod:`plunder.reconcile.statusrecord`) and has no state is held
by every other part until this handler has written its status: the host handler does not move
it, the power loop does not touch its BMC, the machine controller neither releases nor mirrors
it, and the boot service tells it to ask again. The write is guarded by the resourceVersion the
record was read on, as every move is; a record that does not fit the host makes it ``error``
(with a Warning event naming the cause), never a wipe. The baremetal-operator rebuilds a
BareMetalHost's status from ``baremetalhost.metal3.io/status`` the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import kopf

from plunder.api.inventory import PlunderHost
from plunder.operator import host as host_handlers
from plunder.reconcile import statusrecord

_INFO = PlunderHost.info


@kopf.on.event(_INFO.group, _INFO.version, _INFO.plural)
async def plunderhost_restore(
    type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any
) -> None:
    """Rebuild the status of a host that arrived with a record and without a state."""
    if type == "DELETED":
        return
    host = PlunderHost.model_validate(dict(body))
    if not statusrecord.awaits_restore(host):
        return
    change = statusrecord.restore(host, datetime.now(UTC))
    if change.status is None or not await host_handlers.write_status(
        memo.client, host, change.status, logger
    ):
        return  # changed meanwhile: its next event decides again
    if change.event is not None:
        reason, message, kind = change.event
        kopf.event(body, type=kind, reason=reason, message=message)
        logger.info("host %s: %s", host.spec.boot_mac_address, message)
