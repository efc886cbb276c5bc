"""The provisioning throttle: at most N hosts provisioning or deprovisioning at once.

Metal3's baremetal-operator has the same limit (``PROVISIONING_LIMIT``, 20 by default): a burst
of machines, or a cluster scaled down at once, must not power-cycle a whole rack and stream N
images over the provisioning network together. A host whose move into ``provisioning`` or
``deprovisioning`` finds every slot in use stays where it is (``available`` with its work set,
say) and waits; it moves when a slot frees.

Counting hosts in the watch cache alone is not race-free: two hosts decided at the same moment
both see N-1 in use and both move (the guard of each move is its own host's resourceVersion, so
it cannot see the other). The slots are therefore granted through one shared record, the
*ledger* (a ConfigMap), written with the resourceVersion it was read at: two grants decided on
the same ledger cannot both be written, the loser reads it again and decides anew.

A ledger entry names a host and the resourceVersion of the copy its move was decided on; the
move is written guarded by that same version. That makes the entry's meaning exact without any
bookkeeping on release:

- while the host still has that version, its move has not landed yet: the slot is held;
- while the host is in a slot state, the move landed: the slot is held by the state;
- otherwise the host changed in between (the guarded move then failed) or it went through its
  move and left the slot state: the slot is free, and the entry is dropped at the next grant.

A grant is decided on a copy of the host read at the moment of the grant (:func:`decide_turn`),
not on the copy of the event that asked: with many hosts asking, a request waits its turn longer
than a parked agent's ``lastSeen`` heartbeat (30 s), and a move decided on the event's copy was
then refused with a 409 Conflict every time (issue #14: 42 of 1,000 machines after 300 s). On a
fresh copy a concurrent change can void the move only while the ledger is written.

A cache may lag, so an entry that looks free in the cache is confirmed against the API (the host
read again) before it is dropped. Hosts in a slot state that the ledger does not name (moved by
an older controller) count too. Nothing is counted in memory: a restarted controller reads the
same ledger and the same hosts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from plunder.api.inventory import PlunderHost
from plunder.reconcile import hoststate, statusrecord

SLOT_STATES = frozenset({"provisioning", "deprovisioning"})
"""Host states that hold a slot."""

DEFAULT_LIMIT = 20
"""Metal3's default (baremetal-operator's ``PROVISIONING_LIMIT``)."""

WAITING_REASON = "WaitingForProvisioningSlot"
"""The reason of the condition and the Event of a machine (or host) that waits for a slot."""

LEDGER_NAME = "plunder-provisioning-slots"
"""The ConfigMap that records the grants, in the controller's namespace."""
LEDGER_KEY = "holders"

Ledger = dict[str, str]
"""Host key (``namespace/name``) → the resourceVersion its move was decided on."""


def host_key(namespace: str, name: str) -> str:
    """How the ledger names a host."""
    return f"{namespace}/{name}"


def takes_slot(state: str, target: str | None) -> bool:
    """Whether a move from ``state`` to ``target`` needs a slot (entering a slot state).

    ``provisioning → deprovisioning`` keeps the slot it has.
    """
    return target in SLOT_STATES and state not in SLOT_STATES


@dataclass(frozen=True)
class HostView:
    """What the throttle reads of a host: its state and the version it was read at."""

    state: str
    resource_version: str


def holds_slot(decided_on: str, host: HostView | None) -> bool:
    """Whether a ledger entry still holds its slot, as far as ``host`` shows (None: not found)."""
    if host is None:
        return False
    return host.state in SLOT_STATES or host.resource_version == decided_on


@dataclass(frozen=True)
class Decision:
    """The answer to one host's request for a slot."""

    granted: bool
    ledger: Ledger
    """The ledger to write (entries that no longer hold a slot dropped, the host's added)."""
    in_use: int
    """Slots in use: after the grant, or (refused) those held by others."""
    limit: int

    @property
    def message(self) -> str:
        """What a waiting machine or host says."""
        return waiting_message(self.in_use, self.limit)


def waiting_message(in_use: int, limit: int) -> str:
    """``3 of 3 provisioning slots in use; waiting``."""
    return f"{in_use} of {limit} provisioning slots in use; waiting"


def decide(
    ledger: Mapping[str, str], busy: Iterable[str], key: str, decided_on: str, limit: int
) -> Decision:
    """Grant ``key`` a slot, or not.

    Args:
        ledger: The live entries (those that still hold a slot).
        busy: Keys of the hosts in a slot state (the cache's view).
        key: The host asking.
        decided_on: The resourceVersion of the copy its move is decided on.
        limit: The number of slots (at least 1).
    """
    held = {**ledger}
    others = (set(held) | set(busy)) - {key}
    if key not in held and len(others) >= limit:
        return Decision(False, held, len(others), limit)
    held[key] = decided_on
    return Decision(True, held, len(others) + 1, limit)


@dataclass(frozen=True)
class Turn:
    """A host's turn at the ledger: its move decided again on a fresh copy, and the answer."""

    host: PlunderHost | None
    """The copy read at the turn, the one the move is decided on and guarded by (None: gone)."""
    change: hoststate.Change
    """The controller's move of that copy (none, if the host is gone or needs none any more)."""
    decision: Decision | None
    """The slot's answer; None: the move takes no slot (any more), the ledger is not written."""

    @property
    def granted(self) -> bool:
        """Whether the move may be written now (a slot granted, or none needed)."""
        return self.host is not None and (self.decision is None or self.decision.granted)


def decide_turn(
    fresh: PlunderHost | None,
    ledger: Mapping[str, str],
    busy: Iterable[str],
    limit: int,
    now: datetime,
) -> Turn:
    """Decide a host's move on ``fresh``, its copy read at its turn, and grant it a slot or not.

    The copy the host asked with may be long stale by its turn (its ``lastSeen`` written since,
    its work taken away, its move made by another process): the move, and the resourceVersion the
    ledger entry names and the move is guarded by, are those of ``fresh``.

    Args:
        fresh: The host as the API shows it now (None: it is gone).
        ledger: The live entries (those that still hold a slot).
        busy: Keys of the hosts in a slot state (the cache's view).
        limit: The number of slots (at least 1).
        now: When the move is decided (the time its phase starts).
    """
    if fresh is None:
        return Turn(None, hoststate.Change(), None)
    if statusrecord.is_paused(fresh) or statusrecord.awaits_restore(fresh):
        return Turn(fresh, hoststate.Change(), None)  # paused meanwhile: nothing acts on it
    change = hoststate.controller_decision(fresh, now)
    target = change.status.get("state") if change.status else None
    if not takes_slot(hoststate.state_of(fresh), target):
        return Turn(fresh, change, None)
    key = host_key(fresh.metadata.namespace or "", fresh.metadata.name or "")
    return Turn(
        fresh, change, decide(ledger, busy, key, fresh.metadata.resource_version or "", limit)
    )


def in_use(ledger: Mapping[str, str], busy: Iterable[str]) -> int:
    """Slots in use: live ledger entries and hosts in a slot state, each host once."""
    return len(set(ledger) | set(busy))


def parse_ledger(data: Mapping[str, str] | None) -> Ledger:
    """The ledger from the ConfigMap's data (empty if it has none, or it is unreadable)."""
    raw = (data or {}).get(LEDGER_KEY)
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    return {str(k): str(v) for k, v in parsed.items()}


def render_ledger(ledger: Mapping[str, str]) -> dict[str, str]:
    """The ConfigMap's data for ``ledger`` (sorted, so an unchanged ledger is an equal write)."""
    return {LEDGER_KEY: json.dumps(dict(sorted(ledger.items())))}


def validate_limit(limit: int) -> int:
    """The limit, if it is one (at least 1); a ValueError that says why otherwise."""
    if limit < 1:
        raise ValueError(
            f"the provisioning limit must be at least 1 (got {limit}): "
            "with no slot, no host would ever provision"
        )
    return limit
