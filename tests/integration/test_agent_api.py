"""The agent's API on the boot service, called as the agent calls it, against the real API server.

The calls come from the test (the agent itself boots in the end-to-end tests); what is checked
is what the boot service answers and what it records on the PlunderHost.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta, Status
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.boot.service import BootService
from plunder.boot.settings import BootSettings, DhcpSettings
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import processes
from plunder.lab.plane import Plane
from tests.conftest import running

pytestmark = pytest.mark.integration

MAC = "00:50:56:a5:11:20"
NAME = "host-00-50-56-a5-11-20"
HOSTS = resource_for(PlunderHost)
USER_DATA = "#cloud-config\nruncmd: [echo bootstrap-secret-7f3a]\n"
HARDWARE = {
    "systemVendor": "QEMU",
    "productName": "Standard PC",
    "cpu": {"count": 1, "model": "QEMU"},
    "memoryMiB": 512,
    "disks": [{"name": "/dev/vda", "sizeBytes": 2147483648}],
    "nics": [{"name": "eth0", "mac": MAC, "ip": "172.31.99.120"}],
}


@pytest.fixture
async def boot(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> AsyncIterator[BootService]:
    files = tmp_path / "files"
    (files / "agent").mkdir(parents=True)
    (files / "agent" / "vmlinuz").write_bytes(b"kernel")
    (files / "agent" / "initrd.img").write_bytes(b"initrd")
    service = BootService(
        BootSettings(
            address=IPv4Address("127.0.0.1"),
            http_port=processes.free_port(),
            run_dir=tmp_path / "run",
            files_dir=files,
            namespace=namespace,
            agent_silence_seconds=1.0,
            dhcp=DhcpSettings(mode="off"),
        ),
        plane.kubeconfig,
    )
    async with running(service):
        yield service


async def call(
    boot: BootService, method: str, path: str, token: str | None = None, **kwargs: Any
) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, f"{boot.settings.http_base}{path}", headers=headers, **kwargs
        ) as response,
    ):
        return response.status, await response.text()


async def boot_agent(boot: BootService) -> str:
    """Boot the agent as iPXE and the agent do: the script, then the lookup; return the token."""
    status, script = await call(boot, "GET", f"/boot.ipxe?mac={MAC}&platform=pcbios")
    assert status == 200 and "booting the agent" in script
    assert "plunder.token" not in script, "a script must carry no token"
    return await lookup(boot)


async def lookup(boot: BootService, mac: str = MAC) -> str:
    """The agent's first call: the token of its boot."""
    status, text = await call(boot, "POST", f"/agent/v1/{mac}/lookup")
    assert status == 200, text
    match = re.fullmatch(r"token=([0-9a-f]{64})\n", text)
    assert match is not None, text
    return match.group(1)


async def host_of(kube: Client, namespace: str) -> dict[str, Any]:
    return as_dict(kube.get(HOSTS, NAME, namespace=namespace))


async def wait_state(kube: Client, namespace: str, state: str) -> dict[str, Any]:
    for _ in range(100):
        host = await host_of(kube, namespace)
        if (host.get("status") or {}).get("state") == state:
            return host
        await asyncio.sleep(0.05)
    raise AssertionError(f"host never reached {state}: {host.get('status')}")


async def test_inspection_and_the_token_rules(
    boot: BootService, kube: Client, namespace: str
) -> None:
    token = await boot_agent(boot)
    host = await host_of(kube, namespace)
    assert host["status"]["state"] == "inspecting" and host["status"]["agentBootID"]
    await asyncio.sleep(0.2)  # the watch brings the new boot id into the cache
    path = f"/agent/v1/{MAC}/inspection"
    assert (await call(boot, "POST", path, json=HARDWARE))[0] == 403
    assert (await call(boot, "POST", path, "0" * 64, json=HARDWARE))[0] == 403
    other = "/agent/v1/00:50:56:a5:b5:f1/inspection"
    assert (await call(boot, "POST", other, token, json=HARDWARE))[0] == 403
    assert (await call(boot, "POST", path, token, data=b"{not json"))[0] == 400
    assert (await call(boot, "POST", path, token, json=HARDWARE))[0] == 204
    host = await wait_state(kube, namespace, "available")
    assert host["status"]["hardware"]["disks"][0]["sizeBytes"] == 2147483648
    assert [p["name"] for p in host["status"]["phases"]] == ["inspecting"]
    # Parked: asked to wait, and for how long (a fleet of one polls every 2 s).
    assert await call(boot, "GET", f"/agent/v1/{MAC}/work", token) == (
        200,
        "action=wait\nretry=2\n",
    )

    # A token in use is never issued again, and a PXE request does not touch it.
    assert (await call(boot, "GET", f"/boot.ipxe?mac={MAC}"))[0] == 200
    assert (await call(boot, "POST", f"/agent/v1/{MAC}/lookup"))[0] == 409
    assert (await call(boot, "GET", f"/agent/v1/{MAC}/work", token))[0] == 200
    # Once its holder is silent (the host rebooted by itself), a new boot gets a new token,
    # and the old one is worthless.
    await asyncio.sleep(1.2)
    fresh = await lookup(boot)
    await asyncio.sleep(0.2)
    assert (await call(boot, "GET", f"/agent/v1/{MAC}/work", token))[0] == 403
    assert (await call(boot, "GET", f"/agent/v1/{MAC}/work", fresh))[0] == 200


async def test_provisioning_data_failure_and_phone_home(
    boot: BootService, kube: Client, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = await boot_agent(boot)
    await asyncio.sleep(0.2)
    await call(boot, "POST", f"/agent/v1/{MAC}/inspection", token, json=HARDWARE)
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bootstrap", namespace=namespace),
            data={"value": base64.b64encode(USER_DATA.encode()).decode()},
        )
    )
    image = {"url": "http://127.0.0.1/files/os.raw.gz", "checksum": "c" * 64, "format": "raw-gzip"}
    kube.patch(
        HOSTS,
        NAME,
        {
            "spec": {
                "accepted": True,
                "image": image,
                "userData": {"name": "bootstrap"},
                "network": {"ipAddress": "172.31.99.20"},
            }
        },
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    # the controller's move, made here by hand (the operator's tests cover it)
    kube.patch(
        HOSTS.Status,
        NAME,
        {"status": {"state": "provisioning"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    await asyncio.sleep(0.3)

    status, work = await call(boot, "GET", f"/agent/v1/{MAC}/work", token)
    assert status == 200
    assert "action=provision\n" in work and "image_format=raw-gzip\n" in work
    assert f"image_checksum={'c' * 64}\n" in work and "root_device=/dev/vda\n" in work

    seed = f"/agent/v1/{MAC}/cloud-init"
    assert (await call(boot, "GET", f"{seed}/user-data"))[0] == 403
    assert await call(boot, "GET", f"{seed}/user-data", token) == (200, USER_DATA)
    _, meta = await call(boot, "GET", f"{seed}/meta-data", token)
    assert "instance-id:" in meta and "local-hostname: host-00-50-56-a5-11-20" in meta
    _, network = await call(boot, "GET", f"{seed}/network-config", token)
    assert "172.31.99.20/24" in network
    _, vendor = await call(boot, "GET", f"{seed}/vendor-data", token)
    assert "phone_home:" in vendor and "/phone-home?token=" in vendor
    assert "bootstrap-secret-7f3a" not in caplog.text, "user-data reached the log"

    report = "phase=failed\nreason=ChecksumMismatch\nmessage=sha256 of the image is dddd\n"
    assert (await call(boot, "POST", f"/agent/v1/{MAC}/status", token, data=report))[0] == 204
    host = await wait_state(kube, namespace, "error")
    assert host["status"]["errorReason"] == "ChecksumMismatch"

    kube.patch(
        HOSTS.Status,
        NAME,
        {"status": {"state": "provisioning"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    await asyncio.sleep(0.3)
    phone = vendor.split("url: ")[1].split()[0].replace(boot.settings.http_base, "")
    assert (await call(boot, "POST", phone.replace("token=", "token=0")))[0] == 403
    await asyncio.sleep(0.3)
    # Before the write has ended there is nothing to phone home about.
    assert (await call(boot, "POST", phone, data={"instance_id": "x"}))[0] == 409
    status_path = f"/agent/v1/{MAC}/status"
    assert (await call(boot, "POST", status_path, token, data="phase=writing\n"))[0] == 204
    await asyncio.sleep(0.3)
    assert (await call(boot, "POST", status_path, token, data="phase=done\n"))[0] == 204
    await asyncio.sleep(0.3)
    # The write has ended: the bootstrap data is no longer served, to anyone.
    assert (await call(boot, "GET", f"{seed}/user-data", token))[0] == 403
    assert (await call(boot, "GET", f"{seed}/vendor-data", token))[0] == 403
    assert (await call(boot, "POST", phone, data={"instance_id": "x"}))[0] == 204
    await wait_state(kube, namespace, "provisioned")
    reasons = {(e.reason, e.message) for e in kube.list(Event, namespace=namespace)}
    assert any(reason == "ChecksumMismatch" for reason, _ in reasons)
    assert any(
        reason == "PlunderProvision" and "successfully provisioned OS in" in message
        for reason, message in reasons
    )


async def test_api_trouble_is_answered_ask_again_not_as_a_malformed_request(
    boot: BootService, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that lost a race is a 409, an API server out of reach a 503: both ask again.

    The chaos run (bench/chaos.py) saw both answered 500 and logged "refused a malformed
    request", which sends an operator looking for a broken client.
    """
    token = await boot_agent(boot)
    await asyncio.sleep(0.2)
    path = f"/agent/v1/{MAC}/inspection"
    for trouble, answer in (
        (ApiError(status=Status(code=409, message="the object has been modified")), 409),
        (httpx2.ConnectError("All connection attempts failed"), 503),
        (ApiError(status=Status(code=503, message="not ready")), 503),
    ):

        async def failing(*_: Any, error: Exception = trouble) -> None:
            raise error

        monkeypatch.setattr(boot.backend, "patch_host_status", failing)
        status, text = await call(boot, "POST", path, token, json=HARDWARE)
        assert status == answer and "ask again" in text, (status, text)
    assert "malformed" not in caplog.text
