"""The Cluster API infrastructure kinds: PlunderCluster, PlunderMachine and their templates.

They follow Cluster API's infrastructure provider contract, v1beta2 (``status.initialization``,
``status.conditions`` as ``metav1.Condition``) while keeping what v1beta1 readers look for
(``status.ready``, ``status.failureReason``/``failureMessage``, ``status.deprecated.v1beta1``).
Cluster API reads whichever contract the CRD's labels name: both are named.

The host a machine is bound to is kept in ``status.hostRef`` for people and in the
``plunder.dev/host`` annotation for programs, because ``clusterctl move`` does not carry status.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from plunder.api import rules
from plunder.api.base import KubeModel, PrinterColumn, Resource, ResourceInfo, cel, validations
from plunder.api.common import (
    CLUSTER_NAME_LABEL,
    INFRASTRUCTURE_GROUP,
    MAC_PATTERN,
    PROVIDER_LABEL,
    PROVIDER_NAME,
    VERSION,
    APIEndpoint,
    Condition,
    DeploymentType,
    DeprecatedStatus,
    FailureDomain,
    Image,
    Initialization,
    LabelSelector,
    LabelValue,
    MachineAddress,
    PoolReference,
    StaticNetwork,
)
from plunder.api.rules import Enforce, Rule

CONTRACT_LABELS = {
    PROVIDER_LABEL: PROVIDER_NAME,
    # Cluster API finds the API version that serves each contract through these labels.
    "cluster.x-k8s.io/v1beta1": VERSION,
    "cluster.x-k8s.io/v1beta2": VERSION,
}
HOST_ANNOTATION = "plunder.dev/host"
"""Annotation on a PlunderMachine naming its PlunderHost; survives ``clusterctl move``."""

MachineState = Literal[
    "Pending", "WaitingForHost", "Provisioning", "Provisioned", "Deprovisioning", "Failed"
]


def _category_info(kind: str, plural: str, short: str, *columns: PrinterColumn) -> ResourceInfo:
    return ResourceInfo(
        group=INFRASTRUCTURE_GROUP,
        version=VERSION,
        kind=kind,
        plural=plural,
        short_names=(short,),
        categories=("cluster-api", "plunder"),
        labels=CONTRACT_LABELS,
        printer_columns=columns,
        has_status=not kind.endswith("Template"),
    )


_ESCAPED_CLUSTER_LABEL = CLUSTER_NAME_LABEL.replace(".", "\\.")
_CLUSTER_COLUMN = PrinterColumn(
    "Cluster",
    f".metadata.labels['{_ESCAPED_CLUSTER_LABEL}']",
    description="The Cluster this object belongs to",
)
_AGE_COLUMN = PrinterColumn("Age", ".metadata.creationTimestamp", type="date")


# ---------------------------------------------------------------------------------- cluster


class PlunderClusterSpec(KubeModel):
    """The desired state of a PlunderCluster."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            # An endpoint stored with port 0 (before port 0 was refused) was never reachable:
            # it may still be completed.
            cel(
                "!has(oldSelf.controlPlaneEndpoint)"
                " || !has(oldSelf.controlPlaneEndpoint.host)"
                " || oldSelf.controlPlaneEndpoint.host == ''"
                " || !has(oldSelf.controlPlaneEndpoint.port)"
                " || oldSelf.controlPlaneEndpoint.port == 0"
                " || (has(self.controlPlaneEndpoint)"
                " && self.controlPlaneEndpoint == oldSelf.controlPlaneEndpoint)",
                "spec.controlPlaneEndpoint is immutable once set: Cluster API, the certificates "
                "and every node use it; to move the API server, create a new cluster",
                field_path=".controlPlaneEndpoint",
            )
        )
    )

    control_plane_endpoint: APIEndpoint | None = None
    """Where the workload cluster's API server will be reached: a VIP that you provide, or left
    empty to take the address of the first control-plane host."""
    failure_domain_label: (
        Annotated[str, Enforce(rules.label_key("spec.failureDomainLabel"))] | None
    ) = Field(default=None, max_length=317)
    """A host label whose values are the cluster's failure domains (for example
    topology.kubernetes.io/zone); empty for none."""


class PlunderClusterStatus(KubeModel):
    """The observed state of a PlunderCluster."""

    initialization: Initialization | None = None
    """The contract's initialization flags; ``provisioned`` is true once the endpoint is known."""
    ready: bool | None = None
    """The v1beta1 contract's flag: true once the cluster's infrastructure is provisioned."""
    failure_domains: list[FailureDomain] | None = Field(default=None, max_length=100)
    """The failure domains machines can be spread over, taken from the hosts' labels."""
    conditions: list[Condition] | None = Field(default=None, max_length=32)
    """The cluster's conditions (Ready, Paused, …)."""
    failure_reason: str | None = Field(default=None, max_length=256)
    """A terminal problem's reason, for readers of the v1beta1 contract."""
    failure_message: str | None = Field(default=None, max_length=10240)
    """A terminal problem's explanation, for readers of the v1beta1 contract."""
    deprecated: DeprecatedStatus | None = None
    """Fields kept for readers of older Cluster API contracts."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` the controller last acted on."""


class PlunderCluster(Resource):
    """The bare-metal infrastructure of one Cluster API cluster.

    It holds the control-plane endpoint and failure domains; the cluster's machines are
    PlunderMachines.
    """

    info = _category_info(
        "PlunderCluster",
        "plunderclusters",
        "plc",
        _CLUSTER_COLUMN,
        PrinterColumn(
            "Endpoint", ".spec.controlPlaneEndpoint.host", description="Control-plane endpoint"
        ),
        PrinterColumn("Provisioned", ".status.initialization.provisioned", type="boolean"),
        _AGE_COLUMN,
    )

    spec: PlunderClusterSpec = Field(default_factory=PlunderClusterSpec)
    """What the cluster's infrastructure should be."""
    status: PlunderClusterStatus | None = None
    """What the controller observed."""


def _immutable_template(kind: str, users: str) -> Rule:
    """A template's spec.template.spec does not change (Cluster API's rule for templates)."""
    return Rule(
        "self == oldSelf",
        f"spec.template.spec is immutable: objects made from a template keep what it said; "
        f"create a new {kind} and point {users} at it",
        None,
    )


class PlunderClusterTemplateResource(KubeModel):
    """The PlunderCluster that a template stamps out."""

    spec: Annotated[
        PlunderClusterSpec,
        Enforce(_immutable_template("PlunderClusterTemplate", "the ClusterClass")),
    ] = Field(default_factory=PlunderClusterSpec)
    """The spec of PlunderClusters made from this template."""


class PlunderClusterTemplateSpec(KubeModel):
    """The desired state of a PlunderClusterTemplate."""

    template: PlunderClusterTemplateResource
    """The PlunderCluster to make."""


class PlunderClusterTemplate(Resource):
    """A template of PlunderClusters, for ClusterClass."""

    info = _category_info("PlunderClusterTemplate", "plunderclustertemplates", "plct", _AGE_COLUMN)

    spec: PlunderClusterTemplateSpec
    """The template."""


# ---------------------------------------------------------------------------------- machine

_PROVIDER_ID_PATTERN = MAC_PATTERN.replace("^", "^plunder://")


class PlunderMachineSpec(KubeModel):
    """The desired state of a PlunderMachine: which hosts qualify and what to install."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.image) != has(self.deploymentType)",
                "set exactly one of spec.image (stream a disk image) or spec.deploymentType "
                "(preseed or kickstart install)",
            ),
            cel(
                "!(has(self.network) && has(self.addressFromPool))",
                "set at most one of spec.network (a static address) or spec.addressFromPool "
                "(an IPAM pool)",
            ),
            cel(
                "!has(oldSelf.providerID) || "
                "(has(self.providerID) && self.providerID == oldSelf.providerID)",
                "spec.providerID is immutable once set",
                field_path=".providerID",
            ),
        )
    )

    provider_id: (
        Annotated[
            str,
            Enforce(
                Rule(
                    f"self.matches({rules.cel_string(_PROVIDER_ID_PATTERN)})",
                    "spec.providerID must be plunder://<mac>, like plunder://00:50:56:a5:11:20",
                    lambda value: rules.matches(_PROVIDER_ID_PATTERN, value),
                )
            ),
        ]
        | None
    ) = Field(default=None, alias="providerID", max_length=64)
    """Set by the controller once a host is bound: ``plunder://<boot MAC>``. Immutable once set."""
    host_selector: LabelSelector | None = None
    """Which hosts may be claimed for this machine, by their labels; empty for any host."""
    image: Image | None = None
    """The OS image to stream onto the host's disk. Set this or deploymentType."""
    deployment_type: DeploymentType | None = None
    """Install with the distribution's own installer, as the original plunder did: preseed
    (Debian) or kickstart (RHEL). Set this or image."""
    network: StaticNetwork | None = None
    """A static address for the machine, as the original plunder's ``ipaddress``."""
    address_from_pool: PoolReference | None = None
    """Take the machine's address from this IP pool (Cluster API IPAM contract)."""


class HostReference(KubeModel):
    """The PlunderHost a machine is bound to."""

    name: str = Field(max_length=253)
    """The PlunderHost's name."""
    uid: str | None = Field(default=None, max_length=36)
    """The PlunderHost's uid."""


class PlunderMachineStatus(KubeModel):
    """The observed state of a PlunderMachine."""

    state: MachineState | None = None
    """Where the machine is: Pending, WaitingForHost, Provisioning, Provisioned,
    Deprovisioning or Failed."""
    host_ref: HostReference | None = None
    """The PlunderHost bound to this machine."""
    initialization: Initialization | None = None
    """The contract's initialization flags; ``provisioned`` is true once the OS is up."""
    ready: bool | None = None
    """The v1beta1 contract's flag: true once the machine is provisioned."""
    addresses: list[MachineAddress] | None = Field(default=None, max_length=32)
    """The machine's addresses, copied by Cluster API to the Machine."""
    failure_domain: str | None = Field(default=None, max_length=256)
    """The failure domain the machine's host is in."""
    conditions: list[Condition] | None = Field(default=None, max_length=32)
    """The machine's conditions (Ready, HostClaimed, Provisioned, Paused, …)."""
    failure_reason: str | None = Field(default=None, max_length=256)
    """A terminal problem's reason, for readers of the v1beta1 contract."""
    failure_message: str | None = Field(default=None, max_length=10240)
    """A terminal problem's explanation, for readers of the v1beta1 contract."""
    deprecated: DeprecatedStatus | None = None
    """Fields kept for readers of older Cluster API contracts."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` the controller last acted on."""


class PlunderMachine(Resource):
    """A Cluster API machine on a bare-metal host.

    The controller claims a free PlunderHost that matches, installs the OS with the machine's
    bootstrap data, and reports it provisioned.
    """

    info = _category_info(
        "PlunderMachine",
        "plundermachines",
        "plm",
        _CLUSTER_COLUMN,
        PrinterColumn("State", ".status.state", description="Where the machine is"),
        PrinterColumn("Host", ".status.hostRef.name", description="The bound PlunderHost"),
        PrinterColumn("ProviderID", ".spec.providerID"),
        _AGE_COLUMN,
    )

    spec: PlunderMachineSpec
    """What the machine should be."""
    status: PlunderMachineStatus | None = None
    """What the controller observed."""


_TEMPLATE_LABELS = "spec.template.metadata.labels"
_TEMPLATE_ANNOTATIONS = "spec.template.metadata.annotations"


class ObjectMetaTemplate(KubeModel):
    """Labels and annotations given to objects made from a template."""

    labels: (
        Annotated[
            dict[str, Annotated[LabelValue, Enforce(rules.label_value(_TEMPLATE_LABELS))]],
            Enforce(rules.label_keys(_TEMPLATE_LABELS)),
        ]
        | None
    ) = Field(default=None, max_length=64)
    """Labels for the new objects."""
    annotations: (
        Annotated[dict[str, str], Enforce(rules.label_keys(_TEMPLATE_ANNOTATIONS))] | None
    ) = Field(default=None, max_length=64)
    """Annotations for the new objects."""


class PlunderMachineTemplateResource(KubeModel):
    """The PlunderMachine that a template stamps out."""

    object_rules = (
        Rule(
            "!has(self.spec.providerID)",
            "spec.template.spec.providerID must not be set: the controller sets each "
            "PlunderMachine's providerID when it binds a host; remove it from the template",
            lambda resource: resource.spec.provider_id is None,
            field_path=".spec.providerID",
        ),
    )

    metadata: ObjectMetaTemplate | None = None
    """Labels and annotations for PlunderMachines made from this template."""
    # Immutable too, but not by a CEL rule here: Cluster API's topology controller dry-runs a
    # changed spec onto the current template to decide whether to rotate it, and that dry run
    # must pass. CRD rules cannot tell a dry run from a change; the admission policy of
    # plunder.api.policies can.
    spec: PlunderMachineSpec
    """The spec of PlunderMachines made from this template."""


class PlunderMachineTemplateSpec(KubeModel):
    """The desired state of a PlunderMachineTemplate."""

    template: PlunderMachineTemplateResource
    """The PlunderMachine to make."""


class PlunderMachineTemplate(Resource):
    """A template of PlunderMachines, for MachineDeployments, KubeadmControlPlane, ClusterClass."""

    info = _category_info("PlunderMachineTemplate", "plundermachinetemplates", "plmt", _AGE_COLUMN)

    spec: PlunderMachineTemplateSpec
    """The template."""
