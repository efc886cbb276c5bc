"""The boot service's threat model, tried against the real boot service and the real API server.

An attacker is another HTTP client on the provisioning network (here: another source address on
loopback, 127.0.0.2) that knows the victim's MAC, as anyone there does. It tries what the
review found worked: minting a token from the victim's iPXE script, reading the bootstrap data
with it, replaying an old token, forging progress, "done" and "provisioned"; each is refused,
while the victim's own flow goes on. Then: nothing is decided before the host cache has synced,
a host nobody accepted is never written to, and a flood of made-up MACs is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.boot.service import BootService
from plunder.boot.settings import BootSettings, DhcpSettings, DiscoverySettings
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import processes
from plunder.lab.plane import Plane
from tests.conftest import running

pytestmark = pytest.mark.integration

VICTIM = "00:50:56:a5:11:20"
NAME = "host-00-50-56-a5-11-20"
HOSTS = resource_for(PlunderHost)
SECRET_MARK = "bootstrap-secret-4be1"
USER_DATA = f"#cloud-config\nruncmd: [echo {SECRET_MARK}]\n"
HARDWARE = {"cpu": {"count": 1}, "memoryMiB": 512, "disks": [{"name": "/dev/vda", "sizeBytes": 1}]}
TOKEN_RE = re.compile(r"[0-9a-f]{64}")


def settings_for(tmp_path: Path, namespace: str, **overrides: Any) -> BootSettings:
    files = tmp_path / "files"
    (files / "agent").mkdir(parents=True, exist_ok=True)
    (files / "agent" / "vmlinuz").write_bytes(b"kernel")
    (files / "agent" / "initrd.img").write_bytes(b"initrd")
    values: dict[str, Any] = {
        "address": IPv4Address("127.0.0.1"),
        "http_port": processes.free_port(),
        "run_dir": tmp_path / "run",
        "files_dir": files,
        "namespace": namespace,
        "last_seen_interval": 3600,
        "dhcp": DhcpSettings(mode="off"),
    }
    return BootSettings(**(values | overrides))


@pytest.fixture
async def boot(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> AsyncIterator[BootService]:
    async with running(BootService(settings_for(tmp_path, namespace), plane.kubeconfig)) as svc:
        yield svc


class Peer:
    """One HTTP client on the provisioning network, from its own source address."""

    def __init__(self, boot: BootService, source: str) -> None:
        self.base = boot.settings.http_base
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
        )

    async def call(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with self.session.request(
            method, f"{self.base}{path}", headers=headers, **kwargs
        ) as response:
            return response.status, await response.text()

    async def close(self) -> None:
        await self.session.close()


@pytest.fixture
async def victim(boot: BootService) -> AsyncIterator[Peer]:
    client = Peer(boot, "127.0.0.1")
    yield client
    await client.close()


@pytest.fixture
async def attacker(boot: BootService) -> AsyncIterator[Peer]:
    client = Peer(boot, "127.0.0.2")
    yield client
    await client.close()


def patch(kube: Client, namespace: str, body: dict[str, Any], status: bool = False) -> None:
    kube.patch(
        HOSTS.Status if status else HOSTS,
        NAME,
        body,
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


async def cache_shows(boot: BootService, check: Callable[[PlunderHost], bool]) -> PlunderHost:
    for _ in range(200):
        host = boot.backend.by_mac(VICTIM)
        if host is not None and check(host):
            return host
        await asyncio.sleep(0.02)
    raise AssertionError(f"the cache never showed it: {boot.backend.by_mac(VICTIM)}")


def state_is(state: str) -> Callable[[PlunderHost], bool]:
    return lambda host: bool(host.status and host.status.state == state)


async def tries_everything(attacker: Peer, tokens: list[str]) -> list[tuple[str, int]]:
    """Every way in the review found, with each token the attacker has; what each answered."""
    agent = f"/agent/v1/{VICTIM}"
    answers: list[tuple[str, int]] = []
    for token in ["", "0" * 64, *tokens]:
        for method, path, body in [
            ("GET", f"{agent}/cloud-init/user-data", None),
            ("GET", f"{agent}/cloud-init/vendor-data", None),
            ("GET", f"{agent}/work", None),
            ("POST", f"{agent}/inspection", b"{}"),
            ("POST", f"{agent}/status", b"phase=writing\n"),
            ("POST", f"{agent}/status", b"phase=done\n"),
            ("POST", f"{agent}/status", b"phase=failed\nreason=Forged\n"),
            ("POST", f"{agent}/phone-home?token={token}", b"instance_id=x"),
            ("GET", f"/installer/v1/{VICTIM}/preseed.cfg?token={token}", None),
        ]:
            status, text = await attacker.call(method, path, token or None, data=body)
            assert SECRET_MARK not in text
            answers.append((f"{method} {path.split('?')[0]} [{token[:6] or '-'}]", status))
    return answers


async def test_an_attacker_on_the_provisioning_network_gets_nothing_and_the_host_still_boots(
    boot: BootService, kube: Client, namespace: str, victim: Peer, attacker: Peer
) -> None:
    # The victim PXE-boots: it is discovered, and its script boots the agent (with no token).
    status, script = await victim.call("GET", f"/boot.ipxe?mac={VICTIM}&platform=pcbios")
    assert status == 200 and "booting the agent" in script
    assert not TOKEN_RE.search(script) and "token" not in script, script

    # The attacker asks for the victim's script, as often as it likes: no token in any of them.
    for _ in range(3):
        status, script = await attacker.call("GET", f"/boot.ipxe?mac={VICTIM}&platform=efi")
        assert status == 200 and not TOKEN_RE.search(script), script

    # The victim's agent looks up its token; nobody gets one after that.
    status, answer = await victim.call("POST", f"/agent/v1/{VICTIM}/lookup")
    assert status == 200
    token = answer.removeprefix("token=").strip()
    await cache_shows(boot, lambda h: bool(h.status and h.status.agent_boot_id))
    assert (await attacker.call("POST", f"/agent/v1/{VICTIM}/lookup"))[0] == 409
    assert (await victim.call("POST", f"/agent/v1/{VICTIM}/inspection", token, json=HARDWARE))[
        0
    ] == 204
    await cache_shows(boot, state_is("available"))

    # A person accepts the host; the controller gives it work (made here by hand).
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bootstrap", namespace=namespace),
            data={"value": base64.b64encode(USER_DATA.encode()).decode()},
        )
    )
    image = {"url": "http://127.0.0.1/files/os.raw", "checksum": "c" * 64}
    patch(
        kube,
        namespace,
        {"spec": {"accepted": True, "image": image, "userData": {"name": "bootstrap"}}},
    )
    patch(kube, namespace, {"status": {"state": "provisioning"}}, status=True)
    await cache_shows(boot, state_is("provisioning"))

    # While the victim installs, the attacker tries every way in: each is refused.
    before = await tries_everything(attacker, [])
    assert {status for _, status in before} <= {403, 409}, before
    for _ in range(3):
        _, script = await attacker.call("GET", f"/boot.ipxe?mac={VICTIM}")
        assert not TOKEN_RE.search(script), script

    # The victim's agent: work, its seed, the write.
    status, work = await victim.call("GET", f"/agent/v1/{VICTIM}/work", token)
    assert status == 200 and "action=provision\n" in work
    seed = f"/agent/v1/{VICTIM}/cloud-init"
    assert await victim.call("GET", f"{seed}/user-data", token) == (200, USER_DATA)
    _, vendor = await victim.call("GET", f"{seed}/vendor-data", token)
    phone_token = vendor.split("?token=")[1].split()[0]
    assert phone_token != token
    for phase in ("writing", "done"):
        report = f"phase={phase}\n"
        assert (await victim.call("POST", f"/agent/v1/{VICTIM}/status", token, data=report))[
            0
        ] == 204
        await cache_shows(
            boot,
            lambda h, p=phase: (
                any(
                    x.name == "writing" and (p == "writing" or x.finished)
                    for x in (h.status.phases or [])
                )
                if h.status
                else False
            ),
        )

    # The write has ended: the bootstrap data is served to nobody, not even with the token.
    assert (await victim.call("GET", f"{seed}/user-data", token))[0] == 403
    # The agent token is not a phone-home token; the attacker's guesses are not either.
    home = f"/agent/v1/{VICTIM}/phone-home"
    assert (await attacker.call("POST", f"{home}?token={token}"))[0] == 403
    assert (await attacker.call("POST", f"{home}?token={'0' * 64}"))[0] == 403
    assert (await victim.call("POST", f"{home}?token={phone_token}"))[0] == 204
    await cache_shows(boot, state_is("provisioned"))

    # The machine is deleted: the controller moves the host to deprovisioning and power-cycles
    # it into the agent. The token of the boot that installed it (say, copied from the disk's
    # seed or the network) is worthless now, for "done" above all.
    patch(kube, namespace, {"spec": {"image": None, "userData": None}})
    patch(
        kube,
        namespace,
        {
            "status": {
                "state": "deprovisioning",
                "phases": [{"name": "deprovisioning", "started": "2026-12-01T12:00:00.000Z"}],
            }
        },
        status=True,
    )
    await cache_shows(boot, state_is("deprovisioning"))
    replayed = await tries_everything(attacker, [token, phone_token])
    assert {status for _, status in replayed} <= {403, 409}, replayed
    assert (await victim.call("GET", f"/agent/v1/{VICTIM}/work", token))[0] == 403

    # The victim's new agent looks up the wipe's token and does the wipe.
    status, answer = await victim.call("POST", f"/agent/v1/{VICTIM}/lookup")
    assert status == 200
    wipe_token = answer.removeprefix("token=").strip()
    await cache_shows(
        boot, lambda h: bool(h.status and h.status.agent_boot_id and "." in h.status.agent_boot_id)
    )
    assert (await attacker.call("POST", f"/agent/v1/{VICTIM}/lookup"))[0] == 409
    status, work = await victim.call("GET", f"/agent/v1/{VICTIM}/work", wipe_token)
    assert status == 200 and "action=wipe" in work
    host = as_dict(kube.get(HOSTS, NAME, namespace=namespace))
    assert host["status"]["state"] == "deprovisioning", "the attacker moved the host"
    done = "phase=done\nreason=Wiped\n"  # what the agent says of a finished wipe
    assert (await victim.call("POST", f"/agent/v1/{VICTIM}/status", wipe_token, data=done))[
        0
    ] == 204
    await cache_shows(boot, state_is("available"))
    # Wiped and parked, the agent keeps its token: no window opens for anyone else.
    assert (await attacker.call("POST", f"/agent/v1/{VICTIM}/lookup"))[0] == 409
    assert await victim.call("GET", f"/agent/v1/{VICTIM}/work", wipe_token) == (
        200,
        "action=wait\nretry=2\n",
    )
    print(
        "\nattacker: refused",
        len(before) + len(replayed),
        "requests;",
        sorted({f"{status}" for _, status in before + replayed}),
    )


async def test_of_many_lookups_at_once_exactly_one_gets_the_token(
    boot: BootService, victim: Peer, attacker: Peer
) -> None:
    await victim.call("GET", f"/boot.ipxe?mac={VICTIM}")
    await cache_shows(boot, lambda h: True)
    path = f"/agent/v1/{VICTIM}/lookup"
    answers = await asyncio.gather(
        *(peer.call("POST", path) for _ in range(10) for peer in (victim, attacker))
    )
    assert sorted(status for status, _ in answers) == [200] + [409] * 19, answers
    [token] = [text.removeprefix("token=").strip() for status, text in answers if status == 200]
    await cache_shows(boot, lambda h: bool(h.status and h.status.agent_boot_id))
    assert (await victim.call("GET", f"/agent/v1/{VICTIM}/work", token))[0] == 200


async def test_a_wipe_lookup_whose_answer_was_lost_is_answered_again_to_its_boot_only(
    boot: BootService, kube: Client, namespace: str, victim: Peer, attacker: Peer
) -> None:
    """The wipe's boot id is written, and the answer never reaches the agent.

    The boot service was killed after its write, or the connection dropped (a kill point of the
    chaos run, bench/chaos.py). Every later lookup was refused ("the token of this wipe was
    issued already"), so the host stayed deprovisioning for good, its machine's deletion too.
    The agent sends a nonce of its boot with each lookup; asked again with that nonce, the boot
    service answers with the same token, and to anyone else still with nothing.
    """
    await victim.call("GET", f"/boot.ipxe?mac={VICTIM}")
    await cache_shows(boot, lambda h: True)
    patch(kube, namespace, {"spec": {"accepted": True}})
    deprovisioning = [{"name": "deprovisioning", "started": "2026-12-01T12:00:00.000Z"}]
    patch(kube, namespace, {"status": {"state": "deprovisioning", "phases": deprovisioning}}, True)
    await cache_shows(boot, state_is("deprovisioning"))
    lookup = f"/agent/v1/{VICTIM}/lookup"
    nonce = secrets.token_hex(16)
    first = await victim.call("POST", lookup, data={"mac": VICTIM, "nonce": nonce})
    assert first[0] == 200  # ... and lost on its way
    await cache_shows(boot, lambda h: bool(h.status and h.status.agent_boot_id))
    for guess in ({"mac": VICTIM}, {"mac": VICTIM, "nonce": secrets.token_hex(16)}):
        assert (await attacker.call("POST", lookup, data=guess))[0] == 409
    assert await victim.call("POST", lookup, data={"mac": VICTIM, "nonce": nonce}) == first
    token = first[1].removeprefix("token=").strip()
    assert (await victim.call("GET", f"/agent/v1/{VICTIM}/work", token))[1].startswith(
        "action=wipe\n"
    )


async def test_with_dhcp_leases_a_lookup_must_come_from_the_hosts_address(
    boot: BootService, tmp_path: Path, victim: Peer, attacker: Peer
) -> None:
    await victim.call("GET", f"/boot.ipxe?mac={VICTIM}")
    await cache_shows(boot, lambda h: True)
    leases = tmp_path / "leases"
    leases.write_text(
        f"1764000000 {VICTIM} 127.0.0.1 * *\n1764000000 00:50:56:a5:b5:f1 127.0.0.2 * *\n"
    )
    boot.leases.path = leases  # as dnsmasq's lease file in full DHCP mode
    assert (await attacker.call("POST", f"/agent/v1/{VICTIM}/lookup"))[0] == 403
    assert (await victim.call("POST", f"/agent/v1/{VICTIM}/lookup"))[0] == 200


async def test_nothing_is_decided_before_the_host_cache_has_synced(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> None:
    kube.create(
        HOSTS.from_dict(
            {
                "apiVersion": PlunderHost.info.api_version,
                "kind": "PlunderHost",
                "metadata": {"name": NAME, "namespace": namespace},
                "spec": {"bootMACAddress": VICTIM, "accepted": True},
            }
        )
    )
    patch(kube, namespace, {"status": {"state": "provisioned", "agentBootID": "b1"}}, status=True)
    before = as_dict(kube.get(HOSTS, NAME, namespace=namespace))
    service = BootService(settings_for(tmp_path, namespace), plane.kubeconfig)
    release = asyncio.Event()
    sync = service.backend.run

    async def held() -> None:  # the API is slow to answer the first list
        await release.wait()
        await sync()

    service.backend.run = held  # type: ignore[method-assign]
    await service.start()
    try:
        client = Peer(service, "127.0.0.1")
        status, script = await client.call("GET", f"/boot.ipxe?mac={VICTIM}&platform=pcbios")
        assert status == 200 and "asking again" in script, script
        assert "kernel" not in script and "sanboot" not in script and "token" not in script
        assert "chain --replace --autofree" in script, "the host must ask again by itself"
        for path in ("lookup", "status"):
            assert (await client.call("POST", f"/agent/v1/{VICTIM}/{path}"))[0] == 503
        assert (await client.call("GET", "/healthz"))[0] == 503
        after = as_dict(kube.get(HOSTS, NAME, namespace=namespace))
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
        assert len(list(kube.list(HOSTS, namespace=namespace))) == 1, "nothing discovered"
        release.set()
        await asyncio.wait_for(service.ready.wait(), 30)
        _, script = await client.call("GET", f"/boot.ipxe?mac={VICTIM}&platform=pcbios")
        assert "sanboot --no-describe --drive 0x80" in script, script
        await client.close()
    finally:
        release.set()
        await service.stop()


async def test_a_host_nobody_accepted_is_inspected_but_never_written(
    boot: BootService, kube: Client, namespace: str, victim: Peer
) -> None:
    await victim.call("GET", f"/boot.ipxe?mac={VICTIM}")
    host = as_dict(kube.get(HOSTS, NAME, namespace=namespace))
    assert host["spec"]["accepted"] is False, "discovered is not accepted"
    _, answer = await victim.call("POST", f"/agent/v1/{VICTIM}/lookup")
    token = answer.removeprefix("token=").strip()
    await cache_shows(boot, lambda h: bool(h.status and h.status.agent_boot_id))
    assert (await victim.call("POST", f"/agent/v1/{VICTIM}/inspection", token, json=HARDWARE))[
        0
    ] == 204
    # Someone sets work on it and moves it by hand: the agent is told to wait, not to write.
    image = {"url": "http://127.0.0.1/files/os.raw", "checksum": "c" * 64}
    patch(kube, namespace, {"spec": {"image": image}})
    patch(kube, namespace, {"status": {"state": "provisioning"}}, status=True)
    await cache_shows(boot, state_is("provisioning"))
    assert await victim.call("GET", f"/agent/v1/{VICTIM}/work", token) == (
        200,
        "action=wait\nreason=not accepted\nretry=2\n",
    )
    assert (await victim.call("GET", f"/agent/v1/{VICTIM}/cloud-init/user-data", token))[0] == 403
    patch(kube, namespace, {"status": {"state": "deprovisioning"}}, status=True)
    await cache_shows(boot, state_is("deprovisioning"))
    _, answer = await victim.call("POST", f"/agent/v1/{VICTIM}/lookup")
    token = answer.removeprefix("token=").strip()
    await cache_shows(boot, lambda h: bool(h.status and h.status.agent_boot_id))
    assert (await victim.call("GET", f"/agent/v1/{VICTIM}/work", token))[1].startswith(
        "action=wait\n"
    ), "no wipe of a host nobody accepted"
    # Accepted: the same host gets its work.
    patch(kube, namespace, {"spec": {"accepted": True}})
    await cache_shows(boot, lambda h: h.spec.accepted)
    assert (await victim.call("GET", f"/agent/v1/{VICTIM}/work", token))[1].startswith(
        "action=wipe\n"
    )


async def test_auto_accept_is_a_setting(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, namespace, discovery=DiscoverySettings(auto_accept=True))
    async with running(BootService(settings, plane.kubeconfig)) as service:
        client = Peer(service, "127.0.0.1")
        assert (await client.call("GET", f"/boot.ipxe?mac={VICTIM}"))[0] == 200
        await client.close()
    assert as_dict(kube.get(HOSTS, NAME, namespace=namespace))["spec"]["accepted"] is True


def random_mac(rng: random.Random) -> str:
    return "02:" + ":".join(f"{rng.randrange(256):02x}" for _ in range(5))


@pytest.fixture(params=["defaults", "cap"])
async def flooded(
    request: pytest.FixtureRequest, plane: Plane, namespace: str, tmp_path: Path
) -> AsyncIterator[BootService]:
    """The boot service with the default bound, or with only the cap (no rate limit)."""
    overrides: dict[str, Any] = {}
    if request.param == "cap":
        overrides["discovery"] = DiscoverySettings(per_minute=1e9, burst=1_000_000)
    settings = settings_for(tmp_path, namespace, **overrides)
    async with running(BootService(settings, plane.kubeconfig)) as service:
        yield service


async def test_a_flood_of_new_macs_is_bounded_and_known_hosts_keep_booting(
    flooded: BootService, kube: Client, namespace: str
) -> None:
    boot = flooded
    known = [f"00:50:56:a5:00:{i:02x}" for i in range(3)]
    for mac in known:
        kube.create(
            HOSTS.from_dict(
                {
                    "apiVersion": PlunderHost.info.api_version,
                    "kind": "PlunderHost",
                    "metadata": {"name": f"known-{mac[-2:]}", "namespace": namespace},
                    "spec": {"bootMACAddress": mac, "accepted": True},
                }
            )
        )
        kube.patch(
            HOSTS.Status,
            f"known-{mac[-2:]}",
            {"status": {"state": "provisioned"}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    for _ in range(200):
        if all(boot.backend.by_mac(mac) for mac in known):
            break
        await asyncio.sleep(0.02)
    discovery = boot.settings.discovery
    flood_macs = 10_000
    rng = random.Random(12)
    base = boot.settings.http_base
    known_latency: list[float] = []
    known_wrong = 0
    flood_status: dict[int, int] = {}
    health_latency: list[float] = []
    stop = asyncio.Event()

    async def flood(session: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            async with session.get(f"{base}/boot.ipxe?mac={random_mac(rng)}") as response:
                await response.read()
                flood_status[response.status] = flood_status.get(response.status, 0) + 1

    async def known_host(session: aiohttp.ClientSession, mac: str) -> None:
        nonlocal known_wrong
        while not stop.is_set():
            started = time.monotonic()
            async with session.get(f"{base}/boot.ipxe?mac={mac}&poll=1") as response:
                text = await response.text()
            known_latency.append(time.monotonic() - started)
            known_wrong += "sanboot" not in text
            await asyncio.sleep(0.05)

    async def health(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            started = time.monotonic()
            async with session.get(f"{base}/healthz") as response:
                await response.read()
            health_latency.append(time.monotonic() - started)
            await asyncio.sleep(0.1)

    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as flooder,
        aiohttp.ClientSession() as others,
    ):
        watchers = [asyncio.create_task(known_host(others, mac)) for mac in known]
        watchers.append(asyncio.create_task(health(others)))
        started = time.monotonic()
        await asyncio.wait_for(
            asyncio.gather(*(flood(flooder, flood_macs // 50) for _ in range(50))), 120
        )
        took = time.monotonic() - started
        stop.set()
        await asyncio.gather(*watchers)
    created = [
        h for h in kube.list(HOSTS, namespace=namespace) if not h.metadata.name.startswith("known")
    ]
    bound = discovery.burst + discovery.per_minute / 60 * took + 1
    p99 = (
        statistics.quantiles(known_latency, n=100)[98]
        if len(known_latency) >= 100
        else max(known_latency)
    )
    print(
        f"\nflood ({'rate' if discovery.burst < 1000 else 'cap'}): {flood_macs} new MACs in "
        f"{took:.1f} s ({flood_macs / took:.0f}/s), answers "
        f"{flood_status}; PlunderHosts created {len(created)} (bound {bound:.0f}, cap "
        f"{discovery.max_pending}); known hosts: {len(known_latency)} scripts, "
        f"{known_wrong} wrong, median {statistics.median(known_latency) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {max(known_latency) * 1000:.1f} ms; /healthz max "
        f"{max(health_latency) * 1000:.1f} ms; API writes {boot.backend.writes}"
    )
    assert flood_status == {200: flood_macs}
    assert len(created) <= min(bound, discovery.max_pending)
    assert known_wrong == 0 and len(known_latency) > 10
    assert max(known_latency) < 2.0 and max(health_latency) < 2.0
