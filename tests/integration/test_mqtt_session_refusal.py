"""A message the session hooks refuse (``SessionHooks.stamp`` or ``resend`` returns a ``SessionRefusal``), on a real
Mosquitto.

Sparkplug refuses so the DDATA of a device that cannot be born (tests/e2e/test_sparkplug_not_born.py); the connection's
part is generic: the message never reaches the wire, goes once to ``on_refused`` with the session's reason and the
payload the session gives to keep (with its handle: a replay is moved to the dead letters, not acknowledged away),
is counted by that reason, and the window slot it took is given back at once, so the others flow. (A message the
session drops instead, None: tests/integration/test_mqtt_session_drop.py.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

from gateway.mqtt.connection import MqttSink
from gateway.mqtt.options import SessionRefusal
from gateway.sinks.base import Handle
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sink import sink_options

DEADLINE_S = 20.0  # generous: other tests share the machine
REASON = "session_refused"


class RefuseSession:
    """Session hooks that refuse every message on a topic ending in ``/refuse`` at its hand-over, and one ending in
    ``/later`` when it is resent after a reconnect; they number nothing. The refusal keeps ``kept:`` + payload."""

    def __init__(self) -> None:
        self.resent: list[str] = []

    def births(self) -> Sequence[tuple[str, bytes]]:
        return []

    def stamp(self, topic: str, payload: bytes) -> bytes | SessionRefusal | None:
        return SessionRefusal(REASON, b"kept:" + payload) if topic.endswith("/refuse") else payload

    def unstamp(self, topic: str) -> None:
        return None

    def resend(self, topic: str, payload: bytes) -> bytes | SessionRefusal | None:
        self.resent.append(topic)
        return SessionRefusal(REASON, b"kept:" + payload) if topic.endswith("/later") else payload


async def test_a_message_the_session_refuses_goes_to_on_refused_unsent_and_frees_its_window_slot(prefix: str) -> None:
    acked: list[Handle] = []
    refused: list[tuple[str, bytes, str, Handle | None]] = []

    def on_refused(topic: str, payload: bytes, reason: str, handle: Handle | None) -> bool:
        refused.append((topic.rsplit("/", 2)[1] + "/" + topic.rsplit("/", 1)[1], payload, reason, handle))
        return True

    with Mosquitto() as broker:
        host = Subscriber(broker.host, broker.port, f"{prefix}/data/#")
        host.start()
        try:
            for qos in (1, 0):
                session = RefuseSession()
                options = dataclasses.replace(
                    sink_options(broker, f"{prefix}/q{qos}"), session=session, qos=qos, max_inflight=2
                )
                async with MqttSink(options, on_ack=acked.append, on_refused=on_refused) as sink:
                    await sink.wait_connected(10)
                    refuse, keep = f"{prefix}/data/q{qos}/refuse", f"{prefix}/data/q{qos}/keep"
                    assert sink.try_publish(refuse, b"replayed", 100 + qos)
                    # Five times the window: each refused message must give its slot back for the next to go.
                    await asyncio.wait_for(sink.publish_many([(refuse, b"live")] * 10), DEADLINE_S)
                    taken = await sink.offer_many([(refuse, b"offered"), (keep, b"sent")], wait_s=DEADLINE_S)
                    assert taken == 2
                    await host.wait_for(lambda ms, keep=keep: any(m.topic == keep for m in ms), DEADLINE_S)
                    await asyncio.sleep(0)  # the refusals are settled on the loop's next turn
                    assert sink.refused_by_reason == {REASON: 12}
                    assert sink.failed == 12
                    assert sink.unacked() == []  # nothing left for the spool: the refusal is what keeps them
        finally:
            host.stop()

    # QoS 1: the replay's handle goes with its refusal (a spool moves that row to the dead letters), never acked.
    # QoS 0 settles a replay at once, as for any refusal there: refused without its handle (kept as a new dead
    # letter), then its handle acknowledged (the spool row deleted).
    assert acked == [100]
    for qos in (1, 0):
        mine = [r for r in refused if r[0].startswith(f"q{qos}/")]
        assert mine[0] == (f"q{qos}/refuse", b"kept:replayed", REASON, 101 if qos else None)
        assert mine[1:] == [(f"q{qos}/refuse", b"kept:live", REASON, None)] * 10 + [
            (f"q{qos}/refuse", b"kept:offered", REASON, None)
        ]
    assert [(m.topic.rsplit("/", 2)[1:], m.payload) for m in host.messages] == [
        (["q1", "keep"], b"sent"), (["q0", "keep"], b"sent")
    ]


async def test_a_message_the_session_refuses_at_its_resend_after_a_reconnect_is_refused_not_sent(prefix: str) -> None:
    refused: list[tuple[str, bytes, str, Handle | None]] = []

    def on_refused(topic: str, payload: bytes, reason: str, handle: Handle | None) -> bool:
        refused.append((topic.rsplit("/", 1)[1], payload, reason, handle))
        return True

    with Mosquitto() as broker:
        session = RefuseSession()
        options = dataclasses.replace(sink_options(broker, prefix), session=session, puback_timeout_s=1.0)
        async with MqttSink(options, on_refused=on_refused) as sink:
            await sink.wait_connected(10)
            broker.pause()  # no PUBACK: both stay unacknowledged
            await sink.publish_many([(f"{prefix}/data/later", b"one"), (f"{prefix}/data/keep", b"two")])
            await asyncio.sleep(0.2)
            broker.restart(kill=True)  # the link is lost with them
            host = Subscriber(broker.host, broker.port, f"{prefix}/data/#")
            host.start()
            try:
                messages = await host.wait_for(lambda ms: any(m.topic.endswith("/keep") for m in ms), DEADLINE_S)
                deadline = time.monotonic() + DEADLINE_S
                while sink.in_flight:  # the resent "keep" is acknowledged, "later" refused
                    assert time.monotonic() < deadline, sink.in_flight
                    await asyncio.sleep(0.05)
            finally:
                host.stop()
            assert sink.refused_by_reason == {REASON: 1}
            assert sink.unacked() == []

    assert f"{prefix}/data/later" in session.resent
    assert refused == [("later", b"kept:one", REASON, None)]
    assert [m.topic.rsplit("/", 1)[1] for m in messages] == ["keep"]
