"""The MQTT client on uvloop (``gateway.event_loop: auto`` takes it when installed) against a real Mosquitto.

The rest of the MQTT tests run on pytest-asyncio's stock loop; these run the same client on uvloop, whose
transports are its own C classes: the BufferedProtocol reads (plain TCP and TLS), the PUBACK rounds of a
Receive Maximum of 20 with the slot hold timer, and a broker restart with the resend of what was in flight.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from gateway.event_loop import running_loop_name
from gateway.mqtt.connection import MqttSink
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sink import OFFLINE, ONLINE, sink_options
from tests.support.tls import TestPki, make_test_pki

TOPICS = 50
PER_TOPIC = 40  # 2,000 messages: 100 rounds of a window of 20


def on_uvloop(main: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def numbered(prefix: str, first: int, count: int) -> list[tuple[str, bytes]]:
    """``count`` messages per topic, round robin over the topics, payload = the per-topic number."""
    return [(f"{prefix}/data/t{t:02d}", str(n).encode()) for n in range(first, first + count) for t in range(TOPICS)]


def assert_in_order_without_holes(sub: Subscriber, prefix: str, count: int) -> None:
    for t in range(TOPICS):
        # First arrivals: a broker restart may deliver a message to the subscriber again (its QoS 1 session).
        numbers = list(dict.fromkeys(int(m.payload) for m in sub.on(f"{prefix}/data/t{t:02d}")))
        assert numbers == list(range(count)), f"t{t:02d}: missing or out of order"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def prefix() -> str:
    return f"uv{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tls_broker(pki: TestPki) -> Iterator[Mosquitto]:
    # max_inflight_messages 20 is Mosquitto's default, said out loud: it is the Receive Maximum it announces.
    with Mosquitto(tls=pki.listener(), extra_config=["max_inflight_messages 20"]) as running:
        yield running


def test_qos1_over_tls_on_uvloop_through_a_receive_maximum_of_20(
    tls_broker: Mosquitto, pki: TestPki, prefix: str
) -> None:
    messages = numbered(prefix, 0, PER_TOPIC)

    async def main() -> None:
        assert running_loop_name(asyncio.get_running_loop()) == "uvloop"
        options = sink_options(tls_broker, prefix, tls=True, ca_file=str(pki.ca_cert), max_inflight=1000)
        async with MqttSink(options) as sink:
            await sink.wait_connected(10)
            for start in range(0, len(messages), 100):
                await sink.publish_many(messages[start : start + 100])
                assert sink.in_flight <= 20  # the broker's Receive Maximum caps the window
            assert await sink.flush(30)
            assert (sink.delivered, sink.failed, sink.unacked()) == (len(messages), 0, [])
            await sub.wait_for(lambda got: len(got) >= len(messages) + 1, 30)
        status = f"{prefix}/_gateway/status"
        await sub.wait_for(lambda got: [m.payload for m in got if m.topic == status] == [ONLINE, OFFLINE])

    with Subscriber(tls_broker.host, tls_broker.port, f"{prefix}/#", tls=pki.client()) as sub:
        on_uvloop(main())
    assert_in_order_without_holes(sub, prefix, PER_TOPIC)


def test_a_broker_restart_on_uvloop_resends_what_was_in_flight(prefix: str) -> None:
    before, after = numbered(prefix, 0, 10), numbered(prefix, 10, 10)

    async def main() -> None:
        async with MqttSink(sink_options(broker, prefix, max_inflight=20)) as sink:
            await sink.wait_connected(10)
            await sink.publish_many(before)
            assert await sink.flush(20)
            broker.pause()  # a hung broker: the next messages stay unacknowledged in the window
            await sink.publish_many(after[:20])
            assert sink.in_flight == 20
            broker.resume()
            await asyncio.to_thread(broker.restart)  # SIGTERM: the broker saves the subscriber's session
            await sink.publish_many(after[20:])  # waits for the reconnect, then for slots
            assert await sink.flush(30)
            assert (sink.delivered, sink.failed, sink.unacked()) == (len(before) + len(after), 0, [])

    # A persistent broker and subscriber session: what arrives while the subscriber reconnects is kept for it.
    broker = Mosquitto(persistence=True)
    with broker, Subscriber(broker.host, broker.port, f"{prefix}/#", session=True, client_id=f"sub-{prefix}") as sub:
        on_uvloop(main())
        wanted = {(topic, payload) for topic, payload in before + after}
        sub.wait_for_blocking(lambda got: wanted <= {(m.topic, m.payload) for m in got}, 30)
    assert_in_order_without_holes(sub, prefix, 20)
