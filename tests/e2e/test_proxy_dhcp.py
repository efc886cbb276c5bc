"""proxyDHCP: the boot service beside a site's own DHCP server, in one layer-2 segment.

The site's server (a plain dnsmasq on a veth port of the bridge, leasing .50-.59, no boot
options at all) hands out addresses; the boot service in proxy mode only adds boot information.
A blank BIOS host and a blank UEFI host must get their address from the site's server and still
network-boot into the boot service and be discovered.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client

from plunder.api.inventory import PlunderHost
from plunder.boot.service import BootService
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import network, processes, vms
from plunder.lab.hypervisor import Hypervisor
from plunder.lab.network import LabNetwork
from plunder.lab.plane import Plane
from tests.conftest import running
from tests.e2e.conftest import lab_boot_settings

pytestmark = pytest.mark.e2e

HOSTS = (
    vms.VMSpec(name="proxy-bios", mac="00:50:56:a5:11:20", firmware="bios"),
    vms.VMSpec(name="proxy-uefi", mac="00:50:56:a5:b5:f1", firmware="uefi"),
)


def site_dhcp_config(net: LabNetwork, run_dir: Path) -> str:
    """A site's ordinary DHCP server: addresses only, nothing about booting."""
    base = net.ipv4.network.network_address
    return "\n".join(
        [
            "port=0",
            "interface=site0",
            "bind-interfaces",
            "user=root",
            "log-facility=-",
            "log-dhcp",
            f"dhcp-leasefile={run_dir / 'site.leases'}",
            f"dhcp-range={base + 50},{base + 59},{net.ipv4.netmask},1h",
            "no-ping",
            "",
        ]
    )


@pytest.fixture
def site_dhcp(lab_network: LabNetwork, tmp_path: Path) -> Iterator[processes.Managed]:
    network.add_veth_port(
        lab_network, "site0", f"{lab_network.ipv4.network.network_address + 2}/24"
    )
    config = tmp_path / "site-dnsmasq.conf"
    config.write_text(site_dhcp_config(lab_network, tmp_path))
    server = processes.start(
        "site-dhcp",
        network.in_namespace(
            lab_network, ["dnsmasq", "--keep-in-foreground", f"--conf-file={config}"]
        ),
        tmp_path,
    )
    processes.wait_until(lambda: "DHCP, IP range" in server.log.read_text(), "site DHCP", server)
    yield server
    processes.stop(server.pid)


@pytest.fixture
async def proxy_boot(
    plane: Plane,
    kube: Client,
    namespace: str,
    lab_network: LabNetwork,
    tmp_path: Path,
    site_dhcp: processes.Managed,
) -> AsyncIterator[BootService]:
    service = BootService(
        lab_boot_settings(lab_network, "proxy", tmp_path / "boot", namespace), plane.kubeconfig
    )
    async with running(service):
        yield service


async def test_hosts_boot_through_the_proxy_beside_the_sites_dhcp_server(
    proxy_boot: BootService,
    lab_hypervisor: Hypervisor,
    lab_network: LabNetwork,
    kube: Client,
    namespace: str,
) -> None:
    vms_dir = lab_hypervisor.run_dir / "vms"
    powered_on = {}
    for spec in HOSTS:
        vms.define(lab_hypervisor.uri, spec, lab_network.bridge, vms_dir)
        vms.start(lab_hypervisor.uri, spec.name)
        powered_on[spec.mac] = time.time()

    def discovered() -> dict[str, dict[str, Any]]:
        found = {}
        for obj in kube.list(resource_for(PlunderHost), namespace=namespace):
            host = as_dict(obj)
            found[host["spec"]["bootMACAddress"]] = host
        return found

    deadline = time.monotonic() + 150
    while len(hosts := discovered()) < len(HOSTS):
        if time.monotonic() > deadline:
            logs = {
                s.name: vms.read_serial_log(vms.VMFiles.in_dir(vms_dir, s.name))[-1500:]
                for s in HOSTS
            }
            pytest.fail(f"not discovered through proxyDHCP: {sorted(hosts)}\n{logs}")
        await asyncio.sleep(0.2)
    site_range = [lab_network.ipv4.network.network_address + n for n in range(50, 60)]
    for spec in HOSTS:
        status = hosts[spec.mac]["status"]
        assert IPv4Address(status["ipAddress"]) in site_range, "address not from the site's DHCP"
        assert status["bootFirmware"] == spec.firmware
        seconds = time.time() - powered_on[spec.mac]
        print(f"\n{spec.name}: discovered through proxyDHCP within {seconds:.1f}s of power-on")
