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
