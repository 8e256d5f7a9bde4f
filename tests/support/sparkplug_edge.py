"""A Sparkplug edge node as ``cellgate run`` assembles it, for tests against a real broker: the session hooks on the
MQTT connection, store-and-forward with its SQLite spool and the host gate, the spool's replay running."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.encoders.sparkplug import SparkplugDeviceEncoder, SparkplugEdgeNode
from gateway.mqtt.connection import MqttSink
from gateway.schema import Quality, Sample, TagMeta
from gateway.seq_reservation import SeqFileStore
from gateway.sinks.spool import Spool
from gateway.sinks.store_forward import StoreAndForward
from gateway.sparkplug_session import HostGate, SparkplugSession, historical_form
from tests.support.mosquitto import Mosquitto
from tests.support.sink import sparkplug_options


@dataclass
class EdgeNode:
    node: SparkplugEdgeNode
    session: SparkplugSession
    devices: dict[str, SparkplugDeviceEncoder]
    sink: MqttSink
    forwarder: StoreAndForward
    spool: Spool
    catalogues: Mapping[str, Sequence[TagMeta]]

    def ddata(self, device: str, value: float | str) -> list[tuple[str, bytes]]:
        """The DDATA of one good sample of the device's first tag, now."""
        now = time.time()
        sample = Sample(device, self.catalogues[device][0].tag, value, Quality.GOOD, now)
        return [(m.topic, m.payload) for m in self.devices[device].encode([sample], now)]


@contextlib.asynccontextmanager
async def edge_node(
    broker: Mosquitto, tmp_path: Path, *, catalogues: Mapping[str, Sequence[TagMeta]], **options: Any
) -> AsyncIterator[EdgeNode]:
    """Edge node ``G/edge-1`` with these devices (name -> tags), every one alive (born) from the start; ``options``
    go to the MQTT connection (``sparkplug_options``)."""
    node = SparkplugEdgeNode(group_id="G", edge_node_id="edge-1")
    session = SparkplugSession(node, bd_seq_files=SeqFileStore(tmp_path))
    encoders = {}
    for name, catalogue in catalogues.items():
        encoder = SparkplugDeviceEncoder(node=node, device=name, catalogue=list(catalogue))
        encoder.birth(time.time())
        session.devices[name] = encoders[name] = encoder
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000_000)
    forwarder = StoreAndForward(spool, window_wait_s=0.5, replay_per_s=1000, historical=historical_form(node, None))
    sink = MqttSink(
        sparkplug_options(broker, session, puback_timeout_s=1.0, **options),
        on_ack=forwarder.on_ack,
        on_refused=forwarder.on_refused,
    )
    forwarder.bind(HostGate(sink, session, on_refused=forwarder.on_refused))
    session.bind(sink.rebirth, send=sink.send_session_messages)
    async with sink:
        replay = asyncio.get_running_loop().create_task(forwarder.replay())
        try:
            yield EdgeNode(node, session, encoders, sink, forwarder, spool, catalogues)
        finally:
            replay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replay
    await forwarder.close()
    spool.close()
