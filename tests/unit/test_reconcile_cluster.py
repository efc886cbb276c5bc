"""The PlunderCluster status decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from plunder.api.common import APIEndpoint
from plunder.api.infrastructure import PlunderCluster, PlunderClusterSpec
from plunder.reconcile import conditions
from plunder.reconcile.cluster import ControlPlaneCandidate, cluster_status, derived_endpoint

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def cluster(host: str = "", port: int = 0) -> PlunderCluster:
    return PlunderCluster(
        spec=PlunderClusterSpec(control_plane_endpoint=APIEndpoint(host=host, port=port))
    )


def test_provisioned_once_the_endpoint_is_known() -> None:
    status = cluster_status(cluster("172.31.99.20", 6443), {}, 1, NOW)
    assert status.initialization is not None and status.initialization.provisioned is True
    assert status.ready is True
    ready = conditions.find(status.conditions, "Ready")
    assert ready is not None and ready.status == "True"


def test_waits_without_an_endpoint_and_says_why() -> None:
    status = cluster_status(cluster(), {}, 1, NOW)
    assert status.ready is False
    assert status.initialization is not None and status.initialization.provisioned is None
    ready = conditions.find(status.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "WaitingForControlPlaneEndpoint")
    assert status.deprecated is not None and status.deprecated.v1beta1 is not None
    [v1beta1_ready] = [c for c in status.deprecated.v1beta1.conditions or () if c.type == "Ready"]
    assert v1beta1_ready.severity == "Warning"


def test_paused_cluster_only_reports_the_pause() -> None:
    status = cluster_status(cluster("172.31.99.20", 6443), {"cluster.x-k8s.io/paused": ""}, 1, NOW)
    paused = conditions.find(status.conditions, "Paused")
    assert paused is not None and paused.status == "True"
    assert status.ready is None and conditions.find(status.conditions, "Ready") is None


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first = cluster_status(cluster(), {}, 1, NOW)
    again = cluster_status(
        PlunderCluster(spec=cluster().spec, status=first), {}, 1, NOW + timedelta(minutes=5)
    )
    ready = conditions.find(again.conditions, "Ready")
    assert ready is not None and ready.last_transition_time == NOW
    provisioned = cluster_status(
        PlunderCluster(spec=cluster("10.0.0.1", 6443).spec, status=again),
        {},
        2,
        NOW + timedelta(minutes=9),
    )
    ready = conditions.find(provisioned.conditions, "Ready")
    assert ready is not None and ready.last_transition_time == NOW + timedelta(minutes=9)


def candidate(
    name: str, created: str, ip: str | None, control_plane: bool = True
) -> ControlPlaneCandidate:
    return ControlPlaneCandidate(name, created, control_plane, ip)


def test_endpoint_is_taken_from_the_first_control_plane_machine_with_a_static_address() -> None:
    machines = [
        candidate("worker", "2026-11-25T11:00:00Z", "10.0.0.9", control_plane=False),
        candidate("cp-dhcp", "2026-11-25T11:01:00Z", None),
        candidate("cp-2", "2026-11-25T11:03:00Z", "10.0.0.12"),
        candidate("cp-1", "2026-11-25T11:02:00Z", "10.0.0.11"),
    ]
    assert derived_endpoint(cluster(), machines) == APIEndpoint(host="10.0.0.11", port=6443)
    assert derived_endpoint(cluster(port=8443), machines) == APIEndpoint(
        host="10.0.0.11", port=8443
    )
    assert derived_endpoint(cluster("172.31.99.20", 6443), machines) is None
    assert derived_endpoint(cluster(), machines[:2]) is None


def test_failure_domains_and_the_clusters_own_pause() -> None:
    status = cluster_status(cluster("10.0.0.1", 6443), {}, 1, NOW, failure_domains=["a", "b"])
    assert [d.to_api() for d in status.failure_domains or ()] == [
        {"name": "a", "controlPlane": True},
        {"name": "b", "controlPlane": True},
    ]
    paused = cluster_status(cluster("10.0.0.1", 6443), {}, 1, NOW, cluster_paused=True)
    condition = conditions.find(paused.conditions, "Paused")
    assert condition is not None and condition.status == "True" and paused.ready is None
