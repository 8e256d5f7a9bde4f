"""MqttSink against a real mosquitto: delivery, backpressure, availability, reconnects, auth.

Every test publishes under its own topic prefix. Tests that stop, pause or restart the broker get a
broker of their own; the others share one per module.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway.encoders.uns_json import encode_tag_payload
from gateway.errors import SinkError
from gateway.mqtt.connection import MqttSink
from gateway.schema import Quality, Sample
from tests.support.mosquitto import Mosquitto, Received, Subscriber, retained_snapshot
from tests.support.sink import OFFLINE, ONLINE
from tests.support.sink import sink_options as make_options


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as running:
        yield running


@pytest.fixture
def own_broker() -> Iterator[Mosquitto]:
    with Mosquitto() as running:
        yield running




def data_messages(messages: list[Received], prefix: str) -> list[Received]:
    return [m for m in messages if m.topic.startswith(f"{prefix}/data/")]


async def wait_until(condition: Any, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------------- delivery


async def test_each_tag_is_received_at_qos1_with_its_exact_payload(broker: Mosquitto, prefix: str) -> None:
    samples = [
        Sample(device="rack-01", tag=f"ch{n:03d}/voltage", value=3.5 + n / 1000, quality=Quality.GOOD, ts=1.8e9)
        for n in range(40)
    ]
    expected = {f"{prefix}/data/{s.tag}": encode_tag_payload(s, unit="V", seq=i) for i, s in enumerate(samples)}
    items = list(expected.items())
    with Subscriber(broker.host, broker.port, f"{prefix}/data/#") as sub:
        async with MqttSink(make_options(broker, prefix)) as sink:
            await sink.wait_connected(5)
            await sink.publish(*items[0])
            await sink.publish_many(items[1:])
            assert await sink.flush(5)
            assert (sink.published, sink.delivered, sink.failed) == (40, 40, 0)
            assert sink.unacked() == []
            received = await sub.wait_for(lambda msgs: len(msgs) >= 40)
    assert {m.topic: m.payload for m in received} == expected
    assert all(m.qos == 1 and not m.retain for m in received)
    assert orjson.loads(received[0].payload)["quality"] == "good"


async def test_delivered_counts_a_message_only_after_its_puback(own_broker: Mosquitto, prefix: str) -> None:
    async with MqttSink(make_options(own_broker, prefix)) as sink:
        await sink.wait_connected(5)
        assert await sink.flush(5)  # the online status
        own_broker.pause()  # TCP stays up, no PUBACK comes back
        try:
            for n in range(3):
                await sink.publish(f"{prefix}/data/t{n}", b"%d" % n)
            await asyncio.sleep(0.3)
            assert (sink.published, sink.delivered, sink.in_flight) == (3, 0, 3)
            assert sink.unacked() == [(f"{prefix}/data/t{n}", b"%d" % n) for n in range(3)]
        finally:
            own_broker.resume()
        assert await sink.flush(5)
        assert (sink.delivered, sink.in_flight, sink.unacked()) == (3, 0, [])


async def test_publish_waits_when_the_window_is_full(own_broker: Mosquitto, prefix: str) -> None:
    messages = [(f"{prefix}/data/t{n:02d}", b"%d" % n) for n in range(12)]
    with Subscriber(own_broker.host, own_broker.port, f"{prefix}/data/#") as sub:
        async with MqttSink(make_options(own_broker, prefix, max_inflight=4)) as sink:
            await sink.wait_connected(5)
            assert await sink.flush(5)
            own_broker.pause()
            try:
                task = asyncio.create_task(sink.publish_many(messages))
                await asyncio.sleep(0.3)
                # Blocked in publish_many, holding only the window's worth: memory does not grow.
                assert not task.done()
                assert (sink.published, sink.in_flight, len(sink.unacked())) == (4, 4, 4)
            finally:
                own_broker.resume()
            await asyncio.wait_for(task, 5)
            assert await sink.flush(5)
            assert sink.delivered == 12
        received = await sub.wait_for(lambda msgs: len(msgs) >= 12)
    assert [(m.topic, m.payload) for m in received] == messages  # in order


async def test_close_wakes_blocked_publishers_and_keeps_unacked_for_the_spool(
    own_broker: Mosquitto, prefix: str
) -> None:
    sink = MqttSink(make_options(own_broker, prefix, max_inflight=2))
    async with sink:
        await sink.wait_connected(5)
        assert await sink.flush(5)
        own_broker.pause()
        try:
            blocked = asyncio.create_task(sink.publish_many([(f"{prefix}/data/t{n}", b"%d" % n) for n in range(5)]))
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await sink.close(timeout_s=0.3)
            assert time.monotonic() - started < 3.0
        finally:
            own_broker.resume()
        with pytest.raises(SinkError, match="closed"):
            await blocked
    assert sink.unacked() == [(f"{prefix}/data/t0", b"0"), (f"{prefix}/data/t1", b"1")]
    assert sink.delivered == 0
    with pytest.raises(SinkError, match="closed"):
        await sink.publish(f"{prefix}/data/late", b"x")


async def test_invalid_topic_is_a_sink_error(broker: Mosquitto, prefix: str) -> None:
    async with MqttSink(make_options(broker, prefix)) as sink:
        with pytest.raises(SinkError, match="wildcard"):
            await sink.publish(f"{prefix}/data/+", b"x")
        with pytest.raises(SinkError, match="wildcard"):
            sink.set_retained(f"{prefix}/#", b"x")
        assert sink.in_flight == 0  # the window slot was given back
    with pytest.raises(ValueError, match="will_topic"):
        make_options(broker, prefix, will_topic="a/#")


# ------------------------------------------------------------------------------- availability


async def test_online_status_on_connect_and_offline_after_close(broker: Mosquitto, prefix: str) -> None:
    connects = 0

    def online() -> bytes:
        nonlocal connects
        connects += 1
        return orjson.dumps({"online": True, "connects": connects})

    status = f"{prefix}/_gateway/status"
    with Subscriber(broker.host, broker.port, f"{prefix}/#") as sub:
        sink = MqttSink(make_options(broker, prefix, online_payload=online))
        sink.set_retained(f"{prefix}/rack-01/_meta", b'{"tags":{}}')  # before starting: kept, sent on connect
        async with sink:
            await sink.wait_connected(5)
            await sub.wait_for(lambda msgs: any(m.topic == status for m in msgs))
            assert await sink.flush(5)
            assert await retained_snapshot(broker.host, broker.port, f"{prefix}/#") == {
                status: b'{"online":true,"connects":1}',
                f"{prefix}/rack-01/_meta": b'{"tags":{}}',
            }
        await sub.wait_for(lambda msgs: [m.payload for m in msgs if m.topic == status][-1:] == [OFFLINE])
    assert (await retained_snapshot(broker.host, broker.port, status))[status] == OFFLINE
    assert sink.published == 0  # status messages are not data


CHILD = """
import asyncio, sys
from gateway.mqtt.options import MqttOptions
from gateway.mqtt.connection import MqttSink

async def main() -> None:
    host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    options = MqttOptions(host=host, port=port, client_id="cg-child-" + prefix.replace("/", "-"),
                          will_topic=prefix + "/_gateway/status", will_payload=b'{"online":false}',
                          online_payload=b'{"online":true}')
    async with MqttSink(options) as sink:
        await sink.wait_connected(5)
        await sink.flush(5)
        print("ready", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_broker_publishes_the_will_when_the_sink_process_dies(broker: Mosquitto, prefix: str) -> None:
    status = f"{prefix}/_gateway/status"
    with Subscriber(broker.host, broker.port, status) as sub:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            broker.host,
            str(broker.port),
            prefix,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            assert child.stdout is not None
            async with asyncio.timeout(15):
                # structlog's default configuration also prints to stdout
                while (line := await child.stdout.readline()) not in (b"ready\n", b""):
                    pass
            assert line == b"ready\n"
            await sub.wait_for(lambda msgs: [m.payload for m in msgs] == [ONLINE])
            killed_at = time.monotonic()
            child.send_signal(signal.SIGKILL)  # no DISCONNECT, no offline publish: only the will
            messages = await sub.wait_for(lambda msgs: len(msgs) == 2, timeout_s=3)
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
    assert messages[1].payload == OFFLINE
    assert messages[1].at - killed_at < 2.0
    assert (await retained_snapshot(broker.host, broker.port, status))[status] == OFFLINE


# --------------------------------------------------------------------------------- reconnects


async def test_after_a_broker_crash_the_sink_restores_status_and_retained(own_broker: Mosquitto, prefix: str) -> None:
    connects = 0

    def online() -> bytes:
        nonlocal connects
        connects += 1
        return b'{"online":true,"connects":%d}' % connects

    retained = {f"{prefix}/rack-01/_status": b'{"connected":true}', f"{prefix}/rack-01/_meta": b'{"tags":{}}'}
    async with MqttSink(make_options(own_broker, prefix, online_payload=online)) as sink:
        await sink.wait_connected(5)
        for topic, payload in retained.items():
            sink.set_retained(topic, payload)
        assert await sink.flush(5)

        own_broker.stop(kill=True)  # crash: no persistence, every retained message is gone
        await wait_until(lambda: not sink.connected)
        own_broker.start()
        assert await retained_snapshot(own_broker.host, own_broker.port, f"{prefix}/#") == {}  # proof of loss

        await sink.wait_connected(5)
        assert await sink.flush(5)
        assert await retained_snapshot(own_broker.host, own_broker.port, f"{prefix}/#") == {
            f"{prefix}/_gateway/status": b'{"online":true,"connects":2}',
            **retained,
        }


async def test_qos1_messages_published_during_a_broker_restart_are_all_delivered(prefix: str) -> None:
    total = 300
    with Mosquitto(persistence=True) as broker:  # keeps the subscriber's session across the restart
        sub = Subscriber(
            broker.host, broker.port, f"{prefix}/data/#", client_id="cg-sub-" + uuid.uuid4().hex[:8], session=True
        )
        with sub:
            async with MqttSink(make_options(broker, prefix)) as sink:
                await sink.wait_connected(5)
                published_offline = 0

                async def produce() -> None:
                    nonlocal published_offline
                    for n in range(total):
                        if not sink.connected:
                            published_offline += 1
                        await sink.publish(f"{prefix}/data/t{n % 7}", b"%d" % n)
                        await asyncio.sleep(0.002)

                producer = asyncio.create_task(produce())
                await wait_until(lambda: sink.published >= 60)
                # In a thread, so the event loop (sink and producer) keeps running through the outage.
                await asyncio.to_thread(broker.restart, down_s=0.6)
                await asyncio.wait_for(producer, 15)
                assert await sink.flush(10)
                assert (sink.published, sink.delivered, sink.failed, sink.unacked()) == (total, total, 0, [])
                assert published_offline > 0  # the test really published into the outage

            # At least once: duplicates are allowed (resent after a lost PUBACK), gaps are not.
            received = await sub.wait_for(lambda msgs: len({m.payload for m in msgs}) >= total, timeout_s=10)
    assert {int(m.payload) for m in received} == set(range(total))


async def test_qos0_messages_are_dropped_and_counted_while_disconnected(own_broker: Mosquitto, prefix: str) -> None:
    async with MqttSink(make_options(own_broker, prefix, qos=0)) as sink:
        await sink.wait_connected(5)
        await sink.publish_many([(f"{prefix}/data/a", b"1"), (f"{prefix}/data/b", b"2")])
        await wait_until(lambda: sink.delivered == 2)
        own_broker.stop(kill=True)
        await wait_until(lambda: not sink.connected)
        started = time.monotonic()
        await sink.publish_many([(f"{prefix}/data/c", b"3")] * 3)
        assert time.monotonic() - started < 0.1  # QoS0 never waits
        assert (sink.published, sink.delivered, sink.failed) == (2, 2, 3)
        started = time.monotonic()
        await sink.close()  # disconnected with nothing in flight: nothing to wait for
        assert time.monotonic() - started < 1.0


# -------------------------------------------------------------------------------- protocols


async def test_mqtt_311_mode(broker: Mosquitto, prefix: str) -> None:
    messages = [(f"{prefix}/data/t{n}", b"%d" % n) for n in range(10)]
    with Subscriber(broker.host, broker.port, f"{prefix}/#") as sub:
        sink_options = make_options(broker, prefix, protocol="3.1.1")
        async with MqttSink(sink_options) as sink:
            await sink.wait_connected(5)
            await sink.publish_many(messages)
            assert await sink.flush(5)
            assert sink.delivered == 10
            received = await sub.wait_for(lambda msgs: len(data_messages(msgs, prefix)) == 10)
    assert [(m.topic, m.payload) for m in data_messages(received, prefix)] == messages
    assert [m.payload for m in received if m.topic.endswith("/status")] == [ONLINE]
    # mosquitto logs its protocol enum: p2 = MQTT 3.1.1, p5 = MQTT 5.
    assert f"as {sink_options.client_id} (p2, c1, k30)" in broker.log_text()


async def test_username_and_password(prefix: str) -> None:
    users = {"gateway": "s3cret-pw", "reader": "reader-pw"}
    with Mosquitto(users=users) as broker:
        good = make_options(broker, prefix, username="gateway", password="s3cret-pw")
        assert "s3cret-pw" not in repr(good)
        with Subscriber(broker.host, broker.port, f"{prefix}/data/#", username="reader", password="reader-pw") as sub:
            async with MqttSink(good) as sink:
                await sink.wait_connected(5)
                await sink.publish(f"{prefix}/data/t", b"42")
                assert await sink.flush(5)
                assert sink.delivered == 1
            await sub.wait_for(lambda msgs: [m.payload for m in msgs] == [b"42"])

        for protocol in ("5", "3.1.1"):
            bad = make_options(broker, prefix, username="gateway", password="wrong", protocol=protocol)
            async with MqttSink(bad) as sink:
                with pytest.raises(SinkError, match=r"(?i)not authori[sz]ed|bad user name or password"):
                    await sink.wait_connected(0.5)
                assert not sink.connected


async def test_unusable_tls_files_are_a_sink_error(broker: Mosquitto, prefix: str) -> None:
    options = make_options(broker, prefix, tls=True, ca_file=f"/nonexistent/{prefix}/ca.crt")
    with pytest.raises(SinkError, match="cannot set up the MQTT client"):
        async with MqttSink(options):
            pass
