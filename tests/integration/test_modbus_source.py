"""ModbusConnection against real pymodbus 3.16 servers: TCP on a free loopback port, RTU over a socat pty pair."""

from __future__ import annotations

import asyncio
import shutil
import statistics
from collections.abc import Sequence
from pathlib import Path

import pytest
import structlog.testing
from pymodbus.server.base import ModbusBaseServer

from gateway.schema import Quality
from gateway.sources.modbus import ModbusConnection, ModbusUnit, SerialEndpoint, TcpEndpoint, await_within
from gateway.sources.modbus_plan import ModbusField, ReadLimits, plan_reads
from tests.support.modbus import (
    FC_COILS,
    FC_DISCRETE,
    FC_HOLDING,
    FC_INPUT,
    Recorder,
    Stall,
    all_good,
    all_status,
    encode_registers,
    free_tcp_port,
    serial_server,
    sim_device,
    socat_pty_pair,
    start_tcp_server,
    stop_server,
    tcp_server,
)

# Unit 1: a cell stacker's holding registers (0..99 exist) and coils; unit 2: a drive's input registers.
UNIT1_FIELDS = [
    ModbusField(key="cell/voltage", table="holding", address=0, type="float32", order="CDAB"),
    ModbusField(key="cell/temperature", table="holding", address=2, type="int16"),
    ModbusField(key="counter/cells", table="holding", address=3, type="uint32"),
    ModbusField(key="cell/id", table="holding", address=5, type="string", width=4),
    ModbusField(key="status/ready", table="holding", address=9, type="bool", bit=2),
    ModbusField(key="status/fault", table="holding", address=9, type="bool", bit=0),
    ModbusField(key="recipe/missing", table="holding", address=150, type="uint16"),  # not on the device
    ModbusField(key="coil/run", table="coil", address=0, type="bool"),
    ModbusField(key="coil/jog", table="coil", address=2, type="bool"),
]
UNIT2_FIELDS = [
    ModbusField(key="drive/speed", table="input", address=0, type="uint16"),
    ModbusField(key="drive/torque", table="input", address=1, type="float32"),
    ModbusField(key="drive/enabled", table="discrete", address=1, type="bool"),
]


async def load_values(server: ModbusBaseServer) -> None:
    set_values = server.async_setValues
    await set_values(1, FC_HOLDING, 0, encode_registers(3.712, "float32", "CDAB"))
    await set_values(1, FC_HOLDING, 2, encode_registers(-1234, "int16"))
    await set_values(1, FC_HOLDING, 3, encode_registers(3_000_000_000, "uint32"))
    await set_values(1, FC_HOLDING, 5, encode_registers("CELL-42", "string", length=4))
    await set_values(1, FC_HOLDING, 9, [0b0000_0000_0000_0100])
    await set_values(1, FC_COILS, 0, [True, False, False])
    await set_values(2, FC_INPUT, 0, [1450, *encode_registers(12.5, "float32")])
    await set_values(2, FC_DISCRETE, 0, [False, True])


def make_units(recorders: Sequence[Recorder], *, interval_ms: int = 50) -> list[ModbusUnit]:
    plans = [plan_reads(UNIT1_FIELDS, unit_id=1), plan_reads(UNIT2_FIELDS, unit_id=2)]
    assert all(plan.problems == () for plan in plans)
    return [
        ModbusUnit(name=f"dev{n}", plan=plan, interval_ms=interval_ms, emit=rec.emit, report_link=rec.report_link)
        for n, (plan, rec) in enumerate(zip(plans, recorders, strict=True), start=1)
    ]


def tcp_connection(port: int, units: Sequence[ModbusUnit], *, timeout_ms: int = 300) -> ModbusConnection:
    return ModbusConnection(
        endpoint=TcpEndpoint(host="127.0.0.1", port=port),
        units=units,
        timeout_ms=timeout_ms,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
    )


def good_except_missing(recorder: Recorder) -> bool:
    last = recorder.last
    return bool(last) and all(r.quality is Quality.GOOD for tag, r in last.items() if tag != "recipe/missing")


async def test_tcp_decodes_values_of_two_units_and_isolates_an_exception() -> None:
    port = free_tcp_port()
    async with tcp_server([sim_device(1), sim_device(2)], port) as server:
        await load_values(server)
        rec1, rec2 = Recorder(), Recorder()
        async with tcp_connection(port, make_units([rec1, rec2])) as connection:
            await rec1.wait_until(good_except_missing)
            await rec2.wait_until(all_good)
            values = {tag: r.value for tag, r in rec1.last.items()}
            assert values["cell/voltage"] == pytest.approx(3.712, rel=1e-6)
            assert values["cell/temperature"] == -1234
            assert values["counter/cells"] == 3_000_000_000
            assert values["cell/id"] == "CELL-42"
            assert (values["status/ready"], values["status/fault"]) == (True, False)
            assert (values["coil/run"], values["coil/jog"]) == (True, False)
            # The address the server does not have: only its own request is bad, with the exception code.
            missing = rec1.last["recipe/missing"]
            assert (missing.quality, missing.status, missing.value) == (Quality.BAD, "device_exception:2", None)
            assert rec2.last["drive/speed"].value == 1450
            assert rec2.last["drive/torque"].value == 12.5
            assert rec2.last["drive/enabled"].value is True
            assert rec1.links == [(True, None)] and rec2.links == [(True, None)]

            # Live change on the device shows up in a later poll.
            await server.async_setValues(1, FC_HOLDING, 0, encode_registers(-7.25, "float32", "CDAB"))
            await rec1.wait_until(lambda rec: rec.last["cell/voltage"].value == -7.25)
            assert connection.stats["dev1"].exception_responses >= 1
            assert connection.stats["dev2"].exception_responses == 0


async def test_tcp_server_restart_reports_comm_failure_then_recovers() -> None:
    port = free_tcp_port()
    rec1, rec2 = Recorder(), Recorder()
    server = await start_tcp_server([sim_device(1), sim_device(2)], port)
    try:
        await load_values(server)
        async with tcp_connection(port, make_units([rec1, rec2])):
            await rec1.wait_until(good_except_missing)
            await rec2.wait_until(all_good)

            await stop_server(server)
            await rec1.wait_until(all_status("comm_failure"))
            await rec2.wait_until(all_status("comm_failure"))
            assert all(r.value is None and r.quality is Quality.BAD for r in rec1.last.values())
            for rec in (rec1, rec2):
                assert rec.links[0] == (True, None)
                assert rec.links[1][0] is False and rec.links[1][1]

            server = await start_tcp_server([sim_device(1), sim_device(2)], port)  # same port
            await load_values(server)
            await rec1.wait_until(good_except_missing)
            await rec2.wait_until(all_good)
            # Exactly one report per change of state, however many failed polls there were.
            for rec in (rec1, rec2):
                assert [connected for connected, _ in rec.links] == [True, False, True]
                assert rec.links[-1] == (True, None)
    finally:
        await stop_server(server)


async def test_first_connect_is_retried_until_the_server_appears() -> None:
    port = free_tcp_port()
    rec1, rec2 = Recorder(), Recorder()
    async with tcp_connection(port, make_units([rec1, rec2])):
        await rec2.wait_until(all_status("comm_failure"))
        assert rec2.links[0][0] is False and str(port) in (rec2.links[0][1] or "")
        async with tcp_server([sim_device(1), sim_device(2)], port) as server:
            await load_values(server)
            await rec2.wait_until(all_good)
            assert rec2.links[-1] == (True, None)


async def test_unanswered_requests_time_out_as_comm_failure() -> None:
    port = free_tcp_port()
    stall = Stall(delay_s=0.5)
    rec = Recorder()
    plan = plan_reads([ModbusField(key="speed", table="holding", address=0, type="uint16")], unit_id=1)
    unit = ModbusUnit(name="drive", plan=plan, interval_ms=50, emit=rec.emit, report_link=rec.report_link)
    async with tcp_server([sim_device(1, action=stall.action)], port) as server:
        await server.async_setValues(1, FC_HOLDING, 0, [77])
        async with tcp_connection(port, [unit], timeout_ms=150) as connection:
            await rec.wait_until(all_good)
            stall.active = True
            await rec.wait_until(all_status("comm_failure"))
            assert rec.links[-1][0] is False
            assert connection.stats["drive"].comm_failures >= 1
            stall.active = False
            await rec.wait_until(lambda r: all_good(r) and r.last["speed"].value == 77, within_s=10)
            assert rec.links[-1] == (True, None)


@pytest.mark.serial  # compares poll gaps in milliseconds: run alone, after the parallel part
async def test_overruns_are_counted_and_the_next_poll_starts_at_once_never_in_a_burst() -> None:
    port = free_tcp_port()
    rec = Recorder(emit_delay_s=0.05)  # a slow consumer: every cycle takes longer than the 20 ms interval
    plan = plan_reads([ModbusField(key="speed", table="holding", address=0, type="uint16")], unit_id=1)
    unit = ModbusUnit(name="drive", plan=plan, interval_ms=20, emit=rec.emit, report_link=rec.report_link)
    async with tcp_server([sim_device(1)], port), tcp_connection(port, [unit]) as connection:
        await rec.wait_until(lambda r: len(r.cycles) >= 6)
        stats = connection.stats["drive"]
        assert stats.overruns >= 5
        # Each ~50 ms cycle pushes the 20 ms schedule back by ~30 ms: 1.5 polls the fixed rate did not get.
        assert stats.skipped_cycles >= stats.overruns
        gaps = [b - a for a, b in zip(rec.emit_started, rec.emit_started[1:], strict=False)]
        # No burst to catch up: polls are never closer together than one interval ...
        assert min(gaps) >= 0.019
        # ... and no idle slot either: the next poll follows the overrun cycle at once, not at the next 20 ms
        # slot (which would make every gap 60 ms: 50 ms of cycle, then the wait for the slot after it).
        assert statistics.median(gaps) < 0.058


async def answer_despite_cancel(answered: asyncio.Event) -> str:
    """A library call that turns a cancel into an answer: what ``asyncio.wait_for`` inside pymodbus does on
    Python 3.11 when the cancel and the device's answer land in the same loop iteration (CPython gh-86296)."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        answered.set()
        return "late answer"
    return "answer"


async def test_cancelling_a_poll_is_not_lost_when_the_call_swallows_it() -> None:
    # Regression: a poll task whose cancel was swallowed kept polling, and stopping the connection hung forever.
    answered = asyncio.Event()
    caller = asyncio.create_task(await_within(answer_despite_cancel(answered), 5))
    await asyncio.sleep(0.01)  # the call is in flight
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(answered.wait(), 1)  # the call itself was cancelled too, not leaked


async def test_await_within_times_out_a_call_that_swallows_the_timeout() -> None:
    answered = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await await_within(answer_despite_cancel(answered), 0.05)
    assert loop.time() - started < 1
    await asyncio.wait_for(answered.wait(), 1)


async def test_rtu_two_units_on_one_serial_line(tmp_path: Path) -> None:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (needed for a pty pair to run Modbus RTU)")
    rec1, rec2 = Recorder(), Recorder()
    limits = ReadLimits(max_gap=0)
    plan1 = plan_reads(
        [
            ModbusField(key="voltage", table="holding", address=0, type="float32", order="DCBA"),
            ModbusField(key="step", table="holding", address=4, type="int16"),
        ],
        unit_id=1,
        limits=limits,
    )
    plan2 = plan_reads(
        [
            ModbusField(key="voltage", table="holding", address=0, type="float32", order="BADC"),
            ModbusField(key="name", table="holding", address=2, type="string", width=3),
            ModbusField(key="relay", table="coil", address=5, type="bool"),
        ],
        unit_id=2,
        limits=limits,
    )
    with socat_pty_pair(tmp_path) as (server_end, client_end):
        async with serial_server([sim_device(1), sim_device(2)], server_end) as server:
            await server.async_setValues(1, FC_HOLDING, 0, encode_registers(4.125, "float32", "DCBA"))
            await server.async_setValues(1, FC_HOLDING, 4, encode_registers(-3, "int16"))
            await server.async_setValues(2, FC_HOLDING, 0, encode_registers(2.5, "float32", "BADC"))
            await server.async_setValues(2, FC_HOLDING, 2, encode_registers("RTU 2", "string", length=3))
            await server.async_setValues(2, FC_COILS, 5, [True])
            units = [
                ModbusUnit(name="cycler-1", plan=plan1, interval_ms=50, emit=rec1.emit, report_link=rec1.report_link),
                ModbusUnit(name="cycler-2", plan=plan2, interval_ms=50, emit=rec2.emit, report_link=rec2.report_link),
            ]
            endpoint = SerialEndpoint(port=client_end, baudrate=19200, parity="N", stopbits=1, bytesize=8)
            async with ModbusConnection(endpoint=endpoint, units=units, timeout_ms=500) as connection:
                await rec1.wait_until(all_good)
                await rec2.wait_until(all_good)
                assert {t: r.value for t, r in rec1.last.items()} == {"voltage": 4.125, "step": -3}
                assert {t: r.value for t, r in rec2.last.items()} == {"voltage": 2.5, "name": "RTU 2", "relay": True}
                await asyncio.sleep(0.2)  # both units keep polling the shared line
                assert connection.stats["cycler-1"].cycles >= 3 and connection.stats["cycler-2"].cycles >= 3
                assert connection.stats["cycler-1"].comm_failures == connection.stats["cycler-2"].comm_failures == 0
                assert rec1.links == [(True, None)] and rec2.links == [(True, None)]


async def test_overload_is_counted_logged_once_and_every_tag_still_published() -> None:
    """A sink slower than the poll interval: every cycle still carries every tag, the overrun is logged once."""
    port = free_tcp_port()
    async with tcp_server([sim_device(1), sim_device(2)], port) as server:
        await load_values(server)
        rec1, rec2 = Recorder(emit_delay_s=0.06), Recorder()  # 60 ms hand-over against a 20 ms interval
        with structlog.testing.capture_logs() as logs:
            async with tcp_connection(port, make_units([rec1, rec2], interval_ms=20)) as connection:
                await rec1.wait_until(lambda r: len(r.cycles) >= 10, within_s=10)
                stats = connection.stats["dev1"]
                assert stats.overruns >= 5
                assert stats.skipped_cycles >= stats.overruns
    # The reachable rate (one cycle per ~60 ms) carries every tag each time: nothing is starved.
    assert all({r.tag for r in cycle} == {f.key for f in UNIT1_FIELDS} for cycle in rec1.cycles)
    # dev1's sink is slow by design; dev2 may overrun too on a loaded machine, which is not what is checked here.
    overruns = [entry for entry in logs if entry["event"] == "poll_overrun" and entry["device"] == "dev1"]
    assert len(overruns) == 1, overruns  # once a minute at most, not once per cycle
    assert overruns[0]["device"] == "dev1" and overruns[0]["interval_ms"] == 20
    assert overruns[0]["log_level"] == "warning"


async def test_a_held_up_source_logs_the_end_of_the_stall_with_the_polls_it_cost() -> None:
    """Issue 10, defect 2 (a hung broker stalls polling): a hand-over that blocks for a while costs polls that never
    happen. ``poll_overrun`` is logged when it starts; ``poll_caught_up`` when the schedule keeps time again, with
    the polls the stall cost, so the gap is in the log and not only in the counters."""
    port = free_tcp_port()
    async with tcp_server([sim_device(1), sim_device(2)], port) as server:
        await load_values(server)
        rec1, rec2 = Recorder(), Recorder()
        with structlog.testing.capture_logs() as logs:
            async with tcp_connection(port, make_units([rec1, rec2], interval_ms=50)) as connection:
                await rec1.wait_until(lambda r: len(r.cycles) >= 3)
                rec1.emit_delay_s = 0.5  # the queue is full for a while: each hand-over blocks 0.5 s
                await rec1.wait_until(lambda r: len(r.cycles) >= 6)
                rec1.emit_delay_s = 0.0
                await rec1.wait_until(lambda r: any(entry["event"] == "poll_caught_up" for entry in logs), within_s=5)
                stats = connection.stats["dev1"]
    # Only dev1's hand-over is held up; dev2 may overrun on a loaded machine, which is not what is checked here.
    overruns = [entry for entry in logs if entry["event"] == "poll_overrun" and entry["device"] == "dev1"]
    caught_up = [entry for entry in logs if entry["event"] == "poll_caught_up" and entry["device"] == "dev1"]
    assert len(overruns) == 1 and len(caught_up) == 1, logs
    assert caught_up[0]["device"] == "dev1"
    assert caught_up[0]["skipped_cycles"] >= 3 * 8  # three or four hand-overs of 0.5 s at 50 ms: ~30 polls lost
    # The counters agree (a late cycle after the line, on a busy machine, could only add to them).
    assert 0 <= stats.skipped_cycles - caught_up[0]["skipped_cycles"] <= 2
    assert 0 <= stats.overruns - caught_up[0]["overruns"] <= 2
