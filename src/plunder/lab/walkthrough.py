"""The seed's walkthrough, run for a person: apply ``examples/simple/`` and wait for the cluster.

``make lab`` ends here: the lab is up, its hosts are parked in the agent, and this applies the
repository's own examples with kubectl (as the README tells a person to), then reports each
Machine's phase as it changes until the workload cluster's Nodes are Ready. It writes the
workload cluster's kubeconfig (``clusterctl get kubeconfig``) into the lab's folder and prints
how to use it. Nothing here is special to the lab: it only reads what Cluster API reports.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from lightkube import Client

from plunder.images import binaries
from plunder.k8s import capi
from plunder.k8s.resources import as_dict

CLUSTER = "cluster-plunder"
EXAMPLES = "examples/simple"


class WalkthroughError(RuntimeError):
    """The walkthrough did not end in a working cluster in time."""


def _run(argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    if done.returncode != 0:
        raise WalkthroughError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


def ready_nodes(kubectl: list[str], env: dict[str, str]) -> list[str]:
    """The names of the workload cluster's Ready Nodes."""
    template = (
        '{range .items[*]}{.metadata.name} {.status.conditions[?(@.type=="Ready")].status}'
        '{"\\n"}{end}'
    )
    listing = _run([*kubectl, "get", "nodes", "-o", f"jsonpath={template}"], env)
    return [line.split()[0] for line in listing.splitlines() if line.endswith(" True")]


def run(
    lab_dir: Path,
    client: Client,
    say: Callable[[str], None],
    timeout_s: float = 3600,
) -> Path:
    """Apply the examples, wait until every Machine's Node is Ready; the workload kubeconfig.

    Raises:
        WalkthroughError: kubectl or clusterctl failed, or the cluster was not Ready in time.
    """
    env = {**os.environ, "KUBECONFIG": str(lab_dir / "kubeconfig")}
    kubectl = str(binaries.ensure_binary("kubectl"))
    examples = binaries.repository_root() / EXAMPLES
    say(f"kubectl apply -f {EXAMPLES}/")
    say(_run([kubectl, "apply", "-f", str(examples)], env).strip())
    started = time.monotonic()
    seen: dict[str, str] = {}
    workload = lab_dir / f"{CLUSTER}.kubeconfig"
    while time.monotonic() - started < timeout_s:
        machines = [as_dict(m) for m in client.list(capi.Machine, namespace="default")]
        for machine in machines:
            name = machine["metadata"]["name"]
            phase = machine.get("status", {}).get("phase", "Pending")
            if seen.get(name) != phase:
                seen[name] = phase
                say(f"{time.monotonic() - started:6.0f} s  machine {name}: {phase}")
        if machines and all(seen[m["metadata"]["name"]] == "Running" for m in machines):
            clusterctl = str(binaries.ensure_binary("clusterctl"))
            workload.write_text(_run([clusterctl, "get", "kubeconfig", CLUSTER], env))
            ready = ready_nodes([kubectl, f"--kubeconfig={workload}"], env)
            if len(ready) == len(machines):
                say(f"{time.monotonic() - started:6.0f} s  Nodes Ready: {', '.join(ready)}")
                return workload
        time.sleep(5)
    raise WalkthroughError(
        f"the cluster was not Ready within {timeout_s:.0f} s (machines: {seen}); "
        f"see `clusterctl describe cluster {CLUSTER}` and the hosts' consoles "
        "(plunderctl lab status)"
    )
