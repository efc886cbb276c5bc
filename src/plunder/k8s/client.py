"""Clients for the Kubernetes API, made from a kubeconfig (or the in-cluster service account).

lightkube is the client: async and sync flavours of one API, typed models for the built-in
kinds, generic resources for ours, server-side apply, and it is fully type-annotated. kopf keeps
its own connection for watching; this one is for the reads and guarded writes the code does.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
from lightkube import AsyncClient, Client, KubeConfig

FIELD_MANAGER = "plunder"


def _config(kubeconfig: Path | None) -> KubeConfig:
    if kubeconfig is not None:
        return KubeConfig.from_file(kubeconfig)
    return KubeConfig.from_env()


def sync_client(
    kubeconfig: Path | None = None,
    field_manager: str = FIELD_MANAGER,
    timeout: float | None = None,
) -> Client:
    """A blocking client, for the CLI, the lab and the Lease.

    ``timeout``: the seconds one request may take (lightkube's default, 10, without it).
    """
    return Client(
        _config(kubeconfig),
        field_manager=field_manager,
        timeout=httpx2.Timeout(timeout) if timeout is not None else None,
    )


def async_client(kubeconfig: Path | None = None, field_manager: str = FIELD_MANAGER) -> AsyncClient:
    """An asyncio client, for the controllers and the boot service."""
    return AsyncClient(_config(kubeconfig), field_manager=field_manager)
