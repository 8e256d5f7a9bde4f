"""The common machine header: PackML legality, monotonic counters, speed ramps, stop reasons, determinism."""

from __future__ import annotations

import itertools
import random

import pytest

from simulators.machines.calender import Calender
from simulators.machines.coater import Coater, CoaterConfig, coater_points
from simulators.machines.header import (
    HEARTBEAT_MODULO,
    HeaderConfig,
    MachineHeader,
    MachineryItemState,
    StopCategory,
    header_points,
    machinery_item_state,
)
from simulators.machines.packml import LEGAL_TRANSITIONS, PackMLCommand, PackMLState
from simulators.machines.points import Value
from simulators.machines.stacker import Stacker
from tests.support.machines import STEADY, check_values_match_points
from tests.support.sim import num

S = PackMLState
COUNTERS = ("PackML.ProdProcessedCount", "PackML.ProdProcessedAccCount", "PackML.ProdDefectiveCount",
            "PackML.ProdDefectiveAccCount", "Energy.ActiveEnergy", "PackML.AccTimeSinceReset")


def test_header_values_cover_exactly_the_header_points() -> None:
    config = HeaderConfig()
    header = MachineHeader(rng=random.Random(1), config=config)
    check_values_match_points(header_points(config), header.values())


@pytest.mark.parametrize("machine_kind", ["calender", "stacker"])
def test_long_run_takes_only_legal_transitions_and_counters_never_go_backwards(machine_kind: str) -> None:
    rng = random.Random(3)
    machine: Calender | Stacker = Calender(rng=random.Random(5)) if machine_kind == "calender" \
        else Stacker(rng=random.Random(5))
    previous = dict(machine.values())
    state = machine.header.state
    states: set[int] = set()
    for _ in range(6_000):
        dt = rng.choice((0.5, 1.0, 7.0, 30.0))  # uneven steps, as with a time-acceleration factor
        values = machine.step(dt)
        current = PackMLState(int(num(values["PackML.StateCurrent"])))
        states.add(int(current))
        assert state is current or (state, current) in LEGAL_TRANSITIONS or _reachable(state, current)
        for name in COUNTERS:
            assert num(values[name]) >= num(previous[name]), name
        beat = int(num(values["Diagnostics.Heartbeat"]))
        assert (beat - int(num(previous["Diagnostics.Heartbeat"]))) % HEARTBEAT_MODULO <= dt + 1
        previous = dict(values)
        state = current
    check_values_match_points(machine.points, machine.values())
    assert len(states) >= 8  # holds, suspensions, stops, ... happened
    assert num(previous["PackML.ProdProcessedCount"]) > 0


def _reachable(source: PackMLState, target: PackMLState) -> bool:
    """A step longer than a state can pass through several legal transitions: is there such a chain?"""
    frontier, seen = {source}, {source}
    for _ in range(8):
        frontier = {b for a, b in LEGAL_TRANSITIONS if a in frontier} - seen
        if target in frontier:
            return True
        seen |= frontier
    return False


def test_every_transition_of_the_header_is_legal_and_stop_reasons_follow_them() -> None:
    header = MachineHeader(rng=random.Random(11), config=HeaderConfig())
    seen_categories: set[StopCategory] = set()
    for _ in range(40_000):
        for transition in header.step(5.0):
            assert (transition.source, transition.target) in LEGAL_TRANSITIONS
            if transition.source is S.EXECUTE:
                cause = header.stop_cause
                assert cause.command is transition.command
                seen_categories.add(cause.category)
                if transition.command is PackMLCommand.SUSPEND:
                    expected = StopCategory.BLOCKED if header.packml.interlock == "blocked" else StopCategory.STARVED
                    assert cause.category is expected
    assert seen_categories == set(StopCategory)


def test_speed_ramps_at_the_configured_rate_and_stops_fast_on_abort() -> None:
    config = HeaderConfig(design_speed=100.0, speed_sp=60.0, ramp_per_s=2.0, abort_ramp_per_s=20.0, packml=STEADY)
    header = MachineHeader(rng=random.Random(1), config=config)
    header.set_speed_sp(80.0)
    trace = []
    for _ in range(15):
        header.step(1.0)
        trace.append(header.speed)
    assert all(b - a == pytest.approx(2.0) for a, b in itertools.pairwise([60.0, *trace[:10]]))
    assert trace[-1] == 80.0
    header.command(PackMLCommand.ABORT)
    header.step(1.0)
    assert header.speed == pytest.approx(60.0)
    assert header.stop_cause.category is StopCategory.FAULT
    header.step(3.0)
    assert header.speed == 0.0


def test_machinery_item_state_follows_packml() -> None:
    assert machinery_item_state(S.EXECUTE) is MachineryItemState.EXECUTING
    assert machinery_item_state(S.HELD) is MachineryItemState.NOT_EXECUTING
    assert machinery_item_state(S.ABORTED) is MachineryItemState.OUT_OF_SERVICE
    assert machinery_item_state(S.UNDEFINED) is MachineryItemState.NOT_AVAILABLE


def test_output_lot_advances_at_every_end_of_lot() -> None:
    header = MachineHeader(rng=random.Random(2), config=HeaderConfig(packml=STEADY))
    first = header.output_lot_id
    header.command(PackMLCommand.TO_COMPLETE)
    header.step(20.0)  # Completing lasts at most 20 s
    assert header.state is S.COMPLETE
    assert header.output_lot_id != first
    assert header.lots_completed == 1


def test_same_seed_same_run_for_every_machine() -> None:
    def run(seed: int) -> list[dict[str, Value]]:
        machines = (Coater(rng=random.Random(seed), config=CoaterConfig(extended_points=True)),
                    Calender(rng=random.Random(seed)), Stacker(rng=random.Random(seed)))
        return [dict(m.step(0.9)) for _ in range(300) for m in machines]

    assert run(4) == run(4)
    assert run(4) != run(5)


def test_extended_coater_has_the_full_header_and_keeps_the_v1_points_first() -> None:
    config = CoaterConfig(extended_points=True)
    coater = Coater(rng=random.Random(1), config=config)
    names = [p.name for p in coater.points]
    v1 = [p.name for p in coater_points()]
    assert names[: len(v1)] == v1
    assert {p.name for p in header_points(config.header_config())} <= set(names)
    for _ in range(2_000):
        coater.step(2.0)
    check_values_match_points(coater.points, coater.values())
