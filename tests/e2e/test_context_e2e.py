"""Context on samples end to end: the simulators -> `cellgate run` (a process) -> Mosquitto -> a subscriber.

The ``ctx`` the gateway attaches must be what the simulators hold, read here independently with asyncua and
pymodbus: the coater's roll, slurry lot and recipe (OPC UA subscription), the calender's input roll (OPC UA
poll), the stacker's cell id (Modbus, per tag; a new cell is itself published), and each formation channel's
cell id (Modbus, batch: ``instance_ctx`` from the same poll cycle as the rows).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from gateway.tagmap import load_plant
from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sim import SimulatorProcess, free_port_run

pytestmark = pytest.mark.e2e

NAMESPACE = "urn:cellgate:simulators"

TAGMAP = """\
gateway: {{id: ctx-e2e, enterprise: acme, site: dunkirk}}
mqtt: {{url: "mqtt://127.0.0.1:1883", qos: 1}}
templates:
  channel:
    - {{name: voltage, address: 4, type: float32, unit: V}}
    - {{name: cell_id, address: 36, type: string, length: 8}}
devices:
  - name: coater-01
    area: electrode
    line: cathode-1
    protocol: opcua
    endpoint: '{opcua}'
    namespace: '{namespace}'
    mode: subscribe
    interval_ms: 250
    context: {{lot: lot/input_lot_id, roll: lot/output_lot_id, recipe: recipe/version}}
    tags:
      - {{name: lot/input_lot_id, node: s=Coater01.Lot.InputLotId, type: string}}
      - {{name: lot/output_lot_id, node: s=Coater01.Lot.OutputLotId, type: string}}
      - {{name: recipe/version, node: s=Coater01.Recipe.Version, type: string}}
      - {{name: diagnostics/heartbeat, node: s=Coater01.Diagnostics.Heartbeat, type: uint32}}
  - name: calender-01
    area: electrode
    line: cathode-1
    protocol: opcua
    endpoint: '{opcua}'
    namespace: '{namespace}'
    mode: poll
    interval_ms: 250
    context: {{input_roll: lot/input_lot_id}}
    tags:
      - {{name: lot/input_lot_id, node: s=Calender01.Lot.InputLotId, type: string}}
      - {{name: diagnostics/heartbeat, node: s=Calender01.Diagnostics.Heartbeat, type: uint32}}
  - name: stacker-01
    area: cell-assembly
    line: line-1
    protocol: modbus
    host: 127.0.0.1
    port: {stacker_port}
    interval_ms: 100
    context: {{cell: cell/id}}
    tags:
      - {{name: cell/id, table: input, address: 1300, type: string, length: 20}}
      - {{name: stack/sheet_index, table: input, address: 800, type: uint32}}
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    port: {rack_port}
    interval_ms: 250
    publish: batch
    max_gap: 12
    tags:
      - {{name: heartbeat, address: 2, type: uint16}}
    repeat:
      - {{template: channel, count: 2, start: 1000, stride: 48, name: 'ch{{n:03d}}', context: {{cell: cell_id}}}}
"""


async def read_sim(opcua: str, stacker_port: int, rack_port: int) -> dict[str, Any]:
    """What the simulators hold now, read with asyncua and pymodbus (not through the gateway)."""
    async with Client(opcua, timeout=4) as client:
        ns = await client.get_namespace_index(NAMESPACE)

        async def value(node: str) -> Any:
            return await client.get_node(f"ns={ns};s={node}").read_value()

        held = {
            "coater": {
                "lot": await value("Coater01.Lot.InputLotId"),
                "roll": await value("Coater01.Lot.OutputLotId"),
                "recipe": await value("Coater01.Recipe.Version"),
            },
            "calender": {"input_roll": await value("Calender01.Lot.InputLotId")},
        }
    for name, port, table, address, count in (
        ("stacker", stacker_port, "input", 1300, 20),
        ("ch001", rack_port, "holding", 1036, 8),
        ("ch002", rack_port, "holding", 1084, 8),
    ):
        modbus = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
        await modbus.connect()
        try:
            read = modbus.read_input_registers if table == "input" else modbus.read_holding_registers
            response = await read(address, count=count, device_id=1)
            assert not response.isError(), response
            text = b"".join(word.to_bytes(2, "big") for word in response.registers).rstrip(b"\x00").decode()
        finally:
            modbus.close()
        held[name] = {"cell": text}
    return held


def latest_on(subscriber: Subscriber, topic: str) -> dict[str, Any] | None:
    messages = subscriber.on(topic)
    return orjson.loads(messages[-1].payload) if messages else None


def test_ctx_is_what_the_simulators_hold(tmp_path: Path) -> None:
    enterprise = f"ctx{uuid.uuid4().hex[:8]}"
    first_modbus = free_port_run(2)  # rack-01, then stacker-01
    simulator = SimulatorProcess(
        opcua_port=0, modbus_port=first_modbus, channels=2, speedup=10,
        extra_args=["--racks", "1"],
    )
    with Mosquitto() as broker, simulator:
        rack_port, stacker_port = simulator.modbus_ports["rack-01"], simulator.modbus_ports["stacker-01"]
        config = tmp_path / "tagmap.yaml"
        config.write_text(
            TAGMAP.format(opcua=simulator.opcua_endpoint, namespace=NAMESPACE, stacker_port=stacker_port,
                          rack_port=rack_port),
            encoding="utf-8",
        )
        env = {"CELLGATE_MQTT__URL": broker.url, "CELLGATE_GATEWAY__ENTERPRISE": enterprise}
        plant = load_plant(config, environ=env)
        topic = {
            device.name: f"{enterprise}/dunkirk/{device.area}/{device.line}/{device.name}" for device in plant.devices
        }
        with Subscriber(broker.host, broker.port, f"{enterprise}/#") as subscriber:
            gateway = GatewayProcess(config=config, env=env, state_dir=tmp_path / "state")
            gateway.start()
            try:
                check_against_the_simulators(subscriber, topic, simulator.opcua_endpoint, stacker_port, rack_port)
                check_a_new_cell_is_published_with_its_context(subscriber, topic["stacker-01"])
                check_batches_take_context_from_their_own_cycle(subscriber, topic["rack-01"])
                meta = latest_on(subscriber, f"{topic['coater-01']}/_meta")
                assert meta is not None
                assert meta["context"] == {"lot": "lot/input_lot_id", "roll": "lot/output_lot_id",
                                           "recipe": "recipe/version"}
            finally:
                status = gateway.stop()
                log = gateway.log_text()
                gateway.close()
            assert status == 0, log[-4000:]


def check_against_the_simulators(
    subscriber: Subscriber, topic: dict[str, str], opcua: str, stacker_port: int, rack_port: int
) -> None:
    """Eventually (the ids change now and then: read again until both sides agree) every device's latest ctx
    is what the simulators hold."""
    deadline = time.monotonic() + 60
    seen: dict[str, Any] = {}
    while True:
        held = asyncio.run(read_sim(opcua, stacker_port, rack_port))
        batch = latest_on(subscriber, f"{topic['rack-01']}/_batch") or {}
        seen = {
            "coater": (latest_on(subscriber, f"{topic['coater-01']}/diagnostics/heartbeat") or {}).get("ctx"),
            "calender": (latest_on(subscriber, f"{topic['calender-01']}/diagnostics/heartbeat") or {}).get("ctx"),
            "stacker": (latest_on(subscriber, f"{topic['stacker-01']}/stack/sheet_index") or {}).get("ctx"),
            **batch.get("instance_ctx", {}),
        }
        if seen == held:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"ctx never matched the simulators:\npublished {seen}\nsimulators {held}")
        time.sleep(0.5)
    assert seen["coater"]["roll"].startswith("CT01-R")  # the coater's output roll id, as the calender loads it


def check_a_new_cell_is_published_with_its_context(subscriber: Subscriber, stacker: str) -> None:
    """The stacker starts a new cell every few seconds at 10x: the new id is itself a sample, published before
    (or in the same poll as) the first value that carries it."""
    subscriber.wait_for_blocking(
        lambda _: len({(m.get("ctx") or {}).get("cell") for m in _bodies(subscriber, f"{stacker}/stack/sheet_index")})
        >= 2,
        timeout_s=60,
    )
    cells = {(body.get("ctx") or {}).get("cell") for body in _bodies(subscriber, f"{stacker}/stack/sheet_index")}

    def good_ids() -> list[dict[str, Any]]:
        return [body for body in _bodies(subscriber, f"{stacker}/cell/id") if body["quality"] == "good"]

    # Every cell a sheet was stacked into was itself published on cell/id (in the same poll, so its message may
    # reach the subscriber a moment after the sheet's).
    subscriber.wait_for_blocking(lambda _: cells <= {body["value"] for body in good_ids()}, timeout_s=15)
    for body in good_ids():
        assert body["ctx"] == {"cell": body["value"]}


def check_batches_take_context_from_their_own_cycle(subscriber: Subscriber, rack: str) -> None:
    """A batch that has a channel's cell id among its rows has that same id in its instance_ctx."""
    subscriber.wait_for_blocking(lambda _: len(_bodies(subscriber, f"{rack}/_batch")) >= 4, timeout_s=30)
    for body in _bodies(subscriber, f"{rack}/_batch"):
        rows = {row["tag"]: row["value"] for row in body["samples"]}
        for channel in ("ch001", "ch002"):
            if f"{channel}/cell_id" in rows:
                assert body["instance_ctx"][channel] == {"cell": rows[f"{channel}/cell_id"]}
        assert "ctx" not in body  # the rack itself has no context keys


def _bodies(subscriber: Subscriber, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(message.payload) for message in subscriber.on(topic)]
