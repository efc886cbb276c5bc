"""Decide what a network-booting host should do, from what the inventory says of it."""

from __future__ import annotations

from plunder.api.inventory import PlunderHost
from plunder.boot.ipxe.scripts import BootDecision

AGENT_KERNEL = "agent/vmlinuz"
AGENT_INITRD = "agent/initrd.img"
_AGENT_STATES = frozenset({"inspecting", "provisioning", "deprovisioning"})


def has_work(host: PlunderHost) -> bool:
    """Whether something is to be installed on, or done to, the host."""
    state = host.status.state if host.status else None
    return (
        host.spec.image is not None
        or host.spec.deployment_type is not None
        or state in _AGENT_STATES
    )


def decide(host: PlunderHost | None, files_base: str, agent_cmdline: str) -> BootDecision:
    """The boot decision for ``host`` (None: a MAC seen for the first time)."""
    if host is None:
        return BootDecision("park", "discovered; waiting for work")
    state = (host.status.state if host.status else None) or "discovered"
    if state == "provisioned":
        return BootDecision("disk", "provisioned; booting from disk")
    if has_work(host):
        return BootDecision(
            "kernel",
            f"{state}; booting the agent",
            kernel=f"{files_base}/{AGENT_KERNEL}",
            initrd=f"{files_base}/{AGENT_INITRD}",
            cmdline=agent_cmdline,
        )
    if host.spec.park_mode == "reboot":
        return BootDecision("reboot-loop", f"{state}; no work (reboot loop)")
    return BootDecision("park", f"{state}; waiting for work")
