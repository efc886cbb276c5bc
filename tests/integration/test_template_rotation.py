"""PlunderMachineTemplates are immutable, and a ClusterClass topology still rotates them.

PlunderMachineTemplate's spec.template.spec is immutable, but Cluster API's topology controller
finds out whether a template changed with a server-side-apply dry run of the new spec onto the
current template (the contract's "InfraMachineTemplate: support for SSA dry run"). That dry run
must not be refused, or the templates are never rotated and the change never reaches a machine.
A CRD rule cannot tell the dry run from a change (it refused it: the rotation test failed with
one); the admission policy of plunder.api.policies can.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client

from plunder.api import policies
from plunder.api.infrastructure import PlunderMachineTemplate
from plunder.k8s.resources import resource_for
from plunder.lab.capi import ClusterAPIControllers
from plunder.lab.plane import Plane
from tests.conftest import eventually, listed, nested, run_kubectl
from tests.integration.test_clusterctl import TOPOLOGY_OWNED, generate, repository  # noqa: F401
from tests.schema_cases import machine_template

pytestmark = pytest.mark.integration

NEW_URL = "http://172.31.99.1:8080/files/images/debian-13.raw"
CHANGED_SPEC = {"spec": {"template": {"spec": {"deploymentType": "kickstart"}}}}


def patch_template(kubectl: list[str], namespace: str, change: Any, *args: str) -> Any:
    return run_kubectl(
        kubectl,
        "patch",
        "-n",
        namespace,
        "plundermachinetemplate",
        "t",
        "--type=merge",
        "-p",
        json.dumps(change),
        *args,
    )


@pytest.fixture
def immutable_templates(kube: Client, kubectl: list[str], namespace: str) -> Iterator[None]:
    """The provider's admission policies in force (installed with its CRDs), and a template "t"."""
    for policy in policies.all_policies():
        found = run_kubectl(kubectl, "get", policy["kind"], policy["metadata"]["name"])
        assert found.returncode == 0, f"not installed with the CRDs: {found.stderr}"
    created = run_kubectl(
        kubectl, "create", "-n", namespace, "-f", "-", stdin=json.dumps(machine_template())
    )
    assert created.returncode == 0, created.stderr
    # The API server takes a moment to enforce a new policy: probe it with a dry run.
    deadline = time.monotonic() + 30
    while patch_template(kubectl, namespace, CHANGED_SPEC, "--dry-run=server").returncode == 0:
        assert time.monotonic() < deadline, "the admission policy never took effect"
        time.sleep(0.5)
    yield


def test_a_templates_spec_cannot_be_changed(
    immutable_templates: None, kubectl: list[str], namespace: str
) -> None:
    for change in (
        CHANGED_SPEC,
        {"spec": {"template": {"spec": {"hostSelector": {"matchLabels": {"rack": "r1"}}}}}},
    ):
        patched = patch_template(kubectl, namespace, change)
        assert patched.returncode != 0, f"accepted: {patched.stdout}"
        assert policies.TEMPLATE_IMMUTABLE_MESSAGE in patched.stderr
    # A dry run is refused too, unless it is the topology controller's.
    dry = patch_template(kubectl, namespace, CHANGED_SPEC, "--dry-run=server")
    assert dry.returncode != 0
    marked = {
        **CHANGED_SPEC,
        "metadata": {"annotations": {policies.TOPOLOGY_DRY_RUN_ANNOTATION: ""}},
    }
    assert patch_template(kubectl, namespace, marked, "--dry-run=server").returncode == 0
    # Only a dry run: the same change, marked, is refused when it would be stored.
    assert patch_template(kubectl, namespace, marked).returncode != 0
    # The template's own labels and its machines' metadata may change.
    relabelled = patch_template(
        kubectl,
        namespace,
        {
            "metadata": {"labels": {"lab.example/owner": "team-a"}},
            "spec": {"template": {"metadata": {"labels": {"rack": "r1"}}}},
        },
    )
    assert relabelled.returncode == 0, relabelled.stderr


def test_a_changed_variable_rotates_the_machine_templates(
    immutable_templates: None,
    cluster_api_controllers: ClusterAPIControllers,
    plane: Plane,
    kube: Client,
    kubectl: list[str],
    repository: Path,  # noqa: F811 - the fixture
    namespace: str,
) -> None:
    manifest = generate(plane, repository, namespace, flavor="topology", workers=1)
    applied = run_kubectl(kubectl, "apply", "-f", "-", stdin=manifest)
    assert applied.returncode == 0, applied.stderr

    def cloned_urls() -> list[Any]:
        templates = listed(kube, resource_for(PlunderMachineTemplate), namespace)
        return [
            nested(t, "spec", "template", "spec", "image", "url")
            for t in templates
            if nested(t, "metadata", "labels", TOPOLOGY_OWNED) == ""
        ]

    eventually(lambda: len(cloned_urls()) == 2, "the topology's machine templates")
    cluster = json.loads(
        run_kubectl(kubectl, "get", "-n", namespace, "cluster", "bm1", "-o", "json").stdout
    )
    variables = cluster["spec"]["topology"]["variables"]
    index = next(i for i, v in enumerate(variables) if v["name"] == "imageURL")
    patched = run_kubectl(
        kubectl,
        "patch",
        "-n",
        namespace,
        "cluster",
        "bm1",
        "--type=json",
        "-p",
        json.dumps(
            [{"op": "replace", "path": f"/spec/topology/variables/{index}/value", "value": NEW_URL}]
        ),
    )
    assert patched.returncode == 0, patched.stderr
    eventually(
        lambda: sorted(cloned_urls()).count(NEW_URL) >= 1,
        "machine templates rotated to the new image",
        timeout=60,
    )
