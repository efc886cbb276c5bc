"""The host state machine, in one place, as pure functions.

    discovered → inspecting → available → provisioning → provisioned
                                  ↑            ↓ (error)       ↓
                                  └──── deprovisioning ←───────┘

Who moves a host: the boot service when the host boots the agent (→ inspecting), when the agent
reports its hardware (→ available), its progress (a failure → error) and a finished wipe
(→ available), and when cloud-init of the installed OS phones home (→ provisioned); the
controller when work is set on an available host (→ provisioning), when the work is taken away
(→ deprovisioning), and when the spec of a failed host changes (→ provisioning again). Each
function returns the status fields to write; the callers write them with a merge patch, guarded
by resourceVersion (docs/status-writers.md).

A finished wipe is the agent's ``done`` with reason ``Wiped`` and nothing else: the host is never
returned to the pool on the word of a report about other work. What the host's BMC must do
follows from the state alone (:func:`power_wish`), converged by the controller's power loop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from plunder.api.inventory import HardwareDetails, PlunderHost
from plunder.reconcile import conditions

Status = dict[str, Any]
EventSpec = tuple[str, str, Literal["Normal", "Warning"]]
"""(reason, message, type) of an Event to record."""

PROVISION_REASON = "PlunderProvision"
"""The seed's event reason for provisioning events."""


PowerAction = Literal["pxe-on", "pxe-reboot"]
"""What a host's state needs of its BMC: power on with a one-time PXE boot if it is off
(``pxe-on``), or power-cycle it with one (``pxe-reboot``)."""


@dataclass(frozen=True)
class Change:
    """Status fields to write, and maybe an Event to record."""

    status: Status | None = None
    event: EventSpec | None = None


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def state_of(host: PlunderHost) -> str:
    """The host's state; a host without one was just discovered."""
    return (host.status.state if host.status else None) or "discovered"


def _phases(host: PlunderHost) -> list[dict[str, Any]]:
    phases = host.status.phases if host.status and host.status.phases else []
    return [phase.to_api() for phase in phases]


def start_phase(host: PlunderHost, name: str, now: datetime) -> list[dict[str, Any]]:
    """The phase list with ``name`` begun now (a new cycle starts with inspection/provisioning)."""
    phases = [] if name in ("inspecting", "provisioning") else _phases(host)
    phases = [phase for phase in phases if phase["name"] != name]
    return [*phases, {"name": name, "started": _stamp(now)}]


def finish_phase(host: PlunderHost, name: str, now: datetime) -> list[dict[str, Any]]:
    """The phase list with ``name`` finished now (begun now too if it never started)."""
    phases = _phases(host)
    for phase in phases:
        if phase["name"] == name and "finished" not in phase:
            phase["finished"] = _stamp(now)
            return phases
    return [*phases, {"name": name, "started": _stamp(now), "finished": _stamp(now)}]


def _open_phase(host: PlunderHost, name: str) -> bool:
    """Whether phase ``name`` has begun and not finished."""
    phases = host.status.phases if host.status and host.status.phases else ()
    return any(phase.name == name and phase.finished is None for phase in phases)


PROVISIONED_CONDITION = "Provisioned"
"""The condition a person (and ``kubectl wait``) reads: True once the OS phoned home, False
with the failure's reason when provisioning failed or the host was wiped."""


def provisioned_condition(
    host: PlunderHost, status: Literal["True", "False"], reason: str, message: str, now: datetime
) -> list[dict[str, Any]]:
    """The host's conditions with :data:`PROVISIONED_CONDITION` set."""
    current = host.status.conditions if host.status else None
    new = conditions.condition(
        PROVISIONED_CONDITION, status, reason, message, now, host.metadata.generation
    )
    return [c.to_api() for c in conditions.set_condition(current, new)]


def failed(host: PlunderHost, reason: str, message: str, now: datetime) -> Change:
    """The current work failed: the host goes to ``error`` with a condition and an event."""
    state = state_of(host)
    return Change(
        {
            "state": "error",
            "errorReason": reason,
            "errorMessage": message,
            "phases": finish_phase(host, state, now),
            "conditions": provisioned_condition(host, "False", reason, message, now),
        },
        (reason, f"{state} failed: {message}", "Warning"),
    )


def phase_seconds(host: PlunderHost, name: str, now: datetime) -> float | None:
    """How long phase ``name`` has taken until ``now``."""
    for phase in host.status.phases if host.status and host.status.phases else ():
        if phase.name == name:
            return (now - phase.started).total_seconds()
    return None


def has_image_work(host: PlunderHost) -> bool:
    """Whether an OS is to be installed."""
    return host.spec.image is not None or host.spec.deployment_type is not None


# ----------------------------------------------------------------------------- boot service


def booted_agent(host: PlunderHost, boot_id: str, now: datetime) -> Change:
    """The host is sent into the agent with a new boot id; a new host starts inspection."""
    status: Status = {"agentBootID": boot_id}
    if state_of(host) == "provisioning" and _open_phase(host, "writing"):
        # The host restarted while the agent wrote the image (power loss, a reset, a crash):
        # the disk holds part of an image. Say so, and let a spec change retry, as for any failure.
        change = failed(
            host,
            "ProvisioningInterrupted",
            "the host restarted while the image was being written; the disk holds part of it",
            now,
        )
        return Change({**(change.status or {}), **status}, change.event)
    if state_of(host) == "discovered":
        status |= {"state": "inspecting", "phases": start_phase(host, "inspecting", now)}
    return Change(status)


def inspected(host: PlunderHost, hardware: HardwareDetails, now: datetime) -> Status:
    """The agent reported the hardware."""
    status: Status = {"hardware": hardware.to_api()}
    if state_of(host) in ("discovered", "inspecting"):
        status |= {"state": "available", "phases": finish_phase(host, "inspecting", now)}
    return status


def agent_work(host: PlunderHost) -> dict[str, str]:
    """What the agent is told to do (key=value fields)."""
    state = state_of(host)
    image = host.spec.image
    if state == "provisioning" and image is not None:
        return {
            "action": "provision",
            "image_url": image.url,
            "image_checksum": image.checksum or "",
            "image_checksum_type": image.checksum_type,
            "image_format": image.format,
            "root_device": root_device(host),
        }
    if state == "deprovisioning":
        return {"action": "wipe", "wipe_mode": host.spec.wipe_mode}
    if state == "provisioned":
        return {"action": "reboot"}
    return {"action": "wait"}


def root_device(host: PlunderHost) -> str:
    """The disk to install on: the hints' device, else the first disk that is big enough."""
    hints = host.spec.root_device_hints
    if hints and hints.device_name:
        return hints.device_name
    disks = host.status.hardware.disks if host.status and host.status.hardware else None
    minimum = (hints.min_size_gigabytes or 0) * 10**9 if hints else 0
    for disk in disks or ():
        if disk.size_bytes >= minimum and (
            not hints or not hints.serial_number or disk.serial == hints.serial_number
        ):
            return disk.name
    return "/dev/vda"


WIPED_REASON = "Wiped"
"""The reason of the agent's ``done`` for a wipe (``agent.sh``: ``report done Wiped …``)."""

UNREACHABLE_REASONS = frozenset(
    {"ImageDownloadFailed", "CloudInitUnavailable", "ChecksumUnavailable"}
)
"""The agent's failures to fetch what it writes: the image, its checksum file, the cloud-init
data. Unless a server answered 4xx, they say the server was away or the connection dropped (a
boot service restarted, say by a rolling update, in the middle of the download): not a fault
of the host or of its spec."""

_CLIENT_ERROR = re.compile(r"HTTP/\d(?:\.\d)? 4\d\d")


def passing_failure(reason: str, message: str) -> bool:
    """Whether a failure the agent reported is one of reaching a server that may pass by itself.

    Such a failure does not end provisioning: the host stays ``provisioning``, the agent is told
    to provision again at its next poll, and the provisioning deadline bounds the tries. Before,
    a boot service killed while an image streamed (bench/chaos_lab.py kills it so) left the host
    in ``error`` until a person changed its spec.
    """
    return reason in UNREACHABLE_REASONS and not _CLIENT_ERROR.search(message)


def retried(host: PlunderHost, reason: str, message: str, now: datetime) -> Change:
    """A passing failure: the attempt's write phase is dropped (the next one starts afresh).

    Dropped, not finished: a write that ended would stop the cloud-init data from being served
    to the next attempt and let a phone-home in (:mod:`plunder.boot.trust`).
    """
    text = f"{message}; the agent tries again"
    return Change(
        {
            "phases": [phase for phase in _phases(host) if phase["name"] != "writing"],
            "conditions": provisioned_condition(host, "False", reason, text, now),
        },
        (reason, f"provisioning: {text}", "Warning"),
    )


def agent_progress(host: PlunderHost, fields: dict[str, str], now: datetime) -> Change:
    """The agent reported a phase of its work.

    Only a ``done`` for a wipe (reason :data:`WIPED_REASON`) returns a deprovisioning host to the
    pool: a ``done`` for an image write (an agent that was told to provision before the work was
    taken away, or an installer's last step) arriving while the host is deprovisioning says the
    disk holds an OS and its seed, the opposite of wiped. It is ignored; the agent reboots after
    it, boots the agent again (the host is deprovisioning) and is told to wipe.
    """
    phase, reason = fields.get("phase", ""), fields.get("reason", "")
    message = fields.get("message", "")[:1000]
    state = state_of(host)
    if phase == "failed" and state == "provisioning" and passing_failure(reason, message):
        return retried(host, reason, message, now)
    if phase == "failed":
        return failed(host, reason or "AgentFailed", message, now)
    if phase == "writing" and state == "provisioning":
        writing: dict[str, Any] = {"name": "writing", "started": _stamp(now)}
        if fields.get("disk_bps", "").isdigit():
            writing["diskBytesPerSecond"] = int(fields["disk_bps"])
        image_bytes = fields.get("image_bytes", "")
        progress = {
            "downloadedBytes": 0,
            "writtenBytes": 0,
            "imageBytes": int(image_bytes) if image_bytes.isdigit() else None,
            "updated": _stamp(now),
        }
        return Change({"phases": [*_phases(host), writing], "writeProgress": progress})
    if phase == "done" and state == "provisioning":
        phases = finish_phase(host, "writing", now)
        if fields.get("bytes", "").isdigit():
            for entry in phases:
                if entry["name"] == "writing":
                    entry["bytes"] = int(fields["bytes"])
        return Change({"phases": phases})
    if phase == "done" and state == "deprovisioning" and reason == WIPED_REASON:
        return Change(
            {
                "state": "available",
                "errorReason": None,
                "errorMessage": None,
                "phases": finish_phase(host, "deprovisioning", now),
                "conditions": provisioned_condition(
                    host, "False", "Deprovisioned", "the disk was wiped", now
                ),
            },
            ("Deprovisioned", "disk wiped; the host is available again", "Normal"),
        )
    return Change()


_PROGRESS_FIELDS = (
    ("downloaded", "downloadedBytes"),
    ("written", "writtenBytes"),
    ("total", "imageBytes"),
)


def write_progress(host: PlunderHost, fields: dict[str, str], now: datetime) -> Status | None:
    """The ``writeProgress`` of the agent's byte counts during its image write; None: not now.

    Taken only while the write's phase is open (begun by the agent's ``writing`` report, which
    resets the counts, and not finished): counts arriving late change nothing that has ended.
    """
    if state_of(host) != "provisioning" or not _open_phase(host, "writing"):
        return None
    progress: dict[str, Any] = {
        key: int(fields[name]) for name, key in _PROGRESS_FIELDS if fields.get(name, "").isdigit()
    }
    if not progress:
        return None
    return {"writeProgress": {**progress, "updated": _stamp(now)}}


def phoned_home(host: PlunderHost, now: datetime) -> Change:
    """cloud-init of the installed OS reported in."""
    if state_of(host) != "provisioning":
        return Change()
    took = phase_seconds(host, "provisioning", now)
    duration = f"{took:.0f}s" if took is not None else "an unknown time"
    return Change(
        {
            "state": "provisioned",
            "phases": finish_phase(host, "provisioning", now),
            "conditions": provisioned_condition(
                host, "True", "Provisioned", f"the installed OS phoned home after {duration}", now
            ),
        },
        (PROVISION_REASON, f"Host has been successfully provisioned OS in {duration}", "Normal"),
    )


def provider_id(mac: str) -> str:
    """The Cluster API providerID of the host with boot MAC ``mac``: ``plunder://<mac>``."""
    return f"plunder://{mac}"


def meta_data(host: PlunderHost) -> dict[str, str]:
    """NoCloud meta-data: a new instance id for each provisioning, so cloud-init runs again.

    ``provider-id`` is what the kubelet registers its Node with (bootstrap data templates it as
    ``{{ ds.meta_data.provider_id }}``, as CAPM3's do), so Cluster API finds the Machine's Node.
    """
    name = host.spec.consumer_ref.name if host.spec.consumer_ref else host.metadata.name
    boot = host.status.agent_boot_id if host.status else None
    return {
        "instance-id": f"{host.metadata.uid or host.metadata.name}-{boot or 0}",
        "local-hostname": name or "plunder-host",
        "provider-id": provider_id(host.spec.boot_mac_address),
    }


def network_config(host: PlunderHost) -> dict[str, Any] | None:
    """NoCloud network-config (version 2) for a static address; None means DHCP."""
    network = host.spec.network
    if network is None:
        return None
    ethernet: dict[str, Any] = {
        # cloud-init's networkd renderer names the link by set-name, not by the match
        "match": {"macaddress": host.spec.boot_mac_address},
        "set-name": "prov0",
        "addresses": [f"{network.ip_address}/{network.prefix_length}"],
    }
    if network.gateway:
        # cloud-init 22.4 (Debian 12) refuses netplan's `to: default` ("not a valid ip
        # network") and then drops the address too: name the default route by its prefix
        default = "::/0" if ":" in str(network.gateway) else "0.0.0.0/0"
        ethernet["routes"] = [{"to": default, "via": network.gateway}]
    if network.nameservers:
        ethernet["nameservers"] = {"addresses": list(network.nameservers)}
    return {"version": 2, "ethernets": {"provisioning": ethernet}}


# ----------------------------------------------------------------------------- controller


def controller_transition(host: PlunderHost, now: datetime) -> Change:
    """The controller's moves: work set → provisioning; work taken away → deprovisioning."""
    state = state_of(host)
    generation = host.metadata.generation or 0
    observed = (host.status.observed_generation if host.status else None) or 0
    if state == "available" and has_image_work(host):
        return Change(
            {
                "state": "provisioning",
                "observedGeneration": generation,
                "phases": start_phase(host, "provisioning", now),
                "conditions": provisioned_condition(
                    host, "False", "Provisioning", "the OS is being installed", now
                ),
            },
            (PROVISION_REASON, "Plunder has begun provisioning the Operating System", "Normal"),
        )
    if state == "error" and has_image_work(host) and generation > observed:
        return Change(
            {
                "state": "provisioning",
                "observedGeneration": generation,
                "errorReason": None,
                "errorMessage": None,
                "phases": start_phase(host, "provisioning", now),
                "conditions": provisioned_condition(
                    host, "False", "Provisioning", "the OS is being installed", now
                ),
            },
            (PROVISION_REASON, "Plunder is provisioning again after the spec changed", "Normal"),
        )
    if state in ("provisioning", "provisioned", "error") and not has_image_work(host):
        return Change(
            {
                "state": "deprovisioning",
                "observedGeneration": generation,
                "phases": start_phase(host, "deprovisioning", now),
            },
            ("Deprovisioning", f"wiping the disk ({host.spec.wipe_mode})", "Normal"),
        )
    return Change()


def bmc_discovery(host: PlunderHost) -> Change:
    """A host created with only a BMC and a MAC, never seen: say it is powered on into the agent.

    ``observedGeneration`` is written with the event, so it is posted once; the power itself is
    the power loop's (:func:`power_wish`), and from then on the boot service moves the host
    (discovered → inspecting → available) as any other.
    """
    never_seen = host.status is None or (
        host.status.first_seen is None and host.status.observed_generation is None
    )
    if host.spec.bmc is None or state_of(host) != "discovered" or not never_seen:
        return Change()
    return Change(
        {"observedGeneration": host.metadata.generation or 0},
        (
            "PoweringOn",
            "powering the host on into the agent through its BMC to inspect it",
            "Normal",
        ),
    )


def controller_decision(host: PlunderHost, now: datetime) -> Change:
    """The controller's move of the host (its BMC follows from the state: :func:`power_wish`)."""
    change = controller_transition(host, now)
    if change.status is None:
        return bmc_discovery(host)
    return change


# ----------------------------------------------------------------------------- power loop


@dataclass(frozen=True)
class PowerWish:
    """What the host's BMC must have done, for the state the host is in now.

    Level-triggered: the wish follows from the state alone, so the move that enters the state is
    the only write it needs (a crash right after it loses nothing). The power loop converges it
    and records :attr:`mark` once it is done, so each entry into a state is acted on once.
    """

    action: PowerAction
    cycle: str
    """Which entry into the state it is for: the state and when its phase began."""

    @property
    def mark(self) -> str:
        """What the power loop records when it has done this wish."""
        return f"{self.action} {self.cycle}"


def _phase_started(host: PlunderHost, name: str) -> str:
    for phase in host.status.phases if host.status and host.status.phases else ():
        if phase.name == name:
            return _stamp(phase.started)
    return "?"


def power_wish(host: PlunderHost) -> PowerWish | None:
    """The BMC action the host's state needs (hosts without a BMC keep their network-boot loop).

    Provisioning: the host is usually parked in the agent, which takes the work without a
    reboot, so it is only powered on (into the agent) if it is off. Deprovisioning: the host runs
    its installed OS, so it is power-cycled into the agent to be wiped. A host created with only
    a BMC and never seen by the boot service is powered on into the agent to be inspected.
    """
    if host.spec.bmc is None:
        return None
    state = state_of(host)
    if state == "provisioning":
        return PowerWish("pxe-on", f"provisioning@{_phase_started(host, state)}")
    if state == "deprovisioning":
        return PowerWish("pxe-reboot", f"deprovisioning@{_phase_started(host, state)}")
    if state == "discovered" and (host.status is None or host.status.first_seen is None):
        return PowerWish("pxe-on", "discovered")
    return None


def power_due(host: PlunderHost, done: str | None) -> PowerWish | None:
    """The wish still to be done, given the :attr:`PowerWish.mark` the power loop recorded last."""
    wish = power_wish(host)
    return wish if wish is not None and wish.mark != done else None


PROVISIONING_TIMEOUT_REASON = "ProvisioningTimeout"


def provisioning_deadline(host: PlunderHost, now: datetime, timeout_s: float) -> Change:
    """``error`` with :data:`PROVISIONING_TIMEOUT_REASON` once provisioning took too long.

    Provisioning ends with the installed OS's phone home; a host that never sends it (its
    firmware stopped in a menu, the image does not boot, the network is cut) would otherwise
    stay ``provisioning`` for good. A spec change retries it, as for every failure; deleting its
    machine releases it to be wiped.
    """
    if state_of(host) != "provisioning":
        return Change()
    taken = phase_seconds(host, "provisioning", now)
    if taken is None or taken < timeout_s:
        return Change()
    return failed(
        host,
        PROVISIONING_TIMEOUT_REASON,
        f"no phone home from the installed OS within {timeout_s:.0f} s of the start of "
        f"provisioning ({_last_phase(host)}); check the host's console",
        now,
    )


DEPROVISIONING_RETRIED_REASON = "DeprovisioningRetried"


def deprovisioning_deadline(host: PlunderHost, now: datetime, timeout_s: float) -> Change:
    """Deprovisioning begun again once the wipe took too long: the host is power-cycled again.

    The wipe ends with the agent's ``done``; a host whose power cycle was lost, or whose agent
    never came up, would otherwise hold its provisioning slot and its machine's deletion for
    good. Unlike provisioning it cannot give up: a host that is not wiped must never be given
    again. So, as Metal3 retries a failed deprovisioning, the phase starts over, which gives the
    power loop a new mark (:func:`power_wish`) and so a new power cycle; a host without a BMC
    gets the same warning each time, for a person to power-cycle it.
    """
    if state_of(host) != "deprovisioning":
        return Change()
    taken = phase_seconds(host, "deprovisioning", now)
    if taken is None or taken < timeout_s:
        return Change()
    if host.spec.bmc is None:
        action = "the host has no BMC: power-cycle it by hand, and its agent wipes it"
    else:
        action = "power-cycling it into the agent again"
    return Change(
        {"phases": start_phase(host, "deprovisioning", now)},
        (
            DEPROVISIONING_RETRIED_REASON,
            f"no wipe reported within {timeout_s:.0f} s of the start of deprovisioning; {action}",
            "Warning",
        ),
    )


def _last_phase(host: PlunderHost) -> str:
    """The last phase the host reached, as a person reads it."""
    phases = host.status.phases if host.status and host.status.phases else ()
    if not phases:
        return "no phase reached"
    last = phases[-1]
    return f"last phase: {last.name}, {'finished' if last.finished else 'not finished'}"
