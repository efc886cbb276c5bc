"""PlunderHost: one bare-metal server in the inventory.

It lives in its own API group so the inventory and the boot service are usable without Cluster
API. A host appears by itself when it first network-boots (state ``discovered``) or is created
with a BMC address; a PlunderMachine claims it by setting ``spec.consumerRef`` in a write guarded
by resourceVersion, so two machines never get one host.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from plunder.api import rules
from plunder.api.base import KubeModel, PrinterColumn, Resource, ResourceInfo, cel, validations
from plunder.api.common import (
    INVENTORY_GROUP,
    MOVE_HIERARCHY_LABEL,
    VERSION,
    Condition,
    DeploymentType,
    Image,
    IPAddress,
    ObjectReference,
    Phase,
    SecretReference,
    StaticNetwork,
)
from plunder.api.rules import Enforce, Rule

HostState = Literal[
    "discovered",
    "inspecting",
    "available",
    "provisioning",
    "provisioned",
    "deprovisioning",
    "error",
]

UNHEALTHY_ANNOTATION = "plunder.dev/unhealthy"
"""On a PlunderHost: it failed remediation (its value says which and why), so no machine claims
it until a person removes the annotation (``plunderctl host clear-unhealthy``). CAPM3's
``capm3.metal3.io/unhealthy``."""

PAUSED_ANNOTATION = "plunder.dev/paused"
"""On a PlunderHost: nothing acts on it (no state move, no power action, no release) while it is
there. Its value says who paused it: the machine controller writes :data:`PAUSED_BY_CLUSTER`
while the host's machine is paused (its Cluster is, for ``clusterctl move``) and removes only
that value; a person may pause a host with any other. Metal3's
``baremetalhost.metal3.io/paused``."""
PAUSED_BY_CLUSTER = "plunder.dev/cluster"
"""The value of :data:`PAUSED_ANNOTATION` the machine controller writes (CAPM3's
``metal3.io/capm3``)."""
STATUS_RECORD_ANNOTATION = "plunder.dev/status"
"""On a PlunderHost: a copy of its status, written when the host is paused for its machine's
Cluster (``clusterctl move`` carries annotations but no status); a host that arrives with one
and no status has its status rebuilt from it. Metal3's ``baremetalhost.metal3.io/status``."""

# The forms the power drivers parse (plunder.power.base.parse_address); host and port are
# checked by the URL rules, so an IPv6 BMC is written ipmi://[fd00::9]:623.
_BMC_ADDRESS = (
    r"^(redfish(\+https?)?://[^/\x00-\x20\x7f]+/redfish/v1/Systems/[^/\x00-\x20\x7f]+/?"
    r"|ipmi://[^/\x00-\x20\x7f]+/?)$"
)


class BMC(KubeModel):
    """How to reach the host's baseboard management controller."""

    address: Annotated[
        str,
        Enforce(
            Rule(
                f"self.matches({rules.cel_string(_BMC_ADDRESS)})",
                "spec.bmc.address must be redfish://host[:port]/redfish/v1/Systems/ID "
                "(or redfish+http://, redfish+https://) or ipmi://host[:port]",
                lambda value: rules.matches(_BMC_ADDRESS, value),
            ),
            *rules.url("spec.bmc.address", "ipmi://[fd00::9]:623"),
        ),
    ] = Field(max_length=2048)
    """The BMC's address; its scheme picks the power driver (redfish or ipmi). An IPv6 address
    goes in brackets: ipmi://[fd00::9]:623."""
    credentials_name: Annotated[str, Enforce(rules.secret_name("spec.bmc.credentialsName"))] = (
        Field(max_length=253)
    )
    """The Secret (in the host's namespace) with ``username`` and ``password``."""
    disable_certificate_verification: bool = False
    """Skip TLS certificate verification of the BMC. Off by default; only for lab BMCs."""


SSHPublicKey = Annotated[str, Field(max_length=4096)]
"""One OpenSSH public key line (validated by the CEL rule on the field that uses it)."""


class RootDeviceHints(KubeModel):
    """Which disk to install on, when a host has several; all given hints must match."""

    device_name: str | None = Field(default=None, max_length=256)
    """The device's path, such as /dev/vda."""
    min_size_gigabytes: int | None = Field(default=None, ge=0)
    """The smallest acceptable size, in GB."""
    serial_number: str | None = Field(default=None, max_length=256)
    """The disk's serial number."""


class PlunderHostSpec(KubeModel):
    """The desired state of a host: its identity, BMC, owner and what to install."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.bootMACAddress == oldSelf.bootMACAddress",
                "spec.bootMACAddress is immutable: a different MAC is a different host",
                field_path=".bootMACAddress",
            ),
            cel(
                "!(has(self.image) && has(self.deploymentType))",
                "set at most one of spec.image or spec.deploymentType",
            ),
        )
    )

    boot_mac_address: Annotated[str, Enforce(*rules.mac_address("spec.bootMACAddress"))] = Field(
        alias="bootMACAddress", max_length=17
    )
    """The MAC address of the NIC the host network-boots from; the host's identity."""
    bmc: BMC | None = None
    """The host's BMC; empty for hosts driven only by the network-boot loop."""
    online: bool = True
    """Whether the host should be powered on."""
    accepted: bool = False
    """Whether the host was accepted into the pool (by a person, or by the boot service's
    auto-accept setting). Until then it is only inspected: its disks are never written or
    wiped, and no machine is given it."""
    consumer_ref: ObjectReference | None = None
    """Who the host is claimed by (usually a PlunderMachine); empty while it is free."""
    image: Image | None = None
    """The OS image to install."""
    deployment_type: DeploymentType | None = None
    """Install with preseed (Debian) or kickstart (RHEL) instead of an image."""
    user_data: SecretReference | None = None
    """The Secret whose ``value`` (and ``format``) is the cloud-init bootstrap data."""
    network: StaticNetwork | None = None
    """A static address for the installed OS."""
    ssh_authorized_keys: list[SSHPublicKey] | None = Field(
        default=None,
        max_length=32,
        json_schema_extra=validations(
            cel(
                r"self.all(k, k.matches("
                r"'^[a-z0-9@.-]+ [A-Za-z0-9+/=]+( [^\\x22\\\\\\x00-\\x1f]*)?$'))",
                "spec.sshAuthorizedKeys must be OpenSSH public keys, one per item "
                "(type, base64 key, optional comment without quotes or backslashes)",
            )
        ),
    )
    """Public keys for root's ``authorized_keys`` on a preseed or kickstart install."""
    root_device_hints: RootDeviceHints | None = None
    """Which disk to install on."""
    wipe_mode: Literal["metadata", "full"] = "metadata"
    """How to clean the disk when the host is released: metadata (partition tables, signatures,
    first and last MiB: seconds) or full (every byte: slow)."""
    park_mode: Literal["poll", "reboot"] = "poll"
    """How an idle host waits for work: poll (the agent or iPXE asks the boot service again) or
    reboot (the original plunder's reboot loop, for hosts that cannot run the agent)."""


class CPUInfo(KubeModel):
    """The host's processors."""

    count: int = Field(ge=0)
    """Logical CPUs."""
    model: str | None = Field(default=None, max_length=256)
    """The CPU model name."""


class DiskInfo(KubeModel):
    """One disk of the host."""

    name: str = Field(max_length=256)
    """The device's path, such as /dev/vda."""
    size_bytes: int = Field(ge=0)
    """Its size in bytes."""
    model: str | None = Field(default=None, max_length=256)
    """Its model."""
    serial: str | None = Field(default=None, max_length=256)
    """Its serial number."""
    rotational: bool | None = None
    """Whether it spins."""


class NICInfo(KubeModel):
    """One network interface of the host."""

    name: str = Field(max_length=64)
    """The interface name in the agent, such as eth0."""
    mac: str = Field(max_length=17)
    """Its MAC address."""
    ip: str | None = Field(default=None, max_length=45)
    """Its address, if it has one."""


class HardwareDetails(KubeModel):
    """What inspection found."""

    system_vendor: str | None = Field(default=None, max_length=256)
    """The DMI system vendor."""
    product_name: str | None = Field(default=None, max_length=256)
    """The DMI product name."""
    serial_number: str | None = Field(default=None, max_length=256)
    """The DMI serial number."""
    cpu: CPUInfo | None = None
    """The processors."""
    memory_mib: int | None = Field(default=None, alias="memoryMiB", ge=0)
    """Memory, in MiB."""
    disks: list[DiskInfo] | None = Field(default=None, max_length=64)
    """The disks."""
    nics: list[NICInfo] | None = Field(default=None, max_length=64)
    """The network interfaces."""


class WriteProgress(KubeModel):
    """How far the agent's image write has got, from its byte counts (rate-limited)."""

    downloaded_bytes: int | None = Field(default=None, ge=0)
    """The image's bytes downloaded so far (compressed, as published)."""
    image_bytes: int | None = Field(default=None, ge=0)
    """The image's size as its server announced it (empty if it did not)."""
    written_bytes: int | None = Field(default=None, ge=0)
    """Bytes written to the disk so far (decompressed)."""
    updated: datetime
    """When the agent reported these counts."""


class PlunderHostStatus(KubeModel):
    """What was observed of the host."""

    state: HostState | None = None
    """Where the host is in its life: discovered, inspecting, available, provisioning,
    provisioned, deprovisioning, or error."""
    error_reason: str | None = Field(default=None, max_length=256)
    """In state error: a CamelCase reason."""
    error_message: str | None = Field(default=None, max_length=10240)
    """In state error: what went wrong and what to do about it."""
    vendor: str | None = Field(default=None, max_length=256)
    """The NIC's vendor from the IEEE OUI registry (the seed's "Hardware Vendor")."""
    boot_firmware: Literal["bios", "uefi"] | None = None
    """The firmware the host network-booted with."""
    ip_address: IPAddress | None = None
    """The address the host had on the provisioning network when last seen."""
    first_seen: datetime | None = None
    """When the boot service first saw the host."""
    last_seen: datetime | None = None
    """When the boot service last heard from the host."""
    agent_boot_id: str | None = Field(default=None, alias="agentBootID", max_length=64)
    """The id of the host's current boot into the agent; the agent's token is derived from it."""
    powered_on: bool | None = None
    """The power state the BMC reported; empty without a BMC."""
    hardware: HardwareDetails | None = None
    """What inspection found."""
    phases: list[Phase] | None = Field(default=None, max_length=32)
    """When each phase of the current cycle started and ended."""
    write_progress: WriteProgress | None = None
    """The image write's progress while it runs (its last counts once it has ended)."""
    conditions: list[Condition] | None = Field(default=None, max_length=32)
    """The host's conditions."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The ``metadata.generation`` last acted on."""


class PlunderHost(Resource):
    """A bare-metal server: found when it network-boots, inspected, and lent to machines."""

    info = ResourceInfo(
        group=INVENTORY_GROUP,
        version=VERSION,
        kind="PlunderHost",
        plural="plunderhosts",
        short_names=("plh",),
        categories=("plunder",),
        # clusterctl move takes every host of the namespace along (with what the host owns),
        # as Metal3 labels its BareMetalHost CRD. The provider label comes with the release
        # (config/default) and clusterctl's own label with its install.
        labels={MOVE_HIERARCHY_LABEL: ""},
        printer_columns=(
            PrinterColumn("MAC", ".spec.bootMACAddress", description="Boot MAC address"),
            PrinterColumn("Vendor", ".status.vendor", description="NIC vendor (IEEE OUI)"),
            PrinterColumn("State", ".status.state"),
            PrinterColumn("Consumer", ".spec.consumerRef.name", description="Who claimed it"),
            PrinterColumn("Power", ".status.poweredOn", type="boolean"),
            PrinterColumn("Last Seen", ".status.lastSeen", type="date"),
            PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
        ),
    )

    spec: PlunderHostSpec
    """What the host should be."""
    status: PlunderHostStatus | None = None
    """What was observed."""
