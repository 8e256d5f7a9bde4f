"""A plant's own certificate authority for the OPC UA trust tests: a CA certificate and its CRLs, made at test time
(never committed). The server certificates it signs come from ``gateway.pki.make_certificate(issuer=(ca, key))``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.pki import new_key

CA_NAME = "Plant OT CA"


def make_ca(
    common_name: str = CA_NAME, *, issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None
) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    """A CA certificate valid from 30 days ago for a year, self-signed or signed by ``issuer`` (an intermediate)."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer_name, signer_key = (issuer[0].subject, issuer[1]) if issuer is not None else (name, key)
    now = datetime.now(UTC)
    ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(signer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=30))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(signer_key, hashes.SHA256())
    )  # fmt: skip
    return ca, key


def make_crl(
    ca: x509.Certificate, key: rsa.RSAPrivateKey, *, next_update: datetime, last_update: datetime | None = None,
    revoke: x509.Certificate | None = None, encoding: serialization.Encoding = serialization.Encoding.DER,
) -> bytes:  # fmt: skip
    """A CRL of ``ca`` signed with ``key`` (another key: a forged one), issued ``last_update`` (default: a week before
    now or ``next_update``, the earlier), listing ``revoke`` as revoked when it was issued."""
    if last_update is None:
        last_update = min(datetime.now(UTC), next_update) - timedelta(days=7)
    builder = (
        x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(last_update)
        .next_update(next_update)
    )  # fmt: skip
    if revoke is not None:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(revoke.serial_number).revocation_date(last_update).build()
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(encoding)
