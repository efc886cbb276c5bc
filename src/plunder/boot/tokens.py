"""Per-boot tokens: what the agent shows to prove it runs on the host it says it does.

Each time the boot service sends a host into the agent it picks a new boot id, records it in
the host's status, and puts ``HMAC(key, mac|boot id)`` on the kernel command line. Agent calls
carry that token; it is recomputed from the host's *current* boot id, so a token from an earlier
boot, or for another MAC, is refused. The key lives in a Secret, so every replica of the boot
service, and one restarted at any moment, verifies the same tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

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


def new_boot_id() -> str:
    """A fresh, unguessable boot id."""
    return secrets.token_hex(8)


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
