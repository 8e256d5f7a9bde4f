"""Modbus read planning and register decoding: pure functions over plain values.

``plan_reads`` turns the tags of one Modbus unit (device id) into the few block reads that cover them, and
compiles, once, how every tag is cut out of its block. ``ReadRequest.decode`` then turns one response into
raw readings in a single pass over precomputed byte offsets: no string parsing, no type decisions per poll.

Addresses are 0-based protocol addresses. Worked example: the Modicon reference ``40001`` is holding register
0, so a float32 documented at ``41001..41002`` is ``table="holding", address=1000`` and occupies registers
1000 and 1001.

Byte/word orders use the letters of a 32-bit value ``0xAABBCCDD`` = bytes A B C D (A most significant) and
name the order in which the bytes appear on the wire, register by register:

* ``ABCD``: big-endian, registers in order (the Modbus default).
* ``CDAB``: word swapped: the low register comes first (many PLCs, e.g. "little" word order).
* ``BADC``: bytes swapped inside each register, registers in order.
* ``DCBA``: fully little-endian.

For 64-bit values the same rules generalise (``CDAB`` = register order reversed, ``BADC`` = bytes swapped inside
each register, ``DCBA`` = both). For 16-bit values ``CDAB`` is the same as ``ABCD`` and ``BADC`` the same as
``DCBA`` (bytes swapped). Strings and register bits ignore the order: strings are always two bytes per
register, high byte first, and bit n means ``(register >> n) & 1``.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from types import MappingProxyType
from typing import Final, TypeAlias

from gateway.schema import STATUS_DECODE_ERROR, Quality, Value
from gateway.sources.base import RawReading
from gateway.tagmap.limits import MAX_ADDRESS, MAX_BIT_INDEX, MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ
from gateway.vocabulary import ByteOrder, DataType, Table

# The read planner's default hole size; the protocol limits themselves live in gateway.tagmap.limits, shared with
# the tag-map validation.
DEFAULT_MAX_GAP: Final = 10

ValueType: TypeAlias = DataType
"""The planner's name for a tag's data type (the tag map's DataType)."""

TABLES: Final[tuple[Table, ...]] = tuple(Table)
BIT_TABLES: Final[frozenset[Table]] = frozenset({Table.COIL, Table.DISCRETE})
VALUE_TYPES: Final[tuple[ValueType, ...]] = tuple(DataType)
BYTE_ORDERS: Final[tuple[ByteOrder, ...]] = tuple(ByteOrder)

# struct format letter and width in registers of every fixed-size numeric type.
_NUMERIC: Final = MappingProxyType(
    {
        DataType.INT16: ("h", 1),
        DataType.UINT16: ("H", 1),
        DataType.INT32: ("i", 2),
        DataType.UINT32: ("I", 2),
        DataType.INT64: ("q", 4),
        DataType.UINT64: ("Q", 4),
        DataType.FLOAT32: ("f", 2),
        DataType.FLOAT64: ("d", 4),
    }
)

# A compiled decoder: the request's block (bytes of its registers, or the list of bits of a coil/discrete read)
# -> the raw value. It raises ValueError (UnicodeDecodeError is one) for data that cannot be decoded.
RegisterDecoder: TypeAlias = Callable[[bytes], Value]
BitDecoder: TypeAlias = Callable[[Sequence[bool]], Value]


def value_width(value_type: ValueType, length: int | None = None) -> int:
    """Registers (or bits, for a coil/discrete bool) one value of ``value_type`` occupies.

    ``length`` is the number of registers of a string (two characters each); ignored for other types.
    """
    if value_type == DataType.BOOL:
        return 1
    if value_type == DataType.STRING:
        if length is None or length < 1:
            raise ValueError("a string needs a length of at least 1 register")
        return length
    return _NUMERIC[value_type][1]


# ---------------------------------------------------------------------------------------------------- codec


def _byte_permutation(order: ByteOrder, registers: int) -> tuple[str, tuple[int, ...] | None]:
    """(struct endianness, byte permutation or None) that turns wire bytes into the value.

    ABCD is plain big-endian and DCBA plain little-endian, so neither needs a permutation. CDAB and BADC gather
    the bytes into big-endian order first: ``value_bytes[i] = wire_bytes[permutation[i]]``.
    """
    if order == ByteOrder.ABCD or (order == ByteOrder.CDAB and registers == 1):
        return ">", None
    if order == ByteOrder.DCBA or (order == ByteOrder.BADC and registers == 1):
        return "<", None
    if order == ByteOrder.CDAB:  # register order reversed, bytes inside each register kept
        return ">", tuple(2 * (registers - 1 - k) + b for k in range(registers) for b in (0, 1))
    # BADC: registers in order, the two bytes inside each register swapped
    return ">", tuple(2 * k + b for k in range(registers) for b in (1, 0))


@functools.lru_cache(maxsize=8192)
def compile_register_decoder(
    value_type: ValueType,
    *,
    byte_offset: int,
    order: ByteOrder = ByteOrder.ABCD,
    bit: int | None = None,
    length: int | None = None,
) -> RegisterDecoder:
    """Compile the decoder of one value that starts ``byte_offset`` bytes into a block of register bytes.

    The block is the registers packed big-endian (``struct.pack(">%dH", *registers)``), i.e. exactly the bytes
    on the wire. ``bit`` (0 = LSB) selects one bit of the register for a ``bool``; ``length`` is the number of
    registers of a ``string``. Every choice (format, offsets, permutation) is made here, once.

    Cached: decoders are pure functions of these arguments, and the channels of a rack repeat the same few
    (type, order, offset) combinations in every request; sharing them saves a closure per tag.
    """
    if value_type == DataType.BOOL:
        if bit is None or not 0 <= bit <= MAX_BIT_INDEX:
            raise ValueError(f"a bool in a register needs a bit 0..{MAX_BIT_INDEX}")
        # Bit n of the register value (high byte first on the wire): bits 8..15 live in the first byte.
        byte_index = byte_offset + (0 if bit >= 8 else 1)
        shift = bit % 8

        def decode_bit(block: bytes) -> Value:
            return bool((block[byte_index] >> shift) & 1)

        return decode_bit

    if value_type == DataType.STRING:
        end = byte_offset + 2 * value_width(DataType.STRING, length)

        def decode_string(block: bytes) -> Value:
            # Devices pad fixed-size string fields with NUL or space; invalid UTF-8 raises UnicodeDecodeError.
            return block[byte_offset:end].rstrip(b"\x00 ").decode("utf-8")

        return decode_string

    letter, registers = _NUMERIC[value_type]
    endian, permutation = _byte_permutation(order, registers)
    unpacker = _struct(endian + letter)
    if permutation is None:
        unpack_from = unpacker.unpack_from

        def decode_plain(block: bytes) -> Value:
            value: Value = unpack_from(block, byte_offset)[0]
            return value

        return decode_plain

    gather = itemgetter(*(byte_offset + index for index in permutation))  # >= 2 indices -> returns a tuple
    unpack = unpacker.unpack

    def decode_permuted(block: bytes) -> Value:
        value: Value = unpack(bytes(gather(block)))[0]
        return value

    return decode_permuted


@functools.lru_cache(maxsize=1024)
def _struct(fmt: str) -> struct.Struct:
    # Shared Struct objects: a few dozen field formats, and the block formats of ReadRequest, which repeat too
    # (the racks of a hall repeat one channel layout). Saves a Struct per field or read (MBs at 50k tags).
    return struct.Struct(fmt)


@functools.lru_cache(maxsize=64)  # shares the few (order, letter) pairs between the slots of every plan
def plain_format(value_type: ValueType, order: ByteOrder) -> tuple[str, str] | None:
    """(struct byte order, format letter) of a value whose wire bytes need no permutation, else None.

    Those are the numeric ABCD and DCBA values, and 16-bit CDAB/BADC ones (the same as ABCD/DCBA).
    """
    if value_type not in _NUMERIC:
        return None
    letter, registers = _NUMERIC[value_type]
    endian, permutation = _byte_permutation(order, registers)
    return None if permutation is not None else (endian, letter)


def compile_bit_decoder(*, offset: int) -> BitDecoder:
    """Decoder of one coil / discrete input ``offset`` bits into a bit read."""

    def decode_bit(bits: Sequence[bool]) -> Value:
        return bool(bits[offset])

    return decode_bit


def decode_value(
    registers: Sequence[int],
    value_type: ValueType,
    *,
    order: ByteOrder = ByteOrder.ABCD,
    bit: int | None = None,
) -> Value:
    """Decode one value from exactly its registers (a convenience for tools and tests; polling uses plans)."""
    length = len(registers) if value_type == DataType.STRING else None
    if len(registers) != value_width(value_type, length):
        raise ValueError(f"{value_type} needs {value_width(value_type, length)} registers, got {len(registers)}")
    block = struct.pack(f">{len(registers)}H", *registers)
    return compile_register_decoder(value_type, byte_offset=0, order=order, bit=bit, length=length)(block)


# ------------------------------------------------------------------------------------------------- planner


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusField:
    """One tag of a Modbus unit, as the planner needs it.

    ``key`` identifies the tag in the readings (the tag name). ``width`` is the number of registers the value
    occupies: required for ``string`` (its ``length``), otherwise optional and, when given, checked against the
    type. ``bit`` (0..15) is required for a ``bool`` in a holding/input register and forbidden elsewhere.
    """

    key: str
    table: Table
    address: int
    type: ValueType
    order: ByteOrder = ByteOrder.ABCD
    bit: int | None = None
    width: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadLimits:
    """How big one read may be, and how many unneeded registers (or bits) it may span between two tags."""

    max_registers_per_read: int = MAX_REGISTERS_PER_READ
    max_bits_per_read: int = MAX_BITS_PER_READ
    max_gap: int = DEFAULT_MAX_GAP


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanProblem:
    """A tag (or, with ``key`` None, a limit) the planner could not use. The tag is left out of the plan."""

    key: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key is not None else self.message


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSlot:
    """Where one tag sits in its read: ``offset`` registers (or bits) after the read's start.

    ``plain`` is the struct byte order and format letter (``(">", "f")``) of a numeric value that is its bytes
    read straight through in one endianness (ABCD or DCBA, and 16-bit CDAB/BADC): such values are unpacked for
    the whole block at once (see ``ReadRequest``). None for bits, strings and permuted (CDAB/BADC) values.
    """

    key: str
    address: int
    width: int
    offset: int
    decode: RegisterDecoder | BitDecoder
    plain: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadRequest:
    """One Modbus read (function 1, 2, 3 or 4) and the tags it serves, with their compiled decoders.

    Decoding is prepared here, once: ``unpacker`` is one ``struct.Struct`` over every plain numeric field of
    the block, in slot order, with pad bytes for the registers in between (e.g. ``>f2xhI`` for a float32 at
    offset 0, a skipped register, an int16 and a uint32), so a response is one ``unpack_from`` instead of a
    decoder call per tag. Fields that need decoding of their own (bits, strings, CDAB/BADC values, fields that
    overlap an earlier one, fields in the other endianness than the block's majority) keep their decoder.
    """

    table: Table
    start: int
    count: int
    slots: tuple[FieldSlot, ...]
    # ">{count}H": packs a full register response into the block bytes the decoders cut from; built once here.
    packer: struct.Struct = dataclasses.field(init=False, repr=False, compare=False)
    # Struct over the slots flagged in ``in_unpacker``, or None when no slot is plain (bit reads, odd mixes).
    unpacker: struct.Struct | None = dataclasses.field(init=False, repr=False, compare=False)
    in_unpacker: tuple[bool, ...] = dataclasses.field(init=False, repr=False, compare=False)
    slot_keys: tuple[str, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packer", struct.Struct(f">{self.count}H"))
        unpacker, in_unpacker = _block_unpacker(self.slots)
        object.__setattr__(self, "unpacker", unpacker)
        object.__setattr__(self, "in_unpacker", in_unpacker)
        object.__setattr__(self, "slot_keys", tuple(slot.key for slot in self.slots))

    @property
    def reads_bits(self) -> bool:
        return self.table in BIT_TABLES

    @property
    def end(self) -> int:
        """Last address read (inclusive)."""
        return self.start + self.count - 1

    @property
    def keys(self) -> tuple[str, ...]:
        return self.slot_keys

    def decode(self, values: Sequence[int] | Sequence[bool], *, ts: float) -> list[RawReading]:
        """Readings of every tag of this request from one response (``registers`` or ``bits``).

        ``ts`` is the time the response arrived. A value that cannot be decoded (invalid UTF-8, a response
        shorter than requested, a register outside 0..65535) gives a bad reading with status ``decode_error``;
        this never raises on bad data. Values are raw: no scale/offset, NaN and infinities kept as read.
        """
        if self.table in BIT_TABLES:
            # Bit responses are padded to a whole byte: more values than requested is normal.
            return self._decode_slots(values, len(values), ts)
        try:
            # A short or long response still decodes what it holds; only the exact size uses the prebuilt packer.
            packer = self.packer if len(values) == self.count else struct.Struct(f">{len(values)}H")
            block = packer.pack(*values)
        except struct.error:  # a register outside 0..65535: the response is not trustworthy as a whole
            return failed_readings(self, ts=ts, status=STATUS_DECODE_ERROR)
        return self.decode_block(block, ts=ts)

    def decode_block(self, block: bytes, *, ts: float) -> list[RawReading]:
        """Readings of every tag of this register request from the response's register bytes as on the wire
        (big-endian, ``2 * count`` bytes; a short block decodes what it holds, the rest ``decode_error``)."""
        unpacker = self.unpacker
        if unpacker is None or len(block) < self.packer.size:  # a short block: every slot checks its own bytes
            return self._decode_slots(block, len(block) // 2, ts)
        values = unpacker.unpack_from(block)
        if len(values) == len(self.slots):  # every tag is plain: the common case
            return _good_readings(self.slot_keys, values, ts)
        # A mix: plain values come from the unpack in slot order, the others from their own decoders.
        readings: list[RawReading] = []
        append = readings.append
        plain_values = iter(values)
        for slot, in_unpacker in zip(self.slots, self.in_unpacker, strict=True):
            if in_unpacker:
                append(_new_tuple(RawReading, (slot.key, next(plain_values), ts, _GOOD, None)))
            else:
                append(_decode_slot(slot, block, ts))
        return readings

    def _decode_slots(
        self, block: bytes | Sequence[int] | Sequence[bool], available: int, ts: float
    ) -> list[RawReading]:
        readings: list[RawReading] = []
        append = readings.append
        for slot in self.slots:
            if slot.offset + slot.width > available:
                append(_new_tuple(RawReading, (slot.key, None, ts, _BAD, STATUS_DECODE_ERROR)))
            else:
                append(_decode_slot(slot, block, ts))
        return readings


# RawReading is a NamedTuple; tuple.__new__(RawReading, (...)) builds one in C, skipping the Python __new__ that
# NamedTuple generates (once per reading on the hot path). Every field must be given, in order.
_new_tuple = tuple.__new__
# Module constants, not Quality.GOOD per value: a member read off its Enum class goes through the class's
# attribute lookup, a module global does not.
_GOOD: Final = Quality.GOOD
_BAD: Final = Quality.BAD


def _good_readings(keys: Iterable[str], values: Iterable[Value], ts: float) -> list[RawReading]:
    """A good RawReading per (key, value), all with time ``ts``; built entirely in C (no Python call per reading)."""
    return list(map(_new_tuple, repeat(RawReading), zip(keys, values, repeat(ts), repeat(_GOOD), repeat(None))))


def _decode_slot(slot: FieldSlot, block: bytes | Sequence[int] | Sequence[bool], ts: float) -> RawReading:
    try:
        value = slot.decode(block)  # type: ignore[arg-type]  # the table decides bytes vs bits, at plan time
    except (ValueError, IndexError, struct.error):
        return _new_tuple(RawReading, (slot.key, None, ts, _BAD, STATUS_DECODE_ERROR))
    return _new_tuple(RawReading, (slot.key, value, ts, _GOOD, None))


def _block_unpacker(slots: Sequence[FieldSlot]) -> tuple[struct.Struct | None, tuple[bool, ...]]:
    """One Struct over the plain slots of a register read, and which slots it covers.

    A struct format has one byte order, so the block takes the one most of its plain slots use; a slot in the
    other order, or one that starts before the previous plain slot ends (two tags on one register), keeps its
    own decoder. Slots come in address order, so the format's fields do too.
    """
    orders = [slot.plain[0] for slot in slots if slot.plain is not None]
    if not orders:
        return None, (False,) * len(slots)
    endian = max(("<", ">"), key=orders.count)  # ties: big-endian, the Modbus default
    fmt = [endian]
    covered: list[bool] = []
    cursor = 0  # byte offset where the format has got to
    for slot in slots:
        byte_offset = 2 * slot.offset
        if slot.plain is None or slot.plain[0] != endian or byte_offset < cursor:
            covered.append(False)
            continue
        if byte_offset > cursor:
            fmt.append(f"{byte_offset - cursor}x")
        fmt.append(slot.plain[1])
        cursor = byte_offset + 2 * slot.width
        covered.append(True)
    return _struct("".join(fmt)), tuple(covered)


def failed_readings(request: ReadRequest, *, ts: float, status: str) -> list[RawReading]:
    """A bad reading (no value, ``status``) for every tag of ``request``."""
    return [RawReading(tag=slot.key, value=None, ts=ts, quality=Quality.BAD, status=status) for slot in request.slots]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadPlan:
    """Every read of one Modbus unit, in address order per table, plus the tags that could not be planned."""

    unit_id: int
    requests: tuple[ReadRequest, ...]
    problems: tuple[PlanProblem, ...] = ()

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for request in self.requests for key in request.keys)


@dataclass(frozen=True, slots=True)
class _Checked:
    field: ModbusField
    width: int


def _field_problem(field: ModbusField, width_limit: int) -> tuple[int, str | None]:
    """(width, why the field cannot be planned or None)."""
    if field.table not in TABLES:
        return 0, f"unknown table {field.table!r}"
    if field.type not in VALUE_TYPES:
        return 0, f"unknown type {field.type!r}"
    if field.order not in BYTE_ORDERS:
        return 0, f"unknown order {field.order!r}"
    if field.table in BIT_TABLES:
        if field.type != DataType.BOOL:
            return 0, f"a {field.table} holds single bits: type must be bool, not {field.type}"
        if field.bit is not None:
            return 0, f"bit is only for holding/input registers, not {field.table}"
        if field.width not in (None, 1):
            return 0, f"a {field.table} is 1 bit wide, not {field.width}"
        width = 1
    else:
        if field.type == DataType.BOOL and field.bit is None:
            return 0, f"a bool in a register needs bit (0..{MAX_BIT_INDEX})"
        if field.bit is not None and field.type != DataType.BOOL:
            return 0, f"bit is only for bool, not {field.type}"
        if field.bit is not None and not 0 <= field.bit <= MAX_BIT_INDEX:
            return 0, f"bit {field.bit} outside 0..{MAX_BIT_INDEX}"
        if field.type == DataType.STRING:
            if field.width is None or field.width < 1:
                return 0, "a string needs a width (length) of at least 1 register"
            width = field.width
        else:
            width = value_width(field.type)
            if field.width is not None and field.width != width:
                return 0, f"{field.type} is {width} register(s) wide, not {field.width}"
    if not 0 <= field.address <= MAX_ADDRESS:
        return width, f"address {field.address} outside 0..{MAX_ADDRESS}"
    if field.address + width - 1 > MAX_ADDRESS:
        return width, f"{field.type} at {field.address} runs past address {MAX_ADDRESS}"
    if width > width_limit:
        unit = "bits" if field.table in BIT_TABLES else "registers"
        return width, f"{field.type} is {width} {unit} wide, more than one read may return ({width_limit})"
    return width, None


def _checked_limits(limits: ReadLimits) -> tuple[int, int, int, list[PlanProblem]]:
    problems: list[PlanProblem] = []

    def clamp(name: str, value: int, low: int, high: int) -> int:
        if low <= value <= high:
            return value
        problems.append(PlanProblem(key=None, message=f"{name} {value} outside {low}..{high}"))
        return min(max(value, low), high)

    registers = clamp("max_registers_per_read", limits.max_registers_per_read, 1, MAX_REGISTERS_PER_READ)
    bits = clamp("max_bits_per_read", limits.max_bits_per_read, 1, MAX_BITS_PER_READ)
    gap = clamp("max_gap", limits.max_gap, 0, MAX_ADDRESS)
    return registers, bits, gap, problems


def plan_reads(fields: Iterable[ModbusField], *, unit_id: int, limits: ReadLimits | None = None) -> ReadPlan:
    """Group the tags of one unit into as few reads as the limits allow, and compile their decoders.

    Rules: tables never share a read; fields are taken in address order and a read grows while it stays within
    ``max_registers_per_read`` / ``max_bits_per_read`` and the hole between the end of what it covers and the
    next field is at most ``max_gap``; a multi-register value is never split across reads; tags may overlap
    (two bits of one status word, the same register as int16 and uint16). Tags that cannot be planned (wider
    than one read, bad table/type/bit combination, duplicate key) are left out and reported in ``problems``.
    """
    max_registers, max_bits, max_gap, problems = _checked_limits(limits or ReadLimits())
    by_table: dict[Table, list[_Checked]] = {table: [] for table in TABLES}
    seen: set[str] = set()
    for field in fields:
        if field.key in seen:
            problems.append(PlanProblem(key=field.key, message="duplicate tag key, only the first is read"))
            continue
        seen.add(field.key)
        width_limit = max_bits if field.table in BIT_TABLES else max_registers
        width, problem = _field_problem(field, width_limit)
        if problem is not None:
            problems.append(PlanProblem(key=field.key, message=problem))
            continue
        by_table[field.table].append(_Checked(field, width))

    requests: list[ReadRequest] = []
    for table in TABLES:
        checked = sorted(by_table[table], key=lambda c: (c.field.address, c.width))
        size_limit = max_bits if table in BIT_TABLES else max_registers
        group: list[_Checked] = []
        start = end = 0  # the current group covers addresses start .. end-1
        for item in checked:
            address = item.field.address
            item_end = address + item.width
            if group and address - end <= max_gap and max(end, item_end) - start <= size_limit:
                group.append(item)
                end = max(end, item_end)
                continue
            if group:
                requests.append(_compile_request(table, start, end - start, group))
            group, start, end = [item], address, item_end
        if group:
            requests.append(_compile_request(table, start, end - start, group))
    return ReadPlan(unit_id=unit_id, requests=tuple(requests), problems=tuple(problems))


def _compile_request(table: Table, start: int, count: int, group: list[_Checked]) -> ReadRequest:
    slots: list[FieldSlot] = []
    for item in group:
        field = item.field
        offset = field.address - start
        decode: RegisterDecoder | BitDecoder
        plain: tuple[str, str] | None = None
        if table in BIT_TABLES:
            decode = compile_bit_decoder(offset=offset)
        else:
            decode = compile_register_decoder(
                field.type, byte_offset=2 * offset, order=field.order, bit=field.bit, length=item.width
            )
            plain = plain_format(field.type, field.order)
        slots.append(
            FieldSlot(key=field.key, address=field.address, width=item.width, offset=offset, decode=decode, plain=plain)
        )
    return ReadRequest(table=table, start=start, count=count, slots=tuple(slots))


def describe_plan(plan: ReadPlan) -> list[str]:
    """One line per read, e.g. ``unit 1 holding 1000..1124 (125 regs, 40 tags)``, for ``cellgate check``."""
    lines: list[str] = []
    for request in plan.requests:
        noun = "bit" if request.reads_bits else "reg"
        tags = len(request.slots)
        lines.append(
            f"unit {plan.unit_id} {request.table} {request.start}..{request.end} "
            f"({request.count} {noun}{'' if request.count == 1 else 's'}, {tags} tag{'' if tags == 1 else 's'})"
        )
    return lines
