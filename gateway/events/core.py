"""The pure part of event records: trigger rules, records, their JSON payload and ``seq``, ack values.

No I/O, no clock: callers pass values and times in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gateway.encoders.base import Message
from gateway.encoders.uns_json import format_ts
from gateway.schema import Quality, Value
from gateway.sources.base import RawReading
from gateway.tagmap.events import EVENTS_SEGMENT, TriggerOn
from gateway.transform import TagRules, normalise_value
from gateway.vocabulary import ByteOrder, DataType

_QUALITY_RANK: Final = {Quality.GOOD: 0, Quality.UNCERTAIN: 1, Quality.BAD: 2}

INTEGER_RANGES: Final[Mapping[DataType, tuple[int, int]]] = {
    DataType.BOOL: (0, 1),
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
"""What a written value of each ack type may be (the range its registers or variant can hold)."""

_STRUCT: Final[Mapping[DataType, str]] = {
    DataType.INT16: "h", DataType.UINT16: "H", DataType.INT32: "i", DataType.UINT32: "I",
    DataType.INT64: "q", DataType.UINT64: "Q",
}  # fmt: skip


def _is_set(value: Value | None) -> bool:
    """A trigger value that means "something is there": not None, 0, false or an empty string."""
    return value is not None and value != 0 and value != ""


class TriggerState:
    """Decides, value by value, whether a trigger fires (see ``TriggerOn`` for the rules)."""

    __slots__ = ("_last", "_on")

    def __init__(self, on: TriggerOn) -> None:
        self._on = on
        self._last: Value | None = None

    def fires(self, value: Value | None) -> bool:
        """Whether ``value`` (the trigger tag's value just read) starts a record; remembers it."""
        last, self._last = self._last, value
        if value is None:
            self._last = last  # a failed read changes nothing
            return False
        if self._on is TriggerOn.CHANGE:
            return value != last and _is_set(value)
        if self._on is TriggerOn.RISE:
            return _is_set(value) and not _is_set(last)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return last is not None and not isinstance(last, bool) and isinstance(last, int | float) and value > last

    def forget(self) -> None:
        """Read the next value as if it were the first (after a reconnect, or an ack that did not happen): the
        record still presented is read and published again (a duplicate by ``record_id``, never a loss)."""
        if self._on is not TriggerOn.INCREMENT:
            self._last = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordField:
    """One field of a record: its name in the payload, the tag it is read from and that tag's rules."""

    field: str
    tag: str
    rules: TagRules = dataclasses.field(default_factory=TagRules)


@dataclass(frozen=True, slots=True, kw_only=True)
class EventRecord:
    """One record read after a trigger: field values after scaling, the worst quality among them."""

    event: str
    ts: float
    fields: Mapping[str, Value | None]
    quality: Quality
    record_id: Value | None
    problems: Mapping[str, str]
    """Field -> status of the fields that are not good."""


def build_record(
    *, event: str, fields: Sequence[RecordField], readings: Mapping[str, RawReading], ts: float, record_id: str | None
) -> EventRecord:
    """The record from the readings of its tags (by tag name). A field without a reading is bad."""
    values: dict[str, Value | None] = {}
    problems: dict[str, str] = {}
    worst = Quality.GOOD
    for entry in fields:
        raw = readings.get(entry.tag)
        status: str | None
        if raw is None:
            value, quality, status = None, Quality.BAD, "not_read"
        else:
            value, quality, status = normalise_value(raw, entry.rules)
        values[entry.field] = value
        if quality is not Quality.GOOD:
            problems[entry.field] = status or str(quality)
            if _QUALITY_RANK[quality] > _QUALITY_RANK[worst]:
                worst = quality
    return EventRecord(
        event=event,
        ts=ts,
        fields=values,
        quality=worst,
        record_id=values.get(record_id) if record_id is not None else None,
        problems=problems,
    )


def _json_value(value: Value | None) -> Value | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def encode_record(record: EventRecord, *, seq: int) -> bytes:
    """The record's JSON payload (README "Traceability: event records")::

        {"event": "cell", "ts": "...Z", "seq": 7, "record_id": 41, "fields": {...}, "quality": "good"}

    plus ``"status": {field: status}`` when some field is not good.
    """
    body: dict[str, object] = {
        "event": record.event,
        "ts": format_ts(record.ts),
        "seq": seq,
        "record_id": _json_value(record.record_id),
        "fields": {name: _json_value(value) for name, value in record.fields.items()},
        "quality": str(record.quality),
    }
    if record.problems:
        body["status"] = dict(record.problems)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


class EventEncoder:
    """The event topics of one equipment and their ``seq`` (one counter per event topic)."""

    def __init__(self, *, base: str, events: Sequence[str]) -> None:
        """``base``: the equipment topic (``{enterprise}/{site}/{area}/{line}/{equipment}``)."""
        self.topics = {event: f"{base}/{EVENTS_SEGMENT}/{event}" for event in events}
        self._seq: dict[str, int] = {}

    @property
    def seq_topics(self) -> list[str]:
        return list(self.topics.values())

    def restore_seq(self, last_seq: Mapping[str, int]) -> None:
        for topic in self.topics.values():
            seq = last_seq.get(topic)
            if seq is not None and seq > self._seq.get(topic, 0):
                self._seq[topic] = seq

    def seq_snapshot(self) -> dict[str, int]:
        return dict(self._seq)

    def encode(self, record: EventRecord) -> Message:
        topic = self.topics[record.event]
        seq = self._seq[topic] = self._seq.get(topic, 0) + 1
        return Message(topic, encode_record(record, seq=seq))


# ------------------------------------------------------------------------------------------------ acks


class WriteResult(StrEnum):
    """The ``result`` of a ``plc_write`` audit line and label of ``cellgate_plc_writes_total``."""

    OK = "ok"
    REFUSED = "refused"
    """Not sent: the value is out of the ack tag's range or type (never written)."""
    EXCEPTION = "exception"
    """The PLC answered with an error (Modbus exception, OPC UA Bad status)."""
    FAILED = "failed"
    """No answer: timeout or connection lost (whether the PLC took it is unknown)."""


def ack_value_problem(
    value: Value | None, data_type: DataType, *, minimum: float | None = None, maximum: float | None = None
) -> str | None:
    """Why ``value`` may not be written to an ack tag of ``data_type`` (with the tag's declared range), or None."""
    if value is None:
        return "no value (the record field was not read)"
    if data_type is DataType.BOOL:
        if isinstance(value, bool) or value in (0, 1):
            return None
        return f"{value!r} is not a bool"
    if isinstance(value, bool | str):
        return f"{value!r} is not a whole number"
    if isinstance(value, float):
        if not value.is_integer():
            return f"{value!r} is not a whole number"
        value = int(value)
    if not isinstance(value, int):
        return f"{value!r} is not a whole number"
    low, high = INTEGER_RANGES[data_type]
    if not low <= value <= high:
        return f"{value} is outside {data_type.value} ({low}..{high})"
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        return f"{value} is outside the tag's range {minimum}..{maximum}"
    return None


def ack_int(value: Value, data_type: DataType) -> int:
    """``value`` (checked by ``ack_value_problem``) as the integer to write."""
    if data_type is DataType.BOOL:
        return 1 if value else 0
    assert isinstance(value, int | float)
    return int(value)


def registers_for(value: int, data_type: DataType, order: ByteOrder) -> list[int]:
    """The registers that hold ``value`` of ``data_type`` in ``order`` on the wire: the inverse of
    ``modbus_plan.compile_register_decoder``. Worked example: uint32 70000 = 0x00011170 is ABCD [0x0001, 0x1170],
    CDAB [0x1170, 0x0001], BADC [0x0100, 0x7011], DCBA [0x7011, 0x0100]."""
    plain = struct.pack(f">{_STRUCT[data_type]}", value)
    words = len(plain) // 2
    if order is ByteOrder.CDAB:
        wire = b"".join(plain[2 * k : 2 * k + 2] for k in reversed(range(words)))
    elif order is ByteOrder.BADC:
        wire = b"".join(plain[2 * k : 2 * k + 2][::-1] for k in range(words))
    elif order is ByteOrder.DCBA:
        wire = plain[::-1]
    else:
        wire = plain
    return list(struct.unpack(f">{words}H", wire))
