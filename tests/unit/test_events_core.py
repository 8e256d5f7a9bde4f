"""The pure core of event records: trigger rules, records, payloads and seq, ack value checks (tables)."""

from __future__ import annotations

import json

import pytest

from gateway.assembly import build_outbound
from gateway.events.core import (
    EventEncoder,
    RecordField,
    TriggerState,
    ack_int,
    ack_value_problem,
    build_record,
    encode_record,
)
from gateway.schema import Quality, Value
from gateway.sources.base import RawReading
from gateway.tagmap import load_plant
from gateway.tagmap.events import TriggerOn
from gateway.transform import TagRules
from gateway.vocabulary import DataType
from tests.support.gateway import DEMO_CONFIG


@pytest.mark.parametrize(
    ("on", "values", "fired"),
    [
        # A FIFO's record id: the first value read counts (a record presented while the gateway was away), 0 means
        # "none", an unchanged id is the same record (acknowledged, not yet popped).
        (TriggerOn.CHANGE, [7, 7, 8, 0, 0, 9], [True, False, True, False, False, True]),
        (TriggerOn.CHANGE, [0, 1], [False, True]),
        (TriggerOn.CHANGE, ["", "CELL-1", "CELL-1", "CELL-2"], [False, True, False, True]),
        # A failed read (None) changes nothing: the same id afterwards does not fire again.
        (TriggerOn.CHANGE, [5, None, 5, 6], [True, False, False, True]),
        (TriggerOn.RISE, [True, True, False, True], [True, False, False, True]),
        (TriggerOn.RISE, [False, True, 1, 0, 2], [False, True, False, False, True]),
        # A counter: the first value is the baseline; a drop (reset, wrap) sets a new one without firing.
        (TriggerOn.INCREMENT, [10, 10, 11, 13, 2, 3], [False, False, True, True, False, True]),
        (TriggerOn.INCREMENT, [True, False, True], [False, False, False]),
    ],
)
def test_trigger_rules(on: TriggerOn, values: list[Value | None], fired: list[bool]) -> None:
    state = TriggerState(on)
    assert [state.fires(value) for value in values] == fired


def test_forget_reads_the_presented_record_again_but_keeps_a_counter_baseline() -> None:
    change = TriggerState(TriggerOn.CHANGE)
    assert change.fires(4)
    change.forget()
    assert change.fires(4), "the record still presented is read again (a duplicate by record_id)"
    counter = TriggerState(TriggerOn.INCREMENT)
    counter.fires(4)
    counter.forget()
    assert not counter.fires(4)


@pytest.mark.parametrize(
    ("value", "data_type", "bounds", "problem"),
    [
        (41, DataType.UINT32, (None, None), None),
        (41.0, DataType.UINT32, (None, None), None),
        (2**32 - 1, DataType.UINT32, (None, None), None),
        (2**32, DataType.UINT32, (None, None), "outside uint32"),
        (-1, DataType.UINT16, (None, None), "outside uint16"),
        (40000, DataType.INT16, (None, None), "outside int16"),
        (41.5, DataType.UINT32, (None, None), "not a whole number"),
        ("41", DataType.UINT32, (None, None), "not a whole number"),
        (True, DataType.UINT32, (None, None), "not a whole number"),
        (None, DataType.UINT32, (None, None), "no value"),
        (101, DataType.UINT32, (0, 100), "outside the tag's range"),
        (True, DataType.BOOL, (None, None), None),
        (1, DataType.BOOL, (None, None), None),
        (2, DataType.BOOL, (None, None), "not a bool"),
    ],
)
def test_ack_values_are_range_checked(
    value: Value | None, data_type: DataType, bounds: tuple[float | None, float | None], problem: str | None
) -> None:
    found = ack_value_problem(value, data_type, minimum=bounds[0], maximum=bounds[1])
    if problem is None:
        assert found is None
        assert value is not None
        assert ack_int(value, data_type) == int(value)
    else:
        assert found is not None and problem in found


FIELDS = (
    RecordField(field="record_id", tag="result/record_id"),
    RecordField(field="cell_id", tag="result/cell_id"),
    RecordField(field="capacity", tag="result/capacity", rules=TagRules(scale=0.001, minimum=0, maximum=150)),
)


def reading(tag: str, value: Value | None, quality: Quality = Quality.GOOD, status: str | None = None) -> RawReading:
    return RawReading(tag=tag, value=value, ts=1.0, quality=quality, status=status)


def test_record_payload() -> None:
    readings = {r.tag: r for r in (reading("result/record_id", 41), reading("result/cell_id", "CELL-S1-00000041"),
                                   reading("result/capacity", 101_500))}  # fmt: skip
    record = build_record(event="cell", fields=FIELDS, readings=readings, ts=1_780_000_000.25, record_id="record_id")
    assert record.quality is Quality.GOOD and record.record_id == 41
    body = json.loads(encode_record(record, seq=7))
    assert body == {
        "event": "cell",
        "ts": "2026-05-28T20:26:40.250Z",
        "seq": 7,
        "record_id": 41,
        "fields": {"record_id": 41, "cell_id": "CELL-S1-00000041", "capacity": pytest.approx(101.5)},
        "quality": "good",
    }


def test_a_record_with_a_bad_or_out_of_range_field_says_which() -> None:
    readings = {r.tag: r for r in (reading("result/record_id", 41), reading("result/capacity", 200_000),
                                   reading("result/cell_id", None, Quality.BAD, "device_exception:2"))}  # fmt: skip
    record = build_record(event="cell", fields=FIELDS, readings=readings, ts=0.0, record_id="record_id")
    assert record.quality is Quality.BAD
    body = json.loads(encode_record(record, seq=1))
    assert body["status"] == {"cell_id": "device_exception:2", "capacity": "out_of_range"}
    assert body["fields"]["cell_id"] is None and body["fields"]["capacity"] == pytest.approx(200.0)


def test_seq_counts_per_event_topic_and_continues_after_a_restore() -> None:
    encoder = EventEncoder(base="acme/dunkirk/a/l/stacker-01", events=["cell", "reject"])
    base = "acme/dunkirk/a/l/stacker-01/_events"
    assert encoder.seq_topics == [f"{base}/cell", f"{base}/reject"]
    encoder.restore_seq({"acme/dunkirk/a/l/stacker-01/_events/cell": 40, "other/topic": 99})
    record = build_record(event="cell", fields=FIELDS[:1], readings={}, ts=0.0, record_id=None)
    other = build_record(event="reject", fields=FIELDS[:1], readings={}, ts=0.0, record_id=None)
    seqs = [json.loads(encoder.encode(r).payload)["seq"] for r in (record, record, other)]
    assert seqs == [41, 42, 1]
    assert encoder.seq_snapshot() == {"acme/dunkirk/a/l/stacker-01/_events/cell": 42,
                                      "acme/dunkirk/a/l/stacker-01/_events/reject": 1}  # fmt: skip


def test_a_devices_event_topics_are_numbered_with_its_other_seq_topics() -> None:
    """The runtime reserves, snapshots and restores seq per topic through the device's outbound: event topics
    are among them, so a record's seq runs on across restarts like a tag's."""
    plant = load_plant(DEMO_CONFIG)
    outbound = build_outbound(plant, plant.device("stacker-01"))
    topic = "acme/dunkirk/cell-assembly/line-1/stacker-01/_events/cell"
    assert topic in outbound.seq_topics
    assert "acme/dunkirk/cell-assembly/line-1/stacker-01/result/cell_id" in outbound.seq_topics
    outbound.restore_seq({topic: 500})
    record = build_record(event="cell", fields=FIELDS[:1], readings={}, ts=0.0, record_id=None)
    message = outbound.record_message(record)
    assert message.topic == topic and not message.retain
    assert json.loads(message.payload)["seq"] == 501
    assert outbound.seq_snapshot()[topic] == 501
