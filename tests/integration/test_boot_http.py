"""The boot service's HTTP side against the real API server (no VMs: requests come from here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lightkube import Client
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.boot.service import SHUTDOWN_TIMEOUT, BootService
from plunder.boot.settings import BootSettings, DhcpSettings
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import processes
from plunder.lab.plane import Plane
from tests.conftest import running

pytestmark = pytest.mark.integration

MAC = "00:50:56:a5:11:20"
HOSTS = resource_for(PlunderHost)


def boot_settings(namespace: str, tmp_path: Path) -> BootSettings:
    """HTTP on loopback, no DHCP, a files folder with a 4 KiB blob (and a secret beside it)."""
    files = tmp_path / "files"
    (files / "images").mkdir(parents=True)
    (files / "images" / "blob.bin").write_bytes(bytes(range(256)) * 16)
    (tmp_path / "secret.txt").write_text("not for hosts")
    return BootSettings(
        address=IPv4Address("127.0.0.1"),
        http_port=processes.free_port(),
        run_dir=tmp_path / "run",
        files_dir=files,
        namespace=namespace,
        last_seen_interval=3600,
        dhcp=DhcpSettings(mode="off"),
    )


@pytest.fixture
async def boot(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> AsyncIterator[BootService]:
    service = BootService(boot_settings(namespace, tmp_path), plane.kubeconfig)
    async with running(service):
        yield service


def url(boot: BootService, path: str) -> str:
    return f"{boot.settings.http_base}{path}"


async def get(boot: BootService, path: str, **kwargs: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url(boot, path), **kwargs) as resp:
        return resp.status, await resp.text()


def hosts_in(kube: Client, namespace: str) -> list[dict[str, Any]]:
    return [as_dict(obj) for obj in kube.list(HOSTS, namespace=namespace)]


async def test_an_unknown_mac_becomes_a_discovered_host(
    boot: BootService, kube: Client, namespace: str
) -> None:
    status, script = await get(
        boot,
        f"/boot.ipxe?mac={MAC.upper()}&ip=172.31.99.101&platform=efi&manufacturer=QEMU"
        "&product=Standard%20PC&serial=S-1",
    )
    assert status == 200 and "waiting for work" in script
    [host] = hosts_in(kube, namespace)
    assert host["metadata"]["name"] == "host-00-50-56-a5-11-20"
    assert host["spec"]["bootMACAddress"] == MAC
    assert host["status"]["state"] == "discovered"
    assert host["status"]["vendor"] == "VMware, Inc."
    assert host["status"]["bootFirmware"] == "uefi"
    assert host["status"]["ipAddress"] == "172.31.99.101"
    assert host["status"]["hardware"] == {
        "systemVendor": "QEMU",
        "productName": "Standard PC",
        "serialNumber": "S-1",
    }
    assert host["status"]["firstSeen"] == host["status"]["lastSeen"]


async def test_concurrent_first_requests_make_exactly_one_host(
    boot: BootService, kube: Client, namespace: str
) -> None:
    results = await asyncio.gather(*(get(boot, f"/boot.ipxe?mac={MAC}") for _ in range(50)))
    assert {status for status, _ in results} == {200}
    assert len(hosts_in(kube, namespace)) == 1


async def test_polls_do_not_write_to_the_api_each_time(boot: BootService) -> None:
    await get(boot, f"/boot.ipxe?mac={MAC}")
    writes = boot.backend.writes
    for _ in range(20):
        assert (await get(boot, f"/boot.ipxe?mac={MAC}&poll=1"))[0] == 200
    await asyncio.sleep(0.2)
    assert boot.backend.writes - writes <= 1


async def wait_for_script(boot: BootService, needle: str, timeout: float = 15) -> str:
    deadline = time.monotonic() + timeout
    while True:
        _, script = await get(boot, f"/boot.ipxe?mac={MAC}&poll=1")
        if needle in script:
            return script
        assert time.monotonic() < deadline, f"{needle!r} never appeared; last script:\n{script}"
        await asyncio.sleep(0.1)


async def test_work_set_on_a_parked_host_is_served_at_its_next_poll(
    boot: BootService, kube: Client, namespace: str
) -> None:
    await get(boot, f"/boot.ipxe?mac={MAC}")
    name = "host-00-50-56-a5-11-20"
    kube.patch(
        HOSTS,
        name,
        {"spec": {"deploymentType": "preseed"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    script = await wait_for_script(boot, "kernel ")
    assert f"{boot.settings.http_base}/files/agent/vmlinuz" in script
    kube.patch(
        HOSTS.Status,
        name,
        {"status": {"state": "provisioned"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    await wait_for_script(boot, "sanboot --no-describe --drive 0x80")


@pytest.mark.parametrize(
    "mac", ["", "zz", "00:50:56:a5:11", "00:50:56:a5:11:20:ff", "..%2F..%2Fetc", "x" * 5000]
)
async def test_invalid_macs_are_refused_and_service_goes_on(
    boot: BootService, kube: Client, namespace: str, mac: str
) -> None:
    status, text = await get(boot, f"/boot.ipxe?mac={mac}")
    assert status == 400, text
    assert (await get(boot, f"/boot.ipxe?mac={MAC}"))[0] == 200
    assert [h["spec"]["bootMACAddress"] for h in hosts_in(kube, namespace)] == [MAC]


async def test_unknown_paths_and_oversized_headers_are_refused(boot: BootService) -> None:
    assert (await get(boot, "/nothing/here"))[0] == 404
    assert (await get(boot, "/healthz", headers={"X-Big": "a" * 6000}))[0] == 400
    assert (await get(boot, "/files/../secret.txt"))[0] in (403, 404)
    assert (await get(boot, "/healthz")) == (200, "ok\n")


async def test_a_slow_client_does_not_hold_up_others(boot: BootService) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", boot.settings.http_port)
    writer.write(b"GET /boot.ipxe?mac=00:50:56:a5:11:20 HTTP/1.1\r\nHost: x\r\n")  # never ends
    await writer.drain()
    started = time.monotonic()
    results = await asyncio.gather(*(get(boot, "/healthz") for _ in range(20)))
    assert all(status == 200 for status, _ in results)
    assert time.monotonic() - started < 5
    writer.close()


async def test_a_stalled_download_does_not_hold_up_a_stop(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> None:
    """A host that stops reading mid-file (powered off, its link gone) keeps no stop waiting.

    aiohttp waits 60 s by default for requests in flight, twice over (for the request, then for
    its cancellation): a VM's download of a boot file held the boot service's stop (a restart, a
    new leader; in tests/e2e/test_power.py a fixture's teardown) for 121 s.
    """
    settings = boot_settings(namespace, tmp_path)
    with (settings.files_dir / "images" / "big.bin").open("wb") as big:
        big.truncate(256 * 1024 * 1024)  # more than any socket buffer holds
    service = BootService(settings, plane.kubeconfig)
    await service.start()
    stopped = False
    reader, writer = await asyncio.open_connection("127.0.0.1", settings.http_port)
    try:
        writer.write(b"GET /files/images/big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")  # then it reads no more
        started = time.monotonic()
        stopped = True
        await service.stop()
        took = time.monotonic() - started
    finally:
        writer.close()
        if not stopped:  # the request failed before the stop under test: stop it anyway
            await service.stop()
    # aiohttp waits twice: for the request, then for its cancellation
    assert took < 2 * SHUTDOWN_TIMEOUT + 5, f"the stop waited {took:.1f} s for the download"


async def test_files_are_served_with_ranges(boot: BootService) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            url(boot, "/files/images/blob.bin"), headers={"Range": "bytes=16-31"}
        ) as resp:
            assert resp.status == 206
            assert await resp.read() == bytes(range(16, 32))
        async with session.get(url(boot, "/files/images/blob.bin")) as resp:
            assert resp.status == 200 and len(await resp.read()) == 4096


async def test_metrics_count_what_happened(boot: BootService) -> None:
    await get(boot, f"/boot.ipxe?mac={MAC}")
    await get(boot, "/boot.ipxe?mac=nope")
    _, text = await get(boot, "/metrics")
    assert 'plunder_boot_scripts_total{action="park"} 1.0' in text
    assert 'plunder_boot_rejected_total{reason="invalid-mac"} 1.0' in text
    assert "plunder_boot_discovered_total 1.0" in text
    assert "plunder_boot_cached_hosts 1.0" in text


@pytest.mark.parametrize("mac", ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"])
async def test_a_mac_no_nic_can_have_is_refused_and_nothing_is_written(
    boot: BootService, mac: str
) -> None:
    status, text = await get(boot, f"/boot.ipxe?mac={mac}")
    assert status == 400 and "unicast MAC address of the host's boot NIC" in text
    _, metrics = await get(boot, "/metrics")
    assert 'plunder_boot_rejected_total{reason="not-a-nic"} 1.0' in metrics
    assert "plunder_boot_discovered_total 0.0" in metrics
    assert "plunder_boot_cached_hosts 0.0" in metrics


async def test_a_mac_claimed_from_another_hosts_lease_is_refused(
    boot: BootService, tmp_path: Path
) -> None:
    leases = tmp_path / "leases"
    leases.write_text("1764000000 00:50:56:a5:b5:f1 127.0.0.1 * *\n")
    boot.leases.path = leases  # as dnsmasq's lease file in full DHCP mode
    status, text = await get(boot, f"/boot.ipxe?mac={MAC}")
    assert status == 403 and "leased to 00:50:56:a5:b5:f1" in text
    assert (await get(boot, "/boot.ipxe?mac=00:50:56:a5:b5:f1"))[0] == 200
