"""The lab as a person runs it: blank VMs PXE-boot and show up as unleased hardware.

`plunderctl lab up` (on a namespace, subnet, ports and folder of the test's own) starts the
plane, the controller, the boot service with full DHCP in the namespace, a private libvirt and
three blank hosts (two legacy BIOS, one UEFI) with VMware MACs as in the original walkthrough.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.client import sync_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import network
from tests.conftest import lab_up, plunderctl

pytestmark = pytest.mark.e2e

HOSTS = resource_for(PlunderHost)
BOOT_BANNER = "iPXE initialising devices"


@dataclass(frozen=True)
class RunningLab:
    folder: Path
    kube: Client
    env: dict[str, str]
    hosts: list[dict[str, Any]]
    subnet: IPv4Network

    def serial(self, name: str) -> str:
        return (self.folder / "vms" / f"{name}.serial.log").read_text(errors="replace")


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    folder = tmp_path_factory.mktemp("lab")
    octet = 140 + secrets.randbelow(100)
    netns = f"plunder-e2e-{secrets.token_hex(3)}"
    up = lab_up(folder, "--hosts", "3", "--netns", netns, "--address", f"172.31.{octet}.1/24")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Hosts network-booting: plunder-host-1 (bios, 00:50:56:a5:11:20)" in up.stdout
        hosts = json.loads((folder / "hosts.json").read_text())
        yield RunningLab(
            folder,
            sync_client(folder / "kubeconfig"),
            {"KUBECONFIG": str(folder / "kubeconfig")},
            hosts,
            IPv4Network(f"172.31.{octet}.0/24"),
        )
    finally:
        down = plunderctl("lab", "down", "--dir", str(folder))
        assert down.returncode == 0, down.stderr
        assert "hosts" in down.stdout
        assert not folder.exists()
        assert not network.namespace_exists(netns), "lab down left the namespace"
        leftovers = subprocess.run(["pgrep", "-f", str(folder)], capture_output=True, text=True)
        assert leftovers.stdout == "", f"lab down left processes: {leftovers.stdout}"


def discovered(lab: RunningLab) -> dict[str, dict[str, Any]]:
    hosts = {}
    for obj in lab.kube.list(HOSTS, namespace="default"):
        host = as_dict(obj)
        if (host.get("status") or {}).get("state") == "discovered":
            hosts[host["spec"]["bootMACAddress"]] = host
    return hosts


def test_blank_hosts_appear_as_discovered_with_their_vendor_and_firmware(lab: RunningLab) -> None:
    hosts = wait_for(
        lambda: (found := discovered(lab)) and len(found) == 3 and found, "three discovered hosts"
    )
    for spec in lab.hosts:
        status = hosts[spec["mac"]]["status"]
        assert status["vendor"] == "VMware, Inc."
        assert status["bootFirmware"] == spec["firmware"]
        assert IPv4Address(status["ipAddress"]) in lab.subnet
        assert status["hardware"]["systemVendor"] == "QEMU"
        seconds = datetime.fromisoformat(status["firstSeen"]).timestamp() - spec["powered_on"]
        print(f"\n{spec['name']} ({spec['firmware']}): powered on -> discovered in {seconds:.1f}s")
        assert seconds < 60


def test_get_unleased_prints_the_seeds_table(lab: RunningLab) -> None:
    wait_for(lambda: len(discovered(lab)) == 3, "three discovered hosts")
    listed = plunderctl("get", "unleased", env=lab.env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.strip().splitlines()
    assert lines[0].split() == [
        "Mac",
        "Address",
        "Hardware",
        "Vendor",
        "Time",
        "Seen",
        "Time",
        "since",
    ]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(h["mac"] for h in lab.hosts)
    assert all("VMware, Inc." in line for line in lines[1:])
    described = plunderctl("describe", "host", "00:50:56:a5:c3:07", env=lab.env)
    assert "bootFirmware: uefi" in described.stdout


def test_work_set_on_a_parked_host_is_picked_up_without_a_reboot(lab: RunningLab) -> None:
    wait_for(lambda: len(discovered(lab)) == 3, "three discovered hosts")
    name, mac = lab.hosts[0]["name"], lab.hosts[0]["mac"]
    wait_for(lambda: "waiting for work" in lab.serial(name), "the host to park")
    banners = lab.serial(name).count(BOOT_BANNER)
    before = len(lab.serial(name))
    set_at = time.monotonic()
    lab.kube.patch(
        HOSTS,
        "host-" + mac.replace(":", "-"),
        {"spec": {"deploymentType": "preseed"}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )
    wait_for(
        lambda: "booting the agent" in lab.serial(name)[before:],
        "the work to be picked up",
        timeout=30,
    )
    print(f"\nwork picked up {time.monotonic() - set_at:.1f}s after it was set")
    assert "/files/agent/vmlinuz" in lab.serial(name)[before:]
    assert lab.serial(name).count(BOOT_BANNER) == banners, "the host rebooted"
    # Without its agent (a later part of the lab) the host goes on asking, still without reboot.
    lab.kube.patch(
        HOSTS,
        "host-" + mac.replace(":", "-"),
        {"spec": {"deploymentType": None}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )
    after = len(lab.serial(name))
    wait_for(
        lambda: "waiting for work" in lab.serial(name)[after:], "the host to park again", timeout=30
    )
    assert lab.serial(name).count(BOOT_BANNER) == banners


def test_lab_status_lists_the_running_hosts(lab: RunningLab) -> None:
    status = plunderctl("lab", "status", "--dir", str(lab.folder))
    assert status.returncode == 0
    rows = {line.split()[1]: line for line in status.stdout.splitlines() if "│" in line[:2]}
    for name in ("etcd", "kube-apiserver", "controller", "boot", *(h["name"] for h in lab.hosts)):
        assert "running" in rows[name], status.stdout
