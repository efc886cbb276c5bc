"""Benchmark: provisioning under TCG, one host then three at once, beside the floor.

A lab of its own (`plunderctl lab up --hosts 3 --firmware bios`) waits until its blank hosts are
inspected and parked in the agent. Then the lab's Debian + cloud-init image is set on one host,
and later on all three at once, with user-data that writes a marker; each host goes
`provisioning → provisioned` when the installed OS phones home. Between the two runs the host is
deprovisioned (image taken away: its BMC power-cycles it into the agent, which wipes it).

Per host it prints, from `status.phases` and the test's clock:
- request → agent starts writing: the controller's move, the agent's next poll, the cloud-init
  data and the image's HEAD;
- writing: download | checksum | decompress | direct writes, verified and seeded;
- reboot → phoned home: firmware, iPXE sent to disk, boot loader, kernel, systemd, cloud-init;
- total: request → provisioned.
The floor, measured in the same run: the image's bytes at the disk's direct-write speed (the
agent times 16 MiB of direct writes just before it streams) plus the boot from disk. The first
(2019) plunder took about 7 minutes a host, one host after another.

Run: .venv/bin/python bench/provision.py [--format raw-lzop|raw-gzip|raw] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from labrun import HOSTS, Lab, running_lab, wait_for
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType


@dataclass(frozen=True)
class Run:
    """One host's provisioning, in seconds."""

    to_writing: float
    writing: float
    to_phone_home: float
    total: float
    image_bytes: int
    disk_bytes_per_second: int

    @property
    def floor(self) -> float:
        """The image at the disk's speed, plus the boot from disk."""
        return self.image_bytes / self.disk_bytes_per_second + self.to_phone_home


def _at(phase: dict[str, Any], key: str) -> float:
    return datetime.fromisoformat(phase[key]).timestamp()


def qemu_cpu_seconds(lab: Lab) -> float:
    """CPU time (user + system) the lab's QEMU processes have used so far."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if str(lab.folder) not in (proc / "cmdline").read_text(errors="replace"):
                continue
            if "qemu-system" not in (proc / "comm").read_text():
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, NotADirectoryError):
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def provision(lab: Lab, macs: list[str], image_format: str) -> list[Run]:
    """Set the image on ``macs`` at once; each host's figures once all are provisioned."""
    name = "debian-12.raw" + {"raw": "", "raw-gzip": ".gz", "raw-lzop": ".lzo"}[image_format]
    images = lab.folder / "files" / "images"
    checksum = (images / f"{name}.sha256").read_text().split()[0]
    secret = f"bench-{secrets.token_hex(3)}"
    lab.client.create(
        Secret(
            metadata=ObjectMeta(name=secret, namespace="default"),
            stringData={"value": f"#cloud-config\nruncmd:\n  - echo {secret} > /dev/ttyS0\n"},
        )
    )
    requested = time.time()
    for mac in macs:
        lab.client.patch(
            HOSTS,
            "host-" + mac.replace(":", "-"),
            {
                "spec": {
                    "image": {
                        "url": f"{lab.server}/files/images/{name}",
                        "checksum": checksum,
                        "format": image_format,
                    },
                    "userData": {"name": secret},
                }
            },
            namespace="default",
            patch_type=PatchType.MERGE,
        )
    wait_for(
        lambda: all(lab.state(mac) in ("provisioned", "error") for mac in macs),
        "the hosts to be provisioned",
        timeout=1200,
    )
    runs = []
    hosts = lab.by_mac()
    for mac in macs:
        status = hosts[mac]["status"]
        if status["state"] != "provisioned":
            raise RuntimeError(f"{mac}: {status.get('errorReason')}: {status.get('errorMessage')}")
        phases = {phase["name"]: phase for phase in status["phases"]}
        writing, provisioning = phases["writing"], phases["provisioning"]
        runs.append(
            Run(
                to_writing=_at(writing, "started") - requested,
                writing=_at(writing, "finished") - _at(writing, "started"),
                to_phone_home=_at(provisioning, "finished") - _at(writing, "finished"),
                total=_at(provisioning, "finished") - requested,
                image_bytes=writing["bytes"],
                disk_bytes_per_second=writing["diskBytesPerSecond"],
            )
        )
    return runs


def deprovision(lab: Lab, mac: str) -> None:
    """Take the image away: the BMC power-cycles the host into the agent, which wipes it."""
    host = "host-" + mac.replace(":", "-")
    lab.client.patch(
        HOSTS, host, {"spec": {"image": None}}, namespace="default", patch_type=PatchType.MERGE
    )
    wait_for(lambda: lab.state(mac) == "available", "the wipe", timeout=300)


def one_round(folder: Path, image_format: str) -> tuple[list[Run], list[Run], float, float]:
    with running_lab(folder, "--hosts", "3", "--firmware", "bios") as lab:
        macs = [host["mac"] for host in lab.hosts]
        wait_for(
            lambda: all(lab.state(mac) == "available" for mac in macs),
            "three inspected hosts",
            timeout=300,
        )
        cpu_before = qemu_cpu_seconds(lab)
        single = provision(lab, macs[:1], image_format)
        cpu = qemu_cpu_seconds(lab) - cpu_before
        deprovision(lab, macs[0])
        parallel = provision(lab, macs, image_format)
        return single, parallel, max(run.total for run in parallel), cpu


def show(label: str, runs: list[Run]) -> None:
    def median(values: list[float]) -> str:
        return f"{statistics.median(values):7.1f}s"

    image = runs[0].image_bytes
    speed = statistics.median(run.disk_bytes_per_second for run in runs)
    print(
        f"{label:<22} {len(runs):>3} "
        f"{median([r.to_writing for r in runs])} {median([r.writing for r in runs])} "
        f"{median([r.to_phone_home for r in runs])} {median([r.total for r in runs])} "
        f"{median([r.floor for r in runs])}   "
        f"{image / 2**20:.0f} MiB at {speed / 2**20:.0f} MiB/s"
    )


def main(rounds: int, image_format: str) -> None:
    singles: list[Run] = []
    parallels: list[Run] = []
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            single, parallel, wall, cpu = one_round(Path(folder) / "lab", image_format)
        singles += single
        parallels += parallel
        walls.append(wall)
        cpus.append(cpu)
    print(f"provisioning the lab's Debian + cloud-init image ({image_format}) under TCG, 2 vCPUs")
    print(
        f"{'':<22} {'n':>3} {'→writing':>8} {'writing':>8} {'→home':>8} {'total':>8} {'floor':>8}"
    )
    show("1 host", singles)
    show("3 hosts at once, each", parallels)
    one = statistics.median(run.total for run in singles)
    three = statistics.median(walls)
    cpu, cores = statistics.median(cpus), os.cpu_count() or 1
    # Emulated hosts share this machine's cores: three need three times one host's CPU time.
    shared_floor = max(one, 3 * cpu / cores)
    print(
        f"3 hosts at once: all provisioned in {three:.1f}s = {three / one:.2f}x one host "
        f"(target 1.3x); one host {one:.1f}s (target 60s; 2019 plunder: ~420s a host)"
    )
    print(
        f"one host's QEMU used {cpu:.1f} CPU-s; 3 hosts on {cores} cores cannot finish before "
        f"{shared_floor:.1f}s = {shared_floor / one:.2f}x one host; "
        f"measured {three / shared_floor:.2f}x that"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--format", choices=["raw-lzop", "raw-gzip", "raw"], default="raw-lzop")
    arguments = parser.parse_args()
    main(arguments.rounds, arguments.format)
