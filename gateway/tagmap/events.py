"""``events:`` of a device: event records read after a trigger, acknowledged to the PLC after the broker's PUBACK.

As written in the tag map::

    events:
      cell:                                   # published on {equipment topic}/_events/cell
        trigger: {tag: result/record_id, on: change}   # change | rise | increment
        record: [result/record_id, result/cell_id, {grade: result/grade}]
        ack: {tag: result/ack, value: record_id}       # write the record's record_id field to result/ack

Every name refers to a tag of the same device (after templates and repeats are expanded). A record entry is a
tag name, whose field in the payload is the tag name's last segment (``result/cell_id`` -> ``cell_id``), or a
one-key mapping ``{field: tag}``. ``ack.value`` and ``record_id`` name record fields. The model checks the shape
here; ``event_issues`` checks the references against the expanded tags (run by the expander), so every problem
is reported at FILE:LINE:COL with the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from gateway.schema import quoted, topic_segment_problem
from gateway.tagmap.issues import Issue, Loc, did_you_mean, raise_issues, rule_error
from gateway.vocabulary import DataType, Table, Transport

if TYPE_CHECKING:
    from gateway.tagmap.model import ModbusDevice, ModbusTag, OpcUaDevice, OpcUaTag

EVENTS_SEGMENT: Final = "_events"
"""The topic segment under the equipment where event records are published: ``.../{equipment}/_events/{event}``."""

ACK_TYPES: Final = frozenset(
    {DataType.BOOL, DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64}
)
"""Types an ack tag may have: the gateway writes whole numbers (a record id) or a bool, never a float or text."""


class TriggerOn(StrEnum):
    """When a trigger tag's new value starts a record read.

    ``change``: the value differs from the last one read and is set (not 0, false or empty: "no record");
    ``rise``: the value turned true (or non-zero); ``increment``: a counter went up (a drop resets the baseline).
    The first value read after a (re)connect counts for ``change`` and ``rise`` (a record presented while the
    gateway was away is read) but only sets the baseline for ``increment``.
    """

    CHANGE = "change"
    RISE = "rise"
    INCREMENT = "increment"


def _trigger_on(value: Any) -> Any:
    if isinstance(value, str):
        key = value.strip().lower()
        for member in TriggerOn:
            if member.value == key:
                return member
        choices = [member.value for member in TriggerOn]
        raise rule_error(
            [Issue((), f"unknown trigger {quoted(value)}{did_you_mean(value, choices)}; expected one of: "
                        f"{', '.join(choices)}")]
        )
    return value


def _check_event_name(name: str) -> str:
    problem = topic_segment_problem(name)
    if problem:
        raise rule_error([Issue((), problem)])
    return name


class _EventModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class EventTrigger(_EventModel):
    tag: Annotated[str, Field(min_length=1)]
    """The tag watched every ``interval_ms`` of the device."""
    on: Annotated[TriggerOn, BeforeValidator(_trigger_on)] = TriggerOn.CHANGE

    @model_validator(mode="before")
    @classmethod
    def _yaml_on_key(cls, data: Any) -> Any:
        # YAML 1.1 reads the key `on` as the boolean true: take it back as the field it was written for.
        if isinstance(data, dict) and True in data and "on" not in data:
            return {("on" if key is True else key): value for key, value in data.items()}
        return data


class EventAck(_EventModel):
    tag: Annotated[str, Field(min_length=1)]
    """The tag written once the broker acknowledged the record (a holding register or coil; an OPC UA
    variable with a declared integer or bool ``type``)."""
    value: Annotated[str, Field(min_length=1)]
    """The record field whose value is written (typically the record id)."""


class RecordField(_EventModel):
    field: str
    tag: str


def _record_entries(value: Any) -> Any:
    """``record:`` entries: ``tag`` or ``{field: tag}`` -> RecordField mappings."""
    if not isinstance(value, list | tuple):
        return value
    out: list[Any] = []
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            out.append({"field": entry.rsplit("/", 1)[-1], "tag": entry})
        elif isinstance(entry, dict) and len(entry) == 1:
            ((field, tag),) = entry.items()
            out.append({"field": field, "tag": tag})
        elif isinstance(entry, dict) and set(entry) == {"field", "tag"}:
            out.append(entry)
        else:
            raise rule_error([Issue((index,), "a record entry is a tag name or a mapping {field: tag}")])
    return out


class EventSpec(_EventModel):
    trigger: EventTrigger
    record: Annotated[tuple[RecordField, ...], BeforeValidator(_record_entries), Field(min_length=1)]
    """The tags read together after the trigger (Modbus: one read per contiguous block; OPC UA: one Read)."""
    ack: EventAck | None = None
    """The handshake: without it records are published and nothing is written to the PLC."""
    record_id: str | None = None
    """The record field published as ``record_id`` (default: ``ack.value``); subscribers de-duplicate by it."""

    @model_validator(mode="after")
    def _check(self) -> EventSpec:
        raise_issues(_rule_record_fields(self))
        return self

    @property
    def record_id_field(self) -> str | None:
        if self.record_id is not None:
            return self.record_id
        return self.ack.value if self.ack is not None else None

    def tag_of(self, field: str) -> str | None:
        return next((entry.tag for entry in self.record if entry.field == field), None)


def _rule_record_fields(spec: EventSpec) -> Iterator[Issue]:
    seen: dict[str, int] = {}
    for index, entry in enumerate(spec.record):
        problem = topic_segment_problem(entry.field) if entry.field else "a field name must not be empty"
        if problem:
            yield Issue(("record", index), f"field name {quoted(entry.field)}: {problem}")
        if entry.field in seen:
            yield Issue(
                ("record", index),
                f"two record fields are named {quoted(entry.field)} (entries {seen[entry.field]} and {index}): "
                f"name one with a mapping, e.g. {{other_{entry.field}: {entry.tag}}}",
            )
        seen.setdefault(entry.field, index)
    fields = [entry.field for entry in spec.record]
    if spec.ack is not None and spec.ack.value not in seen:
        hint = did_you_mean(spec.ack.value, fields)
        yield Issue(("ack", "value"), f"{quoted(spec.ack.value)} is not a record field{hint}; "
                                      f"record fields: {', '.join(fields)}")
    if spec.record_id is not None and spec.record_id not in seen:
        hint = did_you_mean(spec.record_id, fields)
        yield Issue(("record_id",), f"{quoted(spec.record_id)} is not a record field{hint}")


EventName = Annotated[str, AfterValidator(_check_event_name)]
Events = dict[EventName, EventSpec]


# ------------------------------------------------------------------------------ references to the device's tags


def event_issues(device: ModbusDevice | OpcUaDevice, tags: Sequence[ModbusTag | OpcUaTag], loc: Loc) -> Iterator[Issue]:
    """Problems of ``device.events`` against the device's expanded ``tags``; ``loc`` is the device's path."""
    if not device.events:
        return
    by_name: Mapping[str, ModbusTag | OpcUaTag] = {tag.name: tag for tag in tags}
    modbus = device.protocol == "modbus"
    if modbus and getattr(device, "transport", Transport.TCP) is not Transport.TCP:
        yield Issue((*loc, "events"), "events need transport tcp (the handshake is not implemented over RTU yet)")
    for name, spec in device.events.items():
        at: Loc = (*loc, "events", name)
        yield from _tag_exists(spec.trigger.tag, by_name, (*at, "trigger", "tag"))
        trigger = by_name.get(spec.trigger.tag)
        if trigger is not None:
            yield from _trigger_type(spec.trigger, trigger, (*at, "trigger"))
        for index, entry in enumerate(spec.record):
            yield from _tag_exists(entry.tag, by_name, (*at, "record", index))
        if spec.ack is not None:
            yield from _tag_exists(spec.ack.tag, by_name, (*at, "ack", "tag"))
            ack = by_name.get(spec.ack.tag)
            if ack is not None:
                yield from ack_tag_problems(ack, (*at, "ack", "tag"))


def _tag_exists(name: str, by_name: Mapping[str, object], loc: Loc) -> Iterator[Issue]:
    if name not in by_name:
        yield Issue(loc, f"no tag {quoted(name)} in this device{did_you_mean(name, list(by_name))}")


def _trigger_type(trigger: EventTrigger, tag: ModbusTag | OpcUaTag, loc: Loc) -> Iterator[Issue]:
    data_type = tag.type
    if trigger.on is TriggerOn.INCREMENT and data_type is not None and data_type not in ACK_TYPES - {DataType.BOOL}:
        yield Issue((*loc, "on"), f"increment needs an integer counter; {quoted(tag.name)} is {data_type.value}")
    if trigger.on is TriggerOn.RISE and data_type is DataType.STRING:
        yield Issue((*loc, "on"), f"rise needs a bool or number; {quoted(tag.name)} is a string (use change)")


def ack_tag_problems(tag: ModbusTag | OpcUaTag, loc: Loc) -> Iterator[Issue]:
    """Why the gateway may not write ``tag`` as an ack (empty when it may)."""
    if tag.read_only:
        yield Issue(loc, f"tag {quoted(tag.name)} is declared read_only: the gateway never writes it")
        return
    table: Table | None = getattr(tag, "table", None)
    if table is not None:
        if table not in (Table.HOLDING, Table.COIL):
            what = "a discrete input" if table is Table.DISCRETE else "an input register"
            yield Issue(loc, f"tag {quoted(tag.name)} is {what}, which Modbus cannot write: an ack must be a "
                             "holding register or a coil")
            return
        if getattr(tag, "bit", None) is not None:
            yield Issue(loc, f"tag {quoted(tag.name)} is one bit of a register: writing it would overwrite the other "
                             "15 bits; give the ack a register or a coil of its own")
            return
    if tag.type is None:
        yield Issue(loc, f"tag {quoted(tag.name)} has no type: an ack tag needs one (e.g. type: uint32) so the "
                         "written value has the right data type")
    elif tag.type not in ACK_TYPES:
        yield Issue(loc, f"tag {quoted(tag.name)} is {tag.type.value}: an ack is written as a whole number or bool "
                         f"({', '.join(sorted(t.value for t in ACK_TYPES))})")
    if tag.scale != 1.0 or tag.offset != 0.0:
        yield Issue(loc, f"tag {quoted(tag.name)} has scale/offset: an ack is written as it is, leave them out")
