"""The provisioning deadline, as a pure decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from plunder.api.inventory import PlunderHost
from plunder.reconcile import hoststate

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def provisioning(*phases: dict[str, str]) -> PlunderHost:
    return PlunderHost.model_validate(
        {
            "metadata": {"name": "h", "namespace": "default", "generation": 1},
            "spec": {"bootMACAddress": "00:50:56:a5:11:20"},
            "status": {"state": "provisioning", "phases": list(phases)},
        }
    )


BEGUN = {"name": "provisioning", "started": "2026-12-01T12:00:00Z"}
WRITTEN = {"name": "writing", "started": "2026-12-01T12:00:10Z", "finished": "2026-12-01T12:01:00Z"}


def test_within_the_deadline_nothing_changes() -> None:
    host = provisioning(BEGUN)
    assert hoststate.provisioning_deadline(host, START + timedelta(seconds=599), 600).status is None


def test_past_the_deadline_the_host_fails_with_a_reason_a_person_can_act_on() -> None:
    host = provisioning(BEGUN, WRITTEN)
    change = hoststate.provisioning_deadline(host, START + timedelta(seconds=600), 600)
    assert change.status is not None
    assert change.status["state"] == "error"
    assert change.status["errorReason"] == "ProvisioningTimeout"
    assert "last phase: writing, finished" in change.status["errorMessage"]
    assert change.event is not None and change.event[0] == "ProvisioningTimeout"
    assert change.event[2] == "Warning"


def test_only_provisioning_hosts_have_this_deadline() -> None:
    host = provisioning(BEGUN)
    assert host.status is not None
    host.status.state = "provisioned"
    assert hoststate.provisioning_deadline(host, START + timedelta(days=1), 600).status is None


WIPE_BEGUN = [{"name": "deprovisioning", "started": "2026-12-01T12:00:00Z"}]


def deprovisioning(bmc: bool, phases: object = WIPE_BEGUN) -> PlunderHost:
    spec: dict[str, object] = {"bootMACAddress": "00:50:56:a5:11:20"}
    if bmc:
        address = "redfish+http://127.0.0.1:8000/redfish/v1/Systems/1"
        spec["bmc"] = {"address": address, "credentialsName": "bmc"}
    return PlunderHost.model_validate(
        {
            "metadata": {"name": "h", "namespace": "default", "generation": 2},
            "spec": spec,
            "status": {"state": "deprovisioning", "phases": phases},
        }
    )


def test_a_wipe_past_its_deadline_is_begun_again_and_the_host_never_leaves_deprovisioning() -> None:
    host = deprovisioning(bmc=True)
    assert (
        hoststate.deprovisioning_deadline(host, START + timedelta(seconds=899), 900).status is None
    )
    later = START + timedelta(seconds=900)
    before = hoststate.power_wish(host)
    change = hoststate.deprovisioning_deadline(host, later, 900)
    assert change.status is not None and "state" not in change.status
    assert change.event is not None
    assert change.event[0] == "DeprovisioningRetried" and change.event[2] == "Warning"
    assert "power-cycling it into the agent again" in change.event[1]
    # the phase begun again is a new power wish: the power loop power-cycles the host again
    again = deprovisioning(bmc=True, phases=change.status["phases"])
    after = hoststate.power_wish(again)
    assert before is not None and after is not None
    assert after.action == before.action == "pxe-reboot" and after.mark != before.mark


def test_a_host_without_a_bmc_past_its_wipe_deadline_asks_a_person() -> None:
    change = hoststate.deprovisioning_deadline(
        deprovisioning(bmc=False), START + timedelta(seconds=900), 900
    )
    assert change.event is not None and "power-cycle it by hand" in change.event[1]


def test_only_deprovisioning_hosts_have_the_wipe_deadline() -> None:
    host = provisioning(BEGUN)
    assert hoststate.deprovisioning_deadline(host, START + timedelta(days=1), 900).status is None
