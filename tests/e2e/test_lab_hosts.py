"""The lab as a person runs it: blank VMs PXE-boot and show up as unleased hardware.

`plunderctl lab up` (on a namespace, subnet, ports and folder of the test's own) starts the
plane, the controller, the boot service with full DHCP in the namespace, a private libvirt and
three blank hosts (two legacy BIOS, one UEFI) with VMware MACs as in the original walkthrough.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.client import sync_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import network, vms
from plunder.lab.lab import recorded_network
from tests.conftest import isolated_lab, plunderctl

pytestmark = pytest.mark.e2e

HOSTS = resource_for(PlunderHost)
REPO = Path(__file__).resolve().parents[2]
BOOT_BANNER = "iPXE initialising devices"


@dataclass(frozen=True)
class RunningLab:
    folder: Path
    kube: Client
    env: dict[str, str]
    hosts: list[dict[str, Any]]
    subnet: IPv4Network

    @property
    def libvirt_uri(self) -> str:
        return f"qemu:///system?socket={self.folder / 'hv' / 'libvirt' / 'run' / 'libvirt-sock'}"

    def serial(self, name: str) -> str:
        return vms.VMFiles.in_dir(self.folder / "vms", name).serial_log.read_text(errors="replace")


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    with isolated_lab(tmp_path_factory.mktemp("lab"), "--hosts", "3") as running:
        up = running.up.stdout
        assert "Hosts network-booting: plunder-host-1 (bios, 00:50:56:a5:11:20)" in up
        yield RunningLab(
            running.folder,
            sync_client(running.kubeconfig),
            {"KUBECONFIG": str(running.kubeconfig)},
            running.hosts(),
            running.subnet,
        )
    assert running.down is not None and "hosts" in running.down.stdout
    assert not running.folder.exists()


def hosts_by_mac(lab: RunningLab, state: str | None = None) -> dict[str, dict[str, Any]]:
    hosts = {}
    for obj in lab.kube.list(HOSTS, namespace="default"):
        host = as_dict(obj)
        if state is None or (host.get("status") or {}).get("state") == state:
            hosts[host["spec"]["bootMACAddress"]] = host
    return hosts


def all_available(lab: RunningLab) -> dict[str, dict[str, Any]]:
    return wait_for(
        lambda: (found := hosts_by_mac(lab, "available")) and len(found) == 3 and found,
        "three inspected, available hosts",
    )


def test_blank_hosts_are_discovered_then_inspected_by_the_agent(lab: RunningLab) -> None:
    hosts = all_available(lab)
    for spec in lab.hosts:
        status = hosts[spec["mac"]]["status"]
        assert status["vendor"] == "VMware, Inc."
        assert status["bootFirmware"] == spec["firmware"]
        assert IPv4Address(status["ipAddress"]) in lab.subnet
        hardware = status["hardware"]
        # what inspection found is the VM as libvirt defines it
        assert hardware["systemVendor"] == "QEMU" and hardware["cpu"]["count"] == spec["cpus"]
        assert spec["memory_mib"] * 0.8 < hardware["memoryMiB"] <= spec["memory_mib"]
        assert {"name": "/dev/vda", "sizeBytes": spec["disk_gib"] << 30} in [
            {key: disk[key] for key in ("name", "sizeBytes")} for disk in hardware["disks"]
        ]
        assert spec["mac"] in [nic["mac"] for nic in hardware["nics"]]
        powered_on = spec["powered_on"]
        seen = datetime.fromisoformat(status["firstSeen"]).timestamp() - powered_on
        inspected = datetime.fromisoformat(status["phases"][0]["finished"]).timestamp()
        print(
            f"\n{spec['name']} ({spec['firmware']}): powered on -> discovered {seen:.1f}s, "
            f"-> inspected {inspected - powered_on:.1f}s"
        )
        assert seen < 60


def test_get_unleased_prints_the_seeds_table(lab: RunningLab) -> None:
    all_available(lab)
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
    described = plunderctl("describe", "host", "00:50:56:a5:b5:f1", env=lab.env)
    assert "bootFirmware: uefi" in described.stdout


def tiny_os_image(folder: Path) -> tuple[bytes, str]:
    """A 4 MiB disk: an MBR with one ext4 partition holding /etc (enough for the agent's seed)."""
    root = folder / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("NAME=plunder-e2e\n")
    part = folder / "part.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(part), "3M"], check=True)
    mbr = bytearray(512)
    start, sectors = 2048, (3 << 20) // 512
    mbr[446:462] = (
        bytes([0x80, 0, 0, 0, 0x83, 0, 0, 0])
        + start.to_bytes(4, "little")
        + (sectors.to_bytes(4, "little"))
    )
    mbr[510:512] = b"\x55\xaa"
    disk = bytes(mbr) + bytes(start * 512 - 512) + part.read_bytes()
    return disk, hashlib.sha256(disk).hexdigest()


@pytest.fixture(scope="module")
def tiny_image(lab: RunningLab) -> tuple[str, str]:
    """The tiny image, served by the lab: (url, sha256)."""
    disk, digest = tiny_os_image(lab.folder)
    (lab.folder / "files" / "images").mkdir(parents=True, exist_ok=True)
    (lab.folder / "files" / "images" / "tiny.raw").write_bytes(disk)
    return f"http://{lab.subnet.network_address + 1}:8080/files/images/tiny.raw", digest


def writing_finished(lab: RunningLab, mac: str) -> bool:
    phases = hosts_by_mac(lab)[mac]["status"].get("phases", [])
    return any(p["name"] == "writing" and p.get("finished") for p in phases)


def wait_for_host_event(lab: RunningLab, host_name: str, reason: str) -> None:
    """Wait for the host's Event of this reason.

    The boot service writes the host's status first and its Event after, in the same request:
    a test that has seen the state can look a moment before the Event exists.
    """
    wait_for(
        lambda: any(
            e.reason == reason and e.involvedObject.name == host_name
            for e in lab.kube.list(Event, namespace="default")
        ),
        f"the host's {reason} Event",
        timeout=30,
    )


def test_work_is_picked_up_without_a_reboot_and_a_failure_then_a_retry(
    lab: RunningLab, tiny_image: tuple[str, str]
) -> None:
    all_available(lab)
    name, mac = lab.hosts[0]["name"], lab.hosts[0]["mac"]
    host_name = "host-" + mac.replace(":", "-")
    url, digest = tiny_image

    def state() -> str | None:
        return hosts_by_mac(lab)[mac]["status"].get("state")

    banners = lab.serial(name).count(BOOT_BANNER)
    set_at = time.monotonic()
    wrong = {"url": url, "checksum": "0" * 64}
    lab.kube.patch(
        HOSTS,
        host_name,
        {"spec": {"image": wrong}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )
    wait_for(lambda: state() == "error", "the checksum mismatch", timeout=60)
    print(f"\nwork picked up and refused {time.monotonic() - set_at:.1f}s after it was set")
    host = hosts_by_mac(lab)[mac]
    assert host["status"]["errorReason"] == "ChecksumMismatch"
    assert lab.serial(name).count(BOOT_BANNER) == banners, "the host rebooted to take the work"
    wait_for_host_event(lab, host_name, "ChecksumMismatch")

    # A retry: the spec is corrected, the controller provisions again, the agent writes it.
    lab.kube.patch(
        HOSTS,
        host_name,
        {"spec": {"image": {"checksum": digest}}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )
    wait_for(lambda: writing_finished(lab, mac), "the image to be written", timeout=90)
    assert state() == "provisioning"  # until the installed OS phones home
    wait_for(
        lambda: "provisioning; booting from disk" in lab.serial(name),
        "the host to be sent to its disk",
        timeout=60,
    )


def test_a_host_reset_in_the_middle_of_the_write_fails_it_clearly_and_a_retry_works(
    lab: RunningLab, tiny_image: tuple[str, str]
) -> None:
    """Power lost while the agent writes: the next boot says so; a spec change retries."""
    name, mac = lab.hosts[2]["name"], lab.hosts[2]["mac"]
    wait_for(lambda: mac in hosts_by_mac(lab, "available"), f"{name} to be available")
    host_name = "host-" + mac.replace(":", "-")
    images = lab.folder / "files" / "images"
    checksum = (images / "debian-12.raw.gz.sha256").read_text().split()[0]
    server = f"http://{lab.subnet.network_address + 1}:8080"
    image = {"url": f"{server}/files/images/debian-12.raw.gz", "checksum": checksum}
    lab.kube.patch(
        HOSTS,
        host_name,
        {"spec": {"image": {**image, "format": "raw-gzip"}}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )
    wait_for(
        lambda: any(p["name"] == "writing" for p in hosts_by_mac(lab)[mac]["status"]["phases"]),
        "the agent to start writing",
        timeout=90,
    )
    subprocess.run(["virsh", "-c", lab.libvirt_uri, "reset", name], check=True, capture_output=True)

    def status() -> dict[str, Any]:
        return dict(hosts_by_mac(lab)[mac]["status"])

    wait_for(lambda: status().get("state") == "error", "the interrupted write to fail", timeout=60)
    assert status()["errorReason"] == "ProvisioningInterrupted"
    (condition,) = [c for c in status()["conditions"] if c["type"] == "Provisioned"]
    assert (condition["status"], condition["reason"]) == ("False", "ProvisioningInterrupted")
    wait_for_host_event(lab, host_name, "ProvisioningInterrupted")

    url, digest = tiny_image
    lab.kube.patch(
        HOSTS,
        host_name,
        {"spec": {"image": {"url": url, "checksum": digest, "format": "raw"}}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )
    wait_for(lambda: writing_finished(lab, mac), "the retried image to be written", timeout=120)
    assert status()["state"] == "provisioning"


def test_lab_status_lists_the_running_hosts(lab: RunningLab) -> None:
    status = plunderctl("lab", "status", "--dir", str(lab.folder))
    assert status.returncode == 0
    rows = {line.split()[1]: line for line in status.stdout.splitlines() if "│" in line[:2]}
    for name in ("etcd", "kube-apiserver", "controller", "boot", *(h["name"] for h in lab.hosts)):
        assert "running" in rows[name], status.stdout


def mbr_signature(disk: Path) -> bytes:
    """Bytes 510-511 of a host's raw disk."""
    with disk.open("rb") as image:
        image.seek(510)
        return image.read(2)


def attacker_in_the_lab(lab: RunningLab, mac: str, secret: str) -> dict[str, Any]:
    """Another client on the provisioning network, from an address of its own, tries it all.

    See tests/e2e/attacker.py: it asks for the victim's script, token and bootstrap data, and
    forges its progress and phone-home, while the victim provisions.
    """
    net = recorded_network(lab.folder)
    assert net is not None
    network.add_veth_port(net, "atk0", f"{lab.subnet.network_address + 250}/24")
    done = subprocess.run(
        network.in_namespace(
            net,
            [
                sys.executable,
                "-m",
                "tests.e2e.attacker",
                "--server",
                f"http://{net.ipv4_address}:8080",
                "--mac",
                mac,
                "--secret",
                secret,
            ],
        ),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nthe attacker on the lab network: {report}")
    return report


def test_an_os_is_installed_phones_home_and_is_wiped_again(lab: RunningLab) -> None:
    """The whole cycle: available → provisioned from the lab's image → deprovisioned.

    While the host provisions, an attacker on the lab network gets none of its bootstrap data.
    """
    spec = lab.hosts[1]  # a BIOS host: the image boots through extlinux
    name, mac = spec["name"], spec["mac"]
    wait_for(lambda: mac in hosts_by_mac(lab, "available"), f"{name} to be available")
    host_name = "host-" + mac.replace(":", "-")
    marker = f"PLUNDER-E2E-{secrets.token_hex(4)}"
    user_data = f"#cloud-config\nruncmd:\n  - echo {marker} > /dev/ttyS0\n"
    lab.kube.create(
        Secret(
            metadata=ObjectMeta(name="bootstrap-e2e", namespace="default"),
            stringData={"value": user_data},
        )
    )
    images = lab.folder / "files" / "images"
    checksum = (images / "debian-12.raw.lzo.sha256").read_text().split()[0]
    url = f"http://{lab.subnet.network_address + 1}:8080/files/images/debian-12.raw.lzo"
    started = time.monotonic()
    lab.kube.patch(
        HOSTS,
        host_name,
        {
            "spec": {
                "image": {"url": url, "checksum": checksum, "format": "raw-lzop"},
                "userData": {"name": "bootstrap-e2e"},
            }
        },
        namespace="default",
        patch_type=PatchType.MERGE,
    )

    def state() -> str | None:
        return hosts_by_mac(lab)[mac]["status"].get("state")

    wait_for(lambda: state() == "provisioning", "the host to be provisioning", timeout=120)
    attack = attacker_in_the_lab(lab, mac, marker)
    wait_for(lambda: state() == "provisioned", "the host to be provisioned", timeout=900)
    took = time.monotonic() - started
    assert attack["leaked"] == [], f"the attacker got the bootstrap data: {attack}"
    assert attack["tokens_in_script"] == 0 and attack["tokens_from_lookup"] == 0, attack
    tries = attack["tries"]
    assert tries.pop("iPXE script") == 200
    refused = {name: status for name, status in tries.items() if status in (403, 404, 409)}
    assert refused == tries, f"not refused: {set(tries.items()) - set(refused.items())}"
    assert lab.serial(name).count(marker) == 1, "cloud-init did not run the bootstrap data once"
    assert marker not in (lab.folder / "boot.log").read_text(), "user-data reached the log"
    phases = {p["name"]: p for p in hosts_by_mac(lab)[mac]["status"]["phases"]}
    writing = (
        datetime.fromisoformat(phases["writing"]["finished"])
        - datetime.fromisoformat(phases["writing"]["started"])
    ).total_seconds()
    print(f"\nprovisioned in {took:.0f}s (image written in {writing:.0f}s)")

    def messages() -> list[str]:
        return [
            e.message or ""
            for e in lab.kube.list(Event, namespace="default")
            if e.involvedObject.name == host_name
        ]

    done = "Host has been successfully provisioned OS in"
    wait_for(  # the phone home's Event is written just after the state it reports
        lambda: any(m.startswith(done) for m in messages()),
        "the host's provisioned Event",
        timeout=30,
    )
    assert "Plunder has begun provisioning the Operating System" in messages()
    disk = vms.VMFiles.in_dir(lab.folder / "vms", name).disk
    assert mbr_signature(disk) == b"\x55\xaa"

    # What the host printed (its agent's log, sent before its "done"), and the write's counts.
    def agent_log(*options: str) -> str:
        return plunderctl("logs", host_name, "-n", "default", *options, env=lab.env).stdout

    printed = wait_for(
        lambda: (text := agent_log()) and "status done Provisioned" in text and text,
        "the agent's log of the write",
        timeout=30,
    )
    assert "status writing Writing" in printed, printed[-3000:]
    assert marker not in printed, "user-data reached the agent's log"
    progress = hosts_by_mac(lab)[mac]["status"]["writeProgress"]
    assert progress["imageBytes"] == (images / "debian-12.raw.lzo").stat().st_size, progress

    # Release: take the image away; the controller power-cycles the host through its BMC into
    # the agent, which wipes it.
    lab.kube.patch(
        HOSTS, host_name, {"spec": {"image": None}}, namespace="default", patch_type=PatchType.MERGE
    )
    wait_for(lambda: state() == "deprovisioning", "deprovisioning", timeout=30)
    wait_for(lambda: state() == "available", "the wipe", timeout=180)
    assert mbr_signature(disk) != b"\x55\xaa", "the wiped disk would still boot"
    # The wipe was a boot of its own: its log is the last, the write's the one before.
    wait_for(lambda: "status done Wiped" in agent_log(), "the wipe's log", timeout=30)
    assert "status done Provisioned" in agent_log("--previous")
