"""The lab's virtual bare-metal hosts: libvirt domains that network-boot first, then their disk.

A host is defined the way a real server is racked: a blank disk, one NIC on the provisioning
network, BIOS (SeaBIOS) or UEFI (OVMF) firmware, and a serial console. The boot order is network
first, then disk, as in the original plunder: every boot asks the boot service, which sends a
provisioned host on to its disk and any other host into the agent. So a host without a BMC can
still be taken back (reboot it, and it is wiped), and a wiped disk is never booted by accident.
Both firmwares load iPXE from the NIC's option ROM (Debian's ipxe-qemu); for UEFI, OVMF's own PXE
client then fetches ``ipxe.efi`` should that fail.

Why these settings (measured under TCG, see the lab findings):

- ``<domain type='qemu'>``: the machine's KVM cannot run ordinary guests, so TCG.
- ``<bios useserial='yes'/>`` (``-machine graphics=off``) and no video device: SeaBIOS, iPXE and
  OVMF then write to the serial port, which goes to a file a test or a person can read.
- virtio-net for both firmwares: a paravirtual NIC, cheaper to emulate under TCG than an e1000
  (the agent streams whole disk images over it); Debian's ipxe-qemu has its iPXE ROM for BIOS
  and for UEFI, and the agent and the OS image carry the driver.

:func:`render_domain_xml` is pure, so the XML is unit-tested; the rest drives virsh.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET  # noqa: N817 - the conventional name
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from plunder.lab import hypervisor

Firmware = Literal["bios", "uefi"]

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
"""Debian ovmf's UEFI firmware without Secure Boot (so it needs no SMM, which TCG makes slow)."""

OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
"""The template of a host's UEFI variables; each host gets its own copy."""

EMULATOR = "/usr/bin/qemu-system-x86_64"

MACHINE: dict[Firmware, str] = {"bios": "pc", "uefi": "q35"}

NIC_MODEL = "virtio"

MAC_PATTERN = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class VMError(ValueError):
    """A host's spec cannot be made into a domain."""


@dataclass(frozen=True)
class VMSpec:
    """A virtual bare-metal host, as racked.

    Attributes:
        name: The domain's name (letters, digits, ``-``, ``_`` and ``.``).
        mac: The NIC's MAC address, lower-case and colon-separated (its boot identity).
        firmware: ``bios`` (SeaBIOS) or ``uefi`` (OVMF).
        disk_gib: The size of its blank disk (a sparse raw file).
        memory_mib: Its memory; iPXE and the in-memory agent fit in 512 MiB.
        cpus: Its virtual CPUs (a second one buys nothing under TCG).
    """

    name: str
    mac: str
    firmware: Firmware = "bios"
    disk_gib: int = 2
    memory_mib: int = 512
    cpus: int = 1

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise VMError(f"host name {self.name!r} must be letters, digits, '-', '_' or '.'")
        if not MAC_PATTERN.match(self.mac):
            raise VMError(f"MAC {self.mac!r} must be lower-case colon form, like 00:50:56:a5:11:20")


@dataclass(frozen=True)
class VMFiles:
    """Where a host's disk, serial log and UEFI variables live."""

    disk: Path
    serial_log: Path
    nvram: Path
    domain_xml: Path

    @classmethod
    def in_dir(cls, vms_dir: Path, name: str) -> VMFiles:
        """The files of host ``name`` under ``vms_dir``."""
        base = vms_dir.absolute()
        return cls(
            disk=base / f"{name}.img",
            serial_log=base / f"{name}.serial.log",
            nvram=base / f"{name}.VARS.fd",
            domain_xml=base / f"{name}.xml",
        )


def render_domain_xml(spec: VMSpec, bridge: str, files: VMFiles) -> str:
    """The libvirt domain XML of ``spec``, its NIC on ``bridge``.

    Args:
        spec: The host.
        bridge: The lab bridge's name (in the daemon's network namespace).
        files: Where its disk, serial log and UEFI variables are.

    Returns:
        The domain XML.
    """
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = spec.name
    ET.SubElement(domain, "memory", unit="MiB").text = str(spec.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(spec.cpus)
    domain.append(_os_element(spec, files))
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(domain, "clock", offset="utc")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    domain.append(_devices_element(spec, bridge, files))
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def _os_element(spec: VMSpec, files: VMFiles) -> ET.Element:
    os_element = ET.Element("os")
    ET.SubElement(os_element, "type", arch="x86_64", machine=MACHINE[spec.firmware]).text = "hvm"
    if spec.firmware == "uefi":
        ET.SubElement(os_element, "loader", readonly="yes", type="pflash").text = str(OVMF_CODE)
        ET.SubElement(os_element, "nvram", template=str(OVMF_VARS)).text = str(files.nvram)
    ET.SubElement(os_element, "bios", useserial="yes")  # -machine graphics=off
    return os_element


def _devices_element(spec: VMSpec, bridge: str, files: VMFiles) -> ET.Element:
    devices = ET.Element("devices")
    ET.SubElement(devices, "emulator").text = EMULATOR
    ET.SubElement(devices, "controller", type="usb", model="none")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    # Guest flushes are ignored: a lab disk lives as long as its lab, and under TCG each flush
    # took 170 ms on average (etcd's WAL fsync in a control-plane host), which made every etcd
    # read wait seconds. A raw file keeps no metadata in QEMU, so a killed QEMU loses nothing
    # the host's page cache already has.
    ET.SubElement(disk, "driver", name="qemu", type="raw", cache="unsafe")
    ET.SubElement(disk, "source", file=str(files.disk))
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    ET.SubElement(disk, "boot", order="2")
    interface = ET.SubElement(devices, "interface", type="bridge")
    ET.SubElement(interface, "source", bridge=bridge)
    ET.SubElement(interface, "mac", address=spec.mac)
    ET.SubElement(interface, "model", type=NIC_MODEL)
    ET.SubElement(interface, "boot", order="1")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(files.serial_log), append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return devices


def define(uri: str, spec: VMSpec, bridge: str, vms_dir: Path) -> VMFiles:
    """Create the host's blank disk (if missing) and define its domain.

    Args:
        uri: The lab's libvirt URI.
        spec: The host.
        bridge: The lab bridge's name.
        vms_dir: Where the host's files go (created if missing).

    Returns:
        The host's files.
    """
    files = VMFiles.in_dir(vms_dir, spec.name)
    vms_dir.mkdir(parents=True, exist_ok=True)
    if not files.disk.exists():
        create_blank_disk(files.disk, spec.disk_gib)
    files.domain_xml.write_text(render_domain_xml(spec, bridge, files))
    hypervisor.virsh(uri, "define", str(files.domain_xml))
    return files


def create_blank_disk(path: Path, gib: int) -> None:
    """Create (or overwrite) a blank, sparse raw disk of ``gib`` GiB at ``path``."""
    result = subprocess.run(  # noqa: S603 - argv is built here, not taken from input
        ["qemu-img", "create", "-q", "-f", "raw", str(path), f"{gib}G"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise VMError(f"qemu-img create {path}: {result.stderr.strip()}")


_NOT_RUNNING = "domain is not running"
"""What virsh says when asked to pull the plug of a host that is off."""


def start(uri: str, name: str) -> None:
    """Power the host on."""
    hypervisor.virsh(uri, "start", name)


def destroy(uri: str, name: str) -> None:
    """Power the host off at once (pull the plug); a host that is off at that moment is fine.

    Its BMC may be power-cycling it (a controller releasing the host does): it can go off
    between the look and the pull, when virsh says "domain is not running", and be on again
    before anyone looks twice. The plug was out; what the host does next is its BMC's doing.
    """
    if state(uri, name) == "shut off":
        return
    try:
        hypervisor.virsh(uri, "destroy", name)
    except hypervisor.HypervisorError as error:
        if _NOT_RUNNING not in str(error):
            raise


def undefine(uri: str, name: str) -> None:
    """Remove the host's domain and its UEFI variables (its disk stays)."""
    hypervisor.virsh(uri, "undefine", name, "--nvram")


def state(uri: str, name: str) -> str:
    """The domain's state as virsh says it, such as ``running`` or ``shut off``."""
    return hypervisor.virsh(uri, "domstate", name).strip()


def read_serial_log(files: VMFiles) -> str:
    """What the host wrote to its serial console, without terminal escapes ("" before boot)."""
    try:
        raw = files.serial_log.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return _ANSI_ESCAPE.sub("", raw)
