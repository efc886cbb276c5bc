"""Manifests a new user might write, each refused or accepted by the schema, for two test suites.

tests/unit/test_schema_rules.py runs every case through the pydantic models and
tests/integration/test_schema_rules.py through a real kube-apiserver with the generated CRDs: the
same manifest must meet the same verdict, with the same message, in both. A refused manifest sits
beside an accepted neighbour that differs only in what the rule is about.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAC = "00:50:56:a5:11:20"
SHA256 = "a" * 64
INFRA = "infrastructure.cluster.x-k8s.io/v1alpha1"


@dataclass(frozen=True)
class Case:
    """One manifest and its verdict: ``message`` is None for accepted, else what names the field."""

    name: str
    manifest: dict[str, Any]
    message: str | None

    @property
    def kind(self) -> str:
        """The manifest's kind."""
        return str(self.manifest["kind"])


def host(**spec: Any) -> dict[str, Any]:
    """A PlunderHost with the boot MAC and ``spec``."""
    return {
        "apiVersion": "metal.plunder.dev/v1alpha1",
        "kind": "PlunderHost",
        "metadata": {"name": "h"},
        "spec": {"bootMACAddress": MAC, **spec},
    }


def bmc(address: str, credentials: str = "bmc-node1") -> dict[str, Any]:
    """A PlunderHost whose BMC is at ``address``."""
    return host(bmc={"address": address, "credentialsName": credentials})


def machine(**spec: Any) -> dict[str, Any]:
    """A PlunderMachine with a preseed install and ``spec``."""
    return {
        "apiVersion": INFRA,
        "kind": "PlunderMachine",
        "metadata": {"name": "m"},
        "spec": {"deploymentType": "preseed", **spec},
    }


def image_machine(**image: Any) -> dict[str, Any]:
    """A PlunderMachine that streams an image with ``image`` fields."""
    fields = {"url": "http://172.31.99.1:8080/images/debian.raw", "checksum": SHA256, **image}
    return {
        "apiVersion": INFRA,
        "kind": "PlunderMachine",
        "metadata": {"name": "m"},
        "spec": {"image": fields},
    }


def selector(**selector: Any) -> dict[str, Any]:
    """A PlunderMachine with a host selector."""
    return machine(hostSelector=selector)


def expression(key: str = "rack", operator: str = "In", values: Any = ("r1",)) -> dict[str, Any]:
    """A PlunderMachine selecting hosts by one expression."""
    requirement: dict[str, Any] = {"key": key, "operator": operator}
    if values is not None:
        requirement["values"] = list(values)
    return selector(matchExpressions=[requirement])


def cluster(**spec: Any) -> dict[str, Any]:
    """A PlunderCluster with ``spec``."""
    return {"apiVersion": INFRA, "kind": "PlunderCluster", "metadata": {"name": "c"}, "spec": spec}


def endpoint(host: str, port: int = 6443) -> dict[str, Any]:
    """A PlunderCluster with this control-plane endpoint."""
    return cluster(controlPlaneEndpoint={"host": host, "port": port})


def network(**fields: Any) -> dict[str, Any]:
    """A PlunderMachine with a static address."""
    return machine(network={"ipAddress": "172.31.99.20", "prefixLength": 24, **fields})


def machine_template(spec: dict[str, Any] | None = None, **template: Any) -> dict[str, Any]:
    """A PlunderMachineTemplate of a preseed machine (``spec`` replaces the machine's spec)."""
    return {
        "apiVersion": INFRA,
        "kind": "PlunderMachineTemplate",
        "metadata": {"name": "t"},
        "spec": {"template": {"spec": spec or {"deploymentType": "preseed"}, **template}},
    }


def cluster_template(spec: dict[str, Any]) -> dict[str, Any]:
    """A PlunderClusterTemplate of ``spec``."""
    return {
        "apiVersion": INFRA,
        "kind": "PlunderClusterTemplate",
        "metadata": {"name": "t"},
        "spec": {"template": {"spec": spec}},
    }


def remediation(**strategy: Any) -> dict[str, Any]:
    """A PlunderRemediation with these strategy fields."""
    return {
        "apiVersion": INFRA,
        "kind": "PlunderRemediation",
        "metadata": {"name": "r"},
        "spec": {"strategy": strategy},
    }


def remediation_template(**strategy: Any) -> dict[str, Any]:
    """A PlunderRemediationTemplate with these strategy fields."""
    return {
        "apiVersion": INFRA,
        "kind": "PlunderRemediationTemplate",
        "metadata": {"name": "rt"},
        "spec": {"template": {"spec": {"strategy": strategy}}},
    }


LONG_NAME = "a" * 64
"""One character more than a label, a label key's name or a DNS label may have."""

_KEYS = "spec.hostSelector.matchLabels keys must be label keys"
_VALUES = "spec.hostSelector.matchLabels must be label values"
_EXPRESSION_KEY = "spec.hostSelector.matchExpressions[].key must be a label key"
_EXPRESSION_VALUES = "spec.hostSelector.matchExpressions[].values must be label values"
_ENDPOINT_HOST = "spec.controlPlaneEndpoint.host must be an IP address"
_ENDPOINT_PORT = "spec.controlPlaneEndpoint.port must be from 1 to 65535 (usually 6443) when"
_BMC_PORT = "spec.bmc.address has a port out of range: give one from 1 to 65535"
_BMC_HOST = "spec.bmc.address must name its host after '//'"
_BMC_IPV4 = "spec.bmc.address names a host that is no IPv4 address"
_BMC_IPV6 = "spec.bmc.address has a host in brackets that is no IPv6 address"
_BMC_CREDENTIALS = "spec.bmc.address must not carry credentials (user:password@)"
_MAC = "spec.bootMACAddress must be the unicast MAC address of the host's boot NIC"
_URL_HOST = "spec.image.url must name its host after '//'"
_URL_BLANKS = "spec.image.url must not contain spaces or control characters"
_URL_CREDENTIALS = "spec.image.url must not carry credentials (user:password@)"
_URL_PORT = "spec.image.url has a port out of range"
_URL_IPV4 = "spec.image.url names a host that is no IPv4 address"
_URL_ESCAPE = "spec.image.url has a '%' that starts no percent-escape"
_CHECKSUM_HOST = "spec.image.checksum must name its host after '//'"
_CHECKSUM_CREDENTIALS = "spec.image.checksum must not carry credentials"
_CHECKSUM_BLANKS = "spec.image.checksum must not contain spaces"
_PREFIX = "spec.network.prefixLength must be at most 32 for an IPv4 spec.network.ipAddress"
_GATEWAY = "spec.network.gateway must be of the family of spec.network.ipAddress"
_SECRET = "spec.bmc.credentialsName must be a Secret's name"
_USER_DATA = "spec.userData.name must be a Secret's name"
_USER_DATA_NAMESPACE = "spec.userData.namespace must be a namespace's name"
_TEMPLATE_PROVIDER_ID = "spec.template.spec.providerID must not be set"
_TEMPLATE_LABELS = "spec.template.metadata.labels keys must be label keys"
_TEMPLATE_VALUES = "spec.template.metadata.labels must be label values"
_TEMPLATE_ANNOTATIONS = "spec.template.metadata.annotations keys must be label keys"
_FAILURE_DOMAIN = "spec.failureDomainLabel must be a label key"
_TIMEOUT = "spec.strategy.timeout must be a duration longer than zero"

CASES: list[Case] = [
    # --- label keys and values, selector operators (what metav1.LabelSelector refuses)
    Case("label key with a space", selector(matchLabels={"rack name": "r1"}), _KEYS),
    Case("label key starting with '-'", selector(matchLabels={"-rack": "r1"}), _KEYS),
    Case("label key name over 63", selector(matchLabels={LONG_NAME: "r1"}), _KEYS),
    Case("label key prefix upper-case", selector(matchLabels={"Lab.Example/rack": "r1"}), _KEYS),
    Case("label key with two slashes", selector(matchLabels={"a/b/c": "r1"}), _KEYS),
    Case("label key with an empty name", selector(matchLabels={"lab.example/": "r1"}), _KEYS),
    Case("label key prefix over 253", selector(matchLabels={"a" * 254 + "/rack": "r1"}), _KEYS),
    Case("label key prefixed, valid", selector(matchLabels={"lab.example/rack_1.a": "r1"}), None),
    Case("label key of 63, valid", selector(matchLabels={"a" * 63: "r1"}), None),
    Case("label value with a space", selector(matchLabels={"rack": "r 1"}), _VALUES),
    Case("label value ending in '-'", selector(matchLabels={"rack": "r1-"}), _VALUES),
    Case("label value over 63", selector(matchLabels={"rack": LONG_NAME}), "matchLabels"),
    Case("label value empty, valid", selector(matchLabels={"rack": ""}), None),
    Case("label value with _ . -, valid", selector(matchLabels={"rack": "R1_a.b-c"}), None),
    Case("expression key invalid", expression(key="rack!"), _EXPRESSION_KEY),
    Case("expression value invalid", expression(values=["r 1"]), _EXPRESSION_VALUES),
    Case(
        "In without values",
        expression(values=None),
        "spec.hostSelector.matchExpressions[].values must list at least one value when "
        "operator is In or NotIn",
    ),
    Case(
        "NotIn with empty values",
        expression(operator="NotIn", values=[]),
        "must list at least one value when operator is In or NotIn",
    ),
    Case(
        "Exists with values",
        expression(operator="Exists"),
        "spec.hostSelector.matchExpressions[].values must be empty when operator is Exists",
    ),
    Case(
        "DoesNotExist with values",
        expression(operator="DoesNotExist", values=["r1"]),
        "must be empty when operator is Exists or DoesNotExist",
    ),
    Case("In with values, valid", expression(), None),
    Case("Exists without values, valid", expression(operator="Exists", values=None), None),
    Case("failure-domain label invalid", cluster(failureDomainLabel="zone name"), _FAILURE_DOMAIN),
    Case(
        "failure-domain label valid",
        cluster(failureDomainLabel="topology.kubernetes.io/zone"),
        None,
    ),
    Case(
        "template label key invalid",
        machine_template(metadata={"labels": {"rack name": "r1"}}),
        _TEMPLATE_LABELS,
    ),
    Case(
        "template label value invalid",
        machine_template(metadata={"labels": {"rack": "r 1"}}),
        _TEMPLATE_VALUES,
    ),
    Case(
        "template annotation key invalid",
        machine_template(metadata={"annotations": {"note book": "x y"}}),
        _TEMPLATE_ANNOTATIONS,
    ),
    Case(
        "template labels and annotations valid",
        machine_template(
            metadata={"labels": {"lab.example/rack": "r1"}, "annotations": {"note": "any text"}}
        ),
        None,
    ),
    # --- DNS names and IP literals in the control-plane endpoint
    Case("endpoint host with an empty label", endpoint("cp..lab.example"), _ENDPOINT_HOST),
    Case("endpoint host ending in a dot", endpoint("cp.lab.example."), _ENDPOINT_HOST),
    Case("endpoint host label over 63", endpoint(f"{LONG_NAME}.lab.example"), _ENDPOINT_HOST),
    Case("endpoint host label starting '-'", endpoint("-cp.lab.example"), _ENDPOINT_HOST),
    Case("endpoint IPv4 out of range", endpoint("300.1.1.1"), _ENDPOINT_HOST),
    Case("endpoint IPv4 with three parts", endpoint("10.0.0"), _ENDPOINT_HOST),
    Case("endpoint IPv4 with leading zero", endpoint("10.0.0.01"), _ENDPOINT_HOST),
    Case("endpoint IPv6 in brackets", endpoint("[fd00::20]"), _ENDPOINT_HOST),
    Case("endpoint IPv6 with a zone", endpoint("fe80::1%eth0"), _ENDPOINT_HOST),
    Case("endpoint DNS name, valid", endpoint("cp-1.lab.example"), None),
    Case("endpoint label of 63, valid", endpoint("a" * 63 + ".lab.example"), None),
    Case("endpoint IPv4, valid", endpoint("172.31.99.20"), None),
    Case("endpoint IPv6, valid", endpoint("fd00::20"), None),
    # --- ports: 0 and over 65535
    Case("endpoint port 0 with a host", endpoint("172.31.99.20", 0), _ENDPOINT_PORT),
    Case(
        "endpoint port 0 in a template",
        cluster_template({"controlPlaneEndpoint": {"host": "172.31.99.20", "port": 0}}),
        _ENDPOINT_PORT,
    ),
    Case("endpoint port only, valid", cluster(controlPlaneEndpoint={"port": 8443}), None),
    Case("endpoint empty, valid", cluster(controlPlaneEndpoint={}), None),
    Case("endpoint port 65535, valid", endpoint("172.31.99.20", 65535), None),
    Case("BMC port 0", bmc("ipmi://10.0.0.9:0"), _BMC_PORT),
    Case("BMC port over 65535", bmc("redfish://10.0.0.9:70000/redfish/v1/Systems/1"), _BMC_PORT),
    Case("BMC port 99999 on IPv6", bmc("ipmi://[fd00::9]:99999"), _BMC_PORT),
    Case("BMC port with a leading zero", bmc("ipmi://10.0.0.9:0623"), _BMC_PORT),
    Case("BMC port empty", bmc("ipmi://10.0.0.9:"), _BMC_PORT),
    Case("BMC port 65535, valid", bmc("ipmi://10.0.0.9:65535"), None),
    Case("BMC port 1, valid", bmc("redfish+http://10.0.0.9:1/redfish/v1/Systems/1"), None),
    # --- BMC hosts, IPv6 BMCs, credentials in the address
    Case("IPMI BMC on IPv6, valid", bmc("ipmi://[fd00::9]:623"), None),
    Case("IPMI BMC on IPv6 without port, valid", bmc("ipmi://[fd00::9]"), None),
    Case("Redfish BMC on IPv6, valid", bmc("redfish://[fd00::9]/redfish/v1/Systems/1"), None),
    Case("IPMI BMC by DNS name, valid", bmc("ipmi://bmc-1.lab.example:6230"), None),
    Case("BMC IPv6 without brackets", bmc("ipmi://fd00::9"), _BMC_HOST),
    Case("BMC IPv4 in brackets", bmc("ipmi://[10.0.0.9]:623"), _BMC_IPV6),
    Case("BMC brackets around a name", bmc("ipmi://[bmc1]:623"), _BMC_IPV6),
    Case("BMC host with an empty label", bmc("ipmi://bmc..lab"), _BMC_HOST),
    Case("BMC IPv4 out of range", bmc("ipmi://300.1.1.1"), _BMC_IPV4),
    Case("BMC without a host", bmc("ipmi://:623"), _BMC_HOST),
    Case("IPMI BMC with credentials", bmc("ipmi://admin:secret@10.0.0.9"), _BMC_CREDENTIALS),
    Case(
        "Redfish BMC with credentials",
        bmc("redfish+https://admin@bmc.lab/redfish/v1/Systems/1"),
        _BMC_CREDENTIALS,
    ),
    Case(
        "Redfish BMC naming more than a system",
        bmc("redfish://10.0.0.9/redfish/v1/Systems/1/Bios"),
        "spec.bmc.address must be redfish://host[:port]/redfish/v1/Systems/ID",
    ),
    # --- boot MACs that cannot be a NIC's
    Case("boot MAC multicast", host(bootMACAddress="01:00:5e:00:00:01"), _MAC),
    Case("boot MAC IPv6 multicast", host(bootMACAddress="33:33:00:00:00:01"), _MAC),
    Case("boot MAC broadcast", host(bootMACAddress="ff:ff:ff:ff:ff:ff"), _MAC),
    Case("boot MAC all zero", host(bootMACAddress="00:00:00:00:00:00"), _MAC),
    Case("boot MAC locally administered, valid", host(bootMACAddress="02:00:00:00:00:01"), None),
    Case("boot MAC QEMU's, valid", host(bootMACAddress="52:54:00:12:34:56"), None),
    # --- URLs without a host, with spaces, with credentials
    Case("image URL without host", image_machine(url="http:///images/debian.raw"), _URL_HOST),
    Case("image URL of only a scheme", image_machine(url="https://"), _URL_HOST),
    Case(
        "image URL with a space",
        image_machine(url="http://172.31.99.1/images/debian 12.raw"),
        _URL_BLANKS,
    ),
    Case(
        "image URL with a space in the host",
        image_machine(url="http://images lab/debian.raw"),
        _URL_BLANKS,
    ),
    Case(
        "image URL with a tab",
        image_machine(url="http://172.31.99.1/images/debian\t.raw"),
        _URL_BLANKS,
    ),
    Case(
        "image URL with credentials",
        image_machine(url="http://user:pass@172.31.99.1/images/debian.raw"),
        _URL_CREDENTIALS,
    ),
    Case(
        "image URL with port 0",
        image_machine(url="http://172.31.99.1:0/images/debian.raw"),
        _URL_PORT,
    ),
    Case(
        "image URL with IPv4 out of range",
        image_machine(url="http://172.31.99.300/images/debian.raw"),
        _URL_IPV4,
    ),
    Case(
        "image URL with a bad percent-escape",
        image_machine(url="http://172.31.99.1/images/100%.raw"),
        _URL_ESCAPE,
    ),
    Case(
        "image URL upper-case scheme",
        image_machine(url="HTTP://172.31.99.1/images/debian.raw"),
        "spec.image.url must be an http:// or https:// URL",
    ),
    Case(
        "image URL encoded space and IPv6, valid",
        image_machine(url="https://[fd00::1]:8443/images/debian%2012.raw?x=1#y"),
        None,
    ),
    Case("image URL with a DNS name, valid", image_machine(url="http://image.invalid/x"), None),
    Case(
        "checksum URL without host",
        image_machine(checksum="http:///SHA256SUMS"),
        _CHECKSUM_HOST,
    ),
    Case(
        "checksum URL with credentials",
        image_machine(checksum="https://u:p@images.lab/SHA256SUMS"),
        _CHECKSUM_CREDENTIALS,
    ),
    Case(
        "checksum URL with a space",
        image_machine(checksum="http://images.lab/SHA256 SUMS"),
        _CHECKSUM_BLANKS,
    ),
    Case(
        "checksum URL, valid",
        image_machine(checksum="http://172.31.99.1:8080/files/images/debian-12.raw.lzo.sha256"),
        None,
    ),
    # --- IPv4 prefixes, gateway families
    Case("IPv4 prefix 33", network(prefixLength=33), _PREFIX),
    Case("IPv4 prefix 64", network(prefixLength=64), _PREFIX),
    Case("IPv4 prefix 32, valid", network(prefixLength=32), None),
    Case(
        "IPv6 prefix 64, valid",
        network(ipAddress="fd00:99::20", prefixLength=64, gateway="fd00:99::1"),
        None,
    ),
    Case("IPv6 gateway for IPv4", network(gateway="fd00:99::1"), _GATEWAY),
    Case(
        "IPv4 gateway for IPv6",
        network(ipAddress="fd00:99::20", prefixLength=64, gateway="172.31.99.1"),
        _GATEWAY,
    ),
    Case(
        "host with IPv6 gateway for IPv4",
        host(network={"ipAddress": "172.31.99.20", "gateway": "fd00::1"}),
        _GATEWAY,
    ),
    Case(
        "host with IPv4 prefix 40",
        host(network={"ipAddress": "10.0.0.5", "prefixLength": 40}),
        _PREFIX,
    ),
    Case("IPv4 gateway for IPv4, valid", network(gateway="172.31.99.1"), None),
    # --- Secret names that are not names
    Case("BMC Secret name upper-case", bmc("ipmi://10.0.0.9", "BMC-Creds"), _SECRET),
    Case("BMC Secret name with '_'", bmc("ipmi://10.0.0.9", "bmc_creds"), _SECRET),
    Case("BMC Secret name empty", bmc("ipmi://10.0.0.9", ""), _SECRET),
    Case("BMC Secret name ending '-'", bmc("ipmi://10.0.0.9", "bmc-"), _SECRET),
    Case("BMC Secret name with dots, valid", bmc("ipmi://10.0.0.9", "bmc.node-1"), None),
    Case("user-data Secret name with '/'", host(userData={"name": "ns/boot"}), _USER_DATA),
    Case(
        "user-data namespace with '.'",
        host(userData={"name": "boot", "namespace": "team.a"}),
        _USER_DATA_NAMESPACE,
    ),
    Case(
        "user-data Secret, valid",
        host(userData={"name": "boot-data", "namespace": "team-a"}),
        None,
    ),
    # --- templates that carry a providerID
    Case(
        "template with a providerID",
        machine_template({"deploymentType": "preseed", "providerID": f"plunder://{MAC}"}),
        _TEMPLATE_PROVIDER_ID,
    ),
    Case("template without a providerID, valid", machine_template(), None),
    # --- remediation: the strategy's timeout is a duration above zero, retryLimit not negative
    Case("remediation timeout 0s", remediation(timeout="0s"), _TIMEOUT),
    Case("remediation timeout without a unit", remediation(timeout="300"), _TIMEOUT),
    Case("remediation timeout in words", remediation(timeout="five minutes"), _TIMEOUT),
    Case("remediation timeout negative", remediation(timeout="-5m"), _TIMEOUT),
    Case("remediation timeout 1h30m, valid", remediation(timeout="1h30m"), None),
    Case("remediation timeout 90s, valid", remediation(timeout="90s"), None),
    Case("remediation retryLimit negative", remediation(retryLimit=-1), "retryLimit"),
    Case("remediation retryLimit 0, valid", remediation(retryLimit=0), None),
    Case("remediation type Reprovision", remediation(type="Reprovision"), "type"),
    Case("remediation defaults, valid", remediation(), None),
    Case("remediation template timeout 0s", remediation_template(timeout="0m"), _TIMEOUT),
    Case(
        "remediation template, valid",
        remediation_template(type="Reboot", retryLimit=2, timeout="5m"),
        None,
    ),
]


@dataclass(frozen=True)
class Change:
    """An object created, then patched (a JSON merge patch): the patch is refused or accepted."""

    name: str
    original: dict[str, Any]
    patch: dict[str, Any]
    message: str | None


# A PlunderMachineTemplate's spec.template.spec is immutable by an admission policy, not by the
# CRD (plunder.api.policies): tests/integration/test_template_rotation.py tests it.
_CLUSTER_TEMPLATE_IMMUTABLE = "spec.template.spec is immutable: objects made from a template"

CHANGES: list[Change] = [
    Change(
        "machine template given a providerID",
        machine_template(),
        {"spec": {"template": {"spec": {"providerID": f"plunder://{MAC}"}}}},
        _TEMPLATE_PROVIDER_ID,
    ),
    Change(
        "machine template object's labels changed, valid",
        machine_template(),
        {"metadata": {"labels": {"lab.example/owner": "team-a"}}},
        None,
    ),
    Change(
        "cluster template spec changed",
        cluster_template({}),
        {"spec": {"template": {"spec": {"failureDomainLabel": "rack"}}}},
        _CLUSTER_TEMPLATE_IMMUTABLE,
    ),
    Change(
        "endpoint removed",
        endpoint("10.0.0.1"),
        {"spec": {"controlPlaneEndpoint": None}},
        "spec.controlPlaneEndpoint is immutable once set",
    ),
    Change(
        "endpoint port changed",
        endpoint("10.0.0.1"),
        {"spec": {"controlPlaneEndpoint": {"port": 8443}}},
        "spec.controlPlaneEndpoint is immutable once set",
    ),
    Change(
        "endpoint given its host, valid",
        cluster(controlPlaneEndpoint={"port": 6443}),
        {"spec": {"controlPlaneEndpoint": {"host": "10.0.0.1"}}},
        None,
    ),
    Change(
        "endpoint given a host but no port",
        cluster(),
        {"spec": {"controlPlaneEndpoint": {"host": "10.0.0.1"}}},
        _ENDPOINT_PORT,
    ),
]
