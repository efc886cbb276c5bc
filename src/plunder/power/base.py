"""The power interface every BMC driver implements, and what it needs to reach a BMC.

Modelled on ironic's ``drivers/base.py``: one small interface (power state, power on/off,
reboot, a one-time boot device) plus ``validate``, and the settings a driver needs, each with a
description. Drivers are blocking libraries (sushy, pyghmi); the operator calls them in a worker
thread with a deadline, so a BMC that hangs never blocks other hosts.

Every failure a person can act on is a :class:`PowerError` whose ``reason`` is a CamelCase word
for a condition (``BMCAuthFailed``, ``BMCUnreachable``, ``BMCTLSError``, ``BMCCAUnusable``,
``BMCTimeout``, …) and whose message says what to check. Messages never carry the credentials.
"""

from __future__ import annotations

import abc
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import ClassVar, Literal

PowerState = Literal["on", "off"]
BootDevice = Literal["pxe", "disk"]

DEFAULT_PORTS = {"redfish": 443, "redfish+https": 443, "redfish+http": 80, "ipmi": 623}
"""The port of each address scheme when the address names none."""

POWER_OFF_WAIT = 30.0
"""How long a power cycle waits for the host to report off before powering it on."""

_SYSTEM_PATH = re.compile(r"^/redfish/v1/Systems/[^/\s]+/?$")


class PowerError(Exception):
    """A BMC did not do what was asked; ``reason`` names the fault for a condition."""

    reason: ClassVar[str] = "BMCError"


class BMCAddressError(PowerError):
    """The address cannot be parsed, or names a driver that does not exist."""

    reason = "BMCAddressInvalid"


class BMCCredentialsError(PowerError):
    """The credentials Secret is missing, or lacks ``username`` or ``password``."""

    reason = "BMCCredentialsMissing"


class BMCAuthError(PowerError):
    """The BMC refused the credentials."""

    reason = "BMCAuthFailed"


class BMCUnreachableError(PowerError):
    """Nothing answers at the address (connection refused, no route, no IPMI reply)."""

    reason = "BMCUnreachable"


class BMCTLSError(PowerError):
    """The TLS handshake failed, usually a certificate that is not trusted."""

    reason = "BMCTLSError"


class BMCCAError(PowerError):
    """The ``ca.crt`` of the credentials Secret cannot be used (not PEM, or no place to keep it)."""

    reason = "BMCCAUnusable"


class BMCTimeoutError(PowerError):
    """The BMC accepted the connection but did not answer in time."""

    reason = "BMCTimeout"


class BMCSystemNotFoundError(PowerError):
    """The BMC answers, but has no system at the address's path."""

    reason = "BMCSystemNotFound"


class BMCRequestError(PowerError):
    """The BMC answered a request with an error."""

    reason = "BMCRequestFailed"


@dataclass(frozen=True)
class BMCAddress:
    """A parsed BMC address.

    Attributes:
        driver: The power driver the scheme names (``redfish``, ``ipmi``).
        scheme: The address's scheme as written (``redfish+http``, …).
        host: The BMC's host name or IP address.
        port: Its port (the scheme's default when the address names none).
        path: For Redfish, the system's path (``/redfish/v1/Systems/ID``); else empty.
    """

    driver: str
    scheme: str
    host: str
    port: int
    path: str = ""

    @property
    def tls(self) -> bool:
        """Whether the BMC is spoken to over TLS (Redfish over https)."""
        return self.scheme in ("redfish", "redfish+https")

    @property
    def base_url(self) -> str:
        """For Redfish, the service's ``scheme://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def system_id(self) -> str:
        """For Redfish, the last part of the system's path."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_address(address: str) -> BMCAddress:
    """Parse ``redfish[+http|+https]://host[:port]/redfish/v1/Systems/ID`` or ``ipmi://host[:port]``.

    Raises:
        BMCAddressError: The address has another form; the message shows the accepted ones.
    """
    try:
        parts = urllib.parse.urlsplit(address.strip())
        port = parts.port
    except ValueError as error:
        raise BMCAddressError(f"BMC address {address!r}: {error}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise BMCAddressError(
            f"BMC address {address!r} must be redfish://host[:port]/redfish/v1/Systems/ID "
            "(or redfish+http://, redfish+https://) or ipmi://host[:port]"
        )
    if parts.username or parts.password:
        raise BMCAddressError(
            "BMC address must not carry credentials: put them in the credentials Secret"
        )
    driver = scheme.split("+", 1)[0]
    path = parts.path
    if driver == "redfish" and not _SYSTEM_PATH.match(path):
        raise BMCAddressError(
            f"Redfish address {address!r} must name a system: …/redfish/v1/Systems/ID"
        )
    if driver == "ipmi" and path not in ("", "/"):
        raise BMCAddressError(f"IPMI address {address!r} takes no path: ipmi://host[:port]")
    return BMCAddress(
        driver=driver,
        scheme=scheme,
        host=parts.hostname,
        port=port or DEFAULT_PORTS[scheme],
        path=path.rstrip("/") if driver == "redfish" else "",
    )


@dataclass(frozen=True)
class Credentials:
    """A BMC user; ``repr`` hides the password so a logged object never shows it."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BMCSettings:
    """Everything a driver needs to reach one host's BMC.

    Attributes:
        address: Where the BMC is.
        credentials: Who to log in as (None for the ``none`` driver).
        verify_certificate: Check the BMC's TLS certificate (on by default).
        ca_file: A CA bundle to trust instead of the system's (None: the system's).
        timeout: Seconds one request may take before the BMC counts as hanging.
    """

    address: BMCAddress | None
    credentials: Credentials | None = None
    verify_certificate: bool = True
    ca_file: str | None = None
    timeout: float = 10.0


@dataclass(frozen=True)
class Property:
    """A setting a driver requires, with a description for people (ironic's properties)."""

    name: str
    description: str


class PowerDriver(abc.ABC):
    """The power interface of one host's BMC; every call blocks until the BMC answered.

    Subclasses declare ``properties`` (what they need) and raise :class:`PowerError` subclasses.
    """

    name: ClassVar[str]
    properties: ClassVar[tuple[Property, ...]] = ()

    def __init__(self, settings: BMCSettings) -> None:
        self.settings = settings

    def validate(self) -> None:
        """Check the settings hold what the driver needs, without talking to the BMC.

        Raises:
            BMCAddressError: No address, or one of another driver.
            BMCCredentialsError: The driver needs credentials and has none.
        """
        address = self.settings.address
        if address is None or address.driver != self.name:
            raise BMCAddressError(f"the {self.name} driver needs a {self.name}:// address")
        if self.settings.credentials is None:
            raise BMCCredentialsError(f"the {self.name} driver needs a username and password")

    @abc.abstractmethod
    def get_power_state(self) -> PowerState:
        """The power state the BMC reports."""

    @abc.abstractmethod
    def set_power_state(self, state: PowerState) -> None:
        """Power the host on, or off at once (no graceful shutdown: it is bare metal to wipe)."""

    def reboot(self) -> None:
        """Power-cycle the host: off at once, wait until the BMC reports off, then on.

        A real power cycle rather than a warm reset: BMCs (and their emulators) apply a one-time
        boot device when the system starts, and a reset keeps the running machine.
        """
        self.set_power_state("off")
        deadline = time.monotonic() + POWER_OFF_WAIT
        while self.get_power_state() != "off":
            if time.monotonic() > deadline:
                raise BMCRequestError(
                    f"{self.settings.address} did not power off within {POWER_OFF_WAIT:.0f}s"
                )
            time.sleep(0.5)
        self.set_power_state("on")

    @abc.abstractmethod
    def set_one_time_boot(self, device: BootDevice) -> None:
        """Boot from ``device`` on the next boot only."""

    def close(self) -> None:  # noqa: B027 - a hook; most drivers hold nothing open
        """Let go of sessions held with the BMC."""
