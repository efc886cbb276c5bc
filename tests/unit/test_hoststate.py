"""The host state machine: each move, and who may make it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from plunder.api.inventory import HardwareDetails, PlunderHost
from plunder.boot import trust
from plunder.reconcile import hoststate

MAC = "00:50:56:a5:11:20"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
IMAGE = {
    "url": "http://172.31.99.1:8080/files/os.raw.gz",
    "checksum": "a" * 64,
    "format": "raw-gzip",
}


def host(state: str | None, generation: int = 1, observed: int = 1, **spec: Any) -> PlunderHost:
    return PlunderHost.model_validate(
        {
            "metadata": {
                "name": "h",
                "namespace": "default",
                "uid": "u-1",
                "generation": generation,
            },
            "spec": {"bootMACAddress": MAC, **spec},
            "status": {"state": state, "observedGeneration": observed, "agentBootID": "b1"},
        }
    )


def test_booting_the_agent_starts_inspection_of_a_new_host() -> None:
    status = hoststate.booted_agent(host("discovered"), "b2", NOW).status or {}
    assert status["state"] == "inspecting" and status["agentBootID"] == "b2"
    assert status["phases"] == [{"name": "inspecting", "started": "2026-11-25T12:00:00.000Z"}]
    assert "state" not in (hoststate.booted_agent(host("available"), "b3", NOW).status or {})


def test_inspection_makes_the_host_available_with_its_hardware() -> None:
    hardware = HardwareDetails.model_validate({"cpu": {"count": 2}, "memoryMiB": 512})
    status = hoststate.inspected(host("inspecting"), hardware, NOW)
    assert status["state"] == "available" and status["hardware"]["memoryMiB"] == 512


def test_work_on_an_available_host_starts_provisioning_with_the_seeds_event() -> None:
    change = hoststate.controller_transition(host("available", image=IMAGE), NOW)
    assert change.status is not None and change.status["state"] == "provisioning"
    assert change.event == (
        "PlunderProvision",
        "Plunder has begun provisioning the Operating System",
        "Normal",
    )
    assert hoststate.controller_transition(host("available"), NOW).status is None


def test_the_agent_is_told_to_write_the_image_only_while_provisioning() -> None:
    work = hoststate.agent_work(host("provisioning", image=IMAGE))
    assert work == {
        "action": "provision",
        "image_url": IMAGE["url"],
        "image_checksum": "a" * 64,
        "image_checksum_type": "sha256",
        "image_format": "raw-gzip",
        "root_device": "/dev/vda",
    }
    assert hoststate.agent_work(host("available", image=IMAGE)) == {"action": "wait"}
    assert hoststate.agent_work(host("deprovisioning", wipeMode="full")) == {
        "action": "wipe",
        "wipe_mode": "full",
    }


def test_a_failure_is_an_error_with_its_reason_and_a_spec_change_retries() -> None:
    failing = host("provisioning", image=IMAGE)
    change = hoststate.agent_progress(
        failing, {"phase": "failed", "reason": "ChecksumMismatch", "message": "got bbbb"}, NOW
    )
    assert change.status is not None
    assert (change.status["state"], change.status["errorReason"]) == ("error", "ChecksumMismatch")
    assert change.event is not None and change.event[2] == "Warning"
    stuck = host("error", generation=3, observed=3, image=IMAGE)
    assert hoststate.controller_transition(stuck, NOW).status is None
    fixed = host("error", generation=4, observed=3, image=IMAGE)
    retry = hoststate.controller_transition(fixed, NOW)
    assert retry.status is not None and retry.status["state"] == "provisioning"
    assert retry.status["errorReason"] is None


STREAMING = [
    {"name": "provisioning", "started": "2026-11-25T11:59:00Z"},
    {"name": "writing", "started": "2026-11-25T11:59:10Z"},
]


def test_a_boot_service_gone_mid_download_keeps_provisioning_and_the_agent_tries_again() -> None:
    """The lab's chaos run kills the boot service, also while an image streams."""
    streaming = with_status(host("provisioning", image=IMAGE, accepted=True), phases=STREAMING)
    cut_off = {
        "phase": "failed",
        "reason": "ImageDownloadFailed",
        "message": "connection closed prematurely",
    }
    change = hoststate.agent_progress(streaming, cut_off, NOW)
    status = change.status or {}
    assert "state" not in status and "errorReason" not in status
    assert [phase["name"] for phase in status["phases"]] == ["provisioning"]
    (condition,) = [c for c in status["conditions"] if c["type"] == "Provisioned"]
    assert (condition["status"], condition["reason"]) == ("False", "ImageDownloadFailed")
    assert "tries again" in condition["message"]
    assert change.event is not None and change.event[:1] == ("ImageDownloadFailed",)
    assert change.event[2] == "Warning"
    # The next poll: the same work again, with the cloud-init data still served to it.
    retrying = with_status(streaming, phases=status["phases"], conditions=status["conditions"])
    assert hoststate.agent_work(retrying)["action"] == "provision"
    assert trust.serves_seed(retrying) and not trust.takes_phone_home(retrying)


def test_a_server_that_says_no_fails_the_host_at_once() -> None:
    streaming = with_status(host("provisioning", image=IMAGE), phases=STREAMING)
    for reason, message in (
        ("ImageDownloadFailed", "server returned error: HTTP/1.1 404 Not Found"),
        ("CloudInitUnavailable", "server returned error: HTTP/1.1 403 Forbidden"),
        ("DiskTooSmall", "image is 9 bytes, /dev/vda holds 8"),
    ):
        change = hoststate.agent_progress(
            streaming, {"phase": "failed", "reason": reason, "message": message}, NOW
        )
        assert change.status is not None
        assert (change.status["state"], change.status["errorReason"]) == ("error", reason)


def test_phoning_home_finishes_provisioning_and_says_how_long_it_took() -> None:
    status = hoststate.controller_transition(host("available", image=IMAGE), NOW).status
    assert status is not None
    with_phase = host("provisioning", image=IMAGE)
    assert with_phase.status is not None
    with_phase = PlunderHost.model_validate(
        {
            **with_phase.to_api(),
            "status": {**with_phase.status.to_api(), "phases": status["phases"]},
        }
    )
    change = hoststate.phoned_home(with_phase, NOW + timedelta(seconds=41))
    assert change.status is not None and change.status["state"] == "provisioned"
    assert change.event == (
        "PlunderProvision",
        "Host has been successfully provisioned OS in 41s",
        "Normal",
    )


def with_status(base: PlunderHost, **status: Any) -> PlunderHost:
    assert base.status is not None
    return PlunderHost.model_validate(
        {**base.to_api(), "status": {**base.status.to_api(), **status}}
    )


def test_the_write_is_recorded_with_its_bytes_and_the_disks_speed() -> None:
    provisioning = host("provisioning", image=IMAGE)
    begun = hoststate.agent_progress(
        provisioning, {"phase": "writing", "disk_bps": "52428800"}, NOW
    )
    assert begun.status is not None
    assert begun.status["phases"][-1]["diskBytesPerSecond"] == 52428800
    writing = with_status(provisioning, phases=begun.status["phases"])
    done = hoststate.agent_progress(writing, {"phase": "done", "bytes": "1048576"}, NOW)
    assert done.status is not None
    (phase,) = [p for p in done.status["phases"] if p["name"] == "writing"]
    assert phase["bytes"] == 1048576 and phase["finished"] == "2026-11-25T12:00:00.000Z"


def test_a_restart_in_the_middle_of_the_write_fails_the_host_with_a_condition() -> None:
    started = [
        {"name": "provisioning", "started": "2026-11-25T11:59:00Z"},
        {"name": "writing", "started": "2026-11-25T11:59:10Z"},
    ]
    interrupted = with_status(host("provisioning", image=IMAGE), phases=started)
    change = hoststate.booted_agent(interrupted, "b2", NOW)
    status = change.status or {}
    assert change.event is not None and change.event[:1] == ("ProvisioningInterrupted",)
    assert (status["state"], status["errorReason"]) == ("error", "ProvisioningInterrupted")
    assert status["agentBootID"] == "b2"
    (condition,) = status["conditions"]
    assert condition["type"] == "Provisioned" and condition["status"] == "False"
    assert condition["reason"] == "ProvisioningInterrupted"
    # Before the write began, a restart is part of the plan (a BMC sends the host to the agent).
    not_yet = with_status(host("provisioning", image=IMAGE), phases=started[:1])
    assert "state" not in (hoststate.booted_agent(not_yet, "b3", NOW).status or {})


def test_the_provisioned_condition_follows_the_host() -> None:
    begun = hoststate.controller_transition(host("available", image=IMAGE), NOW).status
    assert begun is not None and begun["conditions"][0]["reason"] == "Provisioning"
    provisioning = with_status(
        host("provisioning", image=IMAGE), phases=begun["phases"], conditions=begun["conditions"]
    )
    done = hoststate.phoned_home(provisioning, NOW + timedelta(seconds=5)).status
    assert done is not None
    (condition,) = done["conditions"]
    assert (condition["status"], condition["reason"]) == ("True", "Provisioned")


def test_taking_the_work_away_deprovisions_and_a_wipe_makes_it_available() -> None:
    change = hoststate.controller_transition(host("provisioned"), NOW)
    assert change.status is not None and change.status["state"] == "deprovisioning"
    wiped = {"phase": "done", "reason": "Wiped", "message": "metadata wipe of /dev/vda"}
    done = hoststate.agent_progress(host("deprovisioning"), wiped, NOW)
    assert done.status is not None and done.status["state"] == "available"


def test_a_done_that_is_not_a_wipe_never_returns_a_deprovisioning_host_to_the_pool() -> None:
    # The agent was told to provision before the work was taken away: it reports its write.
    written = {"phase": "done", "reason": "Provisioned", "bytes": "1048576"}
    assert hoststate.agent_progress(host("deprovisioning"), written, NOW) == hoststate.Change()
    # An installer's last step (preseed/kickstart) says only phase=done.
    assert hoststate.agent_progress(host("deprovisioning"), {"phase": "done"}, NOW).status is None


def test_cloud_init_data_for_the_installation() -> None:
    static = host(
        "provisioning",
        image=IMAGE,
        network={
            "ipAddress": "172.31.99.20",
            "prefixLength": 24,
            "gateway": "172.31.99.1",
            "nameservers": ["172.31.99.1"],
        },
        consumerRef={"name": "controlplane"},
    )
    assert hoststate.meta_data(static) == {
        "instance-id": "u-1-b1",
        "local-hostname": "controlplane",
        # what the kubelet registers its Node with, so Cluster API finds the Machine's Node
        "provider-id": f"plunder://{MAC}",
    }
    assert hoststate.network_config(static) == {
        "version": 2,
        "ethernets": {
            "provisioning": {
                "match": {"macaddress": MAC},
                "set-name": "prov0",
                "addresses": ["172.31.99.20/24"],
                "routes": [{"to": "0.0.0.0/0", "via": "172.31.99.1"}],
                "nameservers": {"addresses": ["172.31.99.1"]},
            }
        },
    }
    assert hoststate.network_config(host("provisioning", image=IMAGE)) is None
