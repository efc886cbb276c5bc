"""The OS image boots under TCG and cloud-init runs a NoCloud seed written into its filesystem.

This is what a provisioned host does after the agent has streamed the image and written the
seed: boot from its virtio disk, run cloud-init once, and come up on its e1000 NIC. QEMU runs
directly (no libvirt, no lab network); its user-mode NIC is ``restrict=on``, so the guest gets
a DHCP lease from QEMU and reaches nothing beyond it.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from plunder.images import osimage

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT_S = 180
GUEST_MAC = "52:54:00:12:34:56"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
FINISHED = re.compile(r"Cloud-init v\. \S+ finished at")


@pytest.fixture(scope="module")
def os_image() -> osimage.OSImage:
    if os.geteuid() != 0:
        pytest.fail("building the OS image needs root (debootstrap)")
    started = time.monotonic()
    image = osimage.build_os_image()
    print(f"\nOS image {image.path.name}: ready in {time.monotonic() - started:.1f} s")
    return image


@dataclass
class Boot:
    """A QEMU guest booting a copy of the image, and what its serial console said when."""

    serial_log: Path
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)

    def console(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def seconds_until(self, pattern: re.Pattern[str], deadline: float) -> float:
        while not pattern.search(self.console()):
            if self.process.poll() is not None:
                pytest.fail(f"QEMU exited ({self.process.returncode}):\n{self.console()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern.pattern!r} on the console:\n{self.console()[-3000:]}")
            time.sleep(0.2)
        return time.monotonic() - self.started


@pytest.fixture
def boot_seeded(os_image: osimage.OSImage, tmp_path: Path) -> Iterator[_Booter]:
    booter = _Booter(os_image, tmp_path)
    yield booter
    booter.stop()


class _Booter:
    def __init__(self, image: osimage.OSImage, folder: Path) -> None:
        self.image = image
        self.folder = folder
        self.boots: list[Boot] = []
        self.disks: list[Path] = []

    def __call__(
        self,
        user_data: str,
        network_config: str | None = None,
        uefi: bool = False,
        disk_bytes: int | None = None,
    ) -> Boot:
        disk = self.folder / f"disk-{len(self.boots)}.raw"
        subprocess.run(["cp", "--sparse=always", str(self.image.path), str(disk)], check=True)
        if disk_bytes:
            os.truncate(disk, disk_bytes)  # a host's disk is bigger than the image
        self.disks.append(disk)
        hostname = f"plunder-{secrets.token_hex(3)}"
        meta_data = f"instance-id: i-{secrets.token_hex(8)}\nlocal-hostname: {hostname}\n"
        osimage.write_nocloud_seed(disk, meta_data, user_data, network_config)
        serial_log = self.folder / f"serial-{len(self.boots)}.log"
        firmware: list[str] = []
        if uefi:
            variables = self.folder / f"vars-{len(self.boots)}.fd"
            shutil.copyfile(OVMF_VARS, variables)
            firmware = [
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive",
                f"if=pflash,format=raw,unit=1,file={variables}",
            ]
        argv = [
            "qemu-system-x86_64",
            "-nodefaults",
            "-accel",
            "tcg",
            "-machine",
            "q35,graphics=off" if uefi else "pc,graphics=off",
            *firmware,
            "-m",
            "1024",
            "-smp",
            "2",
            "-drive",
            f"file={disk},if=virtio,format=raw",
            "-nic",
            f"user,model=e1000,mac={GUEST_MAC},restrict=on",
            "-serial",
            f"file:{serial_log}",
            "-display",
            "none",
            "-monitor",
            "none",
        ]
        started = time.monotonic()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.boots.append(Boot(serial_log, process, started))
        self.hostname = hostname
        return self.boots[-1]

    def stop(self) -> None:
        for boot in self.boots:
            if boot.process.poll() is None:
                boot.process.kill()
            boot.process.wait(timeout=30)
        for disk in self.disks:  # ~470 MB each; the serial logs stay for a post-mortem
            disk.unlink(missing_ok=True)


def marker_user_data(marker: str, *commands: str) -> str:
    """cloud-config whose runcmd prints ``marker`` (split, so the command itself never matches)."""
    half = len(marker) // 2
    lines = [
        "#cloud-config",
        "runcmd:",
        f'  - [sh, -c, \'echo "{marker[:half]}""{marker[half:]}" > /dev/ttyS0\']',
        *(f"  - [sh, -c, '{command} > /dev/ttyS0 2>&1']" for command in commands),
    ]
    return "\n".join(lines) + "\n"


def test_runcmd_runs_once_and_the_nic_gets_dhcp(boot_seeded: _Booter) -> None:
    marker = f"PLUNDER-MARKER-{secrets.token_hex(6)}"
    user_data = marker_user_data(marker, "hostname", "ip -4 -o addr show scope global")
    boot = boot_seeded(user_data)
    deadline = boot.started + BOOT_TIMEOUT_S
    to_marker = boot.seconds_until(re.compile(re.escape(marker)), deadline)
    to_finished = boot.seconds_until(FINISHED, deadline)
    print(
        f"\nQEMU start → runcmd marker {to_marker:.1f} s, → cloud-init finished {to_finished:.1f} s"
    )
    time.sleep(1)  # anything printed twice would follow at once
    console = boot.console()
    assert console.count(marker) == 1
    assert boot_seeded.hostname in console  # meta-data's local-hostname was applied
    assert re.search(r"\d+: en\w+\s+inet 10\.0\.2\.15/24", console), "no DHCP address on en*"
    assert "Invalid cloud-config" not in console


def test_a_seed_network_config_replaces_dhcp(boot_seeded: _Booter) -> None:
    marker = f"PLUNDER-MARKER-{secrets.token_hex(6)}"
    network_config = (
        "version: 2\n"
        "ethernets:\n"
        "  prov0:\n"
        f"    match: {{macaddress: '{GUEST_MAC}'}}\n"
        "    set-name: prov0\n"
        "    addresses: [10.0.2.77/24]\n"
        "    routes: [{to: 0.0.0.0/0, via: 10.0.2.2}]\n"
        "    nameservers: {addresses: [10.0.2.3]}\n"
    )
    user_data = marker_user_data(marker, "ip -4 -o addr show scope global", "ip -4 route")
    boot = boot_seeded(user_data, network_config)
    deadline = boot.started + BOOT_TIMEOUT_S
    to_marker = boot.seconds_until(re.compile(re.escape(marker)), deadline)
    to_finished = boot.seconds_until(FINISHED, deadline)
    print(f"\nstatic network: marker {to_marker:.1f} s, cloud-init finished {to_finished:.1f} s")
    console = boot.console()
    after_marker = console[console.index(marker) :]
    assert re.search(r"\d+: prov0\s+inet 10\.0\.2\.77/24", after_marker), after_marker[-2000:]
    assert "10.0.2.15" not in after_marker  # the DHCP lease of the fallback is gone
    assert "default via 10.0.2.2 dev prov0" in after_marker


def test_uefi_firmware_boots_it_from_its_esp_and_the_root_grows_over_the_disk(
    boot_seeded: _Booter,
) -> None:
    marker = f"PLUNDER-MARKER-{secrets.token_hex(6)}"
    user_data = marker_user_data(marker, "df -B1M --output=size,target /")
    boot = boot_seeded(user_data, uefi=True, disk_bytes=2 << 30)
    deadline = boot.started + BOOT_TIMEOUT_S
    to_marker = boot.seconds_until(re.compile(re.escape(marker)), deadline)
    print(f"\nUEFI: QEMU start → runcmd marker {to_marker:.1f} s")
    root_size = re.compile(r"^\s*(\d+)\s+/\s*$", re.MULTILINE)
    boot.seconds_until(root_size, deadline)  # df's line follows the marker
    size = root_size.search(boot.console()[boot.console().index(marker) :])
    assert size
    image_mib = boot_seeded.image.size_bytes >> 20
    assert int(size.group(1)) > 1800 > image_mib, "growpart/resizefs did not grow the root"
