"""What the boot service trusts, decided in one place, as pure functions of a host.

Anyone on the provisioning network can send any request with any MAC in it: an iPXE script is
no secret, and neither iPXE nor an installer can prove which machine it runs on. So:

- **No script carries an agent token.** The agent's first call, ``POST …/lookup``, is given the
  token of its boot, and only the first lookup of a boot is (Ironic's rule): the boot id is
  written with a write guarded by resourceVersion, so of two lookups, on one replica or on two,
  exactly one wins. A PXE request never issues, renews or revokes an agent token.
- **A token is for one boot (for a wipe: one the controller asked for).** A lookup window is open
  when no boot id is recorded (a new host), when the controller has since moved the host into
  ``deprovisioning`` (a boot id is stamped with the deprovisioning it was issued for, so the
  token of the boot that installed the OS is worthless for the wipe), or when its holder has
  been silent for :attr:`~plunder.boot.settings.BootSettings.agent_silence_seconds` while
  nothing is at stake (no write of the disk under way). An installer boot, whose kernel cannot
  make a lookup, gets its token in its script under the same rules. The agent's lookup carries
  a nonce of its boot; asked again with it, the boot service gives the same token again, so an
  answer lost on the way (the service killed after its write) does not lock the boot out.
- **Bootstrap data only while it is needed:** user-data and vendor-data (with the phone-home
  token) are served only to a host in ``provisioning`` whose write has not ended; the
  phone-home is taken only after it has ended. The phone-home token is an HMAC under another
  purpose: nobody derives it from the agent token without the boot service's key.
- **Nothing is written before acceptance:** a host that is not ``spec.accepted`` is inspected,
  never given a disk write or a wipe.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from plunder.api.inventory import PlunderHost
from plunder.reconcile import hoststate

_CYCLE_SEPARATOR = "."


def _phase_started(host: PlunderHost, name: str) -> str | None:
    phases = host.status.phases if host.status and host.status.phases else ()
    for phase in phases:
        if phase.name == name:
            return phase.started.isoformat()
    return None


def _phase(host: PlunderHost, name: str) -> tuple[bool, bool]:
    """(begun, finished) of phase ``name``."""
    phases = host.status.phases if host.status and host.status.phases else ()
    for phase in phases:
        if phase.name == name:
            return True, phase.finished is not None
    return False, False


def writing_begun(host: PlunderHost) -> bool:
    """Whether the OS write of this provisioning has begun (the image stream, or the installer)."""
    return _phase(host, "writing")[0]


def write_ended(host: PlunderHost) -> bool:
    """Whether the OS write of this provisioning has ended."""
    return _phase(host, "writing")[1]


def write_interrupted(host: PlunderHost) -> bool:
    """Whether a network boot now means the OS write was cut off (begun, not ended)."""
    return (
        hoststate.state_of(host) == "provisioning" and writing_begun(host) and not write_ended(host)
    )


def controller_cycle(host: PlunderHost) -> str:
    """The boot the controller asked for, as a short stamp ("" when it asked for none).

    Entering ``deprovisioning`` the controller power-cycles the host into the agent: a boot of
    its own, whose token must not be one issued before it (to the agent that wrote the OS).
    """
    if hoststate.state_of(host) != "deprovisioning":
        return ""
    started = _phase_started(host, "deprovisioning") or ""
    return hashlib.sha256(started.encode()).hexdigest()[:8]


_NONCE = re.compile(r"[0-9a-f]{32,128}")


def lookup_nonce(value: str | None) -> str | None:
    """The nonce of the agent's boot sent with its lookup, if it is one (hex, >= 128 bits)."""
    return value if value and _NONCE.fullmatch(value) else None


def _nonce_digest(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()[:16]


def new_boot_id(host: PlunderHost, nonce: str | None = None) -> str:
    """A fresh, unguessable boot id, stamped with the controller's cycle it answers.

    Given the nonce of the agent's lookup, its random part is the nonce's hash, so that the same
    boot asking again is known (:func:`asked_again`); the nonce itself is not stored.
    """
    cycle = controller_cycle(host)
    random = _nonce_digest(nonce) if nonce else secrets.token_hex(8)
    return f"{random}{_CYCLE_SEPARATOR}{cycle}" if cycle else random


def asked_again(host: PlunderHost, nonce: str | None) -> bool:
    """Whether a lookup with ``nonce`` comes from the boot that the current token was issued to.

    The first answer was lost: the service died after its write of the boot id, or the
    connection dropped. Refused, that boot could never have its token (a wipe's above all: one
    token per wipe), and the host would wait for good. Nobody else has the nonce: the agent
    keeps it, and only its hash is recorded.
    """
    boot_id = current_boot_id(host)
    if boot_id is None or nonce is None:
        return False
    random, _, _ = boot_id.partition(_CYCLE_SEPARATOR)
    return hmac.compare_digest(random, _nonce_digest(nonce))


def current_boot_id(host: PlunderHost) -> str | None:
    """The boot id whose token is valid now (None: none is, and a lookup may be answered)."""
    boot_id = host.status.agent_boot_id if host.status else None
    if not boot_id:
        return None
    _, _, cycle = boot_id.partition(_CYCLE_SEPARATOR)
    if hoststate.state_of(host) == "deprovisioning" and cycle != controller_cycle(host):
        return None  # issued before the controller asked for this wipe's boot
    # Outside a wipe any boot id stands: the agent that wiped the disk stays parked with it.
    return boot_id


def refuse_lookup(host: PlunderHost, silent_for: float, silence: float) -> str | None:
    """Why a lookup (a request for the token of a new boot) is refused; None: issue one.

    Args:
        host: The host, as cached.
        silent_for: Seconds since the current token's holder last made a call (as far as this
            service knows: since it started, if it has not heard from it).
        silence: How long a holder must be silent before its token may be replaced.
    """
    if current_boot_id(host) is None:
        return None
    state = hoststate.state_of(host)
    if state == "deprovisioning":
        return "the token of this wipe was issued already"
    if state == "provisioning" and writing_begun(host):
        return "the token of this install was issued already and the write has begun"
    if state == "provisioned":
        return "the host is provisioned"
    if silent_for < silence:
        return f"the token of this boot was issued already (last used {silent_for:.0f}s ago)"
    return None


def writes_allowed(host: PlunderHost) -> bool:
    """Whether the host's disks may be written or wiped (it was accepted)."""
    return host.spec.accepted


def serves_seed(host: PlunderHost) -> bool:
    """Whether user-data and vendor-data may be served: provisioning, the write not ended."""
    return (
        hoststate.state_of(host) == "provisioning"
        and writes_allowed(host)
        and not write_ended(host)
    )


def takes_progress(host: PlunderHost) -> bool:
    """Whether the agent's progress may move the host: a write before it ended, or a wipe.

    Afterwards the token of the install (which the installer's logs on the disk keep) can no
    longer fail or finish anything.
    """
    state = hoststate.state_of(host)
    return state == "deprovisioning" or (state == "provisioning" and not write_ended(host))


def takes_write_progress(host: PlunderHost) -> bool:
    """Whether the agent's byte counts may be recorded: its image write is under way."""
    return (
        hoststate.state_of(host) == "provisioning" and writing_begun(host) and not write_ended(host)
    )


def takes_agent_log(host: PlunderHost) -> bool:
    """Whether the holder of the current token may replace the host's kept agent log.

    Any boot's agent may (inspection, a parked host, a failure, a wipe), except once the OS
    write of this provisioning has ended: the token of an install (which an installer's logs on
    the disk keep) writes nothing after it, as it moves nothing. The agent sends its last log
    before its "done".
    """
    state = hoststate.state_of(host)
    if state == "provisioned":
        return False
    return not (state == "provisioning" and write_ended(host))


def takes_phone_home(host: PlunderHost) -> bool:
    """Whether a phone-home may move the host: provisioning, and the write has ended."""
    return hoststate.state_of(host) == "provisioning" and write_ended(host)
