"""The operator's entry point: which handler modules it loads and how kopf runs."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kopf

# Importing the handler modules registers their handlers with kopf's default registry.
from plunder.operator import (  # noqa: F401
    cluster,
    deadline,
    host,
    machine,
    metrics,
    power,
    remediation,
    restore,
    settings,
)
from plunder.operator.leader import (
    LeaderElector,
    LeaseTiming,
    exit_on_lost_leadership,
    lease_client,
)

LIVENESS_PATH = "/healthz"


def run_operator(
    namespace: str | None, liveness_port: int | None, lease_namespace: str | None = None
) -> None:
    """Run until SIGTERM or SIGINT; kopf then finishes the handlers in flight and returns.

    With ``lease_namespace``, the handlers run only while this replica holds the controller's
    Lease there (leader election); until then it only answers its liveness probe.
    """
    elector = None
    if lease_namespace is not None:
        timing = LeaseTiming()
        elector = LeaderElector(lease_client(None, timing), lease_namespace, timing=timing)
        with standby_liveness(liveness_port):
            elector.acquire()
        elector.keep_renewing(exit_on_lost_leadership)
    try:
        kopf.run(
            clusterwide=namespace is None,
            namespaces=[namespace] if namespace else [],
            standalone=True,
            liveness_endpoint=(
                f"http://127.0.0.1:{liveness_port}{LIVENESS_PATH}" if liveness_port else None
            ),
        )
    finally:
        if elector is not None:
            elector.release()


class _Alive(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200 if self.path == LIVENESS_PATH else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Probes are not worth a log line."""


@contextlib.contextmanager
def standby_liveness(port: int | None) -> Iterator[None]:
    """Answer the liveness probe while waiting to lead (kopf serves it once it runs)."""
    if port is None:
        yield
        return
    server = ThreadingHTTPServer(("127.0.0.1", port), _Alive)
    thread = threading.Thread(target=server.serve_forever, name="standby-liveness", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
