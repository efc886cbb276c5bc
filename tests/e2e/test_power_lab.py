"""`plunderctl lab up` hosts have BMCs, and `plunderctl power` drives them through both protocols.

Two hosts (the first gets a Redfish BMC over https, the second an IPMI BMC): each is switched
off, on, and power-cycled with plunderctl, and libvirt must agree each time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client

from plunder.api.inventory import PlunderHost
from plunder.boot import macs
from plunder.k8s.client import sync_client
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import hypervisor, vms
from tests.conftest import isolated_lab, plunderctl

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with isolated_lab(tmp_path_factory.mktemp("lab"), "--hosts", "2") as running:
        yield running.folder
    assert running.down is not None and "bmcs" in running.down.stdout


def wait_for(predicate: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return result


def powered_on(kube: Client, mac: str) -> bool | None:
    body = as_dict(kube.get(resource_for(PlunderHost), macs.host_name(mac), namespace="default"))
    return (body.get("status") or {}).get("poweredOn")  # type: ignore[no-any-return]


def network_boots(serial: vms.VMFiles) -> int:
    """Network boots seen on the console.

    iPXE's banner (BIOS; OVMF's iPXE prints none to the serial console), or the agent it booted
    reporting its address (both firmwares).
    """
    log = vms.read_serial_log(serial)
    return log.count("iPXE initialising devices") + log.count("plunder-agent: address ")


@pytest.mark.parametrize(("index", "scheme"), [(0, "redfish://"), (1, "ipmi://")])
def test_lab_hosts_have_bmcs_and_plunderctl_power_drives_them(
    lab: Path, index: int, scheme: str
) -> None:
    host = json.loads((lab / "hosts.json").read_text())[index]
    name, mac = host["name"], host["mac"]
    kube = sync_client(lab / "kubeconfig")
    env = {"KUBECONFIG": str(lab / "kubeconfig")}
    uri = hypervisor.uri_for(lab / "hv")
    status = plunderctl("lab", "status", "--dir", str(lab))
    assert f"bmc {name} ({scheme}127.0.0.1:" in status.stdout, status.stdout
    body = as_dict(kube.get(resource_for(PlunderHost), macs.host_name(mac), namespace="default"))
    assert body["spec"]["bmc"]["address"].startswith(scheme)
    wait_for(lambda: powered_on(kube, mac) is True, f"{name}'s BMC to report it on")

    started = time.monotonic()
    off = plunderctl("power", "off", mac, "--timeout", "60", env=env)
    assert off.returncode == 0, off.stdout + off.stderr
    assert vms.state(uri, name) == "shut off"
    on = plunderctl("power", "on", mac, "--timeout", "60", env=env)
    assert on.returncode == 0, on.stdout + on.stderr
    assert vms.state(uri, name) == "running"
    serial = vms.VMFiles.in_dir(lab / "vms", name)
    boots = network_boots(serial)
    cycle = plunderctl("power", "cycle", mac, env=env)
    assert cycle.returncode == 0, cycle.stdout + cycle.stderr
    wait_for(
        lambda: network_boots(serial) > boots,
        f"{name} to network-boot after the cycle",
        timeout=180,  # a UEFI host's firmware takes longer, and TCG shares two cores
    )
    print(
        f"\n{scheme} {name}: plunderctl power off, on, cycle in {time.monotonic() - started:.1f}s"
    )
