"""The per-value fast paths give exactly what the plain reference paths give, for any input.

* ``ReadRequest.decode_block`` (one ``unpack_from`` over the plain fields of a block) vs decoding every slot
  with its own decoder, as the planner compiled it.
* ``TagTransform.apply`` (inline fast path for good numbers) vs ``TagTransform.apply_generic`` (through
  ``normalise_value``), over whole sequences, so the report-by-exception state is compared too.
* ``encode_batch_payload``, ``BatchEncoder.encode`` and ``encode_tag_payload`` vs copies of the encoders as they
  were before they were made faster (below): the payloads are a public API, so the bytes must not change.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.encoders.uns_json import (
    BatchEncoder,
    UnsJsonDeviceEncoder,
    encode_batch_payload,
    encode_tag_payload,
    format_ts,
)
from gateway.outbound import DeviceOutbound, TagOutput
from gateway.schema import STATUS_DECODE_ERROR, EquipmentTopics, Quality, Sample, SampleContext, TagMeta, Value
from gateway.sources.base import RawReading
from gateway.sources.modbus_plan import (
    BYTE_ORDERS,
    VALUE_TYPES,
    FieldSlot,
    ModbusField,
    ReadLimits,
    ReadRequest,
    plan_reads,
)
from gateway.transform import TagRules, TagTransform
from gateway.vocabulary import PublishMode

# ------------------------------------------------------------------------------------ reference encoders
# Copies of gateway/schema.py's encoders before the batch fast path (commit 1ede25e), kept verbatim apart from
# names: the bytes every subscriber sees today.


def _reference_json_value(value: Value | None) -> Value | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _reference_json(body: Any) -> bytes:
    return memoryview(orjson.dumps(body)).tobytes()


def reference_tag_payload(sample: Sample, *, unit: str | None, seq: int, historical: bool = False) -> bytes:
    body: dict[str, Any] = {
        "value": _reference_json_value(sample.value),
        "unit": unit,
        "quality": sample.quality,
        "ts": format_ts(sample.ts),
        "seq": seq,
    }
    if sample.quality is not Quality.GOOD and sample.status:
        body["status"] = sample.status
    if historical:
        body["historical"] = True
    return _reference_json(body)


def reference_batch_payload(
    samples: Sequence[Sample], *, units: Mapping[str, str | None], ts: float, seq: int, historical: bool = False
) -> bytes:
    rows: list[dict[str, Any]] = []
    for sample in samples:
        row: dict[str, Any] = {
            "tag": sample.tag,
            "value": _reference_json_value(sample.value),
            "unit": units.get(sample.tag),
            "quality": sample.quality,
            "ts": format_ts(sample.ts),
        }
        if sample.quality is not Quality.GOOD and sample.status:
            row["status"] = sample.status
        rows.append(row)
    body: dict[str, Any] = {"ts": format_ts(ts), "seq": seq, "samples": rows}
    if historical:
        body["historical"] = True
    return _reference_json(body)


# ------------------------------------------------------------------------------------------- strategies

# Tag names and units as JSON must escape them: quotes, commas, backslashes, non-ASCII.
TAGS = ["ch001/voltage", "ch001/temp", 'quote"d', "comma,tag", "back\\slash", "zone/Température", "t"]
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, 1, -1, 0.0, -0.0, 1e16, 1e-7, 123456789.123, 2**53 + 1]),
)
values = st.one_of(numbers, st.booleans(), st.text(max_size=6), st.sampled_from(["a,b", '"', ",", ""]), st.none())
qualities = st.sampled_from(list(Quality))
statuses = st.one_of(st.none(), st.sampled_from(["comm_failure", "out_of_range", "BadSensorFailure", "", "a,b"]))
# Epoch seconds that format_ts handles: 1901..2100, with millisecond edges.
timestamps = st.one_of(
    st.floats(min_value=-2.1e9, max_value=4.1e9, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1795668180.9996, 1795668180.0005, -0.5]),
)


@st.composite
def samples(draw: st.DrawFn) -> Sample:
    return Sample(
        draw(st.sampled_from(["rack-01", "d"])),
        draw(st.sampled_from(TAGS)),
        draw(values),
        draw(qualities),
        draw(timestamps),
        draw(statuses),
    )


# Mostly good numeric batches sharing a few timestamps, which is what takes BatchEncoder's fast path.
good_samples = st.builds(
    Sample,
    st.just("rack-01"),
    st.sampled_from(TAGS),
    numbers,
    st.just(Quality.GOOD),
    st.sampled_from([1795668180.123, 1795668180.5, 0.0]),
    statuses,
)
batches = st.one_of(st.lists(samples(), max_size=12), st.lists(good_samples, max_size=12))
units_maps = st.dictionaries(
    st.sampled_from(TAGS), st.one_of(st.none(), st.sampled_from(["V", "Cel", 'in"ch', "m/s", "°C"])), max_size=len(TAGS)
)


# ---------------------------------------------------------------------------------------------- encoders


@given(batch=batches, units=units_maps, ts=timestamps, seq=st.integers(0, 2**63 - 1), historical=st.booleans())
@settings(max_examples=400, deadline=None)  # behavioural: no per-example time limit on a loaded CI box
def test_batch_payload_bytes_unchanged(
    batch: list[Sample], units: dict[str, str | None], ts: float, seq: int, historical: bool
) -> None:
    try:
        expected = reference_batch_payload(batch, units=units, ts=ts, seq=seq, historical=historical)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: every encoder refuses it alike
        expected = None
    for encode in (
        lambda: encode_batch_payload(batch, units=units, ts=ts, seq=seq, historical=historical),
        lambda: BatchEncoder(units).encode(batch, ts=ts, seq=seq, historical=historical),
    ):
        if expected is None:
            try:
                encode()
            except orjson.JSONEncodeError:
                continue
            raise AssertionError("an encoder accepted what the reference refuses")
        assert encode() == expected


@given(
    sample=st.one_of(samples(), good_samples),
    unit=st.one_of(st.none(), st.sampled_from(["V", 'in"ch', "°C"])),
    seq=st.integers(0, 2**63 - 1),
    historical=st.booleans(),
)
@settings(max_examples=400, deadline=None)  # behavioural: no per-example time limit on a loaded CI box
def test_tag_payload_bytes_unchanged(sample: Sample, unit: str | None, seq: int, historical: bool) -> None:
    try:
        expected = reference_tag_payload(sample, unit=unit, seq=seq, historical=historical)
    except orjson.JSONEncodeError:
        return
    assert encode_tag_payload(sample, unit=unit, seq=seq, historical=historical) == expected


PER_TAG_UNITS: dict[str, str | None] = dict(zip(TAGS, ["V", None, 'in"ch', "°C", "m/s", None, "Cel"], strict=True))


def per_tag_encoder() -> UnsJsonDeviceEncoder:
    topics = EquipmentTopics.of(enterprise="e", site="s", area="a", line="l", equipment="rack-01")
    return UnsJsonDeviceEncoder(
        device="rack-01", protocol="modbus", topics=topics, mode=PublishMode.TAG, interval_ms=1000,
        units=PER_TAG_UNITS, catalogue=[TagMeta(tag=tag, type="float32") for tag in TAGS], max_packet_bytes=1 << 20,
    )  # fmt: skip


def reference_per_tag_messages(
    encoder: UnsJsonDeviceEncoder, batches: list[list[Sample]], tail_of: Any = None
) -> list[list[tuple[str, bytes]] | None]:
    """Per batch: each sample's topic and reference payload with its topic's next seq (plus a context tail, as
    ``payload[:-1] + tail``); None for a batch the reference refuses (an integer beyond 64 bits)."""
    seqs: dict[str, int] = {}
    expected: list[list[tuple[str, bytes]] | None] = []
    for batch in batches:
        rows: list[tuple[str, bytes]] | None = []
        for sample in batch:
            topic = encoder.topics.tag(sample.tag)
            seq = seqs[topic] = seqs.get(topic, 0) + 1
            try:
                payload = reference_tag_payload(sample, unit=PER_TAG_UNITS[sample.tag], seq=seq)
            except orjson.JSONEncodeError:
                rows = None
                break
            tail = b"}" if tail_of is None else tail_of(sample.tag)
            assert rows is not None
            rows.append((topic, payload if tail == b"}" else payload[:-1] + tail))
        if rows is None:  # the encoder refuses the whole call; its seq numbers are not rolled back either
            seqs = {}
        expected.append(rows)
    return expected


# Good samples of distinct tags: what the per-tag encoder makes in one step (no Python work per sample).
distinct_good = st.lists(good_samples, max_size=len(TAGS), unique_by=lambda sample: sample.tag)


@given(calls=st.lists(st.one_of(batches, distinct_good), max_size=4))
@settings(max_examples=300, deadline=None)  # behavioural: no per-example time limit on a loaded CI box
def test_per_tag_device_encoder_bytes_unchanged(calls: list[list[Sample]]) -> None:
    """UnsJsonDeviceEncoder in per-tag mode (payloads from prepared parts and one dump of a call's values, a
    call of good samples of distinct tags in one step) gives each sample the reference payload with its topic's
    next seq, over several calls."""
    encoder = per_tag_encoder()
    for batch, rows in zip(calls, reference_per_tag_messages(encoder, calls), strict=True):
        if rows is None:
            try:
                encoder.encode(batch, now=1.0)
            except orjson.JSONEncodeError:
                return  # the seq numbers of a refused call are spent: stop comparing here
            raise AssertionError("the encoder accepted what the reference refuses")
        assert [(m.topic, m.payload, m.retain) for m in encoder.encode(batch, now=1.0)] == [
            (topic, payload, False) for topic, payload in rows
        ]


context_values = st.dictionaries(
    st.sampled_from(["lot", "recipe", "cell"]), st.one_of(st.text(max_size=4), st.integers(-5, 5)), max_size=2
)


@given(calls=st.lists(batches, max_size=3), device=context_values, instance=context_values)
@settings(max_examples=200, deadline=None)  # behavioural: no per-example time limit on a loaded CI box
def test_per_tag_device_encoder_in_context_bytes_unchanged(
    calls: list[list[Sample]], device: dict[str, Value], instance: dict[str, Value]
) -> None:
    """``encode_in_context`` per tag: the reference payload with the sample's context in place of its closing
    brace (the tags of one repeat instance add that instance's keys)."""
    encoder = per_tag_encoder()
    instance = {key: value for key, value in instance.items() if key not in device}
    members = {"ch001/voltage": 0, "ch001/temp": 0}
    context = SampleContext(device, (instance,), ("ch001",), members)

    def tail_of(tag: str) -> bytes:
        keys = {**device, **instance} if tag in members else device
        return b',"ctx":' + orjson.dumps(keys) + b"}" if keys else b"}"

    for batch, rows in zip(calls, reference_per_tag_messages(encoder, calls, tail_of), strict=True):
        if rows is None:
            try:
                encoder.encode_in_context(batch, context, now=1.0)
            except orjson.JSONEncodeError:
                return
            raise AssertionError("the encoder accepted what the reference refuses")
        found = encoder.encode_in_context(batch, context, now=1.0)
        assert [(m.topic, m.payload) for m in found] == rows


def test_batch_encoder_fast_path_is_taken_and_exact_size() -> None:
    units = {"ch001/voltage": "V", 'quote"d': None}
    batch = [
        Sample("rack-01", "ch001/voltage", 3.25, Quality.GOOD, 1795668180.123),
        Sample("rack-01", 'quote"d', 7, Quality.GOOD, 1795668180.5, "ignored when good"),
    ]
    payload = BatchEncoder(units).encode(batch, ts=1795668181.0, seq=9)
    assert payload == reference_batch_payload(batch, units=units, ts=1795668181.0, seq=9)
    assert type(payload) is bytes and orjson.loads(payload)["samples"][1]["tag"] == 'quote"d'


# -------------------------------------------------------------------------------------------- transform

# Small round numbers make readings land exactly on range limits and deadband edges.
EDGES = [0, 1, 2, 10, 0.0, 0.5, 2.0, 10.0, -1.0]
rules_strategy = st.builds(
    TagRules,
    scale=st.one_of(st.just(1.0), st.sampled_from([2.0, 0.5, -1.0]), st.floats(-1e3, 1e3), st.just(1e300)),
    offset=st.one_of(st.just(0.0), st.sampled_from([1.0, -0.5]), st.floats(-1e3, 1e3)),
    minimum=st.one_of(st.none(), st.sampled_from([0.0, 1.0]), st.floats(-100, 100), st.just(math.nan)),
    maximum=st.one_of(st.none(), st.sampled_from([2.0, 10.0]), st.floats(-100, 100)),
    deadband=st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 5)),
    heartbeat_s=st.one_of(st.none(), st.sampled_from([1.0, 2.0]), st.floats(0.5, 10)),
)
readings = st.builds(
    RawReading,
    st.just("t"),
    st.one_of(numbers, st.sampled_from(EDGES), st.booleans(), st.sampled_from(["x", "y"]), st.none()),
    st.floats(0, 1e9),
    st.sampled_from([Quality.GOOD, Quality.GOOD, Quality.GOOD, Quality.UNCERTAIN, Quality.BAD]),
    st.one_of(st.none(), st.sampled_from(["comm_failure", "stale"])),
)


def comparable(sample: Sample | None) -> object:
    """A Sample with NaN made comparable and the value's type kept (1 and 1.0 are different JSON)."""
    if sample is None:
        return None
    value = sample.value
    shown = "nan" if isinstance(value, float) and math.isnan(value) else value
    return (*sample[:2], type(value), shown, *sample[3:])


@given(rules=rules_strategy, steps=st.lists(st.tuples(readings, st.sampled_from([0.0, 0.5, 1.0, 2.5])), max_size=25))
@settings(max_examples=600, deadline=None)  # behavioural: no per-example time limit on a loaded CI box
def test_transform_fast_path_equals_generic_path(rules: TagRules, steps: list[tuple[RawReading, float]]) -> None:
    fast = TagTransform(device="d", tag="t", rules=rules)
    generic = TagTransform(device="d", tag="t", rules=rules)
    now = 1000.0
    for raw, elapsed in steps:
        now += elapsed
        assert comparable(fast.apply(raw, now)) == comparable(generic.apply_generic(raw, now))


PASS_TAGS = ["a", "b"]
# Mostly calls of plain good numbers (the per-call path), with what sends a call to the per-reading path: a bad or
# uncertain reading, a NaN or an infinity, a boolean, a string, an int beyond float range, a tag the device lacks.
plain_numbers = st.one_of(st.integers(-(2**31), 2**31), st.floats(-1e6, 1e6), st.sampled_from([0, 0.0, -0.0, 1e308]))
device_readings = st.one_of(
    st.builds(RawReading, st.sampled_from(PASS_TAGS), plain_numbers, st.sampled_from([1.0, 2.5])),
    st.builds(
        RawReading,
        st.sampled_from([*PASS_TAGS, "unknown"]),
        # Few distinct values and statuses: a repeated bad reading (reported once) must come up often.
        st.sampled_from([None, None, 1, 1.5, math.nan, math.inf, True, "x", 2**70]),
        st.sampled_from([1.0, 2.5]),
        st.sampled_from([Quality.GOOD, Quality.UNCERTAIN, Quality.BAD, Quality.BAD]),
        st.sampled_from([None, "comm_failure"]),
    ),
)
plain_call = st.lists(st.builds(RawReading, st.sampled_from(PASS_TAGS), plain_numbers, st.just(3.0)), max_size=6)
device_calls = st.lists(st.one_of(plain_call, st.lists(device_readings, max_size=6)), max_size=8)


def pass_through_device() -> DeviceOutbound:
    outputs = [
        TagOutput(name=tag, unit=None, rules=TagRules(), meta=TagMeta(tag=tag, type="float32")) for tag in PASS_TAGS
    ]
    return DeviceOutbound(
        device="d", protocol="modbus", topics=EquipmentTopics.of(enterprise="e", site="s", area="a", line="l",
        equipment="d"), mode=PublishMode.TAG, interval_ms=1000, tags=outputs,
    )  # fmt: skip


_LOST = RawReading("a", None, 1.0, Quality.BAD, "comm_failure")


@given(calls=device_calls)
# A repeated bad reading is reported once, unless a good one came between, even one the per-call path made.
@example(calls=[[_LOST], [RawReading("a", 1, 2.0), RawReading("b", 2.0, 2.0)], [_LOST], [_LOST]])
@example(calls=[[RawReading("a", 1, 2.0), RawReading("b", 2, 2.0)], [_LOST], [RawReading("a", 1, 3.0)], [_LOST]])
@settings(max_examples=200, deadline=None)  # behavioural: no per-example time limit on a loaded CI box
def test_pass_through_device_samples_equal_each_transforms_generic_path(calls: list[list[RawReading]]) -> None:
    """A device whose tags all pass their values through makes a call of plain readings into Samples in one step
    (without its transforms); over any sequence of calls it publishes what each tag's generic transform does."""
    device = pass_through_device()
    reference = {tag: TagTransform(device="d", tag=tag, rules=TagRules()) for tag in PASS_TAGS}
    now = 1000.0
    unknown = 0
    for readings in calls:
        now += 1.0
        expected: list[Sample | None] = []
        for raw in readings:
            if raw.tag in reference:
                expected.append(reference[raw.tag].apply_generic(raw, now))
            else:
                unknown += 1
        found = device.samples(readings, now)
        assert [comparable(sample) for sample in found] == [comparable(s) for s in expected if s is not None]
    assert device.unknown_tags == unknown


def test_pass_through_device_takes_the_per_call_path_once_every_tag_was_good(monkeypatch: Any) -> None:
    device = pass_through_device()
    first = [RawReading(tag, 1, 1.0) for tag in PASS_TAGS]
    assert device.samples(first, 1.0) == [Sample("d", tag, 1, Quality.GOOD, 1.0) for tag in PASS_TAGS]

    def no_transform(*_: object) -> None:
        raise AssertionError("a transform was asked")

    monkeypatch.setattr(TagTransform, "apply", no_transform)
    second = [RawReading("b", 2.5, 2.0), RawReading("a", -7, 2.0)]
    assert device.samples(second, 2.0) == [
        Sample("d", "b", 2.5, Quality.GOOD, 2.0),
        Sample("d", "a", -7, Quality.GOOD, 2.0),
    ]
    with pytest.raises(AssertionError, match="a transform was asked"):  # a NaN is not plain: the tag's transform
        device.samples([RawReading("a", math.nan, 3.0)], 3.0)


def test_transform_derived_rules_do_not_change_equality() -> None:
    # Rules are deduplicated by value (one object per template tag); the derived fields must not take part.
    assert TagRules(minimum=0.0) == TagRules(minimum=0.0)
    assert hash(TagRules(deadband=1.0)) == hash(TagRules(deadband=1.0))
    rules = TagRules(scale=2.0, minimum=0.0)
    assert (rules.scales, rules.low, rules.high, rules.publishes_every_reading) == (True, 0.0, math.inf, True)


# ---------------------------------------------------------------------------------------------- decode


def reference_decode(request: ReadRequest, block: bytes) -> list[RawReading]:
    """Every slot with its own compiled decoder: the decoding as it was before the block-wide unpack."""
    available = len(block) // 2
    out: list[RawReading] = []
    for slot in request.slots:
        out.append(reference_slot(slot, block, available))
    return out


def reference_slot(slot: FieldSlot, block: bytes, available: int) -> RawReading:
    bad = RawReading(tag=slot.key, value=None, ts=1.0, quality=Quality.BAD, status=STATUS_DECODE_ERROR)
    if slot.offset + slot.width > available:
        return bad
    try:
        return RawReading(slot.key, slot.decode(block), 1.0)  # type: ignore[arg-type]
    except (ValueError, IndexError, struct.error):
        return bad


@st.composite
def register_fields(draw: st.DrawFn) -> list[ModbusField]:
    fields: list[ModbusField] = []
    for n in range(draw(st.integers(1, 12))):
        value_type = draw(st.sampled_from(VALUE_TYPES))
        fields.append(
            ModbusField(
                key=f"f{n}",
                table=draw(st.sampled_from(["holding", "input"])),
                address=draw(st.integers(0, 40)),  # overlaps and gaps both happen
                type=value_type,
                order=draw(st.sampled_from(BYTE_ORDERS)),
                bit=draw(st.integers(0, 15)) if value_type == "bool" else None,
                width=draw(st.integers(1, 4)) if value_type == "string" else None,
            )
        )
    return fields


@given(fields=register_fields(), data=st.data())
@settings(max_examples=300, deadline=None)  # behavioural: no per-example time limit on a loaded CI box
def test_block_decode_equals_per_slot_decoding(fields: list[ModbusField], data: st.DataObject) -> None:
    plan = plan_reads(fields, unit_id=1, limits=ReadLimits(max_gap=data.draw(st.integers(0, 12))))
    assert not plan.problems
    for request in plan.requests:
        size = data.draw(st.sampled_from([2 * request.count, 2 * request.count + 4, 2 * request.count - 2, 3, 0]))
        block = data.draw(st.binary(min_size=max(size, 0), max_size=max(size, 0)))
        assert comparable_readings(request.decode_block(block, ts=1.0)) == comparable_readings(
            reference_decode(request, block)
        )


def comparable_readings(found: list[RawReading]) -> list[tuple[object, ...]]:
    return [
        (r.tag, type(r.value), "nan" if isinstance(r.value, float) and math.isnan(r.value) else r.value, *r[2:])
        for r in found
    ]


def test_block_unpacker_covers_plain_fields_and_leaves_the_rest_to_their_decoders() -> None:
    plan = plan_reads(
        [
            ModbusField(key="v", table="holding", address=0, type="float32"),
            ModbusField(key="t", table="holding", address=3, type="int16"),
            ModbusField(key="t_raw", table="holding", address=3, type="uint16"),  # same register: overlaps
            ModbusField(key="n", table="holding", address=4, type="uint32"),
            ModbusField(key="w", table="holding", address=6, type="float32", order="CDAB"),  # permuted
            ModbusField(key="alarm", table="holding", address=8, type="bool", bit=2),
            ModbusField(key="e", table="holding", address=9, type="int32", order="DCBA"),  # the other endianness
        ],
        unit_id=1,
    )
    (request,) = plan.requests
    assert request.unpacker is not None and request.unpacker.format == ">f2xhI"
    assert dict(zip(request.keys, request.in_unpacker, strict=True)) == {
        "v": True, "t": True, "t_raw": False, "n": True, "w": False, "alarm": False, "e": False,
    }  # fmt: skip


def test_block_of_dcba_fields_is_unpacked_little_endian() -> None:
    plan = plan_reads(
        [ModbusField(key=f"e{n}", table="input", address=2 * n, type="int32", order="DCBA") for n in range(3)],
        unit_id=1,
    )
    (request,) = plan.requests
    assert request.unpacker is not None and request.unpacker.format == "<iii"
    block = struct.pack("<iii", -5, 7, 2**31 - 1)
    assert [(r.tag, r.value) for r in request.decode_block(block, ts=2.0)] == [("e0", -5), ("e1", 7), ("e2", 2**31 - 1)]
