"""Benchmark: chaos, measured (issue #12), on the lab's virtual bare metal.

A lab of its own (`plunderctl lab up --hosts 3`: BIOS, UEFI, BIOS VMs under TCG) waits until
its blank hosts are inspected and parked in the agent. Then two runs, one after the other, on
the same hosts (tests/e2e/lab_chaos.py): each makes a Cluster API Machine + PlunderMachine per
host with the lab's Debian + cloud-init image (no kubeadm), waits until all are provisioned,
then deletes the Machines and waits until every host is wiped and back in the pool.

- the baseline: nothing is disrupted;
- chaos: while provisioning, the controller, the boot service and its dnsmasq are killed with
  `kill -9` (21 times by default) at seeded random moments over the baseline's time, each
  started again as its Deployment (dnsmasq: the boot service's supervisor) would, and
  kube-apiserver is restarted once with etcd kept; while deleting, they are killed 5 more times.

Every kill is printed as it happens (what, its pid, when in seconds since the phase began, how
many machines were provisioned then, how long until it answered again). At the end, beside the
baseline: the time until all were provisioned and the recovery (from the last disruption to all
provisioned), machines provisioned, hosts given twice (the chaos ledger watches every claim and
binding), machines given two hosts, hosts or machines stuck, hosts returned to the pool unwiped
(a return counts as wiped only if the host's disk, read at that moment, has no boot sector), and
the most dnsmasq processes seen at once.

Run from the repository, as root: .venv/bin/python bench/chaos_lab.py [--seed N] [--no-baseline]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from chaos import add_run_options, report
from labrun import running_lab
from tests.e2e.lab_chaos import DNSMASQ, prepare_cluster, run, wait_until_available
from tests.integration.chaos_world import APISERVER, BOOT, CONTROLLER, Findings, Plan


def main(arguments: argparse.Namespace) -> int:
    seed = arguments.seed if arguments.seed is not None else random.randrange(1 << 30)
    kills = {
        CONTROLLER: arguments.controller_kills,
        BOOT: arguments.boot_kills,
        DNSMASQ: arguments.dnsmasq_kills,
        APISERVER: 1,
    }
    later = {CONTROLLER: 2, BOOT: 2, DNSMASQ: 1} if arguments.release_kills else {}
    results: list[Findings] = []
    most_dhcp, rides = 0, {}
    begun = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chaos-lab-") as temporary:
        with running_lab(Path(temporary) / "lab", "--hosts", "3") as lab:
            print(f"lab up after {time.monotonic() - begun:.0f}s", flush=True)
            wait_until_available(lab.folder, timeout=600)
            print(f"hosts available after {time.monotonic() - begun:.0f}s", flush=True)
            prepare_cluster(lab.folder)
            spans = arguments.spans
            if arguments.baseline:
                _, baseline = run(lab.folder, lab.server, "baseline", Plan([], [], []), 600.0)
                results.append(baseline)
                spans = (
                    0.9 * (baseline.provisioning.done_s or spans[0]),
                    0.9 * (baseline.deletion.done_s or spans[1]),
                )
            plan = Plan.drawn(seed, 3, spans, kills, later, fraction=1.0)
            print(
                f"chaos: {len(plan.provisioning)} disruptions over {spans[0]:.0f}s, then "
                f"{len(plan.deletion)} over {spans[1]:.0f}s (seed {seed})",
                flush=True,
            )
            chaos, found = run(lab.folder, lab.server, "chaos", plan, arguments.patience)
            results.append(found)
            most_dhcp, rides = chaos.most_dhcp_servers, chaos.rides()
    report(results, seed, "VM hosts of the lab (TCG)")
    print(f"most dnsmasq processes at once, after a disruption: {most_dhcp}")
    print("ridden out: " + ", ".join(f"{what} {n}" for what, n in rides.items()))
    print(f"whole run: {time.monotonic() - begun:.0f}s")
    return 0 if all(found.clean for found in results) and most_dhcp <= 1 else 1


SPANS = "seconds to draw each phase's disruptions over, without a baseline"

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_run_options(parser, patience=600.0)
    parser.add_argument("--controller-kills", type=int, default=8)
    parser.add_argument("--boot-kills", type=int, default=7)
    parser.add_argument("--dnsmasq-kills", type=int, default=6)
    parser.add_argument(
        "--no-release-kills", dest="release_kills", action="store_false", help="none deleting"
    )
    parser.add_argument(
        "--no-baseline", dest="baseline", action="store_false", help="only the chaos run"
    )
    parser.add_argument("--spans", type=float, nargs=2, default=(120.0, 40.0), help=SPANS)
    sys.exit(main(parser.parse_args()))
