"""certs/: SANs, extended key usages, file modes, reuse, and real TLS handshakes over loopback."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from servers import skip_or_fail

from certs import CertPaths, generate
from certs.__main__ import main

EXTRA_DNS = "redis.example.test"
EXTRA_IP = "10.1.2.3"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return generate(tmp_path_factory.mktemp("pki"), names=[EXTRA_DNS, EXTRA_IP])


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> set[str]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(n) for n in ext.get_values_for_type(x509.DNSName)}
    return names | {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}


def _ekus(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_server_sans_cover_loopback_and_extra_names(pki: CertPaths) -> None:
    sans = _sans(_load(pki.server_cert))
    assert sans == {"localhost", "127.0.0.1", "::1", EXTRA_DNS, EXTRA_IP}
    ext = _load(pki.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    ips = ext.value.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("::1") in ips  # a real IP SAN, not a DNS name "::1"


def test_server_cert_has_server_and_client_auth(pki: CertPaths) -> None:
    assert _ekus(_load(pki.server_cert)) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }


def test_client_cert_is_client_auth_only(pki: CertPaths) -> None:
    assert _ekus(_load(pki.client_cert)) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_ca_is_a_ca_and_signs_both_leaves(pki: CertPaths) -> None:
    ca = _load(pki.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf_path in (pki.server_cert, pki.client_cert):
        leaf = _load(leaf_path)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        leaf.verify_directly_issued_by(ca)


def test_keys_are_private(pki: CertPaths) -> None:
    for key in (pki.ca_key, pki.server_key, pki.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert b"PRIVATE KEY" in key.read_bytes()


def test_generate_reuses_valid_files(tmp_path: Path) -> None:
    first = generate(tmp_path)
    before = {p: p.read_bytes() for p in first.all()}
    second = generate(tmp_path)
    assert second == first
    assert {p: p.read_bytes() for p in second.all()} == before


def test_generate_regenerates_for_new_name_or_missing_file(tmp_path: Path) -> None:
    paths = generate(tmp_path)
    old_server = paths.server_cert.read_bytes()
    generate(tmp_path, names=["new.example.test"])
    assert paths.server_cert.read_bytes() != old_server
    assert "new.example.test" in _sans(_load(paths.server_cert))

    old_ca = paths.ca.read_bytes()
    paths.client_key.unlink()
    generate(tmp_path)
    assert paths.client_key.is_file()
    assert paths.ca.read_bytes() != old_ca


def test_cli_writes_all_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    assert main([str(out_dir), "--name", "cli.example.test"]) == 0
    printed = capsys.readouterr().out.split()
    expected = CertPaths.in_directory(out_dir)
    assert printed == [str(p) for p in expected.all()]
    assert "cli.example.test" in _sans(_load(expected.server_cert))


# --------------------------------------------------------------------------- real handshakes


def _handshake(
    server: CertPaths,
    client_trust: CertPaths,
    *,
    server_hostname: str,
    family: socket.AddressFamily = socket.AF_INET,
    use_server_cert_as_client: bool = False,
) -> dict[str, object]:
    """One mutual-TLS handshake over loopback; returns the client cert the server saw."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server.server_cert, server.server_key)
    server_ctx.load_verify_locations(server.ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    client_ctx = ssl.create_default_context(cafile=str(client_trust.ca))
    if use_server_cert_as_client:
        client_ctx.load_cert_chain(client_trust.server_cert, client_trust.server_key)
    else:
        client_ctx.load_cert_chain(client_trust.client_cert, client_trust.client_key)

    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    seen: dict[str, object] = {}
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.settimeout(10)
    listener.bind((host, 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            assert tls.recv(2) == b"ok"
    finally:
        thread.join(10)
        listener.close()
    return seen


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", EXTRA_DNS, EXTRA_IP])
def test_mutual_tls_handshake_verifies(pki: CertPaths, name: str) -> None:
    seen = _handshake(pki, pki, server_hostname=name)
    assert "error" not in seen
    peer = seen["peer"]
    assert isinstance(peer, dict)
    assert (("commonName", "redis-client"),) in peer["subject"]


def test_handshake_over_ipv6_loopback(pki: CertPaths) -> None:
    if not socket.has_ipv6:
        skip_or_fail("no IPv6 in this Python build")
    try:
        socket.socket(socket.AF_INET6).close()
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        skip_or_fail("::1 not available on this machine")
    seen = _handshake(pki, pki, server_hostname="::1", family=socket.AF_INET6)
    assert "peer" in seen


def test_server_cert_works_as_client_cert(pki: CertPaths) -> None:
    # What TLS cluster nodes do on the cluster bus.
    seen = _handshake(pki, pki, server_hostname="localhost", use_server_cert_as_client=True)
    peer = seen["peer"]
    assert isinstance(peer, dict)
    assert (("commonName", "localhost"),) in peer["subject"]


def test_wrong_hostname_is_rejected(pki: CertPaths) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(pki, pki, server_hostname="not-in-the-cert.example")


def test_other_ca_is_rejected(pki: CertPaths, tmp_path: Path) -> None:
    other = generate(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(pki, other, server_hostname="localhost")
