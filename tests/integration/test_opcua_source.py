"""OpcUaSource against a real asyncua server on 127.0.0.1 (tests/support/opcua.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.schema import STATUS_COMM_FAILURE, Quality
from gateway.sources.base import RawReading
from gateway.sources.opcua import OpcUaDeviceOptions, OpcUaSource, OpcUaTagRef
from gateway.sources.opcua_status import STATUS_NAMESPACE_UNKNOWN
from tests.support.opcua import DECOY_VALUES, INITIAL_SOURCE_TS, TEST_NAMESPACE, OpcUaTestServer, free_port
from tests.support.recorder import Recorder, running

REPO_ROOT = Path(__file__).resolve().parents[2]
# The module server advertises MaxNodesPerRead = 2 and, like a real PLC, rejects larger Reads.
READ_LIMIT = 2




def options(server: OpcUaTestServer, **overrides: object) -> OpcUaDeviceOptions:
    settings: dict[str, object] = {
        "endpoint": server.endpoint,
        "namespace_uri": TEST_NAMESPACE,
        "mode": "subscribe",
        "interval_ms": 50,
        "timeout_ms": 2000,
    }
    settings.update(overrides)
    return OpcUaDeviceOptions(**settings)  # type: ignore[arg-type]


def tag(name: str, identifier: str, **namespace: object) -> OpcUaTagRef:
    return OpcUaTagRef(name=name, kind="s", identifier=identifier, **namespace)  # type: ignore[arg-type]


CELL_TAGS = (
    tag("dryer/temperature", "Temperature"),
    tag("line/count", "Count"),
    tag("line/running", "Running"),
    tag("line/recipe", "Recipe"),
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server() -> AsyncIterator[OpcUaTestServer]:
    srv = OpcUaTestServer(max_nodes_per_read=READ_LIMIT, enforce_max_nodes_per_read=READ_LIMIT)
    await srv.start()
    yield srv
    await srv.stop()


async def test_subscribe_delivers_initial_values_and_changes_with_source_timestamps(server: OpcUaTestServer) -> None:
    tags = (
        *CELL_TAGS,
        # Same node three ways: device namespace (above), nsu= URI, and ns= index.
        tag("alias/by_uri", "Temperature", namespace_uri=TEST_NAMESPACE),
        tag("alias/by_index", "Temperature", namespace_index=server.namespace_index),
    )
    recorder = Recorder()
    source = OpcUaSource(device="coater-01", options=options(server), tags=tags)
    async with running(source, recorder):
        await recorder.wait_until(lambda: all(recorder.of(t.name) for t in tags))
        assert recorder.links == [(True, None)]
        initial = {t.name: recorder.of(t.name)[0] for t in tags}
        assert [initial[t.name].value for t in tags] == [21.5, 7, True, "NMC811", 21.5, 21.5]
        assert all(r.quality is Quality.GOOD and r.status is None for r in initial.values())
        assert all(r.ts == INITIAL_SOURCE_TS.timestamp() for r in initial.values())

        changed_at = datetime(2026, 11, 26, 4, 43, 0, 250000, tzinfo=UTC)
        await server.write("Temperature", 30.5, ts=changed_at)
        await server.write("Recipe", "LFP", ts=changed_at)
        await recorder.wait_until(
            lambda: (
                recorder.has("line/recipe", "LFP")
                and all(recorder.has(n, 30.5) for n in ("dryer/temperature", "alias/by_uri", "alias/by_index"))
            )
        )
        for name in ("dryer/temperature", "alias/by_uri", "alias/by_index"):
            latest = recorder.latest(name)
            assert latest is not None
            assert (latest.value, latest.ts) == (30.5, changed_at.timestamp())
        await server.write("Temperature", 21.5, ts=INITIAL_SOURCE_TS)
        await server.write("Recipe", "NMC811", ts=INITIAL_SOURCE_TS)
    assert source.stats.notifications >= len(tags)
    assert source.stats.queue_overflow_dropped == 0
    # The data changes came through our own decoder (opcua_publish), not asyncua's per-notification path.
    assert source.stats.fast_publish_responses >= 2
    assert source.stats.unknown_handles == 0


async def test_subscribe_reports_bad_status_unknown_node_and_unknown_namespace(server: OpcUaTestServer) -> None:
    tags = (
        tag("dryer/sensor", "Sensor"),
        tag("dryer/missing", "NoSuchNode"),
        tag("elsewhere/value", "Temperature", namespace_uri="urn:not-on-this-server"),
        tag("dryer/temperature", "Temperature"),
    )
    recorder = Recorder()
    source = OpcUaSource(device="coater-01", options=options(server), tags=tags)
    async with running(source, recorder):
        await recorder.wait_until(lambda: all(recorder.of(t.name) for t in tags))
        # Let a few publishing intervals pass: failures are reported once, not per cycle.
        await asyncio.sleep(0.3)
    assert recorder.links == [(True, None)]
    assert [(r.value, r.quality, r.status) for r in recorder.of("dryer/sensor")] == [
        (None, Quality.BAD, "BadSensorFailure")
    ]
    assert [(r.value, r.quality, r.status) for r in recorder.of("dryer/missing")] == [
        (None, Quality.BAD, "BadNodeIdUnknown")
    ]
    assert [(r.value, r.quality, r.status) for r in recorder.of("elsewhere/value")] == [
        (None, Quality.BAD, STATUS_NAMESPACE_UNKNOWN)
    ]
    assert recorder.of("dryer/temperature")[0].value == 21.5


async def test_poll_reads_in_chunks_of_max_nodes_per_read_and_keeps_status(server: OpcUaTestServer) -> None:
    tags = (*CELL_TAGS, tag("dryer/sensor", "Sensor"), tag("dryer/missing", "NoSuchNode"))
    recorder = Recorder()
    source = OpcUaSource(device="coater-01", options=options(server, mode="poll", interval_ms=100), tags=tags)
    reads_before = len(server.read_sizes)
    async with running(source, recorder):
        await recorder.wait_until(lambda: source.stats.polls >= 1)
        first_cycle = {r.tag: r for r in recorder.readings[-len(tags) :]}
        changed_at = datetime(2026, 11, 26, 5, 0, 0, tzinfo=UTC)
        await server.write("Count", 8, ts=changed_at)
        await recorder.wait_until(lambda: recorder.has("line/count", 8))
        polls = source.stats.polls
        await recorder.wait_until(lambda: source.stats.polls >= polls + 2)
    assert recorder.links == [(True, None)]
    assert [first_cycle[t.name].value for t in CELL_TAGS] == [21.5, 7, True, "NMC811"]
    assert first_cycle["line/count"].ts == INITIAL_SOURCE_TS.timestamp()
    assert (first_cycle["dryer/sensor"].quality, first_cycle["dryer/sensor"].status) == (
        Quality.BAD,
        "BadSensorFailure",
    )
    assert (first_cycle["dryer/missing"].quality, first_cycle["dryer/missing"].status) == (
        Quality.BAD,
        "BadNodeIdUnknown",
    )
    latest = recorder.latest("line/count")
    assert latest is not None and (latest.value, latest.ts) == (8, changed_at.timestamp())
    # 6 nodes with MaxNodesPerRead = 2: three Reads of two per cycle, none rejected.
    value_reads = [size for size in server.read_sizes[reads_before:] if size > 1]
    assert value_reads and max(value_reads) == READ_LIMIT
    assert source.stats.read_requests == 3 * source.stats.polls
    assert source.stats.read_chunk_reductions == 0
    reads = source.stats.reads_by_result()  # cellgate_device_reads_total
    assert (reads["ok"], reads["timeout"], reads["error"]) == (source.stats.read_requests, 0, 0)
    await server.write("Count", 7, ts=INITIAL_SOURCE_TS)


async def test_poll_halves_reads_when_the_server_under_reports_its_limit(server: OpcUaTestServer) -> None:
    await server.set_advertised_max_nodes_per_read(0)  # "no limit", yet larger Reads are still rejected
    try:
        recorder = Recorder()
        source = OpcUaSource(device="coater-01", options=options(server, mode="poll", interval_ms=100), tags=CELL_TAGS)
        async with running(source, recorder):
            await recorder.wait_until(lambda: source.stats.polls >= 2)
        assert recorder.links == [(True, None)]
        assert source.stats.read_chunk_reductions == 1  # 4 → 2, then it sticks
        assert source.stats.reads_by_result()["error"] == 1  # the refused Read
        assert source.stats.reads_by_result()["ok"] == source.stats.read_requests - 1
        assert [r.value for r in recorder.readings[:4]] == [21.5, 7, True, "NMC811"]
    finally:
        await server.set_advertised_max_nodes_per_read(READ_LIMIT)


@pytest.mark.serial  # exactly one link down/up: on a loaded machine request timeouts add more
async def test_reconnect_after_restart_with_new_namespace_order() -> None:
    """Start the sources before the server (first connect fails), then restart the server with another
    namespace registered first: values must keep landing on the right tags, never on the decoys."""
    srv = OpcUaTestServer()
    sub_recorder, poll_recorder = Recorder(), Recorder()
    subscriber = OpcUaSource(
        device="sub", options=options(srv), tags=CELL_TAGS, backoff_initial_s=0.1, backoff_max_s=0.5
    )
    poller = OpcUaSource(
        device="poll",
        options=options(srv, mode="poll", interval_ms=100),
        tags=CELL_TAGS,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
    )

    async def both(condition: Callable[[Recorder], bool], within_s: float = 6.0) -> None:
        for recorder in (sub_recorder, poll_recorder):
            await recorder.wait_until(functools.partial(condition, recorder), within_s)

    try:
        async with running(subscriber, sub_recorder), running(poller, poll_recorder):
            await both(lambda r: bool(r.links))
            await srv.start()
            old_index = srv.namespace_index
            before = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)
            await srv.write("Temperature", 41.0, ts=before)
            await both(lambda r: r.has("dryer/temperature", 41.0))

            await srv.restart(decoy_first=True)
            assert srv.namespace_index == old_index + 1  # the test namespace really moved
            after = datetime(2026, 11, 26, 6, 0, 5, tzinfo=UTC)
            await srv.write("Temperature", 42.0, ts=after)
            await srv.write("Count", 43, ts=after)
            await both(lambda r: r.has("dryer/temperature", 42.0) and r.has("line/count", 43), within_s=10)
    finally:
        await srv.stop()

    decoys = {t.name: DECOY_VALUES[str(t.identifier)] for t in CELL_TAGS}
    for recorder, source in ((sub_recorder, subscriber), (poll_recorder, poller)):
        # Down at start (no server), up, down at the restart, up again.
        assert [up for up, _error in recorder.links] == [False, True, False, True]
        assert all(error for up, error in recorder.links if not up)
        assert source.stats.link_losses == 1
        for name in (t.name for t in CELL_TAGS):
            readings = recorder.of(name)
            comm_failures = [r for r in readings if r.status == STATUS_COMM_FAILURE]
            assert len(comm_failures) == 2, name  # once for the failed first connect, once for the restart
            assert all(r.quality is Quality.BAD and r.value is None for r in comm_failures)
            assert not any(r.value == decoys[name] for r in readings), name
        latest = recorder.latest("dryer/temperature")
        assert latest is not None and (latest.value, latest.ts, latest.quality) == (
            42.0,
            after.timestamp(),
            Quality.GOOD,
        )
        # Order: 41.0 before the restart's comm_failure, 42.0 after it.
        history = recorder.of("dryer/temperature")
        last_failure = max(i for i, r in enumerate(history) if r.status == STATUS_COMM_FAILURE)
        first_41 = next(i for i, r in enumerate(history) if r.value == 41.0)
        first_42 = next(i for i, r in enumerate(history) if r.value == 42.0)
        assert first_41 < last_failure < first_42


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_cancel_stops_the_source_promptly(server: OpcUaTestServer, mode: str) -> None:
    recorder = Recorder()
    source = OpcUaSource(device="coater-01", options=options(server, mode=mode), tags=CELL_TAGS)
    task = asyncio.create_task(source.run(recorder.emit, recorder.report_link))
    await recorder.wait_until(lambda: bool(recorder.readings))
    task.cancel()
    async with asyncio.timeout(3):
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert task.cancelled()
    assert recorder.links == [(True, None)]  # a stop is not reported as a link loss


async def test_full_queue_drops_oldest_readings_and_counts_them(server: OpcUaTestServer) -> None:
    recorder = Recorder()
    gate = asyncio.Event()

    async def slow_emit(readings: Sequence[RawReading]) -> None:
        await recorder.emit(readings)
        await gate.wait()  # the sink is stuck: notifications pile up in the source's queue

    source = OpcUaSource(
        device="coater-01", options=options(server), tags=(tag("line/count", "Count"),), notification_queue_size=2
    )
    async with running(source, recorder, emit=slow_emit):
        await recorder.wait_until(lambda: bool(recorder.readings))  # initial value, now blocked in emit
        for value in (100, 101, 102, 103):
            await server.write("Count", value)
            await asyncio.sleep(0.15)  # one publish per change
        async with asyncio.timeout(3):
            while source.stats.queue_overflow_dropped < 2:  # noqa: ASYNC110 - a plain counter, no event to await
                await asyncio.sleep(0.02)
        gate.set()
        await recorder.wait_until(lambda: recorder.has("line/count", 103))
    await server.write("Count", 7, ts=INITIAL_SOURCE_TS)
    assert [r.value for r in recorder.of("line/count")] == [7, 102, 103]  # 100 and 101 were the oldest
    assert source.stats.queue_overflow_dropped == 2


@pytest.mark.serial  # detection within seconds: run alone, after the parallel part
async def test_frozen_server_is_detected_and_reconnected() -> None:
    """SIGSTOP the server process: the TCP link stays open but nothing answers (a hung PLC, a dead switch)."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.opcua", str(port), cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(60):  # a busy machine (parallel tests) starts a server slowly
            assert (await process.stdout.readline()).strip() == b"READY"
        recorder = Recorder()
        source = OpcUaSource(
            device="coater-01",
            options=options(OpcUaTestServer(port=port), timeout_ms=1000),
            tags=CELL_TAGS,
            backoff_initial_s=0.1,
            backoff_max_s=0.5,
        )
        async with running(source, recorder):
            await recorder.wait_until(lambda: recorder.links == [(True, None)] and len(recorder.readings) >= 4)
            process.send_signal(signal.SIGSTOP)
            await recorder.wait_until(lambda: len(recorder.links) == 2, within_s=8)
            process.send_signal(signal.SIGCONT)
            await recorder.wait_until(lambda: len(recorder.links) == 3, within_s=8)
            # A good value again after the reconnect (the first one came before the freeze).
            await recorder.wait_until(lambda: sum(r.status is None for r in recorder.of("line/count")) >= 2)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        await process.wait()
    assert [up for up, _error in recorder.links] == [True, False, True]
    assert recorder.links[1][1]  # a reason is given
    latest = recorder.latest("line/count")
    assert latest is not None and (latest.value, latest.quality) == (7, Quality.GOOD)
    assert all(recorder.of(t.name)[-2].status == STATUS_COMM_FAILURE for t in CELL_TAGS)


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_an_emit_failure_is_raised_not_reported_as_link_loss(server: OpcUaTestServer, mode: str) -> None:
    recorder = Recorder()

    async def broken_emit(readings: Sequence[RawReading]) -> None:
        raise RuntimeError("sink exploded")

    source = OpcUaSource(device="coater-01", options=options(server, mode=mode), tags=CELL_TAGS)
    with pytest.raises(RuntimeError, match="sink exploded"):
        async with asyncio.timeout(5):
            await source.run(broken_emit, recorder.report_link)
    assert recorder.links == [(True, None)]
    assert source.stats.link_losses == 0
