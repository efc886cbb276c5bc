"""The provisioning throttle's decisions (the ledger's meaning, grants, refusals)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from plunder.api.infrastructure import PlunderMachine
from plunder.api.inventory import PAUSED_ANNOTATION, PlunderHost
from plunder.reconcile import machine as decide
from plunder.reconcile import slots
from plunder.reconcile.selection import HostCandidate


def test_only_moves_into_a_slot_state_take_a_slot() -> None:
    assert slots.takes_slot("available", "provisioning")
    assert slots.takes_slot("error", "provisioning")
    assert slots.takes_slot("provisioned", "deprovisioning")
    assert slots.takes_slot("error", "deprovisioning")
    assert not slots.takes_slot("provisioning", "deprovisioning")  # it keeps the slot it has
    assert not slots.takes_slot("discovered", None)
    assert not slots.takes_slot("inspecting", "available")


def test_an_entry_holds_its_slot_until_its_move_lands_and_while_the_host_is_in_a_slot_state() -> (
    None
):
    assert slots.holds_slot("7", slots.HostView("available", "7"))  # the move is in flight
    assert slots.holds_slot("7", slots.HostView("provisioning", "8"))  # it landed
    assert slots.holds_slot("7", slots.HostView("deprovisioning", "12"))
    # changed before the move (which, guarded by "7", then failed), or came and went
    assert not slots.holds_slot("7", slots.HostView("available", "8"))
    assert not slots.holds_slot("7", slots.HostView("provisioned", "9"))
    assert not slots.holds_slot("7", None)  # gone


def test_a_grant_adds_the_host_to_the_ledger_while_slots_are_free() -> None:
    decision = slots.decide({"ns/a": "3"}, {"ns/b"}, "ns/c", "9", limit=3)
    assert decision.granted
    assert decision.ledger == {"ns/a": "3", "ns/c": "9"}
    assert decision.in_use == 3


def test_past_the_limit_the_host_is_refused_with_a_message_naming_the_limit() -> None:
    decision = slots.decide({"ns/a": "3"}, {"ns/a", "ns/b", "other/x"}, "ns/c", "9", limit=3)
    assert not decision.granted
    assert "ns/c" not in decision.ledger
    assert decision.message == "3 of 3 provisioning slots in use; waiting"


def test_ledger_entries_and_busy_hosts_count_once_each() -> None:
    # a host both in the ledger and in a slot state is one slot, not two
    assert slots.decide({"ns/a": "3"}, {"ns/a"}, "ns/b", "5", limit=2).granted
    assert slots.in_use({"ns/a": "3"}, {"ns/a", "ns/b"}) == 2


def test_a_host_that_holds_a_slot_keeps_it_even_when_the_limit_was_lowered() -> None:
    decision = slots.decide({"ns/a": "3", "ns/b": "4"}, {"ns/b"}, "ns/a", "6", limit=1)
    assert decision.granted
    assert decision.ledger["ns/a"] == "6"


def test_the_ledger_round_trips_and_a_broken_one_reads_as_empty() -> None:
    ledger = {"ns/b": "2", "ns/a": "1"}
    data = slots.render_ledger(ledger)
    assert slots.parse_ledger(data) == ledger
    assert list(data) == [slots.LEDGER_KEY]
    assert slots.parse_ledger(None) == {}
    assert slots.parse_ledger({slots.LEDGER_KEY: "not json"}) == {}
    assert slots.parse_ledger({slots.LEDGER_KEY: "[1, 2]"}) == {}


def test_a_limit_below_one_is_refused_with_the_reason() -> None:
    assert slots.validate_limit(1) == 1
    with pytest.raises(ValueError, match="at least 1"):
        slots.validate_limit(0)


NOW = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
IMAGE = {"url": "http://172.31.99.1:8080/files/os.raw.gz", "checksum": "a" * 64}


def _copy(version: str, state: str = "available", **spec: Any) -> PlunderHost:
    """A copy of host ``ns/a`` as read at ``version``: available with an image to install."""
    return PlunderHost.model_validate(
        {
            "metadata": {"name": "a", "namespace": "ns", "resourceVersion": version},
            "spec": {"bootMACAddress": "00:50:56:a5:11:01", **({"image": IMAGE} | spec)},
            "status": {"state": state, "lastSeen": f"2026-12-06T22:5{version}:00Z"},
        }
    )


def test_a_turn_grants_the_move_decided_on_the_fresh_copy_not_the_one_that_asked() -> None:
    # ns/a asked at version 1; while it waited its turn its lastSeen was written (version 4)
    turn = slots.decide_turn(_copy("4"), {"ns/x": "2"}, {"ns/x"}, 2, NOW)
    assert turn.granted and turn.decision is not None
    assert turn.host is not None and turn.host.metadata.resource_version == "4"
    assert turn.decision.ledger == {"ns/x": "2", "ns/a": "4"}  # the version the move is guarded by
    assert turn.change.status is not None and turn.change.status["state"] == "provisioning"
    assert turn.change.status["phases"] == [
        {"name": "provisioning", "started": "2026-12-06T23:00:00.000Z"}
    ]


def test_a_turn_refused_names_no_entry_for_the_host() -> None:
    turn = slots.decide_turn(_copy("4"), {"ns/x": "2"}, {"ns/x", "ns/y"}, 2, NOW)
    assert not turn.granted and turn.decision is not None
    assert turn.decision.ledger == {"ns/x": "2"}
    assert turn.decision.message == "2 of 2 provisioning slots in use; waiting"


def test_a_turn_whose_fresh_copy_needs_no_slot_any_more_writes_no_ledger() -> None:
    # the work was taken away while it waited: nothing to do, and no slot taken
    idle = slots.decide_turn(_copy("5", image=None), {}, set(), 1, NOW)
    assert idle.decision is None and idle.change.status is None
    # another process moved it meanwhile: no second move, no slot
    moved = slots.decide_turn(_copy("6", state="provisioning"), {}, set(), 1, NOW)
    assert moved.decision is None and moved.change.status is None
    # deleted meanwhile
    gone = slots.decide_turn(None, {}, set(), 1, NOW)
    assert gone.host is None and not gone.granted


def test_a_turn_whose_fresh_copy_was_paused_meanwhile_moves_nothing() -> None:
    # its Cluster was paused for clusterctl move while it waited: no move, no slot
    paused = _copy("8")
    paused.metadata.annotations = {PAUSED_ANNOTATION: "plunder.dev/cluster"}
    turn = slots.decide_turn(paused, {}, set(), 1, NOW)
    assert turn.decision is None and turn.change.status is None


def test_a_turn_keeps_the_slot_a_host_holds_and_names_its_new_version() -> None:
    # its earlier grant's move was refused (409): the entry is its own, so it is granted again
    turn = slots.decide_turn(_copy("7"), {"ns/a": "3", "ns/x": "2"}, {"ns/x"}, 2, NOW)
    assert turn.granted and turn.decision is not None
    assert turn.decision.ledger == {"ns/a": "7", "ns/x": "2"}


def _host(state: str) -> HostCandidate:
    return HostCandidate("h1", "ns", "u1", "5", "00:50:56:a5:11:01", state)


def _machine() -> PlunderMachine:
    return PlunderMachine.model_validate(
        {"metadata": {"name": "m1", "namespace": "ns", "generation": 1}, "spec": {}}
    )


def test_a_machine_whose_host_waits_is_pending_with_the_condition_and_one_event() -> None:
    refusal = slots.Decision(False, {}, 3, 3)
    wait = decide.waiting_for_slot(_host("available"), refusal, None)
    assert wait is not None
    now = datetime(2026, 12, 2, tzinfo=UTC)
    status = decide.machine_status(_machine(), None, now, host=_host("available"), slot_wait=wait)
    assert status.state == "Pending"
    condition = decide.find_condition(status, decide.PROVISIONED)
    assert condition is not None
    assert (condition.status, condition.reason) == ("False", "WaitingForProvisioningSlot")
    assert condition.message == "host h1: 3 of 3 provisioning slots in use; waiting"
    claimed = decide.find_condition(status, decide.HOST_CLAIMED)
    assert claimed is not None and claimed.status == "True"
    assert decide.slot_wait_events(None, status) == [
        ("WaitingForProvisioningSlot", condition.message, "Normal")
    ]
    again = decide.machine_status(_machine(), status, now, host=_host("available"), slot_wait=wait)
    assert decide.slot_wait_events(status, again) == []  # announced once


def test_a_host_in_a_slot_state_is_not_waiting_whatever_the_gate_says() -> None:
    refusal = slots.Decision(False, {}, 3, 3)
    assert decide.waiting_for_slot(_host("provisioning"), refusal, None) is None
    assert decide.waiting_for_slot(_host("available"), None, None) is None


def test_a_wait_shown_is_kept_until_the_gate_decides_again_after_a_restart() -> None:
    now = datetime(2026, 12, 2, tzinfo=UTC)
    refusal = slots.Decision(False, {}, 3, 3)
    wait = decide.waiting_for_slot(_host("available"), refusal, None)
    shown = decide.machine_status(_machine(), None, now, host=_host("available"), slot_wait=wait)
    kept = decide.waiting_for_slot(_host("available"), None, shown)
    assert kept is not None and kept.message == "host h1: 3 of 3 provisioning slots in use; waiting"
    # once the host moved, or failed, the wait is over whatever was shown
    assert decide.waiting_for_slot(_host("provisioning"), None, shown) is None
    assert decide.waiting_for_slot(_host("error"), None, shown) is None
    assert decide.waiting_for_slot(_host("provisioned"), None, shown) is None


def test_plunderctl_controller_refuses_a_limit_below_one_before_it_starts() -> None:
    from click.testing import CliRunner

    from plunder.cli.main import cli

    for argv, env in (
        (["controller", "--provisioning-limit", "0"], {}),
        (["controller"], {"PLUNDER_PROVISIONING_LIMIT": "0"}),
    ):
        result = CliRunner().invoke(cli, argv, env=env)
        assert result.exit_code == 2
        assert "'--provisioning-limit'" in result.output
        assert "0 is not in the range x>=1" in result.output
