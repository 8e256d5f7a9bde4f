"""The OPC UA subscription-silence watchdog against real asyncua servers.

Two ways a server goes silent without closing the TCP connection:
* its publish engine hangs while every other service still answers (``publishing_muted``): only the silence
  watchdog can see that; asyncua's own ServerState probe keeps succeeding;
* the whole server process freezes (SIGSTOP): a hung PLC, or a dead switch in between.
Either way the source must report the link down within ``silence_timeout_s`` (+ the check interval), then build
a fresh client with a fresh subscription, and good values must flow again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.schema import STATUS_COMM_FAILURE, Quality
from gateway.sources.base import RawReading
from gateway.sources.opcua import OpcUaDeviceOptions, OpcUaSource, OpcUaTagRef
from tests.support.opcua import TEST_NAMESPACE, OpcUaTestServer, free_port

# Detection is asserted against a bound in seconds: run alone, after the parallel part of the suite.
pytestmark = pytest.mark.serial

REPO_ROOT = Path(__file__).resolve().parents[2]
KEEPALIVE_S = 0.5  # the server sends a keep-alive after 0.5 s without data (default: 5 s)
TIMEOUT_MS = 1000
# Scheduling slack for a loaded 2-core machine, on top of the documented bound.
SLACK_S = 2.0

TAGS = tuple(
    OpcUaTagRef(name=name, kind="s", identifier=identifier)
    for name, identifier in (("dryer/temperature", "Temperature"), ("line/count", "Count"))
)


class Recorder:
    """Collects what a source emits and reports, with the time of each link report."""

    def __init__(self) -> None:
        self.readings: list[RawReading] = []
        self.links: list[tuple[bool, str | None]] = []
        self.link_times: list[float] = []
        self._changed = asyncio.Event()

    async def emit(self, readings: Sequence[RawReading]) -> None:
        self.readings.extend(readings)
        self._changed.set()

    def report_link(self, connected: bool, error: str | None) -> None:
        self.links.append((connected, error))
        self.link_times.append(time.monotonic())
        self._changed.set()

    def of(self, tag: str) -> list[RawReading]:
        return [reading for reading in self.readings if reading.tag == tag]

    async def wait_until(self, condition: Callable[[], bool], within_s: float) -> None:
        try:
            async with asyncio.timeout(within_s):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"not within {within_s} s; links: {self.links}") from None


def make_source(endpoint: str) -> OpcUaSource:
    options = OpcUaDeviceOptions(
        endpoint=endpoint, namespace_uri=TEST_NAMESPACE, mode="subscribe", interval_ms=100, timeout_ms=TIMEOUT_MS
    )
    return OpcUaSource(
        device="coater-01",
        options=options,
        tags=TAGS,
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
        keepalive_s=KEEPALIVE_S,
    )


def detection_bound_s(source: OpcUaSource) -> float:
    """The documented bound: silence_timeout_s plus one watchdog check interval (min(1 s, silence / 4))."""
    silence = source.silence_timeout_s
    return silence + min(1.0, silence / 4)


@contextlib.asynccontextmanager
async def running(source: OpcUaSource, recorder: Recorder) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run(recorder.emit, recorder.report_link))
    try:
        yield
    finally:
        crashed = task.done() and not task.cancelled() and task.exception() is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not crashed, f"source task crashed: {task.exception()!r}"


def good_after_last_failure(recorder: Recorder) -> bool:
    """Every tag has a good reading after its latest comm_failure reading."""
    for tag in TAGS:
        history = recorder.of(tag.name)
        failures = [i for i, r in enumerate(history) if r.status == STATUS_COMM_FAILURE]
        if not failures or not any(r.quality is Quality.GOOD for r in history[failures[-1] + 1 :]):
            return False
    return True


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server() -> AsyncIterator[OpcUaTestServer]:
    srv = OpcUaTestServer()
    await srv.start()
    yield srv
    await srv.stop()


async def test_keepalives_alone_keep_a_quiet_subscription_alive(server: OpcUaTestServer) -> None:
    recorder = Recorder()
    source = make_source(server.endpoint)
    assert source.silence_timeout_s == 2.0  # max(3 keep-alives of 0.5 s, 2 timeouts of 1 s)
    async with running(source, recorder):
        await recorder.wait_until(lambda: len(recorder.readings) >= len(TAGS), within_s=10)
        # No value changes for well over the silence timeout: only keep-alives arrive, and they are enough.
        await asyncio.sleep(detection_bound_s(source) + 0.5)
    assert recorder.links == [(True, None)]
    assert source.stats.link_losses == 0
    assert len(recorder.readings) == len(TAGS)  # really nothing but keep-alives after the initial values


async def test_silent_subscription_on_a_live_server_is_torn_down_and_rebuilt(server: OpcUaTestServer) -> None:
    recorder = Recorder()
    source = make_source(server.endpoint)
    async with running(source, recorder):
        await recorder.wait_until(lambda: len(recorder.readings) >= len(TAGS), within_s=10)
        with server.publishing_muted():
            muted_at = time.monotonic()
            await recorder.wait_until(lambda: len(recorder.links) >= 2, within_s=detection_bound_s(source) + SLACK_S)
        detected_after = recorder.link_times[1] - muted_at
        assert recorder.links[1] == (False, f"subscription silent for {source.silence_timeout_s:g} s")
        assert detected_after <= detection_bound_s(source) + SLACK_S, detected_after
        # Not before the silence timeout either: keep-alives stopped at muted_at at the latest.
        assert detected_after >= source.silence_timeout_s - KEEPALIVE_S - 0.1, detected_after

        # Publishing works again: a NEW client with a new subscription delivers values, good.
        await recorder.wait_until(lambda: len(recorder.links) >= 3, within_s=10)
        await server.write("Count", 99)
        await recorder.wait_until(lambda: any(r.value == 99 for r in recorder.of("line/count")), within_s=10)
        await server.write("Count", 7)
    assert [up for up, _ in recorder.links] == [True, False, True]
    assert (source.stats.connects, source.stats.link_losses) == (2, 1)
    assert good_after_last_failure(recorder)
    for tag in TAGS:  # every tag marked bad once at the loss
        assert sum(r.status == STATUS_COMM_FAILURE for r in recorder.of(tag.name)) == 1


async def test_frozen_server_process_is_detected_within_the_bound_and_resubscribed() -> None:
    """SIGSTOP: the kernel keeps the TCP connection open, but nothing answers and nothing is published."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.opcua", str(port), cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE
    )
    recorder = Recorder()
    source = make_source(OpcUaTestServer(port=port).endpoint)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            assert (await process.stdout.readline()).strip() == b"READY"
        async with running(source, recorder):
            await recorder.wait_until(lambda: len(recorder.readings) >= len(TAGS), within_s=10)
            process.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            await recorder.wait_until(lambda: len(recorder.links) >= 2, within_s=detection_bound_s(source) + SLACK_S)
            detected_after = recorder.link_times[1] - frozen_at
            assert detected_after <= detection_bound_s(source) + SLACK_S, detected_after
            # While it stays frozen, connect attempts time out: still down, no flapping.
            await asyncio.sleep(1.0)
            assert [up for up, _ in recorder.links] == [True, False]

            process.send_signal(signal.SIGCONT)
            await recorder.wait_until(lambda: len(recorder.links) >= 3, within_s=15)
            # The fresh subscription sends the current values again: good, after the comm_failure.
            await recorder.wait_until(lambda: good_after_last_failure(recorder), within_s=10)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        await process.wait()
    assert [up for up, _ in recorder.links] == [True, False, True]
    assert recorder.links[1][1]  # with a reason
    assert source.stats.link_losses == 1
    assert source.stats.connects == 2  # a new client, not the old one revived
