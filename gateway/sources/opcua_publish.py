"""Decoding of the PublishResponses that carry data changes, straight from the wire bytes to RawReadings.

Why not asyncua's decoder: profiled at 20,000 monitored items a second, its generic dataclass decoding of every
MonitoredItemNotification (a Variant, a DataValue and a datetime object each) plus the task it creates per
notification to call the handler cost over 60 % of the gateway's CPU. A PublishResponse full of data changes is
one of the simplest structures of the binary encoding (OPC UA Part 6, 5.2), so this module reads it with a few
precompiled ``struct`` formats and makes the readings at once, with exactly the meaning
``opcua_status.readings_from_data_value`` gives them (same quality, status text, value conversion and timestamp
choice; the tests compare the two on the same bytes).

The fast path covers the common case and nothing else: the response header without diagnostics, string table or
additional header, and only DataChangeNotifications. For any other response (a StatusChangeNotification, events,
diagnostics) ``decode_data_changes`` returns None and the caller lets asyncua decode it the ordinary way. Inside
a data change, scalars of the numeric types, Boolean and String are read here; every other value (arrays,
DateTime, LocalizedText, ExtensionObjects, ...) is decoded for that one item by asyncua's own Variant decoder.

Encoding note: DataValue fields follow the specification's order (Part 6, 5.2.2.17: SourceTimestamp,
SourcePicoseconds, ServerTimestamp, ServerPicoseconds). asyncua 2.1 itself writes and reads both picosecond
fields after both timestamps, which only matters when a server sends picoseconds; then this decoder and asyncua
disagree, and this one follows the specification (as open62541 and the reference stacks do).

Pure: bytes in, readings out; no I/O, no clock (``received_at`` is passed in).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import variant_from_binary

from gateway.schema import Quality, Value
from gateway.sources.base import RawReading
from gateway.sources.opcua_status import (
    _MAX_DATETIME_EPOCH,
    _MIN_DATETIME_EPOCH,
    UNSUPPORTED_TYPE_PREFIX,
    _shortest_float32,
    convert_variant,
    name_unsupported,
    quality_of_status,
)

__all__ = ["DataChanges", "decode_data_changes"]

_PUBLISH_RESPONSE = ObjectIds.PublishResponse_Encoding_DefaultBinary  # 829
_DATA_CHANGE_NOTIFICATION = ObjectIds.DataChangeNotification_Encoding_DefaultBinary  # 811

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_HANDLE_AND_MASK = struct.Struct("<IB")
# ResponseHeader up to the diagnostics mask: Timestamp, RequestHandle, ServiceResult, ServiceDiagnostics mask.
_RESPONSE_HEADER_HEAD = struct.Struct("<qIIB")
# The null AdditionalHeader: ExtensionObject with a two-byte NodeId 0 and encoding byte 0 (no body).
_NULL_EXTENSION_OBJECT = b"\x00\x00\x00"
# NotificationMessage head: SequenceNumber, PublishTime, NotificationData count.
_MESSAGE_HEAD = struct.Struct("<Iqi")
# An ExtensionObject head with a four-byte NodeId (0x01, namespace 0, id) and a binary body: encoding, length.
_FOUR_BYTE_TYPE_AND_BODY = struct.Struct("<BBHBi")

# DataValue encoding mask bits (Part 6, 5.2.2.17).
_HAS_VALUE = 0x01
_HAS_STATUS = 0x02
_HAS_SOURCE_TIMESTAMP = 0x04
_HAS_SERVER_TIMESTAMP = 0x08
_HAS_SOURCE_PICOSECONDS = 0x10
_HAS_SERVER_PICOSECONDS = 0x20

_VARIANT_ARRAY_BITS = 0xC0  # array values / array dimensions: decoded by asyncua
_STRING = 12
# Built-in type id -> its scalar format, for the types whose Python value is final as unpacked (Part 6, 5.1.2).
_PLAIN_SCALARS: dict[int, struct.Struct] = {
    1: struct.Struct("<?"),  # Boolean
    2: struct.Struct("<b"),  # SByte
    3: struct.Struct("<B"),  # Byte
    4: struct.Struct("<h"),  # Int16
    5: struct.Struct("<H"),  # UInt16
    6: struct.Struct("<i"),  # Int32
    7: struct.Struct("<I"),  # UInt32
    8: struct.Struct("<q"),  # Int64
    9: struct.Struct("<Q"),  # UInt64
    11: struct.Struct("<d"),  # Double
}
_FLOAT = 10
_FLOAT_FORMAT = struct.Struct("<f")

# DateTime: 100 ns ticks since 1601-01-01 UTC. asyncua keeps microseconds (ticks // 10); so does this.
_UNIX_EPOCH_IN_MICROSECONDS_SINCE_1601 = 11_644_473_600_000_000

_NULL_STATUS = f"{UNSUPPORTED_TYPE_PREFIX}Null"


@dataclass(frozen=True, slots=True)
class DataChanges:
    """What one PublishResponse of data changes held.

    ``readings`` are in notification order, one per tag of each item's client handle (several tags may read
    one node). ``unknown_handles`` counts notifications for a client handle not in the map (they are skipped).
    ``notifications`` is the number of DataChangeNotification structures (0 for a keep-alive), so the caller
    acknowledges only messages that carried some.
    """

    subscription_id: int
    sequence_number: int
    notifications: int
    items: int
    readings: list[RawReading]
    unknown_handles: int


class _NotFastPathError(Exception):
    """The response holds something the fast path does not cover: let asyncua decode it."""


def decode_data_changes(
    body: bytes,
    *,
    tags_by_handle: Mapping[int, tuple[str, ...]],
    received_at: float,
    type_names: Mapping[str, str] | None = None,
) -> DataChanges | None:
    """Readings from a PublishResponse body (starting at its type NodeId), or None when it is not a plain
    data-change response (see the module docstring). Raises ``ValueError`` for a truncated or malformed body."""
    try:
        return _decode(body, tags_by_handle, received_at, type_names)
    except _NotFastPathError:
        return None
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed PublishResponse: {exc}") from exc


def _decode(
    body: bytes,
    tags_by_handle: Mapping[int, tuple[str, ...]],
    received_at: float,
    type_names: Mapping[str, str] | None,
) -> DataChanges:
    position = _expect_type(body, 0, _PUBLISH_RESPONSE)
    # ResponseHeader. A Bad ServiceResult never gets here (asyncua's transport raises it as a ServiceFault).
    _timestamp, _request_handle, _service_result, diagnostics = _RESPONSE_HEADER_HEAD.unpack_from(body, position)
    position += _RESPONSE_HEADER_HEAD.size
    if diagnostics != 0:
        raise _NotFastPathError
    (strings,) = _I32.unpack_from(body, position)
    position += 4
    if strings > 0:
        raise _NotFastPathError
    if body[position : position + 3] != _NULL_EXTENSION_OBJECT:
        raise _NotFastPathError
    position += 3
    # PublishResult: SubscriptionId, AvailableSequenceNumbers, MoreNotifications, NotificationMessage, ...
    (subscription_id,) = _U32.unpack_from(body, position)
    (available,) = _I32.unpack_from(body, position + 4)
    position += 8 + 4 * max(available, 0) + 1
    sequence_number, _publish_time, notifications = _MESSAGE_HEAD.unpack_from(body, position)
    position += _MESSAGE_HEAD.size
    readings: list[RawReading] = []
    items = unknown = 0
    for _ in range(max(notifications, 0)):
        position, count, missing = _decode_data_change(
            body, position, tags_by_handle, received_at, readings, type_names)
        items += count
        unknown += missing
    # Results (of the acknowledgements sent with the request) and DiagnosticInfos follow; nothing in them
    # changes the readings, but they must be there: a body cut short is malformed, not a smaller message.
    (results,) = _I32.unpack_from(body, position)
    position += 4 + 4 * max(results, 0)
    _I32.unpack_from(body, position)
    return DataChanges(
        subscription_id=subscription_id,
        sequence_number=sequence_number,
        notifications=max(notifications, 0),
        items=items,
        readings=readings,
        unknown_handles=unknown,
    )


def _expect_type(body: bytes, position: int, type_id: int) -> int:
    """Position after a numeric NodeId in namespace 0 equal to ``type_id`` (four-byte or full encoding)."""
    encoding = body[position]
    if encoding == 0x01 and body[position + 1] == 0 and _U16.unpack_from(body, position + 2)[0] == type_id:
        return position + 4
    full_numeric = encoding == 0x02 and body[position + 1 : position + 3] == b"\x00\x00"
    if full_numeric and _U32.unpack_from(body, position + 3)[0] == type_id:
        return position + 7
    raise _NotFastPathError


def _decode_data_change(
    body: bytes,
    position: int,
    tags_by_handle: Mapping[int, tuple[str, ...]],
    received_at: float,
    readings: list[RawReading],
    type_names: Mapping[str, str] | None = None,
) -> tuple[int, int, int]:
    """One NotificationData ExtensionObject, which must be a DataChangeNotification: appends its readings and
    returns (position after it, items, items with an unknown handle)."""
    position = _expect_type(body, position, _DATA_CHANGE_NOTIFICATION)
    encoding = body[position]
    if encoding != 0x01:  # not a binary body
        raise _NotFastPathError
    (length,) = _I32.unpack_from(body, position + 1)
    position += 5
    end = position + length
    if length < 4 or end > len(body):
        raise ValueError(f"DataChangeNotification body of {length} bytes")
    (count,) = _I32.unpack_from(body, position)
    position += 4
    unknown = 0
    append = readings.append
    handle_and_mask = _HANDLE_AND_MASK.unpack_from
    for _ in range(max(count, 0)):
        handle, mask = handle_and_mask(body, position)
        position += 5
        value: Value | None = None
        problem: str | None = None
        if mask & _HAS_VALUE:
            value, problem, position = _variant(body, position)
        else:
            problem = _NULL_STATUS
        status_code = 0
        if mask & _HAS_STATUS:
            (status_code,) = _U32.unpack_from(body, position)
            position += 4
        source_ticks = server_ticks = 0
        if mask & _HAS_SOURCE_TIMESTAMP:
            (source_ticks,) = _I64.unpack_from(body, position)
            position += 8
        if mask & _HAS_SOURCE_PICOSECONDS:
            position += 2
        if mask & _HAS_SERVER_TIMESTAMP:
            (server_ticks,) = _I64.unpack_from(body, position)
            position += 8
        if mask & _HAS_SERVER_PICOSECONDS:
            position += 2
        tags = tags_by_handle.get(handle)
        if tags is None:
            unknown += 1
            continue
        ts = _epoch(source_ticks)
        if ts is None:
            ts = _epoch(server_ticks)
            if ts is None:
                ts = received_at
        if status_code == 0 and problem is None:
            for tag in tags:
                append(RawReading(tag, value, ts))
            continue
        quality, status = _quality(status_code)
        if quality is Quality.BAD:
            value = None  # OPC UA: the value of a Bad DataValue must be ignored
        elif problem is not None:
            quality, status, value = Quality.BAD, name_unsupported(problem, type_names) if type_names else problem, None
        for tag in tags:
            append(RawReading(tag, value, ts, quality, status))
    (diagnostics,) = _I32.unpack_from(body, position)
    if diagnostics > 0:
        raise _NotFastPathError
    return end, max(count, 0), unknown


def _variant(body: bytes, position: int) -> tuple[Value | None, str | None, int]:
    """(value, problem, position after the Variant): a converted scalar, or None and the reason it has none."""
    encoding = body[position]
    type_id = encoding & 0x3F
    if not encoding & _VARIANT_ARRAY_BITS:
        scalar = _PLAIN_SCALARS.get(type_id)
        if scalar is not None:
            return scalar.unpack_from(body, position + 1)[0], None, position + 1 + scalar.size
        if type_id == _FLOAT:
            return _shortest_float32(_FLOAT_FORMAT.unpack_from(body, position + 1)[0]), None, position + 5
        if type_id == _STRING:
            (length,) = _I32.unpack_from(body, position + 1)
            start = position + 5
            if length < 0:
                return None, _NULL_STATUS, start
            if start + length > len(body):
                raise ValueError("String runs past the end of the message")
            # Invalid UTF-8 (a Latin-1 PLC) becomes U+FFFD, as opcua_status._utf8_text does for asyncua's text.
            return body[start : start + length].decode("utf-8", "replace"), None, start + length
    # Anything else: asyncua decodes this one Variant, and the usual conversion names what is unsupported.
    buffer = Buffer(body, position)
    variant = variant_from_binary(buffer)
    value, problem = convert_variant(variant)
    return value, problem, buffer.cur_pos


def _epoch(ticks: int) -> float | None:
    """Epoch seconds of a DateTime, or None for Min/MaxDateTime (absent: the bounds opcua_status.source_time
    uses); microsecond resolution as asyncua's."""
    seconds = (ticks // 10 - _UNIX_EPOCH_IN_MICROSECONDS_SINCE_1601) / 1_000_000
    return seconds if _MIN_DATETIME_EPOCH < seconds < _MAX_DATETIME_EPOCH else None


@functools.lru_cache(maxsize=256)
def _quality(status_code: int) -> tuple[Quality, str | None]:
    # A handful of distinct codes occur in practice; their names are looked up once.
    return quality_of_status(ua.StatusCode(ua.UInt32(status_code)))
