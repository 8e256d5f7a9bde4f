"""The poll loops under overload, against real servers (pymodbus, asyncua) and the real MessageQueue, drained by a
consumer that needs two poll intervals per batch (a sink at half the rate offered).

With ``max_queue_age_ms`` (one interval) a poll waits while the queued data is that old, so every batch is handed
on within a few intervals of its read and the skipped polls are counted; with 0 the same load queues ever older
batches. With ``paced_reads`` as well, a sink that is busy gets a poll in parts, one request's readings at a time,
and the next request is read only once the sink has room (``PerValueSink``: its time goes by the reading). The
whole gateway on a slow broker link is tests/e2e/test_overload_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from gateway.queueing import MessageQueue
from gateway.sources.base import RawReading
from gateway.sources.modbus import ModbusConnection, ModbusUnit, TcpEndpoint
from gateway.sources.modbus_plan import ModbusField, ReadLimits, plan_reads
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


PACED_TAGS = 120
PER_READ = 10  # twelve requests per poll
SINK_S_PER_READING = 0.001  # a poll takes 120 ms (or more: asyncio's timers) to hand on: 2.4x overload at 50 ms


@dataclass
class PerValueSink:
    """Hands on one reading every ``per_reading_s``; notes each batch's size and each reading's age (from its
    ``ts``, the arrival of its read) when handed on."""

    queue: MessageQueue[RawReading]
    sizes: list[int] = field(default_factory=list)
    ages_ms: list[float] = field(default_factory=list)
    per_reading_s: float = SINK_S_PER_READING

    async def emit(self, readings: Sequence[RawReading]) -> None:
        await self.queue.put(list(readings))

    async def run(self) -> None:
        while True:
            batch = await self.queue.get()
            self.sizes.append(len(batch))
            for reading in batch:
                if self.per_reading_s:  # 0: a sink that is done with a batch as soon as it runs
                    await asyncio.sleep(self.per_reading_s)
                self.ages_ms.append((time.time() - reading.ts) * 1000)


async def run_paced(port: int, *, paced_reads: bool, per_reading_s: float, window: int = 1) -> PerValueSink:
    sink = PerValueSink(MessageQueue(100_000), per_reading_s=per_reading_s)
    task = asyncio.create_task(sink.run())
    fields = [ModbusField(key=f"hr{n}", table=Table.HOLDING, address=n, type=DataType.UINT16)
              for n in range(PACED_TAGS)]
    plan = plan_reads(fields, unit_id=1, limits=ReadLimits(max_registers_per_read=PER_READ))
    assert len(plan.requests) == PACED_TAGS // PER_READ
    unit = ModbusUnit(
        name="plc", plan=plan, interval_ms=INTERVAL_MS, emit=sink.emit, report_link=lambda connected, error: None,
        backlog=sink.queue, max_queue_age_ms=INTERVAL_MS, paced_reads=paced_reads,
    )  # fmt: skip
    connection = ModbusConnection(
        endpoint=TcpEndpoint(host="127.0.0.1", port=port), units=[unit], max_concurrent_requests=window
    )
    try:
        async with connection:
            await wait_until_async(lambda: len(sink.ages_ms) >= 10 * PACED_TAGS, 60, "10 polls handed on")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return sink


def p95(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.95)]


@pytest.mark.serial  # it bounds data ages in ms: run alone, not beside three other workers
async def test_paced_reads_hand_a_poll_over_by_request_while_the_sink_is_busy_and_its_values_stay_fresh() -> None:
    port = free_tcp_port()
    async with tcp_server([sim_device(1, holding=PACED_TAGS)], port):
        paced = await run_paced(port, paced_reads=True, per_reading_s=SINK_S_PER_READING)
        # Several requests on the wire at once: those sent ahead are given up and sent again after the wait, so
        # a value's ts is never older than its wait for the sink suggests.
        windowed = await run_paced(port, paced_reads=True, per_reading_s=SINK_S_PER_READING, window=4)
        whole = await run_paced(port, paced_reads=False, per_reading_s=SINK_S_PER_READING)
        idle = await run_paced(port, paced_reads=True, per_reading_s=0.0)
    # Paced: the overloaded sink gets parts of polls; a value waits for at most about two parts ahead of it and its
    # own (3 x 10 ms). Whole polls: the last value of a poll waits for the poll before it and its own (about 120 ms
    # each, less what the cap held back). The machine is shared and asyncio's 1 ms sleeps stretch with its load, so
    # the bounds are relative: paced values clearly younger than whole polls (a quiet machine: p95 about 90 ms
    # against 205, 0.45; the bound leaves room for a busy one).
    # (A poll that finds the sink idle at every answer, as when a short stall let it catch up, goes whole.)
    for sizes in (paced.sizes, windowed.sizes):
        assert set(sizes) <= {PER_READ, PACED_TAGS} and sizes.count(PER_READ) >= 0.8 * len(sizes), sizes
    assert set(whole.sizes) == {PACED_TAGS}, whole.sizes
    paced_p95, windowed_p95, whole_p95 = p95(paced.ages_ms), p95(windowed.ages_ms), p95(whole.ages_ms)
    print("p95 ms paced, windowed, whole:", paced_p95, windowed_p95, whole_p95)
    assert whole_p95 >= 2.4 * INTERVAL_MS, (paced_p95, windowed_p95, whole_p95)
    for fresh in (paced_p95, windowed_p95):
        assert fresh <= 0.65 * whole_p95, (paced_p95, windowed_p95, whole_p95)
    # A sink that keeps up is never busy when a request's answer is decoded: every poll is handed over whole.
    assert set(idle.sizes) == {PACED_TAGS}, idle.sizes


async def run_opcua_paced(server: OpcUaTestServer, *, paced_reads: bool) -> tuple[PerValueSink, int]:
    sink = PerValueSink(MessageQueue(100_000), per_reading_s=0.03)  # a poll of 4 takes 120 ms: 2.4x at 50 ms
    consumer = asyncio.create_task(sink.run())
    # A part the sink holds can be two parts (60 ms) old: a cap of one interval would also hold whole polls back
    # until the sink is idle; four intervals leave the pacing to the paced reads.
    options = OpcUaDeviceOptions(
        endpoint=server.endpoint, namespace_uri=TEST_NAMESPACE, mode="poll", interval_ms=INTERVAL_MS,
        timeout_ms=2000, max_queue_age_ms=4 * INTERVAL_MS,
    )  # fmt: skip
    tags = [OpcUaTagRef(name=name, kind="s", identifier=name) for name in ("Temperature", "Count", "Running", "Recipe")]
    source = OpcUaSource(device="coater", options=options, tags=tags, backlog=sink.queue, paced_reads=paced_reads)
    task = asyncio.create_task(source.run(sink.emit, lambda connected, error: None))
    try:
        await wait_until_async(lambda: len(sink.ages_ms) >= 40, 60, "10 polls handed on")
    finally:
        for running in (task, consumer):
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    return sink, source.stats.backlog_skipped


async def test_opcua_poll_mode_paces_its_reads_by_max_nodes_per_read_chunk() -> None:
    server = OpcUaTestServer(max_nodes_per_read=1)  # one Read per node: four per poll
    await server.start()
    try:
        paced, paced_skipped = await run_opcua_paced(server, paced_reads=True)
        whole, _ = await run_opcua_paced(server, paced_reads=False)
    finally:
        await server.stop()
    assert set(paced.sizes) <= {1, 4} and paced.sizes.count(1) >= 0.8 * len(paced.sizes), paced.sizes
    assert set(whole.sizes) == {4}, whole.sizes
    assert paced_skipped >= 3  # the paced polls took longer than their interval: the polls in between skipped
