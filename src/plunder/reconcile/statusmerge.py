"""A write to a PlunderHost's status decided on an older copy, made to apply to the current one.

Three processes write one host's status: the controller (its moves), the boot service (what
the host and its agent report) and the power loop (``BMCReachable`` and ``poweredOn``); the
table is docs/status-writers.md. ``conditions`` and ``phases`` are lists that more than one of
them writes, and a JSON merge patch replaces a list whole: a write of the list as one writer saw
it drops what another wrote meanwhile (a ``Provisioned=True`` reverted to False by the power
loop's stale copy, for one). So every such write is guarded by a resourceVersion, and when the
guard fails the writer reads the host again and :func:`rebase` applies *its* changes (relative
to the copy it decided on) to the fresh one, entry by entry (conditions by type, phases by name).

A write that moves the state was decided on the state it saw: if the host has moved since, the
move (and the lists and fields that go with it) is dropped, as the controller drops a move that
lost its race and decides again; only the plain facts of the write (:data:`FACTS`) remain.
"""

from __future__ import annotations

from typing import Any

from plunder.api.inventory import PlunderHost

Status = dict[str, Any]

KEYED_LISTS = {"conditions": "type", "phases": "name"}
"""The status lists several writers share, and the key of their entries."""

FACTS = frozenset({"agentBootID", "lastSeen", "ipAddress", "bootFirmware", "poweredOn"})
"""Fields that say what was observed, true whatever state the host is in now."""


def _listed(host: PlunderHost, field: str) -> list[dict[str, Any]]:
    entries = getattr(host.status, field, None) if host.status else None
    return [entry.to_api() for entry in entries or ()]


def _state(host: PlunderHost) -> str:
    return (host.status.state if host.status else None) or "discovered"


def merge_entries(
    base: list[dict[str, Any]],
    mine: list[dict[str, Any]],
    fresh: list[dict[str, Any]],
    key: str,
) -> list[dict[str, Any]]:
    """``fresh`` with the entries ``mine`` added, changed or removed relative to ``base``."""
    before = {entry[key]: entry for entry in base}
    after = {entry[key]: entry for entry in mine}
    changed = {k: e for k, e in after.items() if before.get(k) != e}
    removed = set(before) - set(after)
    result = []
    for entry in fresh:
        name = entry[key]
        if name in changed:
            result.append(changed.pop(name))
        elif name not in removed:
            result.append(entry)
    return [*result, *(entry for entry in mine if entry[key] in changed)]


def rebase(base: PlunderHost, fresh: PlunderHost, mine: Status) -> Status:
    """The write ``mine`` (decided on ``base``) as it must be made on ``fresh``."""
    if "state" in mine and _state(fresh) != _state(base):
        return {field: value for field, value in mine.items() if field in FACTS}
    rebased = dict(mine)
    for field, key in KEYED_LISTS.items():
        if mine.get(field) is not None:
            rebased[field] = merge_entries(
                _listed(base, field), mine[field], _listed(fresh, field), key
            )
    return rebased
