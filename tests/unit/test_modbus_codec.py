"""Register decoding: every type in every byte/word order, against an independent struct-based encoder."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.schema import Quality, Value
from gateway.sources.modbus_plan import (
    BYTE_ORDERS,
    ByteOrder,
    ModbusField,
    ValueType,
    decode_value,
    plan_reads,
)
from tests.support.modbus import encode_registers

INTEGER_RANGES: dict[ValueType, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
orders = st.sampled_from(BYTE_ORDERS)


def same(decoded: Value, expected: float | int) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(decoded, float) and math.isnan(decoded)
    return decoded == expected and type(decoded) is type(expected)


@pytest.mark.parametrize("value_type", list(INTEGER_RANGES))
@given(data=st.data(), order=orders)
def test_integers_round_trip(value_type: ValueType, data: st.DataObject, order: ByteOrder) -> None:
    low, high = INTEGER_RANGES[value_type]
    value = data.draw(st.integers(low, high))
    registers = encode_registers(value, value_type, order)
    assert same(decode_value(registers, value_type, order=order), value)


@given(value=st.floats(width=32), order=orders)
def test_float32_round_trip(value: float, order: ByteOrder) -> None:
    # st.floats(width=32) includes NaN, +-inf, -0.0 and subnormals, all exactly representable in float32.
    decoded = decode_value(encode_registers(value, "float32", order), "float32", order=order)
    assert same(decoded, value)
    assert math.copysign(1.0, decoded) == math.copysign(1.0, value)  # type: ignore[arg-type]


@given(value=st.floats(), order=orders)
def test_float64_round_trip(value: float, order: ByteOrder) -> None:
    decoded = decode_value(encode_registers(value, "float64", order), "float64", order=order)
    assert same(decoded, value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -0.0, -123.456])
@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize("value_type", ["float32", "float64"])
def test_special_floats(value: float, order: ByteOrder, value_type: ValueType) -> None:
    expected = struct.unpack(">f", struct.pack(">f", value))[0] if value_type == "float32" else value
    assert same(decode_value(encode_registers(value, value_type, order), value_type, order=order), expected)


# The documented example of every order: 0x11223344 as it appears on the wire, register by register.
@pytest.mark.parametrize(
    ("order", "registers"),
    [("ABCD", [0x1122, 0x3344]), ("CDAB", [0x3344, 0x1122]), ("BADC", [0x2211, 0x4433]), ("DCBA", [0x4433, 0x2211])],
)
def test_order_letters_mean_wire_bytes(order: ByteOrder, registers: list[int]) -> None:
    assert decode_value(registers, "uint32", order=order) == 0x11223344


@pytest.mark.parametrize(
    ("order", "registers"),
    [
        ("ABCD", [0x0102, 0x0304, 0x0506, 0x0708]),
        ("CDAB", [0x0708, 0x0506, 0x0304, 0x0102]),
        ("BADC", [0x0201, 0x0403, 0x0605, 0x0807]),
        ("DCBA", [0x0807, 0x0605, 0x0403, 0x0201]),
    ],
)
def test_order_letters_for_64_bit(order: ByteOrder, registers: list[int]) -> None:
    assert decode_value(registers, "uint64", order=order) == 0x0102030405060708


@pytest.mark.parametrize(("order", "expected"), [("ABCD", -2), ("CDAB", -2), ("BADC", -257), ("DCBA", -257)])
def test_int16_orders(order: ByteOrder, expected: int) -> None:
    # 0xFFFE is -2; byte-swapped it reads 0xFEFF = -257.
    assert decode_value([0xFFFE], "int16", order=order) == expected


# Any UTF-8 text without NUL that does not end in a space (trailing spaces are padding by definition).
text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12).filter(
    lambda s: not s.endswith(" ")
)


@given(value=text, padding=st.integers(0, 3), pad=st.sampled_from([b"\x00", b" "]), order=orders)
def test_string_round_trip_strips_padding(value: str, padding: int, pad: bytes, order: ByteOrder) -> None:
    raw = value.encode("utf-8")
    length = max(1, (len(raw) + 1) // 2 + padding)
    registers = list(struct.unpack(f">{length}H", raw.ljust(2 * length, pad)))
    assert decode_value(registers, "string", order=order) == value


def test_string_matches_support_encoder_and_keeps_inner_spaces() -> None:
    registers = encode_registers("CELL 0042", "string", length=8)
    assert decode_value(registers, "string") == "CELL 0042"
    assert decode_value([0x4142, 0x2000, 0x2020], "string") == "AB"  # trailing space then NUL/space padding
    assert decode_value([0xC3A9, 0x0000], "string") == "é"  # two-byte UTF-8 sequence


def test_invalid_utf8_is_a_decode_problem_not_an_exception() -> None:
    plan = plan_reads(
        [
            ModbusField(key="serial", table="holding", address=0, type="string", width=2),
            ModbusField(key="count", table="holding", address=2, type="uint16"),
        ],
        unit_id=1,
    )
    (request,) = plan.requests
    readings = {r.tag: r for r in request.decode([0xFF41, 0x4200, 7], ts=5.0)}
    assert readings["serial"].quality is Quality.BAD
    assert readings["serial"].status == "decode_error"
    assert readings["serial"].value is None
    assert readings["count"].value == 7
    assert readings["count"].quality is Quality.GOOD
    with pytest.raises(UnicodeDecodeError):
        decode_value([0xFF41], "string")


@given(register=st.integers(0, 0xFFFF), bit=st.integers(0, 15), order=orders)
def test_register_bit_is_bit_n_from_lsb(register: int, bit: int, order: ByteOrder) -> None:
    # Order never moves bits: bit n is (register >> n) & 1 of the register value.
    assert decode_value([register], "bool", bit=bit, order=order) is bool((register >> bit) & 1)


@pytest.mark.parametrize(("bit", "expected"), [(0, True), (1, False), (2, True), (8, False), (15, True)])
def test_register_bits_of_a_status_word(bit: int, expected: bool) -> None:
    assert decode_value([0x8005], "bool", bit=bit) is expected


def test_wrong_register_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="needs 2 registers"):
        decode_value([1, 2, 3], "float32")


def test_block_decode_uses_offsets_types_and_orders() -> None:
    fields = [
        ModbusField(key="v", table="holding", address=100, type="float32", order="CDAB"),
        ModbusField(key="t", table="holding", address=102, type="int16"),
        ModbusField(key="e", table="holding", address=103, type="uint64", order="DCBA"),
        ModbusField(key="alarm", table="holding", address=107, type="bool", bit=3),
        ModbusField(key="id", table="holding", address=108, type="string", width=3),
        ModbusField(key="w", table="holding", address=112, type="float64", order="BADC"),
    ]
    plan = plan_reads(fields, unit_id=1)
    (request,) = plan.requests
    assert (request.start, request.count) == (100, 16)
    registers = (
        encode_registers(3.5, "float32", "CDAB")
        + encode_registers(-40, "int16")
        + encode_registers(2**40 + 7, "uint64", "DCBA")
        + [0x0008]
        + encode_registers("AB1", "string", length=3)
        + [0xFFFF]  # register 111: in the gap, read but not used
        + encode_registers(-1.25e-3, "float64", "BADC")
    )
    readings = request.decode(registers, ts=12.5)
    assert [(r.tag, r.value) for r in readings] == [
        ("v", 3.5),
        ("t", -40),
        ("e", 2**40 + 7),
        ("alarm", True),
        ("id", "AB1"),
        ("w", -1.25e-3),
    ]
    assert all(r.ts == 12.5 and r.quality is Quality.GOOD and r.status is None for r in readings)


def test_decode_block_takes_wire_bytes_and_short_blocks_fail_only_the_missing_tags() -> None:
    fields = [
        ModbusField(key="v", table="holding", address=0, type="float32"),
        ModbusField(key="t", table="holding", address=2, type="int16"),
        ModbusField(key="w", table="holding", address=3, type="float32", order="CDAB"),
        ModbusField(key="id", table="holding", address=5, type="string", width=2),
    ]
    (request,) = plan_reads(fields, unit_id=1).requests
    registers = (
        encode_registers(3.5, "float32")
        + encode_registers(-40, "int16")
        + encode_registers(-2.25, "float32", "CDAB")
        + encode_registers("AB", "string", length=2)
    )
    block = struct.pack(f">{len(registers)}H", *registers)
    full = request.decode_block(block, ts=4.0)
    assert full == request.decode(registers, ts=4.0)
    assert [(r.tag, r.value, r.quality) for r in full] == [
        ("v", 3.5, Quality.GOOD), ("t", -40, Quality.GOOD), ("w", -2.25, Quality.GOOD), ("id", "AB", Quality.GOOD),
    ]  # fmt: skip
    # Cut inside the string (and an odd byte): the string alone is missing; the whole-block unpack is not used.
    short = request.decode_block(block[:13], ts=4.0)
    assert [(r.tag, r.value, r.status) for r in short] == [
        ("v", 3.5, None), ("t", -40, None), ("w", -2.25, None), ("id", None, "decode_error"),
    ]  # fmt: skip


def test_short_response_marks_only_missing_tags_and_bad_registers_never_raise() -> None:
    plan = plan_reads(
        [
            ModbusField(key="a", table="input", address=0, type="uint16"),
            ModbusField(key="b", table="input", address=1, type="int32"),
        ],
        unit_id=1,
    )
    (request,) = plan.requests
    short = {r.tag: r for r in request.decode([9, 1], ts=0.0)}
    assert short["a"].value == 9
    assert (short["b"].quality, short["b"].status) == (Quality.BAD, "decode_error")
    garbage = request.decode([70000, -1, 3], ts=0.0)
    assert {(r.quality, r.status) for r in garbage} == {(Quality.BAD, "decode_error")}


def test_bit_table_decode_ignores_byte_padding() -> None:
    plan = plan_reads(
        [
            ModbusField(key="run", table="coil", address=10, type="bool"),
            ModbusField(key="fault", table="coil", address=12, type="bool"),
        ],
        unit_id=1,
    )
    (request,) = plan.requests
    # pymodbus returns whole bytes: 8 bits for a 3-bit read; bits[0] is address 10.
    readings = request.decode([True, False, False, True, True, True, True, True], ts=1.0)
    assert [(r.tag, r.value) for r in readings] == [("run", True), ("fault", False)]
    short = request.decode([True], ts=1.0)
    assert [(r.tag, r.quality) for r in short] == [("run", Quality.GOOD), ("fault", Quality.BAD)]
