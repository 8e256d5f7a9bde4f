"""Fault injection for the simulator servers: what is active, on which points or ranges, and until when.

Pure: no sockets, no clock. Times are the server's monotonic clock in seconds (``loop.time()``), passed in as
``now``. The servers (``simulators.servers.*``) keep one ``FaultState`` each and ask it, per request or per
model step, what to do; ``simulators.servers.control_http`` turns JSON into faults with ``fault_from_json``.

The faults and what a client observes (both servers unless marked):

``DropConnections()``
    Every open client connection is closed at once (TCP FIN). New connections are accepted again right away, so
    a client that reconnects gets normal answers. With ``duration_s`` the link stays down that long: each new
    connection is accepted by the kernel and closed straight after (the client sees connect, then EOF).
    Default duration 0 (one-shot).
``Hang()``
    Connections are accepted and kept open but no request is answered while the fault lasts. Modbus: the
    requests are swallowed (never answered, also not after the fault ends). OPC UA: messages are held in arrival
    order and processed when the fault ends (OPC UA chunks carry sequence numbers, so they cannot be dropped
    without breaking the channel); a client that timed out meanwhile discards the late answers. New OPC UA
    connections get no Hello answer until the fault ends.
``Latency(seconds=s)``
    Every request is answered ``s`` seconds later than normal (the wait starts when the request is taken off
    the wire; OPC UA requests of one connection are processed one after another, so they queue). Clearing
    the fault releases requests that are still waiting.
``ModbusException(table=, start=, end=, code=)`` (Modbus only)
    Every request whose addresses touch ``[start, end)`` of ``table`` (coil, discrete, holding, input; reads
    and writes) gets an exception response with ``code`` (2 ILLEGAL DATA ADDRESS, 4 SLAVE DEVICE FAILURE, ...)
    instead of data. Requests elsewhere are answered normally.
``BadValue(points=, machine=, status=)``
    OPC UA: the chosen variables are written with StatusCode ``status`` (an OPC UA Bad/Uncertain status name,
    default ``BadSensorFailure``) at every model step, keeping the model value and fresh timestamps. Modbus:
    the chosen float32 points read as quiet NaN (``0x7FC0 0x0000``); other encodings have no NaN, so naming one
    is an error, and ``points=None`` means every float32 point. ``status`` is ignored on Modbus.
``Freeze(points=, machine=)``
    The chosen points (``None`` = every point of the machine) stop changing: the server keeps serving the
    last value it published before the fault (OPC UA: value, source and server timestamps all stay as they
    were). The model keeps running underneath; when the fault ends the next step publishes the current value.
``Restart(extra_namespaces=, down_s=)`` (OPC UA only; an action, not a lasting fault)
    The OPC UA server stops (every connection closes), stays down ``down_s`` seconds, and comes back on the
    same port with ``extra_namespaces`` dummy namespaces registered before ``urn:cellgate:simulators``, so
    that namespace's index grows by that much (2 -> 3 for one). String node identifiers are unchanged.
    ``extra_namespaces=0`` restores the original order.

Point faults (``BadValue``, ``Freeze``) take effect at once (the server republishes when they are set or
cleared) and end at the first model step after their duration. Connection faults are checked per connection
or request, to the millisecond. Setting a fault replaces an active one with the same ``key`` (same kind, and
for point faults the same machine, for exceptions the same table and range).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Final

MODBUS_TABLES: Final = ("coil", "discrete", "holding", "input")
# Exception codes a Modbus server may answer with (Modbus Application Protocol v1.1b3 §7).
MODBUS_EXCEPTION_CODES: Final = frozenset({1, 2, 3, 4, 5, 6, 8, 10, 11})
MAX_LATENCY_S: Final = 60.0
MAX_DURATION_S: Final = 24 * 3600.0
MAX_EXTRA_NAMESPACES: Final = 16


class FaultKind(StrEnum):
    DROP = "drop"
    HANG = "hang"
    LATENCY = "latency"
    EXCEPTION = "exception"
    BAD = "bad"
    FREEZE = "freeze"
    RESTART = "restart"


def _check_points(points: frozenset[str] | None) -> None:
    if points is not None and (not points or not all(isinstance(p, str) and p for p in points)):
        raise ValueError("points must be a non-empty list of point names, or null for every point")


@dataclass(frozen=True, slots=True, kw_only=True)
class DropConnections:
    kind: ClassVar[FaultKind] = FaultKind.DROP
    default_duration_s: ClassVar[float | None] = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Hang:
    kind: ClassVar[FaultKind] = FaultKind.HANG
    default_duration_s: ClassVar[float | None] = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Latency:
    """Added delay before each request is answered, in seconds."""

    seconds: float
    kind: ClassVar[FaultKind] = FaultKind.LATENCY
    default_duration_s: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.seconds, int | float) and 0.0 < self.seconds <= MAX_LATENCY_S):
            raise ValueError(f"latency seconds must be within (0, {MAX_LATENCY_S:g}], got {self.seconds!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusException:
    """Exception response ``code`` for requests touching ``[start, end)`` of ``table`` (0-based addresses)."""

    table: str
    start: int
    end: int
    code: int = 4
    kind: ClassVar[FaultKind] = FaultKind.EXCEPTION
    default_duration_s: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        if self.table not in MODBUS_TABLES:
            raise ValueError(f"table must be one of {', '.join(MODBUS_TABLES)}, got {self.table!r}")
        if not (isinstance(self.start, int) and isinstance(self.end, int) and 0 <= self.start < self.end <= 65536):
            raise ValueError(f"need 0 <= start < end <= 65536, got start={self.start!r} end={self.end!r}")
        if self.code not in MODBUS_EXCEPTION_CODES:
            raise ValueError(f"code must be one of {sorted(MODBUS_EXCEPTION_CODES)}, got {self.code!r}")

    def touches(self, *, table: str, start: int, count: int) -> bool:
        return table == self.table and start < self.end and start + max(count, 1) > self.start


@dataclass(frozen=True, slots=True, kw_only=True)
class BadValue:
    """Bad status (OPC UA) or NaN (Modbus float32) on ``points`` of ``machine`` (None = all)."""

    points: frozenset[str] | None = None
    machine: str | None = None
    status: str = "BadSensorFailure"
    kind: ClassVar[FaultKind] = FaultKind.BAD
    default_duration_s: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        _check_points(self.points)
        if not (self.status.startswith("Bad") or self.status.startswith("Uncertain")):
            raise ValueError(f"status must be an OPC UA Bad... or Uncertain... status name, got {self.status!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Freeze:
    """Stale values on ``points`` of ``machine`` (None = all)."""

    points: frozenset[str] | None = None
    machine: str | None = None
    kind: ClassVar[FaultKind] = FaultKind.FREEZE
    default_duration_s: ClassVar[float | None] = None

    def __post_init__(self) -> None:
        _check_points(self.points)


@dataclass(frozen=True, slots=True, kw_only=True)
class Restart:
    """Restart the OPC UA server with ``extra_namespaces`` dummy namespaces first, after ``down_s`` s down."""

    extra_namespaces: int = 1
    down_s: float = 0.0
    kind: ClassVar[FaultKind] = FaultKind.RESTART

    def __post_init__(self) -> None:
        if not (isinstance(self.extra_namespaces, int) and 0 <= self.extra_namespaces <= MAX_EXTRA_NAMESPACES):
            raise ValueError(f"extra_namespaces must be 0..{MAX_EXTRA_NAMESPACES}, got {self.extra_namespaces!r}")
        if not (isinstance(self.down_s, int | float) and 0.0 <= self.down_s <= 600.0):
            raise ValueError(f"down_s must be within [0, 600], got {self.down_s!r}")


Fault = DropConnections | Hang | Latency | ModbusException | BadValue | Freeze
PointFault = BadValue | Freeze
FaultKey = tuple[str | int | None, ...]


def fault_key(fault: Fault) -> FaultKey:
    """Faults with the same key replace each other."""
    if isinstance(fault, BadValue | Freeze):
        return (fault.kind, fault.machine)
    if isinstance(fault, ModbusException):
        return (fault.kind, fault.table, fault.start, fault.end)
    return (fault.kind,)


@dataclass(frozen=True, slots=True, kw_only=True)
class ActiveFault:
    fault: Fault
    until: float | None  # server clock, s; None = until cleared
    since: float

    def is_active(self, now: float) -> bool:
        return self.until is None or now < self.until


def _applies_to(fault: PointFault, machine: str, point: str) -> bool:
    return (fault.machine is None or fault.machine == machine) and (fault.points is None or point in fault.points)


@dataclass(frozen=True, slots=True)
class FaultState:
    """The faults of one simulator server. Immutable: every change returns a new state."""

    active: tuple[ActiveFault, ...] = field(default=())

    def with_fault(self, fault: Fault, *, now: float, duration_s: float | None = None) -> FaultState:
        """Add ``fault`` from ``now`` for ``duration_s`` s (None: the fault kind's default, see the module doc)."""
        duration = fault.default_duration_s if duration_s is None else duration_s
        if duration is not None and not (isinstance(duration, int | float) and 0.0 <= duration <= MAX_DURATION_S):
            raise ValueError(f"duration_s must be within [0, {MAX_DURATION_S:g}], got {duration!r}")
        key = fault_key(fault)
        kept = tuple(a for a in self.active if fault_key(a.fault) != key and a.is_active(now))
        until = None if duration is None else now + float(duration)
        return FaultState((*kept, ActiveFault(fault=fault, until=until, since=now)))

    def without(self, kind: FaultKind | None = None, *, machine: str | None = None) -> FaultState:
        """Clear faults of ``kind`` (None: all). With ``machine``, point faults aimed at another machine stay."""

        def cleared(a: ActiveFault) -> bool:
            if kind is not None and a.fault.kind is not kind:
                return False
            if machine is not None and isinstance(a.fault, BadValue | Freeze):
                return a.fault.machine in (None, machine)
            return True

        return FaultState(tuple(a for a in self.active if not cleared(a)))

    def pruned(self, now: float) -> FaultState:
        """The same state without expired faults."""
        return FaultState(tuple(a for a in self.active if a.is_active(now)))

    def current(self, now: float) -> tuple[Fault, ...]:
        return tuple(a.fault for a in self.active if a.is_active(now))

    def refuses_connections(self, now: float) -> bool:
        return any(isinstance(f, DropConnections) for f in self.current(now))

    def hang_until(self, now: float) -> float | None:
        """None when no hang is active, else when it ends (``math.inf``: until cleared)."""
        ends = [a.until for a in self.active if isinstance(a.fault, Hang) and a.is_active(now)]
        if not ends:
            return None
        return math.inf if None in ends else max(e for e in ends if e is not None)

    def latency_s(self, now: float) -> float:
        return max((f.seconds for f in self.current(now) if isinstance(f, Latency)), default=0.0)

    def exception_code(self, *, table: str, start: int, count: int, now: float) -> int | None:
        """The exception code for a Modbus request on ``table`` at ``start`` × ``count``, or None to answer it."""
        for fault in self.current(now):
            if isinstance(fault, ModbusException) and fault.touches(table=table, start=start, count=count):
                return fault.code
        return None

    def bad_status(self, *, machine: str, point: str, now: float) -> str | None:
        for fault in self.current(now):
            if isinstance(fault, BadValue) and _applies_to(fault, machine, point):
                return fault.status
        return None

    def is_frozen(self, *, machine: str, point: str, now: float) -> bool:
        return any(isinstance(f, Freeze) and _applies_to(f, machine, point) for f in self.current(now))

    def point_faults(self, now: float) -> tuple[PointFault, ...]:
        return tuple(f for f in self.current(now) if isinstance(f, BadValue | Freeze))

    def describe(self, *, now: float, machine: str | None = None) -> list[dict[str, object]]:
        """JSON-ready list of the active faults (for ``machine``: connection faults + its point faults)."""
        out: list[dict[str, object]] = []
        for a in self.active:
            if not a.is_active(now):
                continue
            other_machine = isinstance(a.fault, BadValue | Freeze) and a.fault.machine not in (None, machine)
            if machine is not None and other_machine:
                continue
            entry = fault_to_json(a.fault)
            entry["remaining_s"] = None if a.until is None else round(a.until - now, 3)
            out.append(entry)
        return out


def check_points(fault: PointFault, known: Mapping[str, Iterable[str]]) -> None:
    """Raise ValueError if ``fault`` names a machine or point that ``known`` (machine -> points) lacks."""
    machines = [fault.machine] if fault.machine is not None else list(known)
    if fault.machine is not None and fault.machine not in known:
        raise ValueError(f"unknown machine {fault.machine!r}; this server has {', '.join(known)}")
    if fault.points is None:
        return
    names = {p for m in machines for p in known[m]}
    unknown = sorted(fault.points - names)
    if unknown:
        raise ValueError(f"unknown points {unknown[:5]} (names as in the machine's point list, e.g. Line.Length)")


# ------------------------------------------------------------------------------------------------ JSON


def fault_to_json(fault: Fault | Restart) -> dict[str, object]:
    entry: dict[str, object] = {"fault": fault.kind.value}
    if isinstance(fault, Latency):
        entry["seconds"] = fault.seconds
    elif isinstance(fault, ModbusException):
        entry.update(table=fault.table, start=fault.start, end=fault.end, code=fault.code)
    elif isinstance(fault, BadValue | Freeze):
        entry["points"] = None if fault.points is None else sorted(fault.points)
        entry["machine"] = fault.machine
        if isinstance(fault, BadValue):
            entry["status"] = fault.status
    elif isinstance(fault, Restart):
        entry.update(extra_namespaces=fault.extra_namespaces, down_s=fault.down_s)
    return entry


_FIELDS: Mapping[FaultKind, frozenset[str]] = {
    FaultKind.DROP: frozenset(),
    FaultKind.HANG: frozenset(),
    FaultKind.LATENCY: frozenset({"seconds"}),
    FaultKind.EXCEPTION: frozenset({"table", "start", "end", "code"}),
    FaultKind.BAD: frozenset({"points", "status"}),
    FaultKind.FREEZE: frozenset({"points"}),
    FaultKind.RESTART: frozenset({"extra_namespaces", "down_s"}),
}


def _number(body: Mapping[str, object], name: str, default: float | None = None) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _integer(body: Mapping[str, object], name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


def _points(body: Mapping[str, object]) -> frozenset[str] | None:
    points = body.get("points")
    if points is None:
        return None
    if isinstance(points, str):
        points = [points]
    if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
        raise ValueError("points must be a list of point names (or null for every point)")
    return frozenset(points)


def fault_from_json(body: object, *, machine: str | None = None) -> tuple[Fault | Restart, float | None]:
    """``({"fault": "hang", "duration_s": 5}, machine)`` -> (fault, duration_s). Raises ValueError with the reason.

    ``machine`` is put into point faults. Unknown keys are errors, so a typo never silently does nothing.
    """
    if not isinstance(body, Mapping):
        raise ValueError('the body must be a JSON object like {"fault": "hang", "duration_s": 5}')
    try:
        kind = FaultKind(str(body.get("fault")))
    except ValueError:
        raise ValueError(f"fault must be one of {', '.join(k.value for k in FaultKind)}, "
                         f"got {body.get('fault')!r}") from None
    allowed = _FIELDS[kind] | {"fault"} | (set() if kind is FaultKind.RESTART else {"duration_s"})
    extra = sorted(set(body) - allowed)
    if extra:
        raise ValueError(f"unknown keys for fault {kind.value!r}: {', '.join(map(str, extra))}; "
                         f"allowed: {', '.join(sorted(allowed))}")
    raw_duration = body.get("duration_s")
    duration = None if raw_duration is None else _number(body, "duration_s")
    fault: Fault | Restart
    match kind:
        case FaultKind.DROP:
            fault = DropConnections()
        case FaultKind.HANG:
            fault = Hang()
        case FaultKind.LATENCY:
            fault = Latency(seconds=_number(body, "seconds"))
        case FaultKind.EXCEPTION:
            table = body.get("table", "holding")
            fault = ModbusException(table=str(table), start=_integer(body, "start"),
                                    end=_integer(body, "end"), code=_integer(body, "code", 4))
        case FaultKind.BAD:
            fault = BadValue(points=_points(body), machine=machine,
                             status=str(body.get("status", "BadSensorFailure")))
        case FaultKind.FREEZE:
            fault = Freeze(points=_points(body), machine=machine)
        case FaultKind.RESTART:
            fault = Restart(extra_namespaces=_integer(body, "extra_namespaces", 1),
                            down_s=_number(body, "down_s", 0.0))
    return fault, duration
