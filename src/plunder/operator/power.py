"""PlunderHost power: hosts with a BMC get their power converged to what their state needs.

Level-triggered, as a controller should be: what the BMC must do follows from the host's
state (``hoststate.power_wish``: powered on into the agent when provisioning starts,
power-cycled into it when deprovisioning starts), so the move of the state machine is the only
write it takes. Each round compares the wish with :data:`DONE_ANNOTATION`, the mark of the last
wish done (written by this loop only, after the BMC did it), and does what is still due: a
controller killed between a move and the BMC call loses nothing, and a BMC that was away gets
the action when it is back. A crash between the BMC call and the mark repeats the action once
(a second power cycle into the agent, which is harmless).

``plunder.dev/reboot`` is set by ``plunderctl power cycle``: power-cycle, booting as usual.
Otherwise a round converges ``spec.online`` to the BMC and records ``status.poweredOn``.
Powering on a provisioned host sets a one-time disk boot; any other host a one-time PXE boot.
A paused host gets no round at all, nor does one whose status waits to be rebuilt after a move.

Rounds are not one task per host: the hosts that have a BMC (hosts without one are not followed
at all) are keys in one work queue (:mod:`plunder.operator.workqueue`) with :data:`WORKERS`
workers. Each round asks to run again after :data:`POLL_SECONDS`, or after a backoff when it
failed; a host's event that asks for something (a wish not done, the reboot annotation, or a
power state that differs from ``spec.online``) brings its round forward.

The drivers block (sushy, pyghmi), so every BMC call runs in a worker thread of a pool of our
own, under a deadline: a BMC that hangs holds one thread, never the event loop or other hosts.
Each outcome is the ``BMCReachable`` condition: True, or False with the driver's reason
(``BMCAuthFailed``, ``BMCUnreachable``, ``BMCTLSError``, ``BMCTimeout``, …) and a message a person
can act on; failures are retried with a growing delay, and a Warning event is posted when the
reason changes. Credentials are read from the Secret for each attempt and never logged.

The condition shares ``status.conditions`` with the controller's and the boot service's
``Provisioned``: it is written guarded by the resourceVersion of the copy it was decided on and,
when another writer came first, merged into a fresh copy (``statusmerge.rebase``), never over it.
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
from plunder.k8s.resources import as_dict, resource_for
from plunder.operator.caches import first, without_managed_fields
from plunder.operator.settings import PREFIX
from plunder.operator.workqueue import WorkQueue
from plunder.power import base, registry
from plunder.reconcile import conditions, hoststate, statusmerge, statusrecord

_INFO = PlunderHost.info
log = logging.getLogger(__name__)

ACTION_ANNOTATION = f"{PREFIX}/power-action"
"""The edge-triggered request of earlier versions: no longer read, removed where it is found."""
DONE_ANNOTATION = f"{PREFIX}/power-done"
"""The :attr:`hoststate.PowerWish.mark` of the last wish this loop did (its only writer)."""
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


def done_mark(host: PlunderHost) -> str | None:
    """The mark of the last power wish done for ``host``."""
    return (host.metadata.annotations or {}).get(DONE_ANNOTATION)


def act(
    driver: base.PowerDriver, host: PlunderHost, wish: hoststate.PowerWish | None
) -> base.PowerState:
    """One round of BMC calls for ``host`` (blocking): the wish, else what is asked, else converge.

    Returns:
        The power state after the round.
    """
    annotations = host.metadata.annotations or {}
    try:
        if wish is not None and wish.action == "pxe-reboot":
            driver.set_one_time_boot("pxe")
            driver.reboot()
        elif wish is not None and wish.action == "pxe-on":
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


WRITE_ATTEMPTS = 5
"""Guarded writes of one outcome before the round gives up (and the next round tries again)."""


async def _fresh(client: AsyncClient, host: PlunderHost) -> PlunderHost | None:
    try:
        body = await client.get(
            resource_for(PlunderHost), host.metadata.name or "", namespace=host.metadata.namespace
        )
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise
    return PlunderHost.model_validate(as_dict(body))


async def _write_outcome(
    client: AsyncClient,
    host: PlunderHost,
    powered_on: bool | None,
    reason: str,
    message: str,
    annotations: dict[str, str | None],
) -> None:
    """Record the round: the condition (guarded, merged), then the mark and the asks it did."""
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
    fresh: PlunderHost | None = host
    for attempt in range(WRITE_ATTEMPTS):
        if fresh is None:
            return  # the host is gone
        try:
            await client.patch(
                resource_for(PlunderHost).Status,
                name,
                {
                    "metadata": {"resourceVersion": fresh.metadata.resource_version},
                    "status": statusmerge.rebase(host, fresh, status),
                },
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
            break
        except ApiError as error:
            if error.status.code == 404:
                return
            if error.status.code != 409 or attempt == WRITE_ATTEMPTS - 1:
                raise
        fresh = await _fresh(client, host)
    if annotations:
        await client.patch(
            resource_for(PlunderHost),
            name,
            {"metadata": {"annotations": annotations}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )


async def power_step(
    client: AsyncClient, host: PlunderHost, marked: str | None = None
) -> base.PowerError | None:
    """Do one round for ``host`` and record it; the fault, if any.

    ``marked`` is the mark this loop wrote last for the host, which the cached copy may not show
    yet: a wish with that mark is done already.
    """
    present = host.metadata.annotations or {}
    wish = hoststate.power_due(host, done_mark(host))
    if wish is not None and wish.mark == marked:
        wish = None
    # What the round does is what it records as done: the wish comes before an ask to reboot.
    answered: dict[str, str | None] = {DONE_ANNOTATION: wish.mark} if wish is not None else {}
    if ACTION_ANNOTATION in present:
        answered[ACTION_ANNOTATION] = None
    reboot_asked = present.get(REBOOT_ANNOTATION) if wish is None else None
    try:
        settings = await read_settings(client, host)
        driver = registry.driver_for(settings)
        loop = asyncio.get_running_loop()
        try:
            state = await asyncio.wait_for(
                loop.run_in_executor(_POOL, act, driver, host, wish), DEADLINE_SECONDS
            )
        except TimeoutError:
            raise base.BMCTimeoutError(
                f"{settings.address} did not finish within {DEADLINE_SECONDS:.0f}s"
            ) from None
    except base.PowerError as error:
        await _write_outcome(client, host, None, error.reason, str(error), {})
        return error
    message = f"the BMC answers; the host is {state}"
    await _write_outcome(client, host, state == "on", "Reachable", message, answered)
    if reboot_asked is not None:
        await _answer_reboot(client, host, reboot_asked)
    return None


async def _answer_reboot(client: AsyncClient, host: PlunderHost, asked: str) -> None:
    """Remove the reboot annotation, if it still holds the ask this round did.

    A JSON patch that tests the value first: a person who asks again while the round runs (a
    new value, ``plunderctl power cycle`` writes the time) keeps the ask for the next round.
    """
    path = f"/metadata/annotations/{REBOOT_ANNOTATION.replace('~', '~0').replace('/', '~1')}"
    try:
        await client.patch(
            resource_for(PlunderHost),
            host.metadata.name or "",
            [{"op": "test", "path": path, "value": asked}, {"op": "remove", "path": path}],
            namespace=host.metadata.namespace,
            patch_type=PatchType.JSON,
        )
    except ApiError as error:
        if error.status.code not in (404, 409, 422):  # gone, or asked again: the next round
            raise


def _wants_attention(body: Mapping[str, Any]) -> bool:
    """Whether something is asked of the BMC that the next poll should not wait for."""
    annotations = body.get("metadata", {}).get("annotations", {})
    if REBOOT_ANNOTATION in annotations:
        return True
    host = PlunderHost.model_validate(dict(body))
    if hoststate.power_due(host, done_mark(host)) is not None:
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
    marked: str | None = None
    """The power wish this loop did last for the host (the cache may not show its mark yet)."""


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
        if statusrecord.is_paused(host) or statusrecord.awaits_restore(host):
            return POLL_SECONDS  # nothing acts on it: not even a power-on its state would want
        wish = hoststate.power_due(host, done_mark(host))
        memory.stepping = True
        try:
            fault = await power_step(self.memo.client, host, memory.marked)
        finally:
            memory.stepping = False
        if fault is None:
            memory.failures, memory.last_reason, memory.settled_at = 0, None, time.monotonic()
            if wish is not None:
                memory.marked = wish.mark
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
