"""NIC vendors from the IEEE OUI registry (shipped inside the netaddr package)."""

from __future__ import annotations

from functools import lru_cache

import netaddr


@lru_cache(maxsize=4096)
def vendor_of(mac: str) -> str | None:
    """The organisation the MAC's OUI is registered to, e.g. "VMware, Inc."; None if unknown."""
    try:
        return str(netaddr.EUI(mac).oui.registration().org)
    except (netaddr.NotRegisteredError, netaddr.AddrFormatError, IndexError):
        return None
