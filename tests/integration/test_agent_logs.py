"""What the host printed and how far its write got, against the real boot service and API server.

The agent's log of its boot is kept in a ConfigMap owned by the host, scrubbed and bounded, taken
only from the holder of the host's current token (an attacker with no token, a made-up one, or
another host's is refused and changes nothing), and printed by ``plunderctl logs``. Its byte
counts during an image write become ``status.writeProgress``, at a bounded rate, and
``plunderctl get hosts`` shows them as a bar. The simulated agent (:mod:`sim_agent`) sends both
as agent.sh does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.boot import agentlog
from plunder.boot.service import BootService
from plunder.cli import hosts as cli_hosts
from plunder.k8s.resources import as_dict
from plunder.lab.plane import Plane
from tests.conftest import running
from tests.integration import sim_agent
from tests.integration.test_boot_trust import HARDWARE, HOSTS, Peer, cache_shows, settings_for

pytestmark = pytest.mark.integration

VICTIM = "00:50:56:a5:11:20"
NAME = "host-00-50-56-a5-11-20"
OTHER = "00:50:56:a5:11:21"
LOG_NAME = agentlog.configmap_name(NAME)
INTERVAL = 2.0
"""The boot service's log and progress intervals here: long enough that two calls made one
after the other fall within one even on a loaded machine."""


@pytest.fixture
async def boot(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> AsyncIterator[BootService]:
    settings = settings_for(
        tmp_path, namespace, agent_log_interval=INTERVAL, progress_interval=INTERVAL
    )
    async with running(BootService(settings, plane.kubeconfig)) as service:
        yield service


@pytest.fixture
async def victim(boot: BootService) -> AsyncIterator[Peer]:
    peer = Peer(boot, "127.0.0.1")
    yield peer
    await peer.close()


@pytest.fixture
async def attacker(boot: BootService) -> AsyncIterator[Peer]:
    peer = Peer(boot, "127.0.0.2")
    yield peer
    await peer.close()


async def booted(peer: Peer, boot: BootService, mac: str) -> str:
    """A host's boot into the agent: its script, its lookup, its inspection; its token."""
    assert (await peer.call("GET", f"/boot.ipxe?mac={mac}"))[0] == 200
    status, text = await peer.call("POST", f"/agent/v1/{mac}/lookup")
    assert status == 200, text
    token = text.removeprefix("token=").strip()
    await cache_shows_mac(boot, mac, lambda host: bool(host.status and host.status.agent_boot_id))
    await as_the_agent(peer, "POST", f"/agent/v1/{mac}/inspection", token, json=HARDWARE)
    return token


async def as_the_agent(peer: Peer, method: str, path: str, token: str, **kwargs: Any) -> int:
    """A call asked again while it is answered 409, as the agent asks again; then a yes.

    Its guarded write may meet the boot service's cache a moment behind the API (a watch event
    older than the service's own last write arriving after it).
    """
    for _ in range(50):
        status, text = await peer.call(method, path, token, **kwargs)
        if status != 409:
            break
        await asyncio.sleep(0.1)
    assert status in (202, 204), (path, status, text)
    return status


async def cache_shows_mac(boot: BootService, mac: str, check: Any) -> PlunderHost:
    for _ in range(200):
        host = boot.backend.by_mac(mac)
        if host is not None and check(host):
            return host
        await asyncio.sleep(0.02)
    raise AssertionError(f"the cache never showed it: {boot.backend.by_mac(mac)}")


async def kept_log(kube: Client, namespace: str, contains: str) -> ConfigMap:
    for _ in range(100):
        try:
            found = kube.get(ConfigMap, LOG_NAME, namespace=namespace)
        except ApiError:
            found = None
        if found is not None and contains in (found.data or {}).get("log", ""):
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no log with {contains!r}: {found.data if found else None}")


def plunderctl(plane: Plane, *argv: str) -> tuple[int, str]:
    """``plunderctl logs …`` or ``plunderctl get hosts …``."""
    command = cli_hosts.logs if argv[0] == "logs" else cli_hosts.get
    result = CliRunner().invoke(command, [*argv[1:], "--kubeconfig", str(plane.kubeconfig)])
    return result.exit_code, result.output


def write_ended(host: PlunderHost) -> bool:
    phases = host.status.phases if host.status else None
    return any(phase.name == "writing" and phase.finished for phase in phases or ())


async def test_the_log_is_kept_scrubbed_from_its_host_only_and_shown_by_plunderctl(
    boot: BootService,
    kube: Client,
    namespace: str,
    plane: Plane,
    victim: Peer,
    attacker: Peer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = await booted(victim, boot, VICTIM)
    path = f"/agent/v1/{VICTIM}/log"
    code, output = plunderctl(plane, "logs", NAME, "-n", namespace)
    assert code == 1 and f"host {NAME} has no agent log yet" in output

    upload = (
        "[1.20] plunder-agent: interface eth0 (00:50:56:a5:11:20)\n"
        f"[2.50] lookup answered {token}\n"
        "[3.00] plunder-agent: inspection reported\n"
        "[3.10] \x1b]0;owned\x07 checksum http://u:pw@mirror/SHA256SUMS\n"
    )
    assert (await victim.call("POST", path, token, data=upload))[0] == 204
    found = await kept_log(kube, namespace, "inspection reported")
    data = found.data or {}
    host = boot.backend.by_mac(VICTIM)
    assert host is not None and host.status is not None
    assert data["bootID"] == host.status.agent_boot_id
    assert token not in data["log"] and "[redacted]" in data["log"]
    assert "\x1b" not in data["log"] and "u:pw" not in data["log"]
    owners = found.metadata.ownerReferences if found.metadata else None
    assert owners and owners[0].kind == "PlunderHost" and owners[0].uid == host.metadata.uid
    assert token not in caplog.text and "inspection reported" not in caplog.text

    # The attacker: no token, a made-up one, the token of its own host (another MAC), and the
    # victim's token sent for the attacker's host. Nothing is written.
    other = await booted(attacker, boot, OTHER)
    forged = "[9.99] plunder-agent: status done Wiped\n"
    for who, mac, with_token in [
        (attacker, VICTIM, None),
        (attacker, VICTIM, "0" * 64),
        (attacker, VICTIM, other),
        (victim, OTHER, token),
    ]:
        status, _ = await who.call("POST", f"/agent/v1/{mac}/log", with_token, data=forged)
        assert status == 403, (mac, with_token)
    await asyncio.sleep(0.7)
    assert (
        "status done Wiped"
        not in (kube.get(ConfigMap, LOG_NAME, namespace=namespace).data or {})["log"]
    )
    with pytest.raises(ApiError):
        kube.get(ConfigMap, agentlog.configmap_name("host-00-50-56-a5-11-21"), namespace=namespace)
    big = b"x" * (agentlog.MAX_UPLOAD_BYTES + 1)
    assert (await victim.call("POST", path, token, data=big))[0] == 413

    # Uploads in quick succession are coalesced: the newest is written when the host's turn comes.
    second = upload + "[4.00] plunder-agent: status failed InvalidWork\n"
    third = second + "[4.50] plunder-agent: asking for work failed\n"
    fourth = third + "[4.90] plunder-agent: asking for work failed again\n"
    await asyncio.sleep(INTERVAL)
    assert (await victim.call("POST", path, token, data=second))[0] == 204
    writes = boot.agent_logs.writes
    assert (await victim.call("POST", path, token, data=third))[0] == 202
    assert (await victim.call("POST", path, token, data=fourth))[0] == 202
    await kept_log(kube, namespace, "asking for work failed again")
    await asyncio.sleep(0.2)  # the service's task counts its write once its answer is in
    assert boot.agent_logs.writes == writes + 1, "one write for the two waiting uploads"

    code, output = plunderctl(plane, "logs", VICTIM, "-n", namespace)
    assert code == 0, output
    assert output.startswith(f"# host {NAME}, boot {host.status.agent_boot_id}, last sent ")
    assert "plunder-agent: inspection reported\n" in output and token not in output
    code, output = plunderctl(plane, "logs", "no-such-host", "-n", namespace)
    assert code == 1 and "no host with MAC or name 'no-such-host'" in output
    code, output = plunderctl(plane, "logs", NAME, "-n", namespace, "--previous")
    assert code == 1 and "no log of an earlier boot" in output

    # A ConfigMap of that name that is not a log (someone's own) is never overwritten.
    kube.delete(ConfigMap, LOG_NAME, namespace=namespace)
    kube.create(
        ConfigMap(metadata=ObjectMeta(name=LOG_NAME, namespace=namespace), data={"mine": "1"})
    )
    await asyncio.sleep(INTERVAL + 0.1)
    assert (await victim.call("POST", path, token, data=upload))[0] == 204
    assert kube.get(ConfigMap, LOG_NAME, namespace=namespace).data == {"mine": "1"}


def patch(kube: Client, namespace: str, body: dict[str, Any], status: bool = False) -> None:
    kube.patch(
        HOSTS.Status if status else HOSTS,
        NAME,
        body,
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


async def test_the_writes_progress_is_recorded_at_a_bounded_rate_and_shown(
    boot: BootService, kube: Client, namespace: str, plane: Plane, victim: Peer, attacker: Peer
) -> None:
    token = await booted(victim, boot, VICTIM)
    image = {"url": "http://127.0.0.1/files/os.raw.lzo", "checksum": "c" * 64, "format": "raw-lzop"}
    patch(kube, namespace, {"spec": {"accepted": True, "image": image}})
    patch(kube, namespace, {"status": {"state": "provisioning"}}, status=True)
    await cache_shows(
        boot,
        lambda host: bool(host.spec.image and host.status and host.status.state == "provisioning"),
    )
    progress = f"/agent/v1/{VICTIM}/progress"
    counts = "downloaded=340787200\nwritten=1048576000\ntotal=681574400\n"
    assert (await victim.call("POST", progress, token, data=counts))[0] == 409, "not writing yet"

    status_path = f"/agent/v1/{VICTIM}/status"
    begin = "phase=writing\nreason=Writing\nmessage=m\nbytes=0\nimage_bytes=681574400\n"
    assert await as_the_agent(victim, "POST", status_path, token, data=begin) == 204
    await cache_shows(boot, lambda host: bool(host.status and host.status.write_progress))
    assert (await attacker.call("POST", progress, "0" * 64, data=counts))[0] == 403
    await asyncio.sleep(INTERVAL + 0.1)
    assert await as_the_agent(victim, "POST", progress, token, data=counts) == 204
    assert (await victim.call("POST", progress, token, data=counts))[0] == 202, "too soon"
    host = await cache_shows(
        boot,
        lambda host: bool(
            host.status
            and host.status.write_progress
            and host.status.write_progress.downloaded_bytes
        ),
    )
    assert host.status is not None and host.status.write_progress is not None
    assert host.status.write_progress.written_bytes == 1048576000
    assert host.status.write_progress.image_bytes == 681574400

    code, output = plunderctl(plane, "get", "hosts", "-n", namespace)
    assert code == 0, output
    assert "[##########----------]  50% 1000 MiB written" in output
    _, metrics = await victim.call("GET", "/metrics")
    assert 'plunder_boot_write_progress_total{result="recorded"} 1.0' in metrics
    assert 'plunder_boot_write_progress_total{result="dropped"} 1.0' in metrics

    # The log's last upload goes before "done"; after it, neither log nor progress is taken.
    log_path = f"/agent/v1/{VICTIM}/log"
    assert (await victim.call("POST", log_path, token, data="[5.0] status done\n"))[0] == 204
    done = "phase=done\nreason=Provisioned\nmessage=m\nbytes=1048576000\n"
    assert await as_the_agent(victim, "POST", status_path, token, data=done) == 204
    await cache_shows(boot, write_ended)
    await asyncio.sleep(INTERVAL + 0.1)
    assert (await victim.call("POST", progress, token, data=counts))[0] == 409
    assert (await victim.call("POST", log_path, token, data="[6.0] forged\n"))[0] == 409
    code, output = plunderctl(plane, "get", "hosts", "-n", namespace)
    assert "MiB written" not in output


async def test_the_simulated_agent_sends_its_log_and_progress_through_a_provisioning(
    boot: BootService, kube: Client, namespace: str, plane: Plane
) -> None:
    """sim_agent, as agent.sh: its log after the lookup and before "done", counts in between."""
    kube.create(
        HOSTS.from_dict(
            {
                "apiVersion": PlunderHost.info.api_version,
                "kind": PlunderHost.info.kind,
                "metadata": {"name": NAME, "namespace": namespace},
                "spec": {"bootMACAddress": VICTIM, "accepted": True},
            }
        )
    )
    patch(kube, namespace, {"status": {"state": "available"}}, status=True)
    await cache_shows(boot, lambda host: bool(host.status and host.status.state == "available"))
    agent = sim_agent.HttpAgent(plane.kubeconfig, namespace, boot.settings.http_base)
    agent.start()
    try:
        assert await asyncio.to_thread(agent.parked.wait, 30) and agent.failure is None
        await kept_log(kube, namespace, "lookup answered")
        image = {"url": "http://127.0.0.1/files/os.raw", "checksum": "c" * 64, "format": "raw"}
        patch(kube, namespace, {"spec": {"image": image}})
        patch(kube, namespace, {"status": {"state": "provisioning"}}, status=True)
        for _ in range(200):
            body = as_dict(kube.get(HOSTS, NAME, namespace=namespace))
            if (body.get("status") or {}).get("state") == "provisioned":
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"never provisioned: {agent.agents[VICTIM].refusal}")
    finally:
        await asyncio.to_thread(agent.stop)
    progress = as_dict(kube.get(HOSTS, NAME, namespace=namespace))["status"]["writeProgress"]
    assert progress["imageBytes"] == sim_agent.IMAGE_BYTES
    assert progress["downloadedBytes"] == sim_agent.IMAGE_BYTES // 2
    found = await kept_log(kube, namespace, "status done Provisioned")
    assert "status writing Writing" in (found.data or {})["log"]
