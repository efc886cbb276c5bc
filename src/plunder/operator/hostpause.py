"""A machine's host paused with its machine and resumed with it: the provider's part of a move.

``clusterctl move`` pauses the Clusters, waits until no object to be moved carries its block-move
annotation, copies the objects to the target and deletes them from the source. A claimed host
carries block-move from its claim on (the claim writes it); when the machine reconcile finds
its machine paused, it pauses the host, records its status and lifts block-move in one write
(:func:`pause`), so clusterctl copies the host only once the record is on it. When the machine
is not paused, one write takes the pause and the record off and puts block-move back
(:func:`resume`); a host that arrived with a record waits for its status to be rebuilt first
(:mod:`plunder.operator.restore`). CAPM3's ``SetPauseAnnotation``, ``RemovePauseAnnotation``
and ``EnsureBlockMoveAnnotation``, with the decisions in :mod:`plunder.reconcile.statusrecord`.

Both writes are guarded by the host's resourceVersion: a host that changed meanwhile is decided
again, on a fresh copy.
"""

from __future__ import annotations

import logging

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.resources import as_dict, resource_for
from plunder.reconcile import statusrecord
from plunder.reconcile.selection import HostCandidate

log = logging.getLogger(__name__)


async def pause(client: AsyncClient, host: HostCandidate) -> bool:
    """Pause ``host`` and record its status, as its machine is paused; False: try again soon.

    The record is made from a fresh read (the cache holds only what selection needs), once per
    pause: a host paused with its record already is not read.
    """
    if host.restoring or (host.marks.paused and host.marks.recorded):
        return True
    try:
        body = await client.get(resource_for(PlunderHost), host.name, namespace=host.namespace)
    except ApiError as error:
        if error.status.code == 404:
            return True
        raise
    fresh = PlunderHost.model_validate(as_dict(body))
    annotations = statusrecord.pause_annotations(fresh)
    if annotations is None:
        return True
    written = await _write(client, host, fresh.metadata.resource_version, annotations)
    if written:
        state = fresh.status.state if fresh.status else None
        log.info("host %s paused with its machine; status recorded (%s)", host.name, state)
    return written


async def resume(client: AsyncClient, host: HostCandidate) -> bool:
    """Resume ``host`` (its machine is not paused), decided on the cached copy; False: try again."""
    annotations = statusrecord.resume_annotations(host.marks)
    if annotations is None:
        return True
    written = await _write(client, host, host.resource_version, annotations)
    if written and host.marks.paused:
        log.info("host %s resumed with its machine", host.name)
    return written


async def _write(
    client: AsyncClient,
    host: HostCandidate,
    resource_version: str | None,
    annotations: dict[str, str | None],
) -> bool:
    try:
        await client.patch(
            resource_for(PlunderHost),
            host.name,
            {"metadata": {"resourceVersion": resource_version, "annotations": annotations}},
            namespace=host.namespace,
            patch_type=PatchType.MERGE,
        )
    except ApiError as error:
        if error.status.code == 409:
            return False
        if error.status.code == 404:
            return True
        raise
    return True
