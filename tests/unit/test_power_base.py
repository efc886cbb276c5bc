"""BMC addresses, the driver registry, and the state machine's power decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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


def moved(base: PlunderHost, change: hoststate.Change) -> PlunderHost:
    """``base`` after the controller wrote ``change``."""
    assert change.status is not None
    status = base.status.to_api() if base.status else {}
    return PlunderHost.model_validate({**base.to_api(), "status": {**status, **change.status}})


def test_provisioning_powers_on_into_the_agent_and_deprovisioning_power_cycles() -> None:
    available = host("available")
    available.spec.image = Image(url="http://images.example/os.raw")
    provisioning = hoststate.controller_decision(available, NOW)
    assert provisioning.status and provisioning.status["state"] == "provisioning"
    wish = hoststate.power_wish(moved(available, provisioning))
    assert wish is not None and wish.action == "pxe-on"
    assert wish.cycle == "provisioning@2026-11-25T12:00:00.000Z"
    deprovisioning = hoststate.controller_decision(host("provisioned"), NOW)
    assert deprovisioning.status and deprovisioning.status["state"] == "deprovisioning"
    wish = hoststate.power_wish(moved(host("provisioned"), deprovisioning))
    assert wish is not None and wish.action == "pxe-reboot"
    assert hoststate.power_wish(host("available")) is None
    assert hoststate.power_wish(host("provisioned")) is None


def test_the_power_action_follows_from_the_state_alone_and_is_done_once_per_entry() -> None:
    """Level, not edge: the move is the only write; the power loop's mark says it was done."""
    deprovisioning = moved(
        host("provisioned"), hoststate.controller_decision(host("provisioned"), NOW)
    )
    due = hoststate.power_due(deprovisioning, done=None)
    assert due is not None and due.action == "pxe-reboot"
    assert hoststate.power_due(deprovisioning, done=due.mark) is None
    # The next release of the same host is a new entry into deprovisioning: due again.
    again = hoststate.controller_decision(host("provisioned"), NOW + timedelta(hours=1))
    later = moved(host("provisioned"), again)
    assert hoststate.power_due(later, done=due.mark) is not None


def test_hosts_without_a_bmc_keep_their_network_boot_loop() -> None:
    change = hoststate.controller_decision(host("provisioned", bmc=False), NOW)
    assert change.status and change.status["state"] == "deprovisioning"
    assert hoststate.power_wish(moved(host("provisioned", bmc=False), change)) is None
    assert hoststate.power_wish(host(None, bmc=False)) is None


def test_a_host_created_with_only_a_bmc_is_powered_on_once_into_the_agent() -> None:
    first = hoststate.controller_decision(host(None), NOW)
    assert first.status == {"observedGeneration": 1}
    assert first.event is not None and first.event[0] == "PoweringOn"
    wish = hoststate.power_wish(host(None))
    assert wish is not None and wish.action == "pxe-on"
    asked = host(None, observedGeneration=1)
    assert hoststate.controller_decision(asked, NOW) == hoststate.Change()
    assert hoststate.power_due(asked, done=wish.mark) is None
    seen = host("discovered", firstSeen="2026-11-25T11:00:00Z")
    assert hoststate.power_wish(seen) is None
