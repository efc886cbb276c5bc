"""Remediation decisions: reboot up to the limit, wait between tries, then hand the Machine back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from rich.console import Console

from plunder.api.inventory import UNHEALTHY_ANNOTATION, PlunderHost
from plunder.api.remediation import PlunderRemediation, duration_seconds
from plunder.cli.hosts import hosts_table
from plunder.reconcile import remediation as decide
from plunder.reconcile.remediation import Target
from plunder.reconcile.selection import HostCandidate

NOW = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
HOST = Target("host-1", has_bmc=True)


def remediation(status: dict[str, Any] | None = None, **strategy: Any) -> PlunderRemediation:
    return PlunderRemediation.model_validate(
        {
            "metadata": {"name": "worker-1", "namespace": "ns", "resourceVersion": "5"},
            "spec": {"strategy": {"type": "Reboot", "retryLimit": 2, "timeout": "5m", **strategy}},
            "status": status,
        }
    )


def applied(step: decide.Step, before: PlunderRemediation) -> PlunderRemediation:
    """``before`` with the step's status, as the API would hold it."""
    assert step.status is not None
    return PlunderRemediation.model_validate({**before.to_api(), "status": step.status})


def test_a_new_remediation_reboots_the_host_and_waits() -> None:
    step = decide.decide(remediation(), HOST, NOW)
    assert step.reboot and step.hand_back is None and step.mark_unhealthy is None
    assert step.status is not None
    assert step.status["phase"] == "Waiting"
    assert step.status["retryCount"] == 1
    assert step.status["lastRemediated"] == "2026-12-02T07:00:00Z"
    assert step.status["hostRef"] == "host-1"
    assert step.status["conditions"][0]["reason"] == "Rebooting"
    assert step.requeue_after == 300
    assert step.event is not None
    reason, message, kind = step.event
    assert (reason, kind) == ("Rebooting", "Normal")
    assert "try 1 of 2" in message and "5m" in message


def test_while_waiting_nothing_is_done_until_the_timeout() -> None:
    first = decide.decide(remediation(), HOST, NOW)
    waiting = applied(first, remediation())
    step = decide.decide(waiting, HOST, NOW + timedelta(seconds=100))
    assert step == decide.Step(requeue_after=200)


def test_each_timeout_brings_the_next_try_and_then_the_hand_back() -> None:
    current = remediation()
    moment = NOW
    for attempt in (1, 2):
        step = decide.decide(current, HOST, moment)
        assert step.reboot
        current = applied(step, current)
        assert current.status is not None and current.status.retry_count == attempt
        moment += timedelta(minutes=5)
    step = decide.decide(current, HOST, moment)
    assert not step.reboot
    assert step.hand_back is not None and "rebooted 2 times" in step.hand_back
    assert step.mark_unhealthy is not None
    assert step.mark_unhealthy.startswith("PlunderRemediation ns/worker-1:")
    assert step.status is not None and step.status["phase"] == "Deleting"
    assert step.status["retryCount"] == 2
    assert step.event is not None and step.event[0] == "RetriesExhausted"
    assert step.event[2] == "Warning" and UNHEALTHY_ANNOTATION in step.event[1]
    assert step.requeue_after is None
    # Handed back: nothing more.
    assert decide.decide(applied(step, current), HOST, moment) == decide.Step()


def test_a_retry_limit_of_zero_hands_the_machine_back_at_once() -> None:
    step = decide.decide(remediation(retryLimit=0), HOST, NOW)
    assert not step.reboot and step.hand_back is not None
    assert step.status is not None and step.status["phase"] == "Deleting"


def test_a_host_without_a_bmc_fails_at_once_saying_why() -> None:
    step = decide.decide(remediation(), Target("host-1", has_bmc=False), NOW)
    assert not step.reboot
    assert step.status is not None and step.status["phase"] == "Failed"
    condition = step.status["conditions"][0]
    assert (condition["type"], condition["status"]) == ("Remediated", "False")
    assert condition["reason"] == "HostHasNoBMC"
    assert "host host-1 has no BMC (spec.bmc)" in condition["message"]
    assert step.event is not None and step.event[:1] == ("HostHasNoBMC",)
    assert step.hand_back is not None and step.mark_unhealthy is not None
    failed = applied(step, remediation())
    assert decide.decide(failed, Target("host-1", has_bmc=False), NOW) == decide.Step()


def test_a_machine_without_a_host_fails_and_is_handed_back() -> None:
    machine = {"spec": {"infrastructureRef": {"kind": "PlunderMachine", "name": "pm"}}}
    target = decide.target_of(machine, {"metadata": {}}, None, None)
    assert target == Target(None, missing="PlunderMachine pm has no host")
    step = decide.decide(remediation(), target, NOW)
    assert step.status is not None and step.status["phase"] == "Failed"
    assert step.status["conditions"][0]["reason"] == "HostNotFound"
    assert step.hand_back is not None and step.mark_unhealthy is None


def test_the_target_is_the_plunder_machines_host() -> None:
    machine = {"spec": {"infrastructureRef": {"kind": "PlunderMachine", "name": "pm"}}}
    host = {"spec": {"bootMACAddress": "00:50:56:a5:11:20", "bmc": {"address": "ipmi://b"}}}
    assert decide.target_of(machine, {}, host, "h") == Target("h", has_bmc=True)
    assert decide.target_of(None, None, None, None).missing == "the Machine is gone"
    other = {"spec": {"infrastructureRef": {"kind": "DockerMachine", "name": "d"}}}
    assert decide.target_of(other, None, None, None).host is None


def test_the_hand_back_sets_owner_remediated_in_both_forms_and_keeps_the_rest() -> None:
    machine = {
        "metadata": {"name": "worker-1", "resourceVersion": "9", "generation": 2},
        "status": {
            "conditions": [{"type": "HealthCheckSucceeded", "status": "False"}],
            "deprecated": {"v1beta1": {"conditions": [{"type": "Ready", "status": "False"}]}},
        },
    }
    patch = decide.owner_remediated_patch(machine, "gave up", NOW)
    assert patch is not None
    assert patch["metadata"] == {"resourceVersion": "9"}
    current = patch["status"]["conditions"]
    assert current[0] == {"type": "HealthCheckSucceeded", "status": "False"}
    assert current[1]["type"] == "OwnerRemediated" and current[1]["status"] == "False"
    assert current[1]["reason"] == "WaitingForRemediation"
    assert current[1]["observedGeneration"] == 2
    legacy = patch["status"]["deprecated"]["v1beta1"]["conditions"]
    assert [c["type"] for c in legacy] == ["Ready", "OwnerRemediated"]
    assert legacy[1]["severity"] == "Warning"
    handed = {**machine, "status": patch["status"]}
    assert decide.owner_remediated_patch(handed, "gave up", NOW) is None


def test_a_deleted_waiting_remediation_says_the_machine_healed() -> None:
    waiting = applied(decide.decide(remediation(), HOST, NOW), remediation())
    event = decide.healed_event(waiting)
    assert event is not None and event[0] == "Remediated"
    assert "healthy again after 1 reboot of host host-1" in event[1]
    assert decide.healed_event(remediation()) is None


def test_an_unhealthy_host_is_never_free() -> None:
    body = {
        "metadata": {"name": "h", "annotations": {UNHEALTHY_ANNOTATION: "why"}},
        "spec": {"bootMACAddress": "00:50:56:a5:11:20", "accepted": True},
        "status": {"state": "available"},
    }
    assert not HostCandidate.from_body(body).free
    body["metadata"]["annotations"] = {}
    assert HostCandidate.from_body(body).free


@pytest.mark.parametrize(
    ("timeout", "seconds"), [("5m", 300), ("90s", 90), ("1h30m", 5400), ("1.5s", 1.5)]
)
def test_durations(timeout: str, seconds: float) -> None:
    assert duration_seconds(timeout) == seconds
    assert remediation(timeout=timeout).spec.strategy.timeout_seconds == seconds


@pytest.mark.parametrize("timeout", ["0s", "0m0s", "5", "five minutes", "-5m", ""])
def test_bad_timeouts_are_refused_naming_the_field(timeout: str) -> None:
    with pytest.raises(ValidationError, match="spec.strategy.timeout must be a duration"):
        remediation(timeout=timeout)


def test_retry_limit_and_type_are_checked() -> None:
    with pytest.raises(ValidationError):
        remediation(retryLimit=-1)
    with pytest.raises(ValidationError):
        remediation(type="Reprovision")


def test_get_hosts_shows_an_unhealthy_host() -> None:
    host = PlunderHost.model_validate(
        {
            "metadata": {"name": "h1", "annotations": {UNHEALTHY_ANNOTATION: "why"}},
            "spec": {"bootMACAddress": "00:50:56:a5:11:20"},
            "status": {"state": "available"},
        }
    )
    console = Console(width=200, record=True)
    console.print(hosts_table([host], NOW))
    assert "available (unhealthy)" in console.export_text()
