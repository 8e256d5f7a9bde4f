"""Modbus writes and the event runner against pymodbus's server (a stack we did not write), on real sockets.

Our client's functions 5, 6 and 16 land in pymodbus's tables as the test suite's own encoder says; a PLC that
refuses the ack write (exception 2) gets the record again and again (never acknowledged, never lost); a record
whose ack value does not fit the ack tag is never written at all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from gateway.assembly import event_link, planned_events
from gateway.events.core import EventRecord
from gateway.events.runner import EventRunner, EventStats
from gateway.sinks.base import Delivery
from gateway.sources.modbus_tcp import ExceptionResponse, ModbusTcpClient, WriteConfirmed, WriteFunction
from gateway.tagmap import load_plant_from_text
from tests.support.modbus import FC_COILS, FC_HOLDING, encode_registers, free_tcp_port, sim_device, tcp_server
from tests.support.tagmap import HEADER
from tests.support.waiting import wait_until_async


async def test_writes_land_in_pymodbus_tables() -> None:
    port = free_tcp_port()
    async with tcp_server([sim_device(1)], port) as server, ModbusTcpClient("127.0.0.1", port) as client:
        words = encode_registers(3_000_000_123, "uint32", "CDAB")
        answer = await client.write(WriteFunction.WRITE_MULTIPLE_REGISTERS, unit_id=1, address=10, values=words,
                                    timeout_s=2)  # fmt: skip
        assert answer == WriteConfirmed(function=16, address=10, count=2)
        assert await server.async_getValues(1, FC_HOLDING, 10, 2) == words
        assert isinstance(await client.write(WriteFunction.WRITE_SINGLE_REGISTER, unit_id=1, address=3,
                                             values=[65535], timeout_s=2), WriteConfirmed)  # fmt: skip
        assert await server.async_getValues(1, FC_HOLDING, 3, 1) == [65535]
        assert isinstance(await client.write(WriteFunction.WRITE_SINGLE_COIL, unit_id=1, address=5, values=[1],
                                             timeout_s=2), WriteConfirmed)  # fmt: skip
        assert await server.async_getValues(1, FC_COILS, 5, 1) == [True]
        refused = await client.write(WriteFunction.WRITE_SINGLE_REGISTER, unit_id=1, address=500, values=[1],
                                     timeout_s=2)  # fmt: skip
        assert refused == ExceptionResponse(function=6, code=2)  # past the device's 100 holding registers


MAP = HEADER + """\
devices:
  - name: st
    area: a
    line: l
    protocol: modbus
    host: 127.0.0.1
    port: PORT
    interval_ms: 100
    tags:
      - {name: rec/id, address: 0, type: uint32}
      - {name: rec/cell, address: 2, type: string, length: 4}
      - {name: rec/ack_missing, address: 500, type: uint32}
      - {name: rec/ack_small, address: 20, type: uint16, max: 100}
    events:
      EVENT:
        trigger: {tag: rec/id}
        record: [rec/id, rec/cell]
        ack: {tag: ACK, value: id}
"""


async def run_runner(
    port: int, event: str, ack: str, until: Callable[[list[EventRecord], EventStats], object]
) -> tuple[list[EventRecord], EventStats]:
    text = MAP.replace("PORT", str(port)).replace("EVENT", event).replace("ACK", ack)
    device = load_plant_from_text(text).device("st")
    events = planned_events(device)
    published: list[EventRecord] = []

    async def publish(record: EventRecord) -> asyncio.Future[Delivery]:
        """Stands in for store-and-forward (the e2e test has the broker): delivered at once."""
        published.append(record)
        done: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        done.set_result(Delivery.ACKED)
        return done

    stats = EventStats()
    link = event_link(device, events, gateway_id="gw", pki_root=None)
    runner = EventRunner(device="st", events=events, publish=publish, interval_s=0.1, stats=stats, link=link,
                         reconnect_min_s=0.05)  # fmt: skip
    task = asyncio.create_task(runner.run())
    try:
        await wait_until_async(lambda: until(published, stats), 15, "the runner")
        await asyncio.sleep(0.3)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return published, stats


async def test_a_refused_ack_write_leaves_the_record_presented_and_it_is_published_again() -> None:
    port = free_tcp_port()
    async with tcp_server([sim_device(1)], port) as server:
        record = [*encode_registers(5, "uint32"), *encode_registers("C-5", "string", length=4)]
        await server.async_setValues(1, FC_HOLDING, 0, record)
        published, stats = await run_runner(port, "cell", "rec/ack_missing",
                                            lambda p, s: s.writes.get("exception", 0) >= 3)  # fmt: skip
    assert {record.record_id for record in published} == {5}
    assert len(published) >= 3, "read and published again after every failed ack (a duplicate, never a loss)"
    assert published[0].fields == {"id": 5, "cell": "C-5"}
    assert set(stats.writes) == {"exception"}


async def test_an_ack_value_outside_the_tag_range_is_never_written() -> None:
    port = free_tcp_port()
    async with tcp_server([sim_device(1)], port) as server:
        await server.async_setValues(1, FC_HOLDING, 0, encode_registers(70_000, "uint32"))
        published, stats = await run_runner(port, "cell", "rec/ack_small", lambda p, s: s.writes.get("refused", 0))
        assert await server.async_getValues(1, FC_HOLDING, 20, 1) == [0]
        # A record that fits is written (function 6, one register).
        await server.async_setValues(1, FC_HOLDING, 0, encode_registers(42, "uint32"))
        _, stats_ok = await run_runner(port, "cell", "rec/ack_small", lambda p, s: s.writes.get("ok", 0))
        assert await server.async_getValues(1, FC_HOLDING, 20, 1) == [42]
    assert [record.record_id for record in published] == [70_000], "refused once, not retried"
    assert stats.writes == {"refused": 1}
    assert stats_ok.writes == {"ok": 1}
