"""Pulling a lab host's plug while its BMC may be power-cycling it (the controller's release)."""

from __future__ import annotations

import pytest

from plunder.lab import hypervisor, vms


class Domain:
    """virsh for one domain whose power may change on its own.

    ``goes_off``: it goes off the moment it is looked at (the BMC's power cycle turning it off
    between the look and the pull). ``comes_back``: and the cycle's power-on follows the pull.
    """

    def __init__(self, running: bool, goes_off: bool, comes_back: bool = False) -> None:
        self.running = running
        self.goes_off = goes_off
        self.comes_back = comes_back
        self.destroyed = 0

    def virsh(self, uri: str, *args: str, check: bool = True) -> str:
        del uri, check
        if args[0] == "domstate":
            state = "running" if self.running else "shut off"
            if self.goes_off:
                self.running = False
            return f"{state}\n"
        if args[0] == "destroy":
            if not self.running:
                self.running = self.comes_back
                raise hypervisor.HypervisorError(
                    f"virsh destroy {args[1]}: error: Failed to destroy domain '{args[1]}'\n"
                    "error: Requested operation is not valid: domain is not running"
                )
            self.destroyed += 1
            self.running = False
            return ""
        raise AssertionError(args)


@pytest.mark.parametrize(
    ("running", "goes_off", "destroyed"),
    [(True, False, 1), (False, False, 0), (True, True, 0)],
    ids=["running", "off already", "goes off meanwhile"],
)
def test_a_host_is_off_after_its_plug_is_pulled(
    monkeypatch: pytest.MonkeyPatch, running: bool, goes_off: bool, destroyed: int
) -> None:
    domain = Domain(running, goes_off)
    monkeypatch.setattr(hypervisor, "virsh", domain.virsh)
    vms.destroy("qemu:///system", "plunder-host-3")
    assert not domain.running
    assert domain.destroyed == destroyed


def test_a_host_power_cycled_by_its_bmc_during_the_pull_is_no_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CI's template e2e: off at the pull, on again (the cycle's second half) when looked at."""
    domain = Domain(running=True, goes_off=True, comes_back=True)
    monkeypatch.setattr(hypervisor, "virsh", domain.virsh)
    vms.destroy("qemu:///system", "plunder-host-2")
    assert domain.destroyed == 0
    assert domain.running  # what it does next is its BMC's doing


def test_a_plug_that_would_not_pull_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def virsh(uri: str, *args: str, check: bool = True) -> str:
        if args[0] == "domstate":
            return "running\n"
        raise hypervisor.HypervisorError("virsh destroy plunder-host-3: error: internal error")

    monkeypatch.setattr(hypervisor, "virsh", virsh)
    with pytest.raises(hypervisor.HypervisorError, match="internal error"):
        vms.destroy("qemu:///system", "plunder-host-3")
