"""The OS image the agent writes to a host's disk: Debian 12 with cloud-init, built once and cached.

A provisioned host boots this image from its own disk, and cloud-init turns it into what its
bootstrap data asks for. Cluster API hands that data over as cloud-config; the agent writes it
as a NoCloud seed into the image's root filesystem (``/var/lib/cloud/seed/nocloud/``) right
after streaming the image, so the image needs no metadata service, no second drive and no
network to find it.

Why it is built this way (measured under TCG; see the lab findings):

- **debootstrap, not a cloud image download**: the only thing fetched is Debian packages, from
  the mirror apt already uses, so the build is reproducible from the project alone.
- **The generic kernel, pruned**: ``linux-image-cloud-amd64`` has neither ``e1000`` nor
  ``e1000e``, which real servers and QEMU's default NIC need, so the generic kernel is kept and
  only the driver folders a server has are (:data:`KEPT_MODULE_DIRS`): its modules were half
  of the image.
- **A filesystem made from a directory** (``mkfs.ext4 -d``), written straight into the partition
  of a sparse disk just big enough for it (about 400 MiB): no loop device for the copy. Every
  byte of the raw image, zeros too, is written to each host's disk, so the image is as small as
  its files; cloud-init's ``growpart`` and ``resizefs`` grow the root over the host's whole disk
  at first boot. extlinux is the one step that needs the
  filesystem mounted (it records the sectors of ``ldlinux.sys``), so the filesystem is made
  without ``64bit`` and ``metadata_csum``, which extlinux 6.04 cannot read.
- **Two cloud-init processes instead of four**: each stage is a Python start-up that costs 3–9 s
  under emulation. ``cloud-config`` is masked and ``runcmd`` runs in the final stage;
  ``cloud-init-local`` runs only when the seed has a ``network-config``, so NoCloud is found by
  the network stage (it reads the same seed folder).
- **systemd-networkd** brings up DHCP on every ``en*``/``eth*`` NIC before cloud-init runs, so
  the NIC's name does not matter. A seed's ``network-config`` is applied by the local stage
  before networkd starts (its ``10-cloud-init-*`` files sort before the fallback, so win; it
  can rename NICs only while they are down); cloud-init's own activation, which restarts
  networkd, is off. systemd-resolved (and so dbus) is there because networkd alone never
  writes ``/etc/resolv.conf``.
- **No ds-identify**: cloud-init's generator is masked and ``cloud-init.target`` enabled
  outright; the image has NoCloud (or ``None``) by design.
- **Nothing waits that need not**: timers, gettys, debug mounts and logind are masked, the
  journal is volatile, the initramfs holds only the virtio disk drivers.

Nothing in the image is unique to a host: ``/etc/machine-id`` is left empty so every host makes
its own at first boot (DHCP client identities derive from it), and there are no SSH host keys.
Root's password is locked and Debian's default user is not made (it cost seconds under TCG):
the bootstrap data makes the users it wants.

:func:`build_os_image` builds into the project cache, keyed by :data:`IMAGE_VERSION`;
:func:`write_nocloud_seed` writes a seed into an image file with ``debugfs``, without mounting.
The file contents are pure functions, unit-tested without building anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from plunder.images import binaries

log = logging.getLogger(__name__)

IMAGE_VERSION = "7"
"""Bump whenever the recipe below changes: the version is part of the cached file's name."""

SUITE = "bookworm"

PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "systemd-resolved",
    "cloud-init",
    "cloud-guest-utils",
    "python3-cffi-backend",  # else debootstrap cannot resolve python3-cryptography's dependency
    "ca-certificates",
    "initramfs-tools",
    "kmod",
    "iproute2",
    "netbase",
    "e2fsprogs",
    "util-linux",
    "procps",
)
"""What debootstrap installs on top of ``minbase`` (cloud-init brings isc-dhcp-client itself)."""

SECTOR_BYTES = 512
ESP_START_SECTOR = 2048
"""The EFI system partition starts at 1 MiB, as partitioning tools align it."""
ESP_SECTORS = (15 << 20) // SECTOR_BYTES
PARTITION_START_SECTOR = ESP_START_SECTOR + ESP_SECTORS
"""The root partition follows the ESP at 16 MiB. It is the disk's last partition, so cloud-init
can grow it, and the first MBR slot, so it stays ``/dev/vda1`` (the ESP is slot 2)."""
ESP_TYPE = 0xEF
GRUB_EFI_MODULES = Path("/usr/lib/grub/x86_64-efi")

BLOCK_BYTES = 4096
ROOT_DEVICE = "/dev/vda1"
ROOT_LABEL = "plunder-root"
KERNEL_CMDLINE = f"root={ROOT_DEVICE} ro console=ttyS0,115200"
EXT4_FEATURES = "^64bit,^metadata_csum"
"""extlinux 6.04 cannot boot from an ext4 with either feature."""

MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")
SEED_DIR = PurePosixPath("/var/lib/cloud/seed/nocloud")
"""The NoCloud datasource's default seed folder: the agent writes the seed here."""

INITRAMFS_MODULES = ("virtio_pci", "virtio_blk", "ext4")

WAIT_ONLINE_TIMEOUT_S = 60
"""How long boot waits for any NIC to be configured before cloud-init runs regardless."""

MASKED_UNITS = (
    # the final stage runs runcmd (cloud-init-local only runs for a network-config)
    "cloud-config.service",
    "cloud-init-hotplugd.socket",
    # timers nobody waits for on a freshly provisioned node
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    # no logins: root is locked and there is no user until the bootstrap data makes one
    "getty.target",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
    "systemd-logind.service",
    # mounts for debugging and features a node does not use
    "dev-hugepages.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "sys-kernel-config.mount",
    # the image ships an up-to-date hwdb and linker cache; rebuilding them costs seconds
    "systemd-hwdb-update.service",
    "ldconfig.service",
)

KEPT_MODULE_DIRS = {
    "": ("arch", "block", "crypto", "drivers", "fs", "lib", "mm", "net", "virt"),
    "drivers": (
        "virtio",
        "block",
        "nvme",
        "ata",
        "scsi",
        "md",
        "net",
        "char",
        "acpi",
        "crypto",
        "firmware",
        "pci",
        "base",
        "edac",
        "hwmon",
        "i2c",
        "watchdog",
    ),
    "drivers/net": ("ethernet", "bonding", "team", "vxlan", "ipvlan"),
    "drivers/net/ethernet": ("intel", "broadcom", "mellanox"),
    "drivers/scsi": (),
    "net": (
        "bridge",
        "core",
        "ipv4",
        "ipv6",
        "netfilter",
        "sched",
        "8021q",
        "802",
        "llc",
        "xfrm",
        "key",
        "vmw_vsock",
        "openvswitch",
        "sctp",
        "tls",
        "unix",
        "packet",
        "wireguard",
    ),
    "fs": ("ext4", "jbd2", "overlayfs", "fat", "nls", "fuse", "isofs", "xfs", "nfs", "nfs_common"),
}
"""Which folders stay under each module folder (relative to ``kernel/``): the drivers a server
or a lab VM has (virtio, Intel/Broadcom/Mellanox NICs, SATA/NVMe/SCSI disks), the file systems a
Kubernetes node mounts, and every top-level module file (veth, vxlan, tun, bridge helpers); all
other subfolders go. Sound, Wi-Fi, Bluetooth, GPUs, media, USB, HBAs of every vendor and exotic
file systems were over half of the image's bytes."""

TRIMMED_PATHS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/cache/apt/archives",
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    "var/lib/apt/lists",
    "var/log/bootstrap.log",
    "usr/share/i18n",
    "usr/lib/udev/hwdb.d",  # the sources of hwdb.bin, which is already built
    "var/lib/systemd/random-seed",
    "debootstrap",
)
"""Deleted from the tree before it becomes a filesystem (docs, caches, per-build state)."""

BUILD_PROGRAMS = {
    "debootstrap": "debootstrap",
    "chroot": "coreutils",
    "mkfs.ext4": "e2fsprogs",
    "lzop": "lzop",
    "grub-mkstandalone": "grub-common",
    "mkfs.fat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "debugfs": "e2fsprogs",
    "extlinux": "extlinux",
    "mount": "mount",
    "umount": "mount",
}
"""Programs the build runs, with the Debian package that has each."""

_CHUNK_BYTES = 4 << 20
_GZIP_LEVEL = 6


class ImageBuildError(RuntimeError):
    """The OS image could not be built, or a seed could not be written into it."""


@dataclass(frozen=True)
class OSImage:
    """A built image in the cache, as the agent streams it (raw, or gzip-compressed raw).

    Attributes:
        path: The raw disk image (sparse).
        gz_path: The same image, gzip-compressed.
        lzo_path: The same image, lzop-compressed (the least CPU for the agent to unpack).
        sha256: The raw image's SHA-256, hex.
        size_bytes: The raw image's size (what it occupies on the host's disk).
        sha256_gz: The gzip file's SHA-256, hex.
        sha256_lzo: The lzop file's SHA-256, hex.
    """

    path: Path
    gz_path: Path
    lzo_path: Path
    sha256: str
    size_bytes: int
    sha256_gz: str
    sha256_lzo: str


# --- where the image lives ---------------------------------------------------------------------


def image_path(version: str = IMAGE_VERSION) -> Path:
    """The cached raw image of ``version`` (it may not exist yet)."""
    return binaries.cache_dir() / "images" / f"debian-12-cloudinit-{version}.raw"


def compressed_path(image: Path) -> Path:
    """The gzip-compressed copy beside a raw image."""
    return image.with_name(f"{image.name}.gz")


def lzop_path(image: Path) -> Path:
    """The lzop-compressed copy beside a raw image."""
    return image.with_name(f"{image.name}.lzo")


def checksum_path(artifact: Path) -> Path:
    """The ``sha256sum``-style sidecar of an artifact."""
    return artifact.with_name(f"{artifact.name}.sha256")


def render_checksum(digest: str, artifact: Path) -> str:
    """A sidecar's text: the hex digest and the file's name, as ``sha256sum`` writes it."""
    return f"{digest}  {artifact.name}\n"


def parse_checksum(text: str) -> str:
    """The hex digest of a sidecar's text.

    Raises:
        ImageBuildError: The text does not start with a SHA-256 hex digest.
    """
    digest = text.split(maxsplit=1)[0] if text.strip() else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ImageBuildError(f"not a sha256 sidecar: {text[:80]!r}")
    return digest


# --- the files the image is configured with (pure) ---------------------------------------------


def cloud_init_config(phone_home_early: bool = False) -> str:
    """``/etc/cloud/cloud.cfg.d/90-plunder.cfg``: NoCloud only, two stages, networkd.

    ``phone_home_early`` reports in at the end of the network stage instead of the final one:
    on a Kubernetes node the final stage runs ``kubeadm``, which takes minutes under emulation
    and belongs to the bootstrap provider (Cluster API watches for the Node), so "provisioned"
    means the OS is up and on the network, not that its bootstrap script has finished.
    """
    init_modules: tuple[str, ...] = (
        "bootcmd",
        "write-files",
        "growpart",
        "resizefs",
        "disk_setup",
        "mounts",
        "set_hostname",
        "update_hostname",
        "update_etc_hosts",
        "ca-certs",
        "users-groups",
    )
    final_modules: tuple[str, ...] = (
        "write-files-deferred",
        "runcmd",  # the config stage is masked, so runcmd writes its script here, just in time
        "scripts-per-once",
        "scripts-per-boot",
        "scripts-per-instance",
        "scripts-user",
        "phone-home",  # the boot service's vendor-data asks it to report in: "provisioned"
        "final-message",
        "power-state-change",
    )
    if phone_home_early:
        init_modules += ("phone-home",)
        final_modules = tuple(module for module in final_modules if module != "phone-home")
    lines = [
        "# Written by plunder's image build (plunder/images/osimage.py). The seed is read from",
        f"# {SEED_DIR}/ (meta-data, user-data, network-config).",
        "datasource_list: [NoCloud, None]",
        "disable_root: true",
        "ssh_pwauth: false",
        "preserve_hostname: false",
        "# networkd already runs the fallback DHCP, and a seed's network-config is applied by",
        "# the local stage before networkd starts: restarting networkd here would cost seconds",
        "disable_network_activation: true",
        "users: [root]  # no default user; root stays locked (an empty list fails the schema)",
        "system_info:",
        "  network:",
        "    renderers: [networkd]",
        "    activators: [networkd]",
        "cloud_init_modules:",
        *(f"  - {module}" for module in init_modules),
        "cloud_config_modules: []  # cloud-config.service is masked",
        "cloud_final_modules:",
        *(f"  - {module}" for module in final_modules),
    ]
    return "\n".join(lines) + "\n"


def fallback_network_config() -> str:
    """``/etc/systemd/network/90-plunder-dhcp.network``: DHCP on every wired NIC, any name."""
    return (
        "# Any wired NIC gets DHCP unless cloud-init renders a seed's network-config\n"
        "# (its 10-cloud-init-*.network files sort first and so win).\n"
        "[Match]\n"
        "Name=en* eth*\n"
        "\n"
        "[Network]\n"
        "DHCP=yes\n"
        "\n"
        "[DHCPv4]\n"
        "ClientIdentifier=mac\n"
    )


def wait_online_dropin() -> str:
    """A drop-in for systemd-networkd-wait-online: any one NIC online is enough, and not forever.

    cloud-init's network stage runs after it, so on a host with several NICs, or none that gets
    an address, the default (all NICs, 120 s) would hold the whole boot back.
    """
    return (
        "[Service]\n"
        "ExecStart=\n"
        "ExecStart=/lib/systemd/systemd-networkd-wait-online --any "
        f"--timeout={WAIT_ONLINE_TIMEOUT_S}\n"
    )


def local_stage_dropin() -> str:
    """A drop-in for ``cloud-init-local.service``: run only when the seed has a network-config.

    The local stage is the one that can apply a seed's network configuration before networkd
    brings the NIC up (cloud-init cannot rename a NIC that is up, and the network stage runs
    after the fallback DHCP). Without a ``network-config`` it has nothing to do that the
    network stage does not do too, so it is skipped and costs nothing.
    """
    return f"[Unit]\nConditionPathExists={SEED_DIR}/network-config\n"


def journald_config() -> str:
    """``/etc/systemd/journald.conf.d/90-plunder.conf``: keep the journal in memory."""
    return "[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n"


def initramfs_config() -> str:
    """``/etc/initramfs-tools/conf.d/90-plunder``: only the listed modules, no resume device."""
    return "MODULES=list\nRESUME=none\nCOMPRESS=gzip\n"


def initramfs_modules() -> str:
    """``/etc/initramfs-tools/modules``: what the initramfs needs to mount a virtio disk."""
    return "".join(f"{module}\n" for module in INITRAMFS_MODULES)


def extlinux_config(cmdline: str = KERNEL_CMDLINE) -> str:
    """``/boot/extlinux/extlinux.conf``: boot the kernel at once, through Debian's symlinks.

    ``/vmlinuz`` and ``/initrd.img`` are kept current by the kernel package, so a kernel upgrade
    on the host keeps booting.
    """
    return (
        "DEFAULT debian\n"
        "PROMPT 0\n"
        "SERIAL 0 115200\n"
        "LABEL debian\n"
        "  LINUX /vmlinuz\n"
        "  INITRD /initrd.img\n"
        f"  APPEND {cmdline}\n"
    )


def grub_config(cmdline: str = KERNEL_CMDLINE) -> str:
    """The GRUB configuration built into the ESP's ``BOOTX64.EFI``: the same boot as extlinux's.

    GRUB reads the kernel from the root filesystem (found by its label) through Debian's
    symlinks, so the ESP holds only GRUB itself and a kernel upgrade keeps booting.
    """
    return (
        "set timeout=0\n"
        f"search --no-floppy --label --set=root {ROOT_LABEL}\n"
        f"linux /vmlinuz {cmdline}\n"
        "initrd /initrd.img\n"
        "boot\n"
    )


def fstab() -> str:
    """``/etc/fstab``: the root filesystem, not checked at boot (the image is written fresh)."""
    return f"{ROOT_DEVICE} / ext4 defaults,errors=remount-ro 0 0\n"


def mirror_from_apt_sources(texts: Iterable[str]) -> str | None:
    """The Debian mirror of ``SUITE`` in apt's sources (deb822 or one-line), else ``None``."""
    for text in texts:
        for stanza in text.split("\n\n"):
            fields = _deb822_fields(stanza)
            suites = fields.get("suites", "").split()
            if "deb" in fields.get("types", "").split() and SUITE in suites:
                return fields["uris"].split()[0].rstrip("/")
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if words[:1] == ["deb"]:
                words = [word for word in words[1:] if not word.startswith("[")]
                if len(words) >= 2 and words[1] == SUITE:
                    return words[0].rstrip("/")
    return None


def _deb822_fields(stanza: str) -> dict[str, str]:
    """The fields of one deb822 stanza, keys lower-cased (comments and continuations skipped)."""
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith(("#", " ", "\t")) or ":" not in line:
            continue
        key, value = line.split(":", 1)
        fields[key.strip().lower()] = value.strip()
    return fields


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The mirror apt on this machine uses for ``SUITE`` (``$PLUNDER_DEBIAN_MIRROR`` wins)."""
    override = os.environ.get("PLUNDER_DEBIAN_MIRROR")
    if override:
        return override
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    texts = [path.read_text() for path in files if path.is_file()]
    mirror = mirror_from_apt_sources(texts)
    if mirror is None:
        raise ImageBuildError(f"no 'deb … {SUITE}' source in {apt_dir}: which mirror to use?")
    return mirror


# --- the disk layout (pure) --------------------------------------------------------------------


def mbr_partition_entry(
    start_sector: int, sectors: int, type_id: int = 0x83, bootable: bool = True
) -> bytes:
    """One 16-byte MBR partition entry, addressed by LBA only.

    The CHS fields hold the "beyond CHS" marker; every BIOS since the 1990s (and SeaBIOS, and
    syslinux's ``mbr.bin``, which boots the partition marked bootable) reads the LBA fields.
    """
    beyond_chs = b"\xfe\xff\xff"
    flag = 0x80 if bootable else 0
    return struct.pack("<B3sB3sII", flag, beyond_chs, type_id, beyond_chs, start_sector, sectors)


def render_mbr(boot_code: bytes, partitions: Sequence[bytes], disk_signature: int) -> bytes:
    """A 512-byte MBR: boot code, disk signature, up to four partitions, 0x55AA."""
    if len(boot_code) > 440:
        raise ImageBuildError(f"MBR boot code is {len(boot_code)} bytes; at most 440 fit")
    if len(partitions) > 4:
        raise ImageBuildError(f"an MBR holds four partitions, not {len(partitions)}")
    return (
        boot_code.ljust(440, b"\0")
        + struct.pack("<IH", disk_signature, 0)
        + b"".join(partitions).ljust(64, b"\0")
        + b"\x55\xaa"
    )


def partition_offset(mbr: bytes, number: int = 1) -> int:
    """The byte offset of MBR partition ``number`` (1–4) on its disk.

    Raises:
        ImageBuildError: The sector is not an MBR, or that slot is empty.
    """
    if len(mbr) < 512 or mbr[510:512] != b"\x55\xaa":
        raise ImageBuildError("no MBR partition table (no 0x55AA signature)")
    entry = mbr[446 + 16 * (number - 1) : 446 + 16 * number]
    start_sector, sectors = struct.unpack("<II", entry[8:16])
    if entry[4] == 0 or sectors == 0:
        raise ImageBuildError(f"MBR partition {number} is empty")
    return int(start_sector) * SECTOR_BYTES


FREE_BYTES = 64 << 20
"""Room left in the root filesystem for first boot (cloud-init, logs, the bootstrap data's
files) before cloud-init's growpart and resizefs grow it over the whole disk."""

DISK_ALIGN_BYTES = 16 << 20


def disk_bytes_for(used_bytes: int) -> int:
    """The raw image's size, rounded up to 16 MiB.

    The partition's start, the files, :data:`FREE_BYTES`, and ext4's own share (journal, inode
    tables: a tenth). The image is kept this small because every byte of it, zeros too, is
    written to each host's disk.
    """
    needed = PARTITION_START_SECTOR * SECTOR_BYTES + used_bytes * 11 // 10 + FREE_BYTES
    return -(-needed // DISK_ALIGN_BYTES) * DISK_ALIGN_BYTES


def root_filesystem_blocks(disk_bytes: int) -> int:
    """The root filesystem's size in blocks: the whole disk after the partition's start."""
    return (disk_bytes - PARTITION_START_SECTOR * SECTOR_BYTES) // BLOCK_BYTES


def tree_usage(tree: Path) -> tuple[int, int]:
    """(bytes, entries) the tree takes in an ext4 of 4 KiB blocks."""
    used = entries = 0
    for folder, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            entries += 1
            info = os.lstat(os.path.join(folder, name))
            if not os.path.islink(os.path.join(folder, name)) or info.st_size > 60:
                used += -(-max(info.st_size, 1) // BLOCK_BYTES) * BLOCK_BYTES
    return used, entries


def debugfs_seed_commands(files: dict[str, Path], removed: Sequence[str]) -> str:
    """The ``debugfs -w`` script that puts seed files (name → local file) into ``SEED_DIR``.

    ``write`` only makes a file in the current folder, and never over an existing one: hence
    ``cd`` first, and ``rm`` before each write (an error for a file that is not there is fine).
    """
    lines = [f"cd {SEED_DIR}"]
    for name in removed:
        lines.append(f"rm {name}")
    for name, source in files.items():
        lines += [
            f"rm {name}",
            f"write {source} {name}",
            f"sif {name} mode 0100600",
            f"sif {name} uid 0",
            f"sif {name} gid 0",
        ]
    return "\n".join(lines) + "\n"


# --- running programs --------------------------------------------------------------------------


def run_program(argv: Sequence[str], what: str, timeout: float = 1800) -> str:
    """Run a program to completion and return its output.

    Raises:
        ImageBuildError: It is missing, failed, or took longer than ``timeout`` seconds.
    """
    try:
        result = subprocess.run(  # noqa: S603 - argv is built here, not taken from input
            list(argv), capture_output=True, text=True, check=False, timeout=timeout
        )
    except FileNotFoundError as error:
        package = BUILD_PROGRAMS.get(argv[0], "?")
        raise ImageBuildError(f"{what}: {argv[0]} is not installed (Debian: {package})") from error
    except subprocess.TimeoutExpired as error:
        raise ImageBuildError(f"{what}: {argv[0]} took more than {timeout:.0f} s") from error
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip())[-4000:]
        raise ImageBuildError(f"{what} failed ({argv[0]} exit {result.returncode}):\n{output}")
    return result.stdout


def run_in_tree(tree: Path, *argv: str, what: str) -> str:
    """Run a program inside the image's tree, with a plain environment."""
    env_argv = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
    return run_program(["chroot", str(tree), *env_argv, *argv], what)


def missing_build_tools() -> list[str]:
    """What this machine lacks to build the image, as "program (Debian package)"."""
    missing = [
        f"{program} ({package})"
        for program, package in BUILD_PROGRAMS.items()
        if shutil.which(program) is None
    ]
    if not MBR_CODE.exists():
        missing.append(f"{MBR_CODE} (syslinux-common)")
    if not (GRUB_EFI_MODULES / "linux.mod").exists():
        missing.append(f"{GRUB_EFI_MODULES} (grub-efi-amd64-bin)")
    return missing


# --- the build ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One flavour of the image: what debootstrap installs, and what is added to the tree.

    Attributes:
        family: The flavour's name; its built versions share it (older ones are pruned).
        version: The recipe's version: a change of the recipe must change it.
        packages: What debootstrap installs on top of ``minbase``.
        customise: Called with the configured tree and the scratch folder, before the kernel
            modules are pruned (the node image installs Kubernetes here).
        phone_home_early: See :func:`cloud_init_config`.
    """

    family: str
    version: str
    packages: tuple[str, ...] = PACKAGES
    customise: Callable[[Path, Path], None] | None = None
    phone_home_early: bool = False

    @property
    def name(self) -> str:
        """The cached file's stem."""
        return f"{self.family}-{self.version}"


BASE_RECIPE = Recipe("debian-12-cloudinit", IMAGE_VERSION)
"""The plain Debian 12 + cloud-init image."""

IMAGES_KEPT = 2
"""Built versions of one flavour the cache keeps: the newest and the one before it.

Each node image is 1.3 GB raw plus 0.8 GB compressed, and every change of its recipe is a new
version, so without a bound the cache grows by 2 GB a change. The one before is kept because
two checkouts (branches) may use both in turn; a running lab serves hard links, which deleting
the cache's names does not break.
"""


def build_os_image(force: bool = False, recipe: Recipe = BASE_RECIPE) -> OSImage:
    """Return the cached image, building it first if it is missing (or if ``force``).

    The build runs debootstrap, so it needs root and the Debian mirror; it takes a couple of
    minutes and about 1.5 GB of scratch space beside the cache. Concurrent callers wait for one
    build; a half-built image is never visible under the final name.

    Raises:
        ImageBuildError: A build step failed; the message names it and shows its output.
    """
    target = image_path() if recipe == BASE_RECIPE else image_path().with_name(f"{recipe.name}.raw")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(target.parent):
        if force or not _is_complete(target):
            if os.geteuid() != 0:
                raise ImageBuildError("building the OS image needs root (debootstrap, mount)")
            missing = missing_build_tools()
            if missing:
                raise ImageBuildError(f"the image build needs {', '.join(missing)}")
            started = time.monotonic()
            log.info("building %s (once; later runs reuse it)", target)
            with _workspace(target.parent) as workspace:
                _build_into(workspace, target, recipe)
            log.info("built %s in %.1f s", target.name, time.monotonic() - started)
            prune_images(target.parent, recipe.family)
        return load_os_image(target)


def older_images(folder: Path, family: str, keep: int = IMAGES_KEPT) -> list[Path]:
    """The raw images of ``family`` in ``folder`` beyond the ``keep`` newest ones."""
    built = [path for path in folder.glob(f"{family}-*.raw") if path.is_file()]
    built.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    return built[keep:]


def prune_images(folder: Path, family: str, keep: int = IMAGES_KEPT) -> None:
    """Delete every artifact (raw, gzip, lzop and their checksums) of the older images."""
    for image in older_images(folder, family, keep):
        for artifact in (image, compressed_path(image), lzop_path(image)):
            checksum_path(artifact).unlink(missing_ok=True)
            artifact.unlink(missing_ok=True)
        log.info("deleted %s and its compressed copies: %d newer ones are kept", image.name, keep)


def load_os_image(path: Path) -> OSImage:
    """The built image at ``path``, with the checksums its sidecars hold."""
    gz, lzo = compressed_path(path), lzop_path(path)
    return OSImage(
        path=path,
        gz_path=gz,
        lzo_path=lzo,
        sha256=parse_checksum(checksum_path(path).read_text()),
        size_bytes=path.stat().st_size,
        sha256_gz=parse_checksum(checksum_path(gz).read_text()),
        sha256_lzo=parse_checksum(checksum_path(lzo).read_text()),
    )


def _is_complete(target: Path) -> bool:
    """Whether every artifact is there (the raw image is renamed into place last)."""
    packed = (compressed_path(target), lzop_path(target))
    return all(p.exists() and checksum_path(p).exists() for p in (target, *packed))


@contextlib.contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold the cache folder's build lock (one build at a time, across processes)."""
    with (folder / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _workspace(folder: Path) -> Iterator[Path]:
    """A scratch folder in the cache (same filesystem, so the results can be renamed)."""
    workspace = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    try:
        yield workspace
    finally:
        _remove_workspace(workspace)


def _remove_workspace(workspace: Path) -> None:
    """Delete the scratch folder, but never through something still mounted in it."""
    for mount_point in _mounts_under(workspace):
        subprocess.run(["umount", "--lazy", str(mount_point)], capture_output=True, check=False)
    still = _mounts_under(workspace)
    if still:
        raise ImageBuildError(f"not deleting {workspace}: still mounted: {still}")
    shutil.rmtree(workspace, ignore_errors=True)


def _mounts_under(folder: Path) -> list[Path]:
    """Mount points at or below ``folder``, deepest first."""
    resolved = folder.resolve()
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].replace("\\040", " "))
        if point == resolved or resolved in point.parents:
            points.append(point)
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def _build_into(workspace: Path, target: Path, recipe: Recipe) -> None:
    """Every step, timed; the finished files are renamed next to ``target`` at the end."""
    tree = workspace / "root"
    disk = workspace / target.name
    customise = recipe.customise
    steps = (
        ("debootstrap", lambda: _debootstrap(tree, debian_mirror(), recipe.packages)),
        ("configure", lambda: _configure_tree(tree, recipe.phone_home_early)),
        *((("customise", lambda: customise(tree, workspace)),) if customise else ()),
        ("kernel modules", lambda: _prune_kernel_modules(tree)),
        (
            "initramfs",
            lambda: run_in_tree(tree, "update-initramfs", "-u", "-k", "all", what="initramfs"),
        ),
        ("trim", lambda: _trim_tree(tree)),
        ("filesystem", lambda: _make_disk(tree, disk)),
        ("bootloader", lambda: _install_bootloader(disk, workspace / "mnt")),
        ("uefi bootloader", lambda: _make_esp(disk, workspace)),
        ("compress", lambda: _compress_and_publish(disk, target)),
    )
    for name, step in steps:
        started = time.monotonic()
        step()
        log.info("image build: %s took %.1f s", name, time.monotonic() - started)


def _debootstrap(tree: Path, mirror: str, packages: Sequence[str] = PACKAGES) -> None:
    """Install Debian's minimal base and ``packages`` into ``tree``."""
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(packages)}",
        SUITE,
        str(tree),
        mirror,
    ]
    try:
        run_program(argv, f"debootstrap {SUITE} from {mirror}")
    except ImageBuildError as error:
        detail = tree / "debootstrap" / "debootstrap.log"
        tail = detail.read_text(errors="replace")[-3000:] if detail.exists() else ""
        raise ImageBuildError(f"{error}\n--- {detail} (end) ---\n{tail}") from error


def write_into(tree: Path, path: str, text: str, mode: int = 0o644) -> None:
    """Write a file into the tree (``path`` is absolute inside the image)."""
    target = tree / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)  # it may be a symlink or read-only (machine-id)
    target.write_text(text)
    target.chmod(mode)


def _configure_tree(tree: Path, phone_home_early: bool = False) -> None:
    """Write the image's configuration and mask what it does not need."""
    write_into(tree, "/etc/cloud/cloud.cfg.d/90-plunder.cfg", cloud_init_config(phone_home_early))
    write_into(tree, "/etc/systemd/network/90-plunder-dhcp.network", fallback_network_config())
    write_into(
        tree,
        "/etc/systemd/system/systemd-networkd-wait-online.service.d/90-plunder.conf",
        wait_online_dropin(),
    )
    write_into(
        tree, "/etc/systemd/system/cloud-init-local.service.d/90-plunder.conf", local_stage_dropin()
    )
    write_into(tree, "/etc/systemd/journald.conf.d/90-plunder.conf", journald_config())
    write_into(tree, "/etc/initramfs-tools/conf.d/90-plunder", initramfs_config())
    write_into(tree, "/etc/initramfs-tools/modules", initramfs_modules())
    write_into(tree, "/boot/extlinux/extlinux.conf", extlinux_config())
    write_into(tree, "/etc/fstab", fstab())
    write_into(tree, "/etc/hostname", "debian\n")
    write_into(tree, "/etc/hosts", "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n")
    write_into(tree, "/etc/machine-id", "", mode=0o444)  # each host makes its own at first boot
    (tree / "etc/resolv.conf").unlink(missing_ok=True)
    (tree / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    (tree / SEED_DIR.relative_to("/")).mkdir(parents=True, exist_ok=True)
    enabled = ("systemd-networkd.service", "systemd-resolved.service")
    run_in_tree(tree, "systemctl", "enable", *enabled, what="enable units")
    run_in_tree(tree, "systemctl", "mask", *MASKED_UNITS, what="mask units")
    _enable_cloud_init_without_generator(tree)
    run_in_tree(tree, "passwd", "--lock", "root", what="lock root's password")


def _enable_cloud_init_without_generator(tree: Path) -> None:
    """Start cloud-init at every boot, without its generator running ds-identify first.

    The generator exists to find out whether a datasource is there; this image always has
    NoCloud (or ``None``), and ds-identify is a long shell script that holds up systemd's start.
    """
    generator = tree / "etc/systemd/system-generators/cloud-init-generator"
    generator.parent.mkdir(parents=True, exist_ok=True)
    generator.unlink(missing_ok=True)
    generator.symlink_to("/dev/null")  # a generator linked to /dev/null is masked
    wants = tree / "etc/systemd/system/multi-user.target.wants/cloud-init.target"
    wants.parent.mkdir(parents=True, exist_ok=True)
    wants.unlink(missing_ok=True)
    wants.symlink_to("/lib/systemd/system/cloud-init.target")


def _prune_kernel_modules(tree: Path) -> None:
    """Keep only :data:`KEPT_MODULE_DIRS` of every installed kernel and redo its module index."""
    for kernel_dir in sorted((tree / "lib/modules").iterdir()):
        for relative, kept in KEPT_MODULE_DIRS.items():
            folder = kernel_dir / "kernel" / relative
            for child in folder.iterdir() if folder.is_dir() else ():
                if child.is_dir() and child.name not in kept:
                    shutil.rmtree(child)
        run_in_tree(tree, "depmod", "-a", kernel_dir.name, what=f"depmod {kernel_dir.name}")


def _trim_tree(tree: Path) -> None:
    """Delete :data:`TRIMMED_PATHS` (folders are emptied, not removed)."""
    for relative in TRIMMED_PATHS:
        path = tree / relative
        if path.is_dir() and not path.is_symlink():
            for child in path.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            path.unlink(missing_ok=True)
    shutil.rmtree(tree / "debootstrap", ignore_errors=True)


def _make_disk(tree: Path, disk: Path) -> None:
    """A sparse disk: syslinux's MBR, the root partition (ext4 made from ``tree``), an ESP."""
    used, entries = tree_usage(tree)
    disk_bytes = disk_bytes_for(used)
    log.info("image build: %d MiB of files in a %d MiB disk", used >> 20, disk_bytes >> 20)
    with disk.open("wb") as file:
        file.truncate(disk_bytes)
        sectors = disk_bytes // SECTOR_BYTES - PARTITION_START_SECTOR
        root = mbr_partition_entry(PARTITION_START_SECTOR, sectors)
        esp = mbr_partition_entry(ESP_START_SECTOR, ESP_SECTORS, ESP_TYPE, bootable=False)
        signature = int.from_bytes(os.urandom(4), "little")
        file.write(render_mbr(MBR_CODE.read_bytes(), [root, esp], signature))
    offset = PARTITION_START_SECTOR * SECTOR_BYTES
    run_program(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-b",
            str(BLOCK_BYTES),
            "-O",
            EXT4_FEATURES,
            "-L",
            ROOT_LABEL,
            "-N",  # inodes for the files, and as many again for what the node adds
            str(entries * 2 + 4096),
            "-E",
            f"offset={offset}",
            "-d",
            str(tree),
            str(disk),
            str(root_filesystem_blocks(disk_bytes)),
        ],
        "make the root filesystem from the tree",
    )


def _make_esp(disk: Path, workspace: Path) -> None:
    """The EFI system partition: a FAT holding GRUB as the removable-media ``BOOTX64.EFI``.

    UEFI firmware boots ``/EFI/BOOT/BOOTX64.EFI`` from an ESP without any boot entry, which a
    freshly written disk does not have. ``grub-mkstandalone`` builds GRUB with its configuration
    inside; the FAT is made in a file and filled with mtools, without mounting.
    """
    config, efi, esp = workspace / "grub.cfg", workspace / "BOOTX64.EFI", workspace / "esp.fat"
    config.write_text(grub_config())
    modules = "linux normal search search_label part_msdos ext2 configfile memdisk boot"
    run_program(
        [
            "grub-mkstandalone",
            "-O",
            "x86_64-efi",
            "-o",
            str(efi),
            f"--install-modules={modules}",
            "--modules=part_msdos ext2",
            "--locales=",
            "--themes=",
            "--fonts=",
            f"boot/grub/grub.cfg={config}",
        ],
        "grub-mkstandalone",
    )
    run_program(["mkfs.fat", "-C", str(esp), str(ESP_SECTORS * SECTOR_BYTES // 1024)], "mkfs.fat")
    run_program(["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT"], "mmd")
    run_program(["mcopy", "-i", str(esp), str(efi), "::/EFI/BOOT/BOOTX64.EFI"], "mcopy")
    with disk.open("r+b") as file:
        file.seek(ESP_START_SECTOR * SECTOR_BYTES)
        file.write(esp.read_bytes())


def _install_bootloader(disk: Path, mount_point: Path) -> None:
    """Install extlinux into the root filesystem (the one step that needs it mounted)."""
    mount_point.mkdir()
    offset = PARTITION_START_SECTOR * SECTOR_BYTES
    run_program(
        ["mount", "-t", "ext4", "-o", f"loop,offset={offset}", str(disk), str(mount_point)],
        "loop-mount the root filesystem for extlinux",
    )
    try:
        run_program(
            ["extlinux", "--install", str(mount_point / "boot/extlinux")], "extlinux --install"
        )
    finally:
        run_program(["umount", str(mount_point)], "unmount the root filesystem")


def _compress_and_publish(disk: Path, target: Path) -> None:
    """Gzip and lzop the disk, write the checksums, and rename everything into place (raw last)."""
    gz_temp, lzo_temp = compressed_path(disk), lzop_path(disk)
    raw_digest, gz_digest = _gzip_with_digests(disk, gz_temp)
    run_program(["lzop", "-q", "-f", "-o", str(lzo_temp), str(disk)], "lzop the image")
    for temp, target_path, digest in (
        (gz_temp, compressed_path(target), gz_digest),
        (lzo_temp, lzop_path(target), _sha256_of(lzo_temp)),
    ):
        checksum_path(target_path).write_text(render_checksum(digest, target_path))
        temp.rename(target_path)
    checksum_path(target).write_text(render_checksum(raw_digest, target))
    disk.rename(target)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _gzip_with_digests(source: Path, destination: Path) -> tuple[str, str]:
    """Write ``source`` gzip-compressed to ``destination``; return both files' SHA-256."""
    raw_hash, gz_hash = hashlib.sha256(), hashlib.sha256()
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with source.open("rb") as raw, destination.open("wb") as out:
        while chunk := raw.read(_CHUNK_BYTES):
            raw_hash.update(chunk)
            packed = compressor.compress(chunk)
            gz_hash.update(packed)
            out.write(packed)
        packed = compressor.flush()
        gz_hash.update(packed)
        out.write(packed)
    return raw_hash.hexdigest(), gz_hash.hexdigest()


# --- the seed ----------------------------------------------------------------------------------


def write_nocloud_seed(
    image: Path, meta_data: str, user_data: str, network_config: str | None
) -> None:
    """Write a NoCloud seed into the image's root filesystem, without mounting it.

    The files go to :data:`SEED_DIR`, mode 0600 and owned by root (user-data carries the
    bootstrap secrets). ``network_config=None`` removes any earlier ``network-config``, so the
    host falls back to DHCP. The image is changed in place: pass a copy of the cached one.

    Raises:
        ImageBuildError: The image has no MBR partition 1, or debugfs failed to write a file.
    """
    with image.open("rb") as file:
        device = f"{image}?offset={partition_offset(file.read(512))}"
    contents = {"meta-data": meta_data, "user-data": user_data}
    if network_config is not None:
        contents["network-config"] = network_config
    removed = [] if network_config is not None else ["network-config"]
    with tempfile.TemporaryDirectory(prefix="plunder-seed-") as scratch:
        sources = {}
        for name, text in contents.items():
            sources[name] = Path(scratch) / name
            sources[name].write_text(text)
        script = Path(scratch) / "commands"
        script.write_text(debugfs_seed_commands(sources, removed))
        run_program(
            ["debugfs", "-w", "-f", str(script), device], f"write the NoCloud seed into {image}"
        )
    for name, text in contents.items():
        written = run_program(
            ["debugfs", "-R", f"cat {SEED_DIR / name}", device], f"read back {name}"
        )
        if written != text:
            raise ImageBuildError(f"{name} in {image} does not read back as written")
