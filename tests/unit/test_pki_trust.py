"""Server-certificate trust decisions of the PKI folder (gateway.pki.Pki.check_server) and the endpoint choice
(opcua_security.choose_endpoint), without a server.

The same decisions on a real handshake are in tests/integration/test_opcua_security.py; these cover the cases
that need only certificate files or endpoint lists: what ``trusted/`` recognises, a CA's CRL or validity
overriding trust, and ``allow_insecure`` never downgrading a server that has a secure endpoint.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.pki import Pki, PkiError, ServerCertificateRejectedError, make_certificate, new_key, thumbprint
from gateway.sources.opcua_security import SecurityRefusedError, choose_endpoint

SERVER_URI = "urn:plc-7:coater"
NAME = "Coater at opc.tcp://127.0.0.1:4840"


def make_ca(*, not_before: datetime, days: int) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Plant OT CA")])
    ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return ca, key


def revoke(ca: x509.Certificate, ca_key: rsa.RSAPrivateKey, cert: x509.Certificate) -> x509.CertificateRevocationList:
    now = datetime.now(UTC)
    entry = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(now).build()
    return (
        x509.CertificateRevocationListBuilder().issuer_name(ca.subject).last_update(now)
        .next_update(now + timedelta(days=7)).add_revoked_certificate(entry).sign(ca_key, hashes.SHA256())
    )  # fmt: skip


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path / "pki", uri="urn:testhost:cellgate:gw")
    pki.ensure()
    return pki


def check(pki: Pki, cert: x509.Certificate) -> None:
    pki.check_server(cert, server_uri=SERVER_URI, server_name=NAME, host="127.0.0.1")


@pytest.mark.parametrize("encoding", ["der", "pem"])
def test_a_certificate_copied_into_trusted_under_any_name_is_trusted(pki: Pki, encoding: str) -> None:
    cert = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True)
    with pytest.raises(ServerCertificateRejectedError, match="is not trusted"):
        check(pki, cert)
    (pki.folder("rejected") / f"{thumbprint(cert)}.der").unlink()
    # What an operator copies from the PLC's engineering tool: its own file name, DER or PEM.
    data = cert.public_bytes(serialization.Encoding.DER if encoding == "der" else serialization.Encoding.PEM)
    (pki.folder("trusted") / f"coater-plc.{encoding}").write_bytes(data)
    check(pki, cert)  # accepted: `cellgate pki list` shows it under trusted/, so the gateway trusts it
    assert [info.thumbprint for info in pki.listing("trusted")] == [thumbprint(cert)]
    assert pki.listing("rejected") == []
    other = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True)
    with pytest.raises(ServerCertificateRejectedError, match="is not trusted"):
        check(pki, other)  # another certificate with the same names is still refused


def test_a_revoked_certificate_is_refused_with_the_reason_even_when_trusted(pki: Pki) -> None:
    ca, ca_key = make_ca(not_before=datetime.now(UTC) - timedelta(days=1), days=30)
    cert = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True, issuer=(ca, ca_key))
    (pki.folder("issuers") / "plant-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    check(pki, cert)  # signed by a CA in issuers/: trusted without trusted/
    crl = pki.folder("issuers") / "plant-ca.crl"
    crl.write_bytes(revoke(ca, ca_key, cert).public_bytes(serialization.Encoding.DER))
    (pki.folder("trusted") / f"{thumbprint(cert)}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ServerCertificateRejectedError) as refused:
        check(pki, cert)
    message = str(refused.value)
    assert f"certificate {thumbprint(cert)} was revoked on" in message
    assert str(crl) in message and "CN=Plant OT CA" in message and NAME in message
    assert "cellgate pki trust" not in message  # a revoked certificate is not to be trusted by thumbprint
    assert pki.listing("rejected") == []


def test_a_certificate_of_an_expired_ca_is_refused_with_the_reason(pki: Pki) -> None:
    ca, ca_key = make_ca(not_before=datetime.now(UTC) - timedelta(days=60), days=30)
    cert = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True, issuer=(ca, ca_key))
    (pki.folder("issuers") / "plant-ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ServerCertificateRejectedError, match=r"signed by the CA CN=Plant OT CA .* valid only"):
        check(pki, cert)
    assert pki.listing("rejected") == []


def endpoint(policy: str, mode: ua.MessageSecurityMode) -> ua.EndpointDescription:
    return ua.EndpointDescription(SecurityPolicyUri=f"http://opcfoundation.org/UA/SecurityPolicy#{policy}",
                                  SecurityMode=mode)  # fmt: skip


def test_allow_insecure_never_downgrades_a_server_that_offers_another_secure_mode() -> None:
    none = endpoint("None", ua.MessageSecurityMode.None_)
    sign = endpoint("Basic256Sha256", ua.MessageSecurityMode.Sign)
    with pytest.raises(SecurityRefusedError, match="offers Basic256Sha256/Sign, None/None; the map asks for auto/Sign"):
        choose_endpoint([none, sign], policy="auto", mode="SignAndEncrypt", allow_insecure=True)
    assert choose_endpoint([none, sign], policy="auto", mode="Sign", allow_insecure=True) is sign
    assert choose_endpoint([none], policy="auto", mode="SignAndEncrypt", allow_insecure=True) is None  # nothing else
    with pytest.raises(SecurityRefusedError, match="offers None/None"):
        choose_endpoint([none], policy="auto", mode="SignAndEncrypt", allow_insecure=False)


def test_trust_needs_eight_hex_digits_of_the_thumbprint(pki: Pki) -> None:
    cert = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True)
    with pytest.raises(ServerCertificateRejectedError):
        check(pki, cert)
    thumb = thumbprint(cert)
    for guess in (thumb[:1], thumb[:7], "", "not-hex-" + thumb):
        with pytest.raises(PkiError, match="is not a thumbprint: give at least 8 of its hex digits"):
            pki.trust(guess)
    assert pki.listing("trusted") == []
    pki.trust(thumb[:8].upper())
    check(pki, cert)


def test_a_check_without_record_leaves_rejected_alone(pki: Pki) -> None:
    cert = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True)
    with pytest.raises(ServerCertificateRejectedError, match=f"certificate {thumbprint(cert)} is not trusted"):
        pki.check_server(cert, server_uri=SERVER_URI, server_name=NAME, record=False)  # what `cellgate check` does
    assert pki.listing("rejected") == []


def test_a_certificate_in_issuers_that_is_no_ca_vouches_only_for_itself(pki: Pki) -> None:
    plc_key = new_key()
    plc = make_certificate(plc_key, uri="urn:plc-9:press", common_name="Press", server=True)
    (pki.folder("issuers") / "press.der").write_bytes(plc.public_bytes(serialization.Encoding.DER))
    pki.check_server(plc, server_uri="urn:plc-9:press", server_name=NAME, host="127.0.0.1")  # itself: trusted
    # A certificate the press's key signed (BasicConstraints CA false) is not trusted through it.
    minted = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True, issuer=(plc, plc_key))
    with pytest.raises(ServerCertificateRejectedError, match="is not trusted"):
        check(pki, minted)


def test_certs_and_crl_subfolders_as_other_opc_ua_tools_lay_them_out(pki: Pki) -> None:
    ca, ca_key = make_ca(not_before=datetime.now(UTC) - timedelta(days=1), days=30)
    signed = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True, issuer=(ca, ca_key))
    alone = make_certificate(new_key(), uri=SERVER_URI, common_name="plc-2", server=True)
    for folder in ("issuers/certs", "issuers/crl", "trusted/certs"):
        (pki.root / folder).mkdir(parents=True)
    (pki.root / "issuers" / "certs" / "plant-ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    (pki.root / "trusted" / "certs" / "plc-2.pem").write_bytes(alone.public_bytes(serialization.Encoding.PEM))
    check(pki, signed)
    check(pki, alone)
    assert [info.thumbprint for info in pki.listing("trusted")] == [thumbprint(alone)]
    assert [info.thumbprint for info in pki.listing("issuers")] == [thumbprint(ca)]
    (pki.root / "issuers" / "crl" / "plant-ca.crl").write_bytes(revoke(ca, ca_key, signed).public_bytes(
        serialization.Encoding.PEM))  # fmt: skip
    with pytest.raises(ServerCertificateRejectedError, match="was revoked on"):
        check(pki, signed)
