"""Simulator fault injection, each fault observed through a real client on a real socket.

The in-process servers run with ``autostep=False`` so value faults can be checked against explicit steps; every
test clears its faults afterwards. The last test drives ``python -m simulators --control-port 0`` over HTTP and
through the ``python -m simulators fault`` client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any, cast

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import UaError
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException as ModbusClientError

from simulators.faults import (
    BadValue,
    DropConnections,
    Freeze,
    Hang,
    Latency,
    ModbusException,
    Restart,
)
from simulators.machines.coater import Coater
from simulators.machines.formation import FormationConfig, FormationRack
from simulators.servers.control_http import request_control
from simulators.servers.modbus_server import ModbusSimulatorServer, channel_base, formation_register_map
from simulators.servers.opcua_server import NAMESPACE_URI, OpcUaSimulatorServer
from tests.support.sim import REPO_ROOT, SimulatorProcess, num, read_register_points

COATER = "Coater01"
RACK = "Rack01"
CHANNELS = 4


async def wait_for(condition: Callable[[], bool], *, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def float32_at(registers: list[int], offset: int) -> float:
    return float(struct.unpack(">f", struct.pack(">HH", registers[offset], registers[offset + 1]))[0])


# ------------------------------------------------------------------------------------------------ Modbus


@pytest_asyncio.fixture(scope="module")
async def rack_server() -> AsyncIterator[ModbusSimulatorServer]:
    rack = FormationRack(rng=random.Random(1), config=FormationConfig(channels=CHANNELS))
    server = ModbusSimulatorServer(model=rack, register_map=formation_register_map(CHANNELS), port=0,
                                   autostep=False, name=RACK)
    async with server:
        await server.step(1.0)
        yield server


@pytest_asyncio.fixture
async def rack(rack_server: ModbusSimulatorServer) -> AsyncIterator[ModbusSimulatorServer]:
    yield rack_server
    await rack_server.clear_faults()


# A read that must be answered gets this long: the server runs in the test's own event loop, which a loaded machine
# can stall for a second or more. Only reads that must go unanswered (a hang) use a short timeout.
ANSWER_TIMEOUT_S = 5.0
HUNG_READ_TIMEOUT_S = 1.0


@pytest_asyncio.fixture
async def mb_client(rack: ModbusSimulatorServer) -> AsyncIterator[Any]:
    client = AsyncModbusTcpClient("127.0.0.1", port=rack.port, timeout=ANSWER_TIMEOUT_S, retries=0,
                                  reconnect_delay=0.1, reconnect_delay_max=0.2)
    assert await client.connect()
    yield client
    client.close()


async def read_ok(client: Any, address: int = 0, count: int = 4) -> list[int]:
    response = await client.read_holding_registers(address, count=count, device_id=1)
    assert not response.isError(), response
    return cast(list[int], response.registers)


async def test_modbus_drop_closes_every_connection_and_accepts_new_ones(rack: ModbusSimulatorServer) -> None:
    links: list[bool] = []
    client = AsyncModbusTcpClient("127.0.0.1", port=rack.port, timeout=ANSWER_TIMEOUT_S, retries=0,
                                  reconnect_delay=0.1, reconnect_delay_max=0.2, trace_connect=links.append)
    assert await client.connect()
    try:
        await read_ok(client)
        assert await rack.drop_connections() >= 1
        await wait_for(lambda: False in links, what="the client to see the connection drop")
        # The client reconnects by itself and is answered again.
        await wait_for(lambda: links[-1] is True and links.count(True) >= 2, what="the client to reconnect")
        await read_ok(client)
    finally:
        client.close()

    # With a duration the link stays down: new connections are accepted, then closed at once.
    await rack.set_fault(DropConnections(), duration_s=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", rack.port)
    assert await asyncio.wait_for(reader.read(), timeout=ANSWER_TIMEOUT_S) == b""  # EOF straight after the accept
    writer.close()
    loop = asyncio.get_running_loop()
    await wait_for(lambda: not rack.faults.current(loop.time()), what="the drop fault to expire")
    fresh = AsyncModbusTcpClient("127.0.0.1", port=rack.port, timeout=ANSWER_TIMEOUT_S, retries=0)
    assert await fresh.connect()
    await read_ok(fresh)
    fresh.close()


async def read_ok_again(client: Any, *, timeout_s: float = 30.0) -> list[int]:
    """``read_ok`` on a short-timeout client, retried until answered: an answer may miss a short timeout on a loaded
    machine, which says nothing about the hang being over."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await read_ok(client)
        except ModbusClientError:
            if time.monotonic() > deadline:
                raise


async def test_modbus_hang_keeps_the_connection_and_answers_nothing(rack: ModbusSimulatorServer) -> None:
    links: list[bool] = []
    client = AsyncModbusTcpClient("127.0.0.1", port=rack.port, timeout=HUNG_READ_TIMEOUT_S, retries=0,
                                  trace_connect=links.append)
    assert await client.connect()
    try:
        await rack.set_fault(Hang())
        with pytest.raises(ModbusClientError):  # ModbusIOException: no response
            await client.read_holding_registers(0, count=4, device_id=1)
        assert client.connected  # the server did not close it
        await rack.clear_faults()
        await read_ok_again(client)

        await rack.set_fault(Hang(), duration_s=1.0)
        with pytest.raises(ModbusClientError):
            await client.read_holding_registers(0, count=4, device_id=1)
        loop = asyncio.get_running_loop()
        await wait_for(lambda: not rack.faults.current(loop.time()), what="the hang to end by itself")
        await read_ok_again(client)
        assert links == [True]  # answered again on the connection it kept all along
    finally:
        client.close()


async def test_modbus_exception_codes_on_an_address_range(rack: ModbusSimulatorServer, mb_client: Any) -> None:
    ch1 = channel_base(1)
    await rack.set_fault(ModbusException(table="holding", start=ch1, end=ch1 + 32, code=2))
    await rack.set_fault(ModbusException(table="coil", start=100, end=101, code=4))
    for address, count in ((ch1, 20), (ch1 + 31, 2), (ch1 - 2, 4)):  # inside, overlapping the end, the start
        response = await mb_client.read_holding_registers(address, count=count, device_id=1)
        assert response.isError(), (address, count)
        assert response.exception_code == 2
    await read_ok(mb_client, ch1 + 32, 20)  # channel 2: untouched
    await read_ok(mb_client, 0, 20)  # rack block: untouched
    coils = await mb_client.read_coils(100, count=4, device_id=1)
    assert coils.isError()
    assert coils.exception_code == 4
    assert not (await mb_client.read_coils(0, count=3, device_id=1)).isError()
    assert not (await mb_client.read_input_registers(0, count=2, device_id=1)).isError()


async def test_modbus_nan_on_chosen_float32_points(rack: ModbusSimulatorServer, mb_client: Any) -> None:
    await rack.set_fault(BadValue(points=frozenset({"Ch001.Voltage", "Rack.AmbientTemp"})))
    ch1 = await read_ok(mb_client, channel_base(1), 8)
    assert math.isnan(float32_at(ch1, 4))
    assert ch1[4:6] == [0x7FC0, 0x0000]
    assert not math.isnan(float32_at(ch1, 6))  # Ch001.Current
    assert math.isnan(float32_at(await read_ok(mb_client, 20, 2), 0))
    assert not math.isnan(float32_at(await read_ok(mb_client, channel_base(2), 8), 4))
    with pytest.raises(ValueError, match="float32"):
        await rack.set_fault(BadValue(points=frozenset({"Ch001.Status"})))
    await rack.clear_faults()
    assert not math.isnan(float32_at(await read_ok(mb_client, channel_base(1), 8), 4))


async def test_modbus_freeze_keeps_the_last_values(rack: ModbusSimulatorServer, mb_client: Any) -> None:
    register_map = formation_register_map(CHANNELS)
    await rack.set_fault(Freeze())
    frozen = await read_register_points(mb_client, register_map)
    await rack.step(60.0)
    assert await read_register_points(mb_client, register_map) == frozen
    await rack.clear_faults()
    thawed = await read_register_points(mb_client, register_map)
    assert num(thawed["Rack.Uptime"]) >= num(frozen["Rack.Uptime"]) + 60

    await rack.set_fault(Freeze(points=frozenset({"Rack.Uptime"})))
    await rack.step(10.0)
    after = await read_register_points(mb_client, register_map)
    assert after["Rack.Uptime"] == thawed["Rack.Uptime"]
    assert after["Rack.Heartbeat"] != thawed["Rack.Heartbeat"]


async def test_modbus_latency_delays_every_answer(rack: ModbusSimulatorServer) -> None:
    slow = AsyncModbusTcpClient("127.0.0.1", port=rack.port, timeout=3, retries=0)
    assert await slow.connect()
    try:
        await rack.set_fault(Latency(seconds=0.6))
        started = time.monotonic()
        await read_ok(slow)
        assert time.monotonic() - started >= 0.6
        await rack.clear_faults()
        started = time.monotonic()
        await read_ok(slow)
        assert time.monotonic() - started < 0.6
    finally:
        slow.close()


# ------------------------------------------------------------------------------------------------ OPC UA


@pytest_asyncio.fixture(scope="module")
async def coater_server() -> AsyncIterator[OpcUaSimulatorServer]:
    async with OpcUaSimulatorServer(machines={COATER: Coater(rng=random.Random(1))}, port=0,
                                    autostep=False) as server:
        await server.step(1.0)
        yield server


@pytest_asyncio.fixture
async def coater(coater_server: OpcUaSimulatorServer) -> AsyncIterator[OpcUaSimulatorServer]:
    yield coater_server
    await coater_server.clear_faults()


def node(client: Client, point: str, index: int) -> Node:
    return client.get_node(ua.NodeId(ua.String(f"{COATER}.{point}"), ua.Int16(index), ua.NodeIdType.String))


def status_code(dv: ua.DataValue) -> ua.StatusCode:
    assert dv.StatusCode is not None
    return dv.StatusCode


async def read_dv(client: Client, point: str) -> ua.DataValue:
    index = await client.get_namespace_index(NAMESPACE_URI)
    (dv,) = await client.read_attributes([node(client, point, index)])
    return dv


async def test_opcua_drop_closes_every_connection(coater: OpcUaSimulatorServer) -> None:
    lost = asyncio.Event()

    async def on_lost(exc: Exception) -> None:
        lost.set()

    client = Client(coater.endpoint, timeout=2)
    client.connection_lost_callback = on_lost
    await client.connect()
    try:
        await read_dv(client, "Line.Length")
        assert await coater.drop_connections() >= 1
        await asyncio.wait_for(lost.wait(), timeout=5)
        with pytest.raises((ConnectionError, TimeoutError, UaError)):
            await client.read_attributes([client.get_node(ObjectIds.Server_ServerStatus_CurrentTime)])
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
    async with Client(coater.endpoint, timeout=2) as again:  # new connections are accepted again
        assert status_code(await read_dv(again, "Line.Length")).is_good()


async def test_opcua_hang_answers_nothing_until_it_ends(coater: OpcUaSimulatorServer) -> None:
    async with Client(coater.endpoint, timeout=0.5) as client:
        await read_dv(client, "Line.Length")
        await coater.set_fault(Hang())
        with pytest.raises(TimeoutError):
            await read_dv(client, "Line.Length")
        late = Client(coater.endpoint, timeout=0.5)
        try:
            with pytest.raises(TimeoutError):  # a new connection is accepted but its Hello is not answered
                await late.connect()
        finally:
            with contextlib.suppress(Exception):
                late.disconnect_socket()
        await coater.clear_faults()
    async with Client(coater.endpoint, timeout=4) as client:
        # With a duration, requests are held and answered once the hang ends by itself.
        await coater.set_fault(Hang(), duration_s=0.5)
        started = time.monotonic()
        assert status_code(await read_dv(client, "Line.Length")).is_good()
        assert time.monotonic() - started >= 0.3


async def test_opcua_latency_delays_every_answer(coater: OpcUaSimulatorServer) -> None:
    async with Client(coater.endpoint, timeout=4) as client:
        await coater.set_fault(Latency(seconds=0.6))
        started = time.monotonic()
        await read_dv(client, "Line.Length")  # two requests: namespace array, then the value
        assert time.monotonic() - started >= 1.2
        await coater.clear_faults()
        started = time.monotonic()
        await read_dv(client, "Line.Length")
        assert time.monotonic() - started < 0.6


async def test_opcua_bad_status_on_chosen_variables(coater: OpcUaSimulatorServer) -> None:
    async with Client(coater.endpoint, timeout=4) as client:
        await coater.set_fault(BadValue(points=frozenset({"Line.Speed"}), machine=COATER))
        assert status_code(await read_dv(client, "Line.Speed")).name == "BadSensorFailure"
        assert status_code(await read_dv(client, "Line.Length")).is_good()
        await coater.set_fault(BadValue(points=frozenset({"Line.Speed"}), machine=COATER, status="BadOutOfService"))
        await coater.step(0.2)  # stays bad across steps, with the new status
        assert status_code(await read_dv(client, "Line.Speed")).name == "BadOutOfService"
        with pytest.raises(ValueError, match="unknown points"):
            await coater.set_fault(BadValue(points=frozenset({"Line.Nope"})))
        await coater.clear_faults()
        assert status_code(await read_dv(client, "Line.Speed")).is_good()


async def test_opcua_freeze_stops_values_and_timestamps(coater: OpcUaSimulatorServer) -> None:
    async with Client(coater.endpoint, timeout=4) as client:
        await coater.set_fault(Freeze(machine=COATER))
        before = {p: await read_dv(client, p) for p in ("Line.Length", "Dryer.Zone03.AirTemp")}
        await asyncio.sleep(0.05)
        await coater.step(5.0)
        for point, dv in before.items():
            after = await read_dv(client, point)
            assert after.Value == dv.Value, point
            assert after.SourceTimestamp == dv.SourceTimestamp, point
        await coater.clear_faults()
        thawed = await read_dv(client, "Line.Length")
        assert thawed.Value is not None and before["Line.Length"].Value is not None
        assert thawed.Value.Value > before["Line.Length"].Value.Value
        assert cast(datetime, thawed.SourceTimestamp) > cast(datetime, before["Line.Length"].SourceTimestamp)


async def test_opcua_restart_moves_the_namespace_index() -> None:
    async with OpcUaSimulatorServer(machines={COATER: Coater(rng=random.Random(2))}, port=0,
                                    autostep=False) as server:
        async with Client(server.endpoint, timeout=4) as client:
            assert await client.get_namespace_index(NAMESPACE_URI) == 2
        await server.set_fault(Restart(extra_namespaces=1))
        assert server.namespace_index == 3
        async with Client(server.endpoint, timeout=4) as client:
            namespaces = await client.get_namespace_array()
            assert namespaces.index(NAMESPACE_URI) == 3
            (old,) = await client.read_attributes([node(client, "Line.Length", 2)])
            assert status_code(old).name == "BadNodeIdUnknown"
            (moved,) = await client.read_attributes([node(client, "Line.Length", 3)])
            assert status_code(moved).is_good()
            assert moved.SourceTimestamp is not None  # republished after the restart


# ------------------------------------------------------------------------------------------------ control


@pytest.fixture(scope="module")
def sims_with_control() -> Iterator[SimulatorProcess]:
    # One rack and the coater only: the listing below is exact (the default set is covered in test_sim_default_set).
    with SimulatorProcess(channels=CHANNELS, control_port=0,
                          extra_args=["--racks", "1", "--calenders", "0", "--stackers", "0"]) as sims:
        yield sims


async def control(port: int, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
    return await asyncio.to_thread(request_control, port, method, path, body)


async def test_http_control_interface_of_python_m_simulators(sims_with_control: SimulatorProcess) -> None:
    sims = sims_with_control
    port = sims.control_port
    assert port > 0

    status, listing = await control(port, "GET", "/faults")
    assert status == 200
    assert listing == {"machines": {RACK: {"protocol": "modbus", "faults": []},
                                    COATER: {"protocol": "opcua", "faults": []}}}

    # Modbus exception range, set by the tag map's device name.
    status, answer = await control(port, "POST", "/faults/rack-01",
                                   {"fault": "exception", "table": "holding", "start": 0, "end": 10, "code": 2})
    assert status == 200, answer
    assert answer["faults"] == [{"fault": "exception", "table": "holding", "start": 0, "end": 10, "code": 2,
                                 "remaining_s": None}]
    mb = AsyncModbusTcpClient("127.0.0.1", port=sims.modbus_port, timeout=2, retries=0)
    assert await mb.connect()
    try:
        response = await mb.read_holding_registers(0, count=4, device_id=1)
        assert response.isError()
        assert response.exception_code == 2
        status, _ = await control(port, "DELETE", "/faults/Rack01")
        assert status == 200
        assert not (await mb.read_holding_registers(0, count=4, device_id=1)).isError()
    finally:
        mb.close()

    # OPC UA bad status through the CLI client.
    cli = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "simulators", "fault", "--control-port", str(port), "bad", "coater-01", "Line.Speed",
         "--duration-s", "30"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["faults"][0]["points"] == ["Line.Speed"]
    async with Client(sims.opcua_endpoint, timeout=4) as client:
        assert status_code(await read_dv(client, "Line.Speed")).name == "BadSensorFailure"
        status, _ = await control(port, "DELETE", "/faults/coater-01/bad")
        assert status == 200
        assert status_code(await read_dv(client, "Line.Speed")).is_good()

    # Mistakes are answered with a reason, not ignored.
    status, answer = await control(port, "POST", "/faults/rack-01", {"fault": "hang", "duraton_s": 5})
    assert status == 400
    assert "duraton_s" in answer["error"]
    status, answer = await control(port, "POST", "/faults/rack-01", {"fault": "restart"})
    assert status == 400
    assert "OPC UA" in answer["error"]
    status, answer = await control(port, "GET", "/faults/press-07")
    assert status == 404
    assert "Coater01" in answer["error"]
