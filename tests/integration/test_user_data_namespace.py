"""A host's user-data Secret is served only from the host's own namespace.

Whoever may write a PlunderHost must not be able to have the boot service serve any Secret of
the cluster by naming it in ``spec.userData``.
"""

from __future__ import annotations

import asyncio
import base64

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret
from lightkube.types import PatchType

from plunder.boot.service import BootService
from tests.integration.test_agent_api import HARDWARE, HOSTS, MAC, NAME, boot, boot_agent, call

pytestmark = pytest.mark.integration
__all__ = ["boot"]  # the fixture, used by name

SECRET = "#cloud-config\nruncmd: [echo not-for-this-host]\n"


async def test_user_data_from_another_namespace_is_refused(
    boot: BootService, kube: Client, namespace: str
) -> None:
    token = await boot_agent(boot)
    await asyncio.sleep(0.2)
    await call(boot, "POST", f"/agent/v1/{MAC}/inspection", token, json=HARDWARE)
    other = f"{namespace}-other"
    kube.create(Namespace(metadata=ObjectMeta(name=other)))
    try:
        value = base64.b64encode(SECRET.encode()).decode()
        for where in (other, namespace):
            kube.create(
                Secret(metadata=ObjectMeta(name="s", namespace=where), data={"value": value})
            )
        image = {"url": "http://127.0.0.1/os.raw.gz", "checksum": "c" * 64, "format": "raw-gzip"}
        spec = {"image": image, "userData": {"name": "s", "namespace": other}, "accepted": True}
        kube.patch(HOSTS, NAME, {"spec": spec}, namespace=namespace, patch_type=PatchType.MERGE)
        kube.patch(
            HOSTS.Status,
            NAME,
            {"status": {"state": "provisioning"}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
        await asyncio.sleep(0.3)
        seed = f"/agent/v1/{MAC}/cloud-init/user-data"
        status, text = await call(boot, "GET", seed, token)
        assert status == 403 and "not-for-this-host" not in text

        # Named in the host's own namespace (explicitly or not), it is served.
        for reference in ({"name": "s", "namespace": namespace}, {"name": "s", "namespace": None}):
            kube.patch(
                HOSTS,
                NAME,
                {"spec": {"userData": reference}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
            await asyncio.sleep(0.3)
            assert await call(boot, "GET", seed, token) == (200, SECRET)
    finally:
        kube.delete(Namespace, other)
