"""What the lab benchmarks share: a lab of their own (namespace, subnet, ports, folder) and waits.

Run from the repository: `.venv/bin/python bench/<benchmark>.py`; this file sits beside them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from lightkube import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' lab helper

from tests.conftest import isolated_lab  # noqa: E402

from plunder.api.inventory import PlunderHost  # noqa: E402
from plunder.k8s.client import sync_client  # noqa: E402
from plunder.k8s.resources import as_dict, resource_for  # noqa: E402

HOSTS = resource_for(PlunderHost)
T = TypeVar("T")


@dataclass(frozen=True)
class Lab:
    """A running lab, as a benchmark uses it."""

    folder: Path
    client: Client
    hosts: list[dict[str, Any]]
    subnet: IPv4Network

    @property
    def server(self) -> str:
        """The boot service's base URL on the provisioning network."""
        return f"http://{self.subnet.network_address + 1}:8080"

    def by_mac(self) -> dict[str, dict[str, Any]]:
        """Every PlunderHost, by boot MAC."""
        found = (as_dict(h) for h in self.client.list(HOSTS, namespace="default"))
        return {host["spec"]["bootMACAddress"]: host for host in found}

    def state(self, mac: str) -> str | None:
        """The host's state."""
        host = self.by_mac().get(mac)
        return (host.get("status") or {}).get("state") if host else None


def wait_for(predicate: Callable[[], T | None], what: str, timeout: float) -> T:
    """Poll ``predicate`` every 0.2 s until it returns something true."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)
    return result


@contextmanager
def running_lab(folder: Path, *options: str, subnet: IPv4Network | None = None) -> Iterator[Lab]:
    """`plunderctl lab up` on a namespace, subnet and ports of its own; `lab down` after."""
    with isolated_lab(folder, *options, subnet=subnet, prefix="plunder-bench") as running:
        yield Lab(folder, sync_client(running.kubeconfig), running.hosts(), running.subnet)
