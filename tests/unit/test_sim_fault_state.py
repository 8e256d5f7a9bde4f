"""The pure fault state of the simulators: expiry, replacement, queries and the JSON form."""

from __future__ import annotations

import math

import pytest

from simulators.faults import (
    BadValue,
    DropConnections,
    FaultKind,
    FaultState,
    Freeze,
    Hang,
    Latency,
    ModbusException,
    Restart,
    fault_from_json,
)


def test_faults_expire_and_replace_their_own_kind() -> None:
    state = FaultState().with_fault(Hang(), now=10.0, duration_s=2.0).with_fault(Latency(seconds=0.5), now=10.0)
    assert state.hang_until(11.9) == 12.0
    assert state.hang_until(12.0) is None
    assert state.latency_s(1e6) == 0.5  # no duration: until cleared
    state = state.with_fault(Latency(seconds=1.5), now=11.0)
    assert state.latency_s(11.0) == 1.5
    assert len(state.active) == 2
    assert state.pruned(13.0).current(13.0) == (Latency(seconds=1.5),)
    assert FaultState().with_fault(Hang(), now=0.0).hang_until(5.0) == math.inf


def test_drop_is_one_shot_unless_given_a_duration() -> None:
    assert not FaultState().with_fault(DropConnections(), now=5.0).refuses_connections(5.0)
    state = FaultState().with_fault(DropConnections(), now=5.0, duration_s=3.0)
    assert state.refuses_connections(7.9)
    assert not state.refuses_connections(8.0)


@pytest.mark.parametrize(
    ("table", "start", "count", "expected"),
    [
        ("holding", 1000, 10, 2),
        ("holding", 990, 11, 2),  # last register is 1000
        ("holding", 990, 10, None),  # ends at 999
        ("holding", 1031, 2, 2),
        ("holding", 1032, 4, None),
        ("input", 1000, 1, None),  # other table
        ("coil", 5, 1, 4),
    ],
)
def test_exception_ranges(table: str, start: int, count: int, expected: int | None) -> None:
    state = (FaultState()
             .with_fault(ModbusException(table="holding", start=1000, end=1032, code=2), now=0.0)
             .with_fault(ModbusException(table="coil", start=0, end=10, code=4), now=0.0))
    assert state.exception_code(table=table, start=start, count=count, now=1.0) == expected


def test_point_faults_per_machine_and_clearing_by_machine() -> None:
    state = (FaultState()
             .with_fault(BadValue(points=frozenset({"Line.Speed"}), machine="Coater01"), now=0.0)
             .with_fault(Freeze(machine="Calender01"), now=0.0)
             .with_fault(Hang(), now=0.0))
    assert state.bad_status(machine="Coater01", point="Line.Speed", now=1.0) == "BadSensorFailure"
    assert state.bad_status(machine="Coater01", point="Line.Length", now=1.0) is None
    assert state.bad_status(machine="Calender01", point="Line.Speed", now=1.0) is None
    assert state.is_frozen(machine="Calender01", point="Anything", now=1.0)
    assert not state.is_frozen(machine="Coater01", point="Line.Speed", now=1.0)
    assert [f["fault"] for f in state.describe(now=1.0, machine="Coater01")] == ["bad", "hang"]
    cleared = state.without(machine="Coater01")
    assert cleared.current(1.0) == (Freeze(machine="Calender01"),)  # the other machine's fault stays
    assert state.without(FaultKind.HANG).hang_until(1.0) is None


def test_json_round_trip_and_refusals() -> None:
    fault, duration = fault_from_json({"fault": "bad", "points": ["Ch001.Voltage"], "duration_s": 5}, machine="R")
    assert fault == BadValue(points=frozenset({"Ch001.Voltage"}), machine="R")
    assert duration == 5.0
    assert fault_from_json({"fault": "restart"}) == (Restart(extra_namespaces=1, down_s=0.0), None)
    assert fault_from_json({"fault": "exception", "start": 0, "end": 4, "code": 2})[0] == ModbusException(
        table="holding", start=0, end=4, code=2)
    for body, message in [
        ({"fault": "melt"}, "fault must be one of"),
        ({"fault": "hang", "duraton_s": 1}, "unknown keys"),
        ({"fault": "latency"}, "seconds must be a number"),
        ({"fault": "latency", "seconds": 0}, "latency seconds"),
        ({"fault": "exception", "start": 5, "end": 5}, "start < end"),
        ({"fault": "exception", "start": 0, "end": 5, "code": 9}, "code must be"),
        ({"fault": "bad", "status": "GoodEnough"}, "Bad"),
        ({"fault": "freeze", "points": []}, "non-empty"),
        ([1, 2], "JSON object"),
    ]:
        with pytest.raises(ValueError, match=message):
            fault_from_json(body)
    with pytest.raises(ValueError, match="duration_s"):
        FaultState().with_fault(Hang(), now=0.0, duration_s=-1.0)
