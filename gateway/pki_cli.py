"""``cellgate pki show | list | trust | renew`` and the security checks of ``cellgate check`` / ``run``.

The PKI folder is ``<state dir>/pki`` (gateway.pki). ``renew`` replaces the gateway's key and certificate; it is
never done silently (servers that trusted the old certificate must be told about the new one).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from asyncua import ua

    from gateway.pki import Pki
    from gateway.tagmap import OpcUaDevice, Plant

EXIT_OK = 0
EXIT_REFUSED = 2
RENEW_WARNING_DAYS = 30
CRL_WARNING_DAYS = 3
"""``check`` and ``run`` warn this long before a CRL in issuers/ passes its nextUpdate: replacing the file is a copy
(nothing to roll out to servers, unlike the own certificate), so a few days' notice, a weekend included, is enough
and a CA that issues weekly CRLs does not warn all the time."""


def add_pki_commands(pki: argparse.ArgumentParser, *, default_state_dir: Callable[[], Path]) -> None:
    actions = pki.add_subparsers(dest="pki_command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--state-dir", default=None, help="the gateway's state directory (as for `cellgate run`)")
        sub.add_argument("-c", "--config", default=None, help="tag map, for gateway.id (the application URI)")
        sub.set_defaults(default_state_dir=default_state_dir)

    show = actions.add_parser("show", help="the gateway's certificate: thumbprint, application URI, expiry")
    common(show)
    show.set_defaults(func=cmd_show)
    listing = actions.add_parser("list", help="trusted and rejected server certificates, CAs and CRLs in issuers/")
    common(listing)
    listing.set_defaults(func=cmd_list)
    trust = actions.add_parser("trust", help="trust a rejected server certificate (8+ hex digits)")
    trust.add_argument("thumbprint")
    common(trust)
    trust.set_defaults(func=cmd_trust)
    renew = actions.add_parser("renew", help="new key and certificate for the gateway (needs -c for gateway.id)")
    common(renew)
    renew.set_defaults(func=cmd_renew)


def pki_root(state_dir: Path) -> Path:
    return state_dir / "pki"


def _pki(args: argparse.Namespace, *, need_uri: bool = False) -> Pki:
    from gateway.pki import Pki, application_uri
    from gateway.tagmap import load_plant

    state_dir = Path(args.state_dir) if args.state_dir else args.default_state_dir()
    uri = ""
    if args.config:
        try:
            uri = application_uri(load_plant(args.config).gateway.id)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            raise SystemExit(EXIT_REFUSED) from None
    elif need_uri:
        print("cellgate pki: give the tag map (-c) so the certificate gets the gateway's URI", file=sys.stderr)
        raise SystemExit(EXIT_REFUSED)
    return Pki(pki_root(state_dir), uri=uri)


def cmd_show(args: argparse.Namespace) -> int:
    from gateway.pki import PkiError

    pki = _pki(args)
    if not pki.cert_path.exists():
        print(f"no certificate yet in {pki.root}: it is created at the first start with a secure OPC UA device")
        return EXIT_OK
    try:
        info = pki.own()
    except PkiError as exc:
        print(f"cellgate: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"certificate  {pki.cert_path}")
    print(f"thumbprint   {info.thumbprint}")
    print(f"uri          {','.join(info.uris)}")
    print(f"valid        {info.not_before:%Y-%m-%d %H:%M} .. {info.not_after:%Y-%m-%d %H:%M} UTC")
    from datetime import UTC, datetime

    days = (info.not_after - datetime.now(UTC)).days
    if days < RENEW_WARNING_DAYS:
        print(f"expires in {days} day(s): run `cellgate pki renew -c MAP` and trust the new one on the servers")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    pki = _pki(args)
    for folder in ("trusted", "rejected", "issuers"):
        infos = pki.listing(folder)
        print(f"{folder}/ ({len(infos)})")
        for info in infos:
            print(f"  {info.line()}")
    crls = pki.crl_listing()  # only when there are any: the listing of a PKI without CRLs stays as it was
    now = datetime.now(UTC)
    if crls:
        print(f"issuers/ CRLs ({len(crls)})")
    for crl in crls:
        print(f"  {crl.line(now)}")
    return EXIT_OK


def cmd_trust(args: argparse.Namespace) -> int:
    from gateway.pki import PkiError

    pki = _pki(args)
    try:
        target = pki.trust(args.thumbprint)
    except PkiError as exc:
        print(f"cellgate: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"trusted {target.stem} ({target}); a running gateway uses it at its next connect attempt")
    return EXIT_OK


def cmd_renew(args: argparse.Namespace) -> int:
    pki = _pki(args, need_uri=True)
    info = pki.renew()
    print(f"new certificate {info.thumbprint} for {','.join(info.uris)}, valid until {info.not_after:%Y-%m-%d}")
    print("servers that trusted the old certificate must trust this one; restart the gateway to use it")
    return EXIT_OK


def secure_devices(plant: Plant) -> list[OpcUaDevice]:
    from gateway.assembly import active_devices
    from gateway.tagmap import OpcUaDevice

    return [d for d in active_devices(plant) if isinstance(d, OpcUaDevice) and d.security is not None]


def check_security_files(plant: Plant, state_dir: Path | None, *, create: bool) -> list[str]:
    """Problems with the files secure devices need: own certificate/key (made if ``create``), user
    certificates and keys, password files. An empty list means all can be read."""
    from gateway.secrets import SecretFileError, read_secret_file
    from gateway.tagmap import OpcUaDevice

    problems: list[str] = []
    opcua = [device for device in plant.devices if isinstance(device, OpcUaDevice) and device.enabled]
    if opcua:
        # gateway.pki imports cryptography: a gateway without OPC UA devices never loads it (README, "Memory").
        from gateway.pki import Pki, PkiError, application_uri, load_certificate_file, load_private_key_file

        if secure_devices(plant) and state_dir is not None:
            pki = Pki(pki_root(state_dir), uri=application_uri(plant.gateway.id))
            if create or pki.cert_path.exists() or pki.key_path.exists():
                try:
                    pki.ensure()
                except PkiError as exc:
                    problems.append(str(exc))
        for device in opcua:
            try:
                if device.user_certificate is not None:
                    load_certificate_file(Path(device.user_certificate))
                if device.user_key is not None:
                    load_private_key_file(Path(device.user_key))
                if device.password_file is not None:
                    read_secret_file(device.password_file)
            except (PkiError, SecretFileError) as exc:
                problems.append(f"device {device.name}: {exc}")
    if plant.mqtt.password_file is not None:
        try:
            read_secret_file(plant.mqtt.password_file)
        except SecretFileError as exc:
            problems.append(f"mqtt: {exc}")
    return problems


def own_certificate_warnings(plant: Plant, state_dir: Path) -> list[str]:
    """The gateway's certificate has expired or expires within RENEW_WARNING_DAYS (secure devices only): said at
    ``check`` and ``run``, because renewing it is the operator's command, never done by the gateway."""
    if not secure_devices(plant):
        return []
    from datetime import UTC, datetime

    from gateway.pki import Pki, PkiError, application_uri

    pki = Pki(pki_root(state_dir), uri=application_uri(plant.gateway.id))
    if not pki.cert_path.exists():
        return []
    try:
        info = pki.own()
    except PkiError:
        return []  # check_security_files reports it
    now = datetime.now(UTC)
    action = "run `cellgate pki renew -c MAP` and trust the new certificate on the servers"
    if now > info.not_after:
        return [f"the gateway's certificate {info.thumbprint} ({pki.cert_path}) expired on "
                f"{info.not_after:%Y-%m-%d %H:%M} UTC: servers refuse it; {action}"]  # fmt: skip
    days = (info.not_after - now).days
    if days < RENEW_WARNING_DAYS:
        return [f"the gateway's certificate {info.thumbprint} ({pki.cert_path}) expires on "
                f"{info.not_after:%Y-%m-%d %H:%M} UTC, in {days} day(s): {action}"]  # fmt: skip
    return []


def crl_warnings(plant: Plant, state_dir: Path) -> list[str]:
    """CRLs in issuers/ that have passed their nextUpdate or pass it within CRL_WARNING_DAYS, and CRL files no CA
    in issuers/ signed (never used): said at ``check`` and ``run`` (secure devices only), because an outdated CRL
    makes the gateway refuse every server its CA vouches for, and only the operator can fetch a fresh one."""
    if not secure_devices(plant):
        return []
    from datetime import UTC, datetime

    from gateway.pki import Pki, application_uri

    pki = Pki(pki_root(state_dir), uri=application_uri(plant.gateway.id))
    now = datetime.now(UTC)
    action = "copy a fresh CRL from that CA into issuers/ (replacing this file)"
    warnings = []
    for crl in pki.crl_listing():
        if crl.ca is None:
            warnings.append(f"the CRL {crl.path} (issuer {crl.issuer}) is signed by no CA certificate in issuers/: "
                            "it is not used; add its CA's certificate or remove the file")  # fmt: skip
        elif crl.next_update is not None and now > crl.next_update:
            warnings.append(f"the CRL {crl.path} of the CA {crl.ca} expired on {crl.next_update:%Y-%m-%d %H:%M} UTC "
                            f"(its nextUpdate): servers that CA signed are refused; {action}")  # fmt: skip
        elif crl.next_update is not None and (crl.next_update - now).days < CRL_WARNING_DAYS:
            days = (crl.next_update - now).days
            warnings.append(f"the CRL {crl.path} of the CA {crl.ca} expires on {crl.next_update:%Y-%m-%d %H:%M} UTC, "
                            f"in {days} day(s) (its nextUpdate): {action}")  # fmt: skip
    return warnings


def describe_endpoints(plant: Plant, state_dir: Path) -> list[str]:
    """For ``check``: the endpoint each OPC UA device would use, or why not; for a secure one also whether the
    gateway's PKI folder (``state_dir``/pki) trusts the server's certificate (nothing is written there)."""
    return asyncio.run(_describe_endpoints(plant, state_dir))


def _trust_of(
    chosen: ua.EndpointDescription, pki: Pki, *, endpoint: str, check_hostname: bool, accept_outdated_crl: bool
) -> str:
    from urllib.parse import urlsplit

    from cryptography import x509

    from gateway.pki import PkiError, ServerCertificateRejectedError, thumbprint
    from gateway.sources.opcua_security import first_certificate

    try:
        cert = x509.load_der_x509_certificate(first_certificate(chosen.ServerCertificate or b""))
    except ValueError:
        return "refused: the server sent a corrupt certificate"
    name = chosen.Server.ApplicationName.Text or endpoint
    try:
        accepted = pki.check_server(
            cert, server_uri=chosen.Server.ApplicationUri or "", server_name=f"{name} at {endpoint}",
            host=urlsplit(endpoint).hostname if check_hostname else None, record=False,
            accept_outdated_crl=accept_outdated_crl,
        )
    except ServerCertificateRejectedError as exc:
        return f"refused: {exc}"
    except (PkiError, OSError) as exc:  # an unreadable file in the PKI folder
        return f"trust not known: {exc}"
    if accepted:
        return f"certificate {thumbprint(cert)} trusted, but: {'; '.join(accepted)}"
    return f"certificate {thumbprint(cert)} trusted"


async def _describe_endpoints(plant: Plant, state_dir: Path) -> list[str]:
    from asyncua.client.client import Client

    from gateway.pki import Pki, application_uri
    from gateway.sources.opcua_security import choose_endpoint

    pki = Pki(pki_root(state_dir), uri=application_uri(plant.gateway.id))

    lines = []
    for device in plant.devices:
        from gateway.tagmap import OpcUaDevice

        if not isinstance(device, OpcUaDevice) or not device.enabled:
            continue
        security = device.security
        client = Client(device.endpoint, timeout=device.timeout_ms / 1000)
        try:
            async with asyncio.timeout(device.timeout_ms / 1000):
                endpoints = await client.connect_and_get_server_endpoints()
            if security is None:
                lines.append(f"{device.name}: {device.endpoint} SecurityPolicy None (no security in the map)")
                continue
            chosen = choose_endpoint(
                list(endpoints), policy=security.policy, mode=security.mode, allow_insecure=security.allow_insecure
            )
        except (OSError, TimeoutError, GatewayError, Exception) as exc:  # any failure: say it, go on
            reason = "timeout" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            lines.append(f"{device.name}: {device.endpoint} could not choose an endpoint: {reason}")
            continue
        if chosen is None:
            lines.append(f"{device.name}: {device.endpoint} SecurityPolicy None (allow_insecure)")
        else:
            policy = chosen.SecurityPolicyUri.rsplit("#", 1)[-1]
            server = chosen.Server.ApplicationUri
            trust = _trust_of(chosen, pki, endpoint=device.endpoint, check_hostname=security.check_hostname,
                              accept_outdated_crl=security.accept_outdated_crl)  # fmt: skip
            lines.append(
                f"{device.name}: {chosen.EndpointUrl} {policy} {chosen.SecurityMode.name} server {server}; {trust}"
            )
    return lines
