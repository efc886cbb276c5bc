"""The generated CRDs: structural, described, labelled for the contract, committed as made."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from plunder.api import crdgen
from plunder.api.base import Resource

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "config" / "crd" / "bases"


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node below (and including) ``schema``, with its field path."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.fixture(params=crdgen.ALL_KINDS, ids=lambda kind: kind.info.kind)
def kind(request: pytest.FixtureRequest) -> type[Resource]:
    return request.param  # type: ignore[no-any-return]


def test_every_field_has_a_description(kind: type[Resource]) -> None:
    schema = crdgen.resource_schema(kind)
    undocumented = [
        path
        for path, node in walk(schema)
        if path.count(".") >= 2 or path in (".spec", ".status")
        if "description" not in node and not path.endswith(("[]", "{}"))
    ]
    assert undocumented == []


def test_schema_is_structural(kind: type[Resource]) -> None:
    forbidden = {"$ref", "anyOf", "allOf", "oneOf", "title", "$defs"}
    for path, node in walk(crdgen.resource_schema(kind)):
        assert not forbidden & node.keys(), path
        assert "type" in node, f"{path} has no type"


def test_infrastructure_kinds_carry_the_contract_labels() -> None:
    for kind in crdgen.ALL_KINDS:
        labels = crdgen.custom_resource_definition(kind)["metadata"].get("labels", {})
        if kind.info.group == "infrastructure.cluster.x-k8s.io":
            assert labels["cluster.x-k8s.io/provider"] == "infrastructure-plunder"
            assert labels["cluster.x-k8s.io/v1beta1"] == "v1alpha1"
            assert labels["cluster.x-k8s.io/v1beta2"] == "v1alpha1"
        else:
            assert "cluster.x-k8s.io/provider" not in labels  # config/default adds it


def test_clusterctl_move_takes_every_host_with_what_it_owns() -> None:
    from plunder.api.inventory import PlunderHost

    labels = crdgen.custom_resource_definition(PlunderHost)["metadata"]["labels"]
    assert labels == {"clusterctl.cluster.x-k8s.io/move-hierarchy": ""}


def test_printer_columns_are_what_a_person_asked_for() -> None:
    def columns(kind: type[Resource]) -> list[str]:
        version = crdgen.custom_resource_definition(kind)["spec"]["versions"][0]
        return [column["name"] for column in version["additionalPrinterColumns"]]

    from plunder.api.infrastructure import PlunderMachine
    from plunder.api.inventory import PlunderHost

    assert columns(PlunderMachine) == ["Cluster", "State", "Host", "ProviderID", "Age"]
    assert columns(PlunderHost) == [
        "MAC",
        "Vendor",
        "State",
        "Consumer",
        "Power",
        "Last Seen",
        "Age",
    ]


def test_contract_field_names_are_cluster_apis() -> None:
    from plunder.api.infrastructure import PlunderMachine

    status = crdgen.resource_schema(PlunderMachine)["properties"]["status"]["properties"]
    assert {"initialization", "ready", "addresses", "conditions", "failureReason"} <= set(status)
    assert "v1beta1" in status["deprecated"]["properties"]
    spec = crdgen.resource_schema(PlunderMachine)["properties"]["spec"]["properties"]
    assert "providerID" in spec


def test_committed_crds_match_the_models() -> None:
    """config/crd/bases is generated: `plunderctl crds --output-dir config/crd/bases` remakes it."""
    committed = {path.name for path in CRD_DIR.glob("*.yaml")}
    assert committed == {crdgen.crd_file_name(kind) for kind in crdgen.ALL_KINDS}
    for kind in crdgen.ALL_KINDS:
        generated = crdgen.render(crdgen.custom_resource_definition(kind))
        on_disk = (CRD_DIR / crdgen.crd_file_name(kind)).read_text()
        assert on_disk == generated, f"{crdgen.crd_file_name(kind)} drifted from the models"


def test_render_all_is_one_document_per_kind() -> None:
    documents = list(yaml.safe_load_all(crdgen.render_all()))
    assert [doc["spec"]["names"]["kind"] for doc in documents] == [
        kind.info.kind for kind in crdgen.ALL_KINDS
    ]


def test_a_union_that_kubernetes_cannot_express_is_refused() -> None:
    with pytest.raises(ValueError, match="union"):
        crdgen.to_structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {})


def test_kustomization_lists_every_generated_crd() -> None:
    kustomization = yaml.safe_load((CRD_DIR.parent / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        f"bases/{crdgen.crd_file_name(kind)}" for kind in crdgen.ALL_KINDS
    )


def test_the_committed_admission_policies_are_generated_from_the_models() -> None:
    """config/policy/policies.yaml, shipped in the components, is what `make crds` writes."""
    from plunder.cli.main import POLICIES_FILE, render_policies

    committed = CRD_DIR.parent.parent / "policy" / POLICIES_FILE
    assert committed.read_text() == render_policies(), "run `make crds`"
