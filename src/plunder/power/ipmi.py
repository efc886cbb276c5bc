"""The IPMI power driver, on pyghmi (IPMI 2.0 over LAN, as ``ipmitool -I lanplus``).

IPMI runs over UDP, so "nothing listens" and "a BMC that hangs" look alike: no reply. pyghmi
gives up on its own after a few seconds of retransmissions; the operator's deadline bounds it too.
``reboot`` is a power cycle (off, then on), for the same reason as Redfish's: a one-time boot
device is applied when the system starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pyghmi.exceptions
from pyghmi.ipmi import command
from pyghmi.ipmi.private import session

from plunder.power import base


def _propose_cipher_suite_3() -> None:
    """Make pyghmi open sessions with cipher suite 3 (HMAC-SHA1, AES-CBC-128).

    pyghmi proposes suite 17 (SHA-256) first and does not read which algorithms the BMC chose:
    a BMC that answers with suite 3 anyway (virtualbmc does, as does older firmware) then fails
    the login with a struct error. Suite 3 is the one every IPMI 2.0 BMC must support, and what
    ipmitool used by default for years.
    """
    original = session.Session._initsession
    if getattr(original, "plunder_suite_3", False):
        return

    def initsession(self: Any) -> None:
        original(self)
        self.attemptedhash = 1

    initsession.plunder_suite_3 = True  # type: ignore[attr-defined]
    session.Session._initsession = initsession


_propose_cipher_suite_3()

BOOT_DEVICES: dict[base.BootDevice, str] = {"pxe": "network", "disk": "hd"}


class IPMIPower(base.PowerDriver):
    """Power of one host through its IPMI BMC."""

    name = "ipmi"
    properties = (
        base.Property("address", "ipmi://host[:port] (port 623 unless given)"),
        base.Property("username", "A BMC user with operator privilege"),
        base.Property("password", "That user's password"),
    )

    def __init__(self, settings: base.BMCSettings) -> None:
        super().__init__(settings)
        self._command: Any = None

    def _connect(self) -> Any:
        if self._command is not None:
            return self._command
        self.validate()
        settings = self.settings
        assert settings.address is not None and settings.credentials is not None
        with _translated(settings):
            self._command = command.Command(
                bmc=settings.address.host,
                userid=settings.credentials.username,
                password=settings.credentials.password,
                port=settings.address.port,
                keepalive=False,
            )
        return self._command

    def get_power_state(self) -> base.PowerState:
        """Chassis power status."""
        ipmi = self._connect()
        with _translated(self.settings):
            state = ipmi.get_power()["powerstate"]
        return "on" if state == "on" else "off"

    def set_power_state(self, state: base.PowerState) -> None:
        """Chassis power on, or off (immediately)."""
        ipmi = self._connect()
        with _translated(self.settings):
            ipmi.set_power(state, wait=False)

    def set_one_time_boot(self, device: base.BootDevice) -> None:
        """Chassis bootdev network or hd, for the next boot only."""
        ipmi = self._connect()
        with _translated(self.settings):
            answer = ipmi.set_bootdev(BOOT_DEVICES[device], persist=False)
        if isinstance(answer, dict) and "error" in answer:
            raise base.BMCRequestError(f"{self.settings.address}: {answer['error']}")

    def close(self) -> None:
        """Log out, and make pyghmi forget the session.

        pyghmi keeps sessions in class-wide tables and hands a cached one to the next caller of
        the same BMC; a logged-out one handed on fails (or hangs) that caller. So each driver
        logs in and out on its own, and its session leaves those tables.
        """
        if self._command is None:
            return
        ipmi_session = self._command.ipmi_session
        self._command = None
        try:
            ipmi_session.logout()
        except (pyghmi.exceptions.PyghmiException, OSError, TypeError):
            pass  # the BMC went away: nothing to log out of
        _forget(ipmi_session)


def _forget(ipmi_session: Any) -> None:
    tables = session.Session
    for key, value in list(tables.initting_sessions.items()):
        if value is ipmi_session:
            del tables.initting_sessions[key]
    for handlers in tables.bmc_handlers.values():
        for key, value in list(handlers.items()):
            if value is ipmi_session:
                del handlers[key]


@contextlib.contextmanager
def _translated(settings: base.BMCSettings) -> Iterator[None]:
    """Turn pyghmi's exceptions (and socket errors) into :class:`base.PowerError`."""
    try:
        yield
    except pyghmi.exceptions.PyghmiException as error:
        raise translate(error, settings) from None
    except OSError as error:
        raise base.BMCUnreachableError(
            f"cannot send to {settings.address}: {error.strerror or error}"
        ) from None


def translate(error: Exception, settings: base.BMCSettings) -> base.PowerError:
    """The :class:`base.PowerError` for a pyghmi exception; never with the credentials."""
    where = str(settings.address)
    text = str(error)
    lowered = text.lower()
    if "unauthorized" in lowered or "password" in lowered or "incorrect" in lowered:
        return base.BMCAuthError(
            f"{where} refused the credentials ({text}): check the username and password in "
            "the credentials Secret"
        )
    silent = lowered in ("", "none")  # pyghmi's login gave up without a reply
    if (
        silent
        or "timeout" in lowered
        or "no longer connected" in lowered
        or "logged out" in lowered
    ):
        return base.BMCUnreachableError(
            f"no IPMI answer from {where}: check the address and port, that the BMC is up and "
            "that UDP reaches it"
        )
    return base.BMCRequestError(f"{where} refused the request: {text[:300]}")
