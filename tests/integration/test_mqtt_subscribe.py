"""MqttSink subscriptions against a real mosquitto: commands published by paho reach ``on_message`` at QoS 0
and 1, and the subscription is made again after the broker restarts (every connection is a clean session)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import paho.mqtt.publish as paho_publish
import pytest

from gateway.mqtt.connection import MqttSink
from tests.support.mosquitto import Mosquitto, Subscriber, retained_snapshot
from tests.support.sink import sink_options


@pytest.fixture
def own_broker() -> Iterator[Mosquitto]:
    with Mosquitto() as running:
        yield running


async def publish_until_received(
    broker: Mosquitto, topic: str, payload: bytes, qos: int, received: list[tuple[str, bytes]]
) -> None:
    """Publish with paho until the sink has the message: the SUBACK has no public signal to wait for."""
    deadline = time.monotonic() + 10
    while (topic, payload) not in received:
        assert time.monotonic() < deadline, f"{topic} never arrived; got {received}"
        await asyncio.to_thread(paho_publish.single, topic, payload, qos=qos, hostname=broker.host, port=broker.port)
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_commands_reach_on_message_at_qos0_and_qos1_and_after_a_restart(
    own_broker: Mosquitto, prefix: str, protocol: str
) -> None:
    received: list[tuple[str, bytes]] = []
    options = sink_options(
        own_broker,
        prefix,
        protocol=protocol,
        subscriptions=((f"{prefix}/cmd/#", 1),),
        on_message=lambda topic, payload: received.append((topic, payload)),
    )
    async with MqttSink(options) as sink:
        await sink.wait_connected(5)
        await publish_until_received(own_broker, f"{prefix}/cmd/a", b"qos1", 1, received)
        await publish_until_received(own_broker, f"{prefix}/cmd/b", b"qos0", 0, received)
        assert all(topic.startswith(f"{prefix}/cmd/") for topic, _ in received)
        # Still publishing as before alongside the subscription.
        await sink.publish(f"{prefix}/data/x", b"1")
        assert await sink.flush(5)
        assert sink.delivered >= 1

        own_broker.restart()
        await sink.wait_connected(10)
        await publish_until_received(own_broker, f"{prefix}/cmd/c", b"after restart", 1, received)


async def test_a_will_made_for_every_connect_and_not_retained(own_broker: Mosquitto, prefix: str) -> None:
    """Sparkplug's NDEATH carries the bdSeq of its CONNECT: a callable will is called for every CONNECT, the
    broker sends the one of the connection it lost (here: taken over by a client with the same id), and
    ``close`` publishes the last one, none of them retained (``will_retain=False``)."""
    connects: list[int] = []

    def will() -> bytes:
        connects.append(len(connects) + 1)
        return f"will-{connects[-1]}".encode()

    will_topic = f"{prefix}/NDEATH"
    options = sink_options(own_broker, prefix, will_topic=will_topic, will_payload=will, will_retain=False,
                           online_payload=None)
    with Subscriber(own_broker.host, own_broker.port, will_topic) as sub:
        async with MqttSink(options) as sink:
            await sink.wait_connected(5)
            # Another client with our id takes the session over: the broker publishes our first will.
            await asyncio.to_thread(
                paho_publish.single, f"{prefix}/x", b"", hostname=own_broker.host, port=own_broker.port,
                client_id=options.client_id,
            )
            deadline = time.monotonic() + 10
            while not sub.messages or len(connects) < 2 or not sink.connected:
                assert time.monotonic() < deadline, f"no will or no reconnect: {sub.messages} {connects}"
                await asyncio.sleep(0.02)
        # close() publishes the will of the last CONNECT; the subscriber gets it a moment later.
        last_will = f"will-{len(connects)}".encode()
        messages = await sub.wait_for(lambda got: bool(got) and got[-1].payload == last_will, timeout_s=5)
        payloads = [m.payload for m in messages]
        assert payloads[0] == b"will-1"
        assert payloads.count(last_will) == 1
        assert not any(m.retain for m in sub.messages)
    assert await retained_snapshot(own_broker.host, own_broker.port, will_topic) == {}
