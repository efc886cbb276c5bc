"""The iPXE script a host gets, by its state."""

from __future__ import annotations

from typing import Any

import pytest

from plunder.api.inventory import PlunderHost
from plunder.boot.ipxe.decide import decide
from plunder.boot.ipxe.scripts import BootDecision, chain_script, render_script
from plunder.boot.macs import InvalidMACError, host_name, normalise_mac

BASE = "http://172.31.99.1:8080"
MAC = "00:50:56:a5:11:20"


def host(state: str | None = None, **spec: Any) -> PlunderHost:
    return PlunderHost.model_validate(
        {"spec": {"bootMACAddress": MAC, **spec}, "status": {"state": state} if state else None}
    )


def script_for(h: PlunderHost | None, agent: bool = False) -> str:
    decision = decide(h, f"{BASE}/files", f"plunder.mac={MAC}", agent_available=agent)
    return render_script(decision, MAC, BASE, poll_seconds=3)


def test_a_new_host_parks_and_polls_in_the_same_ipxe_session() -> None:
    script = script_for(None)
    assert script.startswith("#!ipxe\n")
    assert "prompt --timeout 3000" in script
    assert f"chain --replace --autofree {BASE}/boot.ipxe?mac={MAC}&" in script
    assert "goto poll" in script and "reboot" not in script


def test_the_seeds_reboot_loop_is_kept_per_host() -> None:
    script = script_for(host("discovered", parkMode="reboot"))
    assert "reboot" in script and "chain" not in script


@pytest.mark.parametrize(
    "work",
    [
        {"deploymentType": "preseed"},
        {"image": {"url": f"{BASE}/files/os.raw", "checksum": "a" * 64}},
    ],
)
def test_work_boots_the_agent(work: dict[str, Any]) -> None:
    script = script_for(host("available", **work))
    assert (
        f"kernel {BASE}/files/agent/vmlinuz initrd=initrd.img plunder.mac={MAC} || goto failed"
        in script
    )
    assert f"initrd {BASE}/files/agent/initrd.img || goto failed" in script
    assert "boot || goto failed" in script


@pytest.mark.parametrize("state", ["inspecting", "provisioning", "deprovisioning"])
def test_agent_states_boot_the_agent(state: str) -> None:
    assert "kernel " in script_for(host(state))


def test_a_provisioned_host_is_sent_to_its_disk() -> None:
    script = script_for(host("provisioned", deploymentType="preseed"))
    assert "sanboot --no-describe --drive 0x80" in script
    # UEFI: the EFI disk booter, not `exit` (a freshly written disk has no firmware boot entry)
    assert "iseq ${platform} efi && goto efi" in script
    assert f"chain --autofree {BASE}/files/agent/disk-boot.efi || exit" in script
    assert "kernel" not in script


def test_chain_script_reports_the_hosts_facts() -> None:
    script = chain_script(BASE)
    for fact in ("${net0/mac}", "${platform}", "${manufacturer:uristring}", "${serial:uristring}"):
        assert fact in script


def test_chain_script_waits_for_a_restarting_boot_service_then_gives_up() -> None:
    """A boot service that restarts (killed in the lab's chaos run) must not send hosts to disk."""
    lines = chain_script(BASE).splitlines()
    asks = [line for line in lines if line.startswith(f"chain --replace --autofree {BASE}/")]
    assert len(asks) == 20
    assert all(
        line.endswith("asking again ||") and "prompt --timeout 3000" in line for line in asks
    )
    assert lines[0] == "#!ipxe" and lines[-1] == "exit"


def test_with_the_agent_present_hosts_park_in_the_agent_not_in_ipxe() -> None:
    assert "kernel " in script_for(None, agent=True)  # a new host is inspected at once
    assert "kernel " in script_for(host("available"), agent=True)
    assert "reboot" in script_for(host("available", parkMode="reboot"), agent=True)
    assert "sanboot" in script_for(host("provisioned"), agent=True)


def test_a_host_whose_image_is_written_boots_its_disk_before_phoning_home() -> None:
    writing = {"name": "writing", "started": "2026-11-25T12:00:00Z"}
    busy = PlunderHost.model_validate(
        {
            "spec": {"bootMACAddress": MAC, "deploymentType": "preseed"},
            "status": {"state": "provisioning", "phases": [writing]},
        }
    )
    assert "kernel " in script_for(busy, agent=True)
    done = busy.model_copy(deep=True)
    assert done.status is not None and done.status.phases is not None
    done.status.phases[0].finished = done.status.phases[0].started
    assert "sanboot" in script_for(done, agent=True)


def test_a_kernel_decision_needs_a_kernel() -> None:
    with pytest.raises(ValueError, match="kernel"):
        render_script(BootDecision("kernel", "x"), MAC, BASE, 3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("00:50:56:A5:11:20", MAC), ("00-50-56-a5-11-20", MAC), (MAC, MAC)],
)
def test_macs_are_normalised(text: str, expected: str) -> None:
    assert normalise_mac(text) == expected
    assert host_name(expected) == "host-00-50-56-a5-11-20"


@pytest.mark.parametrize(
    "text", ["", "zz", "00:50:56:a5:11", "00:50:56:a5:11:20:33", "00:50-56:a5:11:20", "../x" * 9]
)
def test_other_macs_are_refused(text: str) -> None:
    with pytest.raises(InvalidMACError):
        normalise_mac(text)
