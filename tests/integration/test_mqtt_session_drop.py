"""A message the session hooks drop at its hand-over (``SessionHooks.stamp`` returns None), on a real Mosquitto.

Sparkplug drops a DDEATH of a device not born on the connection this way (tests/e2e/test_sparkplug_replay.py); the
connection's part is generic: the message never reaches the wire, its handle is acknowledged (not refused, so not
kept as a dead letter, and not left for the spool), and the window slot it took is given back.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from gateway.mqtt.connection import MqttSink
from gateway.sinks.base import Handle
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sink import sink_options

DEADLINE_S = 20.0  # generous: other tests share the machine


class DropSession:
    """Session hooks that drop every message on a topic ending in ``/drop`` and number nothing."""

    def __init__(self) -> None:
        self.dropped = 0

    def births(self) -> Sequence[tuple[str, bytes]]:
        return []

    def stamp(self, topic: str, payload: bytes) -> bytes | None:
        if topic.endswith("/drop"):
            self.dropped += 1
            return None
        return payload

    def unstamp(self, topic: str) -> None:
        return None

    def resend(self, topic: str, payload: bytes) -> bytes | None:
        return payload


async def test_a_message_the_session_drops_is_acknowledged_unsent_and_frees_its_window_slot(prefix: str) -> None:
    acked: list[Handle] = []
    refused: list[tuple[str, str]] = []

    def on_refused(topic: str, payload: bytes, reason: str, handle: Handle | None) -> bool:
        refused.append((topic, reason))
        return False

    with Mosquitto() as broker:
        host = Subscriber(broker.host, broker.port, f"{prefix}/data/#")
        host.start()
        try:
            for qos in (1, 0):
                session = DropSession()
                options = dataclasses.replace(
                    sink_options(broker, f"{prefix}/q{qos}"), session=session, qos=qos, max_inflight=2
                )
                async with MqttSink(options, on_ack=acked.append, on_refused=on_refused) as sink:
                    await sink.wait_connected(10)
                    drop, keep = f"{prefix}/data/q{qos}/drop", f"{prefix}/data/q{qos}/keep"
                    assert sink.try_publish(drop, b"replayed", 100 + qos)
                    # Five times the window: each dropped message must give its slot back for the next to go.
                    await asyncio.wait_for(sink.publish_many([(drop, b"live")] * 10), DEADLINE_S)
                    taken = await sink.offer_many([(drop, b"offered"), (keep, b"kept")], wait_s=DEADLINE_S)
                    assert taken == 2
                    sink.send_session_messages([(drop, b"session"), (keep, b"session")])
                    await host.wait_for(lambda ms, keep=keep: sum(m.topic == keep for m in ms) == 2, DEADLINE_S)
                    assert session.dropped == 13
        finally:
            host.stop()

    assert sorted(acked) == [100, 101]  # the replay handles: settled as delivered, once each
    assert refused == []
    assert [(m.topic.rsplit("/", 2)[1:], m.payload) for m in host.messages] == [
        (["q1", "keep"], b"kept"), (["q1", "keep"], b"session"), (["q0", "keep"], b"kept"), (["q0", "keep"], b"session")
    ]
