"""The simulator servers on real sockets: asyncua and pymodbus clients read what the models compute.

The in-process servers run with ``autostep=False`` so a test can step the model itself and compare exact values;
the ``python -m simulators`` test covers the free-running clock, the runner and SIGTERM.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeEvent
from pymodbus.client import AsyncModbusTcpClient

from simulators.describe import SimulatorOptions, plan_simulators
from simulators.machines.coater import Coater
from simulators.machines.formation import FormationConfig, FormationRack
from simulators.machines.points import Value
from simulators.runner import run_simulators
from simulators.servers.modbus_server import (
    Encoding,
    ModbusSimulatorServer,
    RegisterPoint,
    formation_register_map,
)
from simulators.servers.opcua_server import NAMESPACE_URI, VARIANT_TYPES, OpcUaSimulatorServer
from tests.support.sim import SimulatorProcess, num, read_register_points

COATER = "Coater01"


def string_node(client: Client, identifier: str, namespace_index: int) -> Node:
    return client.get_node(ua.NodeId(ua.String(identifier), ua.Int16(namespace_index), ua.NodeIdType.String))


def value_of(dv: ua.DataValue) -> Any:
    assert dv.Value is not None
    return dv.Value.Value


def source_time(dv: ua.DataValue) -> datetime:
    assert dv.SourceTimestamp is not None
    return cast(datetime, dv.SourceTimestamp)  # ua.DateTime is a datetime at run time


async def browse_name(node: Node) -> str:
    return str((await node.read_browse_name()).Name)


# ------------------------------------------------------------------------------------------------ OPC UA


@pytest_asyncio.fixture(scope="module")
async def coater_server() -> AsyncIterator[tuple[Coater, OpcUaSimulatorServer]]:
    coater = Coater(rng=random.Random(1))
    async with OpcUaSimulatorServer(machines={COATER: coater}, port=0, autostep=False) as server:
        yield coater, server


@pytest_asyncio.fixture(scope="module")
async def ua_client(coater_server: tuple[Coater, OpcUaSimulatorServer]) -> AsyncIterator[tuple[Client, int]]:
    _, server = coater_server
    async with Client(server.endpoint, timeout=4) as client:
        yield client, await client.get_namespace_index(NAMESPACE_URI)


async def read_all(client: Client, index: int, coater: Coater) -> dict[str, ua.DataValue]:
    nodes = [string_node(client, f"{COATER}.{p.name}", index) for p in coater.points]
    values = await client.read_attributes(nodes)
    return {p.name: dv for p, dv in zip(coater.points, values, strict=True)}


async def test_opcua_serves_every_point_with_its_type_value_and_timestamps(
    coater_server: tuple[Coater, OpcUaSimulatorServer], ua_client: tuple[Client, int]
) -> None:
    coater, server = coater_server
    client, index = ua_client
    assert server.endpoint == f"opc.tcp://127.0.0.1:{server.port}/"
    await server.step(0.2)
    read = await read_all(client, index, coater)
    expected = coater.values()
    now = datetime.now(UTC)
    for point in coater.points:
        dv = read[point.name]
        assert dv.StatusCode is not None and dv.StatusCode.is_good(), point.name
        assert dv.Value is not None
        assert dv.Value.VariantType is VARIANT_TYPES[point.data_type], point.name
        assert dv.Value.Value == expected[point.name], point.name  # no clock: exactly the model's value
        for ts in (dv.SourceTimestamp, dv.ServerTimestamp):
            assert ts is not None, point.name
            assert abs(cast(datetime, ts).replace(tzinfo=UTC) - now) < timedelta(seconds=10), point.name


async def test_opcua_values_change_when_the_model_steps(
    coater_server: tuple[Coater, OpcUaSimulatorServer], ua_client: tuple[Client, int]
) -> None:
    coater, server = coater_server
    client, index = ua_client
    before = await read_all(client, index, coater)
    for _ in range(10):
        await server.step(0.2)
    after = await read_all(client, index, coater)
    assert value_of(after["Line.Length"]) > value_of(before["Line.Length"])
    assert value_of(after["Dryer.Zone03.AirTemp"]) != value_of(before["Dryer.Zone03.AirTemp"])
    assert source_time(after["Line.Length"]) > source_time(before["Line.Length"])
    assert {name: value_of(dv) for name, dv in after.items()} == coater.values()


async def test_opcua_address_space_is_a_browsable_hierarchy(
    coater_server: tuple[Coater, OpcUaSimulatorServer], ua_client: tuple[Client, int]
) -> None:
    client, index = ua_client
    machines = string_node(client, "Machines", index)  # OPC 40001-1 style: Objects/Machines/<machine>
    assert machines.nodeid in {n.nodeid for n in await client.nodes.objects.get_children()}
    assert [await browse_name(m) for m in await machines.get_children()] == [COATER]
    root = string_node(client, COATER, index)
    children = {await browse_name(child): child for child in await root.get_children()}
    assert {"Identification", "PackML", "Line", "Unwind", "Rewind", "CoatingHead", "Gauge", "Dryer", "Energy",
            "Alarms", "Diagnostics"} <= set(children)
    zones = [await browse_name(z) for z in await children["Dryer"].get_children()]
    assert sorted(zones) == [f"Zone{n:02d}" for n in range(1, 11)]
    for child in children.values():
        assert len(await child.get_children()) <= 100
    air_temp = string_node(client, f"{COATER}.Dryer.Zone03.AirTemp", index)
    assert await browse_name(air_temp) == "AirTemp"
    assert (await air_temp.read_description()).Text == "Supply air temperature of dryer zone 3."
    properties = {await browse_name(p): await p.read_value() for p in await air_temp.get_properties()}
    assert properties["EURange"] == ua.Range(Low=0.0, High=200.0)
    assert properties["EngineeringUnits"].DisplayName.Text == "Cel"


async def test_opcua_subscription_gets_changes(
    coater_server: tuple[Coater, OpcUaSimulatorServer], ua_client: tuple[Client, int]
) -> None:
    coater, server = coater_server
    client, index = ua_client
    subscription = await client.create_subscription(50, queue_maxsize=100)
    try:
        await subscription.subscribe_data_change([string_node(client, f"{COATER}.Line.Length", index)],
                                                 sampling_interval=ua.Double(0.0), queuesize=10)
        first = await subscription.next_event(timeout=5)  # the initial value
        await server.step(1.0)
        event = await subscription.next_event(timeout=5)
        assert isinstance(first, DataChangeEvent)
        assert isinstance(event, DataChangeEvent)
        assert event.value > first.value
        assert event.value == coater.values()["Line.Length"]
        assert event.data.monitored_item.Value.SourceTimestamp is not None
    finally:
        await subscription.delete()


# ------------------------------------------------------------------------------------------------ Modbus


@pytest_asyncio.fixture(scope="module")
async def rack_server() -> AsyncIterator[tuple[FormationRack, ModbusSimulatorServer]]:
    rack = FormationRack(rng=random.Random(1), config=FormationConfig(channels=16))
    server = ModbusSimulatorServer(model=rack, register_map=formation_register_map(16), port=0, autostep=False)
    async with server:
        yield rack, server


@pytest_asyncio.fixture(scope="module")
async def mb_client(rack_server: tuple[FormationRack, ModbusSimulatorServer]) -> AsyncIterator[Any]:
    _, server = rack_server
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=2, retries=0)
    assert await client.connect()
    yield client
    client.close()


def float32(value: Value) -> float:
    return float(struct.unpack(">f", struct.pack(">f", float(value)))[0])


def wire_value(point: RegisterPoint, value: Value) -> Value:
    """What the model value should read back as after the register encoding."""
    if point.encoding is Encoding.FLOAT32:
        return float32(value)
    if point.encoding is Encoding.INT16:
        return round(float(value) / point.scale) * point.scale
    return value


async def test_modbus_serves_every_point_as_the_model_computes_it(
    rack_server: tuple[FormationRack, ModbusSimulatorServer], mb_client: Any
) -> None:
    rack, server = rack_server
    register_map = formation_register_map(16)
    await server.step(0.2)
    read = await read_register_points(mb_client, register_map)
    expected = rack.values()
    for point in register_map:
        assert read[point.point] == pytest.approx(wire_value(point, expected[point.point]), abs=1e-9), point.point
    assert read["Rack.ChannelCount"] == 16
    reserved = await mb_client.read_holding_registers(1020, count=12, device_id=1)
    assert reserved.registers == [0] * 12


async def test_modbus_values_change_when_the_model_steps(
    rack_server: tuple[FormationRack, ModbusSimulatorServer], mb_client: Any
) -> None:
    rack, server = rack_server
    register_map = formation_register_map(16)
    before = await read_register_points(mb_client, register_map)
    await server.step(120.0)
    after = await read_register_points(mb_client, register_map)
    assert after["Rack.Uptime"] == num(before["Rack.Uptime"]) + 120
    charging = [n for n in range(1, 17) if num(before[f"Ch{n:03d}.Current"]) > 1.0]
    assert charging
    for n in charging:
        assert num(after[f"Ch{n:03d}.Capacity"]) > num(before[f"Ch{n:03d}.Capacity"])
    assert after["Rack.Heartbeat"] == rack.values()["Rack.Heartbeat"]


async def test_modbus_bit_tables_and_input_registers(
    rack_server: tuple[FormationRack, ModbusSimulatorServer], mb_client: Any
) -> None:
    rack, _ = rack_server
    values = rack.values()
    discrete = await mb_client.read_discrete_inputs(0, count=2, device_id=1)
    assert discrete.bits[:2] == [values["Rack.AirflowOk"], values["Rack.DoorClosed"]]
    alarms = await mb_client.read_coils(100, count=16, device_id=1)
    assert alarms.bits[:16] == [values[f"Ch{n:03d}.ProtectionAlarm"] for n in range(1, 17)]
    uptime = await mb_client.read_input_registers(0, count=2, device_id=1)
    assert (uptime.registers[0] << 16) | uptime.registers[1] == values["Rack.Uptime"]


# ------------------------------------------------------------------------------------------------ process


@pytest.fixture(scope="module")
def simulator_process() -> Iterator[SimulatorProcess]:
    process = SimulatorProcess(channels=16, seed=3)
    process.start()
    try:
        yield process
    finally:
        process.close()


async def test_python_m_simulators_serves_the_planned_set_and_stops_on_sigterm(
    simulator_process: SimulatorProcess,
) -> None:
    sims = simulator_process
    plan = plan_simulators(SimulatorOptions(channels=16))
    assert set(sims.modbus_ports) == {m.device for m in plan.machines if m.register_map is not None}
    assert sims.modbus_port == sims.modbus_ports["rack-01"]
    coater = plan.machine("coater-01")
    rack = plan.machine("rack-01")
    assert rack.register_map is not None

    async with Client(sims.opcua_endpoint, timeout=4) as client:
        index = await client.get_namespace_index(NAMESPACE_URI)
        nodes = [string_node(client, f"{coater.equipment}.{p.name}", index) for p in coater.points]
        first = await client.read_attributes(nodes)
        for point, dv in zip(coater.points, first, strict=True):
            assert dv.StatusCode is not None and dv.StatusCode.is_good(), point.name
            assert dv.Value is not None and dv.Value.VariantType is VARIANT_TYPES[point.data_type], point.name

        mb = AsyncModbusTcpClient("127.0.0.1", port=sims.modbus_ports["rack-01"], timeout=2, retries=0)
        assert await mb.connect()
        try:
            mb_first = await read_register_points(mb, rack.register_map)
            await asyncio.sleep(2.2)  # racks step on their own at 1 Hz, the coater at 5 Hz
            mb_second = await read_register_points(mb, rack.register_map)
        finally:
            mb.close()
        second = await client.read_attributes(nodes)

    length = [p.name for p in coater.points].index("Line.Length")
    assert value_of(second[length]) > value_of(first[length])
    assert num(mb_second["Rack.Uptime"]) > num(mb_first["Rack.Uptime"])
    assert mb_second["Rack.ChannelCount"] == 16

    returncode = await asyncio.to_thread(sims.stop)
    assert returncode == 0, sims.stderr_text()
    assert "Traceback" not in sims.stderr_text()


@pytest.mark.parametrize("busy", ["opcua", "modbus"])
async def test_run_simulators_fails_fast_on_a_taken_port(busy: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"opcua_port": 0, "modbus_port": 0, f"{busy}_port": port}
        started = asyncio.get_running_loop().time()
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            await run_simulators(**ports, stop=asyncio.Event())
        assert asyncio.get_running_loop().time() - started < 1.0  # before the ~1 s OPC UA init
