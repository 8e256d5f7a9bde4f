"""The runtime in-process on real parts: a pymodbus server (two unit ids on one port) -> Gateway -> Mosquitto.

Covers what the e2e test with the simulators cannot pin down exactly: batch payloads, NaN, Modbus exception
responses, range checks, two units sharing one connection, and a clean stop with the offline status.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from pathlib import Path

import orjson

from gateway.runtime import Gateway
from gateway.seq_reservation import SNAPSHOT_FILES, SeqFileStore, SeqSnapshot, decode_snapshot, read_slots
from gateway.sinks.spool import Spool
from gateway.tagmap import load_plant_from_text
from tests.support.modbus import encode_registers, free_tcp_port, sim_device, tcp_server
from tests.support.mosquitto import Mosquitto, Received, Subscriber, retained_snapshot

FC_HOLDING = 3

TAGMAP = """
gateway: {{id: gw-rt, enterprise: {enterprise}, site: s1}}
mqtt: {{url: "mqtt://127.0.0.1:{broker_port}"}}
devices:
  - name: rack
    area: formation
    line: l1
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    unit_id: 1
    interval_ms: 100
    publish: batch
    tags:
      - {{name: voltage, address: 0, type: float32, unit: V}}
      - {{name: temp, address: 2, type: int16, scale: 0.1, unit: Cel, min: -20, max: 80}}
      - {{name: broken, address: 4, type: float32}}
      - {{name: missing, address: 150, type: uint16}}
  - name: cell
    area: formation
    line: l1
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    unit_id: 2
    interval_ms: 100
    tags:
      - {{name: soc, address: 0, type: uint16, unit: "%", min: 0, max: 100}}
      - {{name: label, address: 1, type: string, length: 3}}
"""


def batches(messages: list[Received], topic: str) -> list[dict[str, object]]:
    return [orjson.loads(m.payload) for m in messages if m.topic == topic]


async def test_batch_per_tag_bad_values_shared_connection_and_clean_stop(tmp_path: Path) -> None:
    enterprise = f"rt{uuid.uuid4().hex[:8]}"
    modbus_port = free_tcp_port()
    with Mosquitto() as broker:
        plant = load_plant_from_text(
            TAGMAP.format(enterprise=enterprise, broker_port=broker.port, modbus_port=modbus_port),
            filename="runtime.yaml",
            environ={},
        )
        prefix = f"{enterprise}/s1/formation/l1"
        subscriber = Subscriber(broker.host, broker.port, f"{enterprise}/#")
        subscriber.start()
        try:
            async with tcp_server([sim_device(1), sim_device(2)], modbus_port) as server:
                await server.async_setValues(1, FC_HOLDING, 0, encode_registers(3.5, "float32"))
                await server.async_setValues(1, FC_HOLDING, 2, encode_registers(250, "int16"))
                await server.async_setValues(1, FC_HOLDING, 4, encode_registers(float("nan"), "float32"))
                await server.async_setValues(2, FC_HOLDING, 0, encode_registers(120, "uint16"))
                await server.async_setValues(2, FC_HOLDING, 1, encode_registers("C42", "string", length=3))

                stop = asyncio.Event()
                gateway = Gateway(plant, state_dir=tmp_path)
                running = asyncio.create_task(gateway.run(stop))
                try:
                    await subscriber.wait_for(lambda ms: len(batches(ms, f"{prefix}/rack/_batch")) >= 3, 15)
                    await subscriber.wait_for(lambda ms: any(m.topic == f"{prefix}/cell/label" for m in ms), 15)
                finally:
                    stop.set()
                    await asyncio.wait_for(running, 15)
        finally:
            subscriber.stop()

        rack = batches(subscriber.messages, f"{prefix}/rack/_batch")
        seqs = [body["seq"] for body in rack]
        assert seqs == list(range(1, len(rack) + 1))
        rows = {row["tag"]: row for row in rack[0]["samples"]}  # type: ignore[attr-defined]
        assert rows["voltage"]["value"] == 3.5
        assert rows["voltage"]["quality"] == "good"
        assert rows["temp"]["value"] == 25.0
        assert rows["temp"]["unit"] == "Cel"
        assert (rows["broken"]["value"], rows["broken"]["quality"], rows["broken"]["status"]) == (
            None, "bad", "not_a_number",
        )
        assert (rows["missing"]["quality"], rows["missing"]["status"]) == ("bad", "device_exception:2")
        # Later cycles carry the good values again; the unchanged bad ones are reported once, not every cycle.
        assert {row["tag"] for row in rack[1]["samples"]} == {"voltage", "temp"}  # type: ignore[attr-defined]

        soc = [orjson.loads(m.payload) for m in subscriber.on(f"{prefix}/cell/soc")]
        assert (soc[0]["value"], soc[0]["quality"], soc[0]["status"]) == (120, "uncertain", "out_of_range")
        label = orjson.loads(subscriber.on(f"{prefix}/cell/label")[0].payload)
        assert label["value"] == "C42"

        retained = await retained_snapshot(broker.host, broker.port, f"{enterprise}/#")
        assert orjson.loads(retained[f"{enterprise}/s1/_gateway/gw-rt/status"])["online"] is False
        # Issue 10, defect 11: a clean stop leaves no equipment retained as connected.
        for equipment in ("rack", "cell"):
            status = orjson.loads(retained[f"{prefix}/{equipment}/_status"])
            assert (status["connected"], status["error"], status["gateway"]) == (False, "gateway stopped", "gw-rt")
        assert set(orjson.loads(retained[f"{prefix}/cell/_meta"])["tags"]) == {"soc", "label"}


def _spooled_batches(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            return int(db.execute("SELECT count(*) FROM message WHERE topic LIKE '%/rack/_batch'").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet, or busy
        return 0


async def test_gateway_keeps_running_without_broker_and_stops_cleanly(tmp_path: Path) -> None:
    """A broker that is not there yet: sources run, the sink retries, readings go to the spool, stop in budget."""
    modbus_port = free_tcp_port()
    plant = load_plant_from_text(
        TAGMAP.format(enterprise="nobroker", broker_port=free_tcp_port(), modbus_port=modbus_port),
        filename="runtime.yaml",
        environ={},
    )
    async with tcp_server([sim_device(1), sim_device(2)], modbus_port):
        stop = asyncio.Event()
        running = asyncio.create_task(Gateway(plant, state_dir=tmp_path).run(stop))
        # Until the rack's batches are in the spool (read-only, beside the gateway's own connection).
        deadline = time.monotonic() + 60
        while _spooled_batches(tmp_path / "spool.db") < 2:
            assert not running.done() and time.monotonic() < deadline, "nothing reached the spool"
            await asyncio.sleep(0.1)
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(running, 20)  # returns normally: no exception, no hang
        assert time.monotonic() - started < 10  # the stop budgets (2 + 3 + 3 s) plus slack

    spool = Spool(tmp_path / "spool.db", max_bytes=10**9)
    try:
        kept = spool.oldest(after_id=0, limit=1000)
    finally:
        spool.close()
    assert kept, "readings taken while the broker was away must be in the spool"
    bodies = [orjson.loads(message.payload) for message in kept]
    assert all(body["historical"] is True for body in bodies)
    rack = [body for message, body in zip(kept, bodies, strict=True) if message.topic.endswith("/rack/_batch")]
    assert [body["seq"] for body in rack] == list(range(1, len(rack) + 1))
    snapshots = read_slots(SeqFileStore(tmp_path), SNAPSHOT_FILES, decode_snapshot)
    saved = max((slot for slot in snapshots if isinstance(slot, SeqSnapshot)), key=lambda slot: slot.generation)
    assert saved.clean  # the newest seq snapshot: the exact numbers of the stop
    assert saved.devices["rack"].seq[kept[0].topic.rsplit("/", 2)[0] + "/rack/_batch"] == len(rack)
