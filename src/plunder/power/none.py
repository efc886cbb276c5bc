"""The ``none`` driver: a host without a BMC, driven only by the network-boot loop.

Such a host boots the network first on every boot, and the boot service decides what it runs
(the agent, or its disk). Nothing can power it; the operator never asks this driver to.
"""

from __future__ import annotations

from plunder.power import base


class NoPower(base.PowerDriver):
    """A host with no BMC: every power call is refused, so a caller's mistake is loud."""

    name = "none"

    def validate(self) -> None:
        """Nothing to check: the host needs no address and no credentials."""

    def _refuse(self) -> base.PowerError:
        return base.BMCAddressError(
            "the host has no BMC (driver none): it is driven by its network-boot loop; set "
            "spec.bmc to manage its power"
        )

    def get_power_state(self) -> base.PowerState:
        """Unknown without a BMC."""
        raise self._refuse()

    def set_power_state(self, state: base.PowerState) -> None:
        """Impossible without a BMC."""
        raise self._refuse()

    def reboot(self) -> None:
        """Impossible without a BMC."""
        raise self._refuse()

    def set_one_time_boot(self, device: base.BootDevice) -> None:
        """Unneeded: the host boots the network first, always."""
        raise self._refuse()
