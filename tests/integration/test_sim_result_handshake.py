"""The result FIFO handshake on real sockets, with plain clients: pymodbus against the stacker, asyncua against the
calender. The servers step on their own clock (sped up); the client reads the presented record, acknowledges it by
writing its record id, and now and then goes away before acknowledging. Every record arrives exactly once, in order.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from pymodbus.client import AsyncModbusTcpClient

from simulators.machines.calender import Calender, CalenderConfig
from simulators.machines.packml import PackMLTiming
from simulators.machines.results import ResultFifo
from simulators.machines.stacker import Stacker, StackerConfig
from simulators.runner import RunningSimulators, run_simulators
from simulators.servers.address_map import Table, machine_register_map
from simulators.servers.modbus_server import ModbusSimulatorServer
from simulators.servers.opcua_server import NAMESPACE_URI, OpcUaSimulatorServer
from tests.support.machines import STEADY
from tests.support.sim import read_register_points

RECORDS = 8
# Ends of roll every ~10 min of model time and nothing else.
ROLLS = PackMLTiming(mean_s_between_holds=None, mean_s_between_suspends=None, mean_s_between_stops=None,
                     mean_s_between_aborts=None, mean_s_between_completes=600.0)


async def wait_until_acknowledged(fifo: ResultFifo, count: int) -> None:
    """The server hands a written ack to the model at its next step: wait for that (the server keeps stepping)."""
    for _ in range(200):  # at most 10 s
        if fifo.acknowledged >= count:
            break
        await asyncio.sleep(0.05)
    assert fifo.acknowledged == count


def check_once_in_order(received: list[tuple[int, str]]) -> None:
    ids = [record_id for record_id, _ in received]
    assert ids == list(range(1, len(ids) + 1)), ids  # never lost, never twice
    assert len({key for _, key in received}) == len(received)


async def test_modbus_stacker_records_arrive_once_each_across_client_restarts() -> None:
    stacker = Stacker(rng=random.Random(7), config=StackerConfig(packml=STEADY))
    register_map = machine_register_map(stacker.points)
    record = tuple(p for p in register_map if p.point.startswith("Result.") and p.table is Table.INPUT)
    ack = next(p for p in register_map if p.point == "Result.Ack")
    received: list[tuple[int, str]] = []
    abandoned = 0
    async with ModbusSimulatorServer(model=stacker, register_map=register_map, port=0, step_hz=10.0,
                                     speedup=40.0) as server:
        async def session(limit: int) -> bool:
            """One client connection: acknowledge up to ``limit`` records, then read one more and leave."""
            nonlocal abandoned
            client: Any = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=2, retries=0)
            assert await client.connect()
            try:
                acked = 0
                while len(received) < RECORDS:
                    values = await read_register_points(client, record)  # one FC04 block: a consistent record
                    record_id = int(values["Result.RecordId"])  # type: ignore[arg-type]
                    if record_id == 0 or (received and received[-1][0] == record_id):
                        await asyncio.sleep(0.05)
                        continue
                    if acked == limit:
                        abandoned += 1
                        return False  # gone without acknowledging: the PLC keeps the record
                    received.append((record_id, str(values["Result.CellId"])))
                    assert values["Result.Sheets"] == stacker.config.sheets_per_cell
                    response = await client.write_registers(ack.address, [record_id >> 16, record_id & 0xFFFF])
                    assert not response.isError()
                    acked += 1
                return True
            finally:
                client.close()

        done = False
        limit = 1
        while not done:
            done = await asyncio.wait_for(session(limit), timeout=60.0)
            limit += 1
        await wait_until_acknowledged(stacker.results, RECORDS)
    assert abandoned >= 2
    check_once_in_order(received)
    serials = [int(cell.rsplit("-", 1)[1]) for _, cell in received]
    assert serials == list(range(serials[0], serials[0] + RECORDS))  # every stacked cell, none skipped


async def test_opcua_calender_roll_records_arrive_once_each_across_client_restarts() -> None:
    calender = Calender(rng=random.Random(3), config=CalenderConfig(packml=ROLLS))
    received: list[tuple[int, str]] = []
    abandoned = 0
    async with OpcUaSimulatorServer(machines={"Calender01": calender}, port=0, step_hz=10.0,
                                    speedup=600.0) as server:
        async def session(limit: int) -> bool:
            nonlocal abandoned
            async with Client(server.endpoint, timeout=4) as client:
                index = await client.get_namespace_index(NAMESPACE_URI)

                def node(point: str) -> Any:
                    return client.get_node(ua.NodeId(f"Calender01.Result.{point}", index, ua.NodeIdType.String))

                nodes = [node("RecordId"), node("RollId"), node("InputRollId"), node("Length")]
                acked = 0
                while len(received) < 4:
                    values = [dv.Value.Value for dv in await client.read_attributes(nodes)]  # one Read call
                    record_id = int(values[0])
                    if record_id == 0 or (received and received[-1][0] == record_id):
                        await asyncio.sleep(0.05)
                        continue
                    if acked == limit:
                        abandoned += 1
                        return False
                    assert str(values[2]).startswith("CT01-R") and float(values[3]) > 0.0
                    received.append((record_id, str(values[1])))
                    await node("Ack").write_value(ua.DataValue(ua.Variant(record_id, ua.VariantType.UInt32)))
                    acked += 1
                return True

        done = False
        limit = 1
        while not done:
            done = await asyncio.wait_for(session(limit), timeout=60.0)
            limit += 1
        await wait_until_acknowledged(calender.results, len(received))  # the last ack is read at the next step
    assert abandoned >= 1
    check_once_in_order(received)


async def test_the_served_default_set_is_one_line_whose_ids_connect() -> None:
    """``run_simulators`` wires the line: the calender works the coater's previous roll, the stacker the
    calender's, as a plain client reads them (OPC UA for the electrode machines, Modbus for the stacker)."""
    stop = asyncio.Event()
    ready: asyncio.Future[RunningSimulators] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_simulators(opcua_port=0, modbus_port=0, seed=5, stop=stop,
                                              on_ready=ready.set_result))
    try:
        running = await asyncio.wait_for(ready, timeout=90.0)
        assert running.opcua_endpoint is not None
        async with Client(running.opcua_endpoint, timeout=4) as client:
            index = await client.get_namespace_index(NAMESPACE_URI)
            nodes = [client.get_node(ua.NodeId(name, index, ua.NodeIdType.String)) for name in (
                "Coater01.Lot.OutputLotId", "Calender01.Lot.InputLotId", "Calender01.Lot.OutputLotId")]
            coater_out, calender_in, calender_out = [dv.Value.Value for dv in await client.read_attributes(nodes)]
        stacker = Stacker(rng=random.Random(0))
        register_map = machine_register_map(stacker.points)
        lot = tuple(p for p in register_map if p.point == "Lot.InputLotId")
        client_mb: Any = AsyncModbusTcpClient("127.0.0.1", port=running.modbus_ports["stacker-01"], timeout=2,
                                              retries=0)
        assert await client_mb.connect()
        try:
            stacker_in = (await read_register_points(client_mb, lot))["Lot.InputLotId"]
        finally:
            client_mb.close()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30.0)

    def number(roll_id: object) -> int:
        return int(str(roll_id)[-6:])

    assert str(calender_in).startswith("CT01-R") and number(calender_in) == number(coater_out) - 1
    assert str(stacker_in).startswith("CL01-R") and number(stacker_in) == number(calender_out) - 1


async def test_a_modbus_ack_presents_the_next_record_to_the_very_next_read() -> None:
    stacker = Stacker(rng=random.Random(7), config=StackerConfig(packml=STEADY))
    for _ in range(int(3 * 40 / 0.5)):
        stacker.step(0.5)
    assert len(stacker.results.pending) >= 3
    register_map = machine_register_map(stacker.points)
    record = tuple(p for p in register_map if p.point in ("Result.RecordId", "Result.CellId"))
    ack = next(p for p in register_map if p.point == "Result.Ack")
    async with ModbusSimulatorServer(model=stacker, register_map=register_map, port=0, autostep=False) as server:
        client: Any = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=2, retries=0)
        assert await client.connect()
        try:
            seen = []
            for _ in range(3):  # no model step in between: the acks alone move the FIFO
                values = await read_register_points(client, record)
                record_id = int(values["Result.RecordId"])  # type: ignore[arg-type]
                seen.append((record_id, values["Result.CellId"]))
                assert not (await client.write_registers(ack.address, [0, record_id])).isError()
        finally:
            client.close()
    assert [record_id for record_id, _ in seen] == [1, 2, 3]
    assert len({cell for _, cell in seen}) == 3
