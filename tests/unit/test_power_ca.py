"""A BMC's ``ca.crt``: kept in a private file for the TLS client, or a condition saying why not."""

from __future__ import annotations

import base64
import datetime
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plunder.api.inventory import PlunderHost
from plunder.operator import power

REPO = Path(__file__).resolve().parents[2]


def ca_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmc-ca")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


class _Secret:
    def __init__(self, data: dict[str, str]) -> None:
        self.data = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}


class StubClient:
    def __init__(self, data: dict[str, str]) -> None:
        self.secret = _Secret(data)
        self.patches: list[dict[str, Any]] = []

    async def get(self, *_: Any, **__: Any) -> _Secret:
        return self.secret

    async def patch(self, _resource: Any, _name: str, body: dict[str, Any], **__: Any) -> None:
        self.patches.append(body)


HOST = PlunderHost.model_validate(
    {
        "metadata": {"name": "h1", "namespace": "ns", "resourceVersion": "3"},
        "spec": {
            "bootMACAddress": "00:50:56:a5:11:20",
            "bmc": {"address": "redfish://10.0.0.5/redfish/v1/Systems/1", "credentialsName": "c"},
        },
    }
)


def bmc_condition(client: StubClient) -> dict[str, Any]:
    (body,) = client.patches
    (condition,) = [c for c in body["status"]["conditions"] if c["type"] == "BMCReachable"]
    return dict(condition)


@pytest.fixture
def fresh_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(power, "_ca_folder", None, raising=False)


@pytest.mark.usefixtures("fresh_folder")
async def test_no_writable_temporary_directory_is_a_condition_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on the shipped Deployment's read-only root without a writable /tmp.
    not_a_folder = tmp_path / "read-only"
    not_a_folder.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    client = StubClient({"username": "u", "password": "p", "ca.crt": ca_pem()})
    fault = await power.power_step(client, HOST)  # type: ignore[arg-type]
    assert fault is not None and fault.reason == "BMCCAUnusable"
    condition = bmc_condition(client)
    assert (condition["status"], condition["reason"]) == ("False", "BMCCAUnusable")
    assert "writable temporary directory" in condition["message"]


@pytest.mark.usefixtures("fresh_folder")
async def test_a_ca_crt_that_is_not_pem_says_so() -> None:
    client = StubClient({"username": "u", "password": "p", "ca.crt": "not a certificate"})
    fault = await power.power_step(client, HOST)  # type: ignore[arg-type]
    assert fault is not None and fault.reason == "BMCCAUnusable"
    assert "not a PEM certificate" in bmc_condition(client)["message"]


@pytest.mark.usefixtures("fresh_folder")
async def test_the_ca_is_kept_in_a_private_folder_with_an_unguessable_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pem = ca_pem()
    settings = await power.read_settings(
        StubClient({"username": "u", "password": "p", "ca.crt": pem}),  # type: ignore[arg-type]
        HOST,
    )
    assert settings.ca_file is not None
    path = Path(settings.ca_file)
    assert path.read_text() == pem
    assert path.parent.parent == tmp_path and path.parent.name != "plunder-bmc-ca-"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_the_shipped_controller_has_a_writable_tmp_beside_its_read_only_root() -> None:
    deployment = yaml.safe_load((REPO / "config/manager/manager.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]]
