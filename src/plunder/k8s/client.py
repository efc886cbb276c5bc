"""Clients for the Kubernetes API, made from a kubeconfig (or the in-cluster service account).

lightkube is the client: async and sync flavours of one API, typed models for the built-in
kinds, generic resources for ours, server-side apply, and it is fully type-annotated. kopf keeps
its own connection for watching; this one is for the reads and guarded writes the code does.
"""

from __future__ import annotations

from pathlib import Path

import httpx2
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import SingleConfig

from plunder.k8s.ratelimit import ClientLimits, LimitedTransport, TokenBucket

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


def async_client(
    kubeconfig: Path | None = None,
    field_manager: str = FIELD_MANAGER,
    limits: ClientLimits | None = None,
) -> AsyncClient:
    """An asyncio client, for the controllers and the boot service.

    ``limits``: a bound on its requests a second and its connections (none without it).
    """
    config = _config(kubeconfig).get()
    assert config is not None, "the kubeconfig has no current context"
    transport = _limited_transport(config, limits) if limits is not None else None
    return AsyncClient(config, field_manager=field_manager, transport=transport)


def _limited_transport(config: SingleConfig, limits: ClientLimits) -> httpx2.AsyncBaseTransport:
    """The transport lightkube would make (its TLS context), with the pool and bucket bounded.

    A transport given to httpx replaces its own, TLS settings included, so the context is
    made here the way lightkube makes it.
    """
    assert config.user is not None, "the kubeconfig's context names no user"
    pool = httpx2.Limits(
        max_connections=limits.connections, max_keepalive_connections=limits.connections
    )
    inner = httpx2.AsyncHTTPTransport(
        verify=verify_cluster(config.cluster, config.user, config.abs_file), limits=pool
    )
    if limits.qps is None:
        return inner
    return LimitedTransport(inner, TokenBucket(limits.qps, limits.burst))
