"""Certificates for a local management plane.

A CA, the API server's serving certificate, an admin client certificate (group system:masters)
and the service-account signing key.
Made with the cryptography package, so no openssl or cfssl binary is needed.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class PlanePKI:
    """Where each file of the plane's PKI is."""

    folder: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (trusted for serving and client certificates)."""
        return self.folder / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The CA's private key."""
        return self.folder / "ca.key"

    @property
    def serving_cert(self) -> Path:
        """The API server's serving certificate."""
        return self.folder / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        """The API server's serving key."""
        return self.folder / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        """The admin client certificate."""
        return self.folder / "admin.crt"

    @property
    def admin_key(self) -> Path:
        """The admin client key."""
        return self.folder / "admin.key"

    @property
    def service_account_key(self) -> Path:
        """The key that signs service-account tokens."""
        return self.folder / "sa.key"

    @property
    def service_account_pub(self) -> Path:
        """The public half, that verifies them."""
        return self.folder / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _sign(
    builder: x509.CertificateBuilder,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .sign(issuer_key, hashes.SHA256())
    )


def _leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return _sign(builder, ca_key), key


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def create_plane_pki(folder: Path) -> PlanePKI:
    """Write a fresh PKI for a plane into ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    pki = PlanePKI(folder)
    ca_key = _key()
    ca_builder = (
        x509.CertificateBuilder()
        .subject_name(_name("plunder-lab-ca"))
        .issuer_name(_name("plunder-lab-ca"))
        .public_key(ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    ca = _sign(ca_builder, ca_key)
    _write_cert(pki.ca_cert, ca)
    _write_key(pki.ca_key, ca_key)

    serving, serving_key = _leaf(
        ca,
        ca_key,
        _name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        san=[
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
        ],
    )
    _write_cert(pki.serving_cert, serving)
    _write_key(pki.serving_key, serving_key)

    admin, admin_key = _leaf(
        ca, ca_key, _name("plunder-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    _write_cert(pki.admin_cert, admin)
    _write_key(pki.admin_key, admin_key)

    sa_key = _key()
    _write_key(pki.service_account_key, sa_key)
    pki.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki


def issue_serving_certificate(pki: PlanePKI, folder: Path, name: str) -> Path:
    """Sign a loopback serving certificate with the plane's CA into ``folder``.

    For the webhook servers of the Cluster API managers the lab runs: ``tls.crt`` and ``tls.key``
    (the names controller-runtime looks for) valid for 127.0.0.1 and localhost. The API server
    already trusts the CA, and the webhook configurations carry it as their ``caBundle``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)  # create_plane_pki makes EC keys
    cert, key = _leaf(
        ca,
        ca_key,
        _name(name),
        ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    _write_cert(folder / "tls.crt", cert)
    _write_key(folder / "tls.key", key)
    return folder
