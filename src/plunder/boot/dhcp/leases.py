"""dnsmasq's lease file, read to tell which MAC an address was given to.

The HTTP side uses it against spoofing: a request that claims a MAC from an address that DHCP
leased to another MAC is refused. (In proxy mode another server leases addresses and the check
is skipped; the per-host token of the agent protects what matters there.)
"""

from __future__ import annotations

import os
from pathlib import Path


class LeaseTable:
    """address → MAC, re-read whenever dnsmasq rewrites the file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._mac_by_ip: dict[str, str] = {}

    def mac_for(self, ip: str) -> str | None:
        """The MAC that holds a lease for ``ip``, if any."""
        self._refresh()
        return self._mac_by_ip.get(ip)

    def _refresh(self) -> None:
        if self.path is None:
            return
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._mac_by_ip = {}
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        table: dict[str, str] = {}
        for line in self.path.read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) >= 3:  # expiry mac ip [hostname [client-id]]
                table[fields[2]] = fields[1].lower()
        self._mac_by_ip = table
