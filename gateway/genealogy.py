"""Genealogy from the MQTT stream alone: event records in, finished cells with their chain of rolls out (pure).

The records of ``config/demo.yaml``'s events link by id (README "Traceability")::

    .../{rack}/_events/graded_cell      cell_id, grade, discharge_capacity, ...      a finished cell
    .../{stacker}/_events/cell          cell_id, anode_roll_id, cathode_roll_id, separator_roll_id
    .../{calender}/_events/roll         roll_id, input_roll_id (the coated roll it was made from), ...
    .../{coater}/_events/roll           roll_id, coat_weight_mean, coat_weight_std, ...

A cell's genealogy is its graded record, the stacker record with the same ``cell_id``, and for each of its rolls
the roll record with that ``roll_id``, then the record of the roll named by that record's ``input_roll_id``, and
so on. The chain is put together when asked for, so records may arrive in any order (a replayed spool, a broker
outage); a link whose record has not been seen (material made before the gateway ran, a line it does not read)
is a roll id without a record.

De-duplication, per event topic: a message with a ``seq`` already seen is the same message again (QoS 1
redelivery, a replayed spool); a record with a ``record_id`` already seen and the same fields is the same record
published again (a gateway that stopped between the broker's PUBACK and its ack to the PLC). A known
``record_id`` with other fields is a new record (a PLC that numbered from 1 again after a restart).

No I/O, no clock: ``Genealogy.add`` takes a topic and a payload, the queries return plain values.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import orjson

from gateway.schema import Value
from gateway.tagmap.events import EVENTS_SEGMENT

MAX_ROLL_DEPTH: Final = 16
"""How many ``input_roll_id`` links a roll chain follows at most (a guard against a loop of ids)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRecord:
    """One event record as published (README "Traceability: event records")."""

    topic: str
    equipment: str
    """The equipment segment of the topic (``stacker-01``)."""
    event: str
    seq: int | None
    record_id: Value | None
    ts: str
    quality: str
    fields: Mapping[str, Value | None]
    historical: bool = False

    def text(self, field: str) -> str | None:
        """The field as a non-empty string, or None."""
        value = self.fields.get(field)
        return value if isinstance(value, str) and value else None


def parse_record(topic: str, payload: bytes) -> TraceRecord | None:
    """The record on an event topic ``.../{equipment}/_events/{event}``; None for any other message."""
    parts = topic.split("/")
    if len(parts) < 3 or parts[-2] != EVENTS_SEGMENT or not payload:
        return None
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("fields"), dict):
        return None
    seq = body.get("seq")
    return TraceRecord(
        topic=topic,
        equipment=parts[-3],
        event=parts[-1],
        seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        record_id=body.get("record_id"),
        ts=str(body.get("ts", "")),
        quality=str(body.get("quality", "")),
        fields=body["fields"],
        historical=body.get("historical") is True,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Links:
    """Which events and fields make the chain; the defaults are ``config/demo.yaml``'s."""

    finished_event: str = "graded_cell"
    """The record of a finished cell (formation and grading)."""
    stacked_event: str = "cell"
    """The record of an assembled cell, naming its rolls."""
    roll_event: str = "roll"
    cell_field: str = "cell_id"
    roll_field: str = "roll_id"
    input_roll_field: str = "input_roll_id"
    """In a roll record: the roll it was made from."""
    cell_rolls: tuple[tuple[str, str], ...] = (
        ("anode", "anode_roll_id"), ("cathode", "cathode_roll_id"), ("separator", "separator_roll_id"),
    )
    """(role, field of the stacked record) of each roll a cell is made from."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RollGenealogy:
    """A roll, its record if one was seen, and the roll it was made from."""

    roll_id: str
    record: TraceRecord | None
    """None: no record of this roll in the stream."""
    made_from: RollGenealogy | None = None

    def chain(self) -> list[RollGenealogy]:
        """This roll, then the roll it was made from, and so on (the coated roll of a calendered one last)."""
        out: list[RollGenealogy] = []
        roll: RollGenealogy | None = self
        while roll is not None:
            out.append(roll)
            roll = roll.made_from
        return out

    @property
    def origin(self) -> RollGenealogy:
        """The first roll of the chain (for a calendered cathode roll: the coater's roll)."""
        return self.chain()[-1]


@dataclass(frozen=True, slots=True, kw_only=True)
class CellGenealogy:
    """A cell: its finished (graded) record, its stacked record, and its rolls by role."""

    cell_id: str
    finished: TraceRecord | None
    stacked: TraceRecord | None
    rolls: Mapping[str, RollGenealogy]
    """Role (``anode``, ``cathode``, ``separator``) -> roll; empty without a stacked record."""


class Added(StrEnum):
    """What ``Genealogy.add`` made of a message."""

    NEW = "new"
    DUPLICATE_SEQ = "duplicate_seq"
    """The same message again: its event topic and ``seq`` were seen."""
    DUPLICATE_RECORD = "duplicate_record"
    """The same record published again: its ``record_id`` was seen on the topic, with the same fields."""
    NOT_A_RECORD = "not_a_record"


_RecordKey = tuple[str, bytes, bytes]  # topic, record_id as JSON, fields as JSON (sorted keys)


@dataclass(slots=True)
class GenealogyCounts:
    """What ``Genealogy.add`` made of the messages so far (``Added``), and records evicted by ``max_records``."""

    new: int = 0
    duplicate_seq: int = 0
    duplicate_record: int = 0
    not_a_record: int = 0
    evicted: int = 0


class Genealogy:
    """The records seen so far, de-duplicated, and the cells they make.

    ``max_records`` bounds the records kept (the oldest go first, with the ``seq`` numbers seen): a long-running
    view keeps the recent past; None keeps everything (a check over a whole run).
    """

    def __init__(self, *, links: Links | None = None, max_records: int | None = None) -> None:
        if max_records is not None and max_records < 1:
            raise ValueError("max_records must be >= 1 (or None)")
        self.links = links or Links()
        self.max_records = max_records
        self.counts = GenealogyCounts()
        self._records: OrderedDict[_RecordKey, TraceRecord] = OrderedDict()
        self._seen_seq: OrderedDict[tuple[str, int], None] = OrderedDict()
        self._finished_index: dict[str, _RecordKey] = {}  # cell id -> key of its finished record (the latest)
        self._stacked: dict[str, _RecordKey] = {}  # cell id -> key of its stacked record (the latest)
        self._rolls: dict[str, _RecordKey] = {}  # roll id -> key of its record (the latest)

    def __len__(self) -> int:
        """Records kept (de-duplicated)."""
        return len(self._records)

    def add(self, topic: str, payload: bytes) -> Added:
        """Take one MQTT message (any topic: only event records count)."""
        record = parse_record(topic, payload)
        if record is None:
            self.counts.not_a_record += 1
            return Added.NOT_A_RECORD
        return self.add_record(record)

    def add_record(self, record: TraceRecord) -> Added:
        """Take one parsed record: kept when new, counted when a duplicate (see the module docstring)."""
        if record.seq is not None:
            seq_key = (record.topic, record.seq)
            if seq_key in self._seen_seq:
                self.counts.duplicate_seq += 1
                return Added.DUPLICATE_SEQ
            self._remember_seq(seq_key)
        key: _RecordKey = (
            record.topic,
            orjson.dumps(record.record_id) if record.record_id is not None else str(record.seq).encode(),
            orjson.dumps(record.fields, option=orjson.OPT_SORT_KEYS),
        )
        if key in self._records:
            self.counts.duplicate_record += 1
            return Added.DUPLICATE_RECORD
        self._records[key] = record
        self.counts.new += 1
        links = self.links
        if record.event == links.finished_event and (cell := record.text(links.cell_field)):
            self._finished_index[cell] = key
        elif record.event == links.stacked_event and (cell := record.text(links.cell_field)):
            self._stacked[cell] = key
        elif record.event == links.roll_event and (roll := record.text(links.roll_field)):
            self._rolls[roll] = key
        self._evict()
        return Added.NEW

    def _remember_seq(self, seq_key: tuple[str, int]) -> None:
        self._seen_seq[seq_key] = None
        if self.max_records is not None and len(self._seen_seq) > 2 * self.max_records:
            self._seen_seq.popitem(last=False)

    def _evict(self) -> None:
        if self.max_records is None:
            return
        while len(self._records) > self.max_records:
            key, record = self._records.popitem(last=False)
            self.counts.evicted += 1
            for index in (self._finished_index, self._stacked, self._rolls):
                for name in (record.text(self.links.cell_field), record.text(self.links.roll_field)):
                    if name is not None and index.get(name) == key:
                        del index[name]

    # ------------------------------------------------------------------------------------------ queries

    def records(self) -> Iterator[TraceRecord]:
        """Every record kept, oldest first."""
        return iter(self._records.values())

    def roll(self, roll_id: str) -> RollGenealogy:
        """The roll and, following ``input_roll_id``, the rolls it was made from (as far as records were seen)."""
        return self._roll(roll_id, depth=0)

    def _roll(self, roll_id: str, *, depth: int) -> RollGenealogy:
        key = self._rolls.get(roll_id)
        record = self._records.get(key) if key is not None else None
        parent: RollGenealogy | None = None
        if record is not None and depth < MAX_ROLL_DEPTH:
            source = record.text(self.links.input_roll_field)
            if source is not None and source != roll_id:
                parent = self._roll(source, depth=depth + 1)
        return RollGenealogy(roll_id=roll_id, record=record, made_from=parent)

    def cell(self, cell_id: str, *, finished: TraceRecord | None = None) -> CellGenealogy:
        """The cell's genealogy; with its latest finished record unless ``finished`` names one (a cell id that
        more than one finished record carries, e.g. the same id on two racks)."""
        if finished is None:
            finished_key = self._finished_index.get(cell_id)
            finished = self._records.get(finished_key) if finished_key is not None else None
        key = self._stacked.get(cell_id)
        stacked = self._records.get(key) if key is not None else None
        rolls: dict[str, RollGenealogy] = {}
        if stacked is not None:
            for role, field in self.links.cell_rolls:
                roll_id = stacked.text(field)
                if roll_id is not None:
                    rolls[role] = self.roll(roll_id)
        return CellGenealogy(cell_id=cell_id, finished=finished, stacked=stacked, rolls=rolls)

    def finished_cells(self) -> list[CellGenealogy]:
        """One entry per finished record (de-duplicated), in the order they arrived."""
        return [self._finished(record) for record in self._records.values() if self._is_finished(record)]

    def last_cells(self, count: int) -> list[CellGenealogy]:
        """The ``count`` latest cells, newest first: finished ones, then (while fewer than ``count`` have
        finished) the latest stacked ones not graded yet (in the store or in formation)."""
        out: list[CellGenealogy] = []
        shown: set[str] = set()
        for record in reversed(self._records.values()):
            if len(out) >= count:
                return out
            if self._is_finished(record):
                cell = self._finished(record)
                out.append(cell)
                shown.add(cell.cell_id)
        for record in reversed(self._records.values()):
            if len(out) >= count:
                break
            cell_id = record.text(self.links.cell_field)
            if record.event == self.links.stacked_event and cell_id is not None and cell_id not in shown:
                out.append(self.cell(cell_id))
                shown.add(cell_id)
        return out

    def _is_finished(self, record: TraceRecord) -> bool:
        return record.event == self.links.finished_event and record.text(self.links.cell_field) is not None

    def _finished(self, record: TraceRecord) -> CellGenealogy:
        cell_id = record.text(self.links.cell_field)
        assert cell_id is not None
        return self.cell(cell_id, finished=record)
