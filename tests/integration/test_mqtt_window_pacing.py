"""The in-flight window follows the PUBACK delay (gateway/mqtt/pacing.py) on real parts.

A Mosquitto that announces a Receive Maximum of 1000 behind a link that carries about 800 messages/s
(``tests/support/flaky_links.throttled_proxy``): with every slot used, a message would wait over a second
between its hand-over and its PUBACK, in socket buffers the gateway's queue-age cap never sees. The window
shrinks instead, so a message handed over once it has adapted is delivered within a fraction of that, and
everything still arrives, once each, in order, at an independent subscriber.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.mqtt.connection import MqttSink
from gateway.mqtt.pacing import DEFAULT_FLOOR
from tests.support.flaky_links import throttled_proxy
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sink import sink_options
from tests.support.waiting import wait_until_async

LIMIT = 1000
LINK_BYTES_PER_S = 100_000
MESSAGES = 6000
PAYLOAD = b"x" * 80  # with its topic a PUBLISH of about 125 bytes: 800 messages/s through the link


@pytest.mark.serial  # it bounds a delivery time in ms: run alone, not beside three other workers
async def test_a_slow_link_shrinks_the_window_so_data_does_not_wait_behind_a_full_one() -> None:
    prefix = f"pace{uuid.uuid4().hex[:8]}"
    with Mosquitto(extra_config=[f"max_inflight_messages {LIMIT}"]) as broker:
        subscriber = Subscriber(broker.host, broker.port, f"{prefix}/data/#", qos=0)
        subscriber.start()
        try:
            async with (
                throttled_proxy(broker.port, bytes_per_s=LINK_BYTES_PER_S) as proxy,
                MqttSink(sink_options(broker, prefix, port=proxy.port, max_inflight=LIMIT)) as sink,
            ):
                await sink.wait_connected(10)
                assert sink.window == LIMIT
                windows: list[int] = []
                in_flight: list[int] = []

                async def watch() -> None:
                    while True:
                        windows.append(sink.window)
                        in_flight.append(sink.in_flight)
                        await asyncio.sleep(0.01)

                watcher = asyncio.create_task(watch())
                bulk = [(f"{prefix}/data/t{n % 100}", PAYLOAD) for n in range(MESSAGES)]
                publishing = asyncio.create_task(sink.publish_many(bulk))
                await wait_until_async(lambda: sink.window <= 2 * DEFAULT_FLOOR, 20, "the window to shrink")
                # A message handed over now waits behind at most the adapted window, not behind 1000.
                await sink.publish(f"{prefix}/data/marker", PAYLOAD)
                handed_over = time.monotonic()
                await wait_until_async(
                    lambda: any(m.topic.endswith("/marker") for m in subscriber.messages), 20, "the marker"
                )
                marker = next(m for m in subscriber.messages if m.topic.endswith("/marker"))
                await publishing
                assert await sink.flush(30)
                watcher.cancel()
        finally:
            subscriber.stop()

    waited_s = marker.at - handed_over
    full_window_s = LIMIT / (LINK_BYTES_PER_S / 125)
    print(f"smallest window {min(windows)}, most in flight {max(in_flight)}, marker waited {waited_s * 1000:.0f} ms "
          f"(a full window: {full_window_s * 1000:.0f} ms)")  # fmt: skip
    assert DEFAULT_FLOOR <= min(windows) <= 2 * DEFAULT_FLOOR
    assert waited_s < full_window_s / 3, waited_s
    received = [m for m in subscriber.messages if not m.topic.endswith("/marker")]
    assert [m.topic for m in received] == [topic for topic, _ in bulk]
    assert sink.delivered == MESSAGES + 1
