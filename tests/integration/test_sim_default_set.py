"""The default simulator set on real sockets: config/demo.yaml resolves and reads good from it, every machine is
under fault control, and the Modbus encodings (float32 / scaled, ABCD / CDAB) decode to the model's values.

The set runs in-process on free ports; the demo's ports are replaced by the bound ones (device by device), and
every tag is read with plain asyncua / pymodbus clients and decoded independently (``tests.support.sim``).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from pymodbus.client import AsyncModbusTcpClient

from gateway.tagmap import ModbusDevice, OpcUaDevice, Plant, load_plant
from simulators.describe import SimulatorOptions
from simulators.machines.calender import Calender
from simulators.machines.formation import FormationConfig, FormationRack
from simulators.machines.points import DataType, Machine, Value
from simulators.runner import RunningSimulators, run_simulators
from simulators.servers.address_map import (
    NAMESPACE_URI,
    Encoding,
    NumberFormat,
    RegisterMap,
    RegisterPoint,
    Table,
    WordOrder,
    formation_register_map,
    machine_register_map,
)
from simulators.servers.control_http import request_control
from simulators.servers.modbus_server import ModbusSimulatorServer
from tests.support.sim import parse_ready_line, read_register_points

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
VARIANTS = {"float64": ua.VariantType.Double, "int32": ua.VariantType.Int32, "uint32": ua.VariantType.UInt32,
            "bool": ua.VariantType.Boolean, "string": ua.VariantType.String}


@pytest_asyncio.fixture(scope="module")
async def default_set() -> AsyncIterator[RunningSimulators]:
    stop = asyncio.Event()
    ready: asyncio.Future[RunningSimulators] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_simulators(
        SimulatorOptions(opcua_port=0, modbus_port=0), stop=stop, control_port=0, on_ready=ready.set_result,
    ))
    try:
        yield await asyncio.wait_for(asyncio.shield(ready), timeout=90)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


def register_point(tag: Any) -> RegisterPoint:
    return RegisterPoint(point=tag.name, table=Table(tag.table.value), address=tag.address,
                         encoding=Encoding(tag.type.value), scale=tag.scale, length=tag.length or 0)


def check_in_range(device: str, tag: Any, value: Value) -> None:
    where = f"{device}/{tag.name} = {value!r}"
    if isinstance(value, float):
        assert math.isfinite(value), where
    if tag.min is not None:
        assert isinstance(value, int | float) and value >= tag.min, where
    if tag.max is not None:
        assert isinstance(value, int | float) and value <= tag.max, where


async def read_modbus_device(device: ModbusDevice, port: int) -> dict[str, Value]:
    register_map: RegisterMap = tuple(register_point(tag) for tag in device.tags)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
    assert await client.connect(), device.name
    try:
        return await read_register_points(client, register_map, device_id=device.unit_id,
                                          word_order=WordOrder(device.order.value))
    finally:
        client.close()


async def read_opcua_device(client: Client, device: OpcUaDevice) -> dict[str, ua.DataValue]:
    index = await client.get_namespace_index(NAMESPACE_URI)
    nodes = [client.get_node(ua.NodeId(ua.String(tag.node.removeprefix("s=")), ua.Int16(index), ua.NodeIdType.String))
             for tag in device.tags]
    values = await client.read_attributes(nodes)
    return {tag.name: dv for tag, dv in zip(device.tags, values, strict=True)}


async def test_ready_line_lists_every_endpoint(default_set: RunningSimulators) -> None:
    ready = parse_ready_line(default_set.ready_line())
    assert ready is not None
    assert set(ready.modbus_ports) == {"rack-01", "rack-02", "stacker-01"}
    assert ready.modbus_port == ready.modbus_ports["rack-01"] == default_set.modbus_port
    assert ready.opcua_endpoint == default_set.opcua_endpoint
    assert ready.control_port == default_set.control_port


async def test_every_demo_tag_resolves_and_reads_good(default_set: RunningSimulators) -> None:
    plant: Plant = load_plant(DEMO, environ={})
    assert default_set.opcua_endpoint is not None
    for attempt in range(2):  # twice, a couple of model steps apart: values must stay in range while they move
        async with Client(default_set.opcua_endpoint, timeout=4) as client:
            for device in plant.devices:
                if not isinstance(device, OpcUaDevice):
                    continue
                read = await read_opcua_device(client, device)
                for tag in device.tags:
                    dv = read[tag.name]
                    assert dv.StatusCode is not None and dv.StatusCode.is_good(), f"{device.name}/{tag.name}"
                    assert dv.SourceTimestamp is not None, f"{device.name}/{tag.name}"
                    assert dv.Value is not None and tag.type is not None
                    assert dv.Value.VariantType is VARIANTS[tag.type.value], f"{device.name}/{tag.name}"
                    check_in_range(device.name, tag, dv.Value.Value)
        for device in plant.devices:
            if isinstance(device, ModbusDevice):
                values = await read_modbus_device(device, default_set.modbus_ports[device.name])
                assert len(values) == len(device.tags)
                for mb_tag in device.tags:
                    check_in_range(device.name, mb_tag, values[mb_tag.name])
                if device.name.startswith("rack-"):
                    assert values["channel_count"] == 16
                    # its own id (rack number + serial) or one the stacker made (line model)
                    assert re.fullmatch(r"CELL(\d\d-\d{8}|-S1-\d{8})", str(values["ch016/cell_id"]))
        if attempt == 0:
            await asyncio.sleep(1.5)


async def test_every_machine_is_under_fault_control(default_set: RunningSimulators) -> None:
    port = default_set.control_port
    assert port is not None

    async def control(method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        return await asyncio.to_thread(request_control, port, method, path, body)

    status, listing = await control("GET", "/faults")
    assert status == 200
    assert {name: m["protocol"] for name, m in listing["machines"].items()} == {
        "Coater01": "opcua", "Calender01": "opcua", "Stacker01": "modbus", "Rack01": "modbus", "Rack02": "modbus"}

    status, answer = await control("POST", "/faults/stacker-01",
                                   {"fault": "exception", "table": "input", "start": 0, "end": 10, "code": 4})
    assert status == 200, answer
    client = AsyncModbusTcpClient("127.0.0.1", port=default_set.modbus_ports["stacker-01"], timeout=3, retries=0)
    assert await client.connect()
    try:
        response = await client.read_input_registers(0, count=2, device_id=1)
        assert response.isError() and response.exception_code == 4
        rack = AsyncModbusTcpClient("127.0.0.1", port=default_set.modbus_ports["rack-02"], timeout=3, retries=0)
        assert await rack.connect()
        try:  # the other Modbus machines are not affected
            assert not (await rack.read_holding_registers(0, count=2, device_id=1)).isError()
        finally:
            rack.close()
        assert (await control("DELETE", "/faults/stacker-01"))[0] == 200
        assert not (await client.read_input_registers(0, count=2, device_id=1)).isError()
    finally:
        client.close()

    status, answer = await control("POST", "/faults/calender-01", {"fault": "bad", "points": ["Press.LineLoad"]})
    assert status == 200, answer
    assert default_set.opcua_endpoint is not None
    async with Client(default_set.opcua_endpoint, timeout=4) as ua_client:
        index = await ua_client.get_namespace_index(NAMESPACE_URI)
        node = ua_client.get_node(ua.NodeId(ua.String("Calender01.Press.LineLoad"), ua.Int16(index),
                                            ua.NodeIdType.String))
        other = ua_client.get_node(ua.NodeId(ua.String("Coater01.Line.Speed"), ua.Int16(index), ua.NodeIdType.String))
        bad, good = await ua_client.read_attributes([node, other])
        assert bad.StatusCode is not None and bad.StatusCode.name == "BadSensorFailure"
        assert good.StatusCode is not None and good.StatusCode.is_good()
        assert (await control("DELETE", "/faults/calender-01/bad"))[0] == 200
        (cleared,) = await ua_client.read_attributes([node])
        assert cleared.StatusCode is not None and cleared.StatusCode.is_good()


def expected_on_wire(point: RegisterPoint, value: Value) -> Value:
    """The model value as the register encoding can carry it (to compare decoded values)."""
    if point.encoding in (Encoding.BOOL, Encoding.STRING):
        return value
    assert isinstance(value, int | float)
    if point.encoding is Encoding.FLOAT32:
        return float(value)
    return round(float(value) / point.scale) * point.scale


@pytest.mark.parametrize("number_format", list(NumberFormat))
@pytest.mark.parametrize("word_order", list(WordOrder))
async def test_modbus_encodings_decode_to_the_model_values(number_format: NumberFormat, word_order: WordOrder) -> None:
    machines: list[tuple[Machine, RegisterMap]] = []
    calender = Calender(rng=random.Random(5))
    machines.append((calender, machine_register_map(calender.points, number_format=number_format)))
    rack = FormationRack(rng=random.Random(5), config=FormationConfig.full(channels=4))
    machines.append((rack, formation_register_map(4, extended=True, number_format=number_format)))
    for model, register_map in machines:
        server = ModbusSimulatorServer(model=model, register_map=register_map, port=0, autostep=False,
                                       word_order=word_order)
        async with server:
            await server.step(30.0)
            client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=3, retries=0)
            assert await client.connect()
            try:
                read = await read_register_points(client, register_map, word_order=word_order)
            finally:
                client.close()
        values = model.values()
        types = {p.name: p.data_type for p in model.points}
        for point in register_map:
            expected = expected_on_wire(point, values[point.point])
            got = read[point.point]
            if isinstance(expected, float) and types[point.point] is DataType.DOUBLE:
                tolerance = max(point.scale / 2 + 1e-9, abs(expected) * 1e-6)
                assert got == pytest.approx(expected, abs=tolerance), point.point
            else:
                assert got == expected, point.point
