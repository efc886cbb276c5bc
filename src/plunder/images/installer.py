"""The Debian installer's netboot kernel and initrd, from Debian's own package, cached by version.

``debian-installer-12-netboot-amd64`` holds the installer the lab boots for ``deploymentType:
preseed``: ``linux`` and ``initrd.gz`` of the text frontend. The package comes from the mirror
apt already uses (``apt-get download``: apt checks it against the signed Release file), pinned
to one version; the two files are taken out of its data archive by streaming it through
``dpkg-deb --fsys-tarfile``, so the other 130 MB of the package never reach the disk. A build
happens in a scratch folder beside the cache and is renamed into place, as the agent's is.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from plunder.images import binaries

log = logging.getLogger(__name__)

PACKAGE = "debian-installer-12-netboot-amd64"
PACKAGE_VERSION = "20230607+deb12u15"
"""The version bookworm's mirror had (``apt-cache policy``); a new point release replaces it."""
MEMBERS = {
    "./usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/linux": "linux",
    "./usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/initrd.gz": (
        "initrd.gz"
    ),
}
"""Where the package keeps the kernel and initrd → their names in the cache."""


class InstallerBuildError(RuntimeError):
    """The installer's kernel and initrd could not be fetched."""


@dataclass(frozen=True)
class DebianInstaller:
    """A fetched installer: the kernel and initrd iPXE boots."""

    kernel: Path
    initrd: Path


def installer_dir(version: str = PACKAGE_VERSION) -> Path:
    """The cache folder of one version: ``<cache>/installer/debian-<version>``."""
    return binaries.cache_dir() / "installer" / f"debian-{version}"


def build_debian_installer(force: bool = False) -> DebianInstaller:
    """Return the cached installer of :data:`PACKAGE_VERSION`, fetching it first if missing.

    Args:
        force: Fetch again even if the version is cached.

    Raises:
        InstallerBuildError: apt-get or dpkg-deb is missing or failed, or the package does not
            hold the expected files.
    """
    target = installer_dir()
    built = DebianInstaller(kernel=target / "linux", initrd=target / "initrd.gz")
    if not force and built.kernel.exists() and built.initrd.exists():
        return built
    missing = [tool for tool in ("apt-get", "dpkg-deb") if shutil.which(tool) is None]
    if missing:
        raise InstallerBuildError(f"fetching the Debian installer needs {', '.join(missing)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as scratch:
        work = Path(scratch)
        deb = _download(work)
        output = work / "out"
        output.mkdir()
        extract_members(deb, output)
        target.mkdir(parents=True, exist_ok=True)
        for name in ("initrd.gz", "linux"):  # the kernel last: it is what is looked for first
            (output / name).replace(target / name)
    log.info(
        "Debian installer %s: kernel %d bytes, initrd %d bytes (%s)",
        PACKAGE_VERSION,
        built.kernel.stat().st_size,
        built.initrd.stat().st_size,
        target,
    )
    return built


def _download(work: Path) -> Path:
    spec = f"{PACKAGE}={PACKAGE_VERSION}"
    result = subprocess.run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", spec],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
    if result.returncode != 0 or not debs:
        raise InstallerBuildError(
            f"apt-get download {spec} failed (run apt-get update; if the mirror moved on, pin the "
            f"version `apt-cache policy {PACKAGE}` shows):\n{result.stderr[-2000:]}"
        )
    return debs[0]


def extract_members(deb: Path, output: Path) -> None:
    """Write the :data:`MEMBERS` of ``deb``'s data archive into ``output`` under their names.

    Raises:
        InstallerBuildError: dpkg-deb failed or a member is missing.
    """
    with subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as dpkg:
        assert dpkg.stdout is not None
        found = set()
        with tarfile.open(fileobj=dpkg.stdout, mode="r|") as archive:
            for member in archive:
                name = MEMBERS.get(member.name)
                source = archive.extractfile(member) if name and member.isfile() else None
                if name is None or source is None:
                    continue
                with (output / name).open("wb") as copy:
                    shutil.copyfileobj(source, copy)
                found.add(name)
        errors = dpkg.stderr.read().decode(errors="replace") if dpkg.stderr else ""
    if dpkg.returncode != 0:
        raise InstallerBuildError(f"dpkg-deb --fsys-tarfile {deb.name} failed: {errors[-2000:]}")
    absent = sorted(set(MEMBERS.values()) - found)
    if absent:
        raise InstallerBuildError(f"{deb.name} holds no {', '.join(absent)}")
