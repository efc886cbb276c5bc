"""MAC addresses as the boot service accepts them, and the host names made from them."""

from __future__ import annotations

import re

_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


class InvalidMACError(ValueError):
    """Not a MAC address."""


def normalise_mac(text: str) -> str:
    """``00-50-56-A5-11-20`` → ``00:50:56:a5:11:20``; anything else raises InvalidMACError."""
    if len(text) != 17 or not _MAC.match(text):
        raise InvalidMACError(f"not a MAC address: {text[:40]!r}")
    return text.replace("-", ":").lower()


def host_name(mac: str) -> str:
    """The PlunderHost name of a discovered MAC.

    Deterministic, so concurrent discoveries of one MAC race for one name and the API server
    lets exactly one win.
    """
    return "host-" + mac.replace(":", "-")
