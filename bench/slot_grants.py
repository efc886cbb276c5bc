"""Benchmark: the slot gate alone, N hosts asking at once, against a real API server (issue #14).

``bench/fleet_scale.py`` measures the whole system, and on a shared machine its time is mostly
the other processes'. This one measures only what grants cost: N available hosts with work (an
image) are created, then the host handler (``operator/host.py``, in this process, with its slot
gate) is driven as kopf drives it: a watch of the namespace keeps the handler's cache and calls
``plunderhost_event`` for each change (one at a time per host). A host that reaches
``provisioning`` "phones home" at once (a merge of ``provisioned``, as the boot service writes
it), which frees its slot. Timed from the first event until every host is provisioned, with the
API requests the gate and the handler made (``apiserver_request_total``, less the watch's and
the phone homes'), per host, and the ledger's writes.

Two limits: ``--limit`` (default 20, the default of ``--provisioning-limit``: most hosts wait,
and slots free one by one) and N (nobody waits: ``bench/fleet_scale.py``'s setting).

The granter's own settings (``--slot-grant-concurrency``, ``--slot-grant-batch`` of
``plunderctl controller``) are swept with ``--grant-concurrency`` and ``--grant-batch`` (lists),
each combination in turn, ``--rounds`` times over (interleaved, so that the machine's drift
falls on every combination alike).

Run from the repository:
  nice -n 5 .venv/bin/python bench/slot_grants.py --sizes 1000 [--limits 20,1000]
  .venv/bin/python bench/slot_grants.py --limits N --grant-concurrency 4,16,64 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import kopf
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace
from lightkube.types import PatchType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' object builders

from controller_scale import requests_served  # noqa: E402
from tests.integration.test_machine_world import HOSTS, create_host  # noqa: E402

from plunder.k8s import client as k8s_client  # noqa: E402
from plunder.k8s import crds  # noqa: E402
from plunder.k8s.resources import as_dict  # noqa: E402
from plunder.lab.plane import Plane, start_plane  # noqa: E402
from plunder.operator import host as host_handler  # noqa: E402
from plunder.operator import slots as slot_gate  # noqa: E402
from plunder.operator.controller_settings import SLOT_DEFAULTS, SlotSettings  # noqa: E402
from plunder.reconcile import slots  # noqa: E402
from plunder.reconcile.selection import HostCandidate  # noqa: E402

IMAGE = {"url": "http://172.31.99.1:8080/files/os.raw.gz", "checksum": "a" * 64}
_LOG = cast(kopf.Logger, logging.getLogger("bench"))


def populate(plane: Plane, namespace: str, size: int) -> None:
    """``size`` available hosts with an image to install, 16 requests at once."""
    kube = k8s_client.sync_client(plane.kubeconfig, timeout=60)
    kube.create(Namespace(metadata=ObjectMeta(name=namespace)))

    def one(i: int) -> None:
        name = f"h{i:05d}"
        create_host(
            kube, namespace, name, f"02:fe:00:{i >> 16:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}"
        )
        kube.patch(
            HOSTS, name, {"spec": {"image": IMAGE}}, namespace=namespace, patch_type=PatchType.MERGE
        )

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(size)))


class Driver:
    """kopf, as far as the host handler needs it: a watch, an index, one handler run per host."""

    def __init__(self, client: AsyncClient, namespace: str, size: int) -> None:
        self.client = client
        self.namespace = namespace
        self.size = size
        self.index: dict[str, dict[str, HostCandidate]] = {namespace: {}}
        self.cache = _IndexView(self.index)
        self.memo = kopf.Memo()
        self.latest: dict[str, dict[str, Any]] = {}
        self.running: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.provisioned: set[str] = set()
        self.done = asyncio.Event()
        self.phone_homes = 0

    async def watch(self) -> None:
        """Follow the hosts: the index, and a handler run for each change."""
        async for _kind, obj in self.client.watch(HOSTS, namespace=self.namespace):
            body = as_dict(obj)
            name = body["metadata"]["name"]
            self.index[self.namespace][name] = HostCandidate.from_body(body)
            state = (body.get("status") or {}).get("state")
            if state == "provisioned":
                self.provisioned.add(name)
                if len(self.provisioned) == self.size:
                    self.done.set()
            self.latest[name] = body
            if name not in self.running:
                self._spawn(name)

    def _spawn(self, name: str) -> None:
        self.running.add(name)
        task = asyncio.create_task(self._handle(name))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, name: str) -> None:
        """The latest copy's handler, then again while newer copies came (kopf's batching)."""
        try:
            handled = None
            while self.latest[name] is not handled:
                handled = self.latest[name]
                body = cast(kopf.Body, handled)
                await host_handler.plunderhost_event(
                    type="MODIFIED", body=body, memo=self.memo, logger=_LOG
                )
                if (handled.get("status") or {}).get("state") == "provisioning":
                    await self._phone_home(name)
        finally:
            self.running.discard(name)

    async def _phone_home(self, name: str) -> None:
        self.phone_homes += 1
        await self.client.patch(
            HOSTS.Status,
            name,
            {"status": {"state": "provisioned"}},
            namespace=self.namespace,
            patch_type=PatchType.MERGE,
        )


class _IndexView(dict[str, Any]):
    """``plunderhosts_by_namespace`` as kopf's index shows it: namespace → its hosts."""

    def __init__(self, index: dict[str, dict[str, HostCandidate]]) -> None:
        super().__init__()
        self.index = index

    def get(self, key: str, default: Any = None) -> Any:
        found = self.index.get(key)
        return list(found.values()) if found is not None else default

    def values(self) -> Any:
        return [list(hosts.values()) for hosts in self.index.values()]


async def measure(
    plane: Plane, namespace: str, size: int, settings: SlotSettings
) -> dict[str, float]:
    """Drive the handler until every host is provisioned; the figures."""
    client = k8s_client.async_client(plane.kubeconfig, field_manager="plunder-controller")
    host_handler.async_client = lambda **_: client  # type: ignore[assignment]
    slot_gate.SETTINGS = settings
    kopf.event = lambda *_, **__: None  # type: ignore[assignment]
    driver = Driver(client, namespace, size)
    await host_handler.open_client(driver.memo, plunderhosts_by_namespace=driver.cache)
    before = requests_served(plane)
    started = time.monotonic()
    watching = asyncio.create_task(driver.watch())
    try:
        await asyncio.wait_for(driver.done.wait(), timeout=1800)
    finally:
        elapsed = time.monotonic() - started
        watching.cancel()
        await driver.memo.slots.stop()
        await client.close()
    served = requests_served(plane) - before
    ours = Counter(
        {
            key: count
            for key, count in served.items()
            if key.startswith(("GET", "PATCH", "POST", "PUT"))
            and ("plunderhosts" in key or "configmaps" in key)
        }
    )
    ledger_writes = sum(
        count
        for key, count in ours.items()
        if "configmaps" in key and key.startswith(("PATCH", "POST", "PUT"))
    )
    total = sum(ours.values()) - driver.phone_homes
    return {
        "seconds": elapsed,
        "per_second": size / elapsed,
        "requests_per_host": total / size,
        "ledger_writes": ledger_writes,
    }


def _numbers(text: str) -> list[int]:
    return [int(word) for word in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000")
    parser.add_argument("--limits", default=f"{slots.DEFAULT_LIMIT},N")
    parser.add_argument("--grant-concurrency", default=str(SLOT_DEFAULTS.grant_concurrency))
    parser.add_argument("--grant-batch", default=str(SLOT_DEFAULTS.grant_batch))
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    granters = list(itertools.product(_numbers(args.grant_concurrency), _numbers(args.grant_batch)))
    with tempfile.TemporaryDirectory(prefix="slot-grants-") as folder:
        plane = start_plane(Path(folder) / "plane")
        try:
            kube = k8s_client.sync_client(plane.kubeconfig, timeout=60)
            crds.install_plunder_crds(kube)
            print(f"slot grants (load average {os.getloadavg()[0]:.1f} at start)")
            print(
                " hosts  limit  grant conc/batch  all provisioned  hosts/s  API requests/host"
                "  ledger writes"
            )
            for _ in range(args.rounds):
                for size in _numbers(args.sizes):
                    for word in args.limits.split(","):
                        limit = size if word == "N" else int(word)
                        for concurrency, batch in granters:
                            namespace = f"grants-{size}-{limit}-{uuid.uuid4().hex[:6]}"
                            settings = SlotSettings(limit, namespace, concurrency, batch)
                            populate(plane, namespace, size)
                            found = asyncio.run(measure(plane, namespace, size, settings))
                            print(
                                f"{size:6d} {limit:6d} {concurrency:9d}/{batch:<6d}"
                                f" {found['seconds']:15.1f}s {found['per_second']:8.1f}"
                                f" {found['requests_per_host']:18.2f}"
                                f" {found['ledger_writes']:14.0f}"
                                f"   (load {os.getloadavg()[0]:.1f})",
                                flush=True,
                            )
        finally:
            plane.stop()


if __name__ == "__main__":
    main()
