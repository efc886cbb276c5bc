"""Benchmark: the machine controller at scale, against a real etcd + kube-apiserver.

For each size (a baseline of 100 and the target of 1,000) the benchmark creates, in a namespace
of its own, that many available PlunderHosts and that many Cluster API Machines with their
bootstrap Secrets and PlunderMachines, all before the controller starts. Then it starts
``plunderctl controller`` and measures, from the controller's start, the time until every
machine has claimed a host and until every machine reports Provisioned. The benchmark plays the
hosts' agent (a watch that marks each provisioning host provisioned through
``hoststate.phoned_home``, as the boot service does when the installed OS phones home).

Also reported: the controller's peak RSS (VmHWM) and its API requests per machine, from the
API server's ``apiserver_request_total`` before and after, minus the requests the benchmark
made itself. Targets for 1,000: <= 60 s to all provisioned, <= 300 MB.

Run from the repository: .venv/bin/python bench/controller_scale.py [--sizes 100 1000]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx2
from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' object builders

from tests.integration.test_machine_world import (  # noqa: E402
    MACHINES,
    Agent,
    Controller,
    populate,
)

from plunder.images import binaries  # noqa: E402
from plunder.k8s import client as k8s_client  # noqa: E402
from plunder.k8s import crds  # noqa: E402
from plunder.lab.plane import Plane, start_plane  # noqa: E402

REQUESTS = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$", re.MULTILINE)
LABEL = re.compile(r'(\w+)="([^"]*)"')


def requests_served(plane: Plane) -> Counter[str]:
    """The requests the API server has answered so far, by verb, resource and code."""
    with urllib.request.urlopen(  # noqa: S310 - the plane's own loopback URL
        f"{plane.server}/metrics", timeout=10, context=plane.ssl_context()
    ) as response:
        text = response.read().decode()
    served: Counter[str] = Counter()
    for labels, value in REQUESTS.findall(text):
        found = dict(LABEL.findall(labels))
        key = " ".join(found.get(name, "") for name in ("verb", "resource", "subresource", "code"))
        served[key.replace("  ", " ")] += int(float(value))
    return served


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Result:
    """The figures of one size."""

    size: int
    claimed_s: float
    provisioned_s: float
    rss_mb: float
    requests_per_machine: float


class Progress(threading.Thread):
    """Watches the PlunderMachines and notes when all are claimed and all are provisioned."""

    def __init__(self, plane: Plane, namespace: str, size: int) -> None:
        super().__init__(daemon=True)
        self.client = Client(KubeConfig.from_file(plane.kubeconfig), timeout=httpx2.Timeout(60))
        self.namespace = namespace
        self.size = size
        self.claimed: set[str] = set()
        self.provisioned: set[str] = set()
        self.claimed_at: float | None = None
        self.provisioned_at: float | None = None
        self.done = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        """Follow the machines until all are provisioned (a broken watch is started again)."""
        while not self.stopping.is_set():
            try:
                self.follow()
            except Exception as error:  # noqa: BLE001 - a loaded API server drops watches
                print(f"  (progress watch: {error!r}; watching again)", flush=True)

    def follow(self) -> None:
        """One watch, until all are provisioned."""
        for _, body in self.client.watch(MACHINES, namespace=self.namespace):
            if self.stopping.is_set():
                return
            name = body["metadata"]["name"]
            if (body["metadata"].get("annotations") or {}).get("plunder.dev/host"):
                self.claimed.add(name)
            if (body.get("status") or {}).get("state") == "Provisioned":
                self.provisioned.add(name)
            now = time.monotonic()
            if self.claimed_at is None and len(self.claimed) == self.size:
                self.claimed_at = now
            if len(self.provisioned) == self.size:
                self.provisioned_at = now
                self.done.set()
                self.stopping.set()
                return


def one_size(
    plane: Plane,
    kube: Client,
    size: int,
    folder: Path,
    keep_logs: Path | None,
    breakdown: bool,
) -> Result:
    namespace = f"scale-{size}-{uuid.uuid4().hex[:6]}"
    kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
    populate(kube, namespace, size)
    progress = Progress(plane, namespace, size)
    agent = Agent(plane, namespace)
    agent.start()
    before = requests_served(plane)
    # The provisioning throttle lifted: this measures how fast the controller itself goes.
    controller = Controller(
        plane, folder / f"controller-{size}.log", namespace, ("--provisioning-limit", str(size))
    )
    started = time.monotonic()
    try:
        controller.start()
        progress.start()
        while not progress.done.wait(timeout=15) and time.monotonic() - started < 900:
            print(
                f"  {size}: {time.monotonic() - started:.0f}s {len(progress.claimed)} claimed, "
                f"{len(progress.provisioned)} provisioned",
                flush=True,
            )
        assert controller.process is not None
        rss = peak_rss_mb(controller.process.pid)
        after = requests_served(plane)
    finally:
        controller.stop()
        agent.stop()
        progress.stopping.set()
        if keep_logs:
            keep_logs.mkdir(parents=True, exist_ok=True)
            (keep_logs / controller.log.name).write_bytes(controller.log.read_bytes())
    claimed_s = (progress.claimed_at or float("nan")) - started
    provisioned_s = (progress.provisioned_at or float("nan")) - started
    ours = 1 + agent.requests + 2  # the progress watch, the agent, the two /metrics reads
    if breakdown:
        for key, count in sorted((after - before).items(), key=lambda item: -item[1])[:20]:
            print(f"  {size} machines: {count:>7} {key}")
    total = sum((after - before).values())
    return Result(size, claimed_s, provisioned_s, rss, (total - ours) / size)


def main(sizes: list[int], keep_logs: Path | None, breakdown: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="controller-scale-") as folder:
        plane = start_plane(Path(folder) / "plane")
        try:
            kube = k8s_client.sync_client(plane.kubeconfig)
            crds.install_plunder_crds(kube)
            crds.install_crd_files(kube, binaries.cluster_api_crd_files())
            results = [
                one_size(plane, kube, size, Path(folder), keep_logs, breakdown) for size in sizes
            ]
        finally:
            plane.stop()
    version = binaries.pinned_versions()["k8s.io/kubernetes"]
    print(f"machine controller at scale (kube-apiserver {version}; times from controller start)")
    print(
        f"{'machines':>8} {'all claimed':>12} {'all provisioned':>16} {'peak RSS':>9} "
        f"{'API req/machine':>16}"
    )
    for r in results:
        print(
            f"{r.size:>8} {r.claimed_s:>11.1f}s {r.provisioned_s:>15.1f}s {r.rss_mb:>7.0f}MB "
            f"{r.requests_per_machine:>16.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--keep-logs", type=Path, help="copy the controller's logs here")
    parser.add_argument("--breakdown", action="store_true", help="requests by verb and resource")
    arguments = parser.parse_args()
    main(arguments.sizes, arguments.keep_logs, arguments.breakdown)
