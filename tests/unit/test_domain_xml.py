"""The libvirt domain of a virtual bare-metal host."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from plunder.lab import vms


def domain(firmware: vms.Firmware) -> ET.Element:
    spec = vms.VMSpec(name="h1", mac="00:50:56:a5:11:20", firmware=firmware)
    xml = vms.render_domain_xml(spec, "br0", vms.VMFiles.in_dir(Path("/lab/vms"), "h1"))
    return ET.fromstring(xml)


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_a_host_is_a_tcg_guest_whose_nic_is_on_the_lab_bridge(firmware: vms.Firmware) -> None:
    root = domain(firmware)
    assert root.get("type") == "qemu"  # TCG: the KVM here cannot run guests
    nic = root.find("devices/interface")
    assert nic is not None and nic.get("type") == "bridge"
    assert nic.find("source").get("bridge") == "br0"  # type: ignore[union-attr]
    assert nic.find("mac").get("address") == "00:50:56:a5:11:20"  # type: ignore[union-attr]
    disk_order = root.find("devices/disk/boot").get("order")  # type: ignore[union-attr]
    nic_order = nic.find("boot").get("order")  # type: ignore[union-attr]
    assert int(nic_order) < int(disk_order)  # every boot asks the boot service first


def test_uefi_hosts_use_ovmf_with_their_own_variables() -> None:
    loader = domain("uefi").find("os/loader")
    assert loader is not None and "OVMF" in (loader.text or "")
    nvram = domain("uefi").find("os/nvram")
    assert nvram is not None and nvram.text == "/lab/vms/h1.VARS.fd"
    assert "OVMF_VARS" in nvram.get("template", "")
    assert domain("bios").find("os/loader") is None


@pytest.mark.parametrize(
    ("name", "mac"), [("bad name!", "00:50:56:a5:11:20"), ("h1", "00:50:56:A5:11:20")]
)
def test_invalid_hosts_are_refused(name: str, mac: str) -> None:
    with pytest.raises(vms.VMError):
        vms.VMSpec(name=name, mac=mac)


def test_a_host_disk_is_raw_and_ignores_guest_flushes() -> None:
    driver = domain("bios").find("devices/disk/driver")
    assert driver is not None
    assert (driver.get("type"), driver.get("cache")) == ("raw", "unsafe")
    source = domain("bios").find("devices/disk/source")
    assert source is not None and source.get("file") == "/lab/vms/h1.img"
