"""Operator-wide kopf settings, applied at start-up."""

from __future__ import annotations

import logging
from typing import Any

import kopf

PREFIX = "plunder.dev"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep kopf's bookkeeping under our own annotation prefix, and post events for warnings."""
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # Reconnect quickly after the API server restarts (the lab and tests restart it).
    settings.watching.server_timeout = 300
    settings.watching.reconnect_backoff = 1.0


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod, the service account; elsewhere, $KUBECONFIG (kopf's own readers of both)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
