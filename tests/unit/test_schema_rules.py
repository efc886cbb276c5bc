"""The schema's rules, held by the pydantic models: the same verdicts and messages as the CRDs.

The cases are tests/schema_cases.py; tests/integration/test_schema_rules.py puts the same
manifests to a real API server.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from plunder.api import crdgen, policies, rules
from plunder.api.base import Resource
from plunder.api.common import APIEndpoint, StaticNetwork
from tests.schema_cases import CASES, Case

KINDS: dict[str, type[Resource]] = {kind.info.kind: kind for kind in crdgen.ALL_KINDS}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_models_give_the_crds_verdict(case: Case) -> None:
    model = KINDS[case.kind]
    if case.message is None:
        model.model_validate(case.manifest)
        return
    with pytest.raises(ValidationError) as refused:
        model.model_validate(case.manifest)
    assert case.message in str(refused.value)


def test_every_class_of_the_issue_has_refused_and_accepted_cases() -> None:
    refused = [case for case in CASES if case.message]
    accepted = [case for case in CASES if not case.message]
    assert len(refused) > 60 and len(accepted) > 30


def test_a_rule_is_written_once_for_both_halves() -> None:
    rule = rules.endpoint_host("spec.x")
    assert rule.validation() == {"rule": rule.expression, "message": rule.message}
    assert rule.holds("cp.lab.example") and not rule.holds("300.1.1.1")


def test_a_transition_rule_is_the_api_servers_alone() -> None:
    rule = rules.Rule("self == oldSelf", "immutable", None)
    assert rule.holds("anything")


def test_cel_strings_escape_backslashes_and_quotes() -> None:
    assert rules.cel_string(r"^a\.b'c$") == r"'^a\\.b\'c$'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("172.31.99.20", True),
        ("fd00::20", True),
        ("FD00::20", True),
        ("::ffff:10.0.0.1", False),  # CEL's isIP refuses IPv4-mapped IPv6
        ("fe80::1%eth0", False),  # and zones
        ("10.0.0.01", False),  # and leading zeros
        ("10.0.0", False),
        ("", False),
    ],
)
def test_is_ip_follows_cel(text: str, expected: bool) -> None:
    assert rules.is_ip(text) is expected


def test_the_controllers_derived_endpoints_still_validate() -> None:
    # reconcile.cluster.derived_endpoint writes a machine's static address with port 6443.
    assert APIEndpoint(host="10.0.0.11", port=6443).port == 6443
    assert APIEndpoint().host == ""
    assert APIEndpoint(port=8443).host == ""


def test_an_ipam_address_of_either_family_validates() -> None:
    assert StaticNetwork(ip_address="fd00::7", prefix_length=64, gateway="fd00::1").gateway
    assert StaticNetwork(ip_address="10.0.0.7", prefix_length=16, gateway="10.0.0.1").gateway


def test_model_rules_become_the_objects_cel() -> None:
    schema = crdgen.resource_schema(KINDS["PlunderMachine"])
    network = schema["properties"]["spec"]["properties"]["network"]
    messages = [rule["message"] for rule in network["x-kubernetes-validations"]]
    assert any("prefixLength must be at most 32" in message for message in messages)


def test_a_fields_rules_join_its_models_rules() -> None:
    schema = crdgen.resource_schema(KINDS["PlunderClusterTemplate"])
    spec = schema["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    messages = [rule["message"] for rule in spec["x-kubernetes-validations"]]
    assert any(m.startswith("spec.controlPlaneEndpoint is immutable") for m in messages)
    assert any(m.startswith("spec.template.spec is immutable") for m in messages)
    # The shared PlunderClusterSpec of PlunderCluster does not become immutable.
    cluster = crdgen.resource_schema(KINDS["PlunderCluster"])["properties"]["spec"]
    assert not any("template" in rule["message"] for rule in cluster["x-kubernetes-validations"])


def test_machine_templates_are_immutable_by_policy_not_by_crd() -> None:
    """Cluster API's topology dry run must pass (plunder.api.policies says why)."""
    schema = crdgen.resource_schema(KINDS["PlunderMachineTemplate"])
    spec = schema["properties"]["spec"]["properties"]["template"]["properties"]["spec"]
    assert "self == oldSelf" not in [rule["rule"] for rule in spec["x-kubernetes-validations"]]
    policy, binding = policies.all_policies()
    (validation,) = policy["spec"]["validations"]
    assert "request.dryRun" in validation["expression"]
    assert policies.TOPOLOGY_DRY_RUN_ANNOTATION in validation["expression"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]


def test_bounded_maps_are_bounded_by_max_properties() -> None:
    schema = crdgen.resource_schema(KINDS["PlunderMachine"])
    selector = schema["properties"]["spec"]["properties"]["hostSelector"]["properties"]
    assert selector["matchLabels"]["maxProperties"] == 64
    assert "maxLength" not in selector["matchLabels"]
