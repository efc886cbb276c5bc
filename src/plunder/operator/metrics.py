"""Prometheus metrics of the controller, at ``/metrics`` on ``--metrics-port`` (off by default).

Served by aiohttp in kopf's own event loop, as the boot service serves its HTTP, and only while
this replica leads: a standby runs no handlers and has nothing to report. The gauges are read
at each scrape from the provisioning slots (:mod:`plunder.operator.slots`), so they cannot drift
from what the controller decides on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from plunder.operator.slots import ProvisioningSlots


@dataclass
class MetricsSettings:
    """Set from ``plunderctl controller`` before kopf starts."""

    port: int | None = None
    """None: no metrics endpoint."""


SETTINGS = MetricsSettings()


def slot_metrics(slots: ProvisioningSlots) -> CollectorRegistry:
    """The throttle's gauges, in a registry of their own."""
    registry = CollectorRegistry()
    Gauge(
        "plunder_provisioning_limit",
        "Hosts that may be provisioning or deprovisioning at once (--provisioning-limit)",
        registry=registry,
    ).set_function(lambda: float(slots.limit))
    Gauge(
        "plunder_hosts_provisioning",
        "Hosts provisioning or deprovisioning now (the provisioning slots in use)",
        registry=registry,
    ).set_function(lambda: float(slots.in_use()))
    Gauge(
        "plunder_machines_waiting_for_slot",
        "Hosts claimed by a machine that wait for a provisioning slot",
        registry=registry,
    ).set_function(lambda: float(slots.machines_waiting()))
    Gauge(
        "plunder_hosts_waiting_for_slot",
        "Hosts that wait for a provisioning slot (to provision, or to be wiped)",
        registry=registry,
    ).set_function(lambda: float(len(slots.waiting)))
    return registry


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """``GET /metrics`` in Prometheus's text format."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


@kopf.on.startup()
async def serve_metrics(memo: kopf.Memo, **_: Any) -> None:
    """Start the endpoint, if a port is set (after the slots exist: see :mod:`.host`)."""
    if SETTINGS.port is None:
        return
    runner = web.AppRunner(metrics_app(slot_metrics(memo.slots)), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", SETTINGS.port).start()  # noqa: S104 - scraped from the pod network
    memo.metrics_runner = runner


@kopf.on.cleanup()
async def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    """Stop it."""
    runner: web.AppRunner | None = getattr(memo, "metrics_runner", None)
    if runner is not None:
        await runner.cleanup()
