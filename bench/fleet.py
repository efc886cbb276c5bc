"""A fleet simulator: N hosts that boot, inspect, park, install and wipe as real ones do.

A benchmark tool (used by ``bench/fleet_scale.py``), not a mock inside the product: every host
makes the HTTP calls that its firmware, ``agent.sh`` and cloud-init make, against the real boot
service, which writes the real API server. One host's life:

1. power on: iPXE asks ``GET /boot.ipxe?mac=`` (an unknown MAC is discovered there) until the
   answer is a kernel (the agent) or the disk; a kernel boot fetches the agent's kernel and
   initrd from ``/files/`` and takes ``boot_seconds``;
2. the agent: ``POST lookup`` (the token of this boot, with its nonce), ``POST inspection``
   (hardware), then the work loop: ``GET work`` every ``poll_seconds`` while parked (agent.sh's
   ``sleep 2``); ``provision``: the cloud-init seed, ``writing``, ``write_seconds`` of image
   streaming, ``verifying``, ``seeding``, ``done``, reboot; ``wipe``: ``done Wiped`` and back to
   the loop; a 403 drops the token and looks it up again, as agent.sh does;
3. the installed OS: PXE answers "disk", ``boot_seconds`` later cloud-init phones home; the host
   then runs its OS until it is power-cycled for its release.

The one thing not done over HTTP is that power cycle: a watch of the PlunderHosts stands for the
BMCs (a host that enters ``deprovisioning`` while its OS runs is booted again, as the
controller's power-cycle + one-time PXE would). The same watch counts hosts by state, so the
benchmark learns when all are available without listing them.

Everything runs in one asyncio loop on a thread of its own; at most ``connections`` requests are
in flight at once (one aiohttp connector), so 10,000 hosts fit in one process. Each request's
latency is measured from the moment it holds a connection (waiting for one of our own
connections is the simulator's limit, not the service's) to the end of its answer.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from plunder.api.inventory import PlunderHost
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict, resource_for

HOSTS = resource_for(PlunderHost)
AGENT_FILES = ("agent/vmlinuz", "agent/initrd.img")
"""What a kernel boot fetches from /files/ (the benchmark puts small stand-ins there)."""


@dataclass(frozen=True)
class Timings:
    """How long a simulated host takes for what the simulator does not do for real."""

    poll_seconds: float = 2.0
    """The parked agent's least work poll interval (agent.sh's, when the boot service sends no
    longer ``retry=``)."""
    boot_seconds: float = 1.0
    """Firmware, iPXE and kernel until the agent's (or cloud-init's) first call."""
    write_seconds: tuple[float, float] = (1.0, 5.0)
    """The image write, drawn per host between the two."""
    retry_seconds: float = 2.0
    """agent.sh's pause after an answer that was not a yes (and iPXE's "ask again")."""
    power_on_spread: float = 5.0
    """Hosts are switched on over this many seconds (a rack's power sequencing)."""


def parked_wait(retry: str | None, floor: float) -> float:
    """Seconds a parked agent waits before asking again (agent.sh's ``poll_seconds``).

    The boot service's ``retry=``, at most 300; none or nonsense: ``floor``. The simulator keeps
    ``floor`` as the least it waits, so ``--poll-seconds`` still slows it.
    """
    seconds = int(retry) if retry is not None and retry.isdigit() else 0
    return max(floor, float(min(seconds, 300)))


def mac_of(index: int, prefix: str = "02:fe") -> str:
    """Host ``index``'s boot MAC (locally administered, unicast)."""
    return f"{prefix}:{(index >> 24) & 0xFF:02x}:{(index >> 16) & 0xFF:02x}:" + (
        f"{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"
    )


def hardware(index: int, mac: str) -> bytes:
    """An inspection report as agent.sh writes it."""
    report = {
        "systemVendor": "QEMU",
        "productName": "Standard PC (Q35 + ICH9, 2009)",
        "serialNumber": f"SIM{index:06d}",
        "cpu": {"count": 4, "model": "Simulated CPU"},
        "memoryMiB": 8192,
        "disks": [{"name": "/dev/vda", "sizeBytes": 20 * 2**30, "rotational": False}],
        "nics": [{"name": "eth0", "mac": mac}],
    }
    return json.dumps(report).encode()


class Calls:
    """When each call began and how long its answer took (two arrays: 16 bytes a call)."""

    def __init__(self) -> None:
        self.started = array.array("d")
        self.took = array.array("d")
        self.statuses: Counter[str] = Counter()

    def note(self, kind: str, started: float, took: float, status: int) -> None:
        """One call's answer."""
        self.started.append(started)
        self.took.append(took)
        self.statuses[f"{kind} {status}"] += 1

    def between(self, begun: float, ended: float) -> list[float]:
        """The latencies (seconds) of the calls begun within the span."""
        return [t for s, t in zip(self.started, self.took, strict=True) if begun <= s <= ended]

    def rate_and_p99(self, begun: float, ended: float) -> tuple[float, float]:
        """Calls per second over the span, and their 99th percentile latency (seconds)."""
        took = sorted(self.between(begun, ended))
        if not took:
            return 0.0, float("nan")
        return len(took) / max(ended - begun, 1e-9), took[min(len(took) - 1, int(0.99 * len(took)))]


@dataclass
class SimHost:
    """What one host holds between calls."""

    index: int
    mac: str
    token: str | None = None
    nonce: str = ""
    phone_home: str | None = None
    running_os: bool = False
    power_cycle: asyncio.Event = field(default_factory=asyncio.Event)
    last: str = ""
    """The last answer that was not a yes (for a host left behind)."""


class Fleet(threading.Thread):
    """``size`` simulated hosts against the boot service at ``boot_url`` (see the module).

    ``mac_prefix``: the first two bytes of every host's MAC (fleets side by side keep theirs apart).
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        boot_url: str,
        size: int,
        timings: Timings = Timings(),  # noqa: B008 - frozen
        connections: int = 256,
        seed: int = 0,
        mac_prefix: str = "02:fe",
    ) -> None:
        super().__init__(daemon=True)
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.boot_url = boot_url
        self.size = size
        self.timings = timings
        self.connections = connections
        self.random = random.Random(seed)
        self.calls = Calls()
        self.hosts = [SimHost(i, mac_of(i, mac_prefix)) for i in range(size)]
        self.by_mac = {host.mac: host for host in self.hosts}
        self.states: dict[str, tuple[str, bool]] = {}
        """MAC → (state, claimed) as the watch last saw it."""
        self.failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._slots: asyncio.Semaphore | None = None
        self.ready = threading.Event()

    # ------------------------------------------------------------------ from the benchmark

    def stop(self) -> None:
        """Switch every host off (their tasks cancelled) and wait for the thread."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout=60)

    def count(self, state: str, claimed: bool | None = None) -> int:
        """Hosts the watch last saw in ``state`` (and claimed or not, if given)."""
        return sum(
            1
            for seen, held in list(self.states.values())
            if seen == state and (claimed is None or held == claimed)
        )

    def behind(self, shown: int = 5) -> list[str]:
        """A few hosts not at rest, with the last refusal each heard."""
        found = []
        for host in self.hosts:
            state = self.states.get(host.mac, ("unknown", False))
            if state[0] not in ("available", "provisioned"):
                found.append(f"{host.mac} {state[0]}: {host.last}")
        return found[:shown]

    # ------------------------------------------------------------------------ the loop

    def run(self) -> None:
        """The fleet's loop (the thread's body)."""
        try:
            asyncio.run(self._main())
        except BaseException as error:  # noqa: BLE001 - kept for the benchmark to report
            self.failure = error
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._slots = asyncio.Semaphore(self.connections)
        client = k8s_client.async_client(self.kubeconfig)
        connector = aiohttp.TCPConnector(limit=self.connections)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            watch = asyncio.create_task(self._watch(client))
            lives = [asyncio.create_task(self._life(host)) for host in self.hosts]
            self.ready.set()
            await self._stopping.wait()
            for task in [watch, *lives]:
                task.cancel()
            await asyncio.gather(watch, *lives, return_exceptions=True)
        await client.close()

    async def _watch(self, client: AsyncClient) -> None:
        """The BMCs' view: states counted, a released host's OS power-cycled into PXE."""
        version: str | None = None
        while True:
            try:
                if version is None:
                    listing = client.list(HOSTS, namespace=self.namespace)
                    async for obj in listing:
                        self._seen(as_dict(obj))
                    version = listing.resourceVersion
                async for _, obj in client.watch(
                    HOSTS, namespace=self.namespace, resource_version=version
                ):
                    body = as_dict(obj)
                    version = body["metadata"]["resourceVersion"]
                    self._seen(body)
            except ApiError as error:
                if error.status.code == 410:
                    version = None
            except Exception:  # noqa: BLE001, S110 - a loaded API server drops watches
                pass
            await asyncio.sleep(0.5)

    def _seen(self, body: dict[str, Any]) -> None:
        mac = body["spec"].get("bootMACAddress", "")
        state = (body.get("status") or {}).get("state") or "discovered"
        self.states[mac] = (state, bool(body["spec"].get("consumerRef")))
        host = self.by_mac.get(mac)
        if host is not None and state == "deprovisioning" and host.running_os:
            host.running_os = False
            host.power_cycle.set()

    # ------------------------------------------------------------------ one host's life

    async def _life(self, host: SimHost) -> None:
        await asyncio.sleep(self.random.uniform(0, self.timings.power_on_spread))
        while True:
            if await self._pxe(host) == "agent":
                await self._agent(host)
            else:
                await self._installed_os(host)

    async def _pxe(self, host: SimHost) -> str:
        """The script requests of iPXE until it boots something: "agent" or "disk"."""
        while True:
            status, text = await self._request(host, "ipxe", "GET", f"/boot.ipxe?mac={host.mac}")
            if status == 200 and "\nkernel " in text:
                for path in AGENT_FILES:
                    await self._request(host, "files", "GET", f"/files/{path}")
                return "agent"
            if status == 200 and ("sanboot" in text or "\nexit" in text):
                return "disk"
            await asyncio.sleep(self.timings.retry_seconds)

    async def _agent(self, host: SimHost) -> None:
        """A boot of the agent, until it reboots."""
        await asyncio.sleep(self.timings.boot_seconds)
        host.token, host.nonce = None, secrets.token_hex(16)
        await self._lookup(host)
        report = hardware(host.index, host.mac)
        while await self._agent_call(host, "inspection", "POST", report) != 204:
            await asyncio.sleep(self.timings.retry_seconds)
        while True:
            status, text = await self._agent_request(host, "work", "GET", "work")
            if status == 403:
                host.token = None
                await self._lookup(host)
                continue
            fields = _fields(text) if status == 200 else {}
            action = fields.get("action")
            if action == "provision":
                if await self._provision(host):
                    return
            elif action == "wipe":
                await self._report(host, "done", "Wiped", "metadata wipe of /dev/vda")
            elif action == "reboot":
                return
            await asyncio.sleep(
                parked_wait(fields.get("retry"), self.timings.poll_seconds)
                if action == "wait"
                else self.timings.retry_seconds
            )

    async def _lookup(self, host: SimHost) -> None:
        form = f"mac={host.mac}&nonce={host.nonce}".encode()
        while host.token is None:
            status, text = await self._request(
                host,
                "lookup",
                "POST",
                f"/agent/v1/{host.mac}/lookup",
                data=form,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            if status == 200:
                host.token = _fields(text).get("token")
            else:
                await asyncio.sleep(self.timings.retry_seconds)

    async def _provision(self, host: SimHost) -> bool:
        """agent.sh's provision(): True when the write is done and the host reboots."""
        if not await self._report(host, "writing", "Writing", "streaming raw image to /dev/vda"):
            return False
        low, high = self.timings.write_seconds
        await asyncio.sleep(self.random.uniform(low, high))
        await self._report(host, "verifying", "Verifying", "sha256 of the downloaded image")
        await self._report(host, "seeding", "Seeding", "writing the cloud-init NoCloud seed")
        for item in ("meta-data", "user-data", "vendor-data", "network-config"):
            status, text = await self._agent_request(host, "seed", "GET", f"cloud-init/{item}")
            if item == "vendor-data" and status == 200:
                host.phone_home = yaml.safe_load(text)["phone_home"]["url"]
            elif status not in (200, 404):
                return False
        return await self._report(host, "done", "Provisioned", "image written and seeded", "1")

    async def _installed_os(self, host: SimHost) -> None:
        """cloud-init phones home once; then the OS runs until the host is power-cycled."""
        host.running_os = True
        await asyncio.sleep(self.timings.boot_seconds)
        while host.phone_home is not None and host.running_os:
            status, text = await self._request(
                host, "phone-home", "POST", host.phone_home, data=b"instance_id=sim\n", full=True
            )
            # cloud-init tries again on any error; a 409 that is not "ask again" is a refusal:
            # the host is not waiting for its OS (any more), and asking again changes nothing.
            if status == 204 or (status == 409 and "ask again" not in text):
                host.phone_home = None
            else:
                await asyncio.sleep(self.timings.retry_seconds)
        await host.power_cycle.wait()
        host.power_cycle.clear()

    # -------------------------------------------------------------------------- HTTP

    async def _report(
        self, host: SimHost, phase: str, reason: str, message: str, written: str = "0"
    ) -> bool:
        body = f"phase={phase}\nreason={reason}\nmessage={message}\nbytes={written}\n".encode()
        for _ in range(5):  # agent.sh tries a report a few times
            status = await self._agent_call(host, "status", "POST", body)
            if status == 204:
                return True
            if status == 403:
                return False
            await asyncio.sleep(self.timings.retry_seconds)
        return False

    async def _agent_call(self, host: SimHost, path: str, method: str, data: bytes) -> int:
        status, _ = await self._agent_request(host, path, method, path, data)
        return status

    async def _agent_request(
        self, host: SimHost, kind: str, method: str, path: str, data: bytes | None = None
    ) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {host.token}"} if host.token else {}
        return await self._request(
            host, kind, method, f"/agent/v1/{host.mac}/{path}", data=data, headers=headers
        )

    async def _request(
        self,
        host: SimHost,
        kind: str,
        method: str,
        path: str,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        full: bool = False,
    ) -> tuple[int, str]:
        """(status, body), 0 when the service did not answer; timed while a connection is held."""
        assert self._session is not None and self._slots is not None
        url = path if full else f"{self.boot_url}{path}"
        async with self._slots:
            started = time.monotonic()
            try:
                async with self._session.request(method, url, data=data, headers=headers) as reply:
                    status, text = reply.status, await reply.text(errors="replace")
            except (aiohttp.ClientError, TimeoutError) as error:
                status, text = 0, f"{type(error).__name__}: {error}"
            self.calls.note(kind, started, time.monotonic() - started, status)
        if status >= 300 or status == 0:
            host.last = f"{method} {kind}: {status} {text.strip()[:120]}"
        return status, text


def _fields(text: str) -> dict[str, str]:
    """key=value lines, as agent.sh reads them."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@contextlib.contextmanager
def running(fleet: Fleet) -> Any:
    """The fleet started, stopped afterwards."""
    fleet.start()
    fleet.ready.wait()
    try:
        yield fleet
    finally:
        fleet.stop()
