"""Modbus TCP server (pymodbus 3.16 SimDevice API) that exposes the formation rack.

Register map of the formation rack (synthetic, modelled on equipment notes §7.7; unit id 1; addresses are 0-based
protocol addresses; 32-bit values are ABCD: high word first, big-endian bytes; scaled values are
``engineering = raw × scale``)::

    Holding registers (FC03), rack block at 0..99
      0      Rack.StateCurrent       uint16   PackML state (OPC 30050 numbering, 6 = Execute)
      1      Rack.ChannelCount       uint16
      2      Rack.Heartbeat          uint16   +1 per second, wraps
      3      Rack.AlarmWord          uint16   b0 ambient high, b1 clamp pressure low, b2 channel fault
      4      Rack.ChannelsActive     uint16
      5      Rack.ChannelsFaulted    uint16
      6-7    Rack.CellsCompleted     uint32
      10-11  Rack.DcBusVoltage       float32  V
      12-13  Rack.GridPower          float32  kW
      14-15  Rack.ActiveEnergy       float32  kW.h
      20-21  Rack.AmbientTemp        float32  Cel
      22-23  Rack.ClampPressure      float32  kPa
      24-25  Rack.ClampPressureSP    float32  kPa
      26     Rack.PlateTemp          int16    0.1 Cel
    Holding registers, channel n (1-based) at base = 1000 + 32 × (n - 1), i.e. ch1 at 1000, ch2 at 1032,
    ch16 at 1480, ch256 at 9160. Offsets within the block:
      +0     Status                  uint16   0 Idle, 1 Rest, 2 CC chg, 3 CV chg, 6 Pause, 7 Finished, 8 Protection
      +1     StepIndex               uint16
      +2     StepType                uint16   0 Rest, 2 CC-CV charge
      +3     ProtectionFlags         uint16   b5 contact fault
      +4/+5  Voltage                 float32  V
      +6/+7  Current                 float32  A (+ = charge)
      +8/+9  Capacity                float32  A.h (charge into the current cell)
      +10/11 Energy                  float32  W.h
      +12    Temperature             int16    0.1 Cel (e.g. raw 452 = 45.2 Cel)
      +13    EndReason               uint16   2 current cut-off, 3 time, 7 protection
      +14/15 StepTime                uint32   s
      +16/17 CellTime                uint32   s
      +18/19 CellsCompleted          uint32
      +20..31 reserved (read as 0)
    Input registers (FC04)
      0-1    Rack.Uptime             uint32   s
    Coils (FC01)
      0 Alarms.AmbientHigh, 1 Alarms.ClampPressureLow, 2 Alarms.ChannelFault,
      100 + (n - 1)  channel n protection alarm (ChNNN.ProtectionAlarm)
    Discrete inputs (FC02)
      0 Rack.AirflowOk, 1 Rack.DoorClosed

One FC03 read of 96 registers covers three channels. Every table is one contiguous block from address 0, so a
read across the reserved gaps answers zeros instead of an exception. Values that do not fit their register
saturate (a scaled int16 never wraps); counters wrap modulo 2^16 / 2^32 as PLC counters do.

Faults (``simulators.faults``): ``await server.set_fault(Hang(), duration_s=5)``, ``await server.clear_faults()``,
``await server.drop_connections()``. They act on the wire through a request handler subclass (the only per-request
hook of pymodbus 3.16 that can delay, swallow or answer a request itself; ``trace_pdu`` is synchronous and cannot
drop a request) and at publish time (NaN, frozen values).
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self, cast

from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData, SimDevice

from simulators.faults import BadValue, Fault, FaultKind, FaultState, Freeze, Restart, check_points
from simulators.machines.formation import channel_name
from simulators.machines.points import Machine, Value
from simulators.servers.clock import AutoStepper, check_rate
from simulators.servers.fault_gate import FaultGate

CHANNEL_BASE = 1000
CHANNEL_STRIDE = 32
CHANNEL_ALARM_COIL_BASE = 100
DEFAULT_UNIT_ID = 1


class Table(StrEnum):
    """Modbus tables, named as in the tag map (``table:``)."""

    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"


class Encoding(StrEnum):
    """Wire types, named as in the tag map (``type:``)."""

    BOOL = "bool"
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    FLOAT32 = "float32"


# Function codes that pymodbus' async_setValues uses to pick a table.
_FUNCTION_CODE: Mapping[Table, int] = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
_BIT_TABLES = frozenset({Table.COIL, Table.DISCRETE})
# Which table a request function code addresses (FC23 read/write is rare and left out: it answers normally).
_REQUEST_TABLE: Mapping[int, Table] = {
    1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE,
    3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 22: Table.HOLDING, 4: Table.INPUT,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterPoint:
    """Where one model point lives on the wire. ``engineering value = raw × scale``."""

    point: str
    table: Table
    address: int
    encoding: Encoding
    scale: float = 1.0

    def __post_init__(self) -> None:
        bits = self.table in _BIT_TABLES
        if bits != (self.encoding is Encoding.BOOL):
            raise ValueError(f"{self.point}: {self.encoding} cannot live in the {self.table} table")
        if not 0 <= self.address <= 65535 - (self.width - 1):
            raise ValueError(f"{self.point}: address {self.address} out of range")
        if self.scale == 0.0 or not math.isfinite(self.scale):
            raise ValueError(f"{self.point}: scale must be finite and non-zero")

    @property
    def width(self) -> int:
        """Registers (or bits) the point occupies."""
        return 2 if self.encoding in (Encoding.UINT32, Encoding.FLOAT32) else 1


RegisterMap = tuple[RegisterPoint, ...]

# Channel block: (point suffix, offset, encoding, scale).
CHANNEL_LAYOUT: tuple[tuple[str, int, Encoding, float], ...] = (
    ("Status", 0, Encoding.UINT16, 1.0),
    ("StepIndex", 1, Encoding.UINT16, 1.0),
    ("StepType", 2, Encoding.UINT16, 1.0),
    ("ProtectionFlags", 3, Encoding.UINT16, 1.0),
    ("Voltage", 4, Encoding.FLOAT32, 1.0),
    ("Current", 6, Encoding.FLOAT32, 1.0),
    ("Capacity", 8, Encoding.FLOAT32, 1.0),
    ("Energy", 10, Encoding.FLOAT32, 1.0),
    ("Temperature", 12, Encoding.INT16, 0.1),
    ("EndReason", 13, Encoding.UINT16, 1.0),
    ("StepTime", 14, Encoding.UINT32, 1.0),
    ("CellTime", 16, Encoding.UINT32, 1.0),
    ("CellsCompleted", 18, Encoding.UINT32, 1.0),
)

_RACK_LAYOUT: tuple[tuple[str, Table, int, Encoding, float], ...] = (
    ("Rack.StateCurrent", Table.HOLDING, 0, Encoding.UINT16, 1.0),
    ("Rack.ChannelCount", Table.HOLDING, 1, Encoding.UINT16, 1.0),
    ("Rack.Heartbeat", Table.HOLDING, 2, Encoding.UINT16, 1.0),
    ("Rack.AlarmWord", Table.HOLDING, 3, Encoding.UINT16, 1.0),
    ("Rack.ChannelsActive", Table.HOLDING, 4, Encoding.UINT16, 1.0),
    ("Rack.ChannelsFaulted", Table.HOLDING, 5, Encoding.UINT16, 1.0),
    ("Rack.CellsCompleted", Table.HOLDING, 6, Encoding.UINT32, 1.0),
    ("Rack.DcBusVoltage", Table.HOLDING, 10, Encoding.FLOAT32, 1.0),
    ("Rack.GridPower", Table.HOLDING, 12, Encoding.FLOAT32, 1.0),
    ("Rack.ActiveEnergy", Table.HOLDING, 14, Encoding.FLOAT32, 1.0),
    ("Rack.AmbientTemp", Table.HOLDING, 20, Encoding.FLOAT32, 1.0),
    ("Rack.ClampPressure", Table.HOLDING, 22, Encoding.FLOAT32, 1.0),
    ("Rack.ClampPressureSP", Table.HOLDING, 24, Encoding.FLOAT32, 1.0),
    ("Rack.PlateTemp", Table.HOLDING, 26, Encoding.INT16, 0.1),
    ("Rack.Uptime", Table.INPUT, 0, Encoding.UINT32, 1.0),
    ("Alarms.AmbientHigh", Table.COIL, 0, Encoding.BOOL, 1.0),
    ("Alarms.ClampPressureLow", Table.COIL, 1, Encoding.BOOL, 1.0),
    ("Alarms.ChannelFault", Table.COIL, 2, Encoding.BOOL, 1.0),
    ("Rack.AirflowOk", Table.DISCRETE, 0, Encoding.BOOL, 1.0),
    ("Rack.DoorClosed", Table.DISCRETE, 1, Encoding.BOOL, 1.0),
)


def channel_base(n: int) -> int:
    """First holding register of channel ``n`` (1-based)."""
    return CHANNEL_BASE + CHANNEL_STRIDE * (n - 1)


def formation_register_map(channels: int) -> RegisterMap:
    """The register map of a formation rack with ``channels`` channels (see the module docstring)."""
    if not 1 <= channels <= (65536 - CHANNEL_BASE) // CHANNEL_STRIDE:
        raise ValueError(f"channels must be 1..{(65536 - CHANNEL_BASE) // CHANNEL_STRIDE}")
    points = [RegisterPoint(point=name, table=table, address=address, encoding=encoding, scale=scale)
              for name, table, address, encoding, scale in _RACK_LAYOUT]
    for n in range(1, channels + 1):
        prefix = channel_name(n, channels)
        points += [RegisterPoint(point=f"{prefix}.{suffix}", table=Table.HOLDING, address=channel_base(n) + offset,
                                 encoding=encoding, scale=scale)
                   for suffix, offset, encoding, scale in CHANNEL_LAYOUT]
        points.append(RegisterPoint(point=f"{prefix}.ProtectionAlarm", table=Table.COIL,
                                    address=CHANNEL_ALARM_COIL_BASE + n - 1, encoding=Encoding.BOOL))
    _check_no_overlap(points)
    return tuple(points)


def _check_no_overlap(points: Sequence[RegisterPoint]) -> None:
    used: dict[tuple[Table, int], str] = {}
    for point in points:
        for address in range(point.address, point.address + point.width):
            other = used.setdefault((point.table, address), point.point)
            if other != point.point:
                raise ValueError(f"{point.point} overlaps {other} at {point.table} {address}")


def encode(point: RegisterPoint, value: Value) -> list[int] | list[bool]:
    """Raw register words (or bits) of ``value`` for ``point``."""
    encoding = point.encoding
    if encoding is Encoding.BOOL:
        return [bool(value)]
    if isinstance(value, str):
        raise TypeError(f"{point.point}: cannot encode a string as {encoding}")
    if encoding is Encoding.FLOAT32:
        high, low = struct.unpack(">HH", struct.pack(">f", float(value) / point.scale))
        return [high, low]
    number = float(value) / point.scale
    if math.isnan(number):
        raw = 0
    elif math.isinf(number):
        raw = 2**40 if number > 0 else -(2**40)  # saturates below
    else:
        raw = round(number)
    if encoding is Encoding.UINT16:
        return [raw % 65536 if point.scale == 1.0 else min(max(raw, 0), 65535)]
    if encoding is Encoding.INT16:
        return [min(max(raw, -32768), 32767) & 0xFFFF]
    word = raw % 2**32 if point.scale == 1.0 else min(max(raw, 0), 2**32 - 1)
    return [word >> 16, word & 0xFFFF]


def table_sizes(register_map: RegisterMap) -> dict[Table, int]:
    """Registers (bits) each table needs: one block from address 0 to the end of its last point (at least 1)."""
    sizes = dict.fromkeys(Table, 1)
    for point in register_map:
        sizes[point.table] = max(sizes[point.table], point.address + point.width)
    return sizes


def build_images(register_map: RegisterMap, values: Mapping[str, Value]) -> dict[Table, list[int] | list[bool]]:
    """The full content of every table for ``values`` (reserved addresses are 0 / False)."""
    sizes = table_sizes(register_map)
    words: dict[Table, list[int]] = {t: [0] * sizes[t] for t in (Table.HOLDING, Table.INPUT)}
    bits: dict[Table, list[bool]] = {t: [False] * sizes[t] for t in _BIT_TABLES}
    for point in register_map:
        raw = encode(point, values[point.point])
        if point.table in _BIT_TABLES:
            bits[point.table][point.address] = bool(raw[0])
        else:
            words[point.table][point.address:point.address + point.width] = [int(r) for r in raw]
    return {**words, **bits}


def request_span(pdu: ModbusPDU) -> tuple[Table, int, int] | None:
    """(table, first address, count) a request touches, or None for function codes without a table."""
    table = _REQUEST_TABLE.get(pdu.function_code)
    if table is None:
        return None
    # Single writes (FC5/FC6) carry no count; multiple writes carry their values.
    count = max(1, pdu.count, len(pdu.registers or ()), len(pdu.bits or ()) if pdu.function_code == 15 else 0)
    return table, pdu.address, count


class _FaultGatedHandler(ServerRequestHandler):
    """pymodbus' per-connection handler with the fault hooks in front of the datastore."""

    def __init__(self, owner: _FaultGatedTcpServer, gate: FaultGate) -> None:
        # pymodbus leaves these handler methods unannotated, hence the ignores below.
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)  # type: ignore[no-untyped-call]
        self._gate = gate

    def callback_connected(self) -> None:
        super().callback_connected()
        if self._gate.refuses_connections():
            self.close()

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is None or self._gate.is_hung():
            return  # hang: swallowed, never answered
        await self._gate.delay()
        if self._gate.is_hung() or not self.is_active():
            return
        span = request_span(pdu)
        code = None if span is None else self._gate.exception_code(table=span[0].value, start=span[1], count=span[2])
        if code is not None:
            response = ExceptionResponse(pdu.function_code, code, device_id=pdu.dev_id, transaction=pdu.transaction_id)
            self.server_send(response, addr)  # type: ignore[no-untyped-call]
            return
        # The base handler reads last_pdu again; a request that arrived during the delay must not replace ours.
        self.last_pdu, self.last_addr = pdu, addr
        await super().handle_request()  # type: ignore[no-untyped-call]


class _FaultGatedTcpServer(ModbusTcpServer):
    def __init__(self, device: SimDevice, *, address: tuple[str, int], gate: FaultGate) -> None:
        super().__init__(device, address=address)
        self._gate = gate

    def callback_new_connection(self) -> _FaultGatedHandler:
        return _FaultGatedHandler(self, self._gate)

    def drop_connections(self) -> int:
        connections = list(self.active_connections.values())
        for connection in connections:
            connection.close()
        return len(connections)


class ModbusSimulatorServer:
    """Serves one model through ``register_map`` as Modbus TCP device ``unit_id``, stepping it at ``step_hz``.

    ``async with ModbusSimulatorServer(model=rack, register_map=formation_register_map(16), port=5020) as s: ...``
    Port 0 binds an ephemeral port; read it back from ``server.port``. With ``autostep=False`` nothing moves
    unless the caller calls ``await server.step(dt_s)``. ``name`` is the machine name faults refer to.
    """

    def __init__(
        self,
        *,
        model: Machine,
        register_map: RegisterMap,
        port: int = 5020,
        host: str = "127.0.0.1",
        unit_id: int = DEFAULT_UNIT_ID,
        step_hz: float = 5.0,
        speedup: float = 1.0,
        autostep: bool = True,
        name: str = "modbus",
    ) -> None:
        check_rate(step_hz=step_hz, speedup=speedup)
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit_id must be 1..247, got {unit_id}")
        known = {point.name for point in model.points}
        unknown = sorted(p.point for p in register_map if p.point not in known)
        if unknown:
            raise ValueError(f"register map names points the model does not have: {unknown[:5]}")
        self._model = model
        self._map = register_map
        self._host = host
        self._port = port
        self._unit_id = unit_id
        self._step_hz = step_hz
        self._speedup = speedup
        self._autostep = autostep
        self._name = name
        self._server: _FaultGatedTcpServer | None = None
        self._stepper: AutoStepper | None = None
        self._gate = FaultGate()
        # What the wire shows now, by point (frozen points keep these).
        self._published: dict[str, Value] = {}

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def unit_id(self) -> int:
        return self._unit_id

    @property
    def machines(self) -> tuple[str, ...]:
        """The machine this server exposes (one), by the name faults use."""
        return (self._name,)

    @property
    def faults(self) -> FaultState:
        """The active faults (expired ones removed)."""
        return self._gate.state

    async def set_fault(self, fault: Fault | Restart, *, duration_s: float | None = None) -> None:
        """Start ``fault`` for ``duration_s`` seconds (None: until cleared; ``DropConnections`` defaults to 0).

        Behaviour on the wire is documented in ``simulators.faults``. Raises ValueError for a fault this server
        cannot show: ``Restart``, an unknown point or machine, or NaN on a point that is not float32.
        """
        if isinstance(fault, Restart):
            raise ValueError("restart is only supported by the OPC UA simulator")
        if isinstance(fault, BadValue | Freeze):
            check_points(fault, {self._name: [p.point for p in self._map]})
            if isinstance(fault, BadValue) and fault.points is not None:
                by_name = {p.point: p for p in self._map}
                not_float = sorted(p for p in fault.points if by_name[p].encoding is not Encoding.FLOAT32)
                if not_float:
                    raise ValueError(f"NaN only exists in float32 points; not float32: {not_float[:5]}")
        self._gate.set(fault, duration_s=duration_s)
        if fault.kind is FaultKind.DROP and self._server is not None:
            self._server.drop_connections()
        if isinstance(fault, BadValue | Freeze) and self._server is not None:
            await self.publish()

    async def clear_faults(self, kind: FaultKind | None = None, *, machine: str | None = None) -> None:
        """End the faults of ``kind`` (None: all); values are republished at once."""
        self._gate.clear(kind, machine=machine)
        if self._server is not None:
            await self.publish()

    async def drop_connections(self) -> int:
        """Close every client connection now (new ones are accepted); returns how many were open."""
        self._gate.clear(FaultKind.DROP)
        return 0 if self._server is None else self._server.drop_connections()

    async def __aenter__(self) -> Self:
        sizes = table_sizes(self._map)
        device = SimDevice(id=self._unit_id, simdata=(
            [SimData(0, count=sizes[Table.COIL], values=False, datatype=SimDataType.BITS)],
            [SimData(0, count=sizes[Table.DISCRETE], values=False, datatype=SimDataType.BITS)],
            [SimData(0, count=sizes[Table.HOLDING], values=0, datatype=SimDataType.REGISTERS)],
            [SimData(0, count=sizes[Table.INPUT], values=0, datatype=SimDataType.REGISTERS)],
        ))
        server = _FaultGatedTcpServer(device, address=(self._host, self._port), gate=self._gate)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus' way of saying the bind failed (it logs the errno as a warning)
            raise OSError(f"Modbus simulator cannot listen on {self._host}:{self._port}: {exc}") from exc
        self._server = server
        try:
            if self._port == 0:
                # Port 0: the listener is an asyncio.Server; ask its socket which port the kernel chose.
                listener = cast(asyncio.Server, server.transport)
                self._port = int(listener.sockets[0].getsockname()[1])
            await self.publish()
            if self._autostep:
                self._stepper = AutoStepper(
                    name=f"sim.modbus[{self._port}].step", step_hz=self._step_hz, speedup=self._speedup, step=self.step
                )
                self._stepper.start()
        except BaseException:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
            self._server = None
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stepper, self._stepper = self._stepper, None
        if stepper is not None:
            await stepper.stop()
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
            self._server = None

    async def join(self) -> None:
        """Wait for the stepping task to end and re-raise its error. Never returns while all is well."""
        if self._stepper is None:
            await asyncio.Event().wait()
        else:
            await self._stepper.join()

    async def step(self, dt_s: float) -> None:
        """Advance the model by ``dt_s`` seconds of model time and publish the new values."""
        self._model.step(dt_s)
        await self.publish()

    async def publish(self) -> None:
        """Write every table, one call each.

        Without a SimDevice ``action`` pymodbus applies these writes without yielding to the event loop, so a
        client request is served either before or after the whole update, never in the middle of it.
        """
        if self._server is None:
            raise RuntimeError("the Modbus simulator is not running (use it as an async context manager)")
        values = dict(self._model.values())
        state = self._gate.state
        if state.point_faults(self._gate.now()):
            values = self._apply_point_faults(values, state)
        self._published = values
        for table, image in build_images(self._map, values).items():
            await self._server.async_setValues(self._unit_id, _FUNCTION_CODE[table], 0, image)

    def _apply_point_faults(self, values: dict[str, Value], state: FaultState) -> dict[str, Value]:
        now = self._gate.now()
        for point in self._map:
            name = point.point
            if state.is_frozen(machine=self._name, point=name, now=now):
                values[name] = self._published.get(name, values[name])
            elif point.encoding is Encoding.FLOAT32 and state.bad_status(machine=self._name, point=name, now=now):
                values[name] = math.nan
        return values
