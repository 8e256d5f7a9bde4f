"""Store and forward against a real Mosquitto: broker away, broker hung, stop while away, dead letters, no spool."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from pathlib import Path

import orjson
import structlog

from gateway.encoders.uns_json import historical
from gateway.mqtt.connection import MqttSink
from gateway.sinks.fanout import MqttFanOut, route
from gateway.sinks.spool import Spool
from gateway.sinks.store_forward import StoreAndForward, open_spool
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
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=2000, historical=historical)
    options = dataclasses.replace(sink_options(broker, prefix), host=broker.host, port=port)
    try:
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
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
        forwarder = StoreAndForward(spool, window_wait_s=0.3, replay_per_s=5000, historical=historical)
        options = sink_options(broker, prefix, max_inflight=5, keepalive_s=60)
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
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
        forwarder = StoreAndForward(spool, window_wait_s=0.2, replay_per_s=5000, historical=historical)
        async with MqttSink(
            sink_options(broker, prefix, max_inflight=4), on_ack=forwarder.on_ack, on_refused=forwarder.on_refused
        ) as sink:
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


async def test_a_stuck_window_sends_later_batches_straight_to_the_spool(tmp_path: Path, prefix: str) -> None:
    """Issue 10 defect 2 (kill -STOP on Mosquitto): once one offer waited window_wait_s in vain, later batches do
    not wait it again each; they go to the spool as they come, and live sending resumes when slots free."""
    with Mosquitto() as broker:
        spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
        forwarder = StoreAndForward(spool, window_wait_s=2.0, replay_per_s=5000, historical=historical)
        options = sink_options(broker, prefix, max_inflight=5, keepalive_s=60)
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
            forwarder.bind(sink)
            await sink.wait_connected(5)
            with Subscriber(broker.host, broker.port, f"{prefix}/data/#") as subscriber:
                broker.pause()
                try:
                    await forwarder.forward([data(prefix, n) for n in range(1, 11)])  # waits window_wait_s once
                    assert (sink.in_flight, spool.count) == (5, 5)

                    async def twenty_batches() -> None:
                        for start in range(11, 1011, 50):
                            await forwarder.forward([data(prefix, n) for n in range(start, start + 50)])

                    # Were each batch to wait window_wait_s, these would take 40 s.
                    await asyncio.wait_for(twenty_batches(), 10)
                    assert spool.count == 1005
                finally:
                    broker.resume()
                replay = asyncio.create_task(forwarder.replay())
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/data/t")) >= 1010, 30)
                await wait_until_async(lambda: spool.count == 0, 10)
                # Slots free again: a new batch goes live, not to the spool.
                await forwarder.forward([data(prefix, n, "after") for n in range(1, 4)])
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/data/after")) >= 3, 10)
                after = [orjson.loads(m.payload) for m in subscriber.on(f"{prefix}/data/after")]
                values = sorted(orjson.loads(m.payload)["value"] for m in subscriber.on(f"{prefix}/data/t"))
                replay.cancel()
        await forwarder.keep_unacked()
        await forwarder.close()
    assert sorted(set(values)) == list(range(1, 1011))
    assert not any(body.get("historical") for body in after)


async def test_replay_acknowledgements_are_deleted_while_the_replay_waits_for_a_reconnect(
    tmp_path: Path, prefix: str
) -> None:
    """Issue 10 defect 6 (kill during a replay duplicates what was already sent): acknowledged replays leave the
    spool within about ACK_FLUSH_S even while the replay is stuck waiting for the broker to come back."""
    port = free_port()
    broker = Mosquitto(port=port)
    spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
    spool.append([data(prefix, n) for n in range(1, 2001)])
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=200, historical=historical)
    options = dataclasses.replace(sink_options(broker, prefix), host=broker.host, port=port)
    try:
        broker.start()
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
            forwarder.bind(sink)
            replay = asyncio.create_task(forwarder.replay())
            await wait_until_async(lambda: forwarder.replayed_total >= 100, 20)
            broker.stop()  # the replay now waits for a reconnect that does not come
            await wait_until_async(lambda: not sink.connected, 10)
            acked = forwarder.replayed_total
            await wait_until_async(lambda: spool.count <= 2000 - acked, 3, "the acknowledged replays to be deleted")
            assert 100 <= acked < 2000
            replay.cancel()
        await forwarder.close()
    finally:
        broker.close()
    again = Spool(tmp_path / "spool.db", max_bytes=10**7)
    try:
        assert again.count == 2000 - acked  # after a kill only the unacknowledged ones would be sent again
    finally:
        again.close()


async def test_refused_messages_are_kept_as_dead_letters_and_never_block_the_others(
    tmp_path: Path, prefix: str
) -> None:
    """Issue 10 defect 7, storage side: on_refused (what the sink calls for a PUBACK >= 0x80 or an oversize
    message) keeps the message in dead_letter; a refused replay leaves the message table for it."""
    with Mosquitto() as broker:
        spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
        spool.append([data(prefix, 1, "replayed")])
        replayed_id = spool.oldest(after_id=0, limit=1)[0].id
        forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=5000, historical=historical)
        async with MqttSink(
            sink_options(broker, prefix), on_ack=forwarder.on_ack, on_refused=forwarder.on_refused
        ) as sink:
            forwarder.bind(sink)
            await sink.wait_connected(5)
            replay = asyncio.create_task(forwarder.replay())
            topic, payload = data(prefix, 7, "denied")
            forwarder.on_refused(topic, payload, "not_authorized", None)
            forwarder.on_refused(topic, payload, "not_authorized", None)
            forwarder.on_refused(f"{prefix}/data/replayed", b'{"value":1}', "packet_too_large", replayed_id)
            with Subscriber(broker.host, broker.port, f"{prefix}/data/#") as subscriber:
                await forwarder.forward([data(prefix, n, "ok") for n in range(1, 4)])
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/data/ok")) >= 3, 10)
            wanted = {"not_authorized": 2, "packet_too_large": 1}
            await wait_until_async(lambda: spool.dead_letter_counts() == wanted, 5)
            replay.cancel()
        await forwarder.close()
    assert forwarder.refused_by_reason == {"not_authorized": 2, "packet_too_large": 1}
    again = Spool(tmp_path / "spool.db", max_bytes=10**7)
    try:
        assert again.count == 0  # the refused replay moved to dead_letter: not lost, not replayed again
        assert again.requeue_dead_letters("not_authorized") == 2
        rows = again.oldest(after_id=0, limit=10)
        assert [orjson.loads(row.payload) for row in rows] == [{"value": 7, "seq": 7, "historical": True}] * 2
    finally:
        again.close()


async def test_a_broker_refusal_is_logged_once_per_reason_by_the_sink_saying_it_is_kept(
    tmp_path: Path, prefix: str
) -> None:
    """Issue 10 follow-up: a refusal was logged twice (``mqtt_message_refused`` by the sink and
    ``message_refused_by_broker`` by store-and-forward). Now one line per reason, the sink's, with the
    reason, topic, size and whether the message is kept as a dead letter (MQTT 5, a broker ACL refusing a topic)."""
    acl = tmp_path / "acl"
    acl.write_text(f"topic read {prefix}/#\ntopic write {prefix}/data/ok\ntopic write {prefix}/_gateway/#\n")
    spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=5000, historical=historical)
    with structlog.testing.capture_logs() as logs, Mosquitto(extra_config=[f"acl_file {acl}"]) as broker:
        options = sink_options(broker, prefix, protocol="5")
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
            forwarder.bind(sink)
            await sink.wait_connected(5)
            replay = asyncio.create_task(forwarder.replay())  # flushes acknowledgements and dead letters
            with Subscriber(broker.host, broker.port, f"{prefix}/data/#") as subscriber:
                await forwarder.forward([data(prefix, 1, "denied"), data(prefix, 2, "ok"), data(prefix, 3, "denied")])
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/data/ok")) >= 1, 10)
            await wait_until_async(lambda: spool.dead_letter_counts() == {"not_authorized": 2}, 5)
            replay.cancel()
        await forwarder.close()
    refusals = [entry for entry in logs if "refused" in entry["event"] and "failed" not in entry["event"]]
    assert [(entry["event"], entry["reason"], entry["dead_letter"]) for entry in refusals] == [
        ("mqtt_message_refused", "not_authorized", True)
    ]
    assert refusals[0]["topic"] == f"{prefix}/data/denied"
    assert refusals[0]["payload_bytes"] == len(data(prefix, 1, "denied")[1])


async def test_without_a_spool_live_data_flows_losses_are_counted_and_the_spool_is_opened_later(
    tmp_path: Path, prefix: str
) -> None:
    """Issue 10 defect 1 (read-only or full state disk at start): no spool is no reason to stop; what cannot be
    sent is counted as lost, and the spool is opened as soon as it can be."""
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")  # opening the spool fails: not a directory

    def open_at_path() -> Spool:
        return Spool(blocker / "spool.db", max_bytes=10**7)

    forwarder = StoreAndForward(
        open_spool(open_at_path), window_wait_s=0.2, replay_per_s=5000, reopen=open_at_path, reopen_every_s=0.5,
        historical=historical,
    )
    assert not forwarder.available
    port = free_port()
    broker = Mosquitto(port=port)
    options = dataclasses.replace(sink_options(broker, prefix), host=broker.host, port=port)
    try:
        async with MqttSink(options, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
            forwarder.bind(sink)
            replay = asyncio.create_task(forwarder.replay())
            await forwarder.forward([data(prefix, n) for n in range(1, 11)])  # broker down, no spool
            assert forwarder.lost_by_reason == {"spool_unavailable": 10}
            broker.start()
            await sink.wait_connected(10)
            with Subscriber(broker.host, broker.port, f"{prefix}/data/#") as subscriber:
                await forwarder.forward([data(prefix, n) for n in range(11, 14)])
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/data/t")) >= 3, 10)
            blocker.unlink()  # the disk is usable again
            await wait_until_async(lambda: forwarder.available, 5, "the spool to be opened again")
            broker.stop()
            await wait_until_async(lambda: not sink.connected, 10)
            await forwarder.forward([data(prefix, n) for n in range(14, 17)])
            assert forwarder.spooled_now == 3
            replay.cancel()
        await forwarder.close()
    finally:
        broker.close()


async def test_the_spool_keeps_the_encoders_historical_form_and_knows_no_payload_format(tmp_path: Path) -> None:
    """Store-and-forward asks the encoder for the replay form of each message; it never edits payloads itself,
    so an encoding that is not JSON is spooled as its encoder says."""
    spool = Spool(tmp_path / "spool.db", max_bytes=10**7)

    def replay_form(topic: str, payload: bytes) -> bytes:
        return b"H|" + topic.encode() + b"|" + payload

    forwarder = StoreAndForward(spool, window_wait_s=0.1, replay_per_s=100, historical=replay_form)
    await forwarder.store([("lines/rack", b"1 volts=3.7"), ("lines/rack", b"2 volts=3.8")])
    rows = spool.oldest(after_id=0, limit=10)
    assert [row.payload for row in rows] == [b"H|lines/rack|1 volts=3.7", b"H|lines/rack|2 volts=3.8"]
    await forwarder.close()
    spool.close()


async def test_a_hung_broker_with_three_connections_is_detected_on_each_and_everything_is_spooled(
    tmp_path: Path, prefix: str
) -> None:
    """Issue 10 defect 2 (kill -STOP on Mosquitto) with ``mqtt.connections: 3``: one wait of window_wait_s, then
    every batch goes to the spool as it comes; each connection finds its own stuck link by the PUBACK deadline
    (``mqtt_stuck``) and reconnects after SIGCONT; every message arrives, the spool empties."""
    with Mosquitto() as broker:
        spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
        forwarder = StoreAndForward(spool, window_wait_s=2.0, replay_per_s=5000, historical=historical)
        options = sink_options(broker, prefix, max_inflight=5, keepalive_s=60, puback_timeout_s=3.0)
        topics = [f"t{n}" for n in range(60)]  # spread over the three connections

        def batch(round_: int) -> list[tuple[str, bytes]]:
            return [data(prefix, round_, topic) for topic in topics]

        with structlog.testing.capture_logs() as logs:
            async with MqttFanOut(
                options, connections=3, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused
            ) as sink:
                forwarder.bind(sink)
                await sink.wait_connected(5)
                shares = Counter(route(topic, 3) for topic, _ in batch(0))
                assert len(shares) == 3 and min(shares.values()) > 5  # every window fills
                with Subscriber(broker.host, broker.port, f"{prefix}/data/#") as subscriber:
                    broker.pause()
                    try:
                        await forwarder.forward(batch(0))  # fills the windows, waits window_wait_s once

                        async def more_batches() -> None:
                            for round_ in range(1, 21):
                                await forwarder.forward(batch(round_))
                                await asyncio.sleep(0.05)

                        # Were each batch to wait window_wait_s, these would take 40 s.
                        await asyncio.wait_for(more_batches(), 15)
                        await wait_until_async(lambda: not sink.connected, 10, "a stuck link dropped")
                        assert forwarder.window_stuck_episodes == 1
                        await wait_until_async(
                            lambda: sum(entry["event"] == "mqtt_stuck" for entry in logs) == 3, 10, "all three"
                        )
                    finally:
                        broker.resume()
                    replay = asyncio.create_task(forwarder.replay())
                    await sink.wait_connected(20)
                    await wait_until_async(lambda: spool.count == 0 and sink.in_flight == 0, 30, "replay done")

                    def received() -> set[tuple[str, int]]:
                        return {(m.topic, orjson.loads(m.payload)["value"]) for m in subscriber.messages}

                    await wait_until_async(lambda: len(received()) >= 21 * 60, 20, "every message")
                    replay.cancel()
            await forwarder.keep_unacked()
            await forwarder.close()
    stuck = sorted(str(entry["client_id"]) for entry in logs if entry["event"] == "mqtt_stuck")
    assert stuck == sorted([options.client_id, f"{options.client_id}-2", f"{options.client_id}-3"])
    assert received() == {(f"{prefix}/data/{topic}", round_) for topic in topics for round_ in range(21)}


async def test_with_three_connections_a_stuck_window_stays_stuck_until_a_puback_comes(
    tmp_path: Path, prefix: str
) -> None:
    """Issue 10 defect 2 (kill -STOP on Mosquitto) with ``mqtt.connections: 3`` and one message per batch (a
    ``_batch`` device): a batch whose connection still had a free slot used to end the stuck episode, so the
    next batch for a full connection waited window_wait_s again, once per free slot of the other connections.
    Now only a PUBACK (fewer messages in flight) ends it: one wait, then every batch as it comes."""
    with Mosquitto() as broker:
        spool = Spool(tmp_path / "spool.db", max_bytes=10**7)
        forwarder = StoreAndForward(spool, window_wait_s=2.0, replay_per_s=5000, historical=historical)
        options = sink_options(broker, prefix, max_inflight=5, keepalive_s=60, puback_timeout_s=60)
        by_connection: dict[int, list[str]] = {0: [], 1: [], 2: []}
        for n in range(200):
            by_connection[route(f"{prefix}/data/t{n}", 3)].append(f"t{n}")
        async with MqttFanOut(options, connections=3, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused) as sink:
            forwarder.bind(sink)
            await sink.wait_connected(5)
            with Subscriber(broker.host, broker.port, f"{prefix}/data/#") as subscriber:
                broker.pause()
                try:
                    # Connection 0's window fills, the sixth message waits window_wait_s: stuck.
                    await forwarder.forward([data(prefix, 0, topic) for topic in by_connection[0][:6]])
                    assert forwarder.window_stuck_episodes == 1

                    async def single_message_batches() -> None:
                        for round_ in range(1, 9):
                            for index in (1, 2, 0):
                                await forwarder.forward([data(prefix, round_, by_connection[index][0])])

                    # The old rule waited window_wait_s about ten times here (20 s).
                    await asyncio.wait_for(single_message_batches(), 8)
                    assert forwarder.window_stuck_episodes == 1
                    assert sink.in_flight == 15
                finally:
                    broker.resume()
                replay = asyncio.create_task(forwarder.replay())
                await wait_until_async(lambda: spool.count == 0 and sink.in_flight == 0, 30, "replay done")
                # PUBACKs came: the window moves again and a new batch goes out live.
                await forwarder.forward([data(prefix, 99, "after")])
                await wait_until_async(lambda: bool(subscriber.on(f"{prefix}/data/after")), 10, "live again")
                assert not orjson.loads(subscriber.on(f"{prefix}/data/after")[0].payload).get("historical")
                received = {(m.topic, orjson.loads(m.payload)["value"]) for m in subscriber.messages}
                replay.cancel()
        await forwarder.keep_unacked()
        await forwarder.close()
    wanted = {(f"{prefix}/data/{topic}", 0) for topic in by_connection[0][:6]}
    wanted |= {(f"{prefix}/data/{by_connection[i][0]}", r) for r in range(1, 9) for i in range(3)}
    assert wanted <= received
