"""Prometheus metrics of the boot service (one registry per service, so tests can run several)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass
class BootMetrics:
    """What a graph of the boot service shows."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.scripts = Counter(
            "plunder_boot_scripts_total",
            "iPXE scripts served, by decision",
            ["action"],
            registry=self.registry,
        )
        self.discovered = Counter(
            "plunder_boot_discovered_total",
            "New MACs recorded as PlunderHosts",
            registry=self.registry,
        )
        self.rejected = Counter(
            "plunder_boot_rejected_total",
            "Requests refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.agent_logs = Counter(
            "plunder_boot_agent_logs_total",
            "Agent log uploads taken, by what became of them (written, waiting)",
            ["result"],
            registry=self.registry,
        )
        self.write_progress = Counter(
            "plunder_boot_write_progress_total",
            "Image-write progress reports taken, by what became of them (recorded, dropped)",
            ["result"],
            registry=self.registry,
        )
        self.hosts = Gauge(
            "plunder_boot_cached_hosts", "PlunderHosts in the watch cache", registry=self.registry
        )
