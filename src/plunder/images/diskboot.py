r"""The EFI program that boots a UEFI host's own disk from the network, whatever its boot entries.

A BIOS host told to boot its disk runs iPXE's ``sanboot --drive 0x80``, and SeaBIOS reads the
MBR. A UEFI host has no such call: iPXE's ``exit`` hands control back to the firmware, which
tries its *next boot entry*; a disk the agent has just written has none (OVMF then stops in
its setup menu, and so does many a real server's firmware), and the boot order puts the network
first anyway. Three ways out were weighed:

- the agent writes a boot entry with ``efibootmgr`` (Ironic's way): it needs ``efivarfs`` and
  efibootmgr's libraries in the agent, and firmware that reorders or drops entries (OVMF does,
  from QEMU's boot order) undoes it;
- a one-time disk boot through the BMC before the reboot: only for hosts with a BMC, and the
  agent, not the controller, reboots the host;
- **a small EFI program the boot service serves, which iPXE chains to (MAAS's way)**: GRUB,
  built here with ``grub-mkstandalone``, looks for an EFI loader on the host's disks (the
  removable-media path ``\\EFI\\BOOT\\BOOTX64.EFI`` first, then Debian's) and chainloads it. It
  works on every UEFI host that network-boots, needs no state in the firmware, and keeps the
  network-first boot order that brings a wiped host back to the agent.

It is cached by :data:`DISK_BOOT_VERSION` like every other build.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path

from plunder.images import binaries, osimage

log = logging.getLogger(__name__)

LOADERS = ("/EFI/BOOT/BOOTX64.EFI", "/EFI/debian/grubx64.efi")
"""Where an installed OS's EFI loader is looked for, in order."""

MODULES = (
    "part_msdos part_gpt fat ext2 search search_fs_file chain echo sleep reboot normal configfile "
    "memdisk boot"
)


def grub_config() -> str:
    """The embedded GRUB configuration: chainload the first disk loader found, else reboot."""
    lines = ["set timeout=0"]
    for loader in LOADERS:
        lines += [
            f"if search --no-floppy --file --set=root {loader}; then",
            f'  echo "plunder: booting ($root){loader}"',
            f"  chainloader {loader}",
            "  boot",
            "fi",
        ]
    lines += [
        'echo "plunder: no EFI loader on any disk; rebooting into the network boot"',
        "sleep 10",
        "reboot",
    ]
    return "\n".join(lines) + "\n"


DISK_BOOT_VERSION = hashlib.sha256((grub_config() + MODULES).encode()).hexdigest()[:10]


def disk_boot_path() -> Path:
    """The cached EFI program (it may not exist yet)."""
    return binaries.cache_dir() / "efi" / f"disk-boot-{DISK_BOOT_VERSION}.efi"


def build_disk_boot(force: bool = False) -> Path:
    """Return the cached EFI disk booter, building it first (a second, with grub-mkstandalone)."""
    target = disk_boot_path()
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as scratch:
        config = Path(scratch) / "grub.cfg"
        config.write_text(grub_config())
        partial = Path(scratch) / target.name
        osimage.run_program(
            [
                "grub-mkstandalone",
                "-O",
                "x86_64-efi",
                "-o",
                str(partial),
                f"--install-modules={MODULES}",
                f"--modules={MODULES}",
                "--locales=",
                "--themes=",
                "--fonts=",
                f"boot/grub/grub.cfg={config}",
            ],
            "grub-mkstandalone (the EFI disk booter)",
        )
        partial.rename(target)
    log.info("built %s", target)
    return target
