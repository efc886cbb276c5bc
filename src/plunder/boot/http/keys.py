"""The typed keys under which the boot service's parts are stored on the aiohttp application."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web
from lightkube import AsyncClient

from plunder.api.inventory import PlunderHost
from plunder.boot.backend.base import HostBackend
from plunder.boot.backend.logstore import AgentLogStore
from plunder.boot.dhcp.leases import LeaseTable
from plunder.boot.discovery import DiscoveryGate
from plunder.boot.http.metrics import BootMetrics
from plunder.boot.progress import ProgressGate
from plunder.boot.settings import BootSettings
from plunder.boot.tokens import Holders, TokenSigner

EventSink = Callable[[PlunderHost, str, str, Literal["Normal", "Warning"]], Awaitable[None]]
"""Records an Event (reason, message, type) about a host."""

BACKEND_KEY = web.AppKey("backend", HostBackend)
SETTINGS_KEY = web.AppKey("settings", BootSettings)
LEASES_KEY = web.AppKey("leases", LeaseTable)
METRICS_KEY = web.AppKey("metrics", BootMetrics)
READY_KEY = web.AppKey("ready", asyncio.Event)
CLIENT_KEY = web.AppKey("client", AsyncClient)
SIGNER_KEY = web.AppKey("signer", TokenSigner)
HOLDERS_KEY = web.AppKey("holders", Holders)
DISCOVERY_KEY = web.AppKey("discovery", DiscoveryGate)
AGENT_LOGS_KEY = web.AppKey("agent-logs", AgentLogStore)
PROGRESS_KEY = web.AppKey("progress", ProgressGate)
EVENTS_KEY: web.AppKey[EventSink] = web.AppKey("events")
