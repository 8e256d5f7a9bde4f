"""Event records with the PLC handshake, end to end: ``cellgate run`` on the stacker simulator and Mosquitto.

The stacker (Modbus TCP, its own process, sped up so a cell is finished every second or two) keeps a result FIFO;
the gateway reads each record, publishes it on ``.../stacker-01/_events/cell`` and writes its record id to
``Result.Ack`` only after the broker's PUBACK. The test reads the FIFO's ``Pending`` and ``Lost`` straight from the
simulator (pymodbus, not our client) and checks the stream with a persistent-session subscriber on a broker
with persistence, so every hole it sees is the gateway's.
"""

from __future__ import annotations

import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from pymodbus.client import ModbusTcpClient as PymodbusClient

from tests.support.gateway import DEMO_CONFIG, GatewayProcess
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sim import SimulatorProcess, free_port_run
from tests.support.waiting import wait_until

SPEEDUP = 30.0
"""Model seconds per second: a cell about every second."""
STACKER_PENDING = 1502
STACKER_LOST = 1504


@dataclass
class Rig:
    broker: Mosquitto
    subscriber: Subscriber
    config: Path
    env: dict[str, str]
    topic: str
    stacker_port: int
    workdir: Path

    def gateway(self) -> GatewayProcess:
        return GatewayProcess(config=self.config, env=self.env, state_dir=self.workdir / "state")

    def fifo(self) -> tuple[int, int]:
        """(Pending, Lost) of the stacker's result FIFO, read from the simulator."""
        client = PymodbusClient("127.0.0.1", port=self.stacker_port, timeout=3)
        try:
            assert client.connect()
            answer = client.read_input_registers(STACKER_PENDING, count=4, device_id=1)
            assert not answer.isError(), answer
            registers = answer.registers
        finally:
            client.close()
        return registers[0] << 16 | registers[1], registers[2] << 16 | registers[3]

    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.payload) for m in self.subscriber.on(self.topic)]


def stacker_map(destination: Path, port: int) -> Path:
    """config/demo.yaml's stacker (its result tags and its events block) on ``port``: the real FIFO tags."""
    demo = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    stacker = next(device for device in demo["devices"] if device["name"] == "stacker-01")
    stacker["port"] = port
    stacker["interval_ms"] = 200
    stacker["tags"] = [tag for tag in stacker["tags"] if tag["name"].startswith("result/")]
    stacker.pop("context", None)  # its context tags are not result tags
    assert stacker["events"]["cell"]["ack"] == {"tag": "result/ack", "value": "record_id"}
    demo["devices"] = [stacker]
    demo.pop("templates", None)
    destination.write_text(yaml.safe_dump(demo, sort_keys=False), encoding="utf-8")
    return destination


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    enterprise = f"ev{uuid.uuid4().hex[:8]}"
    modbus_port = free_port_run(3)
    sim = SimulatorProcess(only="modbus", modbus_port=modbus_port, channels=1, speedup=SPEEDUP)
    sim.start()
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(persistence=True, workdir=tmp_path / "broker")
    try:
        broker.start()
        stacker_port = sim.modbus_ports["stacker-01"]
        config = stacker_map(tmp_path / "map.yaml", stacker_port)
        topic = f"{enterprise}/dunkirk/cell-assembly/line-1/stacker-01/_events/cell"
        subscriber = Subscriber(broker.host, broker.port, topic, client_id=f"sub-{enterprise}", session=True)
        subscriber.start()
        time.sleep(1.5)  # autosave_interval 1: the persistent session is on disk before the broker restarts
        env = {"CELLGATE_MQTT__URL": broker.url, "CELLGATE_GATEWAY__ENTERPRISE": enterprise}
        yield Rig(broker, subscriber, config, env, topic, stacker_port, tmp_path)
        subscriber.stop()
    finally:
        broker.close()
        sim.close()


def record_ids(records: list[dict[str, Any]]) -> list[int]:
    return [int(record["record_id"]) for record in records]


def assert_unbroken(ids: list[int]) -> None:
    """Every record id from the first to the last arrived (duplicates allowed: de-duplicated by record_id)."""
    unique = sorted(set(ids))
    missing = sorted(set(range(unique[0], unique[-1] + 1)) - set(unique))
    assert not missing, f"records missing: {missing}"


def scrape(gateway: GatewayProcess) -> str:
    """The gateway's /metrics text (its listener is on a port the system picked, named in its log)."""
    listen = str(gateway.wait_for_event("http_listening", 10)["listen"])
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as response:
        return str(response.read().decode())


def acks(gateway: GatewayProcess) -> list[dict[str, object]]:
    return [event for event in gateway.events() if event.get("event") == "plc_write"]


def test_records_acknowledged_after_puback_through_a_broker_outage_and_a_gateway_kill(rig: Rig) -> None:
    gateway = rig.gateway()
    gateway.start()
    try:
        # 1. Records arrive, each with its own seq, and the FIFO is acknowledged as fast as cells come.
        wait_until(lambda: len(rig.records()) >= 3, 60, "three cell records")
        records = rig.records()
        first = records[0]
        assert first["event"] == "cell" and first["quality"] == "good"
        assert set(first) == {"event", "ts", "seq", "record_id", "fields", "quality"}
        fields = first["fields"]
        assert fields["record_id"] == first["record_id"]
        assert str(fields["cell_id"]).startswith("CELL-S1-") and str(fields["cathode_roll_id"]).startswith("CL01-R")
        assert [r["seq"] for r in records] == list(range(records[0]["seq"], records[0]["seq"] + len(records)))
        wait_until(lambda: rig.fifo()[0] <= 1, 30, "the FIFO to be acknowledged down")
        written = acks(gateway)
        assert written and all(w["result"] == "ok" and w["tag"] == "result/ack" for w in written)
        metrics = scrape(gateway)
        assert 'cellgate_event_records_total{device="stacker-01",event="cell"}' in metrics
        assert 'cellgate_plc_writes_total{device="stacker-01",result="ok"}' in metrics

        # 2. The broker goes away: no PUBACK, so no ack; the PLC keeps every new record in its FIFO.
        rig.broker.stop()
        time.sleep(1.0)  # an ack already on its way may still land
        acked_before = len(acks(gateway))
        pending_before = rig.fifo()[0]
        wait_until(lambda: rig.fifo()[0] >= pending_before + 3, 60, "records to pile up in the FIFO")
        assert len(acks(gateway)) == acked_before, "nothing is acknowledged while the broker is away"
        rig.broker.start()
        wait_until(lambda: rig.fifo()[0] <= 1, 90, "the backlog to drain once the broker is back")
        assert len(acks(gateway)) >= acked_before + 3

        # 3. The gateway is killed (no clean stop) and started again: the record it had not acknowledged is
        # published again (a duplicate by record_id), none is lost.
        gateway.send_signal(signal.SIGKILL)
        gateway.stop()
        gateway = rig.gateway()
        gateway.start()
        wait_until(lambda: rig.fifo()[0] <= 1 and len(acks(gateway)) >= 2, 60, "the restarted gateway to ack")
    finally:
        assert gateway.stop() == 0
    ids = record_ids(rig.records())
    assert_unbroken(ids)
    assert rig.fifo()[1] == 0, "no record was refused for a full FIFO"
    # Every acknowledged id had reached the subscriber (the broker had it before the ack was written).
    assert {int(str(w["value"])) for w in acks(gateway)} <= set(ids)
