"""BMC addresses, the driver registry, and the state machine's power decisions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from plunder.api.common import Image
from plunder.api.inventory import PlunderHost
from plunder.power import base, registry
from plunder.power.ipmi import IPMIPower
from plunder.power.none import NoPower
from plunder.power.redfish import RedfishPower
from plunder.reconcile import hoststate

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("address", "driver", "base_url", "port", "system"),
    [
        (
            "redfish://bmc.example/redfish/v1/Systems/1",
            "redfish",
            "https://bmc.example:443",
            443,
            "1",
        ),
        (
            "redfish+http://10.0.0.5:8000/redfish/v1/Systems/abc/",
            "redfish",
            "http://10.0.0.5:8000",
            8000,
            "abc",
        ),
        (
            "redfish+https://[fd00::5]:8443/redfish/v1/Systems/x",
            "redfish",
            "https://[fd00::5]:8443",
            8443,
            "x",
        ),
        ("ipmi://10.0.0.6", "ipmi", "http://10.0.0.6:623", 623, ""),
        ("ipmi://10.0.0.6:6230", "ipmi", "http://10.0.0.6:6230", 6230, ""),
    ],
)
def test_addresses_name_their_driver_host_and_port(
    address: str, driver: str, base_url: str, port: int, system: str
) -> None:
    parsed = base.parse_address(address)
    assert (parsed.driver, parsed.port) == (driver, port)
    assert parsed.base_url == base_url
    if driver == "redfish":
        assert parsed.system_id == system
        assert parsed.tls == base_url.startswith("https")


@pytest.mark.parametrize(
    "address",
    [
        "http://bmc/redfish/v1/Systems/1",
        "redfish://bmc/",
        "redfish://bmc/redfish/v1/Managers/1",
        "ipmi://bmc:623/path",
        "ipmi://admin:secret@bmc",
        "ipmi://bmc:99999",
        "",
    ],
)
def test_bad_addresses_are_refused_with_the_accepted_forms(address: str) -> None:
    with pytest.raises(base.BMCAddressError) as raised:
        base.parse_address(address)
    assert raised.value.reason == "BMCAddressInvalid"
    assert "secret" not in str(raised.value)


def test_credentials_never_show_the_password() -> None:
    credentials = base.Credentials("admin", "hunter2")
    assert "hunter2" not in repr(credentials)
    assert "hunter2" not in repr(base.BMCSettings(None, credentials))


def test_drivers_are_found_by_name_through_entry_points() -> None:
    assert registry.driver_names() == ["ipmi", "none", "redfish"]
    assert registry.driver_class("redfish") is RedfishPower
    assert registry.driver_class("ipmi") is IPMIPower
    assert isinstance(registry.driver_for(base.BMCSettings(None)), NoPower)
    with pytest.raises(base.BMCAddressError, match="installed: ipmi, none, redfish"):
        registry.driver_class("amt")


def test_drivers_declare_what_they_need_and_validate_it() -> None:
    for driver in (RedfishPower, IPMIPower):
        assert {"address", "username", "password"} <= {p.name for p in driver.properties}
    address = base.parse_address("ipmi://10.0.0.6")
    with pytest.raises(base.BMCCredentialsError):
        IPMIPower(base.BMCSettings(address)).validate()
    with pytest.raises(base.BMCAddressError):
        RedfishPower(base.BMCSettings(address, base.Credentials("a", "b"))).validate()
    with pytest.raises(base.BMCAddressError, match="no BMC"):
        NoPower(base.BMCSettings(None)).reboot()


def host(state: str | None, bmc: bool = True, **status: Any) -> PlunderHost:
    spec: dict[str, Any] = {"bootMACAddress": "52:54:00:00:00:01"}
    if bmc:
        spec["bmc"] = {"address": "ipmi://10.0.0.6", "credentialsName": "creds"}
    body: dict[str, Any] = {"metadata": {"name": "h", "generation": 1}, "spec": spec}
    if state is not None or status:
        body["status"] = {"state": state, **status}
    return PlunderHost.model_validate(body)


def test_provisioning_powers_on_into_the_agent_and_deprovisioning_power_cycles() -> None:
    available = host("available")
    available.spec.image = Image(url="http://images.example/os.raw")
    provisioning = hoststate.controller_decision(available, NOW)
    assert provisioning.status and provisioning.status["state"] == "provisioning"
    assert provisioning.power == "pxe-on"
    deprovisioning = hoststate.controller_decision(host("provisioned"), NOW)
    assert deprovisioning.status and deprovisioning.status["state"] == "deprovisioning"
    assert deprovisioning.power == "pxe-reboot"


def test_hosts_without_a_bmc_keep_their_network_boot_loop() -> None:
    change = hoststate.controller_decision(host("provisioned", bmc=False), NOW)
    assert change.status and change.status["state"] == "deprovisioning"
    assert change.power is None
    assert hoststate.controller_decision(host(None, bmc=False), NOW).power is None


def test_a_host_created_with_only_a_bmc_is_powered_on_once_into_the_agent() -> None:
    first = hoststate.controller_decision(host(None), NOW)
    assert first.power == "pxe-on"
    assert first.status == {"observedGeneration": 1}
    asked = host(None, observedGeneration=1)
    assert hoststate.controller_decision(asked, NOW) == hoststate.Change()
    seen = host("discovered", firstSeen="2026-11-25T11:00:00Z")
    assert hoststate.controller_decision(seen, NOW).power is None
