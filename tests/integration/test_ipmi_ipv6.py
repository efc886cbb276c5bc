"""An IPMI BMC on IPv6, from the manifest to the power state: ipmi://[::1]:port works.

The schema once refused ``ipmi://[fd00::9]:623`` (its pattern took no brackets), so an IPMI BMC
on an IPv6-only management network could not be inventoried. Here the real controller reads the
host, and its IPMI driver (pyghmi) talks to an IPMI server on the IPv6 loopback.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from plunder.api.inventory import PlunderHost
from plunder.k8s.resources import as_dict, resource_for
from plunder.lab import processes
from tests.integration.test_controller import controller  # noqa: F401 - a fixture

pytestmark = pytest.mark.integration

# pyghmi's own IPMI server, answering a chassis power status of "on" (and obeying power off).
FAKE_BMC = """
import sys
from pyghmi.ipmi import bmc

class FakeBmc(bmc.Bmc):
    state = "on"
    def get_power_state(self): return FakeBmc.state
    def power_off(self): FakeBmc.state = "off"
    def power_on(self): FakeBmc.state = "on"
    def get_boot_device(self): return "network"
    def set_boot_device(self, device): pass

FakeBmc({"admin": "secret"}, port=int(sys.argv[1]), address="::1").listen()
"""


@pytest.fixture
def ipv6_ipmi_bmc() -> Iterator[int]:
    """An IPMI server on [::1], on a free port."""
    port = processes.free_port()
    server = subprocess.Popen([sys.executable, "-c", FAKE_BMC, str(port)])
    try:
        yield port
    finally:
        server.kill()
        server.wait()


def test_an_ipmi_bmc_on_ipv6_is_accepted_and_reached(
    controller: Any,  # noqa: F811 - the fixture
    kube: Client,
    namespace: str,
    ipv6_ipmi_bmc: int,
) -> None:
    kube.create(
        Secret(
            metadata=ObjectMeta(name="bmc-v6", namespace=namespace),
            stringData={"username": "admin", "password": "secret"},
        )
    )
    address = f"ipmi://[::1]:{ipv6_ipmi_bmc}"
    kube.create(
        resource_for(PlunderHost)(
            metadata=ObjectMeta(name="v6"),
            spec={
                "bootMACAddress": "52:54:00:b6:00:01",
                "bmc": {"address": address, "credentialsName": "bmc-v6"},
            },
        ),
        namespace=namespace,
    )
    deadline = time.monotonic() + 60
    while True:
        host = PlunderHost.model_validate(
            as_dict(kube.get(resource_for(PlunderHost), "v6", namespace=namespace))
        )
        status = host.status
        reachable = [
            c
            for c in (status.conditions if status and status.conditions else [])
            if c.type == "BMCReachable"
        ]
        if status is not None and status.powered_on is not None and reachable:
            break
        assert time.monotonic() < deadline, f"no power state from {address}: {status}"
        time.sleep(0.5)
    assert reachable[0].status == "True", reachable[0]
    assert status.powered_on is True
