"""A Modbus unit that keeps timing out is skipped, so it cannot stall the units it shares a connection with;
and a hung PLC (TCP accepted, nothing answered) cannot stall another connection in the same event loop.

Real pymodbus 3.16 servers on free loopback ports; the dead unit is a real server that swallows every request
for its unit id (tests/support/modbus.py ``DeafUnits``), the hung PLC a raw asyncio server that never answers.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.schema import STATUS_COMM_FAILURE, Quality
from gateway.sources.modbus import ModbusConnection, ModbusUnit, SerialEndpoint, TcpEndpoint
from gateway.sources.modbus_plan import ModbusField, plan_reads
from gateway.sources.modbus_skip import SkipPolicy
from tests.support.modbus import (
    FC_HOLDING,
    DeafUnits,
    Recorder,
    all_good,
    free_tcp_port,
    hung_tcp_server,
    serial_server,
    sim_device,
    socat_pty_pair,
    tcp_server,
)

INTERVAL_MS = 100  # every unit polls at 10 Hz
# Long against the interval, so the rate check tells skipping from not skipping: with no skip, the dead unit holds
# the connection most of the time and the healthy unit managed about 4 Hz (measured), below the 5 Hz asserted.
TIMEOUT_MS = 400
# Short periods so the test sees a skip, a failed probe and a recovery in a few seconds (defaults: 5 s -> 60 s).
FAST_SKIP = SkipPolicy(after_timeouts=3, min_s=1.0, max_s=2.0, jitter=0.2)


def unit(name: str, unit_id: int, recorder: Recorder, *, with_coils: bool = False) -> ModbusUnit:
    fields = [ModbusField(key="speed", table="holding", address=0, type="uint16")]
    if with_coils:  # a second request: a dead unit's cycle must end at its first timeout
        fields.append(ModbusField(key="running", table="coil", address=0, type="bool"))
    return ModbusUnit(
        name=name,
        plan=plan_reads(fields, unit_id=unit_id),
        interval_ms=INTERVAL_MS,
        emit=recorder.emit,
        report_link=recorder.report_link,
    )


def connection(port: int, units: list[ModbusUnit]) -> ModbusConnection:
    return ModbusConnection(
        endpoint=TcpEndpoint(host="127.0.0.1", port=port),
        units=units,
        timeout_ms=TIMEOUT_MS,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        skip=FAST_SKIP,
    )


def good_cycles(recorder: Recorder) -> int:
    return sum(1 for cycle in recorder.cycles if cycle and all(r.quality is Quality.GOOD for r in cycle))


async def rate_over(recorder: Recorder, window_s: float) -> float:
    """Good cycles per second over a measurement window (a fixed window is the point here, not a wait)."""
    before, started = good_cycles(recorder), time.monotonic()
    await asyncio.sleep(window_s)
    return (good_cycles(recorder) - before) / (time.monotonic() - started)


async def wait_for(condition: Callable[[], bool], *, within_s: float, what: str) -> None:
    """For plain counters that have no event to await."""
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.02)


def skipped_reason(seconds: float) -> str:
    return f"timeout: skipped for {seconds:g} s"


async def test_dead_unit_is_skipped_and_the_healthy_unit_keeps_its_rate() -> None:
    port = free_tcp_port()
    deaf = DeafUnits(unit_ids={2})
    healthy, dead = Recorder(), Recorder()
    async with tcp_server([sim_device(1), sim_device(2)], port, trace_pdu=deaf.trace_pdu) as server:
        await server.async_setValues(1, FC_HOLDING, 0, [11])
        await server.async_setValues(2, FC_HOLDING, 0, [22])
        units = [unit("healthy", 1, healthy), unit("dead", 2, dead, with_coils=True)]
        async with connection(port, units) as conn:
            await dead.wait_until(lambda r: (False, skipped_reason(1.0)) in r.links)
            # Reported down at the first timeout, then skipped after the third one in a row.
            assert dead.links[0][0] is False and dead.links[0][1]
            assert dead.links[1] == (False, skipped_reason(1.0))
            stats = conn.stats["dead"]
            assert (stats.timeouts, stats.backoffs) == (3, 1)
            assert len(dead.cycles) == 3  # one emit per timed-out cycle, none while skipped
            assert all(r.status == STATUS_COMM_FAILURE and r.quality is Quality.BAD for r in dead.cycles[-1])
            assert {r.tag for r in dead.cycles[-1]} == {"speed", "running"}

            # While the dead unit is skipped (and probed once per period, each probe costing one timeout),
            # the healthy unit on the same connection keeps (at least half) its 10 Hz.
            rate = await rate_over(healthy, 3.0)
            assert rate >= 0.5 * 1000 / INTERVAL_MS, f"healthy unit polled at {rate:.1f} Hz"
            assert healthy.links == [(True, None)]
            assert healthy.last["speed"].value == 11
            assert conn.stats["healthy"].comm_failures == 0
            # Probes failed meanwhile: the period doubled to the cap; each probe is one request, not two.
            assert (False, skipped_reason(2.0)) in dead.links
            assert all(not up for up, _ in dead.links)
            assert stats.timeouts == 3 + (stats.backoffs - 1)
            assert stats.backoff_skipped_polls > 0
            # Every request the server swallowed timed out once (a probe may be on the wire right now).
            assert stats.timeouts <= deaf.swallowed <= stats.timeouts + 1

            # The dead unit answers again: back to good within the back-off cap (plus slack for a loaded CPU).
            deaf.unit_ids.clear()
            await dead.wait_until(all_good, within_s=FAST_SKIP.max_s + 3.0)
            assert dead.links[-1] == (True, None)
            assert dead.last["speed"].value == 22
            assert stats.timeouts == 3 + (stats.backoffs - 1)  # no new timeouts after the recovery
            # And it polls at its normal rate again.
            assert await rate_over(dead, 1.0) >= 0.5 * 1000 / INTERVAL_MS


async def test_hung_plc_is_reported_down_and_retried_without_stalling_another_connection() -> None:
    hung_port, healthy_port = free_tcp_port(), free_tcp_port()
    hung_rec, healthy_rec = Recorder(), Recorder()
    async with hung_tcp_server(hung_port) as hung, tcp_server([sim_device(1)], healthy_port) as server:
        await server.async_setValues(1, FC_HOLDING, 0, [5])
        started = time.monotonic()
        async with (
            connection(hung_port, [unit("hung", 1, hung_rec)]) as hung_conn,
            connection(healthy_port, [unit("ok", 1, healthy_rec)]),
        ):
            await hung_rec.wait_until(lambda r: bool(r.links), within_s=5.0)
            down_after = time.monotonic() - started
            # Within its timeout (+ pymodbus's own margin and slack for a loaded machine).
            assert down_after < TIMEOUT_MS / 1000 + 1.5, f"link down reported after {down_after:.2f} s"
            assert hung_rec.links[0][0] is False and hung_rec.links[0][1]
            assert all(r.status == STATUS_COMM_FAILURE for r in hung_rec.cycles[0])

            # The healthy connection in the same loop keeps its rate while the hung one times out and backs off.
            rate = await rate_over(healthy_rec, 2.0)
            assert rate >= 0.5 * 1000 / INTERVAL_MS, f"healthy connection polled at {rate:.1f} Hz"
            assert healthy_rec.links == [(True, None)]

            # It keeps retrying: probes after each back-off, and after pymodbus gives the silent TCP connection up
            # (retries + 3 unanswered requests in a row) a reconnect.
            sent = hung.received_bytes
            await wait_for(lambda: hung.received_bytes > sent, within_s=FAST_SKIP.max_s + 3.0, what="a probe")
            await wait_for(lambda: hung.connections >= 2, within_s=8.0, what="a reconnect")
            assert hung_conn.stats["hung"].timeouts >= 3
            assert all(not up for up, _ in hung_rec.links)
            assert (False, skipped_reason(1.0)) in hung_rec.links
            assert healthy_rec.links == [(True, None)]


async def test_dead_slave_on_a_serial_line_is_skipped_and_comes_back(tmp_path: Path) -> None:
    """The same on Modbus RTU (a socat pty pair as the RS-485 line): the case the back-off is for."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (needed for a pty pair to run Modbus RTU)")
    deaf = DeafUnits(unit_ids={2})
    healthy, dead = Recorder(), Recorder()
    with socat_pty_pair(tmp_path) as (server_end, client_end):
        async with serial_server([sim_device(1), sim_device(2)], server_end, trace_pdu=deaf.trace_pdu) as server:
            await server.async_setValues(1, FC_HOLDING, 0, [11])
            await server.async_setValues(2, FC_HOLDING, 0, [22])
            units = [unit("healthy", 1, healthy), unit("dead", 2, dead)]
            endpoint = SerialEndpoint(port=client_end)
            async with ModbusConnection(endpoint=endpoint, units=units, timeout_ms=TIMEOUT_MS, skip=FAST_SKIP) as conn:
                await dead.wait_until(lambda r: (False, skipped_reason(1.0)) in r.links)
                rate = await rate_over(healthy, 2.0)
                assert rate >= 0.5 * 1000 / INTERVAL_MS, f"healthy unit polled at {rate:.1f} Hz"
                assert healthy.links == [(True, None)]
                assert conn.stats["dead"].backoffs >= 1

                deaf.unit_ids.clear()
                await dead.wait_until(all_good, within_s=FAST_SKIP.max_s + 3.0)
                assert dead.links[-1] == (True, None)
                assert dead.last["speed"].value == 22
                assert healthy.last["speed"].value == 11
