"""The MQTT connection with the Sparkplug session hooks, against a real Mosquitto, decoded by Eclipse Tahu.

Data a lost connection left without a PUBACK must not go out again with its old seq ahead of the next NBIRTH: it
follows the births of the new connection, numbered in the new run, every metric historical
(tck-id-payloads-sequence-num-incrementing, tck-id-payloads-dbirth-order, tck-id-payloads-metric-historical,
tck-id-topics-nbirth-bdseq-matching for the bdSeq of the new CONNECT).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.encoders.sparkplug import SparkplugDeviceEncoder, SparkplugEdgeNode
from gateway.mqtt.connection import MqttSink
from gateway.schema import Quality, Sample, TagMeta
from gateway.seq_reservation import SeqFileStore
from gateway.sparkplug_session import SparkplugSession
from tests.interop.sparkplug_tahu import TAHU_AVAILABLE, TAHU_MISSING, HostView, decode_stream
from tests.support.mosquitto import Received, persistent_broker_and_host
from tests.support.sink import sparkplug_options

pytestmark = pytest.mark.skipif(not TAHU_AVAILABLE, reason=TAHU_MISSING)


def count(messages: list[Received], kind: str) -> int:
    return sum(1 for message in messages if message.topic.split("/")[2] == kind)


async def test_unacknowledged_data_follows_the_next_births_renumbered_and_historical(tmp_path: Path) -> None:
    async with persistent_broker_and_host(tmp_path, "spBv1.0/#", "host-session-test") as (broker, host):
        node = SparkplugEdgeNode(group_id="G", edge_node_id="edge-1")
        session = SparkplugSession(node, bd_seq_files=SeqFileStore(tmp_path))
        catalogue = [TagMeta(tag="v", type="float32")]
        device = SparkplugDeviceEncoder(node=node, device="d1", catalogue=catalogue, alias_base=0)
        session.devices["d1"] = device
        device.birth(time.time())  # its link is up: the births of every connection carry it
        options = sparkplug_options(broker, session)

        def ddata(value: float) -> list[tuple[str, bytes]]:
            now = time.time()
            return [(m.topic, m.payload) for m in device.encode([Sample("d1", "v", value, Quality.GOOD, now)], now)]

        async with MqttSink(options) as sink:
            session.bind(sink.rebirth)
            await sink.wait_connected(10)
            await sink.publish_many(ddata(1.0))
            await host.wait_for(lambda ms: count(ms, "DDATA") == 1, timeout_s=10)
            broker.pause()  # no PUBACK for what follows
            await sink.publish_many(ddata(2.0) + ddata(3.0))
            await asyncio.sleep(0.3)
            assert sink.in_flight == 2
            broker.restart(kill=True)  # the link is lost with both unacknowledged
            messages = await host.wait_for(lambda ms: count(ms, "DDATA") >= 3, timeout_s=20)
            await sink.publish_many(ddata(4.0))
            messages = await host.wait_for(lambda ms: count(ms, "DDATA") >= 4, timeout_s=10)

    view = HostView(node_topic="spBv1.0/G/{}/edge-1")
    decoded = decode_stream((m.topic, m.payload) for m in messages)
    kinds = []
    for topic, payload in decoded:
        view.read(topic, payload)  # seq +1 throughout, NBIRTH 0, DDATA only after the DBIRTH
        historical = [metric.get("isHistorical", False) for metric in payload["metrics"]]
        kinds.append((topic.split("/")[2], payload.get("seq"), historical))
    assert view.nbirths == [0, 1]  # the second CONNECT's bdSeq
    assert [kind for kind, _, _ in kinds] == [
        "NBIRTH", "DBIRTH", "DDATA", "NBIRTH", "DBIRTH", "DDATA", "DDATA", "DDATA",
    ]
    assert [seq for _, seq, _ in kinds] == [0, 1, 2, 0, 1, 2, 3, 4]
    assert view.values["d1/v"] == [1.0, 2.0, 3.0, 4.0]
    assert [flags for kind, _, flags in kinds if kind == "DDATA"] == [[False], [True], [True], [False]]
