"""A host that never phones home is not stuck forever: the provisioning deadline fails it.

The test plays a host whose installed OS never reports in (its firmware stopped in a menu, say):
the controller, run with a short ``--provisioning-timeout``, moves it to ``error`` with the
reason ``ProvisioningTimeout``, a Warning event and the ``Provisioned`` condition saying why; a
spec change then retries the provisioning, as for every other failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from plunder.api.inventory import PlunderHost
from plunder.k8s.resources import resource_for
from plunder.lab.plane import Plane
from tests.conftest import create_available_host, eventually, provider_controller

pytestmark = pytest.mark.integration

TIMEOUT_S = 4
IMAGE = {"url": "http://172.31.99.1:8080/files/os.raw", "checksum": "a" * 64}


def test_a_host_that_never_phones_home_fails_with_provisioning_timeout(
    plane: Plane, kube: Client, namespace: str, tmp_path: Path
) -> None:
    hosts = resource_for(PlunderHost)
    create_available_host(kube, namespace, "h1", "00:50:56:a5:11:20")

    def status() -> dict[str, object]:
        return dict(kube.get(hosts, "h1", namespace=namespace).get("status") or {})

    timeout = ("--provisioning-timeout", str(TIMEOUT_S))
    with provider_controller(plane.kubeconfig, tmp_path, namespace, *timeout):
        kube.patch(
            hosts,
            "h1",
            {"spec": {"image": IMAGE}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
        eventually(lambda: status().get("state") == "provisioning", "provisioning", timeout=30)
        # nobody phones home: the deadline ends it (checked every 15 s at most)
        eventually(lambda: status().get("state") == "error", "error after the deadline", 60)
        failed = status()
        assert failed["errorReason"] == "ProvisioningTimeout"
        assert f"within {TIMEOUT_S} s" in str(failed["errorMessage"])
        condition = next(c for c in failed["conditions"] if c["type"] == "Provisioned")  # type: ignore[attr-defined]
        assert (condition["status"], condition["reason"]) == ("False", "ProvisioningTimeout")

        def warned() -> bool:
            events = kube.list(Event, namespace=namespace)
            return any(e.reason == "ProvisioningTimeout" and e.type == "Warning" for e in events)

        eventually(warned, "a ProvisioningTimeout warning event")

        # a spec change retries the provisioning
        retry = {**IMAGE, "url": "http://172.31.99.1:8080/files/other.raw"}
        kube.patch(
            hosts,
            "h1",
            {"spec": {"image": retry}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
        eventually(lambda: status().get("state") == "provisioning", "provisioning again", 30)
