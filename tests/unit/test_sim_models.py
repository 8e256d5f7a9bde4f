"""Invariants of the pure simulator models (PackML, coater, formation rack) and the Modbus register encoding."""

from __future__ import annotations

import itertools
import math
import random
import struct
from collections.abc import Mapping

import pytest

from simulators.machines.coater import Coater, CoaterConfig
from simulators.machines.formation import (
    OCV_SOC,
    OCV_V,
    ChannelStatus,
    EndReason,
    FormationChannel,
    FormationConfig,
    FormationProtocol,
    FormationRack,
    ocv,
    soc_at_ocv,
)
from simulators.machines.packml import (
    LEGAL_TRANSITIONS,
    PackMLCommand,
    PackMLMachine,
    PackMLState,
    PackMLTiming,
    next_state,
)
from simulators.machines.points import DataType, PointSpec, Value
from simulators.servers.modbus_server import (
    Encoding,
    RegisterPoint,
    Table,
    build_images,
    encode,
    formation_register_map,
    table_sizes,
)
from tests.support.sim import num

S = PackMLState
C = PackMLCommand

# Execute forever: no disturbances. Lets tests look at the process without PackML stops in the way.
STEADY = PackMLTiming(
    mean_s_between_holds=None,
    mean_s_between_suspends=None,
    mean_s_between_stops=None,
    mean_s_between_aborts=None,
    mean_s_between_completes=None,
)
PYTHON_TYPES: Mapping[DataType, tuple[type, ...]] = {
    DataType.DOUBLE: (float,),
    DataType.INT32: (int,),
    DataType.UINT32: (int,),
    DataType.BOOLEAN: (bool,),
    DataType.STRING: (str,),
}


def state_of(machine: PackMLMachine) -> PackMLState:
    return machine.state


def status_of(channel: FormationChannel) -> ChannelStatus:
    return channel.status


def check_values_match_points(points: tuple[PointSpec, ...], values: Mapping[str, Value]) -> None:
    assert set(values) == {p.name for p in points}
    for point in points:
        value = values[point.name]
        assert isinstance(value, PYTHON_TYPES[point.data_type]), (point.name, value)
        if point.data_type in (DataType.INT32, DataType.UINT32):
            assert not isinstance(value, bool), point.name
        if isinstance(value, float):
            assert math.isfinite(value), point.name
        if point.min is not None and not isinstance(value, str | bool):
            assert value >= point.min, (point.name, value)
        if point.max is not None and not isinstance(value, str | bool):
            assert value <= point.max, (point.name, value)


# ------------------------------------------------------------------------------------------------ PackML


@pytest.mark.parametrize(
    ("state", "command", "expected"),
    [
        (S.IDLE, C.START, S.STARTING),
        (S.STARTING, C.STATE_COMPLETE, S.EXECUTE),
        (S.EXECUTE, C.HOLD, S.HOLDING),
        (S.HOLDING, C.STATE_COMPLETE, S.HELD),
        (S.HELD, C.UNHOLD, S.UNHOLDING),
        (S.UNHOLDING, C.STATE_COMPLETE, S.EXECUTE),
        (S.EXECUTE, C.SUSPEND, S.SUSPENDING),
        (S.SUSPENDED, C.UNSUSPEND, S.UNSUSPENDING),
        (S.EXECUTE, C.STOP, S.STOPPING),
        (S.HELD, C.STOP, S.STOPPING),
        (S.STOPPING, C.STATE_COMPLETE, S.STOPPED),
        (S.STOPPED, C.RESET, S.RESETTING),
        (S.RESETTING, C.STATE_COMPLETE, S.IDLE),
        (S.SUSPENDED, C.ABORT, S.ABORTING),
        (S.ABORTING, C.STATE_COMPLETE, S.ABORTED),
        (S.ABORTED, C.CLEAR, S.CLEARING),
        (S.CLEARING, C.STATE_COMPLETE, S.STOPPED),
        (S.EXECUTE, C.TO_COMPLETE, S.COMPLETING),
        (S.COMPLETE, C.RESET, S.RESETTING),
        # Not allowed:
        (S.IDLE, C.HOLD, None),
        (S.STOPPED, C.START, None),
        (S.STOPPED, C.STOP, None),
        (S.ABORTED, C.STOP, None),
        (S.ABORTED, C.ABORT, None),
        (S.EXECUTE, C.STATE_COMPLETE, None),
        (S.HELD, C.UNSUSPEND, None),
    ],
)
def test_packml_next_state(state: PackMLState, command: PackMLCommand, expected: PackMLState | None) -> None:
    assert next_state(state, command) is expected


def test_packml_state_numbers_follow_opc_30050() -> None:
    assert (S.CLEARING, S.STOPPED, S.IDLE, S.EXECUTE, S.ABORTED, S.HELD, S.COMPLETE) == (1, 2, 4, 6, 9, 11, 17)


def test_long_seeded_run_takes_only_legal_transitions_and_visits_every_path() -> None:
    machine = PackMLMachine(rng=random.Random(7))
    rng = random.Random(99)  # uneven step sizes, including steps longer than whole states
    seen: set[tuple[PackMLState, PackMLState]] = set()
    state = machine.state
    last_at = 0.0
    for _ in range(100_000):
        for transition in machine.step(rng.choice((0.2, 1.0, 5.0, 30.0))):
            assert (transition.source, transition.target) in LEGAL_TRANSITIONS
            assert transition.source is state  # transitions chain: nothing is skipped
            assert transition.at_s >= last_at
            state, last_at = transition.target, transition.at_s
            seen.add((transition.source, transition.target))
        assert machine.state is state
    required = {
        (S.IDLE, S.STARTING), (S.STARTING, S.EXECUTE),
        (S.EXECUTE, S.HOLDING), (S.HOLDING, S.HELD), (S.HELD, S.UNHOLDING), (S.UNHOLDING, S.EXECUTE),
        (S.EXECUTE, S.SUSPENDING), (S.SUSPENDING, S.SUSPENDED), (S.SUSPENDED, S.UNSUSPENDING),
        (S.UNSUSPENDING, S.EXECUTE),
        (S.EXECUTE, S.STOPPING), (S.STOPPING, S.STOPPED), (S.STOPPED, S.RESETTING), (S.RESETTING, S.IDLE),
        (S.EXECUTE, S.ABORTING), (S.ABORTING, S.ABORTED), (S.ABORTED, S.CLEARING), (S.CLEARING, S.STOPPED),
        (S.EXECUTE, S.COMPLETING), (S.COMPLETING, S.COMPLETE), (S.COMPLETE, S.RESETTING),
    }
    assert required <= seen


def test_packml_sequence_does_not_depend_on_step_size() -> None:
    def run(dt_s: float) -> list[tuple[PackMLState, float]]:
        machine = PackMLMachine(rng=random.Random(3))
        out: list[tuple[PackMLState, float]] = []
        for _ in range(round(20 * 3600 / dt_s)):
            out += [(t.target, t.at_s) for t in machine.step(dt_s)]
        return out

    fine, coarse = run(0.5), run(60.0)
    assert len(fine) > 20
    assert [s for s, _ in fine] == [s for s, _ in coarse]
    assert [t for _, t in fine] == pytest.approx([t for _, t in coarse], abs=1e-6)


def test_packml_external_commands_are_checked() -> None:
    machine = PackMLMachine(rng=random.Random(1), timing=STEADY)
    assert machine.command(C.START) is None  # not allowed in Execute
    assert state_of(machine) is S.EXECUTE
    transition = machine.command(C.HOLD)
    assert transition is not None
    assert (transition.source, transition.target) == (S.EXECUTE, S.HOLDING)
    assert machine.command(C.STATE_COMPLETE) is None  # internal event, not a command
    machine.step(10.0)  # Holding lasts at most 10 s
    assert state_of(machine) is S.HELD
    assert machine.command(C.ABORT) is not None
    assert state_of(machine) is S.ABORTING


def test_suspension_reports_an_interlock() -> None:
    machine = PackMLMachine(rng=random.Random(5), timing=STEADY)
    machine.command(C.SUSPEND)
    assert machine.interlock in ("blocked", "starved")
    machine.step(5.0)  # Suspending lasts at most 5 s
    assert state_of(machine) is S.SUSPENDED
    assert machine.interlock is not None
    machine.step(120.0)  # the wait in Suspended is at most 120 s, Unsuspending at most 5 s
    machine.step(5.0)
    assert state_of(machine) is S.EXECUTE
    assert machine.interlock is None


# ------------------------------------------------------------------------------------------------ coater


def test_coater_values_have_the_declared_types_and_ranges_over_a_long_run() -> None:
    coater = Coater(rng=random.Random(11))
    check_values_match_points(coater.points, coater.values())
    states = set()
    for _ in range(20_000):
        values = coater.step(1.0)
        states.add(values["PackML.StateCurrent"])
        assert values["PackML.StateCurrent"] == coater.packml.state
    check_values_match_points(coater.points, coater.values())
    assert len(states) >= 8  # the run went through stops, holds and suspensions


def test_coater_counters_never_go_backwards() -> None:
    coater = Coater(rng=random.Random(2))
    monotonic = ("Line.Length", "PackML.ProdProcessedCount", "PackML.ProdDefectiveCount", "Energy.ActiveEnergy")
    previous = dict(coater.values())
    for _ in range(30_000):
        values = coater.step(0.7)
        for name in monotonic:
            assert num(values[name]) >= num(previous[name]), name
        beat = values["Diagnostics.Heartbeat"]
        assert isinstance(beat, int)
        assert (beat - int(previous["Diagnostics.Heartbeat"])) % 65536 <= 1  # +1/s, wrapping
        previous = dict(values)
    assert num(previous["Line.Length"]) > 5_000  # it did produce (0.7 s x 30 000 = 5.8 h)


def test_coater_heartbeat_wraps_at_65536() -> None:
    coater = Coater(rng=random.Random(1), config=CoaterConfig(noise=False, packml=STEADY))
    coater.step(65_535.5)
    assert coater.values()["Diagnostics.Heartbeat"] == 65535
    coater.step(1.0)
    assert coater.values()["Diagnostics.Heartbeat"] == 0


def test_dryer_zones_approach_new_setpoints_monotonically() -> None:
    coater = Coater(rng=random.Random(4), config=CoaterConfig(noise=False, packml=STEADY))
    coater.set_zone_setpoint(3, 160.0)  # from 125: a step up
    coater.set_zone_setpoint(5, 100.0)  # from 140: a step down
    trace3: list[float] = []
    trace5: list[float] = []
    for _ in range(1200):
        values = coater.step(1.0)
        trace3.append(num(values["Dryer.Zone03.AirTemp"]))
        trace5.append(num(values["Dryer.Zone05.AirTemp"]))
    assert all(b > a for a, b in itertools.pairwise(trace3))
    assert all(b < a for a, b in itertools.pairwise(trace5))
    assert max(trace3) <= 160.0  # no overshoot
    assert min(trace5) >= 100.0
    # tau = 240 s, so after 1200 s = 5 tau only e^-5 of the step is left.
    assert trace3[-1] == pytest.approx(160.0 - 35.0 * math.exp(-5.0), abs=1e-6)
    assert trace5[-1] == pytest.approx(100.0 + 40.0 * math.exp(-5.0), abs=1e-6)
    assert values["Dryer.Zone01.AirTemp"] == 90.0  # the other zones stay put


def test_coater_steady_state_obeys_the_mass_balance() -> None:
    coater = Coater(rng=random.Random(1), config=CoaterConfig(noise=False, packml=STEADY))
    values = coater.step(1.0)
    cfg = coater.config
    flow_cm3_s = num(values["CoatingHead.Flow"]) * 1000.0 / 60.0
    speed_m_s = num(values["Line.Speed"]) / 60.0
    weight = cfg.solids_fraction * cfg.slurry_density_g_cm3 * flow_cm3_s / (speed_m_s * cfg.coated_width_m)
    assert weight == pytest.approx(220.0, rel=1e-9)
    assert values["Gauge.CoatWeight"] == pytest.approx(220.0)
    assert values["CoatingHead.WetFilm"] == pytest.approx(220.0 / (0.70 * 2.2))  # 142.9 um wet
    assert 180.0 < num(values["CoatingHead.PumpSpeed"]) < 210.0
    assert 300.0 < num(values["Energy.ActivePower"]) < 900.0


def test_coat_weight_transient_reaches_the_gauge_after_the_web_transport_delay() -> None:
    coater = Coater(rng=random.Random(1), config=CoaterConfig(noise=False, packml=STEADY))
    coater.set_speed_sp(70.0)  # the pump lags the ramp, so the die coats light for a few seconds
    wet, gauge, length = [], [], []
    for _ in range(600):
        values = coater.step(0.5)
        wet.append(num(values["CoatingHead.WetFilm"]))
        gauge.append(num(values["Gauge.CoatWeight"]))
        length.append(num(values["Line.Length"]))
    nominal_wet = 220.0 / (0.70 * 2.2)
    assert min(wet[:20]) < nominal_wet * 0.99  # the die sees the dip at once
    first_dip = next(i for i, g in enumerate(gauge) if g < 220.0 * 0.99)
    # The gauge sees it only after the dipped web has travelled the 80 m from the die to the gauge.
    first_light = next(i for i, w in enumerate(wet) if w < nominal_wet * 0.99)
    assert length[first_dip] - length[first_light] == pytest.approx(80.0, abs=1.5)
    assert gauge[-1] == pytest.approx(220.0, rel=1e-3)  # and recovers once the pump has caught up
    assert coater.values()["Line.Speed"] == pytest.approx(70.0)


def test_abort_is_a_web_break() -> None:
    coater = Coater(rng=random.Random(1), config=CoaterConfig(noise=False, packml=STEADY))
    coater.step(1.0)
    coater.packml.command(C.ABORT)
    values = coater.step(2.0)
    assert values["Alarms.WebBreak"] is True
    assert num(values["Line.Speed"]) <= 50.0 - 2 * 20.0 + 1e-9  # fast stop
    values = coater.step(10.0)
    assert values["Line.Speed"] == 0.0
    assert num(values["Unwind.Tension"]) < 1.0


def test_same_seed_gives_identical_values_and_another_seed_does_not() -> None:
    def run(seed: int) -> list[dict[str, Value]]:
        coater = Coater(rng=random.Random(seed))
        return [dict(coater.step(0.2)) for _ in range(500)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_negative_or_nan_dt_is_rejected() -> None:
    coater = Coater(rng=random.Random(1))
    with pytest.raises(ValueError, match="dt_s"):
        coater.step(-1.0)
    with pytest.raises(ValueError, match="dt_s"):
        coater.step(math.nan)


# ------------------------------------------------------------------------------------------------ formation


def test_ocv_table_is_increasing_and_invertible() -> None:
    assert all(b > a for a, b in itertools.pairwise(OCV_V))
    for soc in (0.0, 0.03, 0.25, 0.5, 0.93, 1.0):
        assert soc_at_ocv(ocv(soc)) == pytest.approx(soc)
    assert ocv(0.5) == pytest.approx(3.70)
    assert OCV_SOC[-1] == 1.0


def quiet_channel(seed: int = 1, **protocol: float) -> FormationChannel:
    return FormationChannel(rng=random.Random(seed), noise=False,
                            protocol=FormationProtocol(contact_fault_probability=0.0, **protocol))


def run_to(channel: FormationChannel, status: ChannelStatus, dt_s: float = 10.0, limit_s: float = 50_000) -> None:
    elapsed = 0.0
    while channel.status is not status:
        channel.step(dt_s, plate_temp_cel=45.0)
        elapsed += dt_s
        assert elapsed < limit_s, f"never reached {status.name}"


def test_channel_runs_the_protocol_in_order() -> None:
    channel = quiet_channel()
    seen: list[tuple[ChannelStatus, int]] = []
    for _ in range(30_000):
        channel.step(1.0, plate_temp_cel=45.0)
        key = (channel.status, channel.step_index)
        if not seen or seen[-1] != key:
            seen.append(key)
    expected_cycle = [
        (ChannelStatus.REST, 0), (ChannelStatus.CC_CHARGE, 1), (ChannelStatus.CV_CHARGE, 1),
        (ChannelStatus.REST, 2), (ChannelStatus.FINISHED, 2),
    ]
    assert seen[: 2 * len(expected_cycle)] == expected_cycle * 2
    assert channel.cells_completed >= 2


def test_cv_current_decays_and_voltage_never_exceeds_the_limit() -> None:
    channel = quiet_channel()
    run_to(channel, ChannelStatus.CV_CHARGE)
    rng = random.Random(8)
    currents = [channel.current]
    while channel.status is ChannelStatus.CV_CHARGE:
        channel.step(rng.choice((0.2, 1.0, 7.0, 60.0)), plate_temp_cel=45.0)  # uneven steps, as with speedup
        if channel.status is ChannelStatus.CV_CHARGE:
            currents.append(channel.current)
            assert channel.voltage <= 4.2
            assert channel.voltage == pytest.approx(4.2)
    assert all(b <= a for a, b in itertools.pairwise(currents))
    assert 29.0 < currents[0] <= 30.0  # CC current at the switch, less what decayed in the rest of that step
    assert currents[-1] >= 5.0  # cut-off
    assert channel.end_reason is EndReason.I_CUTOFF
    assert len(currents) > 20


def test_measured_voltage_never_exceeds_the_limit_even_with_noise() -> None:
    channel = FormationChannel(rng=random.Random(3), protocol=FormationProtocol(contact_fault_probability=0.0))
    worst = 0.0
    for _ in range(20_000):
        channel.step(2.0, plate_temp_cel=45.0)
        voltage, _, _ = channel.readings()
        worst = max(worst, voltage)
    assert 4.19 < worst <= 4.2


def test_capacity_is_the_integral_of_the_current() -> None:
    channel = quiet_channel()
    run_to(channel, ChannelStatus.CC_CHARGE, dt_s=1.0)
    integral_ah = channel.capacity_ah
    previous = channel.current
    while channel.status is not ChannelStatus.FINISHED:
        before = channel.capacity_ah
        channel.step(1.0, plate_temp_cel=45.0)
        integral_ah += (previous + channel.current) / 2.0 / 3600.0  # trapezoid over 1 s
        previous = channel.current
        assert channel.capacity_ah >= before
    assert channel.capacity_ah == pytest.approx(integral_ah, rel=1e-4)
    # A 100 Ah cell charged from ~4 % SOC with 90 % coulombic efficiency takes ~105 Ah of charge.
    assert 95.0 < channel.capacity_ah < 115.0


def test_a_big_step_gives_the_same_state_as_many_small_ones() -> None:
    fine, coarse = quiet_channel(seed=4), quiet_channel(seed=4)
    for _ in range(9_000):
        fine.step(1.0, plate_temp_cel=45.0)
    coarse.step(9_000.0, plate_temp_cel=45.0)
    assert (fine.status, fine.step_index) == (coarse.status, coarse.step_index)
    assert fine.capacity_ah == pytest.approx(coarse.capacity_ah, rel=1e-9)
    assert fine.soc == pytest.approx(coarse.soc, rel=1e-9)
    assert fine.current == pytest.approx(coarse.current, rel=1e-9)
    assert fine.step_time_s == pytest.approx(coarse.step_time_s, abs=1e-6)


def test_contact_fault_puts_the_channel_in_protection_until_the_cell_is_replaced() -> None:
    channel = FormationChannel(rng=random.Random(1), noise=False,
                               protocol=FormationProtocol(contact_fault_probability=1.0, fault_hold_s=300.0))
    channel.step(61.0, plate_temp_cel=45.0)
    assert status_of(channel) is ChannelStatus.PROTECTION
    assert channel.protection_flags == 1 << 5
    assert channel.end_reason is EndReason.PROTECTION
    assert channel.current == 0.0
    channel.step(300.0, plate_temp_cel=45.0)
    assert status_of(channel) is ChannelStatus.REST  # a fresh cell in step 0
    assert channel.protection_flags == 0


def test_rack_pauses_channels_outside_execute_and_opens_the_clamps() -> None:
    rack = FormationRack(rng=random.Random(2), config=FormationConfig(channels=8, noise=False, packml=STEADY))
    charging = [c for c in rack.channels if c.current > 0.0]
    assert charging
    rack.packml.command(C.HOLD)
    values = rack.step(60.0)
    assert all(values[f"Ch{n:03d}.Status"] == ChannelStatus.PAUSE for n in range(1, 9))
    assert all(values[f"Ch{n:03d}.Current"] == 0.0 for n in range(1, 9))
    assert values["Rack.ClampPressure"] == 0.0
    assert values["Rack.DoorClosed"] is False
    assert values["Rack.StateCurrent"] == S.HELD


def test_rack_values_are_typed_deterministic_and_counters_monotonic() -> None:
    def run(seed: int) -> tuple[FormationRack, list[dict[str, Value]]]:
        rack = FormationRack(rng=random.Random(seed), config=FormationConfig(channels=16))
        return rack, [dict(rack.step(30.0)) for _ in range(1_500)]  # 12.5 h

    rack, trace = run(9)
    _, again = run(9)
    assert trace == again
    check_values_match_points(rack.points, trace[-1])
    for name in ("Rack.CellsCompleted", "Rack.ActiveEnergy", "Rack.Uptime", "Ch001.CellsCompleted"):
        series = [num(v[name]) for v in trace]
        assert all(b >= a for a, b in itertools.pairwise(series)), name
    assert num(trace[-1]["Rack.CellsCompleted"]) > 16  # every channel finished at least one cell in 12.5 h
    for n in range(1, 17):
        capacities = [num(v[f"Ch{n:03d}.Capacity"]) for v in trace]
        assert max(capacities) > 50.0


def test_rack_with_256_channels() -> None:
    rack = FormationRack(rng=random.Random(1), config=FormationConfig(channels=256))
    assert len(rack.points) == 20 + 256 * 14
    values = rack.step(1.0)
    check_values_match_points(rack.points, values)
    assert values["Rack.ChannelCount"] == 256
    statuses = {values[f"Ch{n:03d}.Status"] for n in range(1, 257)}
    assert len(statuses) >= 3  # a staggered rack: channels in different steps


# ------------------------------------------------------------------------------------------------ register map


@pytest.mark.parametrize(
    ("encoding", "scale", "value", "words"),
    [
        (Encoding.FLOAT32, 1.0, 3.7151, list(struct.unpack(">HH", struct.pack(">f", 3.7151)))),
        (Encoding.FLOAT32, 1.0, -30.0, [0xC1F0, 0x0000]),
        (Encoding.INT16, 0.1, 45.2, [452]),
        (Encoding.INT16, 0.1, -5.0, [0xFFCE]),  # -50 in two's complement
        (Encoding.INT16, 0.1, 5000.0, [32767]),  # saturates, never wraps
        (Encoding.INT16, 0.1, math.nan, [0]),
        (Encoding.UINT16, 1.0, 6, [6]),
        (Encoding.UINT16, 1.0, 65536 + 3, [3]),  # a counter wraps like a PLC counter
        (Encoding.UINT32, 1.0, 70_000, [1, 70_000 - 65_536]),
        (Encoding.UINT32, 1.0, 2**32 + 5, [0, 5]),
    ],
)
def test_encode_register_values(encoding: Encoding, scale: float, value: Value, words: list[int]) -> None:
    point = RegisterPoint(point="x", table=Table.HOLDING, address=0, encoding=encoding, scale=scale)
    assert encode(point, value) == words


def test_formation_register_map_layout() -> None:
    register_map = formation_register_map(256)  # also proves nothing overlaps (it raises otherwise)
    by_name = {p.point: p for p in register_map}
    assert by_name["Ch001.Status"].address == 1000
    assert by_name["Ch001.Voltage"].address == 1004
    assert by_name["Ch002.Status"].address == 1032
    assert by_name["Ch256.CellsCompleted"].address == 1000 + 32 * 255 + 18
    assert by_name["Ch016.ProtectionAlarm"].table is Table.COIL
    assert by_name["Ch016.ProtectionAlarm"].address == 115
    assert by_name["Rack.PlateTemp"].scale == 0.1
    assert by_name["Rack.Uptime"].table is Table.INPUT
    sizes = table_sizes(register_map)
    assert sizes[Table.HOLDING] == 1000 + 32 * 255 + 20
    assert sizes[Table.COIL] == 100 + 256
    assert sizes[Table.DISCRETE] == 2
    assert sizes[Table.INPUT] == 2
    rack = FormationRack(rng=random.Random(1), config=FormationConfig(channels=256))
    assert {p.point for p in register_map} == {p.name for p in rack.points}


def test_build_images_places_every_value() -> None:
    rack = FormationRack(rng=random.Random(1), config=FormationConfig(channels=4))
    register_map = formation_register_map(4)
    images = build_images(register_map, rack.values())
    values = rack.values()
    holding = images[Table.HOLDING]
    assert holding[1000] == values["Ch001.Status"]
    voltage = struct.unpack(">f", struct.pack(">HH", holding[1004], holding[1005]))[0]
    assert voltage == pytest.approx(values["Ch001.Voltage"], rel=1e-6)
    assert holding[1020:1032] == [0] * 12  # reserved
    assert images[Table.DISCRETE] == [values["Rack.AirflowOk"], values["Rack.DoorClosed"]]


def test_register_point_rejects_a_type_in_the_wrong_table() -> None:
    with pytest.raises(ValueError, match="cannot live"):
        RegisterPoint(point="x", table=Table.COIL, address=0, encoding=Encoding.UINT16)
    with pytest.raises(ValueError, match="cannot live"):
        RegisterPoint(point="x", table=Table.HOLDING, address=0, encoding=Encoding.BOOL)
