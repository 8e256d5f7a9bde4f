"""Sparkplug store-and-forward against a real Mosquitto, every message decoded by Eclipse Tahu and read as a host
(tests/interop/sparkplug_tahu.py HostView): the MQTT connection with the Sparkplug session, store-and-forward and
its SQLite spool, as ``cellgate run`` puts them together.

Sparkplug 3.0 statements checked (besides those HostView checks on every message):
- tck-id-payloads-dbirth-order / tck-id-topics-ddata-...: a host never sees DDATA of a device not born in the current
  session. Data spooled (or left unacknowledged) while a device was alive, replayed after a reconnect when that
  device's PLC link is down, follows a DBIRTH of the device (its last values, every metric Quality bad), and a
  DDEATH follows the replay (tck-id-operational-behavior-device-ddeath). Spooled data of a device the running
  gateway has no catalogue for (an earlier run's map) cannot be born: it is kept as a dead letter, not sent.
- tck-id-payloads-sequence-num-incrementing: a DDATA the broker cannot take (over the maximum packet size) is not
  sent and leaves no hole in seq; it is counted and kept in the spool's dead-letter table, historical.
- tck-id-payloads-metric-historical: replayed metrics carry is_historical.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.encoders.sparkplug import QUALITY_CODES, SparkplugDeviceEncoder, SparkplugEdgeNode
from gateway.schema import Quality, Sample, TagMeta
from gateway.sparkplug_session import UNKNOWN_DEVICE
from tests.interop.sparkplug_tahu import TAHU_AVAILABLE, TAHU_MISSING, HostView, decode_stream
from tests.support.mosquitto import Mosquitto, Received, Subscriber, persistent_broker_and_host
from tests.support.sparkplug_edge import edge_node

pytestmark = pytest.mark.skipif(not TAHU_AVAILABLE, reason=TAHU_MISSING)

DEADLINE_S = 20.0  # generous: other tests share the machine
TWO_FLOAT_DEVICES = {"d1": [TagMeta(tag="v", type="float32")], "d2": [TagMeta(tag="v", type="float32")]}


def kind(message: Received) -> str:
    parts = message.topic.split("/")
    return parts[2] if len(parts) == 4 else f"{parts[2]}:{parts[4]}"


def host_view(messages: list[Received]) -> tuple[HostView, list[tuple[str, dict[str, Any]]]]:
    """The stream read as a host does (asserting every rule); a QoS 1 duplicate from the broker read once."""
    seen: set[tuple[str, bytes]] = set()
    unique = []
    for m in messages:
        if (m.topic, m.payload) not in seen:
            seen.add((m.topic, m.payload))
            unique.append(m)
    view = HostView(node_topic="spBv1.0/G/{}/edge-1")
    decoded = decode_stream((m.topic, m.payload) for m in unique)
    for topic, payload in decoded:
        view.read(topic, payload)
    return view, decoded


async def test_replayed_data_of_a_device_whose_link_is_down_is_born_for_the_replay_and_dies_after(
    tmp_path: Path,
) -> None:
    async with (
        persistent_broker_and_host(tmp_path, "spBv1.0/#", "host-replay-test") as (broker, host),
        edge_node(broker, tmp_path, catalogues=TWO_FLOAT_DEVICES) as edge,
    ):
        await edge.sink.wait_connected(10)
        await edge.forwarder.forward(edge.ddata("d1", 1.0) + edge.ddata("d2", 1.0))
        await host.wait_for(lambda ms: sum(kind(m).startswith("DDATA") for m in ms) == 2, DEADLINE_S)
        broker.pause()  # d1's next DDATA is never acknowledged
        await edge.forwarder.forward(edge.ddata("d1", 2.0))
        await asyncio.sleep(0.2)
        broker.stop(kill=True)  # the link is lost with it unacknowledged
        deadline = time.monotonic() + DEADLINE_S
        while edge.sink.connected:
            assert time.monotonic() < deadline, "the sink never saw the broker go"
            await asyncio.sleep(0.05)
        # During the outage: more data of both (spooled), then d1's PLC link drops (its DDEATH is not spooled).
        await edge.forwarder.forward(edge.ddata("d1", 3.0) + edge.ddata("d2", 3.0))
        death = edge.devices["d1"].death(time.time())
        await edge.forwarder.forward([(death.topic, death.payload)])
        # A row an earlier run with another tag map spooled: a device this one does not know.
        earlier_node = SparkplugEdgeNode(group_id="G", edge_node_id="edge-1")
        catalogue = [TagMeta(tag="v", type="float32")]
        earlier = SparkplugDeviceEncoder(node=earlier_node, device="gone", catalogue=catalogue)
        earlier.birth(time.time())
        now = time.time()
        spooled = earlier.encode([Sample("gone", "v", 9.0, Quality.GOOD, now)], now)
        await edge.forwarder.store([(m.topic, m.payload) for m in spooled])
        assert edge.spool.count == 3
        broker.start()
        # After the reconnect: NBIRTH and d2's DBIRTH; d1's unacknowledged and spooled DDATA each come after a
        # DBIRTH of d1 (it is not alive: no DBIRTH of its own), and d1's DDEATH once its replay is over.
        messages = await host.wait_for(lambda ms: any(kind(m) == "DDEATH:d1" for m in ms), DEADLINE_S)
        await edge.forwarder.forward(edge.ddata("d2", 4.0))
        messages = await host.wait_for(lambda ms: sum(kind(m) == "DDATA:d2" for m in ms) == 3, DEADLINE_S)
        assert edge.session.replay_births == 1
        deadline = time.monotonic() + DEADLINE_S
        while edge.spool.dead_letter_counts() != {UNKNOWN_DEVICE: 1}:  # kept at the next flush (0.5 s)
            assert time.monotonic() < deadline, edge.spool.dead_letter_counts()
            await asyncio.sleep(0.1)
        assert edge.spool.count == 0

    view, decoded = host_view(messages)  # fails on DDATA of a device not born, a seq hole or repeat
    stream = [(topic.split("/", 4)[2] + ("" if topic.count("/") == 3 else ":" + topic.split("/")[4]), payload)
              for topic, payload in decoded]
    after_reconnect = [name for name, _ in stream][[name for name, _ in stream].index("NBIRTH", 1):]
    assert after_reconnect == ["NBIRTH", "DBIRTH:d2", "DBIRTH:d1", "DDATA:d1", "DDATA:d1", "DDATA:d2", "DDEATH:d1",
                               "DDATA:d2"]
    assert view.values["d1/v"] == [1.0, 2.0, 3.0]
    assert view.values["d2/v"] == [1.0, 3.0, 4.0]
    # The DBIRTH for the replay: d1's last value, quality bad (its link is down); the replayed data is historical.
    rebirth = [payload for name, payload in stream if name == "DBIRTH:d1"][-1]
    (metric,) = rebirth["metrics"]
    assert metric["value"] == 3.0
    assert metric["properties"]["Quality"]["value"] == QUALITY_CODES[Quality.BAD]
    replayed = [payload for name, payload in stream[-6:-2] if name.startswith("DDATA")]
    assert all(m.get("isHistorical") for payload in replayed for m in payload["metrics"])
    assert view.born == {"d2"}


async def test_a_ddata_over_the_maximum_packet_size_leaves_no_seq_hole_and_is_kept_as_a_dead_letter(
    tmp_path: Path,
) -> None:
    with Mosquitto() as broker:
        host = Subscriber(broker.host, broker.port, "spBv1.0/#")
        host.start()
        try:
            async with edge_node(broker, tmp_path, catalogues={"d1": [TagMeta(tag="v", type="string")]},
                                 max_packet_size=1000) as edge:
                await edge.sink.wait_connected(10)
                await edge.forwarder.forward(edge.ddata("d1", "a"))
                await edge.forwarder.forward(edge.ddata("d1", "x" * 2000))  # over max_packet_size: refused
                await edge.forwarder.forward(edge.ddata("d1", "b"))
                # Also when the too large one is a replay from the spool.
                await edge.forwarder.store(edge.ddata("d1", "y" * 2000))
                deadline = time.monotonic() + DEADLINE_S
                while edge.forwarder.refused_by_reason != {"packet_too_large": 2}:
                    assert time.monotonic() < deadline, edge.forwarder.refused_by_reason
                    await asyncio.sleep(0.05)
                await edge.forwarder.forward(edge.ddata("d1", "c"))
                messages = await host.wait_for(lambda ms: sum(kind(m) == "DDATA:d1" for m in ms) == 3, DEADLINE_S)
                assert edge.sink.refused_by_reason == {"packet_too_large": 2}
                while edge.spool.dead_letter_counts() != {"packet_too_large": 2}:  # kept at the next flush (0.5 s)
                    assert time.monotonic() < deadline, edge.spool.dead_letter_counts()
                    await asyncio.sleep(0.1)
                assert edge.spool.count == 0  # the refused replay left the message table for the dead letters
        finally:
            host.stop()

    view, decoded = host_view(messages)  # seq +1 throughout: the refused DDATA used no number
    assert view.values["d1/v"] == ["a", "b", "c"]
    assert [payload["seq"] for _, payload in decoded] == [0, 1, 2, 3, 4]


async def test_a_ddeath_of_a_device_not_born_in_the_new_session_never_reaches_the_host(tmp_path: Path) -> None:
    """Two PLC links drop across a broker restart: d2's DDEATH is in flight (the broker holds its PUBACK) and d1's is
    still queued (encoded, not yet handed to the connection) when the link to the broker is lost. The births after
    the reconnect have neither device (both links are down), so neither DDEATH may follow them: the one in flight is
    superseded, the queued one is dropped when it reaches the connection (counted, not spooled, not refused)."""
    async with (
        persistent_broker_and_host(tmp_path, "spBv1.0/#", "host-lone-ddeath-test") as (broker, host),
        edge_node(broker, tmp_path, catalogues=TWO_FLOAT_DEVICES) as edge,
    ):
        await edge.sink.wait_connected(10)
        await edge.forwarder.forward(edge.ddata("d1", 1.0) + edge.ddata("d2", 1.0))
        await host.wait_for(lambda ms: sum(kind(m).startswith("DDATA") for m in ms) == 2, DEADLINE_S)
        broker.pause()  # no PUBACK from here on
        in_flight = edge.devices["d2"].death(time.time())
        await edge.forwarder.forward([(in_flight.topic, in_flight.payload)])
        queued = edge.devices["d1"].death(time.time())  # d1's link drops too; its DDEATH waits in the queue
        broker.restart(kill=True)
        await host.wait_for(lambda ms: sum(kind(m) == "NBIRTH" for m in ms) == 2, DEADLINE_S)
        await edge.forwarder.forward([(queued.topic, queued.payload)])  # reaches the new connection
        # d1's link comes back: its DBIRTH and data show where the DDEATH would have been on the wire.
        birth = edge.devices["d1"].link_changed(connected=True, now=time.time())
        assert birth is not None
        await edge.forwarder.forward([(birth.topic, birth.payload), *edge.ddata("d1", 2.0)])
        messages = await host.wait_for(lambda ms: sum(kind(m) == "DDATA:d1" for m in ms) == 2, DEADLINE_S)
        refused, spooled = dict(edge.forwarder.refused_by_reason), edge.spool.count

    view, decoded = host_view(messages)  # fails on a DDEATH (or DDATA) of a device not born
    names = [topic.split("/", 2)[2] for topic, _ in decoded]
    after_reconnect = names[names.index("NBIRTH/edge-1", 1):]
    assert after_reconnect == ["NBIRTH/edge-1", "DBIRTH/edge-1/d1", "DDATA/edge-1/d1"]
    assert view.ddeaths == {}
    assert view.born == {"d1"}
    # The dropped DDEATH is settled as delivered: counted, neither refused nor spooled.
    assert edge.session.dropped == {"ddeath_not_born": 1}
    assert (refused, spooled) == ({}, 0)
