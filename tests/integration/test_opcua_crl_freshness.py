"""A CA-signed OPC UA server whose CA's CRL in the gateway's issuers/ has passed its nextUpdate, on a real handshake.

The server is the simulators' asyncua server (127.0.0.1, free port) with a certificate signed by a CA made here;
the gateway side is OpcUaSource with the assembly's client settings. Refused by default (the device's error names
the CRL, the CA and the date; `cellgate check` says the same), read with ``security.accept_outdated_crl: true``
(one warning per connect; `check` says trusted, but with the finding), and read again without the opt-out once a
fresh CRL is next to the old one.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from structlog.testing import capture_logs

from gateway.pki import Pki, make_certificate, new_key, thumbprint
from gateway.pki_cli import _describe_endpoints, pki_root
from gateway.sources.opcua import OpcUaDeviceOptions, OpcUaSource, OpcUaTagRef
from gateway.sources.opcua_security import ClientSecurity
from gateway.tagmap import Plant, load_plant_from_text
from gateway.vocabulary import OpcUaSecurityMode, OpcUaSecurityPolicy
from simulators.machines.coater import Coater
from simulators.servers.opcua_server import APPLICATION_URI, NAMESPACE_URI, OpcUaSimulatorServer, ServerSecurity
from tests.support.plant_ca import make_ca, make_crl
from tests.support.recorder import Recorder, running

USER = "operator"
PASSWORD = "crl-Pw-for-tests-9"
TAG = OpcUaTagRef(name="id/manufacturer", kind="s", identifier="Coater01.Identification.Manufacturer")


CHECK_MAP = """\
gateway: {{id: gw-crl, enterprise: acme, site: s1}}
mqtt: {{url: "mqtt://127.0.0.1:9"}}
devices:
  - name: coater
    area: a
    line: l
    protocol: opcua
    endpoint: "{endpoint}"
    security: {{accept_outdated_crl: {accept}}}
    tags: [{{name: m, node: "ns=2;s=Coater01.Identification.Manufacturer", type: string}}]
"""


def check_map(endpoint: str, *, accept: bool) -> Plant:
    """What `cellgate check` reads: a map with this one secure device."""
    return load_plant_from_text(CHECK_MAP.format(endpoint=endpoint, accept=str(accept).lower()))


def make_source(endpoint: str, pki: Pki, *, accept_outdated_crl: bool) -> OpcUaSource:
    options = OpcUaDeviceOptions(
        endpoint=endpoint, namespace_uri=NAMESPACE_URI, mode="subscribe", interval_ms=100, timeout_ms=3000,
        username=USER, password=PASSWORD,
    )  # fmt: skip
    security = ClientSecurity(policy=OpcUaSecurityPolicy.AUTO, mode=OpcUaSecurityMode.SIGN_AND_ENCRYPT,
                              allow_insecure=False, pki=pki, accept_outdated_crl=accept_outdated_crl)  # fmt: skip
    return OpcUaSource(device="coater", options=options, tags=[TAG], backoff_initial_s=0.1, backoff_max_s=0.3,
                       security=security)  # fmt: skip


async def test_an_expired_crl_refuses_the_server_unless_the_device_accepts_it(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca, ca_key = make_ca()

    def crl(next_update: datetime) -> bytes:
        return make_crl(ca, ca_key, next_update=next_update, last_update=next_update - timedelta(days=7))

    server_key = new_key()
    server_cert = make_certificate(server_key, uri=APPLICATION_URI, common_name="plc", server=True,
                                   issuer=(ca, ca_key))  # fmt: skip
    state = tmp_path / "state"
    pki = Pki(pki_root(state), uri="urn:testhost:cellgate:gw-crl")
    pki.ensure()
    issuers = pki.folder("issuers")
    (issuers / "plant-ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    expired_at = now - timedelta(days=2)
    old_crl = issuers / "plant-ca.crl"
    old_crl.write_bytes(crl(expired_at))
    security = ServerSecurity(pki_dir=tmp_path / "ca-sim", users={USER: PASSWORD}, certificate=server_cert,
                              key=server_key)  # fmt: skip
    machines = {"Coater01": Coater(rng=random.Random(1))}
    async with OpcUaSimulatorServer(machines=machines, port=0, autostep=False, security=security) as server:
        refused = Recorder(8.0)
        async with running(make_source(server.endpoint, pki, accept_outdated_crl=False), refused):
            await refused.wait_until(lambda: bool(refused.errors()))
        error = refused.errors()[0]
        assert f"certificate {thumbprint(server_cert)} is signed by the CA CN=Plant OT CA" in error
        assert f"whose CRL {old_crl} expired on {expired_at:%Y-%m-%d %H:%M} UTC" in error
        assert "a fresh CRL from that CA" in error
        assert not refused.good()
        assert pki.listing("rejected") == []  # nothing to trust by thumbprint
        [line] = await _describe_endpoints(check_map(server.endpoint, accept=False), state)
        assert "; refused: server " in line and f"whose CRL {old_crl} expired on" in line
        [line] = await _describe_endpoints(check_map(server.endpoint, accept=True), state)
        assert f"certificate {thumbprint(server_cert)} trusted, but: " in line
        assert "accepted because security.accept_outdated_crl is true" in line

        accepted = Recorder(8.0)
        with capture_logs() as logs:
            async with running(make_source(server.endpoint, pki, accept_outdated_crl=True), accepted):
                await accepted.wait_until(lambda: bool(accepted.good()))
        warnings = [line for line in logs if line["event"] == "opcua_outdated_crl_accepted"]
        assert warnings and warnings[0]["log_level"] == "warning" and warnings[0]["endpoint"] == server.endpoint
        assert str(old_crl) in str(warnings[0]["error"])

        (issuers / "plant-ca-fresh.crl").write_bytes(crl(now + timedelta(days=7)))
        fresh = Recorder(8.0)
        with capture_logs() as logs:
            async with running(make_source(server.endpoint, pki, accept_outdated_crl=False), fresh):
                await fresh.wait_until(lambda: bool(fresh.good()))
        assert not [line for line in logs if line["event"] == "opcua_outdated_crl_accepted"]
