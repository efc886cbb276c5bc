"""The PlunderCluster controller against the real plane: endpoint, failure domains, pause."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube import Client
from lightkube.types import PatchType

from plunder.k8s.resources import as_dict
from tests.integration.test_machine_world import (
    CLUSTERS,
    MACHINES,
    create_cluster,
    create_host,
    create_machine,
    machine_controller,  # noqa: F401 - a fixture, used by name
    set_cluster_paused,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("machine_controller")]


def plundercluster(kube: Client, namespace: str) -> dict[str, Any]:
    return as_dict(kube.get(CLUSTERS, "c1", namespace=namespace))


def condition(body: dict[str, Any], type_: str) -> str | None:
    found = [
        c["status"] for c in (body.get("status") or {}).get("conditions", []) if c["type"] == type_
    ]
    return found[0] if found else None


def test_endpoint_from_the_first_control_plane_machine_and_failure_domains_from_hosts(
    kube: Client, namespace: str
) -> None:
    create_host(kube, namespace, "h-a", "00:50:56:a5:11:01", {"topology.kubernetes.io/zone": "a"})
    create_host(kube, namespace, "h-b", "00:50:56:a5:11:02", {"topology.kubernetes.io/zone": "b"})
    create_cluster(
        kube, namespace, provisioned=False, failure_domain_label="topology.kubernetes.io/zone"
    )
    wait_for(lambda: condition(plundercluster(kube, namespace), "Ready") == "False")
    assert not plundercluster(kube, namespace)["status"]["ready"]

    create_machine(
        kube, namespace, "cp0", spec={"network": {"ipAddress": "172.31.99.60"}}, bootstrap=False
    )
    kube.patch(
        MACHINES,
        "cp0",
        {"metadata": {"labels": {"cluster.x-k8s.io/control-plane": ""}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )

    def provisioned() -> bool:
        status = plundercluster(kube, namespace).get("status") or {}
        return bool(status.get("ready")) and status.get("initialization") == {"provisioned": True}

    wait_for(provisioned, timeout=30, what="the endpoint taken from cp0")
    body = plundercluster(kube, namespace)
    assert body["spec"]["controlPlaneEndpoint"] == {"host": "172.31.99.60", "port": 6443}
    assert body["status"]["failureDomains"] == [
        {"name": "a", "controlPlane": True},
        {"name": "b", "controlPlane": True},
    ]
    v1beta1 = {
        c["type"]: c["status"] for c in body["status"]["deprecated"]["v1beta1"]["conditions"]
    }
    assert v1beta1 == {"Paused": "False", "Ready": "True"}

    # The Cluster's own pause is reported too.
    set_cluster_paused(kube, namespace, True)
    wait_for(lambda: condition(plundercluster(kube, namespace), "Paused") == "True", timeout=30)
