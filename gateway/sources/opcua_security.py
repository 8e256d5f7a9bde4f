"""OPC UA secure channel set-up for one client: pick the endpoint, check the server certificate, set the keys.

The endpoint comes from GetEndpoints (over an unsecured channel, as the standard does it). ``policy: auto``
takes the strongest policy offered with the wanted mode; SecurityPolicy None is used only when the map allows it
(``allow_insecure``) and the server offers no secure endpoint at all (in any policy or mode). The server
certificate is checked against the gateway's PKI folder (gateway.pki) before any key is used; an unknown one lands
in ``rejected/``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import security_policies
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.errors import GatewayError
from gateway.pki import Pki, load_certificate_file, load_private_key_file
from gateway.secrets import read_secret_file
from gateway.vocabulary import OpcUaSecurityMode, OpcUaSecurityPolicy

__all__ = [
    "LOGIN_REFUSED",
    "POLICIES",
    "SESSION_TIMEOUT_MS",
    "ClientSecurity",
    "SecurityRefusedError",
    "choose_endpoint",
    "read_password_file",
    "secure_client",
]

log = structlog.get_logger("gateway.sources.opcua")

# Strongest first: what ``policy: auto`` prefers.
POLICIES: dict[OpcUaSecurityPolicy, type[security_policies.SecurityPolicy]] = {
    OpcUaSecurityPolicy.AES256_SHA256_RSAPSS: security_policies.SecurityPolicyAes256Sha256RsaPss,
    OpcUaSecurityPolicy.AES128_SHA256_RSAOAEP: security_policies.SecurityPolicyAes128Sha256RsaOaep,
    OpcUaSecurityPolicy.BASIC256SHA256: security_policies.SecurityPolicyBasic256Sha256,
}
_NONE_URI = "http://opcfoundation.org/UA/SecurityPolicy#None"
_MODES = {
    OpcUaSecurityMode.SIGN: ua.MessageSecurityMode.Sign,
    OpcUaSecurityMode.SIGN_AND_ENCRYPT: ua.MessageSecurityMode.SignAndEncrypt,
}
# A server refusing the user identity: every connection (source, event link) logs each such attempt.
LOGIN_REFUSED = frozenset({StatusCodes.BadUserAccessDenied, StatusCodes.BadIdentityTokenRejected,
                           StatusCodes.BadIdentityTokenInvalid})  # fmt: skip


class SecurityRefusedError(GatewayError):
    """The server offers no endpoint the map accepts (e.g. only SecurityPolicy None)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSecurity:
    """``policy``/``mode`` as in the map (their text is taken too); ``pki`` holds the gateway's certificate and trust
    list."""

    policy: OpcUaSecurityPolicy
    mode: OpcUaSecurityMode
    allow_insecure: bool
    pki: Pki
    user_certificate: Path | None = None
    user_key: Path | None = None
    password_file: Path | None = None
    check_hostname: bool = True
    accept_outdated_crl: bool = False
    """A CA-signed server certificate is accepted when its CA's CRLs have all passed their nextUpdate (logged)."""
    channel: bool = True
    """False: only ``password_file`` is used, the channel stays SecurityPolicy None (no ``security`` in the map)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", OpcUaSecurityPolicy(self.policy))
        object.__setattr__(self, "mode", OpcUaSecurityMode(self.mode))


def read_password_file(path: Path) -> str:
    """The password in ``path`` (gateway.secrets: relative names are systemd credentials)."""
    return read_secret_file(path)


def _policy_name(uri: str) -> str:
    return uri.rsplit("#", 1)[-1]


def choose_endpoint(
    endpoints: list[ua.EndpointDescription],
    *,
    policy: OpcUaSecurityPolicy,
    mode: OpcUaSecurityMode,
    allow_insecure: bool,
) -> ua.EndpointDescription | None:
    """The endpoint to use; None: SecurityPolicy None (only with ``allow_insecure``). Raises SecurityRefusedError."""
    policy, mode = OpcUaSecurityPolicy(policy), OpcUaSecurityMode(mode)  # text as in the map is taken too
    wanted = list(POLICIES) if policy is OpcUaSecurityPolicy.AUTO else [policy]
    for name in wanted:
        for endpoint in endpoints:
            if endpoint.SecurityMode == _MODES[mode] and endpoint.SecurityPolicyUri == POLICIES[name].URI:
                return endpoint
    offered = sorted({f"{_policy_name(e.SecurityPolicyUri)}/{e.SecurityMode.name.rstrip('_')}" for e in endpoints})
    offered = offered or ["nothing"]
    # None only from a server that has nothing secure at all: one that offers another secure mode or policy is
    # refused (the map says which), never silently downgraded to None.
    secure = any(e.SecurityPolicyUri != _NONE_URI and e.SecurityMode != ua.MessageSecurityMode.None_ for e in endpoints)
    if allow_insecure and not secure and any(e.SecurityPolicyUri == _NONE_URI for e in endpoints):
        return None
    raise SecurityRefusedError(f"the server offers {', '.join(offered)}; the map asks for {policy}/{mode}")


def first_certificate(chain: bytes) -> bytes:
    """The first DER certificate of a ServerCertificate field (a chain is several DER blobs back to back)."""
    if len(chain) < 2 or chain[0] != 0x30:
        return chain
    length = chain[1]
    if length < 0x80:
        return chain[: 2 + length]
    count = length & 0x7F
    size = int.from_bytes(chain[2 : 2 + count], "big")
    return chain[: 2 + count + size]


async def secure_client(client: Client, security: ClientSecurity, *, endpoint: str) -> dict[str, object]:
    """Set ``client`` up for ``security`` before connect(); returns the chosen channel for the logs."""
    cert, key = await asyncio.to_thread(security.pki.ensure)
    client.application_uri = security.pki.uri
    endpoints = await client.connect_and_get_server_endpoints()
    chosen = choose_endpoint(
        list(endpoints), policy=security.policy, mode=security.mode, allow_insecure=security.allow_insecure
    )
    if chosen is None:
        log.warning("opcua_insecure_channel", endpoint=endpoint, reason="server offers only SecurityPolicy None")
        return {"security_policy": "None", "security_mode": "None"}
    try:
        server_cert = x509.load_der_x509_certificate(first_certificate(chosen.ServerCertificate or b""))
    except ValueError:
        raise SecurityRefusedError(f"server at {endpoint} sent a corrupt certificate") from None
    server = chosen.Server
    name = server.ApplicationName.Text or endpoint
    host = urlsplit(endpoint).hostname if security.check_hostname else None
    accepted = security.pki.check_server(
        server_cert, server_uri=server.ApplicationUri or "", server_name=f"{name} at {endpoint}", host=host,
        accept_outdated_crl=security.accept_outdated_crl,
    )
    for finding in accepted:
        log.warning("opcua_outdated_crl_accepted", endpoint=endpoint, error=finding)
    await client.set_security(
        POLICIES[OpcUaSecurityPolicy(_policy_name(chosen.SecurityPolicyUri))],
        certificate=cert.public_bytes(serialization.Encoding.DER),
        private_key=key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        server_certificate=server_cert.public_bytes(serialization.Encoding.DER),
        mode=chosen.SecurityMode,
    )
    if security.user_certificate is not None and security.user_key is not None:
        user_cert = await asyncio.to_thread(load_certificate_file, security.user_certificate)
        user_key = await asyncio.to_thread(load_private_key_file, security.user_key)
        client.user_certificate = user_cert
        client.user_private_key = user_key
    return {"security_policy": _policy_name(chosen.SecurityPolicyUri), "security_mode": chosen.SecurityMode.name}


# Orphaned sessions (a link that died before CloseSession) hold a slot on the PLC until this expires.
# asyncua's default is one hour; PLCs often allow only a handful of sessions.
SESSION_TIMEOUT_MS = 60_000


def new_client(
    endpoint: str,
    *,
    timeout_s: float,
    username: str | None,
    password: str | None,
    password_file: Path | None,
    watchdog_s: float | None = None,
) -> Client:
    """An unconnected client as every OPC UA session of a device opens it (the source's and the event link's):
    request timeout, a 60 s session timeout, the login. A ``password_file`` is read here, at each connect, so a
    rotated file counts. ``watchdog_s``: see below (default: the request timeout, at most 5 s)."""
    # The client's supervisor probes ServerState every watchdog interval, with that interval as timeout.
    watchdog = min(timeout_s, 5.0) if watchdog_s is None else watchdog_s
    client = Client(endpoint, timeout=timeout_s, watchdog_intervall=watchdog)
    client.session_timeout = SESSION_TIMEOUT_MS
    if username is not None:
        client.set_user(username)
    if password_file is not None:
        password = read_password_file(password_file)
    if password is not None:
        client.set_password(password)
    return client


async def close_client(client: Client, timeout_s: float) -> None:
    """Close ``client``: CloseSession and CloseSecureChannel while its connection is open (a server that has
    closed it is not asked), then the socket, which also ends a session whose server does not answer."""
    protocol = getattr(client.uaclient, "protocol", None)
    # ``is_closed`` (asyncua 2.1's socket protocol); without it the connection counts as open, as before.
    if protocol is not None and not getattr(protocol, "is_closed", False):
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                await client.disconnect()
    with contextlib.suppress(Exception):
        client.disconnect_socket()
