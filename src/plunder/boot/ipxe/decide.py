"""Decide what a network-booting host should do, from what the inventory says of it."""

from __future__ import annotations

import dataclasses

from plunder.api.inventory import PlunderHost
from plunder.boot.installer import boot as installer
from plunder.boot.installer.target import install_target
from plunder.boot.ipxe.scripts import BootDecision
from plunder.reconcile import hoststate

AGENT_KERNEL = "agent/vmlinuz"
AGENT_INITRD = "agent/initrd.img"
EFI_DISK_BOOT = "agent/disk-boot.efi"
"""The EFI program that boots a UEFI host's disk (see plunder.images.diskboot), under /files/."""
_AGENT_STATES = frozenset({"inspecting", "provisioning", "deprovisioning"})


def has_work(host: PlunderHost) -> bool:
    """Whether something is to be installed on, or done to, the host."""
    return hoststate.has_image_work(host) or hoststate.state_of(host) in _AGENT_STATES


def image_written(host: PlunderHost) -> bool:
    """Whether the agent finished writing the OS (the host must now boot its disk)."""
    phases = host.status.phases if host.status and host.status.phases else ()
    return any(phase.name == "writing" and phase.finished for phase in phases)


def installs(host: PlunderHost) -> bool:
    """Whether the host is to boot its installer now (preseed or kickstart, not yet written)."""
    return (
        host.spec.deployment_type is not None
        and host.spec.accepted  # an installer writes the disk: never before acceptance
        and hoststate.state_of(host) == "provisioning"
        and not image_written(host)
    )


def decide(
    host: PlunderHost | None,
    files_base: str,
    agent_cmdline: str,
    agent_available: bool,
    *,
    server: str = "",
    token: str = "",
) -> BootDecision:
    """The boot decision for ``host`` (None: a MAC seen for the first time).

    With the agent image present every host that is not provisioned boots into the agent, which
    inspects it and then waits for work itself; without it, hosts park in iPXE. A host being
    provisioned with ``deploymentType`` boots its installer instead, with ``token`` (the boot's
    token) in the URL of its answer file on ``server``.
    """
    agent = BootDecision(
        "kernel",
        "booting the agent",
        kernel=f"{files_base}/{AGENT_KERNEL}",
        initrd=f"{files_base}/{AGENT_INITRD}",
        cmdline=agent_cmdline,
    )
    if host is None:
        return agent if agent_available else BootDecision("park", "discovered; waiting for work")
    state = hoststate.state_of(host)
    if state == "provisioned" or (state == "provisioning" and image_written(host)):
        return BootDecision(
            "disk", f"{state}; booting from disk", kernel=f"{files_base}/{EFI_DISK_BOOT}"
        )
    if installs(host) and host.spec.deployment_type is not None:
        target = install_target(host, server)
        return installer.boot_decision(target, host.spec.deployment_type, files_base, token)
    if has_work(host) or (agent_available and host.spec.park_mode == "poll"):
        return dataclasses.replace(agent, reason=f"{state}; booting the agent")
    if host.spec.park_mode == "reboot":
        return BootDecision("reboot-loop", f"{state}; no work (reboot loop)")
    return BootDecision("park", f"{state}; waiting for work")
