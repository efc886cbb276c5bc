"""What ``plunderctl controller`` sets before kopf starts, and the defaults, in one place.

How hard the controller presses the API server, how many hosts provision at once and how the
slots are granted, and how long a phase may take. Kept apart from
:mod:`plunder.operator.settings` (kopf's own settings) so that ``plunderctl`` shows these
defaults without importing kopf, and an operator started some other way (``kopf run``, a test)
uses the same values as one started by ``plunderctl controller``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plunder.k8s.ratelimit import ClientLimits
from plunder.reconcile import slots


def _measured_limits() -> ClientLimits:
    # bench/fleet_scale.py --controller-args (README, "Client limits"): at these 1,000 hosts
    # go up and down no slower than without any bound; at 50 a second, 1.8-2.6 times slower.
    return ClientLimits(qps=200.0, burst=400)


@dataclass
class ControllerSettings:
    """``plunderctl controller`` sets them before kopf starts.

    ``client``: its own client's requests a second, burst and connections;
    ``machine_workers``: the PlunderMachines reconciled at once (controller-runtime's
    MaxConcurrentReconciles).
    """

    client: ClientLimits = field(default_factory=_measured_limits)
    machine_workers: int = 16


DEFAULTS = ControllerSettings()
"""The defaults, never changed (the CLI shows them)."""

SETTINGS = ControllerSettings()
"""What this process uses."""


@dataclass
class SlotSettings:
    """The provisioning throttle (:mod:`plunder.operator.slots`)."""

    provisioning_limit: int = slots.DEFAULT_LIMIT
    """Hosts provisioning or deprovisioning at once, across every host the controller sees."""
    ledger_namespace: str = "default"
    """Where the ledger ConfigMap lives: the controller's own namespace."""
    grant_concurrency: int = 16
    """API requests of the granter in flight at once (hosts read again, granted moves)."""
    grant_batch: int = 1000
    """Hosts decided at most in one round, that is per write of the ledger."""


SLOT_DEFAULTS = SlotSettings()
"""The defaults, never changed (the CLI shows them)."""


@dataclass
class DeadlineSettings:
    """How long a phase may take (:mod:`plunder.operator.deadline`)."""

    provisioning_timeout_s: float = 1800.0
    """From the start of provisioning to the installed OS's phone home. 30 minutes fits an
    emulated host (about 3 minutes for the node image) and real servers whose firmware takes
    minutes to POST at each of their two reboots."""

    deprovisioning_timeout_s: float = 900.0
    """From the start of deprovisioning to the agent's report of the wipe; then the host is
    power-cycled again. A wipe is a power cycle, a network boot into the agent and a few writes:
    about 2 minutes on an emulated host; 15 minutes leaves room for slow firmware."""


DEADLINE_DEFAULTS = DeadlineSettings()
"""The defaults, never changed (the CLI shows them)."""
