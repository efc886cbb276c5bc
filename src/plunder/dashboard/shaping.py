"""What the dashboard shows, shaped from the API's raw objects: pure functions, no I/O.

Every function here picks the fields it shows one by one. A host's spec names Secrets (its BMC
credentials, its user data) and a Machine names its bootstrap Secret; no spec, status or Secret
is passed through whole, so the page and its JSON hold exactly what these functions return
(and the server reads no Secret at all).

A host's ``status.phases`` holds its *current* cycle only: a move into ``inspecting`` or
``provisioning`` starts the list anew. The dashboard keeps the cycles it saw go by
(:func:`remember_cycle`), so a host's page shows its last provisionings since the dashboard
started, and its current one from the first look.

Timelines are in seconds from the cycle's start. A provisioning is split as ``bench/cluster.py``
splits it: from the claim to the agent's write (power cycle, network boot, the agent's poll),
the write, then from the write's end to the installed OS phoning home (reboot, firmware, OS).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from plunder.api.common import CLUSTER_NAME_LABEL
from plunder.api.infrastructure import HOST_ANNOTATION
from plunder.api.inventory import UNHEALTHY_ANNOTATION

Body = Mapping[str, Any]
"""An object as the API sent it (``as_dict``)."""
Shown = dict[str, Any]
"""What one endpoint returns: JSON-ready, fields picked one by one."""

MAX_CYCLES = 5
"""How many of a host's cycles are kept, the current one included."""

CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"

SEGMENT_LABELS = {
    "inspect": "boot + inspect",
    "boot": "claim → agent writes",
    "write": "write image",
    "phone-home": "reboot → phone home",
    "wipe": "wipe",
}
"""The timeline's segments, in the order a host goes through them, and how they are labelled."""


def _get(body: Any, *path: str) -> Any:
    for step in path:
        if not isinstance(body, Mapping):
            return None
        body = body.get(step)
    return body


def parse_time(value: object) -> datetime | None:
    """An API timestamp (RFC 3339, ``Z`` or an offset), or None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def without_userinfo(url: str) -> str:
    """A URL without its user and password (a BMC address may carry them; the page never)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def _gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


def hardware_summary(hardware: Body | None) -> str:
    """One line for the fleet table: product, CPUs, memory, disks."""
    if not hardware:
        return ""
    words = [
        " ".join(str(p) for p in (hardware.get("systemVendor"), hardware.get("productName")) if p)
    ]
    cpus = _get(hardware, "cpu", "count")
    if isinstance(cpus, int):
        words.append(f"{cpus} CPU")
    memory = hardware.get("memoryMiB")
    if isinstance(memory, int):
        words.append(_gib(memory * 2**20))
    disks = [d.get("sizeBytes") or 0 for d in hardware.get("disks") or () if isinstance(d, Mapping)]
    if disks:
        words.append(f"{len(disks)} disk{'s' if len(disks) > 1 else ''} {_gib(sum(disks))}")
    return " · ".join(word for word in words if word)


def power(status: Body) -> str:
    """``on``, ``off`` or ``unknown`` (no BMC, or not read yet)."""
    powered = status.get("poweredOn")
    return "unknown" if powered is None else "on" if powered else "off"


def write_percent(status: Body) -> int | None:
    """How far the running image write has got, in percent (None when unknown or not writing)."""
    writing = [p for p in status.get("phases") or () if p.get("name") == "writing"]
    progress = status.get("writeProgress") or {}
    total, done = progress.get("imageBytes"), progress.get("downloadedBytes")
    if not writing or writing[-1].get("finished") or not total or done is None:
        return None
    return min(100, int(100 * done / total))


def fleet_row(host: Body, now: datetime) -> Shown:
    """One host's row in the fleet table."""
    metadata = host.get("metadata") or {}
    spec = host.get("spec") or {}
    status = host.get("status") or {}
    consumer = spec.get("consumerRef") or {}
    last_seen = parse_time(status.get("lastSeen"))
    return {
        "name": metadata.get("name", ""),
        "namespace": metadata.get("namespace", ""),
        "mac": spec.get("bootMACAddress", ""),
        "state": status.get("state") or "unknown",
        "errorReason": status.get("errorReason") or "",
        "vendor": status.get("vendor") or "",
        "hardware": hardware_summary(status.get("hardware")),
        "power": power(status),
        "consumer": consumer.get("name") or "",
        "consumerKind": consumer.get("kind") or "",
        "accepted": bool(spec.get("accepted")),
        "unhealthy": UNHEALTHY_ANNOTATION in (metadata.get("annotations") or {}),
        "firmware": status.get("bootFirmware") or "",
        "ipAddress": status.get("ipAddress") or "",
        "lastSeen": status.get("lastSeen") or "",
        "lastSeenSeconds": (now - last_seen).total_seconds() if last_seen else None,
        "writePercent": write_percent(status),
    }


def fleet(hosts: Iterable[Body], now: datetime) -> list[Shown]:
    """The fleet table: every host's row, by namespace and name."""
    rows = [fleet_row(host, now) for host in hosts]
    return sorted(rows, key=lambda row: (row["namespace"], row["name"]))


def state_counts(rows: Iterable[Shown]) -> dict[str, int]:
    """How many hosts are in each state."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------- timelines


def _cycle_key(phases: Sequence[Body]) -> tuple[str, str]:
    return (str(phases[0].get("name")), str(phases[0].get("started")))


def remember_cycle(
    cycles: Sequence[Sequence[Body]], phases: Sequence[Body] | None, keep: int = MAX_CYCLES
) -> list[list[Body]]:
    """The host's cycles, oldest first, after its ``status.phases`` were seen as ``phases``.

    A cycle is known by its first phase (name and start): the same one updates the last cycle,
    a new one (the list was started anew) is appended, and the oldest past ``keep`` dropped.
    """
    kept = [list(cycle) for cycle in cycles]
    if not phases:
        return kept
    current: list[Body] = [dict(phase) for phase in phases]
    if kept and _cycle_key(kept[-1]) == _cycle_key(current):
        kept[-1] = current
    elif not any(_cycle_key(cycle) == _cycle_key(current) for cycle in kept):
        kept.append(current)
    return kept[-keep:]


def _segment(
    name: str, start: datetime, end: datetime | None, origin: datetime, now: datetime
) -> Shown:
    ended = end or now
    return {
        "name": name,
        "label": SEGMENT_LABELS.get(name, name),
        "start": round((start - origin).total_seconds(), 3),
        "end": round((max(ended, start) - origin).total_seconds(), 3),
        "seconds": round(max((ended - start).total_seconds(), 0.0), 3),
        "open": end is None,
    }


def timeline(phases: Sequence[Body], now: datetime) -> Shown | None:
    """One cycle as segments in seconds from its start; None without a readable phase.

    ``provisioning`` with its ``writing`` inside becomes ``boot``, ``write`` and ``phone-home``;
    ``inspecting`` becomes ``inspect``, ``deprovisioning`` ``wipe``; any other phase keeps its name.
    An open phase (no ``finished``) runs to ``now`` and is marked ``open``.
    """
    timed = {
        str(p.get("name")): (parse_time(p.get("started")), parse_time(p.get("finished")))
        for p in phases
    }
    starts = [start for start, _ in timed.values() if start is not None]
    if not starts:
        return None
    origin = min(starts)
    segments: list[Shown] = []
    provisioning = timed.pop("provisioning", (None, None))
    writing = timed.pop("writing", (None, None))
    if provisioning[0] is not None and writing[0] is not None:
        segments.append(_segment("boot", provisioning[0], writing[0], origin, now))
        segments.append(_segment("write", writing[0], writing[1], origin, now))
        if writing[1] is not None:
            segments.append(_segment("phone-home", writing[1], provisioning[1], origin, now))
    elif provisioning[0] is not None:
        segments.append(_segment("boot", provisioning[0], provisioning[1], origin, now))
    elif writing[0] is not None:
        segments.append(_segment("write", writing[0], writing[1], origin, now))
    renamed = {"inspecting": "inspect", "deprovisioning": "wipe"}
    for name, (start, end) in timed.items():
        if start is not None:
            segments.append(_segment(renamed.get(name, name), start, end, origin, now))
    segments.sort(key=lambda segment: segment["start"])
    first = str(phases[0].get("name")) if phases else ""
    return {
        "kind": "provisioning" if provisioning[0] is not None else first,
        "started": origin.isoformat(),
        "seconds": max(segment["end"] for segment in segments),
        "open": any(segment["open"] for segment in segments),
        "segments": segments,
    }


def timelines(cycles: Sequence[Sequence[Body]], now: datetime) -> list[Shown]:
    """The host's cycles as timelines, newest first."""
    shown = (timeline(cycle, now) for cycle in reversed(cycles))
    return [cycle for cycle in shown if cycle is not None]


# ---------------------------------------------------------------------------- one host


def _conditions(status: Body) -> list[Shown]:
    return [
        {
            "type": c.get("type", ""),
            "status": c.get("status", ""),
            "reason": c.get("reason") or "",
            "message": c.get("message") or "",
            "lastTransitionTime": c.get("lastTransitionTime") or "",
        }
        for c in status.get("conditions") or ()
        if isinstance(c, Mapping)
    ]


def _hardware(hardware: Body | None) -> Shown | None:
    if not hardware:
        return None
    cpu = hardware.get("cpu") or {}
    return {
        "systemVendor": hardware.get("systemVendor") or "",
        "productName": hardware.get("productName") or "",
        "serialNumber": hardware.get("serialNumber") or "",
        "cpuCount": cpu.get("count"),
        "cpuModel": cpu.get("model") or "",
        "memoryMiB": hardware.get("memoryMiB"),
        "disks": [
            {
                "name": d.get("name", ""),
                "sizeBytes": d.get("sizeBytes"),
                "model": d.get("model") or "",
                "rotational": d.get("rotational"),
            }
            for d in hardware.get("disks") or ()
        ],
        "nics": [
            {"name": n.get("name", ""), "mac": n.get("mac", ""), "ip": n.get("ip") or ""}
            for n in hardware.get("nics") or ()
        ],
    }


def event_row(event: Body) -> Shown:
    """One Kubernetes Event about an object, as the page lists it."""
    when = (
        event.get("lastTimestamp")
        or event.get("eventTime")
        or _get(event, "metadata", "creationTimestamp")
        or ""
    )
    return {
        "type": event.get("type") or "",
        "reason": event.get("reason") or "",
        "message": event.get("message") or "",
        "count": event.get("count") or 1,
        "time": when,
    }


def events(found: Iterable[Body], limit: int = 30) -> list[Shown]:
    """The newest ``limit`` events, newest first."""
    rows = [event_row(event) for event in found]
    rows.sort(key=lambda row: str(row["time"]), reverse=True)
    return rows[:limit]


def host_detail(
    host: Body,
    cycles: Sequence[Sequence[Body]],
    found_events: Iterable[Body],
    agent_log: str | None,
    now: datetime,
) -> Shown:
    """One host's page: its row, hardware, BMC address, conditions, events, timelines, log."""
    spec = host.get("spec") or {}
    status = host.get("status") or {}
    bmc = spec.get("bmc") or {}
    return {
        "host": fleet_row(host, now),
        "bmcAddress": without_userinfo(str(bmc.get("address") or "")),
        "online": spec.get("online", True),
        "firstSeen": status.get("firstSeen") or "",
        "errorMessage": status.get("errorMessage") or "",
        "hardware": _hardware(status.get("hardware")),
        "conditions": _conditions(status),
        "events": events(found_events),
        "cycles": timelines(remember_cycle(cycles, status.get("phases")), now),
        "agentLog": agent_log,
    }


# ---------------------------------------------------------------------------- clusters


def _key(body: Body) -> tuple[str, str]:
    metadata = body.get("metadata") or {}
    return (str(metadata.get("namespace", "")), str(metadata.get("name", "")))


def machine_cluster(machine: Body) -> str:
    """The name of the Cluster a Machine belongs to."""
    labels = _get(machine, "metadata", "labels") or {}
    return str(_get(machine, "spec", "clusterName") or labels.get(CLUSTER_NAME_LABEL) or "")


def clusters(found: Iterable[Body], machines: Iterable[Body]) -> list[Shown]:
    """Every Cluster with its phase and how many Machines it has."""
    counts: dict[tuple[str, str], int] = {}
    for machine in machines:
        key = (_key(machine)[0], machine_cluster(machine))
        counts[key] = counts.get(key, 0) + 1
    rows = [
        {
            "namespace": _key(cluster)[0],
            "name": _key(cluster)[1],
            "phase": _get(cluster, "status", "phase") or "",
            "paused": bool(_get(cluster, "spec", "paused")),
            "machines": counts.get(_key(cluster), 0),
        }
        for cluster in found
    ]
    return sorted(rows, key=lambda row: (row["namespace"], row["name"]))


def bound_host(plunder_machine: Body | None) -> str:
    """The name of the PlunderHost a PlunderMachine is bound to ('' if none)."""
    if not plunder_machine:
        return ""
    annotations = _get(plunder_machine, "metadata", "annotations") or {}
    return str(
        _get(plunder_machine, "status", "hostRef", "name") or annotations.get(HOST_ANNOTATION) or ""
    )


SLOW_FACTOR = 1.5
"""A machine is slow in a segment when it took this many times the others' median …"""
SLOW_MARGIN_SECONDS = 5.0
"""… and more than this many seconds longer (a 2 s step that took 3 s is no news)."""


def mark_slowest(rows: list[Shown]) -> None:
    """Mark, per segment, the machine that took longest in it, if it stands out from the rest.

    Stands out: over :data:`SLOW_FACTOR` times the median of the other machines' times in that
    segment, and over :data:`SLOW_MARGIN_SECONDS` longer; a running segment counts as it stands.
    """
    by_segment: dict[str, list[Shown]] = {}
    for row in rows:
        for segment in (row.get("timeline") or {}).get("segments", ()):
            by_segment.setdefault(segment["name"], []).append(segment)
    for segments in by_segment.values():
        if len(segments) < 2:
            continue
        slowest = max(segments, key=lambda segment: segment["seconds"])
        others = median([s["seconds"] for s in segments if s is not slowest])
        seconds = slowest["seconds"]
        if seconds > SLOW_FACTOR * others and seconds - others > SLOW_MARGIN_SECONDS:
            slowest["slowest"] = True


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (not empty)."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def cluster_view(
    cluster: Body,
    machines: Iterable[Body],
    plunder_machines: Mapping[tuple[str, str], Body],
    hosts: Mapping[tuple[str, str], Body],
    cycles: Mapping[tuple[str, str], Sequence[Sequence[Body]]],
    now: datetime,
) -> Shown:
    """A Cluster, its Machines and their hosts, each machine's timeline on one clock.

    Each machine's timeline is its host's newest cycle, shifted so that all of them share the
    earliest start (``offset``, seconds): side by side, the slow host and its slow phase show.
    """
    namespace, name = _key(cluster)
    rows: list[Shown] = []
    for machine in machines:
        if _key(machine)[0] != namespace or machine_cluster(machine) != name:
            continue
        infra = _get(machine, "spec", "infrastructureRef", "name") or _key(machine)[1]
        host_name = bound_host(plunder_machines.get((namespace, str(infra))))
        host = hosts.get((namespace, host_name)) if host_name else None
        status: Body = (host or {}).get("status") or {}
        history = remember_cycle(cycles.get((namespace, host_name), ()), status.get("phases"))
        shown = timelines(history[-1:], now)
        rows.append(
            {
                "machine": _key(machine)[1],
                "controlPlane": CONTROL_PLANE_LABEL in (_get(machine, "metadata", "labels") or {}),
                "phase": _get(machine, "status", "phase") or "",
                "plunderMachine": str(infra),
                "host": host_name,
                "hostState": status.get("state") or "",
                "timeline": shown[0] if shown else None,
            }
        )
    starts = [parse_time(row["timeline"]["started"]) for row in rows if row["timeline"]]
    origin = min((start for start in starts if start), default=None)
    for row in rows:
        line = row["timeline"]
        start = parse_time(line["started"]) if line else None
        row["offset"] = round((start - origin).total_seconds(), 3) if start and origin else 0.0
    rows.sort(key=lambda row: (not row["controlPlane"], row["machine"]))
    mark_slowest(rows)
    return {
        "namespace": namespace,
        "name": name,
        "phase": _get(cluster, "status", "phase") or "",
        "paused": bool(_get(cluster, "spec", "paused")),
        "started": origin.isoformat() if origin else "",
        "machines": rows,
    }
