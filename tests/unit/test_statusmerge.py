"""Rebasing a status write decided on an old copy of a host onto the current one."""

from __future__ import annotations

from typing import Any

from plunder.api.inventory import PlunderHost
from plunder.reconcile import statusmerge


def cond(type_: str, status: str = "True") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": type_,
        "lastTransitionTime": "2026-11-25T12:00:00Z",
    }


def host(state: str, conditions: list[dict[str, Any]]) -> PlunderHost:
    return PlunderHost.model_validate(
        {
            "metadata": {"name": "h", "namespace": "ns"},
            "spec": {"bootMACAddress": "52:54:00:00:00:01"},
            "status": {"state": state, "conditions": conditions},
        }
    )


def test_entries_others_wrote_meanwhile_stay_and_mine_are_applied() -> None:
    base = [cond("Provisioned", "False"), cond("BMCReachable", "False")]
    mine = [cond("Provisioned", "False"), cond("BMCReachable", "True")]
    fresh = [cond("Provisioned", "True"), cond("BMCReachable", "False"), cond("Other")]
    merged = statusmerge.merge_entries(base, mine, fresh, "type")
    assert merged == [cond("Provisioned", "True"), cond("BMCReachable", "True"), cond("Other")]


def test_entries_i_added_or_removed_are_added_or_removed() -> None:
    base = [cond("A"), cond("B")]
    mine = [cond("A"), cond("C")]  # B removed, C added
    fresh = [cond("A", "False"), cond("B"), cond("D")]
    merged = statusmerge.merge_entries(base, mine, fresh, "type")
    assert merged == [cond("A", "False"), cond("D"), cond("C")]


def test_a_move_decided_on_a_state_that_no_longer_holds_is_dropped_but_facts_stay() -> None:
    base = host("provisioning", [cond("Provisioned", "False")])
    fresh = host("provisioned", [cond("Provisioned", "True")])
    mine = {
        "state": "error",
        "errorReason": "ProvisioningInterrupted",
        "conditions": [cond("Provisioned", "False")],
        "agentBootID": "b2",
    }
    assert statusmerge.rebase(base, fresh, mine) == {"agentBootID": "b2"}
    assert statusmerge.rebase(base, base, mine) == mine
