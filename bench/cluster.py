"""Benchmark: the seed's walkthrough to a working cluster, phase by phase, beside the floor.

A lab of its own on the examples' subnet (`plunderctl lab up --hosts 2`: one BIOS host, one UEFI
host) waits until both hosts are inspected and parked in the agent; then
`kubectl apply -f examples/simple/`, as a person does, and the clock runs until both Nodes are
Ready. Per machine it prints, from the hosts' `status.phases`, the Machines' status, the
workload cluster's Nodes and the hosts' serial consoles (cloud-init prints kubeadm's output
there, with the kernel's clock):

- to write: the claim, the controller's move, the parked agent's next poll, the image's HEAD;
- write: download | checksum | decompress | direct writes of the node image;
- boot: reboot → firmware → disk → kernel → systemd → cloud-init's phone home (provisioned);
- kubeadm init (control plane) or kubeadm join (worker), as kubeadm itself reports them;
- Node Ready: from `kubectl apply`.

The floor, measured in the same run, is the sum of what the hosts themselves had to do on the
critical path: the control plane's write + boot + kubeadm init, then the worker's write + boot +
kubeadm join (the worker's bootstrap data exists only once the control plane is initialized).
What is above the floor is waiting: for the controller and Cluster API to react, for the Node
to be Ready after kubeadm returns. The first (2019) plunder took about 7 minutes a host, one
after the other: 14 minutes for the two, without Kubernetes' own start.

Every host here is emulated (TCG) and both share this machine's two cores, so every phase is
far slower than on servers; the floor is measured under the same conditions.

Run: .venv/bin/python bench/cluster.py [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from labrun import Lab, running_lab, wait_for

from plunder.images import binaries
from plunder.k8s import capi
from plunder.k8s.resources import as_dict

EXAMPLES = binaries.repository_root() / "examples" / "simple"
SUBNET = IPv4Network("172.31.99.0/24")
MACHINES = ("controlplane", "worker")
SEED_MINUTES_PER_HOST = 7.0

_KERNEL_CLOCK = re.compile(r"^\[\s*(\d+\.\d+)\]")
KUBEADM_MARKS = {
    "controlplane": (
        "[init] Using Kubernetes version",
        "control-plane has initialized successfully",
    ),
    "worker": ("[preflight] Running pre-flight checks", "This node has joined the cluster"),
}


@dataclass
class MachineTimes:
    """One machine's phases, in seconds."""

    to_write: float = 0.0
    write: float = 0.0
    boot: float = 0.0
    kubeadm: float = 0.0
    node_ready: float = 0.0
    firmware: str = ""


@dataclass
class Run:
    """One walkthrough."""

    machines: dict[str, MachineTimes] = field(default_factory=dict)
    all_ready: float = 0.0

    @property
    def floor(self) -> float:
        """What the hosts had to do on the critical path (see the module's docstring)."""
        return sum(m.write + m.boot + m.kubeadm for m in self.machines.values())


def _at(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def kubeadm_seconds(serial: str, machine: str) -> float:
    """The time kubeadm took, from the kernel clock of the lines cloud-init printed."""
    start_mark, end_mark = KUBEADM_MARKS[machine]
    start = end = None
    for line in serial.splitlines():
        clock = _KERNEL_CLOCK.match(line)
        if clock is None:
            continue
        if start is None and start_mark in line:
            start = float(clock.group(1))
        if end_mark in line:
            end = float(clock.group(1))
    if start is None or end is None:
        raise RuntimeError(f"kubeadm's start or end not on the console of {machine}")
    return end - start


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=True)
    return done.stdout


def walkthrough(lab: Lab) -> Run:
    """Apply the examples and time everything until both Nodes are Ready."""
    env = {**os.environ, "KUBECONFIG": str(lab.folder / "kubeconfig")}
    kubectl = str(binaries.ensure_binary("kubectl"))
    wait_for(
        lambda: (
            len(lab.by_mac()) == 2 and all(lab.state(mac) == "available" for mac in lab.by_mac())
        ),
        "both hosts available",
        timeout=600,
    )
    started = time.time()
    _run([kubectl, "apply", "-f", str(EXAMPLES)], env)

    def machine(name: str) -> dict[str, Any]:
        return as_dict(lab.client.get(capi.Machine, name, namespace="default"))

    run = Run()
    for name in MACHINES:
        wait_for(
            lambda name=name: machine(name).get("status", {}).get("nodeRef"),  # type: ignore[misc]
            f"{name}'s Node",
            timeout=3000,
        )
    clusterctl = str(binaries.ensure_binary("clusterctl"))
    kubeconfig = lab.folder / "workload.kubeconfig"
    kubeconfig.write_text(_run([clusterctl, "get", "kubeconfig", "cluster-plunder"], env))
    ready_at: dict[str, float] = {}

    def all_ready() -> bool:
        nodes = _run(
            [
                kubectl,
                f"--kubeconfig={kubeconfig}",
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} "
                '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
            ],
            env,
        )
        for line in nodes.splitlines():
            name, status = line.split()
            if status == "True":
                ready_at.setdefault(name, time.time() - started)
        return all(name in ready_at for name in MACHINES)

    wait_for(all_ready, "both Nodes Ready", timeout=1800)
    run.all_ready = max(ready_at.values())
    firmware = {host["mac"]: host["firmware"] for host in lab.hosts}
    for name in MACHINES:
        mac = machine(name)["spec"]["providerID"].removeprefix("plunder://")
        host = lab.by_mac()[mac]
        phases = {phase["name"]: phase for phase in host["status"]["phases"]}
        provisioning, writing = phases["provisioning"], phases["writing"]
        vm = next(h["name"] for h in lab.hosts if h["mac"] == mac)
        serial = (lab.folder / "vms" / f"{vm}.serial.log").read_text(errors="replace")
        run.machines[name] = MachineTimes(
            to_write=_at(writing["started"]) - _at(provisioning["started"]),
            write=_at(writing["finished"]) - _at(writing["started"]),
            boot=_at(provisioning["finished"]) - _at(writing["finished"]),
            kubeadm=kubeadm_seconds(serial, name),
            node_ready=ready_at[name],
            firmware=firmware[mac],
        )
    return run


def report(runs: list[Run]) -> None:
    """Medians over the runs, per machine and phase, beside the floor and the seed."""

    def median(values: list[float]) -> str:
        return f"{statistics.median(values):7.1f}"

    print(f"\nthe walkthrough to a working cluster, {len(runs)} run(s), seconds (median)")
    print(f"  {'phase':28s} {'controlplane':>12s} {'worker':>12s}")
    for label, attribute in (
        ("claim → write starts", "to_write"),
        ("write (node image)", "write"),
        ("reboot → phoned home", "boot"),
        ("kubeadm init / join", "kubeadm"),
        ("apply → Node Ready", "node_ready"),
    ):
        cells = [median([getattr(r.machines[m], attribute) for r in runs]) for m in MACHINES]
        print(f"  {label:28s} {cells[0]:>12s} {cells[1]:>12s}")
    print(f"  firmware: {', '.join(f'{m} {runs[0].machines[m].firmware}' for m in MACHINES)}")
    total = statistics.median([r.all_ready for r in runs])
    floor = statistics.median([r.floor for r in runs])
    seed = SEED_MINUTES_PER_HOST * 60 * len(MACHINES)
    print(f"\n  apply → all Nodes Ready        {total:7.1f} s ({total / 60:.1f} min)")
    print(
        f"  floor (hosts' own work)        {floor:7.1f} s; waiting above it {total - floor:.1f} s"
    )
    print(
        f"  the 2019 plunder, OS only      {seed:7.1f} s ({SEED_MINUTES_PER_HOST:.0f} min a host)"
    )


def main() -> None:
    """Run the walkthrough ``--runs`` times, each in a lab of its own."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    runs = []
    for number in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="plunder-bench-cluster-") as folder:
            with running_lab(Path(folder), "--hosts", "2", subnet=SUBNET) as lab:
                runs.append(walkthrough(lab))
        print(f"run {number + 1}: all Nodes Ready {runs[-1].all_ready:.1f} s after apply")
    report(runs)


if __name__ == "__main__":
    main()
