"""Window slots freed by PUBACKs go out together: a few PUBACKs wait (a millisecond at most) for more.

Against the scripted broker, which holds every PUBACK until the test releases it. The checks read the
client's counters in the event-loop turn right after it handled a PUBACK read: asyncio runs a task that was
ready before a timer fell due ahead of that timer, so what the test sees there does not depend on how fast
the machine is.
"""

from __future__ import annotations

import asyncio

from gateway.mqtt.connection import MqttSink
from gateway.mqtt.wire import Connack, Property
from tests.support.mqtt_broker import ScriptedBroker, data, running, wait_until

WINDOW = 20


async def first_turn_with(sink: MqttSink, delivered: int) -> int:
    """``sink.published`` in the first event-loop turn that sees ``delivered`` PUBACKs handled."""
    for _ in range(100_000):
        if sink.delivered >= delivered:
            return sink.published
        await asyncio.sleep(0)
    raise AssertionError(f"never saw {delivered} PUBACKs")


async def test_one_puback_waits_for_more_and_half_a_window_goes_out_at_once() -> None:
    # Receive Maximum 21: the window's 20 messages and the online status fit.
    connack = Connack(properties=((Property.RECEIVE_MAXIMUM, WINDOW + 1),))
    held = ScriptedBroker(connack=connack, ack=lambda p: None)
    async with held as broker, running(broker, max_inflight=WINDOW) as sink:
        await wait_until(lambda: len(broker.publishes()) == 1)
        broker.release_held(1)  # the online status
        await wait_until(lambda: sink.control_delivered == 1)
        task = asyncio.create_task(sink.publish_many([data(n) for n in range(100)]))
        await wait_until(lambda: len(broker.publishes()) == 1 + WINDOW)
        assert sink.published == WINDOW

        broker.release_held(1)
        # The freed slot is held for more PUBACKs instead of letting one message out on its own ...
        assert await first_turn_with(sink, 1) == WINDOW
        # ... but not for long: with no more PUBACKs coming it is handed out all the same.
        await wait_until(lambda: sink.published == WINDOW + 1)
        await wait_until(lambda: len(broker.publishes()) == 2 + WINDOW)

        # Half the window freed by one read goes out at once.
        broker.release_held(WINDOW // 2)
        assert await first_turn_with(sink, 1 + WINDOW // 2) == WINDOW + 1 + WINDOW // 2

        broker.ack = lambda p: 0
        while not task.done():
            broker.release_held()
            await asyncio.sleep(0.01)
        assert await sink.flush(5)
        assert sink.delivered == 100
    topics = [p.topic for p in broker.publishes(0) if not p.retain]
    assert topics == [f"edge/data/t{n}" for n in range(100)]
