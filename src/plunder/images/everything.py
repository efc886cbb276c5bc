"""Every build the lab and the tests use, made once (each cached by version), side by side.

The Go programs are bound by the CPU; the hosts' images mostly wait on Debian's mirror, on
dpkg and on the disk. So the two run beside each other: the agent, the UEFI disk boot, the
installer, the OS image and the node image's Debian base are made while Kubernetes compiles,
and the node image waits for the programs (:func:`binaries.ensure_binaries`' build lock) only
when it comes to install them. From empty caches that takes the images' minutes off the
critical path (see the README's measured setup time).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from plunder.images import binaries
from plunder.images.agent import build_agent
from plunder.images.diskboot import build_disk_boot
from plunder.images.installer import build_debian_installer
from plunder.images.nodeimage import build_node_image
from plunder.images.osimage import build_os_image


def build_boot_files() -> None:
    """Build (once) all the hosts boot: agent, UEFI disk boot, installer, OS and node images.

    The node image comes last: it is the one that needs the Go programs.
    """
    build_agent()
    build_disk_boot()
    build_debian_installer()
    build_os_image()
    build_node_image()


def build_everything() -> dict[str, Path]:
    """Build (once) every Go program and all the hosts boot; return the programs' paths."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="build") as pool:
        programs = pool.submit(binaries.ensure_binaries, tuple(binaries.PROGRAMS))
        boot_files = pool.submit(build_boot_files)
        built = dict(programs.result())
        boot_files.result()
    return built
