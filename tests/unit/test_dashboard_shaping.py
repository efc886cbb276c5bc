"""The dashboard's data shaping: fleet rows, cycles, timelines, the cluster view (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from plunder.dashboard import shaping

T0 = datetime(2026, 12, 7, 1, 0, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def host(name: str = "h1", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "annotations": {}},
        "spec": {
            "bootMACAddress": "00:50:56:a5:11:01",
            "accepted": True,
            "bmc": {
                "address": "redfish://admin:hunter2@10.0.0.9/redfish/v1/Systems/1",
                "credentialsName": "h1-bmc",
            },
            "userData": {"name": "m1-bootstrap"},
            "consumerRef": {"kind": "PlunderMachine", "name": "m1"},
        },
        "status": status,
    }


PROVISIONED = [
    {"name": "provisioning", "started": at(0), "finished": at(100)},
    {"name": "writing", "started": at(10), "finished": at(70), "bytes": 2**30},
]


def test_fleet_row_picks_what_a_person_reads() -> None:
    row = shaping.fleet_row(
        host(
            state="provisioned",
            vendor="VMware",
            poweredOn=True,
            lastSeen=at(-30),
            hardware={
                "systemVendor": "QEMU",
                "productName": "Standard PC",
                "cpu": {"count": 2},
                "memoryMiB": 2048,
                "disks": [{"name": "/dev/vda", "sizeBytes": 20 * 2**30}],
            },
        ),
        T0,
    )
    assert row["state"] == "provisioned"
    assert row["power"] == "on"
    assert row["consumer"] == "m1"
    assert row["lastSeenSeconds"] == 30
    assert row["hardware"] == "QEMU Standard PC · 2 CPU · 2.0 GiB · 1 disk 20.0 GiB"
    assert shaping.fleet_row(host(), T0)["state"] == "unknown"
    assert shaping.fleet_row(host(), T0)["power"] == "unknown"


def test_fleet_sorted_and_counted_by_state() -> None:
    rows = shaping.fleet([host("b", state="error"), host("a", state="available")], T0)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert shaping.state_counts(rows) == {"available": 1, "error": 1}


def test_write_percent_only_while_writing() -> None:
    progress = {"imageBytes": 200, "downloadedBytes": 50, "updated": at(5)}
    writing = [{"name": "writing", "started": at(0)}]
    assert shaping.write_percent({"phases": writing, "writeProgress": progress}) == 25
    done = [{"name": "writing", "started": at(0), "finished": at(9)}]
    assert shaping.write_percent({"phases": done, "writeProgress": progress}) is None


def test_a_provisioning_splits_into_boot_write_and_phone_home() -> None:
    line = shaping.timeline(PROVISIONED, T0 + timedelta(seconds=500))
    assert line is not None
    assert line["kind"] == "provisioning"
    assert line["seconds"] == 100
    assert not line["open"]
    assert [(s["name"], s["start"], s["end"]) for s in line["segments"]] == [
        ("boot", 0, 10),
        ("write", 10, 70),
        ("phone-home", 70, 100),
    ]


def test_an_open_phase_runs_to_now() -> None:
    phases = [
        {"name": "provisioning", "started": at(0)},
        {"name": "writing", "started": at(4)},
    ]
    line = shaping.timeline(phases, T0 + timedelta(seconds=30))
    assert line is not None
    assert line["open"]
    assert [(s["name"], s["seconds"], s["open"]) for s in line["segments"]] == [
        ("boot", 4, False),
        ("write", 26, True),
    ]


def test_inspection_and_wipe_and_unknown_phases_keep_their_place() -> None:
    phases = [
        {"name": "inspecting", "started": at(0), "finished": at(20)},
        {"name": "deprovisioning", "started": at(30), "finished": at(35)},
        {"name": "frobnicating", "started": at(40)},
    ]
    line = shaping.timeline(phases, T0 + timedelta(seconds=50))
    assert line is not None
    assert [s["name"] for s in line["segments"]] == ["inspect", "wipe", "frobnicating"]
    assert shaping.timeline([{"name": "x", "started": "garbage"}], T0) is None


def test_cycles_are_remembered_by_their_first_phase() -> None:
    first = [{"name": "provisioning", "started": at(0)}]
    cycles = shaping.remember_cycle([], first)
    cycles = shaping.remember_cycle(cycles, PROVISIONED)  # the same cycle, further on
    assert cycles == [PROVISIONED]
    second = [{"name": "provisioning", "started": at(1000)}]
    cycles = shaping.remember_cycle(cycles, second)
    assert cycles == [PROVISIONED, second]
    assert shaping.remember_cycle(cycles, None) == cycles
    many: list[list[Any]] = []
    for i in range(10):
        many = shaping.remember_cycle(many, [{"name": "inspecting", "started": at(i)}], keep=3)
    assert [c[0]["started"] for c in many] == [at(7), at(8), at(9)]
    assert [t["started"] for t in shaping.timelines(cycles, T0)] == [
        (T0 + timedelta(seconds=1000)).isoformat(),
        T0.isoformat(),
    ]


def test_host_detail_never_carries_secrets_or_their_names() -> None:
    detail = shaping.host_detail(
        host(state="provisioned", phases=PROVISIONED),
        [],
        [{"type": "Normal", "reason": "Provisioned", "message": "ok", "lastTimestamp": at(1)}],
        "agent log",
        T0,
    )
    text = json.dumps(detail)
    assert "hunter2" not in text and "admin" not in text
    assert "h1-bmc" not in text and "m1-bootstrap" not in text
    assert detail["bmcAddress"] == "redfish://10.0.0.9/redfish/v1/Systems/1"
    assert detail["events"][0]["reason"] == "Provisioned"
    assert len(detail["cycles"]) == 1


def test_without_userinfo() -> None:
    assert shaping.without_userinfo("ipmi://u:p@[fd00::9]:623") == "ipmi://[fd00::9]:623"
    assert shaping.without_userinfo("ipmi://10.0.0.1") == "ipmi://10.0.0.1"


def _machine(name: str, host_name: str, control_plane: bool = False) -> tuple[Any, Any]:
    labels = {"cluster.x-k8s.io/cluster-name": "c1"}
    if control_plane:
        labels["cluster.x-k8s.io/control-plane"] = ""
    machine = {
        "metadata": {"name": name, "namespace": "ns", "labels": labels},
        "spec": {"clusterName": "c1", "infrastructureRef": {"name": name}},
        "status": {"phase": "Running"},
    }
    plunder_machine = {
        "metadata": {"name": name, "namespace": "ns"},
        "status": {"hostRef": {"name": host_name}},
    }
    return machine, plunder_machine


def test_cluster_view_puts_machines_on_one_clock_and_marks_the_slowest() -> None:
    cluster = {"metadata": {"name": "c1", "namespace": "ns"}, "status": {"phase": "Provisioned"}}
    cp, cp_infra = _machine("cp", "h-cp", control_plane=True)
    worker, worker_infra = _machine("w", "h-w")
    other, _ = _machine("elsewhere", "h-x")
    other["spec"]["clusterName"] = "c2"
    late = [
        {"name": "provisioning", "started": at(20), "finished": at(300)},
        {"name": "writing", "started": at(25), "finished": at(200)},
    ]
    hosts = {
        ("ns", "h-cp"): host("h-cp", state="provisioned", phases=PROVISIONED),
        ("ns", "h-w"): host("h-w", state="provisioned", phases=late),
    }
    view = shaping.cluster_view(
        cluster,
        [worker, other, cp],
        {("ns", "cp"): cp_infra, ("ns", "w"): worker_infra},
        hosts,
        {},
        T0,
    )
    assert [m["machine"] for m in view["machines"]] == ["cp", "w"]
    cp_row, worker_row = view["machines"]
    assert cp_row["controlPlane"] and cp_row["host"] == "h-cp"
    assert (cp_row["offset"], worker_row["offset"]) == (0, 20)
    slowest = {
        (row["machine"], s["name"])
        for row in view["machines"]
        for s in row["timeline"]["segments"]
        if s.get("slowest")
    }
    # w wrote 175 s against cp's 60 s, phoned home after 100 s against 30 s: both stand out;
    # cp's 10 s to the write against w's 5 s does not (5 s longer is no news).
    assert slowest == {("w", "write"), ("w", "phone-home")}
    assert view["started"] == T0.isoformat()


def test_a_machine_without_a_host_has_no_timeline() -> None:
    cluster = {"metadata": {"name": "c1", "namespace": "ns"}}
    machine, _ = _machine("m", "")
    view = shaping.cluster_view(cluster, [machine], {}, {}, {}, T0)
    assert view["machines"][0]["host"] == ""
    assert view["machines"][0]["timeline"] is None
    assert shaping.clusters([cluster], [machine]) == [
        {"namespace": "ns", "name": "c1", "phase": "", "paused": False, "machines": 1}
    ]


def test_only_a_machine_that_stands_out_is_marked_slow() -> None:
    def row(**seconds: float) -> dict[str, Any]:
        segments = [{"name": name, "seconds": value} for name, value in seconds.items()]
        return {"timeline": {"segments": segments}}

    rows = [row(write=30, boot=1), row(write=40, boot=2), row(write=130, boot=2.5)]
    shaping.mark_slowest(rows)
    marked = [[s["name"] for s in r["timeline"]["segments"] if s.get("slowest")] for r in rows]
    assert marked == [[], [], ["write"]]
    assert shaping.median([3, 1, 2]) == 2
    assert shaping.median([4, 1, 2, 3]) == 2.5
