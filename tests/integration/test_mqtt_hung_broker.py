"""A hung broker (SIGSTOP: TCP stays up, nothing is answered) is detected by the PUBACK deadline, not only
by keep alive, and the messages in flight are delivered after it comes back (issue 10 item 2, the MQTT
client side)."""

from __future__ import annotations

import time

import structlog

from gateway.mqtt.connection import MqttSink
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sink import sink_options
from tests.support.waiting import wait_until_async


async def test_a_sigstopped_broker_is_detected_by_the_puback_deadline_and_the_link_comes_back(prefix: str) -> None:
    """Issue 10 item 2 recipe: ``kill -STOP`` on Mosquitto was never detected (keep alive 2 x 30 s).
    With ``puback_timeout_s`` 1 the stuck link is dropped within about 1.25 s of the oldest message
    waiting (``mqtt_stuck`` logged once), reconnected with backoff after SIGCONT, and every message
    handed over is delivered."""
    with Mosquitto() as broker, Subscriber(broker.host, broker.port, f"{prefix}/t/#") as sub:
        options = sink_options(broker, prefix, keepalive_s=30, puback_timeout_s=1.0, connect_timeout_s=1.0)
        with structlog.testing.capture_logs() as logs:
            async with MqttSink(options) as sink:
                await sink.wait_connected(5)
                await sink.publish_many([(f"{prefix}/t/{n}", b"%d" % n) for n in range(5)])
                assert await sink.flush(5)
                broker.pause()
                try:
                    paused_at = time.monotonic()
                    await sink.publish_many([(f"{prefix}/t/{n}", b"%d" % n) for n in range(5, 10)])
                    await wait_until_async(lambda: not sink.connected, 5, "the stuck link dropped")
                    detected_s = time.monotonic() - paused_at
                    assert sink.in_flight == 5  # kept for the resend
                finally:
                    broker.resume()
                await sink.wait_connected(15)
                assert await sink.flush(10)
                assert (sink.delivered, sink.failed, sink.unacked()) == (10, 0, [])
        messages = await sub.wait_for(lambda msgs: len({m.payload for m in msgs}) >= 10, timeout_s=10)
    assert 0.9 < detected_s < 3.0
    stuck = [entry for entry in logs if entry["event"] == "mqtt_stuck"]
    assert len(stuck) == 1 and stuck[0]["oldest_age_s"] >= 1.0 and stuck[0]["inflight"] >= 1
    assert {m.payload for m in messages} == {b"%d" % n for n in range(10)}
