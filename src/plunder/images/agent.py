"""Build the agent's kernel and initramfs from Debian packages, cached by version.

The agent OS is Debian's own kernel plus a few megabytes of initramfs: busybox-static (its
applets as links), the handful of kernel modules a virtual or ordinary server needs to reach
the network and its disks, and ``agent.sh`` as ``/init``. Everything comes from the Debian
mirror apt already uses (``apt-get download`` + ``dpkg-deb -x``), so nothing is installed on
the building machine and no other download source is trusted.

Why this shape:

- The packages are pinned (name and version), and :data:`AGENT_VERSION` hashes the pins, this
  recipe's source and the agent script. A cached build is therefore never stale: changing the
  script or the recipe is a new version and a new folder.
- The cpio archive is written here rather than by ``cpio``: device nodes (``/dev/console`` must
  exist before ``/init`` runs, or init has no console) need no ``mknod``, every file is owned by
  root, and the timestamps are fixed, so one version always gives the same bytes.
- The module list is closed over ``modules.dep`` and the modules' soft dependencies (ext4 wants
  crc32c) from a ``depmod -b`` run on the unpacked package; the initramfs gets its own
  ``modules.dep`` from ``depmod -b`` again, so busybox ``modprobe`` loads dependencies itself.
- A build happens in a temporary folder beside the cache and its files are renamed into
  place, so a concurrent or interrupted build never leaves half a file where a host could
  boot it.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from plunder.images import binaries

log = logging.getLogger(__name__)

KERNEL_PACKAGE = "linux-image-6.1.0-56-amd64"
KERNEL_PACKAGE_VERSION = "6.1.192-2"
KERNEL_RELEASE = "6.1.0-56-amd64"
"""The kernel's ``uname -r``: its folder under ``/lib/modules``."""
BUSYBOX_PACKAGE = "busybox-static"
BUSYBOX_PACKAGE_VERSION = "1:1.35.0-4+deb12u1+b1"

MODULES = (
    # network: QEMU's e1000 (the lab's NIC) and virtio-net
    "e1000",
    "virtio_net",
    # disks: virtio-blk, SATA (AHCI) and NVMe; virtio_pci finds the virtio devices
    "virtio_pci",
    "virtio_blk",
    "ahci",
    "sd_mod",
    "nvme",
    # the installed OS's root filesystem, where the cloud-init seed is written
    "ext4",
)
"""Modules the agent loads at start, besides what they depend on."""

AGENT_SCRIPT = Path(__file__).parents[1] / "agent" / "agent.sh"

_CPIO_MTIME = 0
_MODULE_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class AgentBuildError(RuntimeError):
    """The agent's kernel and initramfs could not be built."""


@dataclass(frozen=True)
class AgentImage:
    """A built agent: the kernel and initramfs to boot (e.g. served under /files/agent/)."""

    kernel: Path
    initrd: Path


def agent_version(script_text: str, recipe_text: str) -> str:
    """The cache key of the agent built from ``script_text`` by ``recipe_text``.

    Args:
        script_text: The agent script (``agent.sh``).
        recipe_text: The build recipe (this module's source, which holds the package pins and
            the module list).

    Returns:
        ``<kernel package version>-<16 hex digits>``, safe as a folder name.
    """
    digest = hashlib.sha256()
    for part in (KERNEL_PACKAGE, KERNEL_PACKAGE_VERSION, BUSYBOX_PACKAGE_VERSION):
        digest.update(part.encode() + b"\0")
    digest.update(script_text.encode() + b"\0")
    digest.update(recipe_text.encode())
    return f"{KERNEL_PACKAGE_VERSION}-{digest.hexdigest()[:16]}"


AGENT_VERSION = agent_version(AGENT_SCRIPT.read_text(), Path(__file__).read_text())


def agent_dir(version: str = AGENT_VERSION) -> Path:
    """The cache folder of one agent version: ``<cache>/agent/<version>``."""
    return binaries.cache_dir() / "agent" / version


def build_agent(force: bool = False) -> AgentImage:
    """Return the cached agent of :data:`AGENT_VERSION`, building it first if it is missing.

    Args:
        force: Build again even if the version is cached (the new build replaces the old).

    Returns:
        The paths of ``vmlinuz`` and ``initrd.img``.

    Raises:
        AgentBuildError: A tool is missing, apt cannot fetch a pinned package, or a module is
            not in the kernel package.
    """
    target = agent_dir()
    image = AgentImage(kernel=target / "vmlinuz", initrd=target / "initrd.img")
    if not force and image.kernel.exists() and image.initrd.exists():
        return image
    _require_tools()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        work = Path(scratch)
        output = work / "out"
        output.mkdir()
        _build_into(work, output)
        _install(output, target)
    log.info(
        "agent %s: kernel %d bytes, initramfs %d bytes (%s)",
        AGENT_VERSION,
        image.kernel.stat().st_size,
        image.initrd.stat().st_size,
        target,
    )
    return image


def _require_tools() -> None:
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if shutil.which("depmod") is None and not Path("/usr/sbin/depmod").exists():
        missing.append("depmod (Debian package kmod)")
    if missing:
        raise AgentBuildError(f"building the agent needs {', '.join(missing)}")


def _build_into(work: Path, output: Path) -> None:
    debs = work / "debs"
    debs.mkdir()
    for package, version in (
        (KERNEL_PACKAGE, KERNEL_PACKAGE_VERSION),
        (BUSYBOX_PACKAGE, BUSYBOX_PACKAGE_VERSION),
    ):
        _run(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
            f"apt-get download {package}={version} (run apt-get update; if the mirror no longer "
            f"has it, pin the version `apt-cache depends linux-image-amd64` names)",
            cwd=debs,
        )
    unpacked = work / "unpacked"
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"dpkg-deb -x {deb.name}")

    kernel_modules = unpacked / "lib" / "modules" / KERNEL_RELEASE
    _run([_depmod(), "-b", str(unpacked), KERNEL_RELEASE], "depmod on the kernel package")
    deps = parse_modules_dep((kernel_modules / "modules.dep").read_text())
    softdeps = parse_softdeps((kernel_modules / "modules.softdep").read_text())
    aliases = parse_aliases((kernel_modules / "modules.alias").read_text())
    load_order = modules_to_load(MODULES, deps, softdeps, aliases)
    files = module_files(load_order, deps)

    root = work / "root"
    staged_modules = root / "lib" / "modules" / KERNEL_RELEASE
    for relative in files:
        destination = staged_modules / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernel_modules / relative, destination)
    for name in ("modules.builtin",):  # modprobe of a built-in module then succeeds
        if (kernel_modules / name).exists():
            shutil.copyfile(kernel_modules / name, staged_modules / name)
    _run([_depmod(), "-b", str(root), KERNEL_RELEASE], "depmod on the initramfs")

    busybox = unpacked / "bin" / "busybox"
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    applets = _run([str(busybox), "--list-full"], "busybox --list-full").split()
    link_applets(root, applets)
    shutil.copyfile(AGENT_SCRIPT, root / "init")
    (root / "etc" / "plunder").mkdir(parents=True)
    (root / "etc" / "plunder" / "modules").write_text("".join(f"{m}\n" for m in load_order))
    (root / "etc" / "plunder" / "version").write_text(f"{AGENT_VERSION}\n")
    for folder in ("dev", "proc", "sys", "run", "tmp", "mnt", "root"):
        (root / folder).mkdir(exist_ok=True)

    with (
        (output / "initrd.img").open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as initrd,
    ):
        write_newc(initramfs_entries(root), initrd)
    shutil.copyfile(unpacked / "boot" / f"vmlinuz-{KERNEL_RELEASE}", output / "vmlinuz")


def _install(output: Path, target: Path) -> None:
    """Move a finished build into place, one atomic rename per file.

    A reader sees each file whole or not at all; a concurrent build of the same version writes
    the same bytes, so whichever rename comes last changes nothing.
    """
    target.mkdir(parents=True, exist_ok=True)
    for name in ("initrd.img", "vmlinuz"):  # the kernel last: build_agent looks for it first
        (output / name).replace(target / name)


def _depmod() -> str:
    return shutil.which("depmod") or "/usr/sbin/depmod"


def _run(argv: Sequence[str], what: str, cwd: Path | None = None) -> str:
    result = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AgentBuildError(f"{what} failed:\n{(result.stderr or result.stdout)[-2000:]}")
    return result.stdout


# --- kernel modules -------------------------------------------------------------------------


def module_name(path: str) -> str:
    """The name modprobe knows a module file by: ``kernel/fs/ext4/ext4.ko`` → ``ext4``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    """``modules.dep`` as module name → the files of its module and every module it needs.

    Returns:
        For each module, its own file first, then its dependencies' files (all relative to
        ``/lib/modules/<release>``), as depmod listed them.
    """
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, needed = line.partition(":")
        deps[module_name(path)] = [path.strip(), *needed.split()]
    return deps


def parse_softdeps(text: str) -> dict[str, list[str]]:
    """``modules.softdep`` as module name → the names and aliases it wants loaded too."""
    softdeps: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] != "softdep":
            continue
        wanted = [word for word in words[2:] if word not in ("pre:", "post:")]
        softdeps.setdefault(module_name(words[1]), []).extend(wanted)
    return softdeps


def parse_aliases(text: str) -> list[tuple[str, str]]:
    """``modules.alias`` as (pattern, module name) pairs."""
    aliases = []
    for line in text.splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "alias":
            aliases.append((words[1], module_name(words[2])))
    return aliases


def _resolve(
    name: str, deps: Mapping[str, Sequence[str]], aliases: Sequence[tuple[str, str]]
) -> list[str]:
    if module_name(name) in deps:
        return [module_name(name)]
    return sorted({module for pattern, module in aliases if fnmatch.fnmatchcase(name, pattern)})


def modules_to_load(
    wanted: Iterable[str],
    deps: Mapping[str, Sequence[str]],
    softdeps: Mapping[str, Sequence[str]],
    aliases: Sequence[tuple[str, str]],
) -> list[str]:
    """The module names the agent asks modprobe for, soft dependencies before their users.

    Hard dependencies are not listed: modprobe loads them from ``modules.dep``. Soft ones
    (``softdep ext4 pre: crypto-crc32c``) are resolved through the aliases and listed first,
    because busybox modprobe does not read ``modules.softdep``.

    Raises:
        AgentBuildError: A wanted module is not in the kernel package.
    """
    order: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in order or name in trail:
            return
        for soft in softdeps.get(name, ()):
            for module in _resolve(soft, deps, aliases):
                visit(module, (*trail, name))
        order.append(name)

    for name in wanted:
        module = module_name(name)
        if module not in deps:
            raise AgentBuildError(f"module {name} is not in {KERNEL_PACKAGE}")
        visit(module, ())
    return order


def module_files(names: Iterable[str], deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Every module file ``names`` need (their own and their dependencies'), sorted."""
    files: set[str] = set()
    for name in names:
        files.update(deps[name])
        for dependency in deps[name][1:]:
            files.update(deps.get(module_name(dependency), (dependency,)))
    return sorted(files)


# --- the initramfs --------------------------------------------------------------------------


def link_applets(root: Path, applets: Iterable[str]) -> None:
    """Link each busybox applet (``usr/bin/wget`` …) to ``/bin/busybox`` under ``root``."""
    for applet in applets:
        if "/" not in applet:
            continue  # "linuxrc": an init of busybox's own; /init is the agent
        link = root / applet
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive: a file, folder, symlink or device node."""

    name: str
    """Path inside the archive, without a leading slash (``init``, ``bin/busybox``)."""
    mode: int
    """File type and permission bits, as ``stat.st_mode``."""
    data: bytes = b""
    """A file's contents, or a symlink's target."""
    rdev: tuple[int, int] = (0, 0)
    """A device node's major and minor number."""


DEVICE_NODES = (
    CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
    CpioEntry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
)
"""Nodes that must exist before ``/init`` mounts devtmpfs: the kernel opens the console
for init from the archive's ``/dev/console``."""


def initramfs_entries(root: Path) -> list[CpioEntry]:
    """The archive members for the folder ``root``: folders first, then what is in them.

    Files keep their permission bits; the device nodes of :data:`DEVICE_NODES` are added.
    """
    entries: list[CpioEntry] = []
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).parts):
        name = path.relative_to(root).as_posix()
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            entries.append(CpioEntry(name, stat.S_IFLNK | 0o777, os.readlink(path).encode()))
        elif stat.S_ISDIR(info.st_mode):
            entries.append(CpioEntry(name, stat.S_IFDIR | 0o755))
        else:
            mode = 0o755 if name == "init" else stat.S_IMODE(info.st_mode)
            entries.append(CpioEntry(name, stat.S_IFREG | mode, path.read_bytes()))
    present = {entry.name for entry in entries}
    if "dev" not in present:
        entries.append(CpioEntry("dev", stat.S_IFDIR | 0o755))
    return entries + [node for node in DEVICE_NODES if node.name not in present]


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


class BinaryWriter(Protocol):
    """What :func:`write_newc` writes to: a binary file, plain or gzip."""

    def write(self, data: bytes, /) -> int:
        """Write ``data``; return how many bytes were written."""
        ...


def write_newc(entries: Iterable[CpioEntry], out: BinaryWriter) -> None:
    """Write ``entries`` as a cpio ``newc`` archive (what the kernel unpacks), with trailer.

    Every member is owned by root and dated 1970, so the archive depends only on its contents.
    """
    inode = 1
    for entry in [*entries, CpioEntry("TRAILER!!!", 0)]:
        name = entry.name.encode() + b"\0"
        fields = (
            inode,
            entry.mode,
            0,  # uid
            0,  # gid
            2 if stat.S_ISDIR(entry.mode) else 1,
            _CPIO_MTIME,
            len(entry.data),
            0,  # device major and minor of the archive's "filesystem"
            0,
            entry.rdev[0],
            entry.rdev[1],
            len(name),
            0,  # checksum (only for the "crc" format)
        )
        header = b"070701" + b"".join(f"{field:08x}".encode() for field in fields)
        out.write(header + name + _pad(len(header) + len(name)))
        out.write(entry.data + _pad(len(entry.data)))
        inode += 1
