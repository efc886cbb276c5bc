"""Per-boot tokens: what the agent shows to prove it runs on the boot it says it does.

When the boot service issues a host's token (to the agent's first lookup, or in an installer's
script: see :mod:`plunder.boot.trust` for when) it picks a new boot id, records it in the host's
status with a guarded write, and hands out ``HMAC(key, purpose|mac|boot id)``. Calls carry that
token; it is recomputed from the host's *current* boot id, so a token from an earlier boot, or
for another MAC, is refused. The phone-home token is the same HMAC under another purpose: it
cannot be computed from the agent token without the key. The key lives in a Secret, so every
replica of the boot service, and one restarted at any moment, verifies the same tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

KEY_SECRET = "plunder-boot-token-key"


class TokenSigner:
    """Signs and checks agent tokens with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the token key must have at least 32 bytes")
        self._key = key

    def token(self, mac: str, boot_id: str, purpose: str = "agent") -> str:
        """The token of ``mac``'s boot ``boot_id`` (hex)."""
        message = f"{purpose}|{mac}|{boot_id}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(self, mac: str, boot_id: str | None, token: str, purpose: str = "agent") -> bool:
        """Whether ``token`` is the one of ``mac``'s current boot."""
        if not boot_id or not token:
            return False
        return hmac.compare_digest(self.token(mac, boot_id, purpose), token)


class Holders:
    """When each host's token holder last made an authenticated call (this replica's memory).

    A service that just started has heard from nobody: it counts every holder as heard from at
    its start, so a restart never makes a live agent's token look abandoned.
    """

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._heard: dict[str, float] = {}

    def heard(self, mac: str) -> None:
        """The holder of ``mac``'s token called (or was just given the token)."""
        self._heard[mac] = time.monotonic()

    def silent_for(self, mac: str) -> float:
        """Seconds since the holder of ``mac``'s token was last heard from."""
        return time.monotonic() - self._heard.get(mac, self._started)


async def load_or_create_key(client: AsyncClient, namespace: str) -> bytes:
    """The shared key from its Secret, made on first use (a create race is settled by 409)."""
    try:
        secret = await client.get(Secret, KEY_SECRET, namespace=namespace)
    except ApiError as error:
        if error.status.code != 404:
            raise
        key = secrets.token_bytes(32)
        try:
            await client.create(
                Secret(
                    metadata=ObjectMeta(name=KEY_SECRET, namespace=namespace),
                    data={"key": base64.b64encode(key).decode()},
                )
            )
            return key
        except ApiError as race:
            if race.status.code != 409:
                raise
            secret = await client.get(Secret, KEY_SECRET, namespace=namespace)
    data = secret.data or {}
    return base64.b64decode(data["key"])
