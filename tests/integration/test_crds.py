"""The CRDs against a real kube-apiserver.

They install, explain themselves, take the examples, and reject bad input with a message that
names the field.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import Client

from plunder.api import crdgen
from tests.conftest import run_kubectl

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MAC = "00:50:56:a5:11:20"
SHA256 = "a" * 64


def test_plunderctl_crds_pipes_into_kubectl_server_side_apply(
    kube: Client, kubectl: list[str]
) -> None:
    crds = subprocess.run(
        [sys.executable, "-m", "plunder.cli.main", "crds"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    applied = run_kubectl(kubectl, "apply", "--server-side", "-f", "-", stdin=crds)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("serverside-applied") == len(crdgen.ALL_KINDS)
    listed = run_kubectl(kubectl, "get", "crds", "-o", "name")
    assert "plunderhosts.metal.plunder.dev" in listed.stdout
    assert "plundermachines.infrastructure.cluster.x-k8s.io" in listed.stdout


def test_kubectl_explain_prints_the_descriptions(kube: Client, kubectl: list[str]) -> None:
    explained = run_kubectl(kubectl, "explain", "plundermachine.spec")
    assert explained.returncode == 0, explained.stderr
    assert "which hosts may be claimed for this machine" in explained.stdout.lower()
    assert "deploymentType" in explained.stdout and "preseed" in explained.stdout
    host = run_kubectl(kubectl, "explain", "plunderhost.spec.bootMACAddress")
    assert "network-boots from" in host.stdout


def test_the_seeds_examples_are_accepted(cluster_api_crds: list[str], kubectl: list[str]) -> None:
    for manifest in ("cluster.yaml", "machine.yaml"):
        created = run_kubectl(
            kubectl, "create", "--dry-run=server", "-f", str(REPO / "examples/simple" / manifest)
        )
        assert created.returncode == 0, created.stderr
    machines = run_kubectl(
        kubectl,
        "create",
        "--dry-run=server",
        "-o",
        "yaml",
        "-f",
        str(REPO / "examples/simple/machine.yaml"),
    )
    kinds = [doc["kind"] for doc in yaml.safe_load_all(machines.stdout) if doc]
    assert kinds.count("PlunderMachine") == 2 and kinds.count("Machine") == 2


def host(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "metal.plunder.dev/v1alpha1",
        "kind": "PlunderHost",
        "metadata": {"name": "h"},
        "spec": {"bootMACAddress": MAC, **spec},
    }


def machine(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"deploymentType": "preseed"}
    base.update(spec)
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "PlunderMachine",
        "metadata": {"name": "m"},
        "spec": {key: value for key, value in base.items() if value is not None},
    }


def cluster(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
        "kind": "PlunderCluster",
        "metadata": {"name": "c"},
        "spec": spec,
    }


def image(**fields: Any) -> dict[str, Any]:
    base = {"url": "http://172.31.99.1/images/debian.raw", "checksum": SHA256}
    base.update(fields)
    return {key: value for key, value in base.items() if value is not None}


NETWORK = {"ipAddress": "172.31.99.20", "prefixLength": 24}

INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "short MAC",
        host(bootMACAddress="00:50:56:a5:11:2"),
        "spec.bootMACAddress must be a MAC address in lower-case colon form",
    ),
    (
        "upper-case MAC",
        host(bootMACAddress="00:50:56:A5:11:20"),
        "spec.bootMACAddress must be a MAC address in lower-case colon form",
    ),
    ("no MAC", {**host(), "spec": {"online": True}}, "spec.bootMACAddress: Required value"),
    (
        "BMC over plain http",
        host(bmc={"address": "http://10.0.0.9", "credentialsName": "b"}),
        "spec.bmc.address must be redfish://host[:port]/redfish/v1/Systems/ID",
    ),
    (
        "BMC without credentials",
        host(bmc={"address": "ipmi://127.0.0.1:6230"}),
        "spec.bmc.credentialsName: Required value",
    ),
    ("unknown wipe mode", host(wipeMode="shred"), 'spec.wipeMode: Unsupported value: "shred"'),
    (
        "impossible IPv4",
        host(network={"ipAddress": "300.1.1.1"}),
        "spec.network.ipAddress must be an IPv4 or IPv6 address",
    ),
    (
        "host with image and deploymentType",
        host(image=image(), deploymentType="preseed"),
        "set at most one of spec.image or spec.deploymentType",
    ),
    (
        "machine with nothing to install",
        machine(deploymentType=None),
        "set exactly one of spec.image (stream a disk image) or spec.deploymentType",
    ),
    (
        "unknown deploymentType",
        machine(deploymentType="autoyast"),
        'spec.deploymentType: Unsupported value: "autoyast"',
    ),
    (
        "image without checksum",
        machine(deploymentType=None, image=image(checksum=None)),
        "spec.image.checksum is required",
    ),
    (
        "image over ftp",
        machine(deploymentType=None, image=image(url="ftp://10.0.0.1/x.raw")),
        "spec.image.url must be an http:// or https:// URL",
    ),
    (
        "checksum too short",
        machine(deploymentType=None, image=image(checksum="abc123")),
        "spec.image.checksum must be the image's lower-case hex digest",
    ),
    (
        "checksum file on ftp",
        machine(deploymentType=None, image=image(checksum="ftp://172.31.99.1/SHA256SUMS")),
        "or the http(s) URL of a checksum file",
    ),
    (
        "sha512 with a sha256-sized digest",
        machine(deploymentType=None, image=image(checksumType="sha512")),
        "spec.image.checksum must be the image's lower-case hex digest",
    ),
    (
        "unknown image format",
        machine(deploymentType=None, image=image(format="vmdk")),
        'spec.image.format: Unsupported value: "vmdk"',
    ),
    (
        "qcow2, which cannot be streamed",
        machine(deploymentType=None, image=image(format="qcow2")),
        'spec.image.format: Unsupported value: "qcow2"',
    ),
    (
        "gateway not an address",
        machine(network={**NETWORK, "gateway": "172.31.99"}),
        "spec.network.gateway must be an IPv4 or IPv6 address",
    ),
    (
        "nameserver not an address",
        machine(network={**NETWORK, "nameservers": ["dns.example"]}),
        "spec.network.nameservers must be IPv4 or IPv6 addresses",
    ),
    (
        "prefix length zero",
        machine(network={**NETWORK, "prefixLength": 0}),
        "spec.network.prefixLength: Invalid value",
    ),
    (
        "static address and a pool",
        machine(
            network=NETWORK,
            addressFromPool={
                "apiGroup": "ipam.cluster.x-k8s.io",
                "kind": "InClusterIPPool",
                "name": "p",
            },
        ),
        "set at most one of spec.network (a static address) or spec.addressFromPool",
    ),
    (
        "foreign providerID",
        machine(providerID="aws:///us-east-1a/i-0123"),
        "spec.providerID must be plunder://<mac>",
    ),
    (
        "selector operator unknown",
        machine(hostSelector={"matchExpressions": [{"key": "rack", "operator": "Like"}]}),
        'spec.hostSelector.matchExpressions[0].operator: Unsupported value: "Like"',
    ),
    (
        "endpoint port out of range",
        cluster(controlPlaneEndpoint={"host": "10.0.0.1", "port": 70000}),
        "spec.controlPlaneEndpoint.port: Invalid value: 70000",
    ),
    (
        "endpoint host not a name",
        cluster(controlPlaneEndpoint={"host": "not a host!", "port": 6443}),
        "spec.controlPlaneEndpoint.host must be an IP address (like 172.31.99.20",
    ),
    (
        "template without spec",
        {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
            "kind": "PlunderMachineTemplate",
            "metadata": {"name": "t"},
            "spec": {"template": {}},
        },
        "spec.template.spec: Required value",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [(m, msg) for _, m, msg in INVALID],
    ids=[name for name, _, _ in INVALID],
)
def test_invalid_manifests_are_rejected_with_a_message_naming_the_field(
    kube: Client, kubectl: list[str], namespace: str, manifest: dict[str, Any], message: str
) -> None:
    created = run_kubectl(
        kubectl, "create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(manifest)
    )
    assert created.returncode != 0, f"accepted: {created.stdout}"
    assert message in created.stderr


CHANGES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "providerID changed",
        machine(providerID=f"plunder://{MAC}"),
        {"spec": {"providerID": "plunder://00:50:56:a5:b5:f1"}},
        "spec.providerID is immutable once set",
    ),
    (
        "providerID removed",
        machine(providerID=f"plunder://{MAC}"),
        {"spec": {"providerID": None}},
        "spec.providerID is immutable once set",
    ),
    (
        "boot MAC changed",
        host(),
        {"spec": {"bootMACAddress": "00:50:56:a5:b5:f1"}},
        "spec.bootMACAddress is immutable",
    ),
    (
        "endpoint moved",
        cluster(controlPlaneEndpoint={"host": "10.0.0.1", "port": 6443}),
        {"spec": {"controlPlaneEndpoint": {"host": "10.0.0.2"}}},
        "spec.controlPlaneEndpoint is immutable once set",
    ),
]


@pytest.mark.parametrize(
    ("original", "change", "message"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES]
)
def test_immutable_fields_refuse_changes(
    kube: Client,
    kubectl: list[str],
    namespace: str,
    original: dict[str, Any],
    change: dict[str, Any],
    message: str,
) -> None:
    created = run_kubectl(
        kubectl, "create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(original)
    )
    assert created.returncode == 0, created.stderr
    kind = original["kind"].lower()
    patched = run_kubectl(
        kubectl,
        "patch",
        "-n",
        namespace,
        kind,
        original["metadata"]["name"],
        "--type=merge",
        "-p",
        yaml.safe_dump(change),
    )
    assert patched.returncode != 0, f"accepted: {patched.stdout}"
    assert message in patched.stderr


def test_valid_objects_of_every_kind_are_accepted(
    kube: Client, kubectl: list[str], namespace: str
) -> None:
    documents = [
        host(
            bmc={
                "address": "redfish+http://127.0.0.1:8000/redfish/v1/Systems/abc",
                "credentialsName": "bmc",
            },
            network={"ipAddress": "fd00:99::20"},
        ),
        machine(
            deploymentType=None,
            image=image(checksumType="sha512", checksum="b" * 128),
            providerID=f"plunder://{MAC}",
            hostSelector={"matchLabels": {"rack": "r1"}},
        ),
        cluster(controlPlaneEndpoint={"host": "cp.lab.example", "port": 6443}),
        {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
            "kind": "PlunderMachineTemplate",
            "metadata": {"name": "t"},
            "spec": {"template": {"spec": {"image": image(format="raw-xz")}}},
        },
        {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
            "kind": "PlunderMachineTemplate",
            "metadata": {"name": "from-a-checksum-file"},
            "spec": {
                "template": {"spec": {"image": image(checksum="http://172.31.99.1/SHA256SUMS")}}
            },
        },
        {
            "apiVersion": "infrastructure.cluster.x-k8s.io/v1alpha1",
            "kind": "PlunderClusterTemplate",
            "metadata": {"name": "t"},
            "spec": {"template": {"spec": {}}},
        },
    ]
    created = run_kubectl(
        kubectl, "create", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(documents)
    )
    assert created.returncode == 0, created.stderr
    listed = run_kubectl(kubectl, "get", "plunderhosts", "-n", namespace)
    assert MAC in listed.stdout and "VENDOR" in listed.stdout
