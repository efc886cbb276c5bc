"""The Redfish power driver, on sushy (the library ironic's Redfish driver uses).

``reboot`` is a power cycle (ForceOff, then On) rather than ForceRestart: a reset keeps the
running machine, and some BMCs (sushy-tools' libvirt driver among them) apply a one-time boot
override only when the system is started again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import requests.exceptions
import sushy
import sushy.exceptions

from plunder.power import base


class RedfishPower(base.PowerDriver):
    """Power of one Redfish ComputerSystem."""

    name = "redfish"
    properties = (
        base.Property(
            "address",
            "redfish[+http|+https]://host[:port]/redfish/v1/Systems/ID (https unless +http)",
        ),
        base.Property("username", "A BMC user allowed to reset the system and set boot options"),
        base.Property("password", "That user's password"),
        base.Property("verify_certificate", "Check the BMC's TLS certificate (default: yes)"),
    )

    def __init__(self, settings: base.BMCSettings) -> None:
        super().__init__(settings)
        self._root: Any = None
        self._system: Any = None

    def _connect(self) -> Any:
        """The sushy system object, made on first use (sushy reads the service root then)."""
        if self._system is not None:
            return self._system
        self.validate()
        settings = self.settings
        assert settings.address is not None and settings.credentials is not None
        verify: bool | str = settings.verify_certificate
        if verify and settings.ca_file:
            verify = settings.ca_file
        with _translated(settings):
            self._root = sushy.Sushy(
                settings.address.base_url,
                verify=verify,
                auth=sushy.auth.BasicAuth(
                    settings.credentials.username, settings.credentials.password
                ),
                read_timeout=settings.timeout,
                connect_timeout=settings.timeout,
                server_side_retries=1,
                server_side_retries_delay=1,
            )
            self._system = self._root.get_system(settings.address.path)
        return self._system

    def get_power_state(self) -> base.PowerState:
        """On, or off (a system powering on or off counts as where it is headed)."""
        system = self._connect()
        with _translated(self.settings):
            system.refresh(force=True)
            state = system.power_state
        return "on" if state in (sushy.PowerState.ON, sushy.PowerState.POWERING_ON) else "off"

    def set_power_state(self, state: base.PowerState) -> None:
        """Reset On, or ForceOff."""
        system = self._connect()
        if self.get_power_state() == state:
            return
        reset = sushy.ResetType.ON if state == "on" else sushy.ResetType.FORCE_OFF
        with _translated(self.settings):
            system.reset_system(reset)

    def set_one_time_boot(self, device: base.BootDevice) -> None:
        """BootSourceOverrideTarget Pxe or Hdd, enabled Once (the mode is left as it is)."""
        system = self._connect()
        target = sushy.BootSource.PXE if device == "pxe" else sushy.BootSource.HDD
        with _translated(self.settings):
            system.set_system_boot_options(
                target=target, enabled=sushy.BootSourceOverrideEnabled.ONCE
            )

    def close(self) -> None:
        """Let go of sushy's objects (its HTTP session closes with them)."""
        self._root = self._system = None


@contextlib.contextmanager
def _translated(settings: base.BMCSettings) -> Iterator[None]:
    """Turn sushy's and requests' exceptions into :class:`base.PowerError` with a reason."""
    try:
        yield
    except (sushy.exceptions.SushyError, requests.exceptions.RequestException) as error:
        translated = translate(error, settings)
        if translated is None:
            raise
        raise translated from None


def translate(error: Exception, settings: base.BMCSettings) -> base.PowerError | None:
    """The :class:`base.PowerError` for a sushy or requests exception (None: not one of theirs).

    The messages name the address and what to check; never the credentials.
    """
    where = str(settings.address)
    cause = error.__context__ if isinstance(error, sushy.exceptions.ConnectionError) else error
    if isinstance(cause, requests.exceptions.SSLError):
        hint = (
            "the BMC's certificate is not trusted: give the BMC a certificate signed by a "
            "trusted CA, or set spec.bmc.disableCertificateVerification"
            if "CERTIFICATE_VERIFY_FAILED" in str(cause) or "certificate" in str(cause).lower()
            else "check that the BMC speaks https on this port"
        )
        return base.BMCTLSError(f"TLS handshake with {where} failed: {hint}")
    if isinstance(cause, requests.exceptions.ReadTimeout):
        return base.BMCTimeoutError(
            f"{where} accepted the connection but did not answer within {settings.timeout:.0f}s"
        )
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return base.BMCUnreachableError(
            f"no connection to {where} within {settings.timeout:.0f}s: check the address "
            "and that the BMC's network is reachable"
        )
    if isinstance(cause, requests.exceptions.ConnectionError):
        return base.BMCUnreachableError(
            f"cannot connect to {where} ({_short(cause)}): check the address and port, and "
            "that the BMC is up"
        )
    if isinstance(error, sushy.exceptions.ConnectionError):
        return base.BMCUnreachableError(f"cannot talk to {where}: {_short(cause or error)}")
    if isinstance(error, sushy.exceptions.AccessError):
        return base.BMCAuthError(
            f"{where} refused the credentials (HTTP {error.status_code}): check the username "
            "and password in the credentials Secret"
        )
    if isinstance(error, sushy.exceptions.ResourceNotFoundError):
        return base.BMCSystemNotFoundError(
            f"{where} has no system {settings.address.system_id if settings.address else ''}: "
            "check the system id in the address (GET /redfish/v1/Systems lists them)"
        )
    if isinstance(error, sushy.exceptions.SushyError):
        return base.BMCRequestError(f"{where} refused the request: {_short(error)}")
    return None


def _short(error: BaseException) -> str:
    return str(error).splitlines()[0][:300] if str(error) else type(error).__name__
