"""Read planning: which block reads cover a unit's tags, table-driven."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.sources.modbus_plan import (
    ByteOrder,
    ModbusField,
    ReadLimits,
    ReadPlan,
    Table,
    ValueType,
    describe_plan,
    plan_reads,
)
from gateway.tagmap.limits import MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ


def reg(key: str, address: int, value_type: ValueType = "uint16", *, table: Table = "holding", width: int | None = None,
        bit: int | None = None, order: ByteOrder = "ABCD") -> ModbusField:  # fmt: skip
    return ModbusField(key=key, table=table, address=address, type=value_type, width=width, bit=bit, order=order)


def bit(key: str, address: int, table: Table = "coil") -> ModbusField:
    return ModbusField(key=key, table=table, address=address, type="bool")


def shape(plan: ReadPlan) -> list[tuple[str, int, int, tuple[str, ...]]]:
    return [(r.table, r.start, r.count, r.keys) for r in plan.requests]


DEFAULT_LIMITS = ReadLimits()


@dataclass(frozen=True)
class Case:
    fields: list[ModbusField]
    expected: list[tuple[str, int, int, tuple[str, ...]]]
    limits: ReadLimits = DEFAULT_LIMITS


CASES = {
    "empty": Case([], []),
    "adjacent values merge": Case(
        [reg("a", 0, "float32"), reg("b", 2, "float32"), reg("c", 4)],
        [("holding", 0, 5, ("a", "b", "c"))],
    ),
    "gap of max_gap merges": Case(
        [reg("a", 0), reg("b", 11)],  # registers 1..10 unused: a hole of exactly 10
        [("holding", 0, 12, ("a", "b"))],
    ),
    "gap of max_gap + 1 splits": Case(
        [reg("a", 0), reg("b", 12)],
        [("holding", 0, 1, ("a",)), ("holding", 12, 1, ("b",))],
    ),
    "gap measured from the end of a wide value": Case(
        [reg("a", 0, "float64"), reg("b", 14), reg("c", 26)],  # a ends at 3: holes of 10 then 11
        [("holding", 0, 15, ("a", "b")), ("holding", 26, 1, ("c",))],
    ),
    "max_gap 0 only merges contiguous": Case(
        [reg("a", 0), reg("b", 1), reg("c", 3)],
        [("holding", 0, 2, ("a", "b")), ("holding", 3, 1, ("c",))],
        ReadLimits(max_gap=0),
    ),
    "block never exceeds max registers": Case(
        [reg(f"r{i}", i) for i in range(130)],
        [
            ("holding", 0, 125, tuple(f"r{i}" for i in range(125))),
            ("holding", 125, 5, tuple(f"r{i}" for i in range(125, 130))),
        ],
    ),
    "smaller configured max": Case(
        [reg("a", 0, "float32"), reg("b", 2, "float32"), reg("c", 4, "float32")],
        [("holding", 0, 4, ("a", "b")), ("holding", 4, 2, ("c",))],
        ReadLimits(max_registers_per_read=5),
    ),
    "multi-register value is never split": Case(
        [reg("a", 0), reg("b", 1), reg("c", 2, "float32")],  # c at 2..3 would cross the 3-register limit
        [("holding", 0, 2, ("a", "b")), ("holding", 2, 2, ("c",))],
        ReadLimits(max_registers_per_read=3),
    ),
    "value ending exactly at the limit stays": Case(
        [reg("a", 0), reg("b", 123, "float32")],
        [("holding", 0, 125, ("a", "b"))],
        ReadLimits(max_gap=200),
    ),
    "value crossing the limit starts a new block": Case(
        [reg("a", 0), reg("b", 124, "float32")],
        [("holding", 0, 1, ("a",)), ("holding", 124, 2, ("b",))],
        ReadLimits(max_gap=200),
    ),
    "tables never merge": Case(
        [reg("h", 0), reg("i", 1, table="input"), bit("c", 2), bit("d", 3, "discrete")],
        [
            ("holding", 0, 1, ("h",)),
            ("input", 1, 1, ("i",)),
            ("coil", 2, 1, ("c",)),
            ("discrete", 3, 1, ("d",)),
        ],
    ),
    "unsorted input is sorted by address": Case(
        [reg("c", 8), reg("a", 0, "int32"), reg("b", 4)],
        [("holding", 0, 9, ("a", "b", "c"))],
    ),
    "two bits of one status word share the register": Case(
        [reg("alarm", 10, "bool", bit=3), reg("ready", 10, "bool", bit=0), reg("mode", 10, "int16")],
        [("holding", 10, 1, ("alarm", "ready", "mode"))],
    ),
    "overlapping views of the same registers": Case(
        [reg("whole", 0, "uint32"), reg("low", 1, "uint16"), reg("high", 0, "uint16")],
        [("holding", 0, 2, ("high", "whole", "low"))],
    ),
    "bits coalesce up to the bit limit": Case(
        [bit(f"c{i}", i * 10) for i in range(5)],
        [("coil", 0, 21, ("c0", "c1", "c2")), ("coil", 30, 11, ("c3", "c4"))],
        ReadLimits(max_bits_per_read=25),
    ),
    "bits use max_gap too": Case(
        [bit("a", 0, "discrete"), bit("b", 11, "discrete"), bit("c", 23, "discrete")],
        [("discrete", 0, 12, ("a", "b")), ("discrete", 23, 1, ("c",))],
    ),
    "a full 2000-bit read": Case(
        [bit("first", 0), bit("last", 1999)],
        [("coil", 0, 2000, ("first", "last"))],
        ReadLimits(max_gap=5000),
    ),
    "2001 bits split": Case(
        [bit("first", 0), bit("last", 2000)],
        [("coil", 0, 1, ("first",)), ("coil", 2000, 1, ("last",))],
        ReadLimits(max_gap=5000),
    ),
    "string width counts": Case(
        [reg("serial", 0, "string", width=10), reg("next", 10)],
        [("holding", 0, 11, ("serial", "next"))],
    ),
    "highest address": Case(
        [reg("top", 65534, "uint32")],
        [("holding", 65534, 2, ("top",))],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan(case: Case) -> None:
    plan = plan_reads(case.fields, unit_id=3, limits=case.limits)
    assert plan.problems == ()
    assert shape(plan) == case.expected
    assert plan.unit_id == 3


@pytest.mark.parametrize(
    ("field", "limits", "message"),
    [
        (reg("long", 0, "string", width=126), ReadLimits(), "126 registers wide, more than one read may return (125)"),
        (reg("d", 0, "float64"), ReadLimits(max_registers_per_read=3), "4 registers wide"),
        (reg("s", 0, "string"), ReadLimits(), "needs a width"),
        (reg("b", 0, "bool"), ReadLimits(), "needs bit"),
        (reg("b", 0, "bool", bit=16), ReadLimits(), "bit 16 outside 0..15"),
        (reg("n", 0, "int16", bit=2), ReadLimits(), "bit is only for bool"),
        (reg("w", 0, "float32", width=4), ReadLimits(), "2 register(s) wide, not 4"),
        (reg("c", 0, "int16", table="coil"), ReadLimits(), "type must be bool"),
        (ModbusField(key="c", table="coil", address=0, type="bool", bit=1), ReadLimits(), "bit is only for"),
        (reg("far", 65535, "uint32"), ReadLimits(), "runs past address 65535"),
        (reg("neg", -1), ReadLimits(), "address -1 outside"),
    ],
)
def test_unplannable_field_is_a_problem_value(field: ModbusField, limits: ReadLimits, message: str) -> None:
    ok = reg("ok", 200)
    plan = plan_reads([field, ok], unit_id=1, limits=limits)
    assert [p.key for p in plan.problems] == [field.key]
    assert message in plan.problems[0].message
    assert shape(plan) == [("holding", 200, 1, ("ok",))]  # the good field is still planned


def test_duplicate_key_is_a_problem() -> None:
    plan = plan_reads([reg("a", 0), reg("a", 5)], unit_id=1)
    assert shape(plan) == [("holding", 0, 1, ("a",))]
    assert [str(p) for p in plan.problems] == ["a: duplicate tag key, only the first is read"]


def test_limits_outside_the_protocol_are_clamped_and_reported() -> None:
    limits = ReadLimits(max_registers_per_read=200, max_bits_per_read=0, max_gap=-1)
    plan = plan_reads([reg(f"r{i}", i) for i in range(130)] + [bit("a", 0), bit("b", 1)], unit_id=1, limits=limits)
    assert sorted(p.message for p in plan.problems) == [
        "max_bits_per_read 0 outside 1..2000",
        f"max_gap -1 outside 0..{65535}",
        f"max_registers_per_read 200 outside 1..{MAX_REGISTERS_PER_READ}",
    ]
    assert [(r.table, r.count) for r in plan.requests] == [("holding", 125), ("holding", 5), ("coil", 1), ("coil", 1)]


def test_slots_know_their_offsets() -> None:
    plan = plan_reads([reg("a", 100, "float32"), reg("b", 105, "bool", bit=2)], unit_id=1)
    (request,) = plan.requests
    assert [(s.key, s.address, s.width, s.offset) for s in request.slots] == [("a", 100, 2, 0), ("b", 105, 1, 5)]


def test_slots_say_which_values_unpack_without_a_permutation() -> None:
    plan = plan_reads(
        [
            reg("f", 0, "float32"),
            reg("w", 2, "float32", order="CDAB"),
            reg("s", 4, "int16", order="BADC"),  # 16-bit BADC is little-endian
            reg("c", 5, "uint16", order="CDAB"),  # 16-bit CDAB is big-endian
            reg("b", 6, "bool", bit=1),
            reg("id", 7, "string", width=2),
        ],
        unit_id=1,
    )
    (request,) = plan.requests
    assert [(s.key, s.plain) for s in request.slots] == [
        ("f", (">", "f")), ("w", None), ("s", ("<", "h")), ("c", (">", "H")), ("b", None), ("id", None),
    ]  # fmt: skip
    assert request.unpacker is not None and request.unpacker.format == ">f6xH"


def test_describe_plan() -> None:
    fields = [reg(f"ch{i}", 1000 + i) for i in range(125)] + [bit("run", 7)] + [reg("t", 0, table="input")]
    plan = plan_reads(fields, unit_id=1)
    assert describe_plan(plan) == [
        "unit 1 holding 1000..1124 (125 regs, 125 tags)",
        "unit 1 input 0..0 (1 reg, 1 tag)",
        "unit 1 coil 7..7 (1 bit, 1 tag)",
    ]


def test_formation_rack_of_10000_tags() -> None:
    # 64 channels x 32 registers, 5 tags per channel, repeated to reach 10 000 tags (a large rack).
    fields: list[ModbusField] = []
    for n in range(2000):
        base = n * 32
        fields += [
            reg(f"ch{n}/voltage", base, "float32", order="CDAB"),
            reg(f"ch{n}/current", base + 2, "float32", order="CDAB"),
            reg(f"ch{n}/step", base + 4),
            reg(f"ch{n}/fault", base + 5, "bool", bit=0),
            reg(f"ch{n}/alarm", base + 5, "bool", bit=1),
        ]
    plan = plan_reads(reversed(fields), unit_id=1)
    assert plan.problems == ()
    assert sum(len(r.slots) for r in plan.requests) == 10_000
    assert all(r.count <= MAX_REGISTERS_PER_READ for r in plan.requests)
    # 6 used registers per 32: the 26-register hole exceeds max_gap, so every channel is its own read.
    assert len(plan.requests) == 2000
    assert {r.count for r in plan.requests} == {6}
    assert sorted(plan.keys) == sorted(f.key for f in fields)


def test_max_bits_constant() -> None:
    assert (MAX_REGISTERS_PER_READ, MAX_BITS_PER_READ) == (125, 2000)
