"""A PLC-side result FIFO with the ready / acknowledge handshake MES gateways use (pure: no I/O).

A machine pushes one record per finished unit (roll, cell). The FIFO presents its oldest record on the ``Result``
points: ``Result.Ready`` is true while a record is presented, ``Result.RecordId`` names it (ids count up from 1
and never repeat; 0 = none), the record fields follow. A client acknowledges by writing that id to
``Result.Ack``; the FIFO then pops the record and presents the next. Writing any other id changes nothing, so a
repeated or late acknowledgement is harmless and a client that goes away before acknowledging simply finds the
same record again. ``Result.Pending`` counts the records held; when ``capacity`` records are held the oldest
unacknowledged one is kept and the newest is refused and counted in ``Result.Lost`` (a real PLC stops the line).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from simulators.machines.points import DataType, PointSpec, Value

D = DataType
SECTION = "Result"
ACK_POINT = f"{SECTION}.Ack"
READY_POINT = f"{SECTION}.Ready"
RECORD_ID_POINT = f"{SECTION}.RecordId"
PENDING_POINT = f"{SECTION}.Pending"
LOST_POINT = f"{SECTION}.Lost"
RECORD_ID_MODULO = 2**32
DEFAULT_CAPACITY = 10_000

_EMPTY: Mapping[DataType, Value] = {D.DOUBLE: 0.0, D.INT32: 0, D.UINT32: 0, D.BOOLEAN: False, D.STRING: ""}


def handshake_points(unit: str) -> tuple[PointSpec, ...]:
    """The handshake points every FIFO has; ``unit`` names what a record describes (roll, cell)."""
    p = PointSpec
    big = RECORD_ID_MODULO - 1
    return (
        p(name=READY_POINT, data_type=D.BOOLEAN, unit=None,
          description=f"A {unit} record is presented and waits for its acknowledgement."),
        p(name=RECORD_ID_POINT, data_type=D.UINT32, unit=None, min=0, max=big,
          description=f"Id of the presented {unit} record (counts up from 1, never repeats; 0 = none)."),
        p(name=PENDING_POINT, data_type=D.UINT32, unit=None, min=0, max=big,
          description="Records held in the FIFO, the presented one included."),
        p(name=LOST_POINT, data_type=D.UINT32, unit=None, min=0, max=big,
          description="Records refused because the FIFO was full."),
        p(name=ACK_POINT, data_type=D.UINT32, unit=None, min=0, max=big,
          description="Write the presented RecordId here to acknowledge it; reads the last id written."),
    )


@dataclass(frozen=True, slots=True)
class Record:
    record_id: int
    fields: Mapping[str, Value]


class ResultFifo:
    """FIFO of records whose fields are ``fields`` (points named ``Result.<Field>``)."""

    def __init__(self, *, unit: str, fields: Sequence[PointSpec], capacity: int = DEFAULT_CAPACITY,
                 first_id: int = 1) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        for spec in fields:
            if not spec.name.startswith(f"{SECTION}.") or spec.name.count(".") != 1:
                raise ValueError(f"record field {spec.name!r} must be named {SECTION}.<Field>")
        self._fields = tuple(fields)
        self._points = (*handshake_points(unit), *self._fields)
        self._capacity = capacity
        self._next_id = first_id % RECORD_ID_MODULO or 1
        self._records: deque[Record] = deque()
        self.lost = 0
        self.last_ack = 0
        self.acknowledged = 0
        self.on_push: Callable[[Record], None] | None = None
        """Called with every record the FIFO takes (``simulators.ground_truth`` logs them for tests)."""

    @property
    def points(self) -> tuple[PointSpec, ...]:
        return self._points

    @property
    def pending(self) -> tuple[Record, ...]:
        return tuple(self._records)

    def push(self, fields: Mapping[str, Value]) -> int | None:
        """Add a record (every field given, by point name); its id, or None when the FIFO is full."""
        missing = [spec.name for spec in self._fields if spec.name not in fields]
        if missing:
            raise ValueError(f"record lacks {missing}")
        if len(self._records) >= self._capacity:
            self.lost += 1
            return None
        record_id = self._next_id
        self._next_id = record_id % (RECORD_ID_MODULO - 1) + 1  # 1 .. 2^32-1, 0 stays "none"
        record = Record(record_id, {spec.name: fields[spec.name] for spec in self._fields})
        self._records.append(record)
        if self.on_push is not None:
            self.on_push(record)
        return record_id

    def ack(self, record_id: int) -> bool:
        """A client wrote ``record_id`` to the ack point: pop the presented record if it is that one."""
        self.last_ack = record_id
        if self._records and self._records[0].record_id == record_id:
            self._records.popleft()
            self.acknowledged += 1
            return True
        return False

    def values(self) -> dict[str, Value]:
        head = self._records[0] if self._records else None
        values: dict[str, Value] = {
            READY_POINT: head is not None,
            RECORD_ID_POINT: head.record_id if head is not None else 0,
            PENDING_POINT: len(self._records),
            LOST_POINT: self.lost % RECORD_ID_MODULO,
            ACK_POINT: self.last_ack,
        }
        for spec in self._fields:
            values[spec.name] = head.fields[spec.name] if head is not None else _EMPTY[spec.data_type]
        return values


@runtime_checkable
class Acknowledging(Protocol):
    """A machine with a result FIFO: servers hand it what a client writes to ``Result.Ack``."""

    def ack_result(self, record_id: int) -> bool: ...

    @property
    def ack_seen(self) -> int:
        """The last value handed to ``ack_result`` (0 before any)."""
        ...


class RunningStats:
    """Weighted mean and standard deviation of one quantity (weights: metres of web, ...), in O(1) memory."""

    __slots__ = ("_sum", "_sumsq", "weight")

    def __init__(self) -> None:
        self.weight = 0.0
        self._sum = 0.0
        self._sumsq = 0.0

    def add(self, value: float, weight: float = 1.0) -> None:
        if weight > 0.0:
            self.weight += weight
            self._sum += value * weight
            self._sumsq += value * value * weight

    @property
    def mean(self) -> float:
        return self._sum / self.weight if self.weight > 0.0 else 0.0

    @property
    def std(self) -> float:
        if self.weight <= 0.0:
            return 0.0
        mean = self.mean
        return math.sqrt(max(self._sumsq / self.weight - mean * mean, 0.0))
