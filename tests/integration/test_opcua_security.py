"""OpcUaSource over secure channels against the simulators' secure endpoints (real asyncua server, 127.0.0.1).

Every policy x mode (through the fast publish path, and once through asyncua's), ``policy: auto``, user name +
password and X.509 user identities, and each refusal: untrusted server (lands in rejected/, trusted by `pki
trust`), expired and wrong-URI server certificates, a server offering only None, a wrong password, a corrupt own
key, a revoked CA-signed certificate. The events' own session (gateway.events.opcua_link) gets the same channel,
trust list and login, and the same one line per refused login.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr
from structlog.testing import capture_logs

from gateway.assembly import event_link, planned_events
from gateway.events.core import EventRecord
from gateway.events.runner import EventLinkError, EventRunner
from gateway.pki import Pki, application_uri, make_certificate, new_key, thumbprint, write_private_key
from gateway.schema import Quality
from gateway.sinks.base import Delivery
from gateway.sources.opcua import OpcUaDeviceOptions, OpcUaSource, OpcUaTagRef
from gateway.sources.opcua_security import ClientSecurity
from gateway.tagmap import OpcUaDevice, load_plant
from gateway.tagmap.model import OpcUaSecurity
from simulators.machines.coater import Coater, CoaterConfig
from simulators.servers.opcua_server import APPLICATION_URI, NAMESPACE_URI, OpcUaSimulatorServer, ServerSecurity
from tests.support.gateway import DEMO_CONFIG
from tests.support.plant_ca import make_ca, make_crl
from tests.support.recorder import Recorder, running

USER = "operator"
PASSWORD = "s3cret-Pw!-for-tests"
TAG = OpcUaTagRef(name="id/manufacturer", kind="s", identifier="Coater01.Identification.Manufacturer")
GATEWAY_URI = "urn:testhost:cellgate:gw-test"




def make_source(
    endpoint: str, pki: Pki, *, policy: str = "auto", mode: str = "SignAndEncrypt", allow_insecure: bool = False,
    username: str | None = USER, password: str | None = PASSWORD, fast_publish: bool = True, **security: object,
) -> OpcUaSource:  # fmt: skip
    options = OpcUaDeviceOptions(
        endpoint=endpoint, namespace_uri=NAMESPACE_URI, mode="subscribe", interval_ms=100, timeout_ms=3000,
        username=username, password=password,
    )  # fmt: skip
    client_security = ClientSecurity(policy=policy, mode=mode, allow_insecure=allow_insecure, pki=pki, **security)  # type: ignore[arg-type]
    return OpcUaSource(
        device="coater", options=options, tags=[TAG], backoff_initial_s=0.1, backoff_max_s=0.3,
        security=client_security, fast_publish=fast_publish,
    )  # fmt: skip


def trust_server(pki: Pki, server_pki: Path) -> str:
    """What an operator does with `cellgate pki trust`, done by copying the server's certificate to trusted/."""
    pki.ensure()
    der = (server_pki / "own" / "cert.der").read_bytes()
    thumb = thumbprint(x509.load_der_x509_certificate(der))
    (pki.folder("trusted") / f"{thumb}.der").write_bytes(der)
    return thumb


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "gw-pki", uri=GATEWAY_URI)


@pytest.fixture(scope="module")
def server_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim-pki")


@pytest_asyncio.fixture(scope="module")
async def secure_server(server_pki: Path) -> AsyncIterator[OpcUaSimulatorServer]:
    security = ServerSecurity(pki_dir=server_pki, users={USER: PASSWORD})
    # The extended points include the roll-record FIFO (Coater01.Result.*) that the event-link tests read.
    machines = {"Coater01": Coater(rng=random.Random(1), config=CoaterConfig(extended_points=True))}
    async with OpcUaSimulatorServer(machines=machines, port=0, autostep=False, security=security) as server:
        yield server


def link_up_lines(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [line for line in logs if line["event"] == "opcua_link_up"]


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"])
@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_every_policy_and_mode_reads_values(
    secure_server: OpcUaSimulatorServer, server_pki: Path, pki: Pki, policy: str, mode: str
) -> None:
    trust_server(pki, server_pki)
    recorder = Recorder(8.0)
    source = make_source(secure_server.endpoint, pki, policy=policy, mode=mode)
    with capture_logs() as logs:
        async with running(source, recorder):
            await recorder.wait_until(lambda: bool(recorder.good()))
    assert recorder.links[0] == (True, None)
    assert isinstance(recorder.good()[0].value, str) and recorder.good()[0].value
    [up] = link_up_lines(logs)
    assert (up["security_policy"], up["security_mode"]) == (policy, mode)
    # The value came through the fast path's own Publish loop, inside the same secure channel.
    assert [line["path"] for line in logs if line["event"] == "opcua_publish_path"] == ["fast"]
    assert source.stats.fast_publish_responses >= 1


async def test_asyncua_publish_path_over_a_secure_channel(
    secure_server: OpcUaSimulatorServer, server_pki: Path, pki: Pki
) -> None:
    trust_server(pki, server_pki)
    recorder = Recorder(8.0)
    source = make_source(secure_server.endpoint, pki, mode="SignAndEncrypt", fast_publish=False)
    with capture_logs() as logs:
        async with running(source, recorder):
            await recorder.wait_until(lambda: bool(recorder.good()))
    [up] = link_up_lines(logs)
    assert (up["security_policy"], up["security_mode"]) == ("Aes256_Sha256_RsaPss", "SignAndEncrypt")
    assert [line["path"] for line in logs if line["event"] == "opcua_publish_path"] == ["asyncua"]
    assert source.stats.asyncua_publish_responses + source.stats.notifications >= 1


async def test_auto_picks_the_strongest_policy_and_creates_the_own_certificate(
    secure_server: OpcUaSimulatorServer, server_pki: Path, pki: Pki
) -> None:
    trust_server(pki, server_pki)
    recorder = Recorder(8.0)
    with capture_logs() as logs:
        async with running(make_source(secure_server.endpoint, pki), recorder):
            await recorder.wait_until(lambda: bool(recorder.good()))
    [up] = link_up_lines(logs)
    assert (up["security_policy"], up["security_mode"]) == ("Aes256_Sha256_RsaPss", "SignAndEncrypt")
    assert pki.key_path.stat().st_mode & 0o777 == 0o600
    assert pki.own().uris == (GATEWAY_URI,)
    for folder in ("own", "trusted", "rejected", "issuers"):
        assert pki.folder(folder).is_dir()


async def test_unknown_server_goes_to_rejected_until_trusted(
    secure_server: OpcUaSimulatorServer, server_pki: Path, pki: Pki
) -> None:
    recorder = Recorder(8.0)
    async with running(make_source(secure_server.endpoint, pki), recorder):
        await recorder.wait_until(lambda: bool(recorder.errors()))
        error = recorder.errors()[0]
        [rejected] = pki.listing("rejected")
        assert rejected.uris == (APPLICATION_URI,)
        assert f"cellgate pki trust {rejected.thumbprint}" in error
        assert "Cellgate equipment simulators" in error and APPLICATION_URI in error
        assert not recorder.good()
        pki.trust(rejected.thumbprint[:12])  # a unique prefix is enough, as with `cellgate pki trust`
        await recorder.wait_until(lambda: bool(recorder.good()))
    assert [info.thumbprint for info in pki.listing("trusted")] == [rejected.thumbprint]
    assert pki.listing("rejected") == []


async def test_wrong_password_is_one_line_per_attempt_with_backoff(
    secure_server: OpcUaSimulatorServer, server_pki: Path, pki: Pki
) -> None:
    trust_server(pki, server_pki)
    recorder = Recorder(8.0)
    with capture_logs() as logs:
        async with running(make_source(secure_server.endpoint, pki, password="wrong"), recorder):
            async with asyncio.timeout(10):
                # capture_logs has no hook to wait on; the source reports the link down only once.
                while len([line for line in logs if line["event"] == "opcua_login_refused"]) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
    refused = [line for line in logs if line["event"] == "opcua_login_refused"]
    assert len(refused) >= 3
    assert [line["attempt"] for line in refused[:3]] == [1, 2, 3]
    assert all(line["error"] == "BadUserAccessDenied" and line["user"] == USER for line in refused)
    assert all(float(line["retry_in_s"]) > 0 for line in refused)  # type: ignore[arg-type]
    assert not recorder.good()
    assert "wrong" not in repr(logs) and PASSWORD not in repr(logs)


async def test_x509_user_identity(server_pki: Path, pki: Pki, tmp_path: Path) -> None:
    user_key = new_key()
    user_cert = make_certificate(user_key, uri="urn:user:alice", common_name="alice", server=False)
    (tmp_path / "alice.der").write_bytes(user_cert.public_bytes(serialization.Encoding.DER))
    write_private_key(tmp_path / "alice.pem", user_key)
    security = ServerSecurity(pki_dir=server_pki, user_certificates=frozenset({thumbprint(user_cert)}))
    machines = {"Coater01": Coater(rng=random.Random(1))}
    async with OpcUaSimulatorServer(machines=machines, port=0, autostep=False, security=security) as server:
        trust_server(pki, server_pki)
        recorder = Recorder(8.0)
        source = make_source(
            server.endpoint, pki, username=None, password=None,
            user_certificate=tmp_path / "alice.der", user_key=tmp_path / "alice.pem",
        )  # fmt: skip
        async with running(source, recorder):
            await recorder.wait_until(lambda: bool(recorder.good()))
        # Without the user certificate the same server refuses the (anonymous) session.
        refused = Recorder(8.0)
        async with running(make_source(server.endpoint, pki, username=None, password=None), refused):
            await refused.wait_until(lambda: bool(refused.errors()))
        assert not refused.good()


@contextlib.contextmanager
def odd_certificate(tmp_path: Path, **changes: object) -> Iterator[ServerSecurity]:
    key = new_key()
    settings: dict[str, object] = {"uri": APPLICATION_URI, "common_name": "odd", "server": True}
    settings.update(changes)
    cert = make_certificate(key, **settings)  # type: ignore[arg-type]
    yield ServerSecurity(pki_dir=tmp_path / "odd-sim", users={USER: PASSWORD}, certificate=cert, key=key)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"not_before": datetime.now(UTC) - timedelta(days=30), "days": 1}, "expired on"),
        ({"not_before": datetime.now(UTC) + timedelta(days=30)}, "is not valid before"),
        ({"uri": "urn:somewhere-else:plc"}, "is for urn:somewhere-else:plc, but the server says it is"),
        ({"hosts": ("plc-17.plant.example",)}, "does not name the host 127.0.0.1 (it names plc-17.plant.example)"),
    ],
    ids=["expired", "not-yet-valid", "wrong-uri", "wrong-host"],
)
async def test_bad_server_certificates_are_refused_with_the_reason(
    tmp_path: Path, pki: Pki, changes: dict[str, object], reason: str
) -> None:
    with odd_certificate(tmp_path, **changes) as security:
        assert security.certificate is not None
        pki.ensure()
        # Even a trusted thumbprint does not make an expired or mismatched certificate acceptable.
        der = security.certificate.public_bytes(serialization.Encoding.DER)
        (pki.folder("trusted") / f"{thumbprint(security.certificate)}.der").write_bytes(der)
        machines = {"Coater01": Coater(rng=random.Random(1))}
        async with OpcUaSimulatorServer(machines=machines, port=0, autostep=False, security=security) as server:
            recorder = Recorder(8.0)
            async with running(make_source(server.endpoint, pki), recorder):
                await recorder.wait_until(lambda: bool(recorder.errors()))
    assert reason in recorder.errors()[0]
    assert thumbprint(security.certificate) in recorder.errors()[0]
    assert not recorder.good()


async def test_server_offering_only_none_is_refused_unless_allowed(pki: Pki) -> None:
    machines = {"Coater01": Coater(rng=random.Random(1))}
    async with OpcUaSimulatorServer(machines=machines, port=0, autostep=False) as server:
        refused = Recorder(8.0)
        async with running(make_source(server.endpoint, pki, username=None, password=None), refused):
            await refused.wait_until(lambda: bool(refused.errors()))
        assert "the server offers None/None; the map asks for auto/SignAndEncrypt" in refused.errors()[0]
        assert not refused.good()
        allowed = Recorder(8.0)
        source = make_source(server.endpoint, pki, username=None, password=None, allow_insecure=True)
        with capture_logs() as logs:
            async with running(source, allowed):
                await allowed.wait_until(lambda: bool(allowed.good()))
        assert any(line["event"] == "opcua_insecure_channel" for line in logs)


async def test_corrupt_own_key_is_a_clear_error(
    secure_server: OpcUaSimulatorServer, server_pki: Path, pki: Pki
) -> None:
    trust_server(pki, server_pki)
    pki.key_path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    recorder = Recorder(8.0)
    async with running(make_source(secure_server.endpoint, pki), recorder):
        await recorder.wait_until(lambda: bool(recorder.errors()))
    assert f"private key {pki.key_path} is corrupt" in recorder.errors()[0]


async def test_ca_signed_server_is_trusted_through_issuers_until_revoked(tmp_path: Path, pki: Pki) -> None:
    ca, ca_key = make_ca()
    server_key = new_key()
    server_cert = make_certificate(
        server_key, uri=APPLICATION_URI, common_name="plc", server=True, issuer=(ca, ca_key)
    )
    pki.ensure()
    (pki.folder("issuers") / "plant-ca.der").write_bytes(ca.public_bytes(serialization.Encoding.DER))
    security = ServerSecurity(
        pki_dir=tmp_path / "ca-sim", users={USER: PASSWORD}, certificate=server_cert, key=server_key
    )
    machines = {"Coater01": Coater(rng=random.Random(1))}
    async with OpcUaSimulatorServer(machines=machines, port=0, autostep=False, security=security) as server:
        trusted = Recorder(8.0)
        async with running(make_source(server.endpoint, pki), trusted):
            await trusted.wait_until(lambda: bool(trusted.good()))
        assert pki.listing("trusted") == [] and pki.listing("rejected") == []
        now = datetime.now(UTC)
        crl = make_crl(ca, ca_key, next_update=now + timedelta(days=7), last_update=now, revoke=server_cert)
        (pki.folder("issuers") / "plant-ca.crl").write_bytes(crl)
        refused = Recorder(8.0)
        async with running(make_source(server.endpoint, pki), refused):
            await refused.wait_until(lambda: bool(refused.errors()))
        assert f"certificate {thumbprint(server_cert)} was revoked on" in refused.errors()[0]
        assert not refused.good()
        assert pki.listing("rejected") == []  # never offered for `cellgate pki trust`


def coater_events_device(endpoint: str, *, password: str) -> OpcUaDevice:
    """config/demo.yaml's coater-01 (its roll event reads and acks Coater01.Result.*) on a secure channel."""
    demo = load_plant(DEMO_CONFIG).device("coater-01")
    assert isinstance(demo, OpcUaDevice) and demo.events
    return demo.model_copy(update={
        "endpoint": endpoint, "security": OpcUaSecurity(), "username": USER, "password": SecretStr(password),
    })  # fmt: skip


async def test_event_link_uses_the_devices_security_identity_and_trust(
    secure_server: OpcUaSimulatorServer, server_pki: Path, tmp_path: Path
) -> None:
    """The events' own session is built by the same assembly as the source: channel, trust list, user login."""
    device = coater_events_device(secure_server.endpoint, password=PASSWORD)
    events = planned_events(device)
    pki_root = tmp_path / "state-pki"
    link = event_link(device, events, gateway_id="gw-test", pki_root=pki_root)
    with pytest.raises(EventLinkError) as untrusted:
        await link.connect()
    pki = Pki(pki_root, uri=application_uri("gw-test"))
    [rejected] = pki.listing("rejected")
    assert f"cellgate pki trust {rejected.thumbprint}" in str(untrusted.value)
    pki.trust(rejected.thumbprint)
    await link.connect()  # the simulator offers no SecurityPolicy None endpoint: this session is secure
    try:
        readings = await link.read(("result/record_id",))
    finally:
        await link.close()
    assert readings["result/record_id"].quality is Quality.GOOD


async def test_event_link_wrong_password_is_one_line_per_attempt_with_backoff(
    secure_server: OpcUaSimulatorServer, server_pki: Path, tmp_path: Path
) -> None:
    device = coater_events_device(secure_server.endpoint, password="wrong-" + PASSWORD)
    events = planned_events(device)
    pki_root = tmp_path / "state-pki"
    trust_server(Pki(pki_root, uri=application_uri("gw-test")), server_pki)

    async def publish(record: EventRecord) -> asyncio.Future[Delivery]:
        raise AssertionError(f"nothing can be read with a wrong password: {record}")

    runner = EventRunner(device=device.name, events=events, publish=publish, interval_s=0.1,
                         link=event_link(device, events, gateway_id="gw-test", pki_root=pki_root),
                         reconnect_min_s=0.1, reconnect_max_s=0.3)  # fmt: skip
    with capture_logs() as logs:
        task = asyncio.create_task(runner.run())
        try:
            async with asyncio.timeout(20):
                while len([line for line in logs if line["event"] == "events_login_refused"]) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    refused = [line for line in logs if line["event"] == "events_login_refused"]
    assert [line["attempt"] for line in refused[:3]] == [1, 2, 3]
    assert all(f"refused the login (user {USER}): BadUserAccessDenied" in str(line["error"]) for line in refused)
    assert all(0 < float(line["retry_in_s"]) <= 0.3 * 1.5 for line in refused)  # type: ignore[arg-type]
    assert not [line for line in logs if line["event"] == "events_link_down"]  # one line per attempt, not two
    assert PASSWORD not in repr(logs)
