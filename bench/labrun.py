"""What the lab benchmarks share: a lab of their own (namespace, subnet, ports, folder) and waits.

Run from the repository: `.venv/bin/python bench/<benchmark>.py`; this file sits beside them.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from lightkube import Client

from plunder.api.inventory import PlunderHost
from plunder.k8s.client import sync_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import processes

HOSTS = resource_for(PlunderHost)
T = TypeVar("T")


def plunderctl(*args: str) -> str:
    """Run plunderctl; its output, or an error with everything it said."""
    result = subprocess.run(
        [sys.executable, "-m", "plunder.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    if result.returncode != 0:
        raise RuntimeError(result.stdout + result.stderr)
    return result.stdout


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
def running_lab(folder: Path, *options: str) -> Iterator[Lab]:
    """`plunderctl lab up` on a namespace, subnet and ports of its own; `lab down` after."""
    ports = [str(processes.free_port()) for _ in range(3)]
    octet = 140 + secrets.randbelow(100)
    plunderctl(
        "lab",
        "up",
        "--dir",
        str(folder),
        "--netns",
        f"plunder-bench-{secrets.token_hex(2)}",
        "--address",
        f"172.31.{octet}.1/24",
        "--apiserver-port",
        ports[0],
        "--etcd-port",
        ports[1],
        "--controller-port",
        ports[2],
        *options,
    )
    try:
        yield Lab(
            folder,
            sync_client(folder / "kubeconfig"),
            json.loads((folder / "hosts.json").read_text()),
            IPv4Network(f"172.31.{octet}.0/24"),
        )
    finally:
        plunderctl("lab", "down", "--dir", str(folder))
