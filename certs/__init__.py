"""A tiny local PKI for tests and the embedded demo cluster.

:func:`generate` writes a CA, a server certificate and a client certificate into a directory:

- ``ca.crt`` / ``ca.key``: a self-signed local CA;
- ``server.crt`` / ``server.key``: SANs ``localhost``, ``127.0.0.1``, ``::1`` plus any extra
  names, with BOTH serverAuth and clientAuth extended key usages (TLS cluster nodes present
  their server certificate to each other as clients; without clientAuth cluster creation hangs);
- ``client.crt`` / ``client.key``: clientAuth, for mutual TLS.

Keys are ECDSA P-256 and written with mode 0600. Existing files are reused when they are all
present, parse, still valid for at least a day, and the server certificate covers every
requested name; otherwise everything is regenerated.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DEFAULT_NAMES", "CertPaths", "generate"]

#: Names every server certificate covers.
DEFAULT_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

_VALIDITY = dt.timedelta(days=825)
_MIN_REMAINING = dt.timedelta(days=1)

_GeneralName = x509.DNSName | x509.IPAddress


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where :func:`generate` put each file."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def in_directory(cls, directory: Path) -> CertPaths:
        return cls(
            ca=directory / "ca.crt",
            ca_key=directory / "ca.key",
            server_cert=directory / "server.crt",
            server_key=directory / "server.key",
            client_cert=directory / "client.crt",
            client_key=directory / "client.key",
        )

    def all(self) -> tuple[Path, ...]:
        return (
            self.ca,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.client_cert,
            self.client_key,
        )


def generate(directory: str | os.PathLike[str], names: Iterable[str] = ()) -> CertPaths:
    """Write (or reuse) the CA, server and client certificates in ``directory``."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths = CertPaths.in_directory(root)
    wanted = _dedupe([*DEFAULT_NAMES, *names])
    if _reusable(paths, wanted):
        return paths

    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)
    not_after = now + _VALIDITY

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "redis-client local"),
            x509.NameAttribute(NameOID.COMMON_NAME, "redis-client local CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _leaf(
        common_name="localhost",
        key=server_key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_ski=ca_ski,
        sans=[_general_name(n) for n in wanted],
        usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        not_before=not_before,
        not_after=not_after,
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = _leaf(
        common_name="redis-client",
        key=client_key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        ca_ski=ca_ski,
        sans=[x509.DNSName("redis-client")],
        usages=[ExtendedKeyUsageOID.CLIENT_AUTH],
        not_before=not_before,
        not_after=not_after,
    )

    _write_key(paths.ca_key, ca_key)
    _write_key(paths.server_key, server_key)
    _write_key(paths.client_key, client_key)
    _write_cert(paths.ca, ca_cert)
    _write_cert(paths.server_cert, server_cert)
    _write_cert(paths.client_cert, client_cert)
    return paths


def _leaf(
    *,
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_ski: x509.SubjectKeyIdentifier,
    sans: Sequence[_GeneralName],
    usages: Sequence[x509.ObjectIdentifier],
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "redis-client local"),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _dedupe(names: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in names:
        name = name.strip()
        if name:
            seen.setdefault(name, None)
    return list(seen)


def _general_name(name: str) -> _GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def _reusable(paths: CertPaths, wanted: Sequence[str]) -> bool:
    if not all(p.is_file() for p in paths.all()):
        return False
    try:
        ca = x509.load_pem_x509_certificate(paths.ca.read_bytes())
        certs = [
            ca,
            x509.load_pem_x509_certificate(paths.server_cert.read_bytes()),
            x509.load_pem_x509_certificate(paths.client_cert.read_bytes()),
        ]
        for key_path in (paths.ca_key, paths.server_key, paths.client_key):
            serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        server = certs[1]
        sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, OSError, x509.ExtensionNotFound):
        return False
    deadline = dt.datetime.now(dt.UTC) + _MIN_REMAINING
    if any(c.not_valid_after_utc < deadline for c in certs):
        return False
    if any(c.issuer != ca.subject for c in certs):
        return False
    present = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    present |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    return all(str(_canonical(n)) in present for n in wanted)


def _canonical(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name
