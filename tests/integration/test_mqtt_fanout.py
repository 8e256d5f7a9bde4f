"""``mqtt.connections``: data over several connections to a real Mosquitto with its stock window.

The broker runs with ``max_inflight_messages 20``, Mosquitto's default, which it announces to MQTT 5 clients
as their Receive Maximum: each connection may have 20 messages unacknowledged. The tests check what must
not change with N connections: per-topic order, nothing lost (also across a broker restart, with
store-and-forward), one will and one status, on the first connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.encoders.uns_json import historical
from gateway.mqtt.wire import Publish
from gateway.sinks.fanout import MqttFanOut, route
from gateway.sinks.spool import Spool
from gateway.sinks.store_forward import StoreAndForward
from tests.support.mosquitto import Mosquitto, Received, Subscriber
from tests.support.mqtt_broker import ScriptedBroker, ack_all
from tests.support.mqtt_broker import options as scripted_options
from tests.support.sink import OFFLINE, ONLINE, sink_options
from tests.support.waiting import wait_until_async

STOCK_WINDOW = ["max_inflight_messages 20"]
CONNECTIONS = 3
TOPICS = 30


@pytest.fixture
def stock_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """Persistence on, so the persistent-session subscriber misses nothing across a restart."""
    (tmp_path / "broker").mkdir()
    with Mosquitto(persistence=True, workdir=tmp_path / "broker", extra_config=STOCK_WINDOW) as running:
        yield running


def batch(prefix: str, start: int, cycles: int) -> list[tuple[str, bytes]]:
    """``cycles`` poll cycles of TOPICS per-tag messages, ``seq`` counting up per topic from ``start``."""
    return [
        (f"{prefix}/data/t{tag:02d}", orjson.dumps({"value": seq, "seq": seq}))
        for seq in range(start, start + cycles)
        for tag in range(TOPICS)
    ]


def seqs_by_topic(messages: list[Received], prefix: str) -> dict[str, list[tuple[int, bool]]]:
    """Per data topic, (seq, historical) in arrival order."""
    out: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    for message in messages:
        if message.topic.startswith(f"{prefix}/data/"):
            body = orjson.loads(message.payload)
            out[message.topic].append((int(body["seq"]), bool(body.get("historical"))))
    return out


def test_topics_are_spread_over_every_connection() -> None:
    used = {route(topic, CONNECTIONS) for topic, _ in batch("cgtest/spread", 1, 1)}
    assert used == set(range(CONNECTIONS)), "the test's topics must exercise every connection"


async def test_order_per_topic_and_nothing_lost_over_three_stock_windows(stock_broker: Mosquitto, prefix: str) -> None:
    options = sink_options(stock_broker, prefix)
    subscriber = Subscriber(stock_broker.host, stock_broker.port, f"{prefix}/#")
    subscriber.start()
    try:
        async with MqttFanOut(options, connections=CONNECTIONS) as output:
            await output.wait_connected(10)
            cycles, per_batch = 100, 10
            for start in range(1, cycles + 1, per_batch):
                taken = await output.offer_many(batch(prefix, start, per_batch), wait_s=5)
                assert taken == per_batch * TOPICS
            assert await output.flush(20)
            # Every connection carried data.
            assert all(sink.delivered > 0 for sink in output.connections)
            assert output.delivered == cycles * TOPICS
            assert output.spooled_twice == 0
            await wait_until_async(
                lambda: len(seqs_by_topic(subscriber.messages, prefix)) == TOPICS
                and all(len(v) >= cycles for v in seqs_by_topic(subscriber.messages, prefix).values()),
                20,
                "every message at the subscriber",
            )
        per_topic = seqs_by_topic(subscriber.messages, prefix)
        for topic, seqs in per_topic.items():
            assert [seq for seq, _ in seqs] == list(range(1, cycles + 1)), f"{topic}: out of order or lost"
        # One status: the primary's online at connect, its offline at close; the other connections have no will.
        # The offline status is acknowledged before close returns; the subscriber gets it a moment later.
        status_topic = f"{prefix}/_gateway/status"
        await wait_until_async(lambda: len(subscriber.on(status_topic)) >= 2, 20, "the offline status")
        await asyncio.sleep(0.3)  # room for a second will, had another connection one
        assert [m.payload for m in subscriber.on(status_topic)] == [ONLINE, OFFLINE]
        log = stock_broker.log_text()
        for index in range(2, CONNECTIONS + 1):
            assert f"as {options.client_id}-{index} " in log, f"connection {index} not seen by the broker"
    finally:
        subscriber.stop()


async def test_broker_restart_mid_stream_loses_nothing_and_keeps_live_order(
    stock_broker: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    options = sink_options(stock_broker, prefix)
    subscriber = Subscriber(
        stock_broker.host, stock_broker.port, f"{prefix}/data/#", client_id=f"sub-{prefix[-6:]}", session=True
    )
    subscriber.start()
    await asyncio.sleep(1.5)  # autosave_interval 1: the subscriber's session is on disk before the restart
    spool = Spool(tmp_path / "spool.db", max_bytes=10**8)
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=20_000, historical=historical)
    output = MqttFanOut(options, connections=CONNECTIONS, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused)
    forwarder.bind(output)
    cycles = 0
    try:
        async with output:
            await output.wait_connected(10)
            replay = asyncio.create_task(forwarder.replay())

            async def produce(until: asyncio.Event) -> None:
                nonlocal cycles
                while not until.is_set():  # a poll cycle of every topic every 20 ms
                    await forwarder.forward(batch(prefix, cycles + 1, 1))
                    cycles += 1
                    await asyncio.sleep(0.02)

            stop = asyncio.Event()
            producer = asyncio.create_task(produce(stop))
            await asyncio.sleep(1.0)
            await asyncio.to_thread(stock_broker.restart, down_s=1.0)
            await wait_until_async(lambda: output.connected, 15, "every connection back")
            await asyncio.sleep(1.0)
            stop.set()
            await producer
            assert forwarder.spooled_total > 0, "the outage must have sent live data to the spool"
            await wait_until_async(lambda: spool.count == 0 and output.in_flight == 0, 30, "the spool replayed")
            replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay

            def complete() -> bool:
                per_topic = seqs_by_topic(subscriber.messages, prefix)
                return len(per_topic) == TOPICS and all(
                    {seq for seq, _ in seqs} >= set(range(1, cycles + 1)) for seqs in per_topic.values()
                )

            await wait_until_async(complete, 20, "every seq at the subscriber, live or replayed")
        per_topic = seqs_by_topic(subscriber.messages, prefix)
        for topic, seqs in per_topic.items():
            live = [seq for seq, was_spooled in seqs if not was_spooled]
            replayed = [seq for seq, was_spooled in seqs if was_spooled]
            assert live == sorted(live), f"{topic}: live messages out of order"
            assert replayed == sorted(replayed), f"{topic}: replayed messages out of order"
        await forwarder.keep_unacked()
        assert spool.count == 0
    finally:
        subscriber.stop()
        await forwarder.close()


async def test_a_connection_that_stops_early_ends_the_taken_prefix_and_counts_what_goes_twice() -> None:
    """One connection's broker side never acknowledges: its window fills, the others take all of theirs. The
    batch counts as taken up to the first message the stuck connection did not take (the caller spools from
    there), and the messages after it that other connections took are counted as sent twice."""
    stuck = 1

    def ack(publish: Publish) -> int | None:
        return None if route(publish.topic, CONNECTIONS) == stuck else 0

    async with ScriptedBroker(ack=ack) as broker:
        output = MqttFanOut(scripted_options(broker, max_inflight=5), connections=CONNECTIONS)
        async with output:
            await output.wait_connected(5)
            messages = batch("edge", 1, 2)  # 60 messages over 30 topics
            taken = await output.offer_many(messages, wait_s=0.2)
            routes = [route(topic, CONNECTIONS) for topic, _ in messages]
            first_left = [n for n, index in enumerate(routes) if index == stuck][5]  # its window holds 5
            assert taken == first_left
            assert output.spooled_twice == sum(1 for index in routes[first_left:] if index != stuck)
            assert output.connections[stuck].in_flight == 5
            broker.ack = ack_all
            broker.release_held()
            assert await output.flush(5)
