# mypy: disable-error-code="arg-type,assignment"
# (asyncua annotates its fields with wrapper classes such as ua.Int16 and ua.DateTime where plain ints and datetimes
# are what it really holds, and this file passes values of unexpected types on purpose.)
"""OPC UA values of any type never break the pipeline: conversion gives good/uncertain/bad with a status, and the
readings go through the transform and the payload encoders into valid JSON with the schema's fields.

Values: None, bools, integers of any size, floats (NaN, infinities), text with lone surrogates (asyncua decodes
Strings with ``surrogateescape``), bytes, datetimes (naive, UTC, far-off offsets, the calendar's ends), UUIDs,
nested lists/tuples/dicts/sets, asyncua LocalizedText / QualifiedName / NodeId / ExpandedNodeId / StatusCode /
ExtensionObject / Variant / DataValue, IntEnums and arbitrary objects; each with or without a VariantType, and in
Variants and DataValues whose fields were set without asyncua's checks; status codes of every severity, known and
unknown.
"""

from __future__ import annotations

import enum
import math
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final

import orjson
from asyncua import ua
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.encoders.uns_json import encode_batch_payload, encode_tag_payload
from gateway.schema import STATUS_DECODE_ERROR, Quality
from gateway.sources.base import RawReading
from gateway.sources.opcua_status import (
    UNSUPPORTED_TYPE_PREFIX,
    convert_value,
    convert_variant,
    quality_of_status,
    readings_from_data_value,
)
from gateway.transform import TagRules, TagTransform
from tests.support.fuzz import fuzz_settings

RECEIVED_AT: Final = 1_764_000_000.5
TAGS: Final = ("line/speed", "line/speed_copy")
ISO_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
# Values the conversion may hand on: what the schema publishes.
VALUE_TYPES: Final = (bool, int, float, str)


class Mode(enum.IntEnum):
    AUTO = 2


class Opaque:
    """An object of a type nobody expects."""


# ----------------------------------------------------------------------------------------------- strategies

# Text as asyncua may produce it: any code point, lone surrogates included (surrogateescape'd Latin-1 bytes).
any_text = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec=None, categories=None), max_size=20),
    st.binary(max_size=12).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
)
offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
datetimes = st.one_of(
    st.datetimes(),
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(timezones=offsets.map(timezone)),
    st.sampled_from(
        (
            datetime.min,
            datetime.max,
            datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),  # before year 1 in UTC
            datetime.max.replace(tzinfo=timezone(timedelta(hours=-14))),  # after year 9999 in UTC
            datetime(1601, 1, 1),  # OPC UA's zero DateTime
        )
    ),
)
status_values = st.one_of(
    st.integers(0, 2**32 - 1),
    st.sampled_from((0, 0x40000000, 0x80000000, 0xC0000000, 0x808C0000, 0x408F0000, 0x80AB0000, 0x00A30000)),
)
node_ids = st.one_of(
    st.builds(ua.NodeId, st.integers(0, 2**32 - 1), st.integers(0, 65535)),
    st.builds(lambda text, ns: ua.NodeId(text, ns, ua.NodeIdType.String), any_text, st.integers(0, 65535)),
    st.builds(lambda guid, ns: ua.NodeId(guid, ns, ua.NodeIdType.Guid), st.uuids(), st.integers(0, 65535)),
    st.builds(lambda raw, ns: ua.NodeId(raw, ns, ua.NodeIdType.ByteString), st.binary(max_size=8), st.integers(0, 9)),
    st.builds(
        lambda number, uri, server: ua.ExpandedNodeId(number, 0, NamespaceUri=uri, ServerIndex=server),
        st.integers(0, 2**32 - 1),
        st.none() | any_text,
        st.integers(0, 2**32 - 1),
    ),
)


def _unchecked_node_id(identifier: object, kind: ua.NodeIdType) -> ua.NodeId:
    """A NodeId whose identifier misfits its type (asyncua's constructor would refuse it; a decoder bug may not)."""
    node = ua.NodeId(1, 0)
    object.__setattr__(node, "Identifier", identifier)
    object.__setattr__(node, "NodeIdType", kind)
    return node


def _unchecked_status(value: object) -> ua.StatusCode:
    """A StatusCode holding any value (the constructor would look text up as a status name)."""
    code = ua.StatusCode.__new__(ua.StatusCode)
    object.__setattr__(code, "value", value)
    return code


ua_objects = st.one_of(
    st.builds(ua.LocalizedText, st.none() | any_text, st.none() | any_text),
    st.builds(ua.QualifiedName, st.none() | any_text, st.integers(0, 65535)),
    node_ids,
    st.builds(_unchecked_node_id, st.none() | st.text(max_size=4), st.sampled_from(list(ua.NodeIdType))),
    st.builds(ua.StatusCode, status_values),
    st.builds(ua.ExtensionObject),
    st.builds(ua.DiagnosticInfo),
    st.builds(ua.Variant, st.integers(-100, 100)),
    st.builds(ua.DataValue, st.builds(ua.Variant, st.floats())),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from((2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**40, -(10**400))),
    st.floats(),
    st.floats(width=32),
    any_text,
    st.binary(max_size=20),
    st.binary(max_size=8).map(bytearray),
    datetimes,
    st.uuids(),
    st.just(Mode.AUTO),
    st.just(ua.VariantType.Int32),  # an IntEnum from asyncua itself
    st.builds(Opaque),
    st.just(Decimal("1.5")),
    st.just(1 + 2j),
    st.just(object()),
    ua_objects,
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=4), children, max_size=3),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=10,
)
variant_types = st.none() | st.sampled_from(list(ua.VariantType))


def unchecked_variant(value: object, variant_type: ua.VariantType, dimensions: list[int] | None,
                      is_array: bool) -> ua.Variant:  # fmt: skip
    """A Variant with whatever fields, as a buggy server and a lenient decoder might produce together."""
    variant = ua.Variant.__new__(ua.Variant)
    variant.Value = value
    variant.VariantType = variant_type
    variant.Dimensions = dimensions
    variant.is_array = is_array
    return variant


variants = st.one_of(
    st.none(),
    st.builds(
        unchecked_variant,
        values,
        st.sampled_from(list(ua.VariantType)),
        st.none() | st.lists(st.integers(0, 4), max_size=2),
        st.booleans(),
    ),
)


@st.composite
def data_values(draw: st.DrawFn) -> ua.DataValue | None:
    if draw(st.integers(0, 20)) == 0:
        return None
    return ua.DataValue(
        Value=draw(variants),
        StatusCode=draw(st.none() | st.builds(ua.StatusCode, status_values) | st.builds(_unchecked_status, values)),
        SourceTimestamp=draw(st.none() | datetimes),
        ServerTimestamp=draw(st.none() | datetimes),
    )


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


def check_conversion(value: object, problem: str | None) -> None:
    if problem is None and isinstance(value, list):  # an array: every element is a converted value (or null)
        for item in value:
            if item is not None:
                check_conversion(item, None)
        return
    if problem is None and isinstance(value, dict):  # a structure: field names and converted values
        for key, item in value.items():
            assert isinstance(key, str)
            if item is not None:
                check_conversion(item, None)
        return
    if problem is None:
        assert type(value) in VALUE_TYPES, (type(value), value)
        if isinstance(value, str):
            value.encode("utf-8")  # never a lone surrogate: the JSON encoder would refuse it
        if isinstance(value, int) and not isinstance(value, bool):
            assert -(2**63) <= value < 2**64  # what OPC UA can carry and orjson can write
    else:
        assert value is None
        assert problem == STATUS_DECODE_ERROR or (
            problem.startswith(UNSUPPORTED_TYPE_PREFIX) and len(problem) > len(UNSUPPORTED_TYPE_PREFIX)
        ), problem


@fuzz_settings(500)
@given(value=values, variant_type=variant_types)
@example(value=2**70, variant_type=None)  # orjson: "Integer exceeds 64-bit range" in the sink
@example(value="25 \udcb0C", variant_type=ua.VariantType.String)  # Latin-1 degree sign: orjson refused the str
@example(value="\ud800", variant_type=None)
@example(value=ua.LocalizedText("\udcff"), variant_type=ua.VariantType.LocalizedText)
@example(value=datetime.min.replace(tzinfo=timezone(timedelta(hours=14))), variant_type=None)  # OverflowError
@example(value=_unchecked_node_id("not-a-guid", ua.NodeIdType.Guid), variant_type=ua.VariantType.NodeId)
@example(value=1e300, variant_type=ua.VariantType.Float)
def test_convert_value_never_raises(value: object, variant_type: ua.VariantType | None) -> None:
    converted, problem = convert_value(value, variant_type)
    check_conversion(converted, problem)


@fuzz_settings(300)
@given(variant=variants)
def test_convert_variant_never_raises(variant: ua.Variant | None) -> None:
    converted, problem = convert_variant(variant)
    check_conversion(converted, problem)


@fuzz_settings(300)
@given(
    code=st.one_of(
        st.none(),
        status_values,
        st.integers(),
        st.builds(ua.StatusCode, status_values),
        st.builds(_unchecked_status, st.one_of(st.integers(), st.text(max_size=3), st.floats(), st.none())),
        st.floats(),
        st.text(max_size=3),
    )
)
@example(code=-5)  # was "0x-0000005"
@example(code=_unchecked_status("x"))  # ValueError from int()
def test_quality_of_any_status_code(code: Any) -> None:
    quality, status = quality_of_status(code)
    assert quality in (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD)
    assert (status is None) == (quality is Quality.GOOD)
    if status is not None:
        assert status and (status[0].isalpha() or status.startswith("0x"))


def check_payload(body: dict[str, Any], quality: Quality) -> None:
    assert {"value", "unit", "quality", "ts"} <= body.keys()
    assert body["quality"] == quality.value
    assert body["value"] is None or type(body["value"]) in (*VALUE_TYPES, list, dict)  # arrays, structures
    assert isinstance(body["ts"], str) and body["ts"].endswith("Z")


@fuzz_settings(400)
@given(data_value=data_values(), tag_rules=rules, repeat=st.integers(1, 3))
@example(
    data_value=ua.DataValue(Value=ua.Variant("25 \udcb0C"), SourceTimestamp=datetime(2026, 11, 26, tzinfo=UTC)),
    tag_rules=TagRules(),
    repeat=1,
)
@example(  # payload ts "1969-01-01T00:00:01.-1000Z": format_ts truncated toward zero
    data_value=ua.DataValue(Value=ua.Variant(1.5), SourceTimestamp=datetime(1969, 1, 1, 0, 0, 0, 1)),
    tag_rules=TagRules(),
    repeat=1,
)
@example(  # year 1 published as "1-01-01T00:00:00.000Z"; MinDateTime now means "no source timestamp"
    data_value=ua.DataValue(Value=ua.Variant(1.5), SourceTimestamp=datetime(1, 1, 1)),
    tag_rules=TagRules(),
    repeat=1,
)
def test_readings_transform_and_encode(data_value: ua.DataValue | None, tag_rules: TagRules, repeat: int) -> None:
    readings = readings_from_data_value(TAGS, data_value, received_at=RECEIVED_AT)
    assert [reading.tag for reading in readings] == list(TAGS)
    for reading in readings:
        assert isinstance(reading, RawReading)
        assert math.isfinite(reading.ts)
        assert reading.quality in (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD)
        if reading.quality is Quality.GOOD:
            assert reading.status is None
        else:
            assert isinstance(reading.status, str) and reading.status
        if reading.quality is Quality.BAD:
            assert reading.value is None  # OPC UA: the value of a Bad DataValue is never used
        check_conversion(reading.value, None if reading.value is not None else "unsupported_type:x")

    transform = TagTransform(device="coater-01", tag=TAGS[0], rules=tag_rules)
    samples = []
    for seq in range(repeat):  # the same reading again: deadband / repeated-bad suppression paths
        sample = transform.apply(readings[0], now=RECEIVED_AT + seq)
        if seq == 0:
            assert sample is not None
        if sample is None:
            continue
        samples.append(sample)
        body = orjson.loads(encode_tag_payload(sample, unit="m/min", seq=seq, historical=bool(seq % 2)))
        check_payload(body, sample.quality)
        assert body["seq"] == seq
        assert ("status" in body) == (sample.quality is not Quality.GOOD and bool(sample.status))
        if data_value is not None and data_value.SourceTimestamp is not None:
            moment = data_value.SourceTimestamp
            if moment.tzinfo is None or moment.utcoffset() == timedelta(0):
                assert ISO_TS.fullmatch(body["ts"]), body["ts"]  # the calendar's range, in UTC
    batch = orjson.loads(encode_batch_payload(samples, units={TAGS[0]: "m/min"}, ts=RECEIVED_AT, seq=1))
    assert [row["tag"] for row in batch["samples"]] == [TAGS[0]] * len(samples)
    for row, sample in zip(batch["samples"], samples, strict=True):
        check_payload(row, sample.quality)


@fuzz_settings(50)
@given(text=st.binary(max_size=40))
def test_latin1_text_from_a_plc_is_published_with_replacement_characters(text: bytes) -> None:
    """asyncua's surrogateescape decoding keeps the bytes; the published text is their UTF-8 reading, with U+FFFD
    for whatever is not UTF-8."""
    received = text.decode("utf-8", "surrogateescape")
    value, problem = convert_value(received, ua.VariantType.String)
    assert problem is None
    assert value == text.decode("utf-8", "replace")


def test_unique_values_are_named_in_unsupported_status() -> None:
    """Fixed points of the contract the fuzzing relies on (names of unsupported types)."""
    assert convert_value(None) == (None, "unsupported_type:Null")
    assert convert_value([1, 2], ua.VariantType.Int32) == ([1, 2], None)  # arrays are published (issue 15)
    assert convert_value([object()], ua.VariantType.Variant) == (None, "unsupported_type:Array[Variant]")
    assert convert_value(ua.DiagnosticInfo()) == (None, "unsupported_type:DiagnosticInfo")
    assert convert_value({"a": 1}) == (None, "unsupported_type:dict")
    assert convert_value(ua.ExtensionObject(), ua.VariantType.ExtensionObject) == (
        None,
        "unsupported_type:ExtensionObject[i=0]",
    )
    assert convert_value(uuid.UUID(int=1)) == ("00000000-0000-0000-0000-000000000001", None)
    assert convert_value(2**64) == (None, STATUS_DECODE_ERROR)
