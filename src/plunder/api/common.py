"""Types shared by the Cluster API kinds and the host inventory.

Where Cluster API defines a type (conditions, addresses, endpoints, failure domains) the field
names and meanings are Cluster API's, so that its controllers and ``clusterctl describe`` read ours.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from plunder.api import rules
from plunder.api.base import KubeModel, cel, validations
from plunder.api.rules import Enforce, Rule

INFRASTRUCTURE_GROUP = "infrastructure.cluster.x-k8s.io"
INVENTORY_GROUP = "metal.plunder.dev"
VERSION = "v1alpha1"
PROVIDER_LABEL = "cluster.x-k8s.io/provider"
PROVIDER_NAME = "infrastructure-plunder"
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"

CLUSTERCTL_LABEL = "clusterctl.cluster.x-k8s.io"
"""clusterctl's mark on every component it installed: ``clusterctl move`` considers only the kinds
whose CRD carries it."""
MOVE_LABEL = "clusterctl.cluster.x-k8s.io/move"
"""On a CRD or an object: ``clusterctl move`` takes it along even when no Cluster owns it."""
MOVE_HIERARCHY_LABEL = "clusterctl.cluster.x-k8s.io/move-hierarchy"
"""On a CRD: ``clusterctl move`` takes every object of the kind along, with what it owns."""
BLOCK_MOVE_ANNOTATION = "clusterctl.cluster.x-k8s.io/block-move"
"""On an object to be moved: ``clusterctl move`` waits (after pausing the Clusters) until it is
gone, so the provider can make the object ready first."""

MAC_PATTERN = rules.MAC


def mac_rule(path: str) -> dict[str, str]:
    """A MAC address in the canonical form this project stores and looks up by (CEL only)."""
    return rules.mac_address(path)[0].validation()


def ip_rule(path: str) -> dict[str, str]:
    """An IPv4 or IPv6 address, without a prefix length (CEL only)."""
    return rules.ip_address(path).validation()


IPAddress = Annotated[str, Field(max_length=45)]
"""An IPv4 or IPv6 address as text (validated by the CEL rule on the field that uses it)."""


class Condition(KubeModel):
    """One aspect of the object's state, as Kubernetes' ``metav1.Condition``."""

    type: str = Field(max_length=316)
    """The condition's type in CamelCase, such as Ready, Provisioned or Paused."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds: True, False or Unknown."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` this condition was computed from."""
    last_transition_time: datetime
    """When the status last changed."""
    reason: str | None = Field(default=None, max_length=1024)
    """A CamelCase word for why the condition is as it is; for programs and alerts."""
    message: str | None = Field(default=None, max_length=32768)
    """A sentence for a person: what happened and what to do about it."""


class V1Beta1Condition(KubeModel):
    """A condition in the form of Cluster API's v1beta1 contract (kept while readers move on)."""

    type: str = Field(max_length=256)
    """The condition's type in CamelCase."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds: True, False or Unknown."""
    severity: Literal["Error", "Warning", "Info", ""] | None = None
    """How bad a False condition is: Error, Warning or Info."""
    last_transition_time: datetime
    """When the status last changed."""
    reason: str | None = Field(default=None, max_length=256)
    """A CamelCase word for why the condition is as it is."""
    message: str | None = Field(default=None, max_length=10240)
    """A sentence for a person."""


class V1Beta1Status(KubeModel):
    """What Cluster API's v1beta1 contract reads, kept beside the v1beta2 fields."""

    conditions: list[V1Beta1Condition] | None = Field(default=None, max_length=32)
    """Conditions in the v1beta1 form (with severity)."""
    failure_reason: str | None = Field(default=None, max_length=256)
    """A terminal problem's reason, in the v1beta1 place."""
    failure_message: str | None = Field(default=None, max_length=10240)
    """A terminal problem's explanation, in the v1beta1 place."""


class DeprecatedStatus(KubeModel):
    """Status fields of older contracts, grouped as Cluster API groups them."""

    v1beta1: V1Beta1Status | None = Field(default=None, alias="v1beta1")
    """Fields of the v1beta1 contract."""


class Initialization(KubeModel):
    """The contract's initialization flags (v1beta2)."""

    provisioned: bool | None = None
    """True once the infrastructure is provisioned; Cluster API reads it and never expects it
    to go back to false."""


class ObjectReference(KubeModel):
    """A reference to another object, by kind and name (and uid once bound)."""

    api_version: str | None = Field(default=None, max_length=253)
    """The referenced object's apiVersion."""
    kind: str | None = Field(default=None, max_length=63)
    """The referenced object's kind."""
    name: str = Field(max_length=253)
    """The referenced object's name."""
    namespace: str | None = Field(default=None, max_length=63)
    """The referenced object's namespace; empty for cluster-scoped objects."""
    uid: str | None = Field(default=None, max_length=36)
    """The referenced object's uid, so that a new object of the same name is not taken for it."""


class SecretReference(KubeModel):
    """A Secret, by name and namespace."""

    name: Annotated[str, Enforce(rules.secret_name("spec.userData.name"))] = Field(max_length=253)
    """The Secret's name."""
    namespace: Annotated[str, Enforce(rules.namespace_name("spec.userData.namespace"))] | None = (
        Field(default=None, max_length=63)
    )
    """The Secret's namespace; defaults to the referring object's namespace."""


class MachineAddress(KubeModel):
    """An address of a machine, as Cluster API's ``MachineAddress``."""

    type: Literal["Hostname", "ExternalIP", "InternalIP", "ExternalDNS", "InternalDNS"]
    """The kind of address: Hostname, ExternalIP, InternalIP, ExternalDNS or InternalDNS."""
    address: str = Field(max_length=256)
    """The address itself."""


class APIEndpoint(KubeModel):
    """Where a cluster's Kubernetes API server is reached."""

    # Port 0 means "not yet known", as in Cluster API; with a host it would be an endpoint that
    # nothing can reach, and the endpoint is immutable once its host is set.
    object_rules = (
        Rule(
            "!has(self.host) || self.host == '' || (has(self.port) && self.port >= 1)",
            "spec.controlPlaneEndpoint.port must be from 1 to 65535 (usually 6443) when "
            "spec.controlPlaneEndpoint.host is set",
            lambda endpoint: endpoint.host == "" or endpoint.port >= 1,
            field_path=".port",
        ),
    )

    host: Annotated[str, Enforce(rules.endpoint_host("spec.controlPlaneEndpoint.host"))] = Field(
        default="", max_length=253
    )
    """The IP address or DNS name of the API server (a VIP, or the first control-plane host)."""
    port: int = Field(default=0, ge=0, le=65535)
    """The API server's TCP port, usually 6443; 0 only while host is empty."""


class FailureDomain(KubeModel):
    """A failure domain, in the list form of Cluster API's v1beta2 contract."""

    name: str = Field(max_length=256)
    """The failure domain's name: the value of the host label that defines it."""
    control_plane: bool | None = None
    """Whether control-plane machines may be placed in it."""
    attributes: dict[str, str] | None = None
    """Free-form attributes of the failure domain."""


_EXPRESSIONS = "spec.hostSelector.matchExpressions[]"
_MATCH_LABELS = "spec.hostSelector.matchLabels"

LabelValue = Annotated[str, Field(max_length=63)]
"""A label's value (validated by the rule of the field that uses it)."""


class LabelSelectorRequirement(KubeModel):
    """One requirement of a label selector."""

    # What Kubernetes' own label selectors refuse (metav1.LabelSelectorRequirement).
    object_rules = (
        Rule(
            "!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
            f"{_EXPRESSIONS}.values must list at least one value when operator is In or NotIn",
            lambda r: r.operator not in ("In", "NotIn") or bool(r.values),
            field_path=".values",
        ),
        Rule(
            "!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values)"
            " || size(self.values) == 0",
            f"{_EXPRESSIONS}.values must be empty when operator is Exists or DoesNotExist",
            lambda r: r.operator not in ("Exists", "DoesNotExist") or not r.values,
            field_path=".values",
        ),
    )

    key: Annotated[str, Enforce(rules.label_key(f"{_EXPRESSIONS}.key"))] = Field(max_length=317)
    """The label key the requirement applies to."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    """How the key relates to the values: In, NotIn, Exists or DoesNotExist."""
    values: (
        list[Annotated[LabelValue, Enforce(rules.label_value(f"{_EXPRESSIONS}.values"))]] | None
    ) = Field(default=None, max_length=64)
    """The values for In and NotIn; empty for Exists and DoesNotExist."""


class LabelSelector(KubeModel):
    """Which hosts qualify, by their labels (as Kubernetes' label selectors)."""

    match_labels: (
        Annotated[
            dict[str, Annotated[LabelValue, Enforce(rules.label_value(_MATCH_LABELS))]],
            Enforce(rules.label_keys(_MATCH_LABELS)),
        ]
        | None
    ) = Field(default=None, max_length=64)
    """Labels a host must carry, with these values."""
    match_expressions: list[LabelSelectorRequirement] | None = Field(default=None, max_length=32)
    """Further requirements, all of which must hold."""


ChecksumType = Literal["sha256", "sha512"]
ImageFormat = Literal["raw", "raw-gzip", "raw-xz", "raw-lzop"]
"""What the agent can stream onto a disk. (qcow2 cannot be streamed: convert it to raw first,
for example `qemu-img convert -O raw`, and compress that.)"""
DeploymentType = Literal["preseed", "kickstart"]


class Image(KubeModel):
    """An OS disk image that the agent streams onto the host's root disk."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.checksum)",
                "spec.image.checksum is required: the agent verifies every image it writes",
                field_path=".checksum",
            ),
            cel(
                "!has(self.checksum) || (self.checksum.matches('^https?://')"
                " ? isURL(self.checksum)"
                " : self.checksumType == 'sha512'"
                " ? self.checksum.matches('^[0-9a-f]{128}$')"
                " : self.checksum.matches('^[0-9a-f]{64}$'))",
                "spec.image.checksum must be the image's lower-case hex digest for checksumType "
                "(64 digits for sha256, 128 for sha512), or the http(s) URL of a checksum file",
                field_path=".checksum",
            ),
        )
    )

    url: Annotated[
        str,
        Enforce(
            Rule(
                "self.matches('^https?://')",
                "spec.image.url must be an http:// or https:// URL",
                lambda value: rules.matches("^https?://", value),
            ),
            *rules.url("spec.image.url", "http://172.31.99.1:8080/images/debian.raw"),
        ),
    ] = Field(max_length=2048)
    """Where the image is served from (usually the boot service's HTTP server)."""
    checksum: (
        Annotated[
            str, Enforce(*rules.url("spec.image.checksum", "http://172.31.99.1:8080/SHA256SUMS"))
        ]
        | None
    ) = Field(default=None, max_length=2048)
    """The image's digest in lower-case hex, or (as in Metal3) the URL of a checksum file as
    ``sha256sum`` writes it: the line naming the image's file, or the file's only line. The
    agent fetches that file just before writing. A mismatch fails the host instead of booting
    it."""
    checksum_type: ChecksumType = "sha256"
    """The digest's algorithm: sha256 or sha512."""
    format: ImageFormat = "raw"
    """How the image is stored: raw, or raw compressed with gzip, xz or lzop (lzop costs the
    agent the least CPU: the fastest to provision where CPU is scarce, as under emulation)."""


class StaticNetwork(KubeModel):
    """A fixed address for the machine's provisioning interface, as the seed's ``ipaddress``."""

    object_rules = (
        Rule(
            "!isIP(self.ipAddress) || ip(self.ipAddress).family() == 6 || !has(self.prefixLength)"
            " || self.prefixLength <= 32",
            "spec.network.prefixLength must be at most 32 for an IPv4 spec.network.ipAddress "
            "(it is the length of the subnet's prefix, like 24)",
            lambda n: (
                not rules.is_ip(n.ip_address)
                or rules.ip_family(n.ip_address) == 6
                or n.prefix_length <= 32
            ),
            field_path=".prefixLength",
        ),
        Rule(
            "!has(self.gateway) || !isIP(self.ipAddress) || !isIP(self.gateway)"
            " || ip(self.gateway).family() == ip(self.ipAddress).family()",
            "spec.network.gateway must be of the family of spec.network.ipAddress: an IPv4 "
            "gateway for an IPv4 address, an IPv6 gateway for an IPv6 address",
            lambda n: (
                n.gateway is None
                or not rules.is_ip(n.ip_address)
                or not rules.is_ip(n.gateway)
                or rules.ip_family(n.gateway) == rules.ip_family(n.ip_address)
            ),
            field_path=".gateway",
        ),
    )

    ip_address: Annotated[IPAddress, Enforce(rules.ip_address("spec.network.ipAddress"))] = Field(
        alias="ipAddress"
    )
    """The machine's address."""
    prefix_length: int = Field(default=24, ge=1, le=128)
    """The prefix length of the machine's subnet, such as 24 (at most 32 for IPv4)."""
    gateway: Annotated[IPAddress, Enforce(rules.ip_address("spec.network.gateway"))] | None = None
    """The default gateway, if any: of the address's family."""
    nameservers: (
        Annotated[list[IPAddress], Enforce(rules.ip_addresses("spec.network.nameservers"))] | None
    ) = Field(default=None, max_length=3)
    """DNS servers, at most three."""


class PoolReference(KubeModel):
    """An IP address pool under Cluster API's IPAM contract."""

    api_group: str = Field(max_length=253)
    """The pool's API group, such as ipam.cluster.x-k8s.io."""
    kind: str = Field(max_length=63)
    """The pool's kind, such as InClusterIPPool."""
    name: str = Field(max_length=253)
    """The pool's name, in the machine's namespace."""


class Phase(KubeModel):
    """When one phase of a host's life started and ended, so a person sees where time goes."""

    name: str = Field(max_length=63)
    """The phase: inspecting, provisioning, deprovisioning, …"""
    started: datetime
    """When it began."""
    finished: datetime | None = None
    """When it ended; empty while it runs."""
    bytes: int | None = Field(default=None, ge=0)
    """What the phase wrote to disk, in bytes (the image, for ``writing``)."""
    disk_bytes_per_second: int | None = Field(default=None, ge=0)
    """The disk's direct-write speed, measured by the agent just before ``writing``."""
