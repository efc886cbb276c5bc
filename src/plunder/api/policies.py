"""Rules a CRD cannot hold, as ValidatingAdmissionPolicies: CEL evaluated at admission.

A CRD's CEL sees the object and its previous version, nothing of the request. The immutability
of a PlunderMachineTemplate's ``spec.template.spec`` needs the request: Cluster API's topology
controller finds out whether a ClusterClass change reaches a template by a server-side-apply dry
run of the new spec onto the current template (marked with the ``topology.cluster.x-k8s.io/
dry-run`` annotation), and rotates the template when the dry run shows a change. Cluster API's
contract ("InfraMachineTemplate: support for SSA dry run") asks providers to let that dry run
through; a CRD rule would refuse it, and the topology would never roll out. An admission policy
sees ``request.dryRun`` and the annotation, and needs no webhook, server or certificate.
"""

from __future__ import annotations

from typing import Any

from plunder.api.common import INFRASTRUCTURE_GROUP, VERSION
from plunder.api.infrastructure import PlunderMachineTemplate

TOPOLOGY_DRY_RUN_ANNOTATION = "topology.cluster.x-k8s.io/dry-run"
TEMPLATE_IMMUTABLE_POLICY = "plundermachinetemplates-immutable.infrastructure.cluster.x-k8s.io"

TEMPLATE_IMMUTABLE_MESSAGE = (
    "spec.template.spec is immutable: objects made from a template keep what it said; "
    "create a new PlunderMachineTemplate and point the MachineDeployment or "
    "KubeadmControlPlane at it"
)


def template_immutable_policy() -> dict[str, Any]:
    """The ValidatingAdmissionPolicy: a changed spec.template.spec is refused, but the dry run."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": TEMPLATE_IMMUTABLE_POLICY},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [INFRASTRUCTURE_GROUP],
                        "apiVersions": [VERSION],
                        "operations": ["UPDATE"],
                        "resources": [PlunderMachineTemplate.info.plural],
                    }
                ]
            },
            "validations": [
                {
                    "expression": (
                        "object.spec.template.spec == oldObject.spec.template.spec"
                        " || (request.dryRun == true"
                        " && has(object.metadata.annotations)"
                        f" && '{TOPOLOGY_DRY_RUN_ANNOTATION}' in object.metadata.annotations)"
                    ),
                    "message": TEMPLATE_IMMUTABLE_MESSAGE,
                    "reason": "Invalid",
                }
            ],
        },
    }


def template_immutable_binding() -> dict[str, Any]:
    """The binding that puts the policy in force, in every namespace."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": TEMPLATE_IMMUTABLE_POLICY},
        "spec": {"policyName": TEMPLATE_IMMUTABLE_POLICY, "validationActions": ["Deny"]},
    }


def all_policies() -> list[dict[str, Any]]:
    """Every admission policy and binding of the provider, in the order to apply them."""
    return [template_immutable_policy(), template_immutable_binding()]
