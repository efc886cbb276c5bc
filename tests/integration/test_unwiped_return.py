"""A host goes back to the pool only after its wipe: the boot service's agent API, for real.

The agent was told to write an image; the machine was deleted meanwhile, so the host is
``deprovisioning`` when the agent reports its write ``done``. That is the opposite of a wipe:
the host stays out of the pool until the agent, booted again, reports ``done`` for the wipe.
"""

from __future__ import annotations

import asyncio

import pytest
from lightkube import Client
from lightkube.types import PatchType

from plunder.boot.service import BootService
from tests.integration.test_agent_api import (
    HARDWARE,
    HOSTS,
    MAC,
    NAME,
    boot,
    boot_agent,
    call,
    host_of,
    wait_state,
)

pytestmark = pytest.mark.integration
__all__ = ["boot"]  # the fixture, used by name


async def test_a_late_done_for_an_image_write_does_not_return_the_host_unwiped(
    boot: BootService, kube: Client, namespace: str
) -> None:
    token = await boot_agent(boot)
    await asyncio.sleep(0.2)
    assert (await call(boot, "POST", f"/agent/v1/{MAC}/inspection", token, json=HARDWARE))[0] == 204
    await wait_state(kube, namespace, "available")
    kube.patch(
        HOSTS, NAME, {"spec": {"accepted": True}}, namespace=namespace, patch_type=PatchType.MERGE
    )  # a person accepted it: it may be written and wiped
    # the controller's move (the operator's tests cover it): the work was taken away
    kube.patch(
        HOSTS.Status,
        NAME,
        {"status": {"state": "deprovisioning"}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )
    await asyncio.sleep(0.3)
    status = f"/agent/v1/{MAC}/status"
    written = "phase=done\nreason=Provisioned\nmessage=image written and seeded in 9s\nbytes=1\n"
    # refused (the boot that wrote is not this deprovisioning's boot) or ignored: never a wipe
    assert (await call(boot, "POST", status, token, data=written))[0] in (204, 403)
    await asyncio.sleep(0.5)
    host = await host_of(kube, namespace)
    assert host["status"]["state"] == "deprovisioning", "returned to the pool unwiped"
    token = await boot_agent(boot)  # the BMC's power cycle boots the agent again
    # a done for an image write, or an installer's last step (only phase=done): not a wipe
    for done in (written, "phase=done\n"):
        assert (await call(boot, "POST", status, token, data=done))[0] in (204, 403)
        await asyncio.sleep(0.5)
        assert (await host_of(kube, namespace))["status"]["state"] == "deprovisioning"

    assert await call(boot, "GET", f"/agent/v1/{MAC}/work", token) == (
        200,
        "action=wipe\nwipe_mode=metadata\n",
    )
    wiped = "phase=done\nreason=Wiped\nmessage=metadata wipe of /dev/vda\n"
    assert (await call(boot, "POST", status, token, data=wiped))[0] == 204
    host = await wait_state(kube, namespace, "available")
    conditions = {c["type"]: (c["status"], c["reason"]) for c in host["status"]["conditions"]}
    assert conditions["Provisioned"] == ("False", "Deprovisioned")
