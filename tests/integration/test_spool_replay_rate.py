"""The spool replay's rate limit against a real Mosquitto: the token bucket that sends a burst per event-loop
turn (instead of a sleep per message) still never sends more than ``replay_per_s`` allows, and the replay still
delivers everything, in order."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from gateway.encoders.uns_json import historical
from gateway.mqtt.connection import MqttSink
from gateway.sinks.spool import Spool
from gateway.sinks.store_forward import StoreAndForward
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sink import sink_options
from tests.support.waiting import wait_until_async

RATE = 1000
SPOOLED = 3000


async def test_the_replay_sends_no_faster_than_replay_per_s_and_delivers_everything_in_order(
    tmp_path: Path, prefix: str
) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
    topic = f"{prefix}/data/t"
    spool.append([(topic, orjson.dumps({"value": n, "seq": n})) for n in range(1, SPOOLED + 1)])
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=RATE, historical=historical)
    with Mosquitto() as broker, Subscriber(broker.host, broker.port, f"{prefix}/#") as subscriber:
        async with MqttSink(sink_options(broker, prefix), on_ack=forwarder.on_ack,
                            on_refused=forwarder.on_refused) as sink:  # fmt: skip
            forwarder.bind(sink)
            started = time.monotonic()
            replay = asyncio.create_task(forwarder.replay())
            checks: list[tuple[float, int]] = []
            while forwarder.replayed_total < SPOOLED and time.monotonic() - started < 60:
                await asyncio.sleep(0.1)
                checks.append((time.monotonic() - started, forwarder.replayed_total))
            await wait_until_async(lambda: len(subscriber.on(topic)) >= SPOOLED, 30, "every replayed message")
            replay.cancel()
        await forwarder.close()
    # Never ahead of the rate: the bucket starts empty and refills at RATE (a slow machine only sends less).
    assert all(replayed <= RATE * elapsed + 1 for elapsed, replayed in checks), checks
    assert [orjson.loads(m.payload)["value"] for m in subscriber.on(topic)] == list(range(1, SPOOLED + 1))
