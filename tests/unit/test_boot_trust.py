"""What the boot service trusts: when a token is issued, when bootstrap data is served."""

from __future__ import annotations

from typing import Any

import pytest

from plunder.api.inventory import PlunderHost
from plunder.boot import trust
from plunder.boot.discovery import DiscoveryGate
from plunder.boot.settings import DiscoverySettings

MAC = "00:50:56:a5:11:20"
T0 = "2026-12-01T10:00:00.000Z"
T1 = "2026-12-01T10:05:00.000Z"


def host(
    state: str | None,
    boot_id: str | None = "b1",
    phases: list[dict[str, Any]] | None = None,
    accepted: bool = True,
) -> PlunderHost:
    status: dict[str, Any] = {}
    if state:
        status["state"] = state
    if boot_id:
        status["agentBootID"] = boot_id
    if phases:
        status["phases"] = phases
    return PlunderHost.model_validate(
        {
            "apiVersion": PlunderHost.info.api_version,
            "kind": "PlunderHost",
            "metadata": {"name": "h", "namespace": "default"},
            "spec": {"bootMACAddress": MAC, "accepted": accepted},
            "status": status or None,
        }
    )


WRITING = [{"name": "provisioning", "started": T0}, {"name": "writing", "started": T0}]
WRITTEN = [
    {"name": "provisioning", "started": T0},
    {"name": "writing", "started": T0, "finished": T1},
]


def test_a_new_host_gets_a_token_at_its_first_lookup() -> None:
    assert trust.refuse_lookup(host(None, boot_id=None), 0, 60) is None
    assert trust.refuse_lookup(host("discovered", boot_id=None), 0, 60) is None


def test_a_token_in_use_is_never_issued_again() -> None:
    assert trust.refuse_lookup(host("available"), 5, 60) is not None
    assert trust.refuse_lookup(host("inspecting"), 59, 60) is not None


def test_an_abandoned_token_is_replaced_only_while_nothing_is_at_stake() -> None:
    assert trust.refuse_lookup(host("available"), 61, 60) is None
    assert trust.refuse_lookup(host("error"), 61, 60) is None
    assert trust.refuse_lookup(host("provisioning"), 61, 60) is None  # no write yet
    assert trust.refuse_lookup(host("provisioning", phases=WRITING), 10_000, 60) is not None
    assert trust.refuse_lookup(host("provisioned"), 10_000, 60) is not None


def test_a_wipe_needs_the_token_of_a_boot_after_the_controller_asked_for_it() -> None:
    deprovisioning = [*WRITTEN, {"name": "deprovisioning", "started": T1}]
    old = host("deprovisioning", boot_id="b1", phases=deprovisioning)
    assert trust.current_boot_id(old) is None, "the installing boot's token is void for a wipe"
    assert trust.refuse_lookup(old, 0, 60) is None
    fresh = trust.new_boot_id(old)
    wiping = host("deprovisioning", boot_id=fresh, phases=deprovisioning)
    assert trust.current_boot_id(wiping) == fresh
    assert trust.refuse_lookup(wiping, 10_000, 60) is not None, "one token per wipe"
    again = [*WRITTEN, {"name": "deprovisioning", "started": "2026-12-02T00:00:00.000Z"}]
    assert trust.current_boot_id(host("deprovisioning", boot_id=fresh, phases=again)) is None
    # The wipe done, the agent that did it stays parked with its token: no lookup window opens.
    wiped = host("available", boot_id=fresh, phases=deprovisioning)
    assert trust.current_boot_id(wiped) == fresh
    assert trust.refuse_lookup(wiped, 0, 60) is not None


def test_the_boot_a_token_went_to_is_given_it_again_with_its_nonce_only() -> None:
    deprovisioning = [*WRITTEN, {"name": "deprovisioning", "started": T1}]
    nonce = "5f" * 16
    boot_id = trust.new_boot_id(host("deprovisioning", boot_id=None, phases=deprovisioning), nonce)
    wiping = host("deprovisioning", boot_id=boot_id, phases=deprovisioning)
    assert nonce not in boot_id
    assert trust.asked_again(wiping, nonce)
    assert not trust.asked_again(wiping, "a0" * 16) and not trust.asked_again(wiping, None)
    assert trust.refuse_lookup(wiping, 0, 60) is not None, "without it: one token per wipe"
    assert trust.lookup_nonce(nonce) == nonce
    assert trust.lookup_nonce("5f" * 8) is None, "too short to be unguessable"
    assert trust.lookup_nonce("") is None and trust.lookup_nonce("x" * 32) is None


def test_boot_ids_are_unguessable_and_distinct() -> None:
    ids = {trust.new_boot_id(host("available")) for _ in range(100)}
    assert len(ids) == 100 and all(len(i) == 16 for i in ids)


def test_bootstrap_data_only_while_the_host_is_installed() -> None:
    assert trust.serves_seed(host("provisioning"))
    assert trust.serves_seed(host("provisioning", phases=WRITING))  # the installer's late step
    assert not trust.serves_seed(host("provisioning", phases=WRITTEN))
    assert not trust.serves_seed(host("provisioning", accepted=False))
    for state in ("available", "provisioned", "deprovisioning", "error", "inspecting"):
        assert not trust.serves_seed(host(state))


def test_phone_home_only_after_the_write_has_ended() -> None:
    assert trust.takes_phone_home(host("provisioning", phases=WRITTEN))
    assert not trust.takes_phone_home(host("provisioning", phases=WRITING))
    assert not trust.takes_phone_home(host("provisioning"))
    assert not trust.takes_phone_home(host("available"))


def test_an_interrupted_write_is_one_begun_and_not_ended() -> None:
    assert trust.write_interrupted(host("provisioning", phases=WRITING))
    assert not trust.write_interrupted(host("provisioning", phases=WRITTEN))
    assert not trust.write_interrupted(host("provisioning"))


@pytest.mark.parametrize("pending", [100, 250])
def test_discovery_stops_at_the_cap(pending: int) -> None:
    gate = DiscoveryGate(DiscoverySettings())
    assert "cap" in (gate.refusal(lambda: pending) or "")


def test_discovery_admits_a_burst_then_the_rate() -> None:
    gate = DiscoveryGate(DiscoverySettings(burst=5, per_minute=60))
    admitted = [gate.refusal(lambda: 0) is None for _ in range(50)]
    assert admitted.count(True) == 5
    assert gate.refusal(lambda: 0) == "too many new hosts at once (the rate limit)"


def test_discovery_can_be_switched_off() -> None:
    assert DiscoveryGate(DiscoverySettings(enabled=False)).refusal(lambda: 0) == "discovery is off"


def test_progress_only_while_work_is_under_way() -> None:
    assert trust.takes_progress(host("provisioning"))
    assert trust.takes_progress(host("provisioning", phases=WRITING))
    assert trust.takes_progress(host("deprovisioning"))
    assert not trust.takes_progress(host("provisioning", phases=WRITTEN))
    for state in ("available", "provisioned", "error", "inspecting", "discovered"):
        assert not trust.takes_progress(host(state))
