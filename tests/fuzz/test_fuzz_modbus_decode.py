"""Register decoding never raises: random responses (right size, short, long, out-of-range words) for planned reads
of every type and byte order give one reading per tag, of the declared Python type or bad with ``decode_error``,
and every reading goes through the transform and the payload encoder.

The round trip is checked against an encoder written here from the byte-order definitions with ``struct`` (it
shares no code with ``gateway.sources.modbus_plan``), through the planner's compiled decoders at real offsets.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any, Final

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.encoders.uns_json import encode_tag_payload
from gateway.schema import STATUS_DECODE_ERROR, STATUS_NOT_A_NUMBER, Quality
from gateway.sources.base import RawReading
from gateway.sources.modbus_plan import (
    BYTE_ORDERS,
    TABLES,
    VALUE_TYPES,
    ByteOrder,
    ModbusField,
    ReadLimits,
    ReadRequest,
    ValueType,
    plan_reads,
)
from gateway.transform import TagRules, TagTransform
from tests.support.fuzz import fuzz_settings

TS: Final = 1_764_000_000.25
PYTHON_TYPE: Final[dict[ValueType, type]] = {
    "bool": bool, "int16": int, "uint16": int, "int32": int, "uint32": int, "int64": int, "uint64": int,
    "float32": float, "float64": float, "string": str,
}  # fmt: skip
STRUCT_FORMAT: Final = {
    "int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q", "uint64": "Q", "float32": "f",
    "float64": "d",
}  # fmt: skip
INT_RANGE: Final = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
}
NUMERIC_TYPES: Final = tuple(STRUCT_FORMAT)


def encode(value: int | float, value_type: ValueType, order: ByteOrder) -> list[int]:
    """Registers of ``value`` on the wire. ABCD: big-endian; DCBA: all bytes reversed; CDAB: registers reversed,
    bytes inside each kept; BADC: bytes swapped inside each register, registers in order."""
    big = struct.pack(">" + STRUCT_FORMAT[value_type], value)
    words = [big[i : i + 2] for i in range(0, len(big), 2)]
    if order == "DCBA":
        wire = big[::-1]
    elif order == "CDAB":
        wire = b"".join(reversed(words))
    elif order == "BADC":
        wire = b"".join(word[::-1] for word in words)
    else:
        wire = big
    return list(struct.unpack(f">{len(wire) // 2}H", wire))


# ----------------------------------------------------------------------------------------------- strategies


@st.composite
def modbus_fields(draw: st.DrawFn, key: str, value_type: ValueType | None = None) -> ModbusField:
    table = draw(st.sampled_from(("holding", "input") if value_type else TABLES))
    if table in ("coil", "discrete"):
        return ModbusField(key=key, table=table, address=draw(st.integers(0, 300)), type="bool")
    chosen: ValueType = draw(st.sampled_from(VALUE_TYPES)) if value_type is None else value_type
    return ModbusField(
        key=key,
        table=table,
        address=draw(st.integers(0, 300)),
        type=chosen,
        order=draw(st.sampled_from(BYTE_ORDERS)),
        bit=draw(st.integers(0, 15)) if chosen == "bool" else None,
        width=draw(st.integers(1, 8)) if chosen == "string" else None,
    )


@dataclass(frozen=True, slots=True)
class Planned:
    requests: tuple[ReadRequest, ...]
    types: dict[str, ValueType]  # tag key -> declared type ("bool" for coils and discrete inputs)


@st.composite
def plans(draw: st.DrawFn) -> Planned:
    fields = [draw(modbus_fields(f"tag{index}")) for index in range(draw(st.integers(1, 12)))]
    limits = ReadLimits(
        max_registers_per_read=draw(st.integers(8, 125)),
        max_bits_per_read=draw(st.integers(1, 2000)),
        max_gap=draw(st.integers(0, 20)),
    )
    plan = plan_reads(fields, unit_id=1, limits=limits)
    assert not plan.problems, plan.problems
    assert sorted(plan.keys) == sorted(field.key for field in fields)
    return Planned(plan.requests, {field.key: field.type for field in fields})


def responses(request: ReadRequest) -> st.SearchStrategy[Any]:
    """What a device (or a broken one) may answer: the right number of values, fewer (a short read), more."""
    if request.reads_bits:
        return st.lists(st.booleans(), max_size=request.count + 16)
    word = st.integers(0, 65535)
    right_size = st.lists(word, min_size=request.count, max_size=request.count)
    wrong_size = st.lists(word, max_size=request.count + 4)
    out_of_range = st.lists(st.one_of(word, st.sampled_from((-1, 65536, 2**40))), min_size=1, max_size=request.count)
    return st.one_of(right_size, right_size, wrong_size, out_of_range)


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
rules = st.builds(
    TagRules,
    scale=st.one_of(st.just(1.0), finite.filter(lambda x: x != 0)),
    offset=st.one_of(st.just(0.0), finite),
    minimum=st.none() | finite,
    maximum=st.none() | finite,
    deadband=st.none() | st.floats(0, 1e6),
    heartbeat_s=st.none() | st.floats(0.001, 1e6),
)


# ------------------------------------------------------------------------------------------------ properties


def check_and_publish(request: ReadRequest, response: list[int] | list[bool], readings: list[RawReading],
                      types: dict[str, ValueType], tag_rules: TagRules) -> None:  # fmt: skip
    """One reading per tag, in slot order; a good one only from a complete, valid part of the response, of the
    declared Python type; a bad one with decode_error; then through the transform and the payload encoder."""
    assert [reading.tag for reading in readings] == [slot.key for slot in request.slots]
    words_valid = request.reads_bits or all(0 <= word <= 65535 for word in response)
    for reading, slot in zip(readings, request.slots, strict=True):
        complete = words_valid and slot.offset + slot.width <= len(response)
        assert reading.ts == TS
        if reading.quality is Quality.BAD:
            assert reading.value is None and reading.status == STATUS_DECODE_ERROR
            # Only a string can be bad with all of its registers there (not UTF-8).
            assert not complete or types[slot.key] == "string", (slot, response)
        else:
            assert reading.quality is Quality.GOOD and reading.status is None and complete
            assert type(reading.value) is PYTHON_TYPE[types[slot.key]], (slot.key, reading.value)
        sample = TagTransform(device="rack-01", tag=reading.tag, rules=tag_rules).apply(reading, now=TS)
        assert sample is not None  # the first reading of a tag is always published
        if isinstance(reading.value, float) and not math.isfinite(reading.value):
            assert (sample.value, sample.quality, sample.status) == (None, Quality.BAD, STATUS_NOT_A_NUMBER)
        payload = orjson.loads(encode_tag_payload(sample, unit="V", seq=7))
        assert {"value", "unit", "quality", "ts", "seq"} <= payload.keys()
        assert payload["quality"] == sample.quality.value
        assert ("status" in payload) == (sample.quality is not Quality.GOOD)


@fuzz_settings(400)
@given(data=st.data(), planned=plans(), tag_rules=rules)
def test_decode_never_raises_and_readings_publish(data: st.DataObject, planned: Planned, tag_rules: TagRules) -> None:
    for request in planned.requests:
        label = f"response {request.table} {request.start}+{request.count}"
        response: list[int] | list[bool] = data.draw(responses(request), label=label)
        readings = request.decode(response, ts=TS)
        check_and_publish(request, response, readings, planned.types, tag_rules)


@fuzz_settings(300)
@given(
    value_type=st.sampled_from(NUMERIC_TYPES),
    order=st.sampled_from(BYTE_ORDERS),
    data=st.data(),
    neighbours=st.integers(0, 6),
)
@example(value_type="float32", order="CDAB", data=None, neighbours=0)  # NaN and infinities (explicit below)
def test_numbers_round_trip_through_a_plan(
    value_type: ValueType, order: ByteOrder, data: st.DataObject | None, neighbours: int
) -> None:
    """Encode with struct in the declared order, put it in a random response among other tags, decode it back."""
    if data is None:  # the @example: the IEEE specials, each in every position that matters
        for special in (math.nan, math.inf, -math.inf, -0.0):
            _round_trip(value_type, order, special, address=7, others=[], noise=[0x1234] * 16)
        return
    if value_type in INT_RANGE:
        low, high = INT_RANGE[value_type]
        value: int | float = data.draw(st.integers(low, high), label="value")
    else:
        value = data.draw(st.floats(width=32 if value_type == "float32" else 64), label="value")
    address = data.draw(st.integers(0, 200), label="address")
    others = [data.draw(modbus_fields(f"other{index}")) for index in range(neighbours)]
    noise = data.draw(st.lists(st.integers(0, 65535), min_size=300, max_size=300), label="noise")
    _round_trip(value_type, order, value, address=address, others=others, noise=noise)


def _round_trip(value_type: ValueType, order: ByteOrder, value: int | float, *, address: int,
                others: list[ModbusField], noise: list[int]) -> None:  # fmt: skip
    target = ModbusField(key="target", table="holding", address=address, type=value_type, order=order)
    plan = plan_reads([target, *others], unit_id=1)
    (request,) = [request for request in plan.requests if "target" in request.keys]
    response = noise[: request.count] + [0] * max(0, request.count - len(noise))
    registers = encode(value, value_type, order)
    offset = address - request.start
    response[offset : offset + len(registers)] = registers
    (reading,) = [reading for reading in request.decode(response, ts=TS) if reading.tag == "target"]
    assert reading.quality is Quality.GOOD
    decoded = reading.value
    if isinstance(value, float):
        assert isinstance(decoded, float)
        if math.isnan(value):
            assert math.isnan(decoded)
            return
        expected = struct.unpack(">f", struct.pack(">f", value))[0] if value_type == "float32" else value
        assert decoded == expected and math.copysign(1.0, decoded) == math.copysign(1.0, expected)
    else:
        assert type(decoded) is int and decoded == value


@fuzz_settings(200)
@given(
    text=st.text(max_size=16),
    spare=st.integers(0, 3),
    padding=st.sampled_from((b"\x00", b" ")),
    address=st.integers(0, 100),
)
def test_strings_round_trip(text: str, spare: int, padding: bytes, address: int) -> None:
    raw = text.encode("utf-8")
    length = (len(raw) + 1) // 2 + spare or 1
    field_bytes = raw + padding * (2 * length - len(raw))
    registers = list(struct.unpack(f">{length}H", field_bytes))
    field = ModbusField(key="s", table="input", address=address, type="string", width=length)
    (request,) = plan_reads([field], unit_id=1).requests
    (reading,) = request.decode(registers, ts=TS)
    # Devices pad with NUL or space, and the decoder strips both from the end (documented in modbus_plan).
    assert reading.quality is Quality.GOOD and reading.value == raw.rstrip(b"\x00 ").decode("utf-8")


@fuzz_settings(200)
@given(register=st.integers(0, 65535), bit=st.integers(0, 15), order=st.sampled_from(BYTE_ORDERS))
@example(register=0x8000, bit=15, order="ABCD")
@example(register=0x0100, bit=8, order="DCBA")
def test_register_bits_round_trip(register: int, bit: int, order: ByteOrder) -> None:
    field = ModbusField(key="b", table="holding", address=3, type="bool", bit=bit, order=order)
    (request,) = plan_reads([field], unit_id=1).requests
    (reading,) = request.decode([register], ts=TS)
    assert reading.value is bool((register >> bit) & 1)


@fuzz_settings(100)
@given(response=st.lists(st.one_of(st.none(), st.floats(), st.text(max_size=2), st.integers()), max_size=130))
def test_junk_in_a_register_response_is_decode_error(response: list[object]) -> None:
    """A client library bug handing over non-integers must still not raise (and nothing good may come out)."""
    fields = [ModbusField(key=f"t{i}", table="holding", address=i * 2, type="uint32") for i in range(10)]
    (request,) = plan_reads(fields, unit_id=1).requests
    readings = request.decode(response, ts=TS)  # type: ignore[arg-type]
    assert len(readings) == 10
    valid = all(type(word) is int and 0 <= word <= 65535 for word in response)
    for reading, slot in zip(readings, request.slots, strict=True):
        if not valid or slot.offset + slot.width > len(response):
            assert reading.quality is Quality.BAD and reading.status == STATUS_DECODE_ERROR
