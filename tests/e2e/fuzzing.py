"""Running the fuzzers inside a lab's namespace: for the bounded tests and the long benchmark."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from plunder.lab import network
from plunder.lab.network import LabNetwork

REPO = Path(__file__).resolve().parents[2]


def dhcp_fuzzer(lab: LabNetwork, iface: str, count: int, seconds: float | None = None) -> list[str]:
    """tests/e2e/dhcp_fuzzer.py's arguments: ``count`` frames from ``iface`` (0: probes only)."""
    args = ["tests.e2e.dhcp_fuzzer", "--iface", iface, "--server", lab.ipv4_address]
    args += ["--count", str(count)]
    return args + (["--seconds", str(seconds)] if seconds is not None else [])


def http_fuzzer(lab: LabNetwork, count: int, seconds: float) -> list[str]:
    """tests/e2e/http_fuzzer.py's arguments: ``count`` requests (0: probes only)."""
    return [
        "tests.e2e.http_fuzzer",
        *("--server", lab.ipv4_address),
        *("--count", str(count), "--seconds", str(seconds)),
    ]


async def run_in_lab(
    lab: LabNetwork, module_and_args: list[str], timeout: float | None = None
) -> dict[str, Any]:
    """Run a fuzzer module inside the lab's namespace; the JSON report it printed last."""
    process = await asyncio.create_subprocess_exec(
        *network.in_namespace(lab, [sys.executable, "-m", *module_and_args]),
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode == 0, f"{module_and_args[0]}: {err.decode()}"
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return report
