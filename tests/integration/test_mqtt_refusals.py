"""Messages a real Mosquitto will never take are refused once, through ``on_refused``, and never block the
others (issue 10 item 7, the client side): too large for the broker's ``max_packet_size`` (MQTT 3.1.1,
which cannot announce it, and MQTT 5, which does), and refused by an ACL (MQTT 5 PUBACK 0x87)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from gateway.mqtt.connection import MqttSink
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sink import sink_options

BROKER_MAX_PACKET = 1000
BIG = b"x" * 2000  # a PUBLISH of about 2 kB: over the broker's limit
Refusal = tuple[str, bytes, str, int | None]


def connections(broker: Mosquitto, client_id: str) -> int:
    """How many times ``client_id`` connected to ``broker``, from its log."""
    return sum(" as " + client_id + " " in line for line in broker.log_text().splitlines())


async def test_a_311_broker_max_packet_size_refuses_the_big_message_and_the_others_flow(prefix: str) -> None:
    """Issue 10 item 7 recipe: MQTT 3.1.1 and a broker ``max_packet_size`` smaller than one message (the
    retained ``_meta`` there): the gateway reconnected about once a second forever and published nothing,
    since the oversize message went first at every connect. With ``mqtt.max_packet_size`` the sink refuses
    it (``on_refused``, ``packet_too_large``) and keeps the one connection and the others flowing."""
    refused: list[Refusal] = []
    acks: list[int] = []
    with Mosquitto(extra_config=[f"max_packet_size {BROKER_MAX_PACKET}"]) as broker:
        with Subscriber(broker.host, broker.port, f"{prefix}/#") as sub:
            options = sink_options(broker, prefix, protocol="3.1.1", max_packet_size=BROKER_MAX_PACKET)
            async with MqttSink(
                options,
                on_refused=lambda *args: refused.append(args),
                on_ack=acks.append,
            ) as sink:
                sink.set_retained(f"{prefix}/cell/_meta", BIG)  # a large device's _meta
                await sink.wait_connected(5)
                await sink.publish_many([(f"{prefix}/t/{n}", b"%d" % n) for n in range(3)])
                await sink.publish(f"{prefix}/t/big", BIG)
                await sink.publish_many([(f"{prefix}/t/{n}", b"%d" % n) for n in range(3, 6)])
                assert sink.try_publish(f"{prefix}/t/replayed-big", BIG, 41)
                assert await sink.flush(5)
                await sub.wait_for(lambda msgs: len([m for m in msgs if "/t/" in m.topic]) >= 6)
                # A reconnect does not bring the refused _meta back.
                broker.restart()
                await sink.wait_connected(10)
                await sub.wait_for(lambda msgs: sum(m.topic.endswith("_gateway/status") for m in msgs) >= 2, 10)
                assert sink.refused_by_reason == {"packet_too_large": 3}
                assert (sink.delivered, sink.failed) == (6, 2)
        assert connections(broker, options.client_id) == 2  # before and after the restart: no reconnect loop
    assert sorted(refused) == sorted(
        [
            (f"{prefix}/cell/_meta", BIG, "packet_too_large", None),
            (f"{prefix}/t/big", BIG, "packet_too_large", None),
            (f"{prefix}/t/replayed-big", BIG, "packet_too_large", 41),
        ]
    )
    assert acks == []  # refused, so reported to on_refused (with its handle, 41) only
    assert [m.payload for m in sub.messages if "/t/" in m.topic] == [b"%d" % n for n in range(6)]


async def test_an_mqtt5_broker_announces_its_max_packet_size_and_the_big_message_is_refused(prefix: str) -> None:
    """Issue 10 item 7: the broker's Maximum Packet Size from the MQTT 5 CONNACK is the limit when the
    tag map gives none; the big message is refused here, the next one is delivered on the same link."""
    refused: list[Refusal] = []
    with Mosquitto(extra_config=[f"max_packet_size {BROKER_MAX_PACKET}"]) as broker:
        with Subscriber(broker.host, broker.port, f"{prefix}/t/#") as sub:
            async with MqttSink(sink_options(broker, prefix), on_refused=lambda *args: refused.append(args)) as sink:
                await sink.wait_connected(5)
                await sink.publish(f"{prefix}/t/big", BIG)
                await sink.publish(f"{prefix}/t/small", b"ok")
                assert await sink.flush(5)
                await sub.wait_for(lambda msgs: len(msgs) >= 1)
                assert sink.connected
        assert connections(broker, sink_options(broker, prefix).client_id) == 1
    assert refused == [(f"{prefix}/t/big", BIG, "packet_too_large", None)]
    assert [m.topic for m in sub.messages] == [f"{prefix}/t/small"]


async def test_an_acl_refusing_one_topic_under_mqtt5_is_refused_and_the_others_delivered(
    prefix: str, tmp_path: Path
) -> None:
    """Issue 10 item 7 recipe: with MQTT 5 a PUBACK >= 0x80 ("Not authorized") dropped the message
    silently (counted, nowhere else). Now it goes to ``on_refused`` with reason ``not_authorized``,
    logged once for the reason, and the other topics are delivered."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic read {prefix}/#\ntopic write {prefix}/ok/#\ntopic write {prefix}/_gateway/#\n")
    refused: list[Refusal] = []
    with (
        structlog.testing.capture_logs() as logs,
        Mosquitto(extra_config=[f"acl_file {acl}"]) as broker,
        Subscriber(broker.host, broker.port, f"{prefix}/#") as sub,
    ):
        options = sink_options(broker, prefix)
        async with MqttSink(options, on_refused=lambda *args: refused.append(args)) as sink:
            await sink.wait_connected(5)
            await sink.publish_many(
                [
                    (f"{prefix}/ok/1", b"1"),
                    (f"{prefix}/secret/1", b"s1"),
                    (f"{prefix}/ok/2", b"2"),
                    (f"{prefix}/secret/2", b"s2"),
                    (f"{prefix}/ok/3", b"3"),
                ]
            )
            assert await sink.flush(5)
            await sub.wait_for(lambda msgs: len([m for m in msgs if "/ok/" in m.topic]) >= 3)
            await asyncio.sleep(0.2)
            assert sink.refused_by_reason == {"not_authorized": 2}
            assert (sink.delivered, sink.failed, sink.connected) == (3, 2, True)
    assert refused == [
        (f"{prefix}/secret/1", b"s1", "not_authorized", None),
        (f"{prefix}/secret/2", b"s2", "not_authorized", None),
    ]
    assert not [m for m in sub.messages if "/secret/" in m.topic]
    assert [entry["reason"] for entry in logs if entry["event"] == "mqtt_message_refused"] == ["not_authorized"]
