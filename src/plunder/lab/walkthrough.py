"""The examples as the lab runs them: the committed files, with the lab image's checksum.

``examples/simple`` streams the lab's Debian image, whose sha256 is only known once it is built
(the build is not byte-for-byte reproducible), so the committed files carry a placeholder of
zeros. ``plunderctl lab up`` writes a copy of every example into the lab folder with the
placeholder replaced; a person applies that copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from plunder.lab import binaries

CHECKSUM_PLACEHOLDER = "0" * 64


def write_examples(target: Path, image_checksum_file: Path) -> Path:
    """Copy ``examples/`` to ``target`` with the image checksum filled in; return ``target``."""
    checksum = image_checksum_file.read_text().split()[0]
    source = binaries.repository_root() / "examples"
    shutil.rmtree(target, ignore_errors=True)
    for path in sorted(source.rglob("*.yaml")):
        copy = target / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(path.read_text().replace(CHECKSUM_PLACEHOLDER, checksum))
    return target
