"""Where every simulated point lives on the wire: OPC UA node ids and Modbus register maps (pure: no sockets).

OPC UA
    Every machine is an object below ``Objects/Machines`` in the namespace ``urn:cellgate:simulators``. A point
    ``Dryer.Zone03.AirTemp`` of ``Coater01`` is the variable with the string node id
    ``Coater01.Dryer.Zone03.AirTemp``; every dotted segment before the last is an object (``Coater01.Dryer``,
    ``Coater01.Dryer.Zone03``), so the hierarchy follows the point names.

Modbus: formation racks (``formation_register_map``)
    Synthetic, modelled on equipment notes §7.7; unit id 1; 0-based protocol addresses. Word order of 32-bit values
    is the server's ``word_order`` (ABCD: high word first; CDAB: low word first; bytes within a register are always
    big-endian). Values are either IEEE float32 (``NumberFormat.FLOAT32``) or scaled integers
    (``NumberFormat.SCALED``, engineering value = raw × scale); both variants use the same addresses: a scaled
    16-bit value sits in the first register of its two-register slot and the second one reads 0::

        Holding registers (FC03), rack block at 0..99          float32          scaled
          0      Rack.StateCurrent                              uint16           uint16
          1      Rack.ChannelCount                              uint16           uint16
          2      Rack.Heartbeat  (+1 per second, wraps)         uint16           uint16
          3      Rack.AlarmWord  (b0 ambient high, b1 clamp pressure low, b2 channel fault)
          4      Rack.ChannelsActive                            uint16           uint16
          5      Rack.ChannelsFaulted                           uint16           uint16
          6-7    Rack.CellsCompleted                            uint32           uint32
          10-11  Rack.DcBusVoltage  V                           float32          uint16 x 0.1
          12-13  Rack.GridPower  kW                             float32          int16 x 0.01
          14-15  Rack.ActiveEnergy  kW.h                        float32          uint32 x 0.01
          20-21  Rack.AmbientTemp  Cel                          float32          int16 x 0.1
          22-23  Rack.ClampPressure  kPa                        float32          uint16 x 0.1
          24-25  Rack.ClampPressureSP  kPa                      float32          uint16 x 0.1
          26     Rack.PlateTemp  Cel                            int16 x 0.1      int16 x 0.1
          30-37  Rack.CellsA, CellsB, CellsC, CellsNG           uint32 each      (extended points only)
          result FIFO, extended points only (``simulators.machines.results``; handshake in the README):
          40-41  Result.RecordId  (0 = none)                    uint32           uint32
          42-43  Result.Pending                                 uint32           uint32
          44-45  Result.Lost                                    uint32           uint32
          46-47  Result.Ack  (write RecordId here)              uint32           uint32
          48-49  Result.Channel                                 uint32           uint32
          50-51  Result.FirstChargeCapacity  A.h                float32          uint32 x 0.001
          52-53  Result.DischargeCapacity  A.h                  float32          uint32 x 0.001
          54-55  Result.CoulombicEfficiency  %                  float32          uint16 x 0.01
          56     Result.Grade  (1 A, 2 B, 3 C, 4 NG)            uint16           uint16
          60-79  Result.CellId  string, 40 characters, NUL-padded
        Holding registers, channel n (1-based) at base = 1000 + stride x (n - 1), with a stride of 48 for the
        extended points (ch1 at 1000, ch2 at 1048, ch16 at 1720, ch256 at 13240) and 32 for the v1 point list
        (offsets 20..31 reserved). Offsets within the block:
          +0     Status    (0 Idle, 1 Rest, 2 CC chg, 3 CV chg, 4 CC dis, 6 Pause, 7 Finished, 8 Protection)
          +1     StepIndex                                      uint16           uint16
          +2     StepType  (0 Rest, 1 CC chg, 2 CC-CV chg, 3 CC dis)
          +3     ProtectionFlags  (b5 contact fault)            uint16           uint16
          +4/5   Voltage  V                                     float32          uint32 x 0.0001 (0.1 mV)
          +6/7   Current  A (+ = charge)                        float32          int32 x 0.001 (mA)
          +8/9   Capacity  A.h                                  float32          uint32 x 0.001 (mA.h)
          +10/11 Energy  W.h                                    float32          uint32 x 0.001 (mW.h)
          +12    Temperature  Cel                               int16 x 0.1      int16 x 0.1
          +13    EndReason  (2 current cut-off, 3 time, 7 protection)
          +14/15 StepTime  s                                    uint32           uint32
          +16/17 CellTime  s                                    uint32           uint32
          +18/19 CellsCompleted                                 uint32           uint32
          extended points only:
          +20/21 StepCapacity  A.h                              float32          uint32 x 0.001
          +22/23 StepEnergy  W.h                                float32          uint32 x 0.001
          +24/25 Power  W                                       float32          int32 x 0.001
          +26/27 DischargeCapacity  A.h                         float32          uint32 x 0.001
          +28/29 ResultChargeCapacity  A.h                      float32          uint32 x 0.001
          +30/31 ResultDischargeCapacity  A.h                   float32          uint32 x 0.001
          +32/33 ResultCoulombicEfficiency  %                   float32          uint16 x 0.01
          +34    Grade  (0 none, 1 A, 2 B, 3 C, 4 NG)           uint16           uint16
          +36..43 CellId  string, 16 characters, NUL-padded, first character in the high byte
          the rest of the block is reserved and reads 0
        Input registers (FC04)
          0-1    Rack.Uptime  s                                 uint32           uint32
        Coils (FC01, alarms)
          0 Alarms.AmbientHigh, 1 Alarms.ClampPressureLow, 2 Alarms.ChannelFault,
          100 + (n - 1)  channel n protection alarm (ChNNN.ProtectionAlarm)
        Discrete inputs (FC02)
          0 Rack.AirflowOk, 1 Rack.DoorClosed, 2 Result.Ready (extended points only)

    One FC03 read of 92 registers covers two extended channels (or three v1 channels in 116).

Modbus: any other machine (``machine_register_map``: stacker, and coater / calender when served over Modbus)
    Laid out from the machine's point list, in point order, one section (first name segment: ``PackML``,
    ``Separator``, ...) after the other, each section starting at the next multiple of 100:

    * set points (last name segment ends in ``SP``) and ``Result.Ack`` -> holding registers (FC03, the values a
      PLC lets you write; only ``Result.Ack`` is read back from the wire, see ``simulators.machines.results``);
    * every other number and string -> input registers (FC04);
    * booleans of the ``Alarms`` section -> coils (FC01), from 0 in point order;
    * other booleans -> discrete inputs (FC02), from 0 in point order.

    Numbers: Double -> float32 (or, scaled, the narrowest of uint16 / int16 / uint32 / int32 with a scale of
    1, 0.1, 0.01 or 0.001 that holds the point's range with the finest resolution; an unbounded value gets
    32 bits x 0.01); Int32 -> int32; UInt32 -> uint32. Strings take ``STRING_REGISTERS`` registers (40 UTF-8 bytes,
    NUL-padded, first character in the high byte; longer text is cut). ``simulators.describe`` prints every
    address, and ``python -m simulators --describe`` prints them as a tag map.

Values that do not fit their register saturate (a scaled int16 never wraps); unscaled counters wrap modulo
2^16 / 2^32 as PLC counters do. Every table is one contiguous block from address 0, so a read across reserved
addresses answers zeros instead of an exception.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from simulators.machines.formation import CELL_ID_CHARACTERS, channel_name
from simulators.machines.points import DataType, PointSpec, Value
from simulators.machines.results import ACK_POINT

NAMESPACE_URI = "urn:cellgate:simulators"
MACHINES_FOLDER = "Machines"
MAX_VARIABLES_PER_OBJECT = 100

CHANNEL_BASE = 1000
CHANNEL_STRIDE = 32  # v1 channel points (20 registers used)
EXTENDED_CHANNEL_STRIDE = 48  # extended channel points (44 registers used)
CHANNEL_ALARM_COIL_BASE = 100
DEFAULT_UNIT_ID = 1
STRING_REGISTERS = 20
CELL_ID_REGISTERS = CELL_ID_CHARACTERS // 2  # two UTF-8 bytes per register
SECTION_ALIGNMENT = 100
MAX_CHANNELS = (65536 - CHANNEL_BASE) // EXTENDED_CHANNEL_STRIDE


def node_id_string(machine: str, point: str) -> str:
    """The string identifier of a point's node: ``Coater01`` + ``Dryer.Zone03.AirTemp``."""
    return f"{machine}.{point}"


class Table(StrEnum):
    """Modbus tables, named as in the tag map (``table:``)."""

    COIL = "coil"
    DISCRETE = "discrete"
    HOLDING = "holding"
    INPUT = "input"


BIT_TABLES = frozenset({Table.COIL, Table.DISCRETE})
REGISTER_TABLES = (Table.HOLDING, Table.INPUT)


class Encoding(StrEnum):
    """Wire types, named as in the tag map (``type:``)."""

    BOOL = "bool"
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    FLOAT32 = "float32"
    STRING = "string"


class NumberFormat(StrEnum):
    """How analog values travel: IEEE float32 in two registers, or scaled integers."""

    FLOAT32 = "float32"
    SCALED = "scaled"


class WordOrder(StrEnum):
    """Order of the two registers of a 32-bit value (bytes within a register are always big-endian)."""

    ABCD = "ABCD"  # high word first
    CDAB = "CDAB"  # low word first ("word swap", common on Siemens)


_WORDS: Mapping[Encoding, int] = {
    Encoding.BOOL: 1, Encoding.UINT16: 1, Encoding.INT16: 1, Encoding.UINT32: 2, Encoding.INT32: 2,
    Encoding.FLOAT32: 2,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterPoint:
    """Where one model point lives on the wire. ``engineering value = raw × scale``; ``length`` is the register
    count of a string (ignored otherwise)."""

    point: str
    table: Table
    address: int
    encoding: Encoding
    scale: float = 1.0
    length: int = 0

    def __post_init__(self) -> None:
        bits = self.table in BIT_TABLES
        if bits != (self.encoding is Encoding.BOOL):
            raise ValueError(f"{self.point}: {self.encoding} cannot live in the {self.table} table")
        if self.encoding is Encoding.STRING and not 1 <= self.length <= 125:
            raise ValueError(f"{self.point}: a string needs a length of 1..125 registers")
        if not 0 <= self.address <= 65535 - (self.width - 1):
            raise ValueError(f"{self.point}: address {self.address} out of range")
        if self.scale == 0.0 or not math.isfinite(self.scale):
            raise ValueError(f"{self.point}: scale must be finite and non-zero")

    @property
    def width(self) -> int:
        """Registers (or bits) the point occupies."""
        return self.length if self.encoding is Encoding.STRING else _WORDS[self.encoding]


RegisterMap = tuple[RegisterPoint, ...]

# ------------------------------------------------------------------------------------------ formation rack

# (point suffix, offset, float32 variant, scaled variant); a variant is (encoding, scale).
_Variant = tuple[Encoding, float]
CHANNEL_LAYOUT: tuple[tuple[str, int, _Variant, _Variant], ...] = (
    ("Status", 0, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("StepIndex", 1, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("StepType", 2, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("ProtectionFlags", 3, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("Voltage", 4, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.0001)),
    ("Current", 6, (Encoding.FLOAT32, 1.0), (Encoding.INT32, 0.001)),
    ("Capacity", 8, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.001)),
    ("Energy", 10, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.001)),
    ("Temperature", 12, (Encoding.INT16, 0.1), (Encoding.INT16, 0.1)),
    ("EndReason", 13, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("StepTime", 14, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
    ("CellTime", 16, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
    ("CellsCompleted", 18, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
)
CHANNEL_EXTRA_LAYOUT: tuple[tuple[str, int, _Variant, _Variant], ...] = (
    ("StepCapacity", 20, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.001)),
    ("StepEnergy", 22, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.001)),
    ("Power", 24, (Encoding.FLOAT32, 1.0), (Encoding.INT32, 0.001)),
    ("DischargeCapacity", 26, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.001)),
    ("ResultChargeCapacity", 28, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.001)),
    ("ResultDischargeCapacity", 30, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.001)),
    ("ResultCoulombicEfficiency", 32, (Encoding.FLOAT32, 1.0), (Encoding.UINT16, 0.01)),
    ("Grade", 34, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
)
CHANNEL_CELL_ID_OFFSET = 36

_RACK_LAYOUT: tuple[tuple[str, Table, int, _Variant, _Variant], ...] = (
    ("Rack.StateCurrent", Table.HOLDING, 0, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("Rack.ChannelCount", Table.HOLDING, 1, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("Rack.Heartbeat", Table.HOLDING, 2, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("Rack.AlarmWord", Table.HOLDING, 3, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("Rack.ChannelsActive", Table.HOLDING, 4, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("Rack.ChannelsFaulted", Table.HOLDING, 5, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("Rack.CellsCompleted", Table.HOLDING, 6, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
    ("Rack.DcBusVoltage", Table.HOLDING, 10, (Encoding.FLOAT32, 1.0), (Encoding.UINT16, 0.1)),
    ("Rack.GridPower", Table.HOLDING, 12, (Encoding.FLOAT32, 1.0), (Encoding.INT16, 0.01)),
    ("Rack.ActiveEnergy", Table.HOLDING, 14, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.01)),
    ("Rack.AmbientTemp", Table.HOLDING, 20, (Encoding.FLOAT32, 1.0), (Encoding.INT16, 0.1)),
    ("Rack.ClampPressure", Table.HOLDING, 22, (Encoding.FLOAT32, 1.0), (Encoding.UINT16, 0.1)),
    ("Rack.ClampPressureSP", Table.HOLDING, 24, (Encoding.FLOAT32, 1.0), (Encoding.UINT16, 0.1)),
    ("Rack.PlateTemp", Table.HOLDING, 26, (Encoding.INT16, 0.1), (Encoding.INT16, 0.1)),
    ("Rack.Uptime", Table.INPUT, 0, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
    ("Alarms.AmbientHigh", Table.COIL, 0, (Encoding.BOOL, 1.0), (Encoding.BOOL, 1.0)),
    ("Alarms.ClampPressureLow", Table.COIL, 1, (Encoding.BOOL, 1.0), (Encoding.BOOL, 1.0)),
    ("Alarms.ChannelFault", Table.COIL, 2, (Encoding.BOOL, 1.0), (Encoding.BOOL, 1.0)),
    ("Rack.AirflowOk", Table.DISCRETE, 0, (Encoding.BOOL, 1.0), (Encoding.BOOL, 1.0)),
    ("Rack.DoorClosed", Table.DISCRETE, 1, (Encoding.BOOL, 1.0), (Encoding.BOOL, 1.0)),
)
_RACK_EXTRA_LAYOUT: tuple[tuple[str, int], ...] = (
    ("Rack.CellsA", 30), ("Rack.CellsB", 32), ("Rack.CellsC", 34), ("Rack.CellsNG", 36),
)
# The result FIFO (extended points only): holding registers 40..79 of the rack block, Ready a discrete input.
_RACK_RESULT_LAYOUT: tuple[tuple[str, Table, int, _Variant, _Variant], ...] = (
    ("Result.RecordId", Table.HOLDING, 40, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
    ("Result.Pending", Table.HOLDING, 42, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
    ("Result.Lost", Table.HOLDING, 44, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
    ("Result.Ack", Table.HOLDING, 46, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
    ("Result.Channel", Table.HOLDING, 48, (Encoding.UINT32, 1.0), (Encoding.UINT32, 1.0)),
    ("Result.FirstChargeCapacity", Table.HOLDING, 50, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.001)),
    ("Result.DischargeCapacity", Table.HOLDING, 52, (Encoding.FLOAT32, 1.0), (Encoding.UINT32, 0.001)),
    ("Result.CoulombicEfficiency", Table.HOLDING, 54, (Encoding.FLOAT32, 1.0), (Encoding.UINT16, 0.01)),
    ("Result.Grade", Table.HOLDING, 56, (Encoding.UINT16, 1.0), (Encoding.UINT16, 1.0)),
    ("Result.Ready", Table.DISCRETE, 2, (Encoding.BOOL, 1.0), (Encoding.BOOL, 1.0)),
)
RACK_RESULT_CELL_ID_ADDRESS = 60


def channel_stride(*, extended: bool) -> int:
    """Registers between the blocks of two neighbouring channels."""
    return EXTENDED_CHANNEL_STRIDE if extended else CHANNEL_STRIDE


def channel_base(n: int, *, extended: bool = False) -> int:
    """First holding register of channel ``n`` (1-based)."""
    return CHANNEL_BASE + channel_stride(extended=extended) * (n - 1)


def formation_register_map(
    channels: int, *, extended: bool = False, number_format: NumberFormat = NumberFormat.FLOAT32
) -> RegisterMap:
    """The register map of a formation rack with ``channels`` channels (see the module docstring).

    ``extended`` adds the points of ``formation_rack_points(..., extended=True)``.
    """
    if not 1 <= channels <= MAX_CHANNELS:
        raise ValueError(f"channels must be 1..{MAX_CHANNELS}")
    scaled = number_format is NumberFormat.SCALED
    points = [RegisterPoint(point=name, table=table, address=address, encoding=(s if scaled else f)[0],
                            scale=(s if scaled else f)[1])
              for name, table, address, f, s in _RACK_LAYOUT]
    if extended:
        points += [RegisterPoint(point=name, table=Table.HOLDING, address=address, encoding=Encoding.UINT32)
                   for name, address in _RACK_EXTRA_LAYOUT]
        points += [RegisterPoint(point=name, table=table, address=address, encoding=(s if scaled else f)[0],
                                 scale=(s if scaled else f)[1])
                   for name, table, address, f, s in _RACK_RESULT_LAYOUT]
        points.append(RegisterPoint(point="Result.CellId", table=Table.HOLDING, address=RACK_RESULT_CELL_ID_ADDRESS,
                                    encoding=Encoding.STRING, length=STRING_REGISTERS))
    layout = CHANNEL_LAYOUT + CHANNEL_EXTRA_LAYOUT if extended else CHANNEL_LAYOUT
    for n in range(1, channels + 1):
        prefix = channel_name(n, channels)
        base = channel_base(n, extended=extended)
        for suffix, offset, f, s in layout:
            encoding, scale = s if scaled else f
            points.append(RegisterPoint(point=f"{prefix}.{suffix}", table=Table.HOLDING, address=base + offset,
                                        encoding=encoding, scale=scale))
        if extended:
            points.append(RegisterPoint(point=f"{prefix}.CellId", table=Table.HOLDING,
                                        address=base + CHANNEL_CELL_ID_OFFSET, encoding=Encoding.STRING,
                                        length=CELL_ID_REGISTERS))
        points.append(RegisterPoint(point=f"{prefix}.ProtectionAlarm", table=Table.COIL,
                                    address=CHANNEL_ALARM_COIL_BASE + n - 1, encoding=Encoding.BOOL))
    check_no_overlap(points)
    return tuple(points)


# ------------------------------------------------------------------------------------------ any machine

_SCALES = (1.0, 0.1, 0.01, 0.001)


def scaled_variant(point: PointSpec) -> _Variant:
    """The narrowest integer type and finest scale that hold a Double point's range (module docstring)."""
    low = 0.0 if point.min is None else float(point.min)
    if point.max is None:
        return (Encoding.UINT32 if low >= 0.0 else Encoding.INT32), 0.01
    bound = max(abs(low), abs(float(point.max)))
    for limit_unsigned, limit_signed, unsigned, signed in (
        (65535, 32767, Encoding.UINT16, Encoding.INT16),
        (2**32 - 1, 2**31 - 1, Encoding.UINT32, Encoding.INT32),
    ):
        for scale in reversed(_SCALES):
            raw = bound / scale
            if low >= 0.0 and raw <= limit_unsigned:
                return unsigned, scale
            if raw <= limit_signed:
                return signed, scale
    raise ValueError(f"{point.name}: range {point.min}..{point.max} does not fit 32 bits")


def _number_variant(point: PointSpec, number_format: NumberFormat) -> _Variant:
    if point.data_type is DataType.DOUBLE:
        return (Encoding.FLOAT32, 1.0) if number_format is NumberFormat.FLOAT32 else scaled_variant(point)
    if point.data_type is DataType.INT32:
        return Encoding.INT32, 1.0
    return Encoding.UINT32, 1.0


def machine_register_map(
    points: Sequence[PointSpec], *, number_format: NumberFormat = NumberFormat.FLOAT32
) -> RegisterMap:
    """The register map of any machine, laid out from its points (rules in the module docstring)."""
    next_free: dict[Table, int] = dict.fromkeys(Table, 0)
    section_of: dict[Table, str | None] = dict.fromkeys(Table, None)
    out: list[RegisterPoint] = []
    for point in points:
        section, _, _ = point.name.partition(".")
        leaf = point.name.rsplit(".", 1)[-1]
        if point.data_type is DataType.BOOLEAN:
            table = Table.COIL if section == "Alarms" else Table.DISCRETE
            out.append(RegisterPoint(point=point.name, table=table, address=next_free[table],
                                     encoding=Encoding.BOOL))
            next_free[table] += 1
            continue
        table = Table.HOLDING if leaf.endswith("SP") or point.name == ACK_POINT else Table.INPUT
        if section_of[table] != section:
            if section_of[table] is not None:
                next_free[table] = -(-next_free[table] // SECTION_ALIGNMENT) * SECTION_ALIGNMENT
            section_of[table] = section
        if point.data_type is DataType.STRING:
            register = RegisterPoint(point=point.name, table=table, address=next_free[table],
                                     encoding=Encoding.STRING, length=STRING_REGISTERS)
        else:
            encoding, scale = _number_variant(point, number_format)
            register = RegisterPoint(point=point.name, table=table, address=next_free[table], encoding=encoding,
                                     scale=scale)
        out.append(register)
        next_free[table] += register.width
    check_no_overlap(out)
    return tuple(out)


def check_no_overlap(points: Sequence[RegisterPoint]) -> None:
    used: dict[tuple[Table, int], str] = {}
    for point in points:
        for address in range(point.address, point.address + point.width):
            other = used.setdefault((point.table, address), point.point)
            if other != point.point:
                raise ValueError(f"{point.point} overlaps {other} at {point.table} {address}")


def table_sizes(register_map: Sequence[RegisterPoint]) -> dict[Table, int]:
    """Registers (bits) each table needs: one block from address 0 to the end of its last point (at least 1)."""
    sizes = dict.fromkeys(Table, 1)
    for point in register_map:
        sizes[point.table] = max(sizes[point.table], point.address + point.width)
    return sizes


# ------------------------------------------------------------------------------------------ encoding


def _raw_int(point: RegisterPoint, value: Value, low: int, high: int) -> int:
    """The integer a numeric point puts on the wire: unscaled counters wrap, everything else saturates."""
    if isinstance(value, str):
        raise TypeError(f"{point.point}: cannot encode a string as {point.encoding}")
    number = float(value) / point.scale
    if math.isnan(number):
        return 0
    if math.isinf(number):
        return high if number > 0 else low
    raw = round(number)
    if point.scale == 1.0 and low == 0:
        return raw % (high + 1)
    return min(max(raw, low), high)


_INT_LIMITS: Mapping[Encoding, tuple[int, int]] = {
    Encoding.UINT16: (0, 65535), Encoding.INT16: (-32768, 32767),
    Encoding.UINT32: (0, 2**32 - 1), Encoding.INT32: (-(2**31), 2**31 - 1),
}
_STRUCT_CODES: Mapping[Encoding, str] = {
    Encoding.UINT16: "H", Encoding.INT16: "h", Encoding.UINT32: "I", Encoding.INT32: "i", Encoding.FLOAT32: "f",
}


def _float32(value: Value) -> float:
    number = float(value)
    # float32 has no room above 3.4e38: saturate to infinity as a PLC's conversion would.
    return number if abs(number) < 3.4e38 or math.isnan(number) else math.copysign(math.inf, number)


def string_bytes(value: Value, length: int) -> bytes:
    """UTF-8 bytes of a string point, cut to ``length`` registers (never inside a character) and NUL-padded."""
    data = str(value).encode("utf-8")[: 2 * length]
    while data:
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:
            data = data[:-1]
    return data.ljust(2 * length, b"\x00")


def _swap_byte_pairs(data: bytes) -> bytes:
    swapped = bytearray(data)
    swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
    return bytes(swapped)


def encode(point: RegisterPoint, value: Value, word_order: WordOrder = WordOrder.ABCD) -> list[int] | list[bool]:
    """Raw register words (or bits) of ``value`` for ``point``: the reference encoder (one point at a time)."""
    encoding = point.encoding
    if encoding is Encoding.BOOL:
        return [bool(value)]
    if encoding is Encoding.STRING:
        data = string_bytes(value, point.length)
        return list(struct.unpack(f">{point.length}H", data))
    if encoding is Encoding.FLOAT32:
        if isinstance(value, str):
            raise TypeError(f"{point.point}: cannot encode a string as float32")
        raw: float | int = _float32(float(value) / point.scale)
    else:
        raw = _raw_int(point, value, *_INT_LIMITS[encoding])
    words = list(struct.unpack(f">{point.width}H", struct.pack(f">{_STRUCT_CODES[encoding]}", raw)))
    return words[::-1] if word_order is WordOrder.CDAB and len(words) == 2 else words


def _converter(point: RegisterPoint, word_order: WordOrder) -> Callable[[Value], object]:
    """The one-argument function that turns a model value into what ``struct`` packs for ``point``."""
    encoding = point.encoding
    if encoding is Encoding.STRING:
        length = point.length
        if word_order is WordOrder.CDAB:
            # The image is packed little-endian (see ImageEncoder); a string keeps its big-endian registers.
            return lambda value: _swap_byte_pairs(string_bytes(value, length))
        return lambda value: string_bytes(value, length)
    if encoding is Encoding.FLOAT32:
        if point.scale == 1.0:
            return float
        scale = point.scale
        return lambda value: float(value) / scale
    low, high = _INT_LIMITS[encoding]
    if point.scale == 1.0 and low == 0:
        modulo = high + 1

        def wrap(value: Value) -> int:
            return int(value) % modulo if type(value) is int else _raw_int(point, value, low, high)

        return wrap
    return lambda value: _raw_int(point, value, low, high)


class ImageEncoder:
    """Turns a values mapping into the content of every table, compiled once per register map.

    Each register table is packed by one ``struct`` call over a format with every point in address order and pad
    bytes for reserved addresses: per update there is one conversion per point and no per-point packing. Word
    order falls out of the byte order of the pack: big-endian packing read as big-endian registers is ABCD;
    little-endian packing read as little-endian registers keeps 16-bit values intact and swaps the two registers
    of a 32-bit value, which is CDAB (strings are pre-swapped so they stay big-endian per register).
    """

    def __init__(self, register_map: Sequence[RegisterPoint], *, word_order: WordOrder = WordOrder.ABCD) -> None:
        self._map = tuple(register_map)
        self._order = word_order
        self.sizes = table_sizes(self._map)
        prefix = "<" if word_order is WordOrder.CDAB else ">"
        # Registers come out of array('H') in native order; swap when that differs from the packing order.
        self._byteswap = (prefix == ">") == (sys.byteorder == "little")
        self._registers: dict[Table, tuple[struct.Struct, tuple[tuple[str, Callable[[Value], object]], ...]]] = {}
        for table in REGISTER_TABLES:
            points = sorted((p for p in self._map if p.table is table), key=lambda p: p.address)
            fmt = [prefix]
            cursor = 0
            items: list[tuple[str, Callable[[Value], object]]] = []
            for point in points:
                if point.address > cursor:
                    fmt.append(f"{2 * (point.address - cursor)}x")
                code = f"{2 * point.length}s" if point.encoding is Encoding.STRING else _STRUCT_CODES[point.encoding]
                fmt.append(code)
                items.append((point.point, _converter(point, word_order)))
                cursor = point.address + point.width
            if self.sizes[table] > cursor:
                fmt.append(f"{2 * (self.sizes[table] - cursor)}x")
            self._registers[table] = (struct.Struct("".join(fmt)), tuple(items))
        self._bits: dict[Table, tuple[tuple[int, str], ...]] = {
            table: tuple((p.address, p.point) for p in self._map if p.table is table) for table in BIT_TABLES
        }

    def registers(self, table: Table, values: Mapping[str, Value]) -> list[int]:
        packer, items = self._registers[table]
        try:
            data = packer.pack(*[convert(values[name]) for name, convert in items])
        except (struct.error, OverflowError, TypeError, ValueError):
            # A value outside what the fast path packs (a float beyond float32, a float in an int slot): the
            # reference encoder saturates it point by point.
            return self._slow_registers(table, values)
        words = array("H", data)
        if self._byteswap:
            words.byteswap()
        return words.tolist()

    def bits(self, table: Table, values: Mapping[str, Value]) -> list[bool]:
        image = [False] * self.sizes[table]
        for address, name in self._bits[table]:
            image[address] = bool(values[name])
        return image

    def images(self, values: Mapping[str, Value]) -> dict[Table, list[int] | list[bool]]:
        """The full content of every table for ``values`` (reserved addresses are 0 / False)."""
        out: dict[Table, list[int] | list[bool]] = {t: self.registers(t, values) for t in REGISTER_TABLES}
        for table in BIT_TABLES:
            out[table] = self.bits(table, values)
        return out

    def _slow_registers(self, table: Table, values: Mapping[str, Value]) -> list[int]:
        image = [0] * self.sizes[table]
        for point in self._map:
            if point.table is table:
                words = encode(point, values[point.point], self._order)
                image[point.address:point.address + point.width] = [int(w) for w in words]
        return image


def build_images(
    register_map: Sequence[RegisterPoint], values: Mapping[str, Value], *, word_order: WordOrder = WordOrder.ABCD
) -> dict[Table, list[int] | list[bool]]:
    """The full content of every table for ``values`` (one-off; servers keep an ``ImageEncoder``)."""
    return ImageEncoder(register_map, word_order=word_order).images(values)
