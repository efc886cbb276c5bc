"""PlunderHost power: a daemon per host with a BMC converges its power and does what is asked.

What is asked comes as annotations, so both the controller and a person (``plunderctl power
cycle``) go through one place, as Metal3's ``reboot.metal3.io`` does:

- ``plunder.dev/power-action: pxe-on|pxe-reboot`` is set by the host handler after a move of
  the state machine (see ``hoststate.power_after``);
- ``plunder.dev/reboot`` is set by ``plunderctl power cycle``: power-cycle, booting as usual.

Otherwise the daemon converges ``spec.online`` to the BMC and records ``status.poweredOn``.
Powering on a provisioned host sets a one-time disk boot; any other host a one-time PXE boot.

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
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kopf
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.resources import resource_for
from plunder.operator.settings import PREFIX
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

_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="bmc")


def backoff(failures: int) -> float:
    """The delay before retry number ``failures``: 2, 4, 8, … seconds, at most two minutes."""
    return float(min(BACKOFF_MAX, 2 ** max(1, failures)))


async def request_action(client: AsyncClient, host: PlunderHost, action: str) -> None:
    """Ask the host's power daemon to do ``action`` (an annotation it removes when done)."""
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
        ca_file=_ca_file(data["ca.crt"]) if data.get("ca.crt") else None,
    )


def _ca_file(pem: str) -> str:
    """A file holding ``pem`` (requests takes a CA bundle only as a path); one per content."""
    digest = hashlib.sha256(pem.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"plunder-bmc-ca-{digest}.pem"
    if not path.exists():
        path.write_text(pem)
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


def _wants_attention(body: kopf.Body) -> bool:
    """Whether something is asked of the BMC that the next poll should not wait for."""
    annotations = body.get("metadata", {}).get("annotations", {})
    if ACTION_ANNOTATION in annotations or REBOOT_ANNOTATION in annotations:
        return True
    powered = body.get("status", {}).get("poweredOn")
    return powered is not None and powered != body.get("spec", {}).get("online", True)


@kopf.daemon(
    _INFO.group,
    _INFO.version,
    _INFO.plural,
    when=lambda spec, **_: bool(spec.get("bmc")),
    cancellation_timeout=5.0,
)
async def plunderhost_power(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, logger: kopf.Logger, **_: Any
) -> None:
    """Keep one host's power as asked, as long as it has a BMC."""
    client: AsyncClient = memo.client
    failures = 0
    last_reason: str | None = None
    while not stopped:
        host = PlunderHost.model_validate(dict(body))
        fault = await power_step(client, host)
        if fault is None:
            failures, last_reason, delay = 0, None, POLL_SECONDS
        else:
            failures += 1
            delay = backoff(failures)
            if fault.reason != last_reason:
                kopf.warn(body, reason=fault.reason, message=str(fault))
                last_reason = fault.reason
            # The message names the address, never the credentials.
            logger.warning("BMC of %s: %s (retry in %.0fs)", host.metadata.name, fault, delay)
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not stopped and loop.time() < started + delay:
            await asyncio.sleep(0.5)
            if fault is None and loop.time() > started + 2 and _wants_attention(body):
                break
