"""Event records through store-and-forward against a real Mosquitto: the future of each resolves at its PUBACK,
live or replayed from the spool after an outage; without a spool a record the broker cannot take is lost (said)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import orjson

from gateway.encoders.uns_json import historical
from gateway.mqtt.connection import MqttSink
from gateway.sinks.base import Delivery
from gateway.sinks.spool import Spool
from gateway.sinks.store_forward import StoreAndForward
from tests.support.mosquitto import Mosquitto, Subscriber, free_port
from tests.support.sink import sink_options
from tests.support.waiting import wait_until_async


def record(prefix: str, n: int) -> tuple[str, bytes]:
    return f"{prefix}/st/_events/cell", orjson.dumps({"event": "cell", "seq": n, "record_id": n})


async def test_a_record_resolves_at_its_puback_live_and_after_a_replay(tmp_path: Path, prefix: str) -> None:
    port = free_port()
    broker = Mosquitto(port=port)
    spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=2000, historical=historical)
    options = dataclasses.replace(sink_options(broker, prefix), host=broker.host, port=port)
    try:
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
            forwarder.bind(sink)
            replay = asyncio.create_task(forwarder.replay())
            # The broker is away: the record goes to the spool, its future waits.
            spooled = await forwarder.forward_record(*record(prefix, 1))
            assert spool.count == 1 and not spooled.done()
            broker.start()
            with Subscriber(broker.host, broker.port, f"{prefix}/st/#") as subscriber:
                assert await asyncio.wait_for(spooled, 20) is Delivery.ACKED
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/st/_events/cell")) >= 1, 10)
                body = orjson.loads(subscriber.on(f"{prefix}/st/_events/cell")[0].payload)
                assert body == {"event": "cell", "seq": 1, "record_id": 1, "historical": True}
                # Connected: live, resolved by the PUBACK of its own handle, nothing spooled.
                live = await forwarder.forward_record(*record(prefix, 2))
                assert await asyncio.wait_for(live, 10) is Delivery.ACKED
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/st/_events/cell")) >= 2, 10)
                assert orjson.loads(subscriber.on(f"{prefix}/st/_events/cell")[1].payload)["record_id"] == 2
            await wait_until_async(lambda: spool.count == 0, 10)
            replay.cancel()
        await forwarder.keep_unacked()
        await forwarder.close()
    finally:
        broker.close()


async def test_a_record_the_sink_still_holds_at_stop_is_spooled_as_a_record(tmp_path: Path, prefix: str) -> None:
    port = free_port()
    broker = Mosquitto(port=port)
    spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=2000, historical=historical)
    options = dataclasses.replace(sink_options(broker, prefix), host=broker.host, port=port)
    try:
        broker.start()
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
            forwarder.bind(sink)
            await sink.wait_connected(10)
            broker.pause()  # connected, no PUBACK: the record stays in the sink's window
            pending = await forwarder.forward_record(*record(prefix, 7))
            assert spool.count == 0 and not pending.done()
            await sink.close(timeout_s=0.5)
        await forwarder.keep_unacked()
        rows = spool.oldest(after_id=0, limit=10)
        assert [orjson.loads(row.payload)["record_id"] for row in rows] == [7]
        # Kept as a record: a cap full of plain messages drops them, not it.
        spool.append([(f"{prefix}/t", b"x" * 100_000)] * 200)
        assert [orjson.loads(row.payload).get("record_id") for row in spool.oldest(after_id=0, limit=1)] == [7]
        await forwarder.close()
    finally:
        broker.resume()
        broker.close()


async def test_without_a_spool_a_record_the_broker_cannot_take_is_lost_and_said_so(prefix: str) -> None:
    port = free_port()
    broker = Mosquitto(port=port)  # never started
    forwarder = StoreAndForward(None, window_wait_s=0.2, replay_per_s=2000, historical=historical)
    options = dataclasses.replace(sink_options(broker, prefix), host=broker.host, port=port)
    async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
        forwarder.bind(sink)
        outcome = await forwarder.forward_record(*record(prefix, 3))
        assert outcome.done() and outcome.result() is Delivery.LOST
        assert forwarder.lost_by_reason == {"spool_unavailable": 1}
    await forwarder.close()


async def test_a_record_the_broker_refuses_is_kept_as_a_dead_letter_and_reported_refused(
    tmp_path: Path, prefix: str
) -> None:
    broker = Mosquitto()
    spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=2000, historical=historical)
    try:
        broker.start()
        # Larger than the broker takes (mqtt.max_packet_size): refused for good, never retried, never acknowledged.
        options = sink_options(broker, prefix, max_packet_size=1024)
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
            forwarder.bind(sink)
            await sink.wait_connected(10)
            topic, _ = record(prefix, 9)
            refused = await forwarder.forward_record(topic, orjson.dumps({"record_id": 9, "blob": "x" * 2000}))
            assert await asyncio.wait_for(refused, 10) is Delivery.REFUSED
            fine = await forwarder.forward_record(*record(prefix, 10))
            assert await asyncio.wait_for(fine, 10) is Delivery.ACKED
        await forwarder.keep_unacked()
        assert spool.dead_letter_counts() == {"packet_too_large": 1}
        assert spool.count == 0
        await forwarder.close()
    finally:
        broker.close()


async def test_records_never_wait_behind_a_stuck_window(tmp_path: Path, prefix: str) -> None:
    """Issue 10 defect 2 (kill -STOP on Mosquitto) for event records: once the window is stuck, a record goes to
    the spool at once like a data batch (each used to wait ``window_wait_s`` for a slot, so a PLC's handshake
    waited with it); a record that waited in vain also marks the window stuck; all arrive after SIGCONT."""
    with Mosquitto() as broker:
        spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
        forwarder = StoreAndForward(spool, window_wait_s=3.0, replay_per_s=5000, historical=historical)
        options = sink_options(broker, prefix, max_inflight=2, keepalive_s=60)
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
            forwarder.bind(sink)
            await sink.wait_connected(5)
            with Subscriber(broker.host, broker.port, f"{prefix}/st/#") as subscriber:
                broker.pause()
                try:
                    futures = [await forwarder.forward_record(*record(prefix, n)) for n in (1, 2)]  # the window
                    # The third waits window_wait_s once, in vain: the window is stuck from then on.
                    futures.append(await forwarder.forward_record(*record(prefix, 3)))
                    assert forwarder.window_stuck_episodes == 1

                    async def ten_records() -> None:
                        for n in range(4, 14):
                            futures.append(await forwarder.forward_record(*record(prefix, n)))

                    # Were each record to wait window_wait_s, these would take 30 s.
                    await asyncio.wait_for(ten_records(), 10)
                    assert (sink.in_flight, spool.count) == (2, 11)
                    assert not any(future.done() for future in futures)
                finally:
                    broker.resume()
                replay = asyncio.create_task(forwarder.replay())
                outcomes = await asyncio.wait_for(asyncio.gather(*futures), 30)
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/st/_events/cell")) >= 13, 10)
                replay.cancel()
        await forwarder.keep_unacked()
        await forwarder.close()
    assert outcomes == [Delivery.ACKED] * 13
    received = {orjson.loads(m.payload)["record_id"] for m in subscriber.on(f"{prefix}/st/_events/cell")}
    assert received == set(range(1, 14))
