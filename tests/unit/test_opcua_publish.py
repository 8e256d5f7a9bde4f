"""The fast PublishResponse decoder gives exactly the readings asyncua's decoder + readings_from_data_value give.

Responses are encoded by asyncua's own encoder (what an asyncua server sends), decoded both ways and compared.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta

import pytest
from asyncua import ua
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.schema import Quality
from gateway.sources.base import RawReading
from gateway.sources.opcua_publish import decode_data_changes
from gateway.sources.opcua_status import readings_from_data_value

RECEIVED_AT = 1_780_000_000.25
MOMENT = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)


def publish_response(items: list[ua.MonitoredItemNotification], *, subscription_id: int = 7,
                     sequence_number: int = 42, extra: list[object] | None = None) -> bytes:  # fmt: skip
    notifications: list[object] = [ua.DataChangeNotification(MonitoredItems=items)] if items else []
    notifications += extra or []
    response = ua.PublishResponse()
    response.Parameters = ua.PublishResult(
        SubscriptionId=subscription_id,
        AvailableSequenceNumbers=[sequence_number - 1, sequence_number],
        NotificationMessage=ua.NotificationMessage(
            SequenceNumber=sequence_number, PublishTime=MOMENT, NotificationData=notifications
        ),
    )
    return struct_to_binary(response)


def asyncua_readings(body: bytes, tags_by_handle: dict[int, tuple[str, ...]]) -> list[RawReading]:
    from asyncua.common.utils import Buffer

    response = struct_from_binary(ua.PublishResponse, Buffer(body))
    readings: list[RawReading] = []
    for notification in response.Parameters.NotificationMessage.NotificationData:
        for item in notification.MonitoredItems:
            tags = tags_by_handle.get(item.ClientHandle)
            if tags is not None:
                readings += readings_from_data_value(tags, item.Value, received_at=RECEIVED_AT)
    return readings


def same_readings(fast: list[RawReading], slow: list[RawReading]) -> bool:
    if len(fast) != len(slow):
        return False
    for a, b in zip(fast, slow, strict=True):
        if (a.tag, a.quality, a.status, a.ts) != (b.tag, b.quality, b.status, b.ts):
            return False
        if isinstance(a.value, float) and isinstance(b.value, float) and math.isnan(a.value):
            if not math.isnan(b.value):
                return False
        elif a.value != b.value or type(a.value) is not type(b.value):
            return False
    return True


SCALARS = st.one_of(
    st.booleans().map(lambda v: ua.Variant(v, ua.VariantType.Boolean)),
    st.integers(-128, 127).map(lambda v: ua.Variant(v, ua.VariantType.SByte)),
    st.integers(0, 255).map(lambda v: ua.Variant(v, ua.VariantType.Byte)),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: ua.Variant(v, ua.VariantType.Int16)),
    st.integers(0, 2**16 - 1).map(lambda v: ua.Variant(v, ua.VariantType.UInt16)),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: ua.Variant(v, ua.VariantType.Int32)),
    st.integers(0, 2**32 - 1).map(lambda v: ua.Variant(v, ua.VariantType.UInt32)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: ua.Variant(v, ua.VariantType.Int64)),
    st.integers(0, 2**64 - 1).map(lambda v: ua.Variant(v, ua.VariantType.UInt64)),
    st.floats(width=32).map(lambda v: ua.Variant(v, ua.VariantType.Float)),
    st.floats().map(lambda v: ua.Variant(v, ua.VariantType.Double)),
    st.text(max_size=20).map(lambda v: ua.Variant(v, ua.VariantType.String)),
    st.just(ua.Variant(None, ua.VariantType.String)),
    st.just(ua.Variant(None, ua.VariantType.Null)),
    st.lists(st.floats(allow_nan=False), max_size=3).map(lambda v: ua.Variant(v, ua.VariantType.Double)),
    st.just(ua.Variant(ua.LocalizedText("Läuft"), ua.VariantType.LocalizedText)),
    st.just(ua.Variant(MOMENT, ua.VariantType.DateTime)),
    st.just(ua.Variant(b"\x00\xff", ua.VariantType.ByteString)),
)
STATUSES = st.sampled_from(
    [
        None,
        ua.StatusCodes.Good,
        ua.StatusCodes.UncertainLastUsableValue,
        ua.StatusCodes.BadCommunicationError,
        ua.StatusCodes.BadSensorFailure,
        ua.StatusCodes.GoodClamped,
    ]
)
TIMESTAMPS = st.one_of(
    st.none(),
    st.just(MOMENT),
    st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(9000, 1, 1)).map(
        lambda d: d.replace(tzinfo=UTC)
    ),
    st.just(datetime(1601, 1, 1, tzinfo=UTC)),
)


@st.composite
def notifications(draw: st.DrawFn) -> ua.MonitoredItemNotification:
    status = draw(STATUSES)
    data_value = ua.DataValue(
        draw(SCALARS),
        ua.StatusCode(status) if status is not None else None,
        SourceTimestamp=draw(TIMESTAMPS),
        ServerTimestamp=draw(TIMESTAMPS),
    )
    return ua.MonitoredItemNotification(ClientHandle=draw(st.integers(1, 6)), Value=data_value)


TAGS_BY_HANDLE = {1: ("a",), 2: ("b", "b_copy"), 3: ("c",), 4: ("d",), 5: ("e",)}  # 6: unknown


@settings(max_examples=300, deadline=None)
@given(st.lists(notifications(), max_size=12))
def test_fast_decoder_matches_asyncua_for_any_data_change(items: list[ua.MonitoredItemNotification]) -> None:
    body = publish_response(items)
    decoded = decode_data_changes(body, tags_by_handle=TAGS_BY_HANDLE, received_at=RECEIVED_AT)
    assert decoded is not None
    expected = asyncua_readings(body, TAGS_BY_HANDLE)
    assert same_readings(decoded.readings, expected), (decoded.readings, expected)
    assert decoded.items == len(items)
    assert decoded.unknown_handles == sum(1 for item in items if item.ClientHandle not in TAGS_BY_HANDLE)
    assert (decoded.subscription_id, decoded.sequence_number) == (7, 42)
    assert decoded.notifications == (1 if items else 0)


def test_common_double_with_source_timestamp_is_good_and_timestamped() -> None:
    item = ua.MonitoredItemNotification(
        ClientHandle=1,
        Value=ua.DataValue(ua.Variant(12.5, ua.VariantType.Double), SourceTimestamp=MOMENT, ServerTimestamp=MOMENT),
    )
    decoded = decode_data_changes(publish_response([item]), tags_by_handle=TAGS_BY_HANDLE, received_at=RECEIVED_AT)
    assert decoded is not None
    assert decoded.readings == [RawReading("a", 12.5, MOMENT.timestamp(), Quality.GOOD, None)]


def test_keep_alive_has_no_notifications() -> None:
    decoded = decode_data_changes(publish_response([]), tags_by_handle=TAGS_BY_HANDLE, received_at=RECEIVED_AT)
    assert decoded is not None
    assert (decoded.notifications, decoded.items, decoded.readings) == (0, 0, [])


def test_status_change_notification_is_left_to_asyncua() -> None:
    status_change = ua.StatusChangeNotification(Status=ua.StatusCode(ua.StatusCodes.BadTimeout))
    item = ua.MonitoredItemNotification(ClientHandle=1, Value=ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))
    body = publish_response([item], extra=[status_change])
    assert decode_data_changes(body, tags_by_handle=TAGS_BY_HANDLE, received_at=RECEIVED_AT) is None


def test_other_responses_are_left_to_asyncua() -> None:
    read = struct_to_binary(ua.ReadResponse())
    assert decode_data_changes(read, tags_by_handle=TAGS_BY_HANDLE, received_at=RECEIVED_AT) is None


def test_truncated_response_is_a_value_error_not_a_crash() -> None:
    item = ua.MonitoredItemNotification(
        ClientHandle=1, Value=ua.DataValue(ua.Variant("text", ua.VariantType.String), SourceTimestamp=MOMENT)
    )
    body = publish_response([item, item])
    for cut in range(len(body) - 1, 40, -7):
        with pytest.raises(ValueError, match=r"malformed PublishResponse|DataChangeNotification body|past the end"):
            decode_data_changes(body[:cut], tags_by_handle=TAGS_BY_HANDLE, received_at=RECEIVED_AT)


def test_picoseconds_are_read_in_the_specification_order() -> None:
    """Part 6, 5.2.2.17: SourceTimestamp, SourcePicoseconds, ServerTimestamp, ServerPicoseconds. Built by hand:
    asyncua 2.1 writes both picosecond fields last."""
    source = MOMENT
    server = MOMENT + timedelta(seconds=3)
    ticks = struct.Struct("<q")

    def to_ticks(moment: datetime) -> bytes:
        return ticks.pack(int((moment - datetime(1601, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)) * 10)

    data_value = (
        bytes([0x01 | 0x04 | 0x08 | 0x10 | 0x20, 11])
        + struct.pack("<d", 3.25)
        + to_ticks(source)
        + struct.pack("<H", 500)
        + to_ticks(server)
        + struct.pack("<H", 700)
    )
    placeholder = ua.MonitoredItemNotification(
        ClientHandle=3,
        Value=ua.DataValue(ua.Variant(3.25, ua.VariantType.Double), SourceTimestamp=source, ServerTimestamp=server),
    )
    encoded_placeholder = struct_to_binary(placeholder.Value)
    body = publish_response([placeholder])
    assert body.count(encoded_placeholder) == 1
    # Swap the encoded DataValue for the hand-made one and fix the ExtensionObject's body length to match.
    start = body.index(encoded_placeholder)
    prefix = body[:start]
    length_field = prefix.rfind(b"\x01\x00\x2b\x03\x01")  # NodeId 811 (0x032b) four-byte + binary body
    assert length_field >= 0
    old_length = struct.unpack_from("<i", body, length_field + 5)[0]
    patched = (
        body[: length_field + 5]
        + struct.pack("<i", old_length + len(data_value) - len(encoded_placeholder))
        + body[length_field + 9 : start]
        + data_value
        + body[start + len(encoded_placeholder) :]
    )
    decoded = decode_data_changes(patched, tags_by_handle=TAGS_BY_HANDLE, received_at=RECEIVED_AT)
    assert decoded is not None
    assert decoded.readings == [RawReading("c", 3.25, source.timestamp(), Quality.GOOD, None)]
