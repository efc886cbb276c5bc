"""Benchmark: chaos, measured (issue #12), over 1,000 simulated hosts on a real API server.

Two runs in one invocation, each in a namespace of its own with its own boot service and
controller (``plunderctl boot`` and ``plunderctl controller`` as processes), 1,000 available
hosts whose agents and installed OS are simulated over the boot service's HTTP API, and 1,000
Machines:

- the baseline: provision every machine, then delete 10% of them and make as many new ones
  (they take the freed hosts once those are wiped); nothing is disrupted;
- chaos: the same, while the controller (20 times) and the boot service (10 times) are killed
  with ``kill -9`` at random moments and started again, as their Deployments would, and
  kube-apiserver is restarted once with etcd kept; the deletion phase kills both again. The
  moments are drawn (seeded, the seed printed) over the baseline's time for each phase.

Every kill is printed as it happens (what, its pid, when in seconds since the phase began, how
many machines were provisioned then, how long until it answered again). At the end, beside the
baseline: the time until all were provisioned and the recovery (from the last disruption to all
provisioned), machines provisioned of all, hosts given to more than one machine (a watch records
every claim and every binding during the run: a claim passing between machines without a
release, a machine naming a host not claimed for it, two machines naming one host at the end),
machines given two hosts, hosts stuck, and hosts returned to the pool unwiped (a host's return
must come from deprovisioning with the wipe recorded and done by its agent in that cycle).

Run from the repository: .venv/bin/python bench/chaos.py [--size 1000] [--seed N]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' chaos world

from tests.integration.chaos_world import (  # noqa: E402
    APISERVER,
    BOOT,
    CONTROLLER,
    Findings,
    LivePlane,
    Phase,
    Plan,
    run,
)

from plunder.images import binaries  # noqa: E402
from plunder.k8s import crds  # noqa: E402
from plunder.lab.plane import start_plane  # noqa: E402

SHOWN = 20
"""Details listed per kind of finding (the counts are always whole)."""


def seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}s"


def recovery(phase: Phase) -> str:
    """From the last disruption to all provisioned ("-" with nothing disrupted)."""
    return seconds(phase.recovery_s) if phase.disruptions else "-"


def disruptions(phase: Phase) -> str:
    """How many of each kind, in the order of :data:`KINDS` (others after them)."""
    counts = dict.fromkeys(KINDS, 0)
    for disruption in phase.disruptions:
        counts[disruption.what] = counts.get(disruption.what, 0) + 1
    return ", ".join(f"{n} {what.split()[0]}" for what, n in counts.items() if n) or "none"


KINDS = (CONTROLLER, BOOT, APISERVER)


ROWS: list[tuple[str, Callable[[Findings], str]]] = [
    ("disrupted while provisioning", lambda f: disruptions(f.provisioning)),
    ("all provisioned after", lambda f: seconds(f.provisioning.done_s)),
    ("  recovery after the last", lambda f: recovery(f.provisioning)),
    ("disrupted while churning", lambda f: disruptions(f.deletion)),
    ("churn done after", lambda f: seconds(f.deletion.done_s)),
    ("  recovery after the last", lambda f: recovery(f.deletion)),
    ("machines provisioned", lambda f: f"{f.provisioned}/{f.total}"),
    ("hosts given twice", lambda f: str(len(f.given_twice))),
    ("machines given two hosts", lambda f: str(len(f.two_hosts))),
    ("hosts or machines stuck", lambda f: str(len(f.stuck))),
    ("hosts returned unwiped", lambda f: str(len(f.unwiped))),
    ("hosts given unwiped", lambda f: str(len(f.given_unwiped))),
    ("hosts returned after a wipe", lambda f: str(f.returns)),
    ("watch gaps (unverified)", lambda f: f"{f.gaps} ({len(f.unverified)})"),
]


def report(results: list[Findings], seed: int, hosts: str = "simulated hosts") -> None:
    """The findings side by side; the details of each violation after."""
    version = binaries.pinned_versions()["k8s.io/kubernetes"]
    size = results[0].size
    print(f"\nchaos over {size} {hosts} (seed {seed}; kube-apiserver {version})")
    print(f"{'':30}" + "".join(f"{r.label:>42}" for r in results))
    for title, cell in ROWS:
        print(f"{title:30}" + "".join(f"{cell(r):>42}" for r in results))
    for found in results:
        for kind, items in (
            ("given twice", found.given_twice),
            ("two hosts", found.two_hosts),
            ("stuck", found.stuck),
            ("unwiped", found.unwiped),
            ("given unwiped", found.given_unwiped),
            ("unverified", found.unverified),
        ):
            for item in items[:SHOWN]:
                print(f"  {found.label} {kind}: {item}")
            if len(items) > SHOWN:
                print(f"  {found.label} {kind}: … and {len(items) - SHOWN} more")


def add_run_options(parser: argparse.ArgumentParser, patience: float) -> None:
    """The options every chaos benchmark has: its seed, and its patience after the last kill."""
    parser.add_argument("--seed", type=int, default=None, help="default: drawn and printed")
    parser.add_argument(
        "--patience", type=float, default=patience, help="seconds after the last disruption"
    )


def main(arguments: argparse.Namespace) -> int:
    seed = arguments.seed if arguments.seed is not None else random.randrange(1 << 30)
    size, fraction = arguments.size, arguments.delete_fraction
    low, high = arguments.install_seconds
    options = {"seed": seed, "patience": arguments.patience, "install_seconds": (low, high)}
    with tempfile.TemporaryDirectory(prefix="chaos-") as temporary:
        folder = Path(arguments.keep or temporary)
        live = LivePlane(start_plane(folder / "plane"))
        try:
            kube = live.client()
            crds.install_plunder_crds(kube)
            crds.install_crd_files(kube, binaries.cluster_api_crd_files())
            baseline = run(
                live, folder, "baseline", size, Plan.none(size, fraction, seed), **options
            )
            spans = (
                0.9 * (baseline.provisioning.done_s or 60.0),
                0.9 * (baseline.deletion.done_s or 30.0),
            )
            kills = {CONTROLLER: arguments.kills, BOOT: arguments.boot_kills, APISERVER: 1}
            later = {CONTROLLER: arguments.deletion_kills, BOOT: arguments.deletion_boot_kills}
            plan = Plan.drawn(seed, size, spans, kills, later, fraction)
            chaos = run(live, folder, "chaos", size, plan, **options)
        finally:
            live.stop()
    report([baseline, chaos], seed)
    return 0 if baseline.clean and chaos.clean else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1000, help="hosts, and as many machines")
    parser.add_argument("--kills", type=int, default=20, help="controller kills, provisioning")
    parser.add_argument("--boot-kills", type=int, default=10, help="boot service kills, same")
    parser.add_argument("--deletion-kills", type=int, default=5, help="controller, churning")
    parser.add_argument("--deletion-boot-kills", type=int, default=3, help="boot, churning")
    parser.add_argument("--delete-fraction", type=float, default=0.1)
    add_run_options(parser, patience=300.0)
    parser.add_argument(
        "--install-seconds",
        type=float,
        nargs=2,
        default=(1.0, 5.0),
        help="a host's image write, drawn per host between the two",
    )
    parser.add_argument("--keep", type=Path, help="keep the logs here (else a temporary folder)")
    sys.exit(main(parser.parse_args()))
