"""The gateway's OPC UA PKI folder: its application instance certificate and the server trust list.

Layout (as OPC UA tools lay it out)::

    pki/
      own/cert.der            the gateway's application instance certificate
      own/private/key.pem     its RSA key, mode 0600
      trusted/<thumb>.der     server certificates trusted one by one (`cellgate pki trust THUMB`)
      rejected/<thumb>.der    server certificates seen and refused; trusting one moves it to trusted/
      issuers/                CA certificates (*.der, *.pem) and their CRLs (*.crl) for CA-signed servers

``trusted/`` and ``issuers/`` are also read in their ``certs/`` and ``crl/`` subfolders (node-opcua's layout).

A server certificate is accepted when it is inside its validity period, names the server's application URI in
its SubjectAltName, and is either in ``trusted/`` (any file name: the content counts) or signed by a CA in
``issuers/`` that is itself valid now. A certificate that a CRL in ``issuers/`` revokes is refused even when it is
in ``trusted/``, and is not copied to ``rejected/`` (it must not be trusted by thumbprint). So is one whose issuing
CA has CRLs there that have all passed their ``nextUpdate`` (revocation status unknown, OPC 10000-4's
Bad_CertificateRevocationUnknown), unless the device accepts outdated CRLs; a CA without any CRL is not checked
for revocation (see ``revocation_status``). Nothing is ever trusted on first use. The thumbprint is the SHA-1 of the
DER certificate, as OPC UA tools show it.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import GatewayError

__all__ = [
    "CertificateInfo",
    "CrlFacts",
    "CrlInfo",
    "Pki",
    "PkiError",
    "Revocation",
    "RevocationVerdict",
    "ServerCertificateRejectedError",
    "application_uri",
    "make_certificate",
    "revocation_status",
    "thumbprint",
]

CERT_VALID_DAYS = 365 * 2
KEY_BITS = 2048
MIN_TRUST_PREFIX = 8
"""Hex digits of a thumbprint `cellgate pki trust` needs at least."""
MAX_CHAIN_DEPTH = 5
"""CAs above the issuing one whose revocation is checked: a bound for a chain no plant PKI reaches."""


class PkiError(GatewayError):
    """The PKI folder cannot be used: unreadable or corrupt certificate or key, unknown thumbprint."""


class ServerCertificateRejectedError(GatewayError):
    """A server certificate failed validation; the message says why and what to do."""

    def __init__(self, message: str, *, thumbprint: str) -> None:
        super().__init__(message)
        self.thumbprint = thumbprint


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    thumbprint: str
    subject: str
    uris: tuple[str, ...]
    not_before: datetime
    not_after: datetime

    def line(self) -> str:
        uris = ",".join(self.uris) or "-"
        valid = f"{self.not_before:%Y-%m-%d}..{self.not_after:%Y-%m-%d}"
        return f"{self.thumbprint}  {self.subject}  uri={uris}  valid {valid}"


@dataclass(frozen=True, slots=True)
class CrlInfo:
    """One CRL file of ``issuers/`` as ``cellgate pki list`` and ``check`` show it; ``ca`` is the subject of the CA
    certificate in ``issuers/`` whose signature it carries (None: no CA there signed it, so it is never used)."""

    path: Path
    issuer: str
    ca: str | None
    last_update: datetime
    next_update: datetime | None
    revoked: int

    def line(self, now: datetime) -> str:
        if self.next_update is None:
            until = "no nextUpdate"
        elif now > self.next_update:
            until = f"EXPIRED {self.next_update:%Y-%m-%d %H:%M} UTC"
        else:
            until = f"next update by {self.next_update:%Y-%m-%d %H:%M} UTC"
        ca = "" if self.ca is not None else "  (no CA in issuers/ signed it: not used)"
        issued = f"issued {self.last_update:%Y-%m-%d}"
        return f"{self.path.name}  {self.issuer}  {self.revoked} revoked  {issued}  {until}{ca}"


@dataclass(frozen=True, slots=True)
class CrlFacts:
    """What the revocation decision needs of one CRL signed by the issuing CA."""

    path: Path
    next_update: datetime | None
    """None: the CRL names no next update (RFC 5280 requires one; such a CRL never counts as outdated)."""
    revoked_on: datetime | None
    """When this CRL says the certificate was revoked; None: it does not list the certificate."""


class Revocation(enum.Enum):
    """The revocation status of a CA-signed server certificate (OPC 10000-4, "Revocation Check")."""

    NOT_CHECKED = "not_checked"
    """The CA has no CRL in ``issuers/``: nothing to check (as with node-opcua's ignoreMissingRevocationList)."""
    GOOD = "good"
    """A CRL that has not passed its nextUpdate does not list the certificate."""
    REVOKED = "revoked"
    """A CRL lists it (an outdated CRL too: staleness never un-revokes a certificate)."""
    OUTDATED = "outdated"
    """All CRLs are past their nextUpdate, none lists it: status unknown, refused (Bad_CertificateRevocationUnknown)."""
    OUTDATED_ACCEPTED = "outdated_accepted"
    """As OUTDATED, accepted because the device says so (``security.accept_outdated_crl``), logged at each connect."""


@dataclass(frozen=True, slots=True)
class RevocationVerdict:
    status: Revocation
    crl: CrlFacts | None = None
    """The CRL the verdict rests on: the revoking one, or (outdated) the one that expired last."""

    @property
    def refused(self) -> bool:
        return self.status in (Revocation.REVOKED, Revocation.OUTDATED)


def revocation_status(crls: Sequence[CrlFacts], *, now: datetime, accept_outdated: bool) -> RevocationVerdict:
    """The revocation decision for one certificate from the CRLs its issuing CA signed (pure: no files, no clock).

    A listing CRL revokes whatever its age. Otherwise one current CRL (``nextUpdate`` not passed, or absent) is
    enough: an old file left next to the fresh one changes nothing. With only outdated CRLs the status is unknown.
    """
    for crl in crls:
        if crl.revoked_on is not None:
            return RevocationVerdict(Revocation.REVOKED, crl)
    if not crls:
        return RevocationVerdict(Revocation.NOT_CHECKED)
    current = [crl for crl in crls if crl.next_update is None or now <= crl.next_update]
    if current:
        return RevocationVerdict(Revocation.GOOD, current[0])
    latest = max(crls, key=lambda crl: crl.next_update or now)
    return RevocationVerdict(Revocation.OUTDATED_ACCEPTED if accept_outdated else Revocation.OUTDATED, latest)


def application_uri(gateway_id: str, host: str | None = None) -> str:
    """``urn:{host}:cellgate:{gateway.id}``: the client's ApplicationUri, also in its certificate's SubjectAltName."""
    return f"urn:{host or socket.gethostname()}:cellgate:{gateway_id}"


def thumbprint(cert: x509.Certificate) -> str:
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER), usedforsecurity=False).hexdigest()


def describe(cert: x509.Certificate) -> CertificateInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = tuple(san.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    return CertificateInfo(
        thumbprint=thumbprint(cert),
        subject=cert.subject.rfc4514_string(),
        uris=uris,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def make_certificate(
    key: rsa.RSAPrivateKey,
    *,
    uri: str,
    common_name: str,
    server: bool,
    not_before: datetime | None = None,
    days: int = CERT_VALID_DAYS,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None,
    hosts: tuple[str, ...] = ("localhost",),
) -> x509.Certificate:
    """A self-signed (or ``issuer``-signed) OPC UA application certificate (OPC 10000-6 §6.2.2) for ``uri``."""
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    alt += [x509.DNSName(host) for host in hosts]
    usages = (
        [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        if server
        else [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    sign_cert, sign_key = issuer if issuer is not None else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(sign_cert.subject if sign_cert is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return builder.sign(sign_key, hashes.SHA256())


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def write_private_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    """PEM, unencrypted, created with mode 0600 (never readable by others, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    os.replace(tmp, path)


def load_certificate_file(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read certificate {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError:
        raise PkiError(f"certificate {path} is corrupt (neither DER nor PEM X.509)") from None


def load_private_key_file(path: Path) -> rsa.RSAPrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read private key {path}: {exc.strerror}") from None
    try:
        key = (
            serialization.load_pem_private_key(data, password=None)
            if b"-----BEGIN" in data
            else serialization.load_der_private_key(data, password=None)
        )
    except (ValueError, TypeError):
        raise PkiError(f"private key {path} is corrupt or encrypted (an unencrypted RSA key is needed)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise PkiError(f"private key {path} is not an RSA key")
    return key


def _is_ca(cert: x509.Certificate) -> bool:
    """BasicConstraints says CA (RFC 5280 §4.2.1.9): the only certificates that may sign others."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_CERT_SUFFIXES = (".der", ".pem", ".crt")


def cert_hosts(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses in the certificate's SubjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def names_host(cert: x509.Certificate, host: str) -> bool:
    """True if ``host`` (a name or an IP address) is in the SubjectAltName; a loopback address matches a
    certificate for ``localhost`` or a loopback address (the usual certificate of a server on the same box)."""
    wanted = host.strip("[]").lower()
    names = {name.lower() for name in cert_hosts(cert)}
    with contextlib.suppress(ValueError):  # a DNS name stays as it is
        wanted = str(ipaddress.ip_address(wanted))
    if wanted in names:
        return True
    return wanted in _LOOPBACK_NAMES and bool(names & _LOOPBACK_NAMES)


class Pki:
    """One PKI folder (see the module doc). ``uri`` is the gateway's application URI."""

    def __init__(self, root: Path, *, uri: str) -> None:
        self.root = root
        self.uri = uri

    @property
    def cert_path(self) -> Path:
        return self.root / "own" / "cert.der"

    @property
    def key_path(self) -> Path:
        return self.root / "own" / "private" / "key.pem"

    def folder(self, name: str) -> Path:
        return self.root / name

    def ensure(self) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """The own certificate and key, created on first use; a damaged pair raises PkiError (never replaced)."""
        try:
            for name in ("own", "trusted", "rejected", "issuers"):
                self.folder(name).mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.cert_path.exists() and not self.key_path.exists():
                self._write_own(new_key())
        except OSError as exc:
            raise PkiError(f"cannot create the PKI folder {self.root}: {exc.strerror}") from None
        cert = load_certificate_file(self.cert_path)
        key = load_private_key_file(self.key_path)
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey) or public.public_numbers() != key.public_key().public_numbers():
            raise PkiError(f"{self.cert_path} and {self.key_path} do not belong together")
        if self.uri not in describe(cert).uris:
            raise PkiError(
                f"{self.cert_path} is for another application URI ({','.join(describe(cert).uris)}, not {self.uri}): "
                "run `cellgate pki renew`"
            )
        return cert, key

    def renew(self) -> CertificateInfo:
        """A new key and certificate for this URI (the old pair is replaced; servers must trust the new one)."""
        for name in ("own", "trusted", "rejected", "issuers"):
            self.folder(name).mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._write_own(new_key())

    def _write_own(self, key: rsa.RSAPrivateKey) -> CertificateInfo:
        cert = make_certificate(key, uri=self.uri, common_name="Cellgate", server=False, hosts=(socket.gethostname(),))
        write_private_key(self.key_path, key)
        tmp = self.cert_path.with_suffix(".tmp")
        tmp.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        os.replace(tmp, self.cert_path)
        return describe(cert)

    def own(self) -> CertificateInfo:
        return describe(load_certificate_file(self.cert_path))

    def files(self, name: str, suffixes: tuple[str, ...] = _CERT_SUFFIXES) -> list[Path]:
        """The files of folder ``name`` with these suffixes, also those in its ``certs/`` and ``crl/`` subfolders
        (node-opcua's layout, so a trust list copied from such a folder works as it is)."""
        found: list[Path] = []
        for folder in (self.folder(name), self.folder(name) / "certs", self.folder(name) / "crl"):
            if folder.is_dir():
                found += sorted(path for path in folder.iterdir() if path.suffix.lower() in suffixes)
        return found

    def listing(self, name: str) -> list[CertificateInfo]:
        infos = []
        for path in self.files(name):
            try:
                infos.append(describe(load_certificate_file(path)))
            except PkiError:
                continue
        return infos

    def trust(self, thumb: str) -> Path:
        """Move the rejected certificate with this thumbprint (or a unique prefix of at least MIN_TRUST_PREFIX hex
        digits: what an operator compares with the server's own display must not be a guess) to ``trusted/``."""
        thumb = thumb.strip().lower().replace(":", "")
        if len(thumb) < MIN_TRUST_PREFIX or any(c not in "0123456789abcdef" for c in thumb):
            raise PkiError(f"{thumb!r} is not a thumbprint: give at least {MIN_TRUST_PREFIX} of its hex digits")
        matches = [p for p in self.folder("rejected").glob("*.der") if p.stem.startswith(thumb)]
        if len(matches) != 1:
            found = "no" if not matches else "more than one"
            raise PkiError(f"{found} rejected certificate matches {thumb!r}: see `cellgate pki list`")
        target = self.folder("trusted") / matches[0].name
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(matches[0], target)
        return target

    def check_server(
        self, cert: x509.Certificate, *, server_uri: str, server_name: str, host: str | None = None,
        record: bool = True, accept_outdated_crl: bool = False,
    ) -> list[str]:  # fmt: skip
        """Raise ServerCertificateRejectedError unless ``cert`` is valid now, names ``server_uri`` (and ``host``,
        the endpoint's host, unless None) and is trusted. ``record``: an untrusted one is copied to ``rejected/``
        (False: the folder is left as it is, for ``cellgate check``). ``accept_outdated_crl``: a CA whose CRLs have
        all passed their nextUpdate does not refuse the certificate. Returns the checks that failed but were
        accepted that way (for a warning at every connect: OPC 10000-6 asks for a log entry when an error is
        suppressed); empty when none."""
        info = describe(cert)
        thumb = info.thumbprint
        now = datetime.now(UTC)
        if now > info.not_after:
            raise ServerCertificateRejectedError(
                f"server {server_name}: certificate {thumb} expired on {info.not_after:%Y-%m-%d %H:%M} UTC",
                thumbprint=thumb,
            )
        if now < info.not_before:
            raise ServerCertificateRejectedError(
                f"server {server_name}: certificate {thumb} is not valid before {info.not_before:%Y-%m-%d %H:%M} UTC",
                thumbprint=thumb,
            )
        if server_uri not in info.uris:
            raise ServerCertificateRejectedError(
                f"server {server_name}: certificate {thumb} is for {','.join(info.uris) or 'no URI'}, "
                f"but the server says it is {server_uri}",
                thumbprint=thumb,
            )
        if host is not None and not names_host(cert, host):
            raise ServerCertificateRejectedError(
                f"server {server_name}: certificate {thumb} does not name the host {host} "
                f"(it names {', '.join(cert_hosts(cert)) or 'no host'}); connect by a name it has, or set "
                "security.check_hostname: false",
                thumbprint=thumb,
            )
        issuer = self._issuer(cert)
        if issuer is not None:
            ca_path, ca = issuer
            return self._check_issuer(
                cert, ca, ca_path, server_name=server_name, accept_outdated_crl=accept_outdated_crl
            )
        if self._in_trusted(cert):
            return []
        if not record:
            raise ServerCertificateRejectedError(
                f"server {server_name} ({server_uri}): certificate {thumb} is not trusted; the gateway copies it to "
                f"{self.folder('rejected')} at its next connect attempt, then `cellgate pki trust {thumb}` trusts it",
                thumbprint=thumb,
            )
        rejected = self.folder("rejected")
        rejected.mkdir(parents=True, exist_ok=True, mode=0o700)
        (rejected / f"{thumb}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))
        raise ServerCertificateRejectedError(
            f"server {server_name} ({server_uri}): certificate {thumb} is not trusted; it was copied to "
            f"{rejected}; if it is the right server, run `cellgate pki trust {thumb}`",
            thumbprint=thumb,
        )

    def _in_trusted(self, cert: x509.Certificate) -> bool:
        """True if ``trusted/`` holds this certificate: ``{thumbprint}.der`` (what `cellgate pki trust` writes) or
        any other certificate file with the same content (copied there by hand or from another OPC UA tool)."""
        if (self.folder("trusted") / f"{thumbprint(cert)}.der").exists():
            return True
        for path in self.files("trusted"):
            with contextlib.suppress(PkiError):
                if load_certificate_file(path) == cert:
                    return True
        return False

    def _issuer(self, cert: x509.Certificate) -> tuple[Path, x509.Certificate] | None:
        """The CA certificate in ``issuers/`` that signed ``cert`` (and its file), or None."""
        for path in self.files("issuers"):
            try:
                ca = load_certificate_file(path)
            except PkiError:
                continue
            if ca.subject != cert.issuer or not (ca == cert or _is_ca(ca)):
                continue  # only a CA certificate vouches for others (a server's own one in issuers/ for itself)
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return path, ca
        return None

    def _check_issuer(
        self, cert: x509.Certificate, ca: x509.Certificate, ca_path: Path, *, server_name: str,
        accept_outdated_crl: bool,
    ) -> list[str]:  # fmt: skip
        """Raise ServerCertificateRejectedError when the issuing CA is not valid now, or when ``cert`` or a CA
        above it (a CA in ``issuers/`` signed by another one there) is revoked or has a revocation status unknown
        because the CRLs of its issuer are all outdated (then ``trusted/`` does not help either: such a certificate
        is never copied to ``rejected/``). Returns the outdated-CRL findings ``accept_outdated_crl`` let pass."""
        thumb = thumbprint(cert)
        now = datetime.now(UTC)
        if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            raise ServerCertificateRejectedError(
                f"server {server_name}: certificate {thumb} is signed by the CA {ca.subject.rfc4514_string()} "
                f"({ca_path}), which is valid only "
                f"{ca.not_valid_before_utc:%Y-%m-%d %H:%M}..{ca.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
                thumbprint=thumb,
            )
        findings = []
        finding = self._check_revocation(
            cert, ca, subject=f"certificate {thumb}", server_name=server_name, thumb=thumb, now=now,
            accept_outdated_crl=accept_outdated_crl,
        )  # fmt: skip
        findings += [finding] if finding else []
        # Up the chain (OPC 10000-4: Bad_CertificateIssuerRevoked / Bad_CertificateIssuerRevocationUnknown): each
        # CA that another CA in issuers/ signed is checked against that one's CRLs, up to a self-signed root.
        child, seen = ca, {thumbprint(ca)}
        for _ in range(MAX_CHAIN_DEPTH):
            found = self._issuer(child)
            if found is None or found[1] == child or thumbprint(found[1]) in seen:
                break
            parent = found[1]
            seen.add(thumbprint(parent))
            finding = self._check_revocation(
                child, parent, subject=f"certificate {thumb}: its issuer CA {child.subject.rfc4514_string()}",
                server_name=server_name, thumb=thumb, now=now, accept_outdated_crl=accept_outdated_crl,
            )  # fmt: skip
            findings += [finding] if finding else []
            child = parent
        return findings

    def _check_revocation(
        self, cert: x509.Certificate, ca: x509.Certificate, *, subject: str, server_name: str, thumb: str,
        now: datetime, accept_outdated_crl: bool,
    ) -> str | None:  # fmt: skip
        """Raise ServerCertificateRejectedError when a CRL of ``ca`` revokes ``cert`` (``subject`` says which
        certificate of the chain that is) or all of them are outdated; the finding when the opt-out let it pass."""
        facts = [
            CrlFacts(path=path, next_update=crl.next_update_utc, revoked_on=_revocation_date(crl, cert))
            for path, crl in self._crls_of(ca)
        ]
        verdict = revocation_status(facts, now=now, accept_outdated=accept_outdated_crl)
        crl_facts = verdict.crl
        ca_name = ca.subject.rfc4514_string()
        if verdict.status is Revocation.REVOKED and crl_facts is not None and crl_facts.revoked_on is not None:
            raise ServerCertificateRejectedError(
                f"server {server_name}: {subject} was revoked on {crl_facts.revoked_on:%Y-%m-%d %H:%M} UTC "
                f"by the CRL {crl_facts.path} of the CA {ca_name}; it stays refused, trusted or not",
                thumbprint=thumb,
            )
        if verdict.status not in (Revocation.OUTDATED, Revocation.OUTDATED_ACCEPTED) or crl_facts is None:
            return None
        expired = f"{crl_facts.next_update:%Y-%m-%d %H:%M} UTC" if crl_facts.next_update else "?"
        finding = (
            f"server {server_name}: {subject} is signed by the CA {ca_name}, whose CRL {crl_facts.path} expired on "
            f"{expired} (its nextUpdate): whether it is revoked is unknown"
        )
        if verdict.status is Revocation.OUTDATED:
            raise ServerCertificateRejectedError(
                f"{finding}; it is refused, trusted or not, until a fresh CRL from that CA replaces the file in "
                f"{self.folder('issuers')} (or the device sets security.accept_outdated_crl: true)",
                thumbprint=thumb,
            )
        return f"{finding}; accepted because security.accept_outdated_crl is true"

    def _crls_of(self, ca: x509.Certificate) -> list[tuple[Path, x509.CertificateRevocationList]]:
        """The CRLs in ``issuers/`` that ``ca`` issued and signed (others are ignored: anyone can write a file)."""
        found = []
        ca_key = ca.public_key()
        for path, crl in self._crl_files():
            if crl.issuer == ca.subject and isinstance(ca_key, rsa.RSAPublicKey) and crl.is_signature_valid(ca_key):
                found.append((path, crl))
        return found

    def _crl_files(self) -> list[tuple[Path, x509.CertificateRevocationList]]:
        """Every readable CRL file (``*.crl``, DER or PEM) of ``issuers/`` and its subfolders."""
        found = []
        for path in self.files("issuers", (".crl",)):
            data = path.read_bytes()
            try:
                crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
            except ValueError:
                continue
            found.append((path, crl))
        return found

    def crl_listing(self) -> list[CrlInfo]:
        """The CRLs of ``issuers/`` with their dates and the CA (in ``issuers/``) that signed each."""
        cas = []
        for path in self.files("issuers"):
            with contextlib.suppress(PkiError):
                cas.append(load_certificate_file(path))
        infos = []
        for path, crl in self._crl_files():
            signer = None
            for ca in cas:
                key = ca.public_key()
                if ca.subject == crl.issuer and isinstance(key, rsa.RSAPublicKey) and crl.is_signature_valid(key):
                    signer = ca.subject.rfc4514_string()
                    break
            issuer = crl.issuer.rfc4514_string()
            infos.append(CrlInfo(path=path, issuer=issuer, ca=signer, last_update=crl.last_update_utc,
                                 next_update=crl.next_update_utc, revoked=len(crl)))  # fmt: skip
        return infos


def _revocation_date(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> datetime | None:
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    return entry.revocation_date_utc if entry is not None else None
