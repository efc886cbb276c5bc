"""A host with deploymentType preseed boots the Debian installer over iPXE; it fetches its preseed.

The boot service (full DHCP, in a namespace of the test's own) serves the Debian installer's
netboot kernel and initrd, fetched from Debian's package as the lab does, to a blank BIOS VM
whose PlunderHost is in ``provisioning``. The installer configures its network by DHCP and
fetches ``/installer/v1/<mac>/preseed.cfg`` with the boot's token: the boot service records the
start of the ``writing`` phase and an ``Installing`` event. That is where the test stops: the
install itself needs a Debian mirror, which the test network does not have (the preseed's
validity is checked by debconf's own checker in the unit tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event

from plunder.api.inventory import PlunderHost
from plunder.boot.service import BootService
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import lab, vms
from plunder.lab.hypervisor import Hypervisor
from plunder.lab.network import LabNetwork
from plunder.lab.plane import Plane
from tests.conftest import running
from tests.e2e.conftest import lab_boot_settings
from tests.integration.test_installer_http import create_host

pytestmark = pytest.mark.e2e

HOSTS = resource_for(PlunderHost)
NAME = "debian-installer-e2e"
SPEC = vms.VMSpec(name=NAME, mac="52:54:00:a9:d1:01", firmware="bios", memory_mib=1024)
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl e2e"
PRESEED_TIMEOUT = 420
"""TCG: iPXE loads 49 MB, then the installer's kernel and udeb set-up run emulated."""


@pytest.fixture
async def installer_boot(
    plane: Plane, kube: Client, namespace: str, lab_network: LabNetwork, tmp_path: Path
) -> AsyncIterator[BootService]:
    files = tmp_path / "files"
    await asyncio.to_thread(lab.publish_installer, files)
    settings = lab_boot_settings(lab_network, "full", tmp_path / "boot", namespace)
    service = BootService(dataclasses.replace(settings, files_dir=files), plane.kubeconfig)
    async with running(service):
        yield service


def writing_phase(kube: Client, namespace: str) -> dict[str, Any] | None:
    status = as_dict(kube.get(HOSTS, NAME, namespace=namespace)).get("status") or {}
    return next((p for p in status.get("phases") or () if p["name"] == "writing"), None)


async def test_the_debian_installer_fetches_its_preseed_file(
    installer_boot: BootService,
    lab_hypervisor: Hypervisor,
    lab_network: LabNetwork,
    kube: Client,
    namespace: str,
) -> None:
    static = str(lab_network.ipv4.network.network_address + 50)
    create_host(
        kube,
        namespace,
        NAME,
        {
            "bootMACAddress": SPEC.mac,
            "accepted": True,
            "deploymentType": "preseed",
            "network": {"ipAddress": static, "gateway": lab_network.ipv4_address},
            "sshAuthorizedKeys": [SSH_KEY],
        },
    )
    vms_dir = lab_hypervisor.run_dir / "vms"
    files = vms.define(lab_hypervisor.uri, SPEC, lab_network.bridge, vms_dir)
    powered_on = time.monotonic()
    vms.start(lab_hypervisor.uri, SPEC.name)

    while (phase := writing_phase(kube, namespace)) is None:
        if time.monotonic() - powered_on > PRESEED_TIMEOUT:
            pytest.fail(
                "the installer never fetched its preseed file:\n"
                + vms.read_serial_log(files)[-3000:]
            )
        await asyncio.sleep(0.5)
    fetched = time.monotonic() - powered_on
    print(f"\n{NAME}: power-on to preseed fetched {fetched:.1f} s (TCG)")

    assert phase.get("finished") is None, "the install cannot finish without a mirror"
    # The boot service writes the phase first and its Event after.
    while not (
        events := [
            event.message
            for event in kube.list(Event, namespace=namespace)
            if event.involvedObject.name == NAME and event.reason == "Installing"
        ]
    ):
        assert time.monotonic() - powered_on < PRESEED_TIMEOUT, "no Installing Event"
        await asyncio.sleep(0.2)
    assert events == ["the installer fetched its preseed file; installing"]
    serial = vms.read_serial_log(files)
    assert "booting the Debian installer (preseed)" in serial, serial[-2000:]
