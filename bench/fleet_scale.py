"""Benchmark: a fleet of N simulated hosts with real boot traffic, beside Ironic (issue #14).

For each size, in a namespace of its own on one real etcd + kube-apiserver: ``plunderctl boot``
(HTTP on loopback, DHCP off, discovery on with auto-accept, the bound on discovery lifted to N)
and ``plunderctl controller`` (``--provisioning-limit N``, as ``bench/controller_scale.py``, so
the figures measure the system and not the throttle) as processes, and N hosts simulated by
``bench/fleet.py``: each boots iPXE (``/boot.ipxe?mac=``: unknown, so discovered), the agent
(token lookup, inspection, then parked, polling for work), and later its installed OS (phone
home). Then, timed from the first request:

- up: N Cluster API Machines (each with its bootstrap Secret and PlunderMachine) are made, as a
  MachineDeployment's MachineSet would make them (Cluster API's own managers do not run here:
  building and running them would measure them, not this provider), until every PlunderMachine
  is Provisioned (each host's agent streamed, seeded, reported done, rebooted, phoned home);
- down: every PlunderMachine is deleted (as scaling to 0 does), until every host is wiped by its
  agent and available again, with no claim.

Per size: those two times; the controller's and the boot service's peak RSS (VmHWM) and CPU
seconds over up + down (from /proc); the API requests per machine (``apiserver_request_total``
before and after, less the benchmark's own creates and deletes); and the boot service's request
rate and p99 latency as the simulated hosts saw them. Then the growth of each between sizes
(per N: 1.0 is linear). Then Ironic standalone (``bench/ironic_standalone.py``) taking as many
nodes from enrolled to active and back, in the same run, and the ratio.

A controller setting is compared with its peer in the same run: ``--controller-args`` given more
than once runs each at each size, on the same API server, ``--rounds`` times interleaved.

Run from the repository:
  nice -n 19 .venv/bin/python bench/fleet_scale.py --sizes 100,1000[,10000] [--no-ironic]
  .venv/bin/python bench/fleet_scale.py --sizes 1000 --no-ironic --rounds 2 \
      --controller-args "" --controller-args "--kube-api-connections 10"
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' object builders

from controller_scale import Progress, peak_rss_mb, requests_served  # noqa: E402
from fleet import AGENT_FILES, Fleet, Timings  # noqa: E402
from ironic_standalone import Phases  # noqa: E402
from ironic_standalone import measure as measure_ironic  # noqa: E402
from tests.integration.chaos_world import BootProcess  # noqa: E402
from tests.integration.test_machine_world import (  # noqa: E402
    MACHINES,
    Controller,
    create_cluster,
    create_machine,
)

from plunder.images import binaries  # noqa: E402
from plunder.k8s import client as k8s_client  # noqa: E402
from plunder.k8s import crds  # noqa: E402
from plunder.lab import processes  # noqa: E402
from plunder.lab.plane import Plane, start_plane  # noqa: E402

WORKERS = 16
"""The benchmark's own API requests in flight (creating and deleting machines)."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DiscoveringBoot(BootProcess):
    """The boot service as a fleet needs it: it discovers and accepts the hosts it sees."""

    def __init__(self, kubeconfig: Path, log: Path, namespace: str, run_dir: Path, size: int):
        super().__init__(kubeconfig, log, namespace, run_dir)
        self.size = size
        self.files = run_dir / "files"
        for path in AGENT_FILES:  # small stand-ins: a kernel boot fetches them
            (self.files / path).parent.mkdir(parents=True, exist_ok=True)
            (self.files / path).write_bytes(b"\0" * 65536)

    def argv(self, port: int) -> list[str]:
        """The chaos world's command line, with discovery on and its bound lifted to N."""
        argv = [word for word in super().argv(port) if word != "--no-discovery"]
        return [
            *argv,
            *("--files-dir", str(self.files), "--auto-accept"),
            *("--max-pending-hosts", str(self.size), "--discovery-burst", str(self.size)),
            *("--discoveries-per-minute", str(60 * self.size)),
        ]


@dataclass
class Result:
    """The figures of one size."""

    size: int
    controller_args: str = ""
    """The controller's options beyond the benchmark's own (``--controller-args``)."""
    discovered_s: float = float("nan")
    up_s: float = float("nan")
    down_s: float = float("nan")
    controller_mb: float = float("nan")
    controller_cpu_s: float = float("nan")
    boot_mb: float = float("nan")
    boot_cpu_s: float = float("nan")
    requests_per_machine: float = float("nan")
    boot_rate: float = float("nan")
    boot_p99_ms: float = float("nan")
    ironic: Phases | None = None
    notes: list[str] = field(default_factory=list)


def timings(args: argparse.Namespace) -> Timings:
    """The simulated hosts' timings, from the options of :func:`add_fleet_options`."""
    return Timings(
        poll_seconds=args.poll_seconds,
        boot_seconds=args.boot_seconds,
        write_seconds=tuple(args.write_seconds),
        power_on_spread=args.power_on_spread,
    )


def answer_notes(fleet: Fleet) -> list[str]:
    """The boot service's answers that were not a yes, and a few hosts left behind."""
    yes = (" 200", " 204", "seed 404")  # the seed's network-config: none (DHCP)
    bad = {k: v for k, v in fleet.calls.statuses.items() if not k.endswith(yes)}
    notes = [f"answers that were not a yes: {dict(sorted(bad.items()))}"] if bad else []
    return notes + [f"left behind: {line}" for line in fleet.behind()]


def wait(
    what: str,
    done: Callable[[], bool],
    size: int,
    count: Callable[[], int],
    timeout: float,
    since: float | None = None,
) -> float:
    """Seconds from ``since`` (else now) until ``done()``, showing ``count()`` every 15 s.

    NaN if not done within ``timeout``.
    """
    started = time.monotonic() if since is None else since
    shown = time.monotonic()
    while not done():
        now = time.monotonic()
        if now - started > timeout:
            print(f"  {size}: {count()}/{size} {what}: gave up after {timeout:.0f}s", flush=True)
            return float("nan")
        if now - shown >= 15:
            print(f"  {size}: {now - started:.0f}s {count()}/{size} {what}", flush=True)
            shown = now
        time.sleep(0.2)
    return time.monotonic() - started


def one_size(
    plane: Plane,
    kube: Client,
    size: int,
    folder: Path,
    args: argparse.Namespace,
    controller_args: str = "",
    ironic: bool = True,
) -> Result:
    result = Result(size, controller_args)
    namespace = f"fleet-{size}-{uuid.uuid4().hex[:6]}"
    kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
    create_cluster(kube, namespace)
    here = folder / namespace
    here.mkdir(parents=True)
    boot = DiscoveringBoot(plane.kubeconfig, here / "boot.log", namespace, here / "boot", size)
    limit = ("--provisioning-limit", str(size), *shlex.split(controller_args))
    controller = Controller(plane, here / "controller.log", namespace, limit)
    fleet = Fleet(plane.kubeconfig, namespace, boot.url, size, timings(args), args.connections)
    timeout = args.timeout
    try:
        boot.start()
        controller.start()
        fleet.start()
        fleet.ready.wait()
        result.discovered_s = wait(
            "available (discovered, inspected, parked)",
            lambda: fleet.count("available") >= size,
            size,
            lambda: fleet.count("available"),
            timeout,
        )
        assert boot.process is not None and controller.process is not None
        cpu = {"boot": cpu_seconds(boot.process.pid), "ctl": cpu_seconds(controller.process.pid)}
        before = requests_served(plane)
        progress = Progress(plane, namespace, size)
        progress.start()
        began = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(lambda i: create_machine(kube, namespace, f"m{i:05d}"), range(size)))
        result.up_s = wait(
            "provisioned",
            progress.done.is_set,
            size,
            lambda: len(progress.provisioned),
            timeout,
            since=began,
        )
        progress.stopping.set()
        if result.up_s != result.up_s:
            result.notes.append(
                f"up stalled: {len(progress.provisioned)}/{size} provisioned after {timeout:.0f}s "
                f"(hosts {fleet.count('available', claimed=True)} claimed and available, "
                f"{fleet.count('provisioning')} provisioning)"
            )
        down_began = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(
                pool.map(
                    lambda i: kube.delete(MACHINES, f"m{i:05d}", namespace=namespace), range(size)
                )
            )
        result.down_s = wait(
            "released (wiped, available, unclaimed)",
            lambda: fleet.count("available", claimed=False) >= size,
            size,
            lambda: fleet.count("available", claimed=False),
            timeout,
            since=down_began,
        )
        ended = time.monotonic()
        if result.down_s != result.down_s:
            free = fleet.count("available", claimed=False)
            result.notes.append(f"down stalled: {free}/{size} released after {timeout:.0f}s")
        after = requests_served(plane)
        ours = 4 * size + 2 + 2  # 3 creates + 1 delete a machine; the progress watch and list,
        # the fleet's watch and list (the /metrics reads are not counted by the API server)
        result.requests_per_machine = (sum((after - before).values()) - ours) / size
        if args.breakdown:
            for key, count in sorted((after - before).items(), key=lambda item: -item[1])[:15]:
                print(f"  {size}: {count:>8} {key}")
        result.controller_mb = peak_rss_mb(controller.process.pid)
        result.controller_cpu_s = cpu_seconds(controller.process.pid) - cpu["ctl"]
        result.boot_mb = peak_rss_mb(boot.process.pid)
        result.boot_cpu_s = cpu_seconds(boot.process.pid) - cpu["boot"]
        rate, p99 = fleet.calls.rate_and_p99(began, ended)
        result.boot_rate, result.boot_p99_ms = rate, p99 * 1000
        result.notes.extend(answer_notes(fleet))
    finally:
        fleet.stop()
        controller.stop()
        boot.stop()
        if fleet.failure is not None:
            raise fleet.failure
    if ironic:
        print(f"  {size}: Ironic standalone", flush=True)
        result.ironic = measure_ironic(
            here / "ironic", processes.free_port(), size, peak_rss_mb, cpu_seconds
        )
    return result


def growth(results: list[Result], value: Callable[[Result], float]) -> str:
    """Per-N growth of ``value`` from each size to the next (1.0: linear)."""
    cells = []
    for small, large in zip(results, results[1:], strict=False):
        a, b = value(small), value(large)
        cells.append(f"{(b / a) / (large.size / small.size):.2f}" if a else "-")
    return " ".join(cells) or "-"


def report_growth(results: list[Result], variant: str) -> None:
    """How each figure grows from one size to the next, for the runs of one controller."""
    sizes = sorted({r.size for r in results})
    if len(sizes) < 2:
        return
    firsts = [next(r for r in results if r.size == size) for size in sizes]  # round 1 of each
    print(f"growth per N between sizes (1.0 = linear){f' with {variant}' if variant else ''}:")
    for title, value in (
        ("up", lambda r: r.up_s),
        ("down", lambda r: r.down_s),
        ("controller RSS", lambda r: r.controller_mb),
        ("controller CPU", lambda r: r.controller_cpu_s),
        ("boot CPU", lambda r: r.boot_cpu_s),
        ("API requests", lambda r: r.requests_per_machine * r.size),
    ):
        print(f"  {title:16} {growth(firsts, value)}")


def report(results: list[Result], args: argparse.Namespace) -> None:
    version = binaries.pinned_versions()["k8s.io/kubernetes"]
    print(
        f"\nfleet at scale (kube-apiserver {version}; poll {args.poll_seconds}s, boot "
        f"{args.boot_seconds}s, write {args.write_seconds[0]}-{args.write_seconds[1]}s, "
        f"{args.connections} connections; load average {os.getloadavg()[0]:.1f})"
    )
    variants = list(dict.fromkeys(r.controller_args for r in results))
    header = (
        f"{'hosts':>6} {'inspected':>9} {'up':>8} {'down':>8} {'ctl RSS':>8} {'ctl CPU':>8} "
        f"{'boot RSS':>8} {'boot CPU':>8} {'API/machine':>11} {'boot req/s':>10} {'p99':>8}"
    )
    print(header)
    for r in results:
        print(
            f"{r.size:>6} {r.discovered_s:>8.1f}s {r.up_s:>7.1f}s {r.down_s:>7.1f}s "
            f"{r.controller_mb:>6.0f}MB {r.controller_cpu_s:>7.1f}s {r.boot_mb:>6.0f}MB "
            f"{r.boot_cpu_s:>7.1f}s {r.requests_per_machine:>11.1f} {r.boot_rate:>10.0f} "
            f"{r.boot_p99_ms:>6.0f}ms"
            + (f"  {r.controller_args or '(defaults)'}" if variants != [""] else "")
        )
    for variant in variants:
        report_growth([r for r in results if r.controller_args == variant], variant)
    for r in results:
        for note in r.notes:
            print(f"  {r.size}: {note}")
    ironic = [r for r in results if r.ironic is not None]
    if ironic:
        print("\nIronic standalone (fake-hardware, sqlite, noauth; all-in-one process) beside it")
        print(
            f"{'nodes':>6} {'enroll':>8} {'available':>9} {'deploy':>8} {'undeploy':>8} "
            f"{'RSS':>7} {'CPU':>7} {'up: ours/Ironic':>16} {'down: ours/Ironic':>18}"
        )
        for r in ironic:
            i = r.ironic
            assert i is not None
            print(
                f"{i.size:>6} {i.enroll_s:>7.1f}s {i.available_s:>8.1f}s {i.deploy_s:>7.1f}s "
                f"{i.undeploy_s:>7.1f}s {i.rss_mb:>5.0f}MB {i.cpu_s:>6.1f}s "
                f"{r.up_s / i.deploy_s:>16.2f} {r.down_s / i.undeploy_s:>18.2f}"
            )


def add_fleet_options(parser: argparse.ArgumentParser) -> None:
    """The simulated fleet's options (its timings and connections) and the phases' timeout."""
    parser.add_argument("--poll-seconds", type=float, default=Timings.poll_seconds)
    parser.add_argument("--boot-seconds", type=float, default=Timings.boot_seconds)
    parser.add_argument("--write-seconds", type=float, nargs=2, default=Timings.write_seconds)
    parser.add_argument("--power-on-spread", type=float, default=Timings.power_on_spread)
    parser.add_argument("--connections", type=int, default=256, help="the fleet's, at once")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per phase, seconds")


def main(args: argparse.Namespace) -> int:
    sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="fleet-scale-") as temporary:
        folder = Path(args.keep or temporary)
        plane = start_plane(folder / "plane")
        try:
            kube = k8s_client.sync_client(plane.kubeconfig, timeout=60)
            crds.install_plunder_crds(kube)
            crds.install_crd_files(kube, binaries.cluster_api_crd_files())
            results = []
            variants = args.controller_args or [""]
            for size in sizes:
                for turn in range(args.rounds):  # the variants interleaved: drift hits all
                    for variant in variants:
                        print(
                            f"{size} hosts{f', controller {variant}' if variant else ''}",
                            flush=True,
                        )
                        ironic = args.ironic and turn == 0 and variant == variants[0]
                        results.append(one_size(plane, kube, size, folder, args, variant, ironic))
        finally:
            plane.stop()
    report(results, args)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100,1000", help="comma-separated host counts")
    add_fleet_options(parser)
    parser.add_argument("--no-ironic", dest="ironic", action="store_false")
    parser.add_argument(
        "--controller-args",
        action="append",
        help='more controller options, e.g. "--kube-api-qps 50 --machine-workers 4"; given more '
        'than once, each is run at each size beside the others ("" for the defaults)',
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of each size and controller, interleaved"
    )
    parser.add_argument("--breakdown", action="store_true", help="API requests by verb")
    parser.add_argument("--keep", type=Path, help="keep logs here (else a temporary folder)")
    sys.exit(main(parser.parse_args()))
