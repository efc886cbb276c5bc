"""The operator's entry point: which handler modules it loads and how kopf runs."""

from __future__ import annotations

import kopf

# Importing the handler modules registers their handlers with kopf's default registry.
from plunder.operator import cluster, host, machine, power, settings  # noqa: F401

LIVENESS_PATH = "/healthz"


def run_operator(namespace: str | None, liveness_port: int | None) -> None:
    """Run until SIGTERM or SIGINT; kopf then finishes the handlers in flight and returns."""
    kopf.run(
        clusterwide=namespace is None,
        namespaces=[namespace] if namespace else [],
        standalone=True,
        liveness_endpoint=(
            f"http://127.0.0.1:{liveness_port}{LIVENESS_PATH}" if liveness_port else None
        ),
    )
