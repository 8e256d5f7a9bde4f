"""MqttSink's own MQTT client where Mosquitto cannot be made to misbehave on cue.

A scripted broker (tests/support/mqtt_broker.py: real sockets on 127.0.0.1, packets via
gateway.mqtt.wire) decides per message whether and how to acknowledge, can advertise MQTT 5
limits, ignore PINGREQ or drop the link, and records every packet it receives per connection.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.backoff import MqttBackoff, Streak
from gateway.errors import SinkError
from gateway.mqtt.connection import MqttSink
from gateway.mqtt.wire import (
    Connack,
    Connect,
    Disconnect,
    PingReq,
    Property,
    ProtocolVersion,
    Publish,
)
from tests.support.mqtt_broker import (
    OFFLINE,
    ONLINE,
    SILENT,
    ScriptedBroker,
    ack_all,
    data,
    options,
    running,
    wait_until,
)

# ------------------------------------------------------------------------------------ windows


async def test_the_brokers_receive_maximum_bounds_everything_unacknowledged() -> None:
    connack = Connack(properties=((Property.RECEIVE_MAXIMUM, 3),))
    async with ScriptedBroker(connack=connack, ack=lambda p: None) as broker, running(broker, max_inflight=20) as sink:
        task = asyncio.create_task(sink.publish_many([data(n) for n in range(10)]))
        await wait_until(lambda: sink.in_flight == 3)
        await asyncio.sleep(0.1)
        # window = min(max_inflight 20, Receive Maximum 3); the online status takes one of the three
        # sends, so one data message waits in memory until a PUBACK comes.
        assert not task.done()
        assert len(broker.publishes()) == 3
        while not task.done():
            broker.release_held()
            await asyncio.sleep(0.02)
        broker.ack = ack_all
        broker.release_held()
        assert await sink.flush(5)
        assert sink.delivered == 10
    assert broker.max_outstanding == 3
    topics = [p.topic for p in broker.publishes(0) if not p.retain]
    assert topics == [f"edge/data/t{n}" for n in range(10)]


async def test_unacknowledged_messages_are_resent_after_a_reconnect_in_order_without_dup() -> None:
    """Clean Start 1 makes every connection a new session: a resend is a first delivery there, so DUP
    is 0 [MQTT-3.3.1-1], [MQTT-4.4.0-1] (issue 10 item 8: "unacknowledged messages are resent with DUP
    on a new clean session")."""
    async with ScriptedBroker(ack=lambda p: 0 if p.retain else None) as broker, running(broker) as sink:
        await sink.publish_many([data(n) for n in range(3)])
        await wait_until(lambda: len([p for p in broker.publishes(0) if not p.retain]) == 3)
        first = [p for p in broker.publishes(0) if not p.retain]

        broker.drop_connections()
        await wait_until(lambda: not sink.connected)
        await sink.publish(*data(3))  # handed over while disconnected: goes after the three
        broker.ack = ack_all
        await sink.wait_connected(5)
        assert await sink.flush(5)
        assert (sink.published, sink.delivered, sink.failed, sink.unacked()) == (4, 4, 0, [])

    again = broker.publishes(1)
    resent = [p for p in again if not p.retain]
    assert [(p.topic, p.dup) for p in resent[:3]] == [(p.topic, False) for p in first]
    assert not any(p.dup for p in again if isinstance(p, Publish))
    assert [(p.topic, p.dup) for p in resent[3:]] == [("edge/data/t3", False)]
    status = [p for p in again if p.topic == "edge/_gateway/status"]
    assert [p.payload for p in status] == [ONLINE, OFFLINE]
    assert again.index(status[0]) > again.index(resent[2])  # resends first


async def test_a_refused_puback_counts_as_failed_and_is_reported_with_its_handle() -> None:
    acks: list[int] = []
    refused: list[tuple[str, str, int | None]] = []
    async with (
        ScriptedBroker(ack=lambda p: 0 if p.retain else 0x87) as broker,
        MqttSink(
            options(broker, max_inflight=2),
            on_ack=acks.append,
            on_refused=lambda topic, payload, reason, handle: refused.append((topic, reason, handle)),
        ) as sink,
    ):
        await sink.wait_connected(5)
        await sink.publish_many([data(n) for n in range(5)])  # slots come back on refusals too
        await wait_until(lambda: sink.try_publish(*data(99), 7))
        assert await sink.flush(5)
        assert (sink.published, sink.delivered, sink.failed, sink.in_flight) == (6, 0, 6, 0)
        assert sink.control_delivered == 1  # the online status
    assert acks == []  # a refused message is never acknowledged
    assert [handle for _, _, handle in refused] == [None] * 5 + [7]
    assert {reason for _, reason, _ in refused} == {"not_authorized"}


async def test_an_acknowledged_message_with_a_handle_is_reported_once_and_never_given_back() -> None:
    acks: list[int] = []
    async with ScriptedBroker() as broker, MqttSink(options(broker, max_inflight=4), on_ack=acks.append) as sink:
        await sink.wait_connected(5)
        assert sink.try_publish(*data(1), 11)
        assert sink.unacked() == []  # the caller tracks it, not the sink
        assert await sink.flush(5)
    assert acks == [11]


async def test_a_message_larger_than_the_brokers_maximum_packet_size_is_refused_here() -> None:
    connack = Connack(properties=((Property.MAXIMUM_PACKET_SIZE, 300),))
    async with ScriptedBroker(connack=connack) as broker, running(broker) as sink:
        await sink.publish("edge/data/big", b"x" * 1000)
        await sink.publish("edge/data/small", b"ok")
        assert await sink.flush(5)
        assert (sink.published, sink.delivered, sink.failed) == (2, 1, 1)
        assert sink.connected
    assert [p.topic for p in broker.publishes(0) if not p.retain] == ["edge/data/small"]


# --------------------------------------------------------------------------------- keep alive


async def test_a_broker_that_stops_answering_pings_is_dropped_and_reconnected() -> None:
    async with ScriptedBroker(answer_pings=False) as broker, running(broker, keepalive_s=1) as sink:
        started = time.monotonic()
        await wait_until(lambda: len(broker.connections) >= 2, timeout_s=6)
        # PINGREQ after 1 s without traffic, no PINGRESP within 1 s: dropped at about 2 s.
        assert 1.5 < time.monotonic() - started < 4.0
        assert any(isinstance(p, PingReq) for p in broker.connections[0])
        await sink.wait_connected(5)


async def test_the_wait_for_a_pingresp_is_bounded_by_the_puback_timeout() -> None:
    """Issue 10 item 2: a hung broker took 2 x keepalive_s to notice when idle. The PINGRESP wait is now
    min(keepalive_s, puback_timeout_s): PINGREQ after 2 s idle, dropped 0.5 s later (was 4 s)."""
    async with (
        ScriptedBroker(answer_pings=False) as broker,
        running(broker, keepalive_s=2, puback_timeout_s=0.5) as sink,
    ):
        started = time.monotonic()
        await wait_until(lambda: len(broker.connections) >= 2, timeout_s=6)
        assert 2.0 < time.monotonic() - started < 3.5
        await sink.wait_connected(5)


async def test_pings_keep_an_idle_link_and_the_server_keep_alive_wins() -> None:
    connack = Connack(properties=((Property.SERVER_KEEP_ALIVE, 1),))
    async with ScriptedBroker(connack=connack) as broker, running(broker, keepalive_s=30) as sink:
        await asyncio.sleep(2.6)
        assert sum(isinstance(p, PingReq) for p in broker.connections[0]) >= 2
        assert len(broker.connections) == 1 and sink.connected


# ----------------------------------------------------------------------------- connect and close


async def test_connect_carries_the_will_and_close_ends_with_offline_and_a_normal_disconnect() -> None:
    async with ScriptedBroker() as broker:
        async with running(broker, username="gw", password="pw", keepalive_s=17) as sink:
            await sink.publish(*data(1))
        packets = broker.connections[0]
    connect = packets[0]
    assert isinstance(connect, Connect)
    assert (connect.version, connect.client_id, connect.keepalive_s, connect.clean_start) == (
        ProtocolVersion.V5,
        "cg-edge",
        17,
        True,
    )
    assert (connect.username, connect.password) == ("gw", b"pw")
    assert connect.will is not None
    assert (connect.will.topic, connect.will.payload, connect.will.qos, connect.will.retain) == (
        "edge/_gateway/status",
        OFFLINE,
        1,
        True,
    )
    last_publish = [p for p in packets if isinstance(p, Publish)][-1]
    assert (last_publish.topic, last_publish.payload, last_publish.retain) == ("edge/_gateway/status", OFFLINE, True)
    assert packets[-1] == Disconnect()  # normal: the broker discards the will


async def test_no_connack_within_the_connect_timeout_is_reported() -> None:
    async with ScriptedBroker(connack=SILENT) as broker:
        async with MqttSink(options(broker, connect_timeout_s=0.3)) as sink:
            with pytest.raises(SinkError, match=r"last error: CONNACK to 127\.0\.0\.1:\d+ timed out after 0\.3 s"):
                await sink.wait_connected(1.0)
        assert len(broker.connections) >= 2  # it kept trying


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_a_refused_connack_gives_its_reason(protocol: str) -> None:
    reason = 0x87 if protocol == "5" else 5
    async with (
        ScriptedBroker(connack=Connack(reason_code=reason)) as broker,
        MqttSink(options(broker, protocol=protocol)) as sink,
    ):
        with pytest.raises(SinkError, match=r"CONNACK refused: (Not authorized \(0x87\)|not authorized \(5\))"):
            await sink.wait_connected(0.5)


async def test_offer_many_stops_at_a_full_window_after_wait_s_and_at_a_lost_link() -> None:
    async with ScriptedBroker(ack=lambda p: 0 if p.retain else None) as broker, running(broker, max_inflight=4) as sink:
        started = time.monotonic()
        assert await sink.offer_many([data(n) for n in range(10)], wait_s=0.2) == 4
        assert 0.15 < time.monotonic() - started < 1.5
        task = asyncio.create_task(sink.offer_many([data(n) for n in range(10, 20)], wait_s=30))
        await asyncio.sleep(0.1)
        broker.drop_connections()  # the link goes: the parked rest goes back to the caller at once
        assert await asyncio.wait_for(task, 2) == 0
        assert sink.unacked() == [data(n) for n in range(4)]
        broker.ack = ack_all  # the resends after the reconnect drain before close


# ------------------------------------------------------------------------------------- backoff


def test_reconnect_backoff_doubles_from_min_to_max_with_jitter() -> None:
    """The lowest draw grows too (half the ceiling), so repeated failures always slow the reconnects
    down (issue 10 item 5: a link that dies right after connecting must meet a growing backoff)."""

    def delay(failures: int, jitter: float) -> float:
        return MqttBackoff(min_s=0.5, max_s=10.0, streak=Streak()).delay_s(failures, 1.0 - jitter)

    assert [delay(n, 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]  # half the ceiling, >= min
    assert [delay(n, 0.999_999) for n in range(7)] == pytest.approx([1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0], rel=1e-5)
    assert delay(2, 0.5) == pytest.approx(3.0)  # halfway between 2 s and the ceiling of 4 s
    assert delay(1000, 0.7) <= 10.0


async def test_offer_many_with_wait_0_returns_at_once_with_what_fits() -> None:
    """Issue 10 item 2: once the window is stuck, the store-and-forward stage must spool at the rate data
    arrives, so ``offer_many(wait_s=0)`` takes what fits now and returns without waiting (not even one
    event-loop turn: the coroutine finishes on its first step)."""
    async with ScriptedBroker(ack=lambda p: 0 if p.retain else None) as broker, running(broker, max_inflight=4) as sink:
        offer = sink.offer_many([data(n) for n in range(10)], wait_s=0)
        with pytest.raises(StopIteration) as finished:
            offer.send(None)
        assert finished.value.value == 4
        offer = sink.offer_many([data(n) for n in range(10, 12)], wait_s=0)
        with pytest.raises(StopIteration) as finished:
            offer.send(None)
        assert finished.value.value == 0  # the window is full: nothing taken, nothing waited for
        broker.ack = ack_all
        broker.release_held()
        assert await sink.flush(5)
        assert sink.unacked() == []
