"""A CA's CRL past its ``nextUpdate`` (gateway.pki): the pure decision table, the trust check on certificate
files (refused with the CRL, CA, date and fix; ``accept_outdated_crl`` lets it pass with a finding), the tag-map
field down to the client settings, and the warnings ``cellgate check`` / ``run`` print.

The same decisions on a real handshake are in tests/integration/test_opcua_crl_freshness.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.assembly import opcua_security
from gateway.pki import (
    CrlFacts,
    Pki,
    Revocation,
    ServerCertificateRejectedError,
    application_uri,
    make_certificate,
    new_key,
    revocation_status,
    thumbprint,
)
from gateway.pki_cli import CRL_WARNING_DAYS, crl_warnings
from gateway.tagmap import OpcUaDevice
from gateway.tagmap.loader import load_plant_from_text
from tests.support.plant_ca import make_ca, make_crl
from tests.support.tagmap import SECURE_OPCUA_MAP

SERVER_URI = "urn:plc-7:coater"
NAME = "Coater at opc.tcp://127.0.0.1:4840"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
PAST = NOW - timedelta(days=2)
FUTURE = NOW + timedelta(days=5)

# (CRLs as (nextUpdate, revoked_on) pairs, accept_outdated) -> status, index of the CRL the verdict names
TABLE = [
    ((), False, Revocation.NOT_CHECKED, None),
    ((), True, Revocation.NOT_CHECKED, None),
    (((FUTURE, None),), False, Revocation.GOOD, 0),
    (((None, None),), False, Revocation.GOOD, 0),  # no nextUpdate: nothing to enforce
    (((NOW, None),), False, Revocation.GOOD, 0),  # valid up to and including nextUpdate
    (((PAST, None),), False, Revocation.OUTDATED, 0),
    (((PAST, None),), True, Revocation.OUTDATED_ACCEPTED, 0),
    (((PAST, None), (FUTURE, None)), False, Revocation.GOOD, 1),  # an old file next to the fresh one
    (((PAST - timedelta(days=9), None), (PAST, None)), False, Revocation.OUTDATED, 1),  # names the latest
    (((FUTURE, PAST),), False, Revocation.REVOKED, 0),
    (((PAST, PAST),), True, Revocation.REVOKED, 0),  # staleness never un-revokes, opt-out or not
    (((FUTURE, None), (PAST, PAST)), False, Revocation.REVOKED, 1),  # any CRL listing it revokes
]


@pytest.mark.parametrize(("crls", "accept", "status", "named"), TABLE)
def test_revocation_decision_table(
    crls: tuple[tuple[datetime | None, datetime | None], ...], accept: bool, status: Revocation, named: int | None
) -> None:
    facts = [CrlFacts(path=Path(f"issuers/{i}.crl"), next_update=nxt, revoked_on=rev) for i, (nxt, rev) in
             enumerate(crls)]  # fmt: skip
    verdict = revocation_status(facts, now=NOW, accept_outdated=accept)
    assert verdict.status is status
    assert verdict.crl == (facts[named] if named is not None else None)
    assert verdict.refused == (status in (Revocation.REVOKED, Revocation.OUTDATED))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    pki = Pki(tmp_path / "pki", uri="urn:testhost:cellgate:gw")
    pki.ensure()
    return pki


@pytest.fixture
def ca_signed(pki: Pki) -> tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]:
    """A CA in issuers/ (no CRL yet) and a server certificate it signed."""
    ca, ca_key = make_ca()
    (pki.folder("issuers") / "plant-ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    cert = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True, issuer=(ca, ca_key))
    return ca, ca_key, cert


def check(pki: Pki, cert: x509.Certificate, *, accept: bool = False) -> list[str]:
    return pki.check_server(cert, server_uri=SERVER_URI, server_name=NAME, host="127.0.0.1", accept_outdated_crl=accept)


@pytest.mark.parametrize("in_trusted", [False, True], ids=["ca-signed", "also-in-trusted"])
def test_an_expired_crl_refuses_the_certificate_naming_crl_ca_date_and_fix(
    pki: Pki, ca_signed: tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate], in_trusted: bool
) -> None:
    ca, ca_key, cert = ca_signed
    assert check(pki, cert) == []  # no CRL: revocation not checked, trusted through the CA (unchanged)
    if in_trusted:
        (pki.folder("trusted") / f"{thumbprint(cert)}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    expired = datetime.now(UTC) - timedelta(days=3)
    crl = pki.folder("issuers") / "plant-ca.crl"
    crl.write_bytes(make_crl(ca, ca_key, next_update=expired))
    with pytest.raises(ServerCertificateRejectedError) as refused:
        check(pki, cert)
    message = str(refused.value)
    assert refused.value.thumbprint == thumbprint(cert)
    assert f"{NAME}: certificate {thumbprint(cert)} is signed by the CA CN=Plant OT CA" in message
    assert f"whose CRL {crl} expired on {expired:%Y-%m-%d %H:%M} UTC" in message
    assert "revoked is unknown" in message and "trusted or not" in message
    assert f"until a fresh CRL from that CA replaces the file in {pki.folder('issuers')}" in message
    assert "security.accept_outdated_crl: true" in message
    assert "cellgate pki trust" not in message and pki.listing("rejected") == []
    # The opt-out: accepted, and the finding comes back for the connect's warning.
    [finding] = check(pki, cert, accept=True)
    assert str(crl) in finding and "accepted because security.accept_outdated_crl is true" in finding
    # A fresh CRL from the CA, next to the old file: accepted without the opt-out.
    (pki.folder("issuers") / "plant-ca-new.crl").write_bytes(
        make_crl(ca, ca_key, next_update=datetime.now(UTC) + timedelta(days=7))
    )
    assert check(pki, cert) == []


def test_a_revoked_certificate_stays_refused_with_the_opt_out_and_an_outdated_crl(
    pki: Pki, ca_signed: tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]
) -> None:
    ca, ca_key, cert = ca_signed
    (pki.folder("issuers") / "plant-ca.crl").write_bytes(
        make_crl(ca, ca_key, next_update=datetime.now(UTC) - timedelta(days=1), revoke=cert)
    )
    with pytest.raises(ServerCertificateRejectedError, match=f"certificate {thumbprint(cert)} was revoked on"):
        check(pki, cert, accept=True)


def test_an_expired_crl_no_ca_in_issuers_signed_is_ignored(
    pki: Pki, ca_signed: tuple[x509.Certificate, rsa.RSAPrivateKey, x509.Certificate]
) -> None:
    ca, _, cert = ca_signed
    # Same issuer name, another key: anyone can drop a file in issuers/; it must not refuse (nor vouch).
    (pki.folder("issuers") / "forged.crl").write_bytes(
        make_crl(ca, new_key(), next_update=datetime.now(UTC) - timedelta(days=1))
    )
    assert check(pki, cert) == []


def test_accept_outdated_crl_is_a_bool_of_the_map_down_to_the_client(tmp_path: Path) -> None:
    strict = load_plant_from_text(SECURE_OPCUA_MAP.format(security="{}")).devices[0]
    lenient = load_plant_from_text(SECURE_OPCUA_MAP.format(security="{accept_outdated_crl: true}")).devices[0]
    assert isinstance(strict, OpcUaDevice) and isinstance(lenient, OpcUaDevice)
    strict_client = opcua_security(strict, gateway_id="gw", pki_root=tmp_path)
    lenient_client = opcua_security(lenient, gateway_id="gw", pki_root=tmp_path)
    assert strict_client is not None and strict_client.accept_outdated_crl is False
    assert lenient_client is not None and lenient_client.accept_outdated_crl is True


def test_check_warns_about_expired_expiring_and_unsigned_crls(tmp_path: Path) -> None:
    plant = load_plant_from_text(SECURE_OPCUA_MAP.format(security="{}"))
    pki = Pki(tmp_path / "pki", uri=application_uri(plant.gateway.id))
    pki.ensure()
    ca, ca_key = make_ca()
    (pki.folder("issuers") / "plant-ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    now = datetime.now(UTC)
    fresh = pki.folder("issuers") / "fresh.crl"
    fresh.write_bytes(make_crl(ca, ca_key, next_update=now + timedelta(days=CRL_WARNING_DAYS + 1)))
    assert crl_warnings(plant, tmp_path) == []
    expiring_at = now + timedelta(days=1, hours=1)
    (pki.folder("issuers") / "expiring.crl").write_bytes(make_crl(ca, ca_key, next_update=expiring_at))
    expired_at = now - timedelta(days=1)
    (pki.folder("issuers") / "expired.crl").write_bytes(make_crl(ca, ca_key, next_update=expired_at))
    (pki.folder("issuers") / "stray.crl").write_bytes(make_crl(ca, new_key(), next_update=expiring_at))
    warnings = sorted(crl_warnings(plant, tmp_path))
    assert len(warnings) == 3
    expired, expiring, stray = warnings
    issuers = pki.folder("issuers")
    assert expired.startswith(f"the CRL {issuers / 'expired.crl'} of the CA CN=Plant OT CA expired on "
                              f"{expired_at:%Y-%m-%d %H:%M} UTC")  # fmt: skip
    assert "servers that CA signed are refused; copy a fresh CRL from that CA into issuers/" in expired
    assert expiring.startswith(f"the CRL {issuers / 'expiring.crl'} of the CA CN=Plant OT CA expires on "
                               f"{expiring_at:%Y-%m-%d %H:%M} UTC, in 1 day(s)")  # fmt: skip
    assert stray.startswith(f"the CRL {issuers / 'stray.crl'} (issuer CN=Plant OT CA) is signed by no CA")
    # Without a secure device the PKI folder is not the gateway's business: no warning.
    plain = load_plant_from_text(SECURE_OPCUA_MAP.format(security="{}").replace("    security: {}\n", ""))
    assert crl_warnings(plain, tmp_path) == []


def test_the_issuing_ca_is_checked_against_the_crls_of_the_ca_above_it(pki: Pki) -> None:
    root, root_key = make_ca()
    now = datetime.now(UTC)
    inter, inter_key = make_ca("Cell 3 CA", issuer=(root, root_key))
    cert = make_certificate(new_key(), uri=SERVER_URI, common_name="plc", server=True, issuer=(inter, inter_key))
    issuers = pki.folder("issuers")
    (issuers / "root.der").write_bytes(root.public_bytes(serialization.Encoding.DER))
    (issuers / "cell-3.der").write_bytes(inter.public_bytes(serialization.Encoding.DER))
    (issuers / "cell-3.crl").write_bytes(make_crl(inter, inter_key, next_update=now + timedelta(days=7)))
    assert check(pki, cert) == []  # the root has no CRL: the intermediate is not checked (as for a leaf)
    root_crl = issuers / "root.crl"
    root_crl.write_bytes(make_crl(root, root_key, next_update=now - timedelta(days=1)))
    with pytest.raises(ServerCertificateRejectedError) as refused:
        check(pki, cert)
    assert (f"certificate {thumbprint(cert)}: its issuer CA CN=Cell 3 CA is signed by the CA CN=Plant OT CA, whose "
            f"CRL {root_crl} expired on") in str(refused.value)  # fmt: skip
    [finding] = check(pki, cert, accept=True)
    assert "its issuer CA CN=Cell 3 CA" in finding
    root_crl.write_bytes(make_crl(root, root_key, next_update=now + timedelta(days=30), revoke=inter))
    revoked = r"its issuer CA CN=Cell 3 CA was revoked on .* by the CRL .*root\.crl of the CA CN=Plant OT CA"
    with pytest.raises(ServerCertificateRejectedError, match=revoked):
        check(pki, cert, accept=True)
    root_crl.write_bytes(make_crl(root, root_key, next_update=now + timedelta(days=30)))
    assert check(pki, cert) == []
