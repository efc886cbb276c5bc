"""PlunderRemediation: reboot an unhealthy Machine's host, then hand the Machine back.

Thin glue: the decisions are :mod:`plunder.reconcile.remediation`'s. A remediation's events
queue it in a work queue of its own; a pass reads the remediation, its Machine, the Machine's
PlunderMachine and that machine's host from the API (remediations are few and passes are
minutes apart, so no cache is kept), decides, and writes in the order the decision module gives:
the reboot ask and the host's unhealthy mark on the PlunderHost (one annotation key each, merge
patches), the hand-back on the Machine (guarded by its resourceVersion), then the status
(guarded too: a 409 decides again). Each pass asks for the next one when the decision's timeout
ends; Cluster API deleting the remediation (the Machine is healthy again) ends it.

The reboot is asked of the power loop (``operator/power.py``) with the annotation ``plunderctl
power cycle`` writes: one power path, whose BMC faults are the host's ``BMCReachable``
condition and events.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.core.resource import NamespacedResource
from lightkube.types import PatchType

from plunder.api.common import CLUSTER_NAME_LABEL
from plunder.api.infrastructure import HOST_ANNOTATION, PlunderMachine
from plunder.api.inventory import UNHEALTHY_ANNOTATION, PlunderHost
from plunder.api.remediation import PlunderRemediation
from plunder.k8s import capi
from plunder.k8s.resources import as_dict, resource_for
from plunder.operator.power import REBOOT_ANNOTATION
from plunder.operator.workqueue import WorkQueue
from plunder.reconcile import remediation as decide
from plunder.reconcile.pause import is_paused

_INFO = PlunderRemediation.info
log = logging.getLogger(__name__)

WORKERS = 4
ERROR_RETRY = 10.0
"""Seconds before trying again after an unexpected error (the API server away, a 409)."""
PAUSED_RETRY = 30.0
"""Seconds between looks at a paused remediation."""

Key = tuple[str, str]


async def _get(
    client: AsyncClient, resource: type[NamespacedResource], name: str, namespace: str
) -> dict[str, Any] | None:
    try:
        return as_dict(await client.get(resource, name, namespace=namespace))
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise


async def _host_of(
    client: AsyncClient, machine: dict[str, Any] | None, namespace: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """The Machine's PlunderMachine, its host's name and the host, as far as they exist."""
    ref = ((machine or {}).get("spec") or {}).get("infrastructureRef") or {}
    if ref.get("kind") != "PlunderMachine":
        return None, None, None
    plunder_machine = await _get(
        client, resource_for(PlunderMachine), ref.get("name", ""), namespace
    )
    if plunder_machine is None:
        return None, None, None
    model = PlunderMachine.model_validate(plunder_machine)
    annotations = model.metadata.annotations or {}
    host_name = annotations.get(HOST_ANNOTATION) or (
        model.status.host_ref.name if model.status and model.status.host_ref else None
    )
    if host_name is None:
        return plunder_machine, None, None
    host = await _get(client, resource_for(PlunderHost), host_name, namespace)
    return plunder_machine, host, host_name


async def _paused(client: AsyncClient, remediation: PlunderRemediation, namespace: str) -> bool:
    labels = remediation.metadata.labels or {}
    cluster_name = labels.get(CLUSTER_NAME_LABEL)
    cluster = await _get(client, capi.Cluster, cluster_name, namespace) if cluster_name else None
    cluster_paused = bool(((cluster or {}).get("spec") or {}).get("paused"))
    return is_paused(remediation.metadata.annotations or {}, cluster_paused)


async def _annotate_host(
    client: AsyncClient, host: str, namespace: str, key: str, value: str
) -> None:
    await client.patch(
        resource_for(PlunderHost),
        host,
        {"metadata": {"annotations": {key: value}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


async def remediate(client: AsyncClient, key: Key) -> float | None:
    """One pass over one remediation; the seconds until the next, or None."""
    namespace, name = key
    body = await _get(client, resource_for(PlunderRemediation), name, namespace)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    remediation = PlunderRemediation.model_validate(body)
    if await _paused(client, remediation, namespace):
        return PAUSED_RETRY
    owner = capi.owner_named((body.get("metadata") or {}).get("ownerReferences"), "Machine")
    machine = await _get(client, capi.Machine, owner["name"], namespace) if owner else None
    plunder_machine, host, host_name = await _host_of(client, machine, namespace)
    target = decide.target_of(machine, plunder_machine, host, host_name)
    step = decide.decide(remediation, target, datetime.now(UTC))
    if step.reboot and target.host is not None:
        # The value plunderctl power cycle writes: the power loop removes the ask it did.
        await _annotate_host(
            client, target.host, namespace, REBOOT_ANNOTATION, str(int(time.time()))
        )
    if step.mark_unhealthy is not None and target.host is not None:
        await _annotate_host(
            client, target.host, namespace, UNHEALTHY_ANNOTATION, step.mark_unhealthy
        )
        if host is not None:
            kopf.event(
                kopf.Body(cast(Any, host)),
                type="Warning",
                reason="MarkedUnhealthy",
                message=f"{step.mark_unhealthy}; no machine claims this host until someone "
                f"removes its annotation {UNHEALTHY_ANNOTATION}",
            )
    if step.hand_back is not None and machine is not None:
        await _hand_back(client, machine, step.hand_back, namespace)
    if step.status is not None:
        await client.patch(
            resource_for(PlunderRemediation).Status,
            name,
            {
                "metadata": {"resourceVersion": remediation.metadata.resource_version},
                "status": step.status,
            },
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    if step.event is not None:
        reason, message, kind = step.event
        kopf.event(kopf.Body(cast(Any, body)), type=kind, reason=reason, message=message)
    return step.requeue_after


async def _hand_back(
    client: AsyncClient, machine: dict[str, Any], message: str, namespace: str
) -> None:
    """``OwnerRemediated=False`` on the Machine, guarded; a 409 reads it again (five tries)."""
    name = (machine.get("metadata") or {}).get("name", "")
    fresh: dict[str, Any] | None = machine
    for attempt in range(5):
        if fresh is None:
            return
        patch = decide.owner_remediated_patch(fresh, message, datetime.now(UTC))
        if patch is None:
            return
        try:
            await client.patch(
                capi.Machine.Status, name, patch, namespace=namespace, patch_type=PatchType.MERGE
            )
            return
        except ApiError as error:
            if error.status.code == 404:
                return
            if error.status.code != 409 or attempt == 4:
                raise
        fresh = await _get(client, capi.Machine, name, namespace)


class RemediationController:
    """The work queue of PlunderRemediations."""

    def __init__(self, memo: kopf.Memo) -> None:
        self.memo = memo
        self.queue: WorkQueue[Key] = WorkQueue(self.round, WORKERS, ERROR_RETRY)

    async def round(self, key: Key) -> float | None:
        """One pass; the API's refusals are logged and retried."""
        try:
            return await remediate(self.memo.client, key)
        except ApiError as error:
            log.warning("remediation %s/%s: %s; retrying", *key, error.status.message)
            return ERROR_RETRY


@kopf.on.startup()
async def start_remediation_controller(memo: kopf.Memo, **_: Any) -> None:
    """One queue of remediations, shared by the handlers through the memo."""
    memo.remediations = RemediationController(memo)


@kopf.on.cleanup()
async def stop_remediation_controller(memo: kopf.Memo, **_: Any) -> None:
    """Stop the passes (one in flight is cancelled; the next run resumes from the API)."""
    controller: RemediationController = memo.remediations
    await controller.queue.stop()


@kopf.on.event(_INFO.group, _INFO.version, _INFO.plural)
async def plunderremediation_event(
    type: str | None, body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """A remediation was made or changed: queue it; Cluster API deleted it: its Machine healed."""
    controller: RemediationController = memo.remediations
    key = (namespace or "", name)
    if type == "DELETED":
        controller.queue.forget(key)
        healed = decide.healed_event(PlunderRemediation.model_validate(dict(body)))
        if healed is not None:
            reason, message, kind = healed
            kopf.event(body, type=kind, reason=reason, message=message)
    else:
        controller.queue.add(key)
