"""The schema's rules against a real kube-apiserver: what a new user might write, refused or not.

Each refused manifest must be refused with a message that names the field and says what to do;
its neighbours, which differ only in what the rule is about, must be accepted. The cases are
tests/schema_cases.py, which tests/unit/test_schema_rules.py runs through the models.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from lightkube import Client

from plunder.api import crdgen
from plunder.api.infrastructure import PlunderCluster
from tests.conftest import run_kubectl
from tests.schema_cases import CASES, CHANGES, Case, Change, endpoint

pytestmark = pytest.mark.integration


def create(kubectl: list[str], namespace: str, manifest: dict[str, Any], *args: str) -> Any:
    return run_kubectl(
        kubectl, "create", "-n", namespace, *args, "-f", "-", stdin=yaml.safe_dump(manifest)
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_api_server_gives_the_verdict(
    kube: Client, kubectl: list[str], namespace: str, case: Case
) -> None:
    created = create(kubectl, namespace, case.manifest, "--dry-run=server")
    if case.message is None:
        assert created.returncode == 0, created.stderr
    else:
        assert created.returncode != 0, f"accepted: {created.stdout}"
        assert case.message in created.stderr, created.stderr


def patch(
    kubectl: list[str], namespace: str, manifest: dict[str, Any], change: dict[str, Any]
) -> Any:
    return run_kubectl(
        kubectl,
        "patch",
        "-n",
        namespace,
        manifest["kind"].lower(),
        manifest["metadata"]["name"],
        "--type=merge",
        "-p",
        json.dumps(change),
    )


@pytest.mark.parametrize("change", CHANGES, ids=[change.name for change in CHANGES])
def test_changes_after_creation(
    kube: Client, kubectl: list[str], namespace: str, change: Change
) -> None:
    created = create(kubectl, namespace, change.original)
    assert created.returncode == 0, created.stderr
    patched = patch(kubectl, namespace, change.original, change.patch)
    if change.message is None:
        assert patched.returncode == 0, patched.stderr
    else:
        assert patched.returncode != 0, f"accepted: {patched.stdout}"
        assert change.message in patched.stderr, patched.stderr


def _install(kubectl: list[str], crd: dict[str, Any]) -> None:
    applied = run_kubectl(
        kubectl,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=yaml.safe_dump(crd),
    )
    assert applied.returncode == 0, applied.stderr
    established = run_kubectl(
        kubectl, "wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}"
    )
    assert established.returncode == 0, established.stderr


@pytest.fixture
def cluster_crd_without_the_port_rule(kube: Client, kubectl: list[str]) -> Iterator[None]:
    """The PlunderCluster CRD as it was before port 0 with a host was refused; then today's."""
    today = crdgen.custom_resource_definition(PlunderCluster)
    before = copy.deepcopy(today)
    schema = before["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    endpoint_schema = schema["properties"]["spec"]["properties"]["controlPlaneEndpoint"]
    endpoint_schema.pop("x-kubernetes-validations")
    _install(kubectl, before)
    try:
        yield
    finally:
        _install(kubectl, today)


def test_an_endpoint_stored_with_port_0_can_still_be_fixed(
    cluster_crd_without_the_port_rule: None, kubectl: list[str], namespace: str
) -> None:
    broken = endpoint("10.0.0.1", 0)
    deadline = time.monotonic() + 30
    while (created := create(kubectl, namespace, broken)).returncode != 0:
        # The API server takes a moment to serve the CRD it was just given.
        assert time.monotonic() < deadline, created.stderr
        time.sleep(0.5)
    _install(kubectl, crdgen.custom_resource_definition(PlunderCluster))
    # The object is stored as it was; only the fix is needed, and it is allowed.
    fixed = {"spec": {"controlPlaneEndpoint": {"port": 6443}}}
    deadline = time.monotonic() + 30
    while True:
        patched = patch(kubectl, namespace, broken, fixed)
        if patched.returncode == 0 or time.monotonic() > deadline:
            break
        if "must be from 1 to 65535" in patched.stderr:
            # The old CRD may still be what the API server validates with, for a moment.
            time.sleep(0.5)
            continue
        break
    assert patched.returncode == 0, patched.stderr
    # Once fixed, it is immutable like any endpoint.
    moved = patch(kubectl, namespace, broken, {"spec": {"controlPlaneEndpoint": {"port": 8443}}})
    assert moved.returncode != 0
    assert "spec.controlPlaneEndpoint is immutable once set" in moved.stderr
