"""Poison messages (issue 10 item 7, the part without ``mqtt.max_packet_size``): a message the broker hangs up on at
every connect is found by the client itself, refused as ``broker_closed_connection`` (``on_refused``, counted, logged
once) and the others flow; a broker that restarts or takes the client id over with messages in flight is not taken
for one. The rule: gateway/mqtt/connection.py, module docstring, "Poison messages"."""

from __future__ import annotations

import asyncio

import structlog

from gateway.mqtt.connection import MqttSink
from gateway.mqtt.wire import Disconnect, ProtocolVersion, Publish, encode_disconnect
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.mqtt_broker import ScriptedBroker, options, wait_until
from tests.support.sink import sink_options

BROKER_MAX_PACKET = 1000
BIG = b"m" * 2000  # a PUBLISH of about 2 kB: over the broker's limit
MID = b"n" * 1500  # also over it, smaller than BIG
HUGE = b"h" * 3000
Refusal = tuple[str, bytes, str, int | None]


def connections(broker: Mosquitto, client_id: str) -> int:
    """How many times ``client_id`` connected to ``broker``, from its log."""
    return sum(" as " + client_id + " " in line for line in broker.log_text().splitlines())


async def test_a_311_broker_hanging_up_on_an_oversize_meta_gets_it_refused_after_three_closes(prefix: str) -> None:
    """Issue 10 item 7 recipe: MQTT 3.1.1, a broker ``max_packet_size`` smaller than the retained ``_meta``, and no
    ``mqtt.max_packet_size``: the gateway reconnected about once a second forever and published nothing (34
    connects in 12 s, 0 data). Now the broker's third close in a row with the ``_meta`` the largest message sent and
    unacknowledged makes it refused (``broker_closed_connection``, once to ``on_refused``, one log line saying
    ``mqtt.max_packet_size`` would avoid it); the data flows on the fourth connection, which stays. A smaller
    message passing then sets an inferred limit: a second oversize ``_meta`` (smaller than the first) is refused at
    its first close (the broker is known to hang up on size), and a later oversize message is refused before
    sending (``packet_too_large``), without another reconnect."""
    refused: list[Refusal] = []
    with (
        structlog.testing.capture_logs() as logs,
        Mosquitto(extra_config=[f"max_packet_size {BROKER_MAX_PACKET}"]) as broker,
        Subscriber(broker.host, broker.port, f"{prefix}/#") as sub,
    ):
        options_311 = sink_options(broker, prefix, protocol="3.1.1")
        async with MqttSink(options_311, on_refused=lambda *args: refused.append(args)) as sink:
            sink.set_retained(f"{prefix}/cell/_meta", BIG)  # a large device's _meta, sent at every connect
            sink.set_retained(f"{prefix}/cell/_status", b'{"connected":true}')
            sink.set_retained(f"{prefix}/cell2/_meta", MID)
            await sink.publish_many([(f"{prefix}/t/{n}", b"%d" % n) for n in range(5)])
            assert await sink.flush(30)
            await sub.wait_for(lambda msgs: {m.payload for m in msgs if "/t/" in m.topic} >= {b"0", b"4"}, 10)
            await wait_until(lambda: sink.refused_by_reason == {"broker_closed_connection": 2})
            # three closes for the first, one for the second, then one that stays
            assert connections(broker, options_311.client_id) == 5
            await sink.publish(f"{prefix}/t/later-big", HUGE)  # over the inferred limit: never sent
            await sink.publish(f"{prefix}/t/5", b"5")
            assert await sink.flush(10)
            await sub.wait_for(lambda msgs: any(m.payload == b"5" for m in msgs), 10)
            assert sink.connected
            assert sink.refused_by_reason == {"broker_closed_connection": 2, "packet_too_large": 1}
            assert (sink.delivered, sink.failed) == (6, 1)
        assert connections(broker, options_311.client_id) == 5
    assert refused == [
        (f"{prefix}/cell/_meta", BIG, "broker_closed_connection", None),
        (f"{prefix}/cell2/_meta", MID, "broker_closed_connection", None),
        (f"{prefix}/t/later-big", HUGE, "packet_too_large", None),
    ]
    assert {m.payload for m in sub.messages if "/t/" in m.topic} == {b"%d" % n for n in range(6)}
    assert not [m for m in sub.messages if m.topic.endswith("/_meta")]
    assert [m.payload for m in sub.messages if m.topic.endswith("/_status")]  # the other retained still goes
    lines = [entry for entry in logs if entry["event"] == "mqtt_message_refused"]
    assert [entry["reason"] for entry in lines] == ["broker_closed_connection", "packet_too_large"]
    poison_line = lines[0]
    assert poison_line["topic"] == f"{prefix}/cell/_meta"
    assert poison_line["packet_bytes"] > len(BIG)
    assert "mqtt.max_packet_size" in poison_line["hint"]
    inferred = [entry for entry in logs if entry["event"] == "mqtt_packet_limit_inferred"]
    first, second = (entry["max_packet_size"] for entry in inferred)
    assert first == poison_line["packet_bytes"] - 1
    assert len(MID) < second < first  # lowered to just below the second oversize _meta


async def test_a_311_broker_restarted_three_times_with_messages_in_flight_refuses_nothing(prefix: str) -> None:
    """False positive, on real Mosquitto: the broker killed and started again three times, each time soon after the
    gateway connected, with data and a large retained ``_meta`` in flight. Between the restarts the connect
    attempts are refused, so no streak of closes builds up: nothing is refused, everything is delivered."""
    refused: list[Refusal] = []
    with Mosquitto() as broker:
        options_311 = sink_options(broker, prefix, protocol="3.1.1")
        async with MqttSink(options_311, on_refused=lambda *args: refused.append(args)) as sink:
            sink.set_retained(f"{prefix}/cell/_meta", BIG)
            await sink.wait_connected(10)
            sent = 0
            for _ in range(3):
                broker.pause()  # what is sent now stays unacknowledged until the broker dies
                batch = [(f"{prefix}/t/{sent + n}", BIG) for n in range(20)]
                await sink.publish_many(batch)
                sink.set_retained(f"{prefix}/cell/_meta", BIG + b"%d" % sent)
                sent += len(batch)
                await asyncio.sleep(0.1)
                broker.restart(kill=True)
                await sink.wait_connected(10)
            assert await sink.flush(20)
            assert sink.connected
    assert refused == []
    assert sink.refused_by_reason == {}
    assert (sink.delivered, sink.failed) == (sent, 0)


async def test_the_same_message_unacknowledged_at_each_close_is_refused_and_the_rest_goes_on() -> None:
    """The rule on a scripted broker that never acknowledges one message and hangs up right after it, three times:
    the third close refuses it; the fourth connection delivers the rest. A failed connect attempt (a restarting
    broker) or a client-id takeover (MQTT 5 DISCONNECT "Session taken over") in between starts the count again."""

    def hold_poison(publish: Publish) -> int | None:
        return None if publish.payload == BIG else 0

    refused: list[Refusal] = []
    async with (
        ScriptedBroker(ack=hold_poison) as broker,
        MqttSink(options(broker), on_refused=lambda *args: refused.append(args)) as sink,
    ):
        await sink.wait_connected(5)

        async def close_after_poison(close: object) -> None:
            seen = len(broker.connections)
            await wait_until(lambda: any(p.payload == BIG for p in broker.publishes()))
            assert callable(close)
            close()
            await wait_until(lambda: len(broker.connections) > seen and bool(broker.publishes()))

        await sink.publish("edge/poison", BIG)
        await sink.publish("edge/data/1", b"1")
        # A close, then a broker restart (its close and a refused connect attempt): the streak starts again.
        await close_after_poison(broker.drop_connections)
        broker.close_at_accept = True
        seen = len(broker.connections)
        broker.drop_connections()
        await wait_until(lambda: len(broker.connections) > seen)  # the refused attempt
        broker.close_at_accept = False
        await wait_until(lambda: any(p.payload == BIG for p in broker.publishes()))
        await close_after_poison(broker.drop_connections)
        await close_after_poison(broker.drop_connections)
        # Session taken over (another client with our id): not about a message, the streak starts again.
        takeover = encode_disconnect(Disconnect(reason_code=0x8E), ProtocolVersion.V5)
        await close_after_poison(lambda: broker.send_and_close(takeover))
        assert refused == []
        # Three plain closes in a row right after it: poison.
        await close_after_poison(broker.drop_connections)
        await close_after_poison(broker.drop_connections)
        await close_after_poison(broker.drop_connections)
        await wait_until(lambda: bool(refused))
        await sink.publish("edge/data/2", b"2")
        assert await sink.flush(5)
        assert sink.refused_by_reason == {"broker_closed_connection": 1}
        assert (sink.delivered, sink.failed) == (2, 1)
    assert refused == [("edge/poison", BIG, "broker_closed_connection", None)]
