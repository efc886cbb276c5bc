"""What the host printed: the agent's log of its boot, bounded, scrubbed, kept beside the host.

The agent keeps a log of its boot in memory (every console line, the messages of its reports)
and sends all of it, its newest :data:`MAX_LOG_BYTES` at most, at the end of each step (after
inspection, on a failure, before saying "done") and now and then during a long image write.
Each upload replaces the one before from the same boot, so a lost upload loses nothing.

Where it is kept: a ConfigMap per host (:func:`configmap_name`), owned by the PlunderHost so that
the garbage collector removes it with the host. Not in the host's status: every watch of
PlunderHosts (the controller's caches, the boot service's, ``kubectl get -w``) would carry up to
64 KiB per host on every status change of a fleet, for text only a person reads, and rarely.
A ConfigMap, not a Secret: the log holds nothing secret, because nothing secret goes in.
It holds the log of the boot it came from (with its boot id) and the one before it (a wipe
that follows a failed write keeps the failure's log). A ConfigMap of that name without the
:data:`HOST_LABEL` (someone's own) is never overwritten.

Scrubbing, on the boot service's side, whatever the agent sends: the host's tokens (the agent's
and the phone-home one, recomputed from the boot id), anything after ``Bearer``/``token=``/
``password=``, a URL's user and password, and control characters (a log is printed on a
person's terminal by ``plunderctl logs``: no escape sequence from a host reaches it). The
agent never writes the seed's contents (user-data, vendor-data) into its log; the boot service
never logs an upload's text.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_LOG_BYTES = 64 * 1024
"""The newest bytes of one boot's log that are kept (a whole agent boot prints a few KiB)."""
MAX_UPLOAD_BYTES = 2 * MAX_LOG_BYTES
"""The largest upload accepted (the agent sends its newest :data:`MAX_LOG_BYTES`)."""

LOG_KEY = "log"
BOOT_ID_KEY = "bootID"
UPDATED_KEY = "updated"
PREVIOUS_LOG_KEY = "previous.log"
PREVIOUS_BOOT_ID_KEY = "previousBootID"
HOST_LABEL = "metal.plunder.dev/agent-log"
"""Label of every agent-log ConfigMap (value: the host's name, when it fits a label)."""

_SUFFIX = "-agent-log"
_NAME_MAX = 253
_REDACTED = "[redacted]"
_SECRET_AFTER = re.compile(
    r"(?i)(bearer\s+|authorization:\s*(?:bearer\s+)?|(?:token|password|passwd|secret|nonce)[=:]\s*)[^\s&\"']+"
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def configmap_name(host_name: str) -> str:
    """The name of the ConfigMap holding ``host_name``'s agent log (a valid object name)."""
    name = f"{host_name}{_SUFFIX}"
    if len(name) <= _NAME_MAX:
        return name
    digest = hashlib.sha256(host_name.encode()).hexdigest()[:10]
    return f"{host_name[: _NAME_MAX - len(_SUFFIX) - 11]}-{digest}{_SUFFIX}"


def label_value(host_name: str) -> str:
    """The host's name as a label value, or "" when it is too long for one."""
    return host_name if len(host_name) <= 63 else ""


def bound(text: str, limit: int = MAX_LOG_BYTES) -> str:
    """The newest ``limit`` bytes of ``text`` (UTF-8), cut at a line, saying what was dropped."""
    data = text.encode()
    if len(data) <= limit:
        return text
    kept = data[len(data) - limit :]
    newline = kept.find(b"\n")
    if 0 <= newline < len(kept) - 1:
        kept = kept[newline + 1 :]
    dropped = len(data) - len(kept)
    return f"[{dropped} bytes of earlier log dropped]\n" + kept.decode(errors="ignore")


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secrets, credentials after their usual words, or controls."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    text = _SECRET_AFTER.sub(lambda match: match.group(1) + _REDACTED, text)
    text = _URL_USERINFO.sub(lambda match: match.group(1) + _REDACTED + "@", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("?", text)


def clean(raw: bytes, secrets: Iterable[str] = ()) -> str:
    """An upload as it is kept: decoded, scrubbed, bounded."""
    return bound(scrub(raw.decode(errors="replace"), secrets))


@dataclass(frozen=True)
class AgentLog:
    """One host's kept agent log."""

    host: str
    boot_id: str
    updated: str
    text: str
    previous_boot_id: str = ""
    previous_text: str = ""


def from_configmap(host: str, data: Mapping[str, str] | None) -> AgentLog | None:
    """The log a ConfigMap's ``data`` holds (None: it holds none)."""
    data = data or {}
    if LOG_KEY not in data:
        return None
    return AgentLog(
        host=host,
        boot_id=data.get(BOOT_ID_KEY, ""),
        updated=data.get(UPDATED_KEY, ""),
        text=data[LOG_KEY],
        previous_boot_id=data.get(PREVIOUS_BOOT_ID_KEY, ""),
        previous_text=data.get(PREVIOUS_LOG_KEY, ""),
    )


def next_data(
    stored: Mapping[str, str] | None, boot_id: str, text: str, updated: str
) -> dict[str, str]:
    """The ConfigMap's data after an upload of boot ``boot_id``: a new boot moves the old down."""
    stored = stored or {}
    data = {LOG_KEY: text, BOOT_ID_KEY: boot_id, UPDATED_KEY: updated}
    if stored.get(LOG_KEY) is not None and stored.get(BOOT_ID_KEY) != boot_id:
        data[PREVIOUS_LOG_KEY] = stored[LOG_KEY]
        data[PREVIOUS_BOOT_ID_KEY] = stored.get(BOOT_ID_KEY, "")
    else:
        for key in (PREVIOUS_LOG_KEY, PREVIOUS_BOOT_ID_KEY):
            if key in stored:
                data[key] = stored[key]
    return data


def owner_reference(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    """The ownerReference that makes the garbage collector delete the log with its host."""
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid}


def render(log: AgentLog, previous: bool = False) -> str:
    """What ``plunderctl logs`` prints: a header line, then the log as kept."""
    if previous:
        boot = log.previous_boot_id or "?"
        return f"# host {log.host}, the boot before (boot {boot})\n" + _ended(log.previous_text)
    header = f"# host {log.host}, boot {log.boot_id or '?'}, last sent {log.updated or '?'}\n"
    return header + _ended(log.text)


def _ended(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"
