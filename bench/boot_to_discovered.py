"""Benchmark: power-on to discovered, for blank BIOS and UEFI hosts under TCG.

Each round runs `plunderctl lab up --hosts 3` (two BIOS hosts, one UEFI host) on a namespace and
ports of its own, waits until the three PlunderHosts exist, and takes `lab down`. For each host
it prints two figures: power-on to the first DHCPDISCOVER that dnsmasq logged (the firmware's
share: SeaBIOS/OVMF and the NIC's ROM, the baseline nothing here can shorten) and power-on to
`status.firstSeen` (DHCP, TFTP or not, the chain script, the HTTP request, the API write).
Medians over the rounds. Run: .venv/bin/python bench/boot_to_discovered.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from datetime import datetime
from pathlib import Path

from labrun import running_lab, wait_for

DISCOVER = re.compile(r"^(\S+ \S+) .*DHCPDISCOVER\(\w+\) ([0-9a-f:]{17})", re.MULTILINE)


def first_discover(boot_log: str) -> dict[str, float]:
    """The time of each MAC's first DHCPDISCOVER in the boot service's log."""
    seen: dict[str, float] = {}
    for stamp, mac in DISCOVER.findall(boot_log):
        moment = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        seen.setdefault(mac, moment)
    return seen


def one_round(folder: Path) -> list[tuple[str, float, float]]:
    with running_lab(folder, "--hosts", "3") as lab:
        found = wait_for(
            lambda: (hosts := lab.by_mac()) and len(hosts) == len(lab.hosts) and hosts,
            "every host to be discovered",
            timeout=180,
        )
        discovers = first_discover((folder / "boot.log").read_text())
        rows = []
        for host in lab.hosts:
            first_seen = datetime.fromisoformat(found[host["mac"]]["status"]["firstSeen"])
            rows.append(
                (
                    host["firmware"],
                    discovers[host["mac"]] - host["powered_on"],
                    first_seen.timestamp() - host["powered_on"],
                )
            )
        return rows


def main(rounds: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {"bios": [], "uefi": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            for firmware, to_dhcp, to_discovered in one_round(Path(folder) / "lab"):
                results[firmware].append((to_dhcp, to_discovered))
    print(f"power-on -> discovered, 3 hosts booting at once under TCG, {rounds} rounds")
    print(f"{'firmware':>8} {'samples':>7} {'to 1st DHCP (firmware)':>23} {'to discovered':>14}")
    for firmware, samples in results.items():
        dhcp = statistics.median(s[0] for s in samples)
        found = statistics.median(s[1] for s in samples)
        spread = f"{min(s[1] for s in samples):.1f}-{max(s[1] for s in samples):.1f}"
        print(f"{firmware:>8} {len(samples):>7} {dhcp:>22.1f}s {found:>13.1f}s  (range {spread}s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    main(parser.parse_args().rounds)
