"""Store and forward against a real Mosquitto: broker away, broker hung, stop while away."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import orjson

from gateway.sinks.mqtt import MqttSink
from gateway.sinks.spool import Spool
from gateway.sinks.store_forward import StoreAndForward
from tests.support.mosquitto import Mosquitto, Subscriber, free_port
from tests.support.sink import sink_options
from tests.support.waiting import wait_until_async


def data(prefix: str, n: int, topic: str = "t") -> tuple[str, bytes]:
    return f"{prefix}/data/{topic}", orjson.dumps({"value": n, "seq": n})


async def test_broker_down_spools_everything_then_replays_in_order_marked_historical(
    tmp_path: Path, prefix: str
) -> None:
    port = free_port()
    broker = Mosquitto(port=port)
    spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=2000)
    options = dataclasses.replace(sink_options(broker, prefix), host=broker.host, port=port)
    try:
        async with MqttSink(options, on_spool_ack=forwarder.on_spool_ack) as sink:
            forwarder.bind(sink)
            replay = asyncio.create_task(forwarder.replay())
            await forwarder.forward([data(prefix, n) for n in range(1, 51)])
            assert spool.count == 50  # no broker: all of it on disk, nothing waiting in memory
            assert sink.in_flight == 0

            broker.start()
            with Subscriber(broker.host, broker.port, f"{prefix}/data/#") as subscriber:
                await forwarder.forward([data(prefix, n, "live") for n in range(1, 4)])  # may race the connect
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/data/t")) >= 50, 20)
                await wait_until_async(lambda: spool.count == 0, 10)
                bodies = [orjson.loads(m.payload) for m in subscriber.on(f"{prefix}/data/t")]
                assert [body["value"] for body in bodies] == list(range(1, 51))
                assert all(body["historical"] is True for body in bodies)
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/data/live")) >= 3, 10)
                live = [orjson.loads(m.payload)["value"] for m in subscriber.on(f"{prefix}/data/live")]
                assert live == [1, 2, 3]
            assert forwarder.replayed_total == forwarder.spooled_total  # everything spooled was acknowledged
            replay.cancel()
        await forwarder.keep_unacked()
        await forwarder.close()
    finally:
        broker.close()


async def test_hung_broker_window_full_goes_to_spool_and_is_replayed_after(tmp_path: Path, prefix: str) -> None:
    with Mosquitto() as broker:
        spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
        forwarder = StoreAndForward(spool, window_wait_s=0.3, replay_per_s=5000)
        options = sink_options(broker, prefix, max_inflight=5, keepalive_s=60)
        async with MqttSink(options, on_spool_ack=forwarder.on_spool_ack) as sink:
            forwarder.bind(sink)
            await sink.wait_connected(5)
            replay = asyncio.create_task(forwarder.replay())
            with Subscriber(broker.host, broker.port, f"{prefix}/data/#") as subscriber:
                broker.pause()  # connected, but no PUBACK comes back
                try:
                    await asyncio.wait_for(forwarder.forward([data(prefix, n) for n in range(1, 101)]), 5)
                    # Five in paho's window; the rest waited window_wait_s once, then went to disk.
                    assert sink.in_flight == 5
                    assert spool.count == 95
                finally:
                    broker.resume()
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/data/t")) >= 100, 20)
                await wait_until_async(lambda: spool.count == 0, 10)
                bodies = [orjson.loads(m.payload) for m in subscriber.on(f"{prefix}/data/t")]
            replay.cancel()
        await forwarder.keep_unacked()
        await forwarder.close()
    assert sorted(body["value"] for body in bodies) == list(range(1, 101))
    assert [b["value"] for b in bodies if not b.get("historical")] == [1, 2, 3, 4, 5]
    assert [b["value"] for b in bodies if b.get("historical")] == list(range(6, 101))


async def test_stop_while_broker_away_keeps_the_window_in_the_spool(tmp_path: Path, prefix: str) -> None:
    with Mosquitto() as broker:
        spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
        forwarder = StoreAndForward(spool, window_wait_s=0.2, replay_per_s=5000)
        async with MqttSink(sink_options(broker, prefix, max_inflight=4), on_spool_ack=forwarder.on_spool_ack) as sink:
            forwarder.bind(sink)
            await sink.wait_connected(5)
            broker.pause()
            await forwarder.forward([data(prefix, n) for n in range(1, 11)])
            assert (sink.in_flight, spool.count) == (4, 6)
            await sink.close(timeout_s=0.5)
            broker.resume()
        await forwarder.keep_unacked()
        kept = spool.oldest(after_id=0, limit=100)
        await forwarder.close()
    # The four in the window were never acknowledged: spooled after the six, marked historical.
    assert sorted(orjson.loads(row.payload)["value"] for row in kept) == list(range(1, 11))
    assert all(orjson.loads(row.payload)["historical"] is True for row in kept)
