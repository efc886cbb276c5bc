"""The installer's side of the boot service, against the real API server.

A host with ``deploymentType: preseed`` in ``provisioning`` gets an iPXE script that boots the
Debian installer with its preseed URL and token; the preseed file is served only with that
token, only for that deployment type and state. Then the preseed's own ``late_command`` is run
here, with GNU wget as in the installer, against the service: it must write the NoCloud seed
and report the install done, after which the host's next boot goes to its disk.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.boot.installer import seed
from plunder.boot.service import BootService
from plunder.boot.settings import BootSettings, DhcpSettings
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import processes
from plunder.lab.plane import Plane
from tests.conftest import running
from tests.integration.test_agent_api import call

pytestmark = pytest.mark.integration

MAC = "00:50:56:a5:c3:07"
NAME = "installer-host"
HOSTS = resource_for(PlunderHost)
USER_DATA = "#cloud-config\nruncmd: [echo bootstrap-secret-91c2]\n"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl it"


@pytest.fixture
async def boot(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> AsyncIterator[BootService]:
    (tmp_path / "files").mkdir()
    service = BootService(
        BootSettings(
            address=IPv4Address("127.0.0.1"),
            http_port=processes.free_port(),
            run_dir=tmp_path / "run",
            files_dir=tmp_path / "files",
            namespace=namespace,
            dhcp=DhcpSettings(mode="off"),
        ),
        plane.kubeconfig,
    )
    async with running(service):
        yield service


def create_host(kube: Client, namespace: str, name: str, spec: dict[str, Any]) -> None:
    """Create an accepted PlunderHost and move it to provisioning, as the controller would."""
    kube.create(
        HOSTS.from_dict(
            {
                "apiVersion": PlunderHost.info.api_version,
                "kind": "PlunderHost",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"accepted": True, **spec},
            }
        )
    )
    set_state(kube, namespace, "provisioning", name)


def set_state(kube: Client, namespace: str, state: str, name: str = NAME) -> None:
    """Set the host's state by hand (the operator's tests cover the controller's moves)."""
    kube.patch(
        HOSTS.Status,
        name,
        {"status": {"state": state}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


def status_of(kube: Client, namespace: str) -> dict[str, Any]:
    return as_dict(kube.get(HOSTS, NAME, namespace=namespace)).get("status") or {}


async def wait_for(what: str, check: Callable[[], Any]) -> Any:
    for _ in range(200):
        if result := check():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def boot_script(boot: BootService) -> str:
    status, script = await call(boot, "GET", f"/boot.ipxe?mac={MAC}&platform=pcbios")
    assert status == 200
    return script


def cached(boot: BootService) -> PlunderHost | None:
    return boot.backend.by_mac(MAC)


async def test_preseed_is_served_with_the_token_and_its_late_command_seeds_the_host(
    boot: BootService,
    kube: Client,
    namespace: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bootstrap", namespace=namespace),
            data={"value": base64.b64encode(USER_DATA.encode()).decode()},
        )
    )
    create_host(
        kube,
        namespace,
        NAME,
        {
            "bootMACAddress": MAC,
            "deploymentType": "preseed",
            "userData": {"name": "bootstrap"},
            "network": {"ipAddress": "172.31.99.30", "gateway": "172.31.99.1"},
            "sshAuthorizedKeys": [KEY],
        },
    )
    await wait_for(
        "provisioning in the cache",
        lambda: (host := cached(boot)) and host.status and host.status.state,
    )

    script = await boot_script(boot)
    assert "booting the Debian installer (preseed)" in script
    base = boot.settings.http_base
    assert f"kernel {base}/files/installer/debian/linux initrd=initrd.gz auto=true" in script
    assert f"initrd {base}/files/installer/debian/initrd.gz" in script
    url = rf"url={re.escape(base)}/installer/v1/{MAC}/preseed\.cfg\?token=(\w+) "
    match = re.search(url, script)
    assert match is not None, script
    token = match.group(1)
    assert f" plunder.token={token} " in script and "BOOTIF=01-00-50-56-a5-c3-07" in script
    boot_id = await wait_for("the boot id", lambda: status_of(kube, namespace).get("agentBootID"))
    await wait_for(
        "the boot id in the cache",
        lambda: (host := cached(boot)) and host.status and host.status.agent_boot_id == boot_id,
    )

    # Another client asking for the same host's script gets no token: the install's token was
    # issued, once, to the first request (the installer cannot make a lookup of its own).
    again = await boot_script(boot)
    assert "asking again" in again and "token=" not in again, again
    assert (await call(boot, "POST", f"/agent/v1/{MAC}/lookup"))[0] == 409

    preseed_path = f"/installer/v1/{MAC}/preseed.cfg"
    assert (await call(boot, "GET", preseed_path))[0] == 403
    assert (await call(boot, "GET", f"{preseed_path}?token={'0' * 64}"))[0] == 403
    other = f"/installer/v1/00:50:56:a5:11:20/preseed.cfg?token={token}"
    assert (await call(boot, "GET", other))[0] == 403
    kickstart = await call(boot, "GET", f"/installer/v1/{MAC}/kickstart.cfg?token={token}")
    assert kickstart[0] == 404, "a preseed host gets no kickstart file"
    status, text = await call(boot, "GET", f"{preseed_path}?token={token}")
    assert status == 200
    assert "d-i netcfg/get_hostname string installer-host" in text
    assert "d-i netcfg/get_ipaddress string 172.31.99.30" in text and token not in text

    # Serving it started the writing phase (the installer is now installing) and said so.
    phases = await wait_for(
        "the writing phase", lambda: status_of(kube, namespace).get("phases") or None
    )
    assert [p["name"] for p in phases] == ["writing"] and "finished" not in phases[0]
    events = [e for e in kube.list(Event, namespace=namespace) if e.reason == "Installing"]
    assert [e.message for e in events] == ["the installer fetched its preseed file; installing"]

    # The late command, as d-i runs it: /target and /proc/cmdline are the test's own.
    late = next(
        line.removeprefix("d-i preseed/late_command string ")
        for line in text.splitlines()
        if line.startswith("d-i preseed/late_command string ")
    )
    target = tmp_path / "target"
    (target / "etc" / "network").mkdir(parents=True)
    (target / "etc" / "network" / "interfaces").write_text("auto ens3\niface ens3 inet dhcp\n")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"auto=true priority=critical {seed.TOKEN_PARAMETER}={token} quiet\n")
    local = late.replace("/target", str(target)).replace("/proc/cmdline", str(cmdline))
    await wait_for(
        "the writing phase in the cache",
        lambda: (host := cached(boot)) and host.status and host.status.phases,
    )
    result = await asyncio.to_thread(
        subprocess.run, ["sh", "-c", local], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert USER_DATA not in result.stdout + result.stderr
    nocloud = target / "var" / "lib" / "cloud" / "seed" / "nocloud"
    assert (nocloud / "user-data").read_text() == USER_DATA
    assert (nocloud / "user-data").stat().st_mode & 0o777 == 0o600
    assert (nocloud / "vendor-data").stat().st_mode & 0o777 == 0o600
    assert "phone_home" in (nocloud / "vendor-data").read_text()
    assert "local-hostname: installer-host" in (nocloud / "meta-data").read_text()
    assert "172.31.99.30/24" in (nocloud / "network-config").read_text()
    assert (target / "root" / ".ssh" / "authorized_keys").read_text() == f"{KEY}\n"
    interfaces = (target / "etc" / "network" / "interfaces").read_text()
    assert "ens3" not in interfaces and "source /etc/network/interfaces.d/*" in interfaces

    # "done" finished the writing phase: the next network boot goes to the disk.
    await wait_for(
        "the writing phase finished",
        lambda: all("finished" in p for p in status_of(kube, namespace).get("phases") or [{}]),
    )
    await wait_for(
        "the finished phase in the cache",
        lambda: (host := cached(boot)) and host.status and host.status.phases[0].finished,
    )
    assert "provisioning; booting from disk" in await boot_script(boot)
    assert "bootstrap-secret-91c2" not in caplog.text, "user-data reached the log"
    assert token not in caplog.text, "the token reached the log"


async def test_answer_files_are_served_only_while_provisioning(
    boot: BootService, kube: Client, namespace: str
) -> None:
    create_host(kube, namespace, NAME, {"bootMACAddress": MAC, "deploymentType": "kickstart"})
    await wait_for(
        "provisioning in the cache",
        lambda: (host := cached(boot)) and host.status and host.status.state,
    )
    script = await boot_script(boot)
    assert "booting the RHEL installer (kickstart)" in script
    match = re.search(r"inst\.ks=\S+/kickstart\.cfg\?token=(\w+) ", script)
    assert match is not None
    assert f"inst.repo={boot.settings.http_base}/files/installer/rhel/" in script
    token = match.group(1)
    await wait_for(
        "the boot id in the cache",
        lambda: (host := cached(boot)) and host.status and host.status.agent_boot_id,
    )
    status, text = await call(boot, "GET", f"/installer/v1/{MAC}/kickstart.cfg?token={token}")
    assert status == 200 and "%post --erroronfail" in text

    set_state(kube, namespace, "available")
    await wait_for(
        "available in the cache",
        lambda: (host := cached(boot)) and host.status and host.status.state == "available",
    )
    status, text = await call(boot, "GET", f"/installer/v1/{MAC}/kickstart.cfg?token={token}")
    assert status == 404 and "it is available" in text


@pytest.mark.parametrize(
    "key",
    [
        "not a key at all\nsecond line",
        'ssh-ed25519 AAAAC3Nza comment with "quotes"',
        "ssh-ed25519 AAAAC3Nza back\\slash",
    ],
)
def test_the_api_refuses_keys_an_answer_file_cannot_carry(
    kube: Client, namespace: str, key: str
) -> None:
    with pytest.raises(ApiError, match="spec.sshAuthorizedKeys must be OpenSSH public keys"):
        create_host(kube, namespace, "bad-key", {"bootMACAddress": MAC, "sshAuthorizedKeys": [key]})
