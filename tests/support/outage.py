"""The rig of the outage tests: the simulators, a Mosquitto with persistence and an independent
persistent-session subscriber, plus what they check in the stream (tag messages per topic, seq holes)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import orjson

from tests.support.gateway import retarget_demo_config
from tests.support.mosquitto import Mosquitto, Received, Subscriber
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run


@dataclass
class DemoLine:
    """The running parts; ``env`` points a gateway at the broker under the test's own enterprise."""

    broker: Mosquitto
    subscriber: Subscriber
    config: Path
    env: dict[str, str]
    prefix: str
    workdir: Path


LineT = TypeVar("LineT", bound=DemoLine)


@contextlib.contextmanager
def demo_line(tmp_path: Path, enterprise: str, rig_type: type[LineT]) -> Iterator[LineT]:
    """Both simulator processes, a persistent Mosquitto and a persistent-session subscriber to the demo map's
    topics: what the gateway publishes while the subscriber reconnects is queued for it, so any hole it sees
    is the gateway's."""
    modbus_port = free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET)
    opcua_sim = SimulatorProcess(only="opcua", opcua_port=0)
    modbus_sim = SimulatorProcess(only="modbus", modbus_port=modbus_port)
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(persistence=True, workdir=tmp_path / "broker")
    try:
        # The two simulator processes start side by side: each spends seconds building its servers.
        with ThreadPoolExecutor(max_workers=2) as pool:
            for started in [pool.submit(opcua_sim.start), pool.submit(modbus_sim.start)]:
                started.result()
        broker.start()
        opcua_port = int(opcua_sim.opcua_endpoint.rstrip("/").rsplit(":", 1)[1])
        config = retarget_demo_config(opcua_port=opcua_port, modbus_port=modbus_port, destination=tmp_path / "map.yaml")
        prefix = f"{enterprise}/dunkirk"
        subscriber = Subscriber(broker.host, broker.port, f"{prefix}/#", client_id=f"sub-{enterprise}", session=True)
        subscriber.start()
        time.sleep(1.5)  # autosave_interval 1: the persistent session is on disk before any broker restart
        env = {"CELLGATE_MQTT__URL": broker.url, "CELLGATE_GATEWAY__ENTERPRISE": enterprise}
        yield rig_type(broker, subscriber, config, env, prefix, tmp_path)
        subscriber.stop()
    finally:
        broker.close()
        opcua_sim.close()
        modbus_sim.close()


def data_messages(messages: list[Received]) -> dict[str, list[dict[str, object]]]:
    """Tag messages (not _status/_meta/_gateway) per topic, in arrival order, duplicates included."""
    out: dict[str, list[dict[str, object]]] = defaultdict(list)
    for message in messages:
        last = message.topic.rsplit("/", 1)[-1]
        if not message.payload or last.startswith("_") or "/_gateway/" in message.topic:
            continue
        out[message.topic].append(orjson.loads(message.payload))
    return out


def holes(
    per_topic: dict[str, list[dict[str, object]]], *, since: dict[str, int] | None = None
) -> dict[str, list[int]]:
    """Per topic, the seq numbers missing between the first (or ``since``) and the last received (duplicates
    allowed)."""
    missing: dict[str, list[int]] = {}
    for topic, bodies in per_topic.items():
        seqs = {int(str(body["seq"])) for body in bodies}
        low = max(min(seqs), (since or {}).get(topic, 0))
        gap = sorted(set(range(low, max(seqs) + 1)) - seqs)
        if gap:
            missing[topic] = gap
    return missing
