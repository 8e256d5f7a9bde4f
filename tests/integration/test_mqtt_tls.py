"""mqtts:// against a real mosquitto TLS listener, with a private CA generated for this module.

One broker with a TLS listener and one that also requires a client certificate (mTLS), both on free
ports; every test publishes under its own topic prefix. The listeners are TLS only, so any message
that arrives went over TLS.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.assembly import mqtt_options_for
from gateway.errors import SinkError
from gateway.mqtt.connection import MqttSink
from gateway.mqtt.options import MqttOptions
from gateway.tagmap import load_plant_from_text
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sink import OFFLINE, ONLINE, sink_options
from tests.support.tls import TestPki, make_test_pki

# Failure cases: the first connect attempt fails within milliseconds on 127.0.0.1; this is the margin.
REFUSED_WAIT_S = 1.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: TestPki) -> Iterator[Mosquitto]:
    with Mosquitto(tls=pki.listener()) as running:
        yield running


@pytest.fixture(scope="module")
def mtls_broker(pki: TestPki) -> Iterator[Mosquitto]:
    with Mosquitto(tls=pki.listener(require_certificate=True)) as running:
        yield running




async def publish_one_and_check_received(sink: MqttSink, sub: Subscriber, topic: str, payload: bytes) -> None:
    await sink.wait_connected(5)
    await sink.publish(topic, payload)
    assert await sink.flush(5)
    assert (sink.delivered, sink.failed, sink.unacked()) == (1, 0, [])
    messages = await sub.wait_for(lambda msgs: any(m.topic == topic for m in msgs))
    assert [(m.payload, m.qos) for m in messages if m.topic == topic] == [(payload, 1)]


async def assert_never_connects(options: MqttOptions, error: str) -> None:
    """The sink keeps retrying without crashing, reports ``error`` and keeps a QoS1 message for the spool."""
    topic = f"{options.will_topic.rsplit('/', 2)[0]}/data/t"
    async with MqttSink(options) as sink:
        with pytest.raises(SinkError, match=error) as raised:
            await sink.wait_connected(REFUSED_WAIT_S)
        assert f"{options.host}:{options.port}" in str(raised.value)
        assert not sink.connected
        await sink.publish(topic, b"kept")  # queued while disconnected, as with a broker that is down
        await sink.close(0.2)
        assert (sink.delivered, sink.unacked()) == (0, [(topic, b"kept")])


# ------------------------------------------------------------------------------ server verification


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # IP SAN and DNS SAN
async def test_sink_trusting_our_ca_delivers_qos1_over_tls(
    tls_broker: Mosquitto, pki: TestPki, prefix: str, host: str
) -> None:
    assert tls_broker.url.startswith("mqtts://")
    with Subscriber(tls_broker.host, tls_broker.port, f"{prefix}/#", tls=pki.client()) as sub:
        async with MqttSink(make_options(tls_broker, prefix, host=host, ca_file=str(pki.ca_cert))) as sink:
            await publish_one_and_check_received(sink, sub, f"{prefix}/data/voltage", b'{"v":3.71}')
        # The availability status went over the same TLS connection: online on connect, offline on close.
        status = f"{prefix}/_gateway/status"
        await sub.wait_for(lambda msgs: [m.payload for m in msgs if m.topic == status] == [ONLINE, OFFLINE])


async def test_system_cas_reject_our_broker_and_the_sink_says_why(tls_broker: Mosquitto, prefix: str) -> None:
    options = make_options(tls_broker, prefix)  # tls, ca_file None: the system CA store only
    await assert_never_connects(options, r"certificate verify failed: self[- ]signed certificate in certificate chain")


async def test_certificate_for_another_host_is_rejected(tmp_path: Path, prefix: str) -> None:
    # Signed by a CA we trust, but its only SAN is another address: hostname checking must refuse it.
    other = make_test_pki(tmp_path, server_hosts=("192.0.2.7",))
    with Mosquitto(tls=other.listener()) as broker:
        options = make_options(broker, prefix, ca_file=str(other.ca_cert))
        await assert_never_connects(options, r"certificate verify failed: IP address mismatch")


async def test_plain_mqtt_client_cannot_use_the_tls_listener(tls_broker: Mosquitto, prefix: str) -> None:
    # Proves the listener is TLS only, so the deliveries above really were encrypted.
    await assert_never_connects(make_options(tls_broker, prefix, tls=False), r"last error: connection lost")


# ---------------------------------------------------------------------------------------------- mTLS


async def test_mtls_with_client_certificate_delivers(mtls_broker: Mosquitto, pki: TestPki, prefix: str) -> None:
    options = make_options(
        mtls_broker,
        prefix,
        ca_file=str(pki.ca_cert),
        cert_file=str(pki.client_cert),
        key_file=str(pki.client_key),
    )
    with Subscriber(mtls_broker.host, mtls_broker.port, f"{prefix}/#", tls=pki.client(with_certificate=True)) as sub:
        async with MqttSink(options) as sink:
            await publish_one_and_check_received(sink, sub, f"{prefix}/data/current", b'{"v":-1.5}')
    assert f"as {options.client_id} " in mtls_broker.log_text()


async def test_mtls_without_client_certificate_is_refused(mtls_broker: Mosquitto, pki: TestPki, prefix: str) -> None:
    # TLS 1.3: our side of the handshake completes and the broker's alert arrives on the first read,
    # so this comes through the "lost before CONNACK" path, not on_connect_fail.
    options = make_options(mtls_broker, prefix, ca_file=str(pki.ca_cert))
    await assert_never_connects(options, r"(?i)lost before CONNACK: .*certificate required")


async def test_mtls_with_certificate_from_another_ca_is_refused(
    mtls_broker: Mosquitto, pki: TestPki, tmp_path: Path, prefix: str
) -> None:
    stranger = make_test_pki(tmp_path)
    options = make_options(
        mtls_broker,
        prefix,
        ca_file=str(pki.ca_cert),
        cert_file=str(stranger.client_cert),
        key_file=str(stranger.client_key),
    )
    await assert_never_connects(options, r"(?i)lost before CONNACK: .*unknown ca")


# ------------------------------------------------------------------------------------------ assembly


async def test_tag_map_mqtts_url_and_files_reach_the_sink(mtls_broker: Mosquitto, pki: TestPki, prefix: str) -> None:
    text = f"""\
gateway: {{id: gw-tls, enterprise: acme, site: dunkirk}}
mqtt:
  url: mqtts://127.0.0.1:{mtls_broker.port}
  ca_file: {pki.ca_cert}
  cert_file: {pki.client_cert}
  key_file: {pki.client_key}
devices:
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    tags:
      - {{name: voltage, address: 0, type: float32, unit: V}}
"""
    plant = load_plant_from_text(text, filename="tagmap.yaml", environ={})
    options = mqtt_options_for(
        plant, will_topic=f"{prefix}/_gateway/status", will_payload=OFFLINE, online_payload=ONLINE
    )
    assert (options.tls, options.host, options.port) == (True, "127.0.0.1", mtls_broker.port)
    assert (options.ca_file, options.cert_file, options.key_file) == (
        str(pki.ca_cert),
        str(pki.client_cert),
        str(pki.client_key),
    )
    # And the mapped options really open an mTLS connection.
    fast = dataclasses.replace(options, client_id=f"cg-{uuid.uuid4().hex[:8]}", reconnect_min_s=0.1)
    with Subscriber(mtls_broker.host, mtls_broker.port, f"{prefix}/#", tls=pki.client(with_certificate=True)) as sub:
        async with MqttSink(fast) as sink:
            await publish_one_and_check_received(sink, sub, f"{prefix}/data/voltage", b"3.7")


def make_options(broker: Mosquitto, prefix: str, **overrides: Any) -> MqttOptions:
    """Sink options for the TLS listener: TLS on unless a test turns it off."""
    return sink_options(broker, prefix, **{"tls": True, **overrides})
