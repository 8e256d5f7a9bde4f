"""The poll loops under overload, against real servers (pymodbus, asyncua) and the real MessageQueue, drained by a
consumer that needs two poll intervals per batch (a sink at half the rate offered).

With ``max_queue_age_ms`` (one interval) a poll waits while the queued data is that old, so every batch is handed
on within a few intervals of its read and the skipped polls are counted; with 0 the same load queues ever older
batches. The whole gateway on a slow broker link is tests/e2e/test_overload_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from gateway.queueing import MessageQueue
from gateway.sources.base import RawReading
from gateway.sources.modbus import ModbusConnection, ModbusUnit, TcpEndpoint
from gateway.sources.modbus_plan import ModbusField, plan_reads
from gateway.sources.opcua import OpcUaDeviceOptions, OpcUaSource, OpcUaTagRef
from gateway.vocabulary import DataType, Table
from tests.support.modbus import free_tcp_port, sim_device, tcp_server
from tests.support.opcua import TEST_NAMESPACE, OpcUaTestServer
from tests.support.waiting import wait_until_async

INTERVAL_MS = 50
SINK_S_PER_BATCH = 2 * INTERVAL_MS / 1000  # 2x overload
BATCHES = 20


@dataclass
class SlowSink:
    """Takes one batch from ``queue`` every SINK_S_PER_BATCH; notes how old each batch's data was when it was done
    with it (handed on: the moment it asks for the next)."""

    queue: MessageQueue[RawReading]
    ages_ms: list[float] = field(default_factory=list)

    async def emit(self, readings: Sequence[RawReading]) -> None:
        await self.queue.put(list(readings))

    async def run(self) -> None:
        while True:
            batch = await self.queue.get()
            await asyncio.sleep(SINK_S_PER_BATCH)
            self.ages_ms.append((time.time() - min(r.ts for r in batch)) * 1000)

    async def until_batches(self, count: int) -> None:
        await wait_until_async(lambda: len(self.ages_ms) >= count, 60, f"{count} batches handed on")


@contextlib.asynccontextmanager
async def slow_sink() -> AsyncIterator[SlowSink]:
    sink = SlowSink(MessageQueue(100_000))
    task = asyncio.create_task(sink.run())
    try:
        yield sink
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


FIELDS = [ModbusField(key=f"hr{n}", table=Table.HOLDING, address=n, type=DataType.UINT16) for n in range(10)]


async def run_modbus(port: int, max_queue_age_ms: int) -> tuple[list[float], int]:
    async with slow_sink() as sink:
        unit = ModbusUnit(
            name="plc", plan=plan_reads(FIELDS, unit_id=1), interval_ms=INTERVAL_MS, emit=sink.emit,
            report_link=lambda connected, error: None, backlog=sink.queue, max_queue_age_ms=max_queue_age_ms,
        )  # fmt: skip
        connection = ModbusConnection(endpoint=TcpEndpoint(host="127.0.0.1", port=port), units=[unit])
        async with connection:
            await sink.until_batches(BATCHES)
        return sink.ages_ms, connection.stats["plc"].backlog_skipped


async def test_a_modbus_unit_skips_polls_while_the_queued_data_is_old_and_its_data_stays_fresh() -> None:
    port = free_tcp_port()
    async with tcp_server([sim_device(1)], port):
        capped, skipped = await run_modbus(port, INTERVAL_MS)
        uncapped, not_skipped = await run_modbus(port, 0)
    assert skipped >= BATCHES // 2, skipped  # about one poll in two
    assert not_skipped == 0
    # Waiting about an interval, then two to be handed on: generously, every batch within six intervals.
    assert max(capped[2:]) <= 6 * INTERVAL_MS, capped
    # Without the cap the queue grows by a batch every two intervals: the last ones are many intervals old.
    assert uncapped[-1] >= 8 * INTERVAL_MS, uncapped


async def test_opcua_poll_mode_skips_polls_for_the_backlog_too() -> None:
    server = OpcUaTestServer()
    await server.start()
    try:
        async with slow_sink() as sink:
            options = OpcUaDeviceOptions(
                endpoint=server.endpoint, namespace_uri=TEST_NAMESPACE, mode="poll", interval_ms=INTERVAL_MS,
                timeout_ms=2000, max_queue_age_ms=INTERVAL_MS,
            )  # fmt: skip
            tags = [OpcUaTagRef(name="count", kind="s", identifier="Count")]
            source = OpcUaSource(device="coater", options=options, tags=tags, backlog=sink.queue)
            task = asyncio.create_task(source.run(sink.emit, lambda connected, error: None))
            try:
                await sink.until_batches(8)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        await server.stop()
    assert source.stats.backlog_skipped >= 3, source.stats
    assert source.stats.polls >= 8
