"""Simulated hosts for chaos runs: each host's agent and installed OS, over the boot service's HTTP.

No tests here: the chaos world (:mod:`tests.integration.chaos_world`) runs the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError

from plunder.api.inventory import PlunderHost
from plunder.boot import trust
from plunder.k8s import client as k8s_client
from plunder.k8s.resources import as_dict
from plunder.reconcile import hoststate
from tests.integration.test_machine_world import HOSTS

POLL_SECONDS = 1.0
"""How soon a simulated agent asks again after an answer that was not a yes."""
HTTP_CONCURRENCY = 32
IMAGE_BYTES = 681574400
"""The size the simulated image's server announces (the lab's node image, lzop'd)."""
"""Agent calls in flight at once (the hosts of a rack booting together, not a thousand)."""


def has_work(host: PlunderHost) -> bool:
    """Whether the host's agent (or its installed OS) has something to do."""
    state = hoststate.state_of(host)
    return state == "deprovisioning" or (state == "provisioning" and hoststate.has_image_work(host))


@dataclass
class HostAgent:
    """What one host's agent holds between calls."""

    token: str | None = None
    boot: str = ""
    """The controller's cycle (:func:`trust.controller_cycle`) the host booted for."""
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))
    """The nonce of this boot, sent with each lookup (as agent.sh does)."""
    phone_home: str | None = None
    """The phone-home URL of the seed (vendor-data), for the installed OS."""
    refusal: str = ""
    """The last answer that was not a yes (shown for a host left behind)."""
    log: list[str] = field(default_factory=list)
    """What this boot printed (agent.sh's log), sent to the boot service as agent.sh sends it."""
    busy: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class HttpAgent(threading.Thread):
    """Every host's agent and installed OS, calling the boot service over HTTP as they do.

    A watch of the hosts stands for the agents' polls (1,000 parked hosts need not poll to learn
    that one has work); every move goes through the boot service's agent API as agent.sh and
    cloud-init make it: the lookup of a boot's token, work, the write's status, the seed, the
    phone home, the wipe; the boot's log (after the lookup, before an outcome) and the write's
    byte counts, as agent.sh sends them. A step that is not answered with a yes (the service was
    killed, the API server restarts, the service's cache is behind) is tried again a moment later,
    and the host never gives up: a host left behind is the system's doing, not the agent's.
    Entering ``deprovisioning`` is a new boot (the BMC power-cycles the host into the agent): its
    token is looked up again. Every host looks up its token first, parked while available, as
    after inspection.
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        boot_url: str,
        install_seconds: tuple[float, float] = (0.0, 0.0),
        seed: int = 0,
    ) -> None:
        super().__init__(daemon=True)
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.boot_url = boot_url
        self.install_seconds = install_seconds
        self.random = random.Random(seed)
        self.hosts: dict[str, PlunderHost] = {}
        """By boot MAC, from the watch."""
        self.agents: dict[str, HostAgent] = {}
        self.wiped: dict[str, set[str]] = defaultdict(set)
        """Host name → the deprovisioning cycles in which its agent wiped it."""
        self.parked = threading.Event()
        self.failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # noqa: BLE001 - kept for the run to report
            self.failure = error
            self.parked.set()

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout=30)

    def wiped_in(self, name: str, cycle: str) -> bool:
        """Whether host ``name``'s agent wiped it in deprovisioning cycle ``cycle``."""
        return cycle in self.wiped.get(name, ())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        client = k8s_client.async_client(self.kubeconfig)
        connector = aiohttp.TCPConnector(limit=HTTP_CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._session = session
            resource_version = await self._list(client)
            watch = asyncio.create_task(self._watch(client, resource_version))
            await asyncio.gather(*(self._park(mac) for mac in list(self.hosts)))
            self.parked.set()
            await self._stopping.wait()
            for task in [watch, *self._tasks]:
                task.cancel()
            await asyncio.gather(watch, *self._tasks, return_exceptions=True)
        await client.close()

    async def _list(self, client: AsyncClient) -> str | None:
        listing = client.list(HOSTS, namespace=self.namespace)
        async for obj in listing:
            self._seen(PlunderHost.model_validate(as_dict(obj)))
        return listing.resourceVersion

    async def _watch(self, client: AsyncClient, resource_version: str | None) -> None:
        """Follow the hosts; a broken watch goes on from the last version (afresh after 410)."""
        while True:
            try:
                async for _, obj in client.watch(
                    HOSTS, namespace=self.namespace, resource_version=resource_version
                ):
                    body = as_dict(obj)
                    resource_version = body["metadata"]["resourceVersion"]
                    self._seen(PlunderHost.model_validate(body))
            except ApiError as error:
                if error.status.code == 410:
                    resource_version = None
            except Exception:  # noqa: BLE001, S110 - the API server restarts: watch again
                pass
            await asyncio.sleep(0.5)

    def _seen(self, host: PlunderHost) -> None:
        mac = host.spec.boot_mac_address
        self.hosts[mac] = host
        agent = self.agents.setdefault(mac, HostAgent())
        agent.changed.set()
        if not agent.busy and has_work(host) and self.parked.is_set():
            agent.busy = True
            task = asyncio.create_task(self._serve(mac))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _park(self, mac: str) -> None:
        agent = self.agents[mac]
        while await self._token(self.hosts[mac], agent) is None:
            await asyncio.sleep(POLL_SECONDS)

    async def _serve(self, mac: str) -> None:
        """Take the host's steps until it has nothing more to do.

        No await comes between the last check and ``busy`` cleared: no event of the host is lost.
        """
        agent = self.agents[mac]
        try:
            while has_work(host := self.hosts[mac]):
                agent.changed.clear()
                try:
                    await self._step(host, agent)
                except Exception as error:  # noqa: BLE001 - noted; the host tries again
                    agent.refusal = f"{type(error).__name__}: {error}"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(agent.changed.wait(), POLL_SECONDS)
        finally:
            agent.busy = False

    async def _step(self, host: PlunderHost, agent: HostAgent) -> None:
        if hoststate.state_of(host) == "deprovisioning":
            await self._wipe(host, agent)
        elif not trust.writing_begun(host):
            await self._begin_write(host, agent)
        elif not trust.write_ended(host):
            await self._end_write(host, agent)
        else:
            await self._phone_home(host, agent)

    async def _token(self, host: PlunderHost, agent: HostAgent) -> str | None:
        """The token of this boot, looked up if the agent has none or the host booted anew."""
        cycle = trust.controller_cycle(host)
        if cycle and cycle != agent.boot:  # power-cycled into the agent for a wipe
            agent.boot, agent.token, agent.nonce = cycle, None, secrets.token_hex(16)
            agent.log = []  # a new boot, a new log (agent.sh keeps it in memory)
        if agent.token is None:
            form = {"mac": host.spec.boot_mac_address, "nonce": agent.nonce}
            status, text = await self._call(agent, "POST", host, "lookup", data=form)
            if status != 200:
                return None
            agent.token = text.removeprefix("token=").strip()
            agent.log.append("plunder-agent: lookup answered: this boot's token received")
            await self._send_log(host, agent, agent.token)
        return agent.token

    async def _work(self, host: PlunderHost, agent: HostAgent, action: str) -> str | None:
        """The token, if the boot service tells this boot to do ``action``."""
        token = await self._token(host, agent)
        if token is None:
            return None
        status, text = await self._call(agent, "GET", host, "work", token)
        return token if status == 200 and f"action={action}\n" in text else None

    async def _begin_write(self, host: PlunderHost, agent: HostAgent) -> None:
        if (token := await self._work(host, agent, "provision")) is not None:
            await self._report(
                host, agent, token, "writing", "Writing", "streaming the image", image=IMAGE_BYTES
            )

    async def _end_write(self, host: PlunderHost, agent: HostAgent) -> None:
        """Fetch the seed (its vendor-data names the phone home), write, say done."""
        token = await self._token(host, agent)
        if token is None:
            return
        status, text = await self._call(agent, "GET", host, "cloud-init/vendor-data", token)
        if status != 200:
            return
        if agent.phone_home is None:  # the first try of this write: the image streams now
            await asyncio.sleep(self.random.uniform(*self.install_seconds))
            counts = f"downloaded={IMAGE_BYTES // 2}\nwritten={IMAGE_BYTES}\ntotal={IMAGE_BYTES}\n"
            for _ in range(3):  # agent.sh's next report would carry them: the same, sooner
                status, _ = await self._call(agent, "POST", host, "progress", token, counts)
                if status != 409:
                    break
                await asyncio.sleep(0.2)  # the service's cache a moment behind its own write
            agent.log.append(f"plunder-agent: writing: {IMAGE_BYTES // 2 >> 20} MiB downloaded")
        agent.phone_home = yaml.safe_load(text)["phone_home"]["url"]
        await self._report(host, agent, token, "done", "Provisioned", "image written", "1")

    async def _phone_home(self, host: PlunderHost, agent: HostAgent) -> None:
        if agent.phone_home is None:
            agent.refusal = "no phone-home URL: the write ended before the seed was fetched"
            return
        await self._request(agent, "POST", agent.phone_home, data="instance_id=chaos\n")

    async def _wipe(self, host: PlunderHost, agent: HostAgent) -> None:
        if (token := await self._work(host, agent, "wipe")) is not None:
            # The disk is wiped now, whatever becomes of the report.
            self.wiped[host.metadata.name or ""].add(trust.controller_cycle(host))
            agent.phone_home = None
            await self._report(host, agent, token, "done", "Wiped", "metadata wipe of /dev/vda")

    async def _report(
        self,
        host: PlunderHost,
        agent: HostAgent,
        token: str,
        phase: str,
        reason: str,
        message: str,
        written: str = "0",
        image: int | None = None,
    ) -> None:
        body = f"phase={phase}\nreason={reason}\nmessage={message}\nbytes={written}\n"
        if image is not None:
            body += f"image_bytes={image}\n"
        agent.log.append(f"plunder-agent: status {phase} {reason}")
        if phase in ("done", "failed"):  # agent.sh sends its log before an outcome
            await self._send_log(host, agent, token)
        await self._call(agent, "POST", host, "status", token, body)

    async def _send_log(self, host: PlunderHost, agent: HostAgent, token: str) -> None:
        """The boot's log so far (best effort, as agent.sh sends it)."""
        text = "".join(f"[{n}.00] {line}\n" for n, line in enumerate(agent.log))
        await self._call(agent, "POST", host, "log", token, text)

    async def _call(
        self,
        agent: HostAgent,
        method: str,
        host: PlunderHost,
        path: str,
        token: str | None = None,
        data: str | dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """One agent API call; a 403 drops the token (the agent looks it up again)."""
        url = f"{self.boot_url}/agent/v1/{host.spec.boot_mac_address}/{path}"
        status, text = await self._request(agent, method, url, token, data)
        if status == 403 and token is not None:
            agent.token = None
        return status, text

    async def _request(
        self,
        agent: HostAgent,
        method: str,
        url: str,
        token: str | None = None,
        data: str | dict[str, str] | None = None,
    ) -> tuple[int, str]:
        """(status, body); status 0 when the service did not answer."""
        assert self._session is not None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            async with self._session.request(method, url, headers=headers, data=data) as reply:
                status, text = reply.status, await reply.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            status, text = 0, f"{type(error).__name__}: {error}"
        if status >= 300 or status == 0:
            path = url.split("?")[0].rsplit("/", 1)[-1]  # no token in what is shown
            agent.refusal = f"{method} {path}: {status} {text.strip()}"
        return status, text
