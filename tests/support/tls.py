"""A throw-away PKI for TLS tests: a private CA, a server certificate for 127.0.0.1, a client certificate.

Everything is generated at test time into a directory the test owns (``tmp_path``); nothing here is
ever committed. Keys are ECDSA P-256: generating them takes milliseconds, RSA would cost ~0.1 s each.

    pki = make_test_pki(tmp_path)
    with Mosquitto(tls=pki.listener(require_certificate=True)) as broker:   # mqtts on a free port
        with Subscriber(broker.host, broker.port, "t/#", tls=pki.client(with_certificate=True)) as sub:
            ...
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.mosquitto import ClientTls, ListenerTls

SERVER_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")  # what the brokers in tests listen on
# Backdated so a clock a little behind the one that signed does not make the certificate "not yet valid".
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True, kw_only=True)
class TestPki:
    """Paths of the PEM files ``make_test_pki`` wrote."""

    __test__ = False  # not a pytest test class despite the name

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_common_name: str

    def listener(self, *, require_certificate: bool = False) -> ListenerTls:
        """Mosquitto listener settings: our server certificate; with ``require_certificate`` (mTLS) only
        clients with a certificate signed by our CA get in."""
        return ListenerTls(
            ca_file=self.ca_cert,
            cert_file=self.server_cert,
            key_file=self.server_key,
            require_certificate=require_certificate,
        )

    def client(self, *, with_certificate: bool = False) -> ClientTls:
        """Client settings trusting our CA; ``with_certificate`` adds the client certificate for mTLS."""
        if with_certificate:
            return ClientTls(ca_file=self.ca_cert, cert_file=self.client_cert, key_file=self.client_key)
        return ClientTls(ca_file=self.ca_cert)


def make_test_pki(
    directory: Path,
    *,
    server_hosts: Sequence[str] = SERVER_HOSTS,
    client_common_name: str = "cellgate-test-client",
    valid_for: dt.timedelta = dt.timedelta(days=1),
) -> TestPki:
    """Write ca.crt, server.crt/.key and client.crt/.key into ``directory`` (created if missing).

    ``server_hosts`` become the server certificate's subjectAltNames: IP addresses as IP SANs, names as
    DNS SANs (the common name is not used for host checks by Python or OpenSSL clients).
    """
    directory.mkdir(parents=True, exist_ok=True)
    not_before = dt.datetime.now(dt.UTC) - _CLOCK_SKEW
    not_after = not_before + valid_for

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Cellgate Test CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), not_before, not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        _leaf_builder(ca_cert, ca_key, _name(server_hosts[0]), server_key, not_before, not_after)
        .add_extension(x509.SubjectAlternativeName([_san(host) for host in server_hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        _leaf_builder(ca_cert, ca_key, _name(client_common_name), client_key, not_before, not_after)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pki = TestPki(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        client_common_name=client_common_name,
    )
    _write_cert(pki.ca_cert, ca_cert)
    _write_cert(pki.server_cert, server_cert)
    _write_key(pki.server_key, server_key)
    _write_cert(pki.client_cert, client_cert)
    _write_key(pki.client_key, client_key)
    return pki


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Cellgate tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )


def _leaf_builder(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.CertificateBuilder:
    return (
        _builder(subject, ca_cert.subject, key.public_key(), not_before, not_after)
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
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    # Private keys owner-only, like a real deployment; mosquitto (run as this user) still reads them.
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
