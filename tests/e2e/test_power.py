"""The power drivers against emulated BMCs that drive a real libvirt VM.

One blank BIOS host (a libvirt TCG domain on the test's own bridge) gets two BMCs at once: a
Redfish one (sushy-tools, over https with a certificate of the test's CA) and an IPMI one
(virtualbmc). The boot service runs on the bridge with full DHCP, so a one-time PXE boot is seen
where it matters: the host asks the boot service for its script (``lastSeen``), and the NIC ROM
starts iPXE again. A power-off must really stop the domain (``virsh domstate``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from plunder.api.inventory import PlunderHost
from plunder.boot import macs
from plunder.boot.service import BootService
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import bmc, vms
from plunder.lab.hypervisor import Hypervisor
from plunder.lab.lab import publish_agent
from plunder.lab.network import LabNetwork
from plunder.lab.pki import create_plane_pki
from plunder.lab.plane import Plane
from plunder.power import base, registry
from tests.conftest import plunderctl, running
from tests.e2e.conftest import lab_boot_settings
from tests.integration.test_controller import controller  # noqa: F401 - a fixture

pytestmark = pytest.mark.e2e

HOST = vms.VMSpec(name="power-host", mac="00:50:56:a5:70:01", firmware="bios")
PASSWORD = "s3cret-power-e2e"  # noqa: S105 - a test password; the test checks it never leaks


def bmc_settings(address: str, tls: bmc.TLSFiles | None = None) -> base.BMCSettings:
    return base.BMCSettings(
        address=base.parse_address(address),
        credentials=base.Credentials(bmc.USERNAME, PASSWORD),
        ca_file=str(tls.ca) if tls else None,
        timeout=10,
    )


@pytest.fixture
async def boot(
    plane: Plane, kube: Client, namespace: str, lab_network: LabNetwork, tmp_path: Path
) -> AsyncIterator[BootService]:
    settings = lab_boot_settings(lab_network, "full", tmp_path / "boot", namespace)
    files = tmp_path / "files"
    publish_agent(files)  # built once, cached
    settings = replace(settings, last_seen_interval=0.5, files_dir=files)
    service = BootService(settings, plane.kubeconfig)
    async with running(service):
        yield service


@pytest.fixture
def bmcs(lab_hypervisor: Hypervisor, lab_network: LabNetwork, tmp_path: Path) -> Iterator[Any]:
    """The host, defined but off, with a Redfish BMC (https) and an IPMI BMC."""
    vms.define(lab_hypervisor.uri, HOST, lab_network.bridge, lab_hypervisor.run_dir / "vms")
    pki = create_plane_pki(tmp_path / "pki")
    tls = bmc.TLSFiles(pki.serving_cert, pki.serving_key, pki.ca_cert)
    run_dir = tmp_path / "bmc"
    redfish = bmc.start_redfish(run_dir, lab_hypervisor.uri, HOST.name, PASSWORD, tls)
    bmc.start_vbmcd(run_dir)
    ipmi = bmc.start_ipmi(run_dir, lab_hypervisor.uri, HOST.name, PASSWORD)
    bmc.record_bmcs(run_dir, [redfish, ipmi])
    try:
        yield {"redfish": bmc_settings(redfish.address, tls), "ipmi": bmc_settings(ipmi.address)}
    finally:
        assert bmc.stop_bmcs(run_dir)
        logs = "".join(path.read_text() for path in run_dir.glob("*.log"))
        assert PASSWORD not in logs, "an emulator logged the password"


async def wait_for(predicate: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := await asyncio.to_thread(predicate)):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.3)
    return result


def last_seen(kube: Client, namespace: str) -> str | None:
    """When the boot service last heard from the host (None: never)."""
    for obj in kube.list(resource_for(PlunderHost), namespace=namespace):
        host = as_dict(obj)
        if host["spec"]["bootMACAddress"] == HOST.mac:
            seen: str | None = (host.get("status") or {}).get("lastSeen")
            return seen
    return None


def ipxe_starts(hypervisor: Hypervisor) -> int:
    """How often the host's NIC ROM started iPXE (once per network boot)."""
    files = vms.VMFiles.in_dir(hypervisor.run_dir / "vms", HOST.name)
    return vms.read_serial_log(files).count("iPXE initialising devices")


async def call(settings: base.BMCSettings, method: str, *args: Any) -> Any:
    """One driver call as the controller makes it: a new driver (and session) each time."""
    driver = registry.driver_for(settings)
    try:
        return await asyncio.to_thread(getattr(driver, method), *args)
    finally:
        driver.close()


@pytest.mark.parametrize("protocol", ["redfish", "ipmi"])
async def test_power_off_stops_the_vm_and_a_one_time_pxe_boot_network_boots_it(
    protocol: str,
    boot: BootService,
    bmcs: dict[str, base.BMCSettings],
    lab_hypervisor: Hypervisor,
    kube: Client,
    namespace: str,
) -> None:
    settings = bmcs[protocol]
    assert registry.driver_for(settings).name == protocol
    uri = lab_hypervisor.uri
    assert await call(settings, "get_power_state") == "off"
    assert vms.state(uri, HOST.name) == "shut off"

    started = time.monotonic()
    await call(settings, "set_one_time_boot", "pxe")
    await call(settings, "set_power_state", "on")
    first = await wait_for(
        lambda: last_seen(kube, namespace), "the boot service to see the host network-boot"
    )
    took = time.monotonic() - started
    print(f"\n{protocol}: power on + PXE -> seen by the boot service {took:.1f}s")
    assert vms.state(uri, HOST.name) == "running"
    assert await call(settings, "get_power_state") == "on"

    # A power cycle with a one-time PXE boot: the host network-boots again.
    started = time.monotonic()
    boots = ipxe_starts(lab_hypervisor)
    await call(settings, "set_one_time_boot", "pxe")
    await call(settings, "reboot")
    await wait_for(lambda: ipxe_starts(lab_hypervisor) > boots, "iPXE to start again")
    await wait_for(
        lambda: (last_seen(kube, namespace) or "") > first, "the boot service to see it again"
    )
    print(f"{protocol}: power cycle -> network boot seen {time.monotonic() - started:.1f}s")

    await call(settings, "set_power_state", "off")
    await wait_for(lambda: vms.state(uri, HOST.name) == "shut off", "the VM to stop", 30)
    assert await call(settings, "get_power_state") == "off"

    # The same BMC with a wrong password: refused, with a reason a person can act on.
    wrong = replace(settings, credentials=base.Credentials(bmc.USERNAME, "not-the-password"))
    with pytest.raises(base.BMCAuthError) as refused:
        await call(wrong, "get_power_state")
    assert refused.value.reason == "BMCAuthFailed"
    assert "not-the-password" not in str(refused.value)
    print(f"{protocol}, wrong password: {refused.value}")


def host_status(kube: Client, namespace: str) -> dict[str, Any]:
    host = as_dict(
        kube.get(resource_for(PlunderHost), macs.host_name(HOST.mac), namespace=namespace)
    )
    status: dict[str, Any] = host.get("status") or {}
    return status


def bmc_reachable(status: dict[str, Any]) -> bool:
    return any(
        c["type"] == "BMCReachable" and c["status"] == "True" for c in status.get("conditions", [])
    )


async def test_a_host_created_with_only_its_bmc_is_powered_on_inspected_and_powered_by_plunderctl(
    controller: Any,  # noqa: F811 - the fixture
    boot: BootService,
    bmcs: dict[str, base.BMCSettings],
    lab_hypervisor: Hypervisor,
    kube: Client,
    namespace: str,
    plane: Plane,
    tmp_path: Path,
) -> None:
    redfish = bmcs["redfish"]
    assert redfish.address is not None and redfish.ca_file is not None
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bmc", namespace=namespace),
            stringData={
                "username": bmc.USERNAME,
                "password": PASSWORD,
                "ca.crt": Path(redfish.ca_file).read_text(),
            },
        )
    )
    started = time.monotonic()
    kube.create(
        resource_for(PlunderHost)(
            metadata=ObjectMeta(name=macs.host_name(HOST.mac)),
            spec={
                "bootMACAddress": HOST.mac,
                "accepted": True,
                "bmc": {"address": str(redfish.address), "credentialsName": "bmc"},
            },
        ),
        namespace=namespace,
    )
    status = await wait_for(
        lambda: (s := host_status(kube, namespace)).get("state") == "available" and s,
        "the controller to power the host on into the agent, and the agent to inspect it",
        timeout=240,
    )
    print(f"\ncreated with a BMC only -> inspected {time.monotonic() - started:.1f}s")
    assert vms.state(lab_hypervisor.uri, HOST.name) == "running"
    assert status["hardware"]["systemVendor"] == "QEMU"
    await wait_for(
        lambda: (s := host_status(kube, namespace)).get("poweredOn") is True and bmc_reachable(s),
        "poweredOn and BMCReachable",
    )

    env = {"KUBECONFIG": str(plane.kubeconfig)}
    where = ("--namespace", namespace, "--timeout", "60")  # other tests' hosts share the MAC
    started = time.monotonic()
    off = await asyncio.to_thread(plunderctl, "power", "off", HOST.mac, *where, env=env)
    assert off.returncode == 0, off.stdout + off.stderr
    assert "power off" in off.stdout
    assert vms.state(lab_hypervisor.uri, HOST.name) == "shut off"
    print(f"plunderctl power off: {time.monotonic() - started:.1f}s")
    started = time.monotonic()

    on = await asyncio.to_thread(plunderctl, "power", "on", HOST.mac, *where, env=env)
    assert on.returncode == 0, on.stdout + on.stderr
    assert vms.state(lab_hypervisor.uri, HOST.name) == "running"
    print(f"plunderctl power on: {time.monotonic() - started:.1f}s")
    started = time.monotonic()

    boots = ipxe_starts(lab_hypervisor)
    cycle = await asyncio.to_thread(plunderctl, "power", "cycle", HOST.mac, *where, env=env)
    assert cycle.returncode == 0, cycle.stdout + cycle.stderr
    await wait_for(lambda: ipxe_starts(lab_hypervisor) > boots, "the power cycle's network boot")
    print(f"plunderctl power cycle -> iPXE again: {time.monotonic() - started:.1f}s")
    shown = await asyncio.to_thread(
        plunderctl, "power", "status", HOST.mac, "--namespace", namespace, env=env
    )
    assert "power on" in shown.stdout and "BMCReachable=True" in shown.stdout, shown.stdout
    assert PASSWORD not in (tmp_path / "controller.log").read_text()
