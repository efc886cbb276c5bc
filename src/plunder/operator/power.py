"""PlunderHost power: hosts with a BMC get their power converged and what is asked done.

What is asked comes as annotations, so both the controller and a person (``plunderctl power
cycle``) go through one place, as Metal3's ``reboot.metal3.io`` does:

- ``plunder.dev/power-action: pxe-on|pxe-reboot`` is set by the host handler after a move of
  the state machine (see ``hoststate.power_after``);
- ``plunder.dev/reboot`` is set by ``plunderctl power cycle``: power-cycle, booting as usual.

Otherwise a round converges ``spec.online`` to the BMC and records ``status.poweredOn``.
Powering on a provisioned host sets a one-time disk boot; any other host a one-time PXE boot.

Rounds are not one task per host: the hosts that have a BMC (hosts without one are not followed
at all) are keys in one work queue (:mod:`plunder.operator.workqueue`) with :data:`WORKERS`
workers. Each round asks to run again after :data:`POLL_SECONDS`, or after a backoff when it
failed; a host's event that asks for something (an annotation, or a power state that differs
from ``spec.online``) brings its round forward.

The drivers block (sushy, pyghmi), so every BMC call runs in a worker thread of a pool of our
own, under a deadline: a BMC that hangs holds one thread, never the event loop or other hosts.
Each outcome is the ``BMCReachable`` condition: True, or False with the driver's reason
(``BMCAuthFailed``, ``BMCUnreachable``, ``BMCTLSError``, ``BMCTimeout``, …) and a message a person
can act on; failures are retried with a growing delay, and a Warning event is posted when the
reason changes. Credentials are read from the Secret for each attempt and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import kopf
from cryptography import x509
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.resources import resource_for
from plunder.operator.caches import first, without_managed_fields
from plunder.operator.settings import PREFIX
from plunder.operator.workqueue import WorkQueue
from plunder.power import base, registry
from plunder.reconcile import conditions, hoststate

_INFO = PlunderHost.info
log = logging.getLogger(__name__)

ACTION_ANNOTATION = f"{PREFIX}/power-action"
REBOOT_ANNOTATION = f"{PREFIX}/reboot"
CONDITION = "BMCReachable"
POLL_SECONDS = 15.0
"""How often the BMC is asked for the power state when nothing is asked of it."""
DEADLINE_SECONDS = 60.0
"""The most one round of BMC calls (a power cycle is several) may take."""
BACKOFF_MAX = 120.0
ECHO_GRACE = 2.0
"""Seconds after a round during which a host's events do not bring the next round forward."""
WORKERS = 32
"""Hosts whose BMC is talked to at once: one per thread of the pool, so a hanging BMC holds one
worker and one thread, and the others go on."""

Key = tuple[str, str]
"""(namespace, name) of a PlunderHost."""

_POOL = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="bmc")


def backoff(failures: int) -> float:
    """The delay before retry number ``failures``: 2, 4, 8, … seconds, at most two minutes."""
    return float(min(BACKOFF_MAX, 2 ** max(1, failures)))


async def request_action(client: AsyncClient, host: PlunderHost, action: str) -> None:
    """Ask the host's power loop to do ``action`` (an annotation it removes when done)."""
    await client.patch(
        resource_for(PlunderHost),
        host.metadata.name or "",
        {"metadata": {"annotations": {ACTION_ANNOTATION: action}}},
        namespace=host.metadata.namespace,
        patch_type=PatchType.MERGE,
    )


async def read_settings(client: AsyncClient, host: PlunderHost) -> base.BMCSettings:
    """The host's BMC settings with the credentials from its Secret.

    A ``ca.crt`` key in the Secret is the CA to trust for an https BMC (instead of the system's).

    Raises:
        base.BMCAddressError: The address cannot be parsed.
        base.BMCCredentialsError: The Secret is missing or incomplete.
        base.BMCCAError: Its ``ca.crt`` cannot be used.
    """
    bmc = host.spec.bmc
    assert bmc is not None
    address = base.parse_address(bmc.address)
    try:
        secret = await client.get(Secret, bmc.credentials_name, namespace=host.metadata.namespace)
    except ApiError as error:
        if error.status.code == 404:
            raise base.BMCCredentialsError(
                f"Secret {bmc.credentials_name} (spec.bmc.credentialsName) does not exist in "
                f"namespace {host.metadata.namespace}: create it with username and password"
            ) from None
        raise
    data = {key: base64.b64decode(value).decode() for key, value in (secret.data or {}).items()}
    if not data.get("username") or not data.get("password"):
        raise base.BMCCredentialsError(
            f"Secret {bmc.credentials_name} needs both username and password keys"
        )
    return base.BMCSettings(
        address=address,
        credentials=base.Credentials(data["username"], data["password"]),
        verify_certificate=not bmc.disable_certificate_verification,
        ca_file=_ca_file(data["ca.crt"], bmc.credentials_name) if data.get("ca.crt") else None,
    )


_ca_folder: Path | None = None
"""This process's private folder of CA files (made by ``mkdtemp``: mode 0700, a name nobody can
guess), so no other user of a shared temporary directory can plant or swap a CA."""


def _ca_file(pem: str, secret: str) -> str:
    """A file holding ``pem`` (requests takes a CA bundle only as a path); one per content.

    The file lives in a private folder under the temporary directory (``TMPDIR``, else /tmp: the
    shipped Deployment mounts an emptyDir there, its root filesystem being read-only), written
    whole and then renamed, so a reader never sees half of it.

    Raises:
        base.BMCCAError: ``pem`` is not a PEM certificate, or it cannot be written.
    """
    global _ca_folder
    try:
        x509.load_pem_x509_certificates(pem.encode())
    except ValueError:
        raise base.BMCCAError(
            f"the ca.crt key of Secret {secret} is not a PEM certificate (or bundle): put the "
            "BMC's CA certificate there, -----BEGIN CERTIFICATE----- and all"
        ) from None
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    try:
        if _ca_folder is None or not _ca_folder.is_dir():
            _ca_folder = Path(tempfile.mkdtemp(prefix="plunder-bmc-ca-"))
        path = _ca_folder / f"{digest}.pem"
        if not path.exists():
            partial = _ca_folder / f".{digest}.partial"
            partial.write_text(pem)
            partial.replace(path)
    except OSError as error:
        raise base.BMCCAError(
            f"the ca.crt key of Secret {secret} cannot be kept in a file for the TLS client "
            f"({error.strerror or error} in {tempfile.gettempdir()}): give the controller a "
            "writable temporary directory (an emptyDir at /tmp, as config/manager does, or TMPDIR)"
        ) from None
    return str(path)


def boot_device_for(host: PlunderHost) -> base.BootDevice:
    """Provisioned hosts boot their disk; every other host the network (the agent)."""
    return "disk" if hoststate.state_of(host) == "provisioned" else "pxe"


def act(driver: base.PowerDriver, host: PlunderHost) -> base.PowerState:
    """One round of BMC calls for ``host`` (blocking): what is asked, else converge; the state."""
    annotations = host.metadata.annotations or {}
    action = annotations.get(ACTION_ANNOTATION)
    try:
        if action == "pxe-reboot":
            driver.set_one_time_boot("pxe")
            driver.reboot()
        elif action == "pxe-on":
            if driver.get_power_state() == "off":
                driver.set_one_time_boot("pxe")
                driver.set_power_state("on")
        elif REBOOT_ANNOTATION in annotations:
            if host.spec.online:
                driver.set_one_time_boot(boot_device_for(host))
                driver.reboot()
        else:
            state = driver.get_power_state()
            if host.spec.online and state == "off":
                driver.set_one_time_boot(boot_device_for(host))
                driver.set_power_state("on")
            elif not host.spec.online and state == "on":
                driver.set_power_state("off")
        return driver.get_power_state()
    finally:
        driver.close()


async def _write_outcome(
    client: AsyncClient,
    host: PlunderHost,
    powered_on: bool | None,
    reason: str,
    message: str,
    done: list[str],
) -> None:
    ok = powered_on is not None
    condition = conditions.condition(
        CONDITION, "True" if ok else "False", reason, message, datetime.now(UTC)
    )
    current = host.status.conditions if host.status else None
    status: dict[str, Any] = {
        "conditions": [c.to_api() for c in conditions.set_condition(current, condition)]
    }
    if ok:
        status["poweredOn"] = powered_on
    name, namespace = host.metadata.name or "", host.metadata.namespace
    await client.patch(
        resource_for(PlunderHost).Status,
        name,
        {"status": status},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    if done:
        await client.patch(
            resource_for(PlunderHost),
            name,
            {"metadata": {"annotations": dict.fromkeys(done)}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )


async def power_step(client: AsyncClient, host: PlunderHost) -> base.PowerError | None:
    """Do one round for ``host`` and record it; the fault, if any."""
    annotations = host.metadata.annotations or {}
    asked = [key for key in (ACTION_ANNOTATION, REBOOT_ANNOTATION) if key in annotations]
    try:
        settings = await read_settings(client, host)
        driver = registry.driver_for(settings)
        loop = asyncio.get_running_loop()
        try:
            state = await asyncio.wait_for(
                loop.run_in_executor(_POOL, act, driver, host), DEADLINE_SECONDS
            )
        except TimeoutError:
            raise base.BMCTimeoutError(
                f"{settings.address} did not finish within {DEADLINE_SECONDS:.0f}s"
            ) from None
    except base.PowerError as error:
        await _write_outcome(client, host, None, error.reason, str(error), [])
        return error
    message = f"the BMC answers; the host is {state}"
    await _write_outcome(client, host, state == "on", "Reachable", message, asked)
    return None


def _wants_attention(body: Mapping[str, Any]) -> bool:
    """Whether something is asked of the BMC that the next poll should not wait for."""
    annotations = body.get("metadata", {}).get("annotations", {})
    if ACTION_ANNOTATION in annotations or REBOOT_ANNOTATION in annotations:
        return True
    powered = body.get("status", {}).get("poweredOn")
    return powered is not None and powered != body.get("spec", {}).get("online", True)


@kopf.index(_INFO.group, _INFO.version, _INFO.plural)
async def plunderhosts_with_bmc(
    body: kopf.Body, namespace: str | None, name: str, **_: Any
) -> dict[Key, dict[str, Any]]:
    """The bodies of the hosts that have a BMC (without managedFields): what a round reads."""
    if not (body.get("spec") or {}).get("bmc"):
        return {}
    return {(namespace or "", name): without_managed_fields(body)}


@dataclass
class PowerMemory:
    """What the power loop of one host keeps between rounds."""

    failures: int = 0
    last_reason: str | None = None
    stepping: bool = False
    settled_at: float = float("-inf")
    """When the last round that reached the BMC ended (monotonic)."""


class PowerController:
    """The work queue of hosts with a BMC, reconciled by :data:`WORKERS` workers."""

    def __init__(self, memo: kopf.Memo, hosts: kopf.Index[Key, dict[str, Any]]) -> None:
        self.memo = memo
        self.hosts = hosts
        self.queue: WorkQueue[Key] = WorkQueue(self.round, WORKERS, POLL_SECONDS)
        self.memories: dict[Key, PowerMemory] = {}

    def attend(self, key: Key, body: Mapping[str, Any]) -> None:
        """A host with a BMC changed: a new one gets a round now, an asking one soon.

        The first event after a round is often that round's own write, which still shows what
        it just did as asked: within :data:`ECHO_GRACE` seconds of a round, the next one waits
        for the cache to catch up rather than doing it twice. A failing BMC keeps its backoff.
        """
        memory = self.memories.get(key)
        if memory is None:
            self.memories[key] = PowerMemory()
            self.queue.add(key)
        elif memory.failures == 0 and _wants_attention(body):
            since = 0.0 if memory.stepping else time.monotonic() - memory.settled_at
            wait = ECHO_GRACE - since
            if wait > 0:
                self.queue.add_after(key, wait)
            else:
                self.queue.add(key)

    def forget(self, key: Key) -> None:
        """The host is gone, or has no BMC any more."""
        self.memories.pop(key, None)
        self.queue.forget(key)

    async def round(self, key: Key) -> float | None:
        """One round of BMC calls for one host; when to do the next."""
        body = first(self.hosts, key)
        memory = self.memories.get(key)
        if body is None or memory is None:
            return None
        host = PlunderHost.model_validate(body)
        memory.stepping = True
        try:
            fault = await power_step(self.memo.client, host)
        finally:
            memory.stepping = False
        if fault is None:
            memory.failures, memory.last_reason, memory.settled_at = 0, None, time.monotonic()
            return POLL_SECONDS
        memory.failures += 1
        delay = backoff(memory.failures)
        if fault.reason != memory.last_reason:
            kopf.warn(kopf.Body(cast(Any, body)), reason=fault.reason, message=str(fault))
            memory.last_reason = fault.reason
        # The message names the address, never the credentials.
        log.warning("BMC of %s: %s (retry in %.0fs)", key[1], fault, delay)
        return delay


@kopf.on.startup()
async def start_power_controller(memo: kopf.Memo, **kwargs: Any) -> None:
    """One queue of hosts with a BMC, shared by the handlers through the memo."""
    memo.power = PowerController(memo, kwargs["plunderhosts_with_bmc"])


@kopf.on.cleanup()
async def stop_power_controller(memo: kopf.Memo, **_: Any) -> None:
    """Stop the rounds (one in flight is cancelled; its BMC thread finishes on its own)."""
    controller: PowerController = memo.power
    await controller.queue.stop()


@kopf.on.event(_INFO.group, _INFO.version, _INFO.plural)
async def plunderhost_power_event(
    type: str | None, body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """Follow the hosts that have a BMC."""
    controller: PowerController = memo.power
    key = (namespace or "", name)
    if type == "DELETED" or not (body.get("spec") or {}).get("bmc"):
        controller.forget(key)
    else:
        controller.attend(key, body)
