"""The backend seam: the protocol code asks for hosts by MAC or IP and reports what it saw."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from plunder.api.inventory import PlunderHost


@dataclass(frozen=True)
class BootFacts:
    """What a network-booting host told us about itself (through iPXE's settings)."""

    mac: str
    ip: str | None
    firmware: Literal["bios", "uefi"] | None
    manufacturer: str | None
    product: str | None
    serial: str | None
    seen: datetime


class HostBackend(Protocol):
    """Host lookup for the boot service; answers from memory, never a round trip per request."""

    def by_mac(self, mac: str) -> PlunderHost | None:
        """The host with this boot MAC, if known."""

    def count(self) -> int:
        """How many hosts are known."""

    def by_ip(self, ip: str) -> PlunderHost | None:
        """The host last seen with this address, if any."""

    def pending_discoveries(self) -> int:
        """Hosts this service discovered that nobody accepted yet, with those being created."""

    async def discover(self, facts: BootFacts, accepted: bool = False) -> None:
        """Record a MAC seen for the first time (idempotent; concurrent calls make one host).

        ``accepted``: the new host's ``spec.accepted`` (the auto-accept setting).
        """

    def seen(self, facts: BootFacts) -> None:
        """Note that a known host asked again (written back at a bounded rate)."""

    async def fresh(self, host: PlunderHost) -> PlunderHost:
        """The host as the API holds it now (and the cache with it)."""

    async def patch_host_status(
        self, host: PlunderHost, status: dict[str, Any], guarded: bool = True
    ) -> None:
        """Merge ``status`` into the host's status (None values remove fields).

        ``guarded``: only if the host is still at the resourceVersion it was read at. Without
        it, the write still never overwrites what others wrote meanwhile: it is rebased onto a
        fresh copy (``reconcile.statusmerge``), a move decided on an old state dropped.
        """
