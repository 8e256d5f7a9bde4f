from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from enum import IntEnum
from typing import Any, cast

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from gateway.schema import Quality, Value
from gateway.sources.base import RawReading
from gateway.sources.opcua_status import (
    STATUS_NAMESPACE_UNKNOWN,
    STATUS_NODE_ID_INVALID,
    OpcUaDeviceOptions,
    OpcUaTagRef,
    TagProblem,
    convert_value,
    convert_variant,
    datetime_to_epoch,
    max_nodes_per_read,
    node_id_of,
    plan_nodes,
    quality_of_status,
    readings_from_data_value,
    source_time,
    status_name,
    subscription_timing,
)


def _code(value: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(value))


def _time(moment: datetime) -> ua.DateTime:
    # asyncua types timestamps as its DateTime subclass; any aware (or naive UTC) datetime works at runtime
    return cast(ua.DateTime, moment)


def _node(identifier: int | str | uuid.UUID | bytes, ns: int, kind: ua.NodeIdType) -> ua.NodeId:
    typed: ua.Int32 | ua.String | ua.Guid | ua.ByteString
    if isinstance(identifier, int):
        typed = ua.Int32(identifier)
    elif isinstance(identifier, str):
        typed = ua.String(identifier)
    elif isinstance(identifier, uuid.UUID):
        typed = ua.Guid(str(identifier))
    else:
        typed = ua.ByteString(identifier)
    return ua.NodeId(typed, ua.Int16(ns), kind)


# ------------------------------------------------------------------------------------- status codes


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, (Quality.GOOD, None)),
        (_code(StatusCodes.Good), (Quality.GOOD, None)),
        (StatusCodes.GoodClamped, (Quality.GOOD, None)),
        (StatusCodes.Good | 0x480, (Quality.GOOD, None)),  # info bits (overflow, limit) on a Good code
        (StatusCodes.UncertainLastUsableValue, (Quality.UNCERTAIN, "UncertainLastUsableValue")),
        (_code(StatusCodes.UncertainSensorNotAccurate), (Quality.UNCERTAIN, "UncertainSensorNotAccurate")),
        (StatusCodes.Uncertain, (Quality.UNCERTAIN, "Uncertain")),
        (_code(StatusCodes.BadSensorFailure), (Quality.BAD, "BadSensorFailure")),
        (StatusCodes.BadNodeIdUnknown, (Quality.BAD, "BadNodeIdUnknown")),
        (StatusCodes.BadOutOfService | 0x0400, (Quality.BAD, "BadOutOfService")),  # info bits ignored for the name
        (0x80FF0000, (Quality.BAD, "0x80FF0000")),  # unknown Bad code
        (0xC0010000, (Quality.BAD, "0xC0010000")),  # reserved severity 11 counts as bad (Part 4 §7.34.1)
        (0x40FF0000, (Quality.UNCERTAIN, "0x40FF0000")),
    ],
)
def test_quality_of_status(code: ua.StatusCode | int | None, expected: tuple[Quality, str | None]) -> None:
    assert quality_of_status(code) == expected


def test_quality_of_status_uses_given_name() -> None:
    assert quality_of_status(0x808C0000, "BadSensorFailure") == (Quality.BAD, "BadSensorFailure")
    assert quality_of_status(0x00000000, "Good") == (Quality.GOOD, None)


def test_status_name_of_known_and_unknown_codes() -> None:
    assert status_name(StatusCodes.BadTooManyOperations) == "BadTooManyOperations"
    assert status_name(0x80FF0000) == "0x80FF0000"


# ------------------------------------------------------------------------------------------- values


class _Mode(IntEnum):
    RUN = 3


_DT = datetime(2026, 11, 26, 4, 43, 0, 123456, tzinfo=UTC)
_GUID = uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        (ua.Variant(3.25, ua.VariantType.Double), (3.25, None)),
        (ua.Variant(3.7, ua.VariantType.Float), (3.7, None)),  # float32 rounding is hidden
        (ua.Variant(-7, ua.VariantType.Int32), (-7, None)),
        (ua.Variant(2**64 - 1, ua.VariantType.UInt64), (2**64 - 1, None)),
        (ua.Variant(200, ua.VariantType.Byte), (200, None)),
        (ua.Variant(True, ua.VariantType.Boolean), (True, None)),
        (ua.Variant(False, ua.VariantType.Boolean), (False, None)),
        (ua.Variant("NMC811", ua.VariantType.String), ("NMC811", None)),
        (ua.Variant("", ua.VariantType.String), ("", None)),
        (ua.Variant(ua.LocalizedText("Drying", "en"), ua.VariantType.LocalizedText), ("Drying", None)),
        (ua.Variant(ua.LocalizedText(None), ua.VariantType.LocalizedText), ("", None)),
        (ua.Variant(_DT, ua.VariantType.DateTime), ("2026-11-26T04:43:00.123Z", None)),
        (ua.Variant(b"\x00\xffAB", ua.VariantType.ByteString), ("AP9BQg==", None)),  # base64
        (ua.Variant(_GUID, ua.VariantType.Guid), (str(_GUID), None)),
        (ua.Variant(_node("a.b", 2, ua.NodeIdType.String), ua.VariantType.NodeId), ("ns=2;s=a.b", None)),
        (ua.Variant(ua.QualifiedName("Speed", 3), ua.VariantType.QualifiedName), ("3:Speed", None)),
        (ua.Variant(_code(StatusCodes.BadTimeout), ua.VariantType.StatusCode), ("BadTimeout", None)),
        (ua.Variant(None), (None, "unsupported_type:Null")),
        (None, (None, "unsupported_type:Null")),
        # Arrays are JSON arrays, matrices nested lists; structures objects with their field names.
        (ua.Variant([1.0, 2.0], ua.VariantType.Double), ([1.0, 2.0], None)),
        (ua.Variant([], ua.VariantType.Int32), ([], None)),
        (ua.Variant([1, 2, 3, 4, 5, 6], ua.VariantType.Int32, Dimensions=[2, 3]), ([[1, 2, 3], [4, 5, 6]], None)),
        (ua.Variant([1, 2, 3, 4, 5], ua.VariantType.Int32, Dimensions=[2, 3]), (None, "decode_error")),
        (ua.Variant([1.5, 2.5], ua.VariantType.Float), ([1.5, 2.5], None)),
        (ua.Variant(ua.ExtensionObject(TypeId=_node(3002, 2, ua.NodeIdType.Numeric)), ua.VariantType.ExtensionObject),
         (None, "unsupported_type:ExtensionObject[ns=2;i=3002]")),
        (ua.Variant(ua.Range(Low=0.0, High=1.0)), ({"Low": 0.0, "High": 1.0}, None)),  # decoded structure
        (ua.Variant([ua.Range(Low=0.0, High=1.0), ua.Range(Low=2.0, High=3.0)]),
         ([{"Low": 0.0, "High": 1.0}, {"Low": 2.0, "High": 3.0}], None)),
        (ua.Variant(ua.EUInformation(NamespaceUri="u", UnitId=1, DisplayName=ua.LocalizedText("V"),
                                     Description=ua.LocalizedText("volt"))),
         ({"NamespaceUri": "u", "UnitId": 1, "DisplayName": "V", "Description": "volt"}, None)),
    ],
)
def test_convert_variant(variant: ua.Variant | None, expected: tuple[object, str | None]) -> None:
    value, problem = convert_variant(variant)
    assert (value, problem) == expected
    assert type(value) is type(expected[0])  # no bool/int or IntEnum/int confusion


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_Mode.RUN, (3, None)),  # IntEnum becomes a plain int
        (bytearray(b"\x01"), ("AQ==", None)),
        (datetime(2026, 1, 1, 0, 0, 0), ("2026-01-01T00:00:00.000Z", None)),  # naive = UTC
        (datetime(2026, 1, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=2))), ("2026-01-01T00:00:00.000Z", None)),
        (object(), (None, "unsupported_type:object")),
        ({"a": 1}, (None, "unsupported_type:dict")),
        ([1, 2], ([1, 2], None)),
        ([1, object()], (None, "unsupported_type:Array[object]")),
        (complex(1, 2), (None, "unsupported_type:complex")),
    ],
)
def test_convert_value_without_variant_type(raw: object, expected: tuple[object, str | None]) -> None:
    value, problem = convert_value(raw)
    assert (value, problem) == expected
    assert type(value) is type(expected[0])


@pytest.mark.parametrize(
    ("raw", "expected"), [(float("nan"), "nan"), (float("inf"), "inf"), (3.4028234663852886e38, None)]
)
def test_float32_specials_pass_through(raw: float, expected: str | None) -> None:
    value, problem = convert_value(raw, ua.VariantType.Float)
    assert problem is None
    assert isinstance(value, float)
    if expected is None:
        assert value == pytest.approx(raw, rel=1e-6)
    else:
        assert str(value) == expected


# --------------------------------------------------------------------------------------- timestamps

_SRC = datetime(2026, 11, 26, 4, 0, 0, 500000, tzinfo=UTC)
_SRV = datetime(2026, 11, 26, 4, 0, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data_value", "expected"),
    [
        (ua.DataValue(ua.Variant(1.0), SourceTimestamp=_time(_SRC), ServerTimestamp=_time(_SRV)), _SRC.timestamp()),
        (ua.DataValue(ua.Variant(1.0), ServerTimestamp=_time(_SRV)), _SRV.timestamp()),
        (ua.DataValue(ua.Variant(1.0)), 42.0),
        (None, 42.0),
        (ua.DataValue(ua.Variant(1.0), SourceTimestamp=_time(datetime(1970, 1, 1, 0, 1))), 60.0),  # naive = UTC
    ],
)
def test_source_time_prefers_source_then_server_then_receive(data_value: ua.DataValue | None, expected: float) -> None:
    assert source_time(data_value, received_at=42.0) == expected


def test_datetime_to_epoch() -> None:
    assert datetime_to_epoch(datetime(2026, 1, 1, tzinfo=UTC)) == 1767225600.0


def _dv(value: Any, vtype: ua.VariantType, status: int = StatusCodes.Good) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vtype), StatusCode=_code(status), SourceTimestamp=_time(_SRC))


@pytest.mark.parametrize(
    ("data_value", "value", "quality", "status"),
    [
        (_dv(21.5, ua.VariantType.Double), 21.5, Quality.GOOD, None),
        (_dv(0.0, ua.VariantType.Double, StatusCodes.BadSensorFailure), None, Quality.BAD, "BadSensorFailure"),
        (
            _dv(9.5, ua.VariantType.Double, StatusCodes.UncertainLastUsableValue),
            9.5,
            Quality.UNCERTAIN,
            "UncertainLastUsableValue",
        ),
        (_dv([1, 2], ua.VariantType.Int32), [1, 2], Quality.GOOD, None),
        (
            _dv([1, 2], ua.VariantType.Int32, StatusCodes.UncertainInitialValue),
            [1, 2],
            Quality.UNCERTAIN,
            "UncertainInitialValue",
        ),
        (ua.DataValue(StatusCode=_code(StatusCodes.BadNodeIdUnknown)), None, Quality.BAD, "BadNodeIdUnknown"),
        (None, None, Quality.BAD, "unsupported_type:Null"),
    ],
)
def test_readings_from_data_value(
    data_value: ua.DataValue | None, value: Value | None, quality: Quality, status: str | None
) -> None:
    readings = readings_from_data_value(("a", "b"), data_value, received_at=1.0)
    expected_ts = _SRC.timestamp() if data_value is not None and data_value.SourceTimestamp else 1.0
    assert readings == [
        RawReading(tag="a", value=value, ts=expected_ts, quality=quality, status=status),
        RawReading(tag="b", value=value, ts=expected_ts, quality=quality, status=status),
    ]


# ---------------------------------------------------------------------------------- node planning

_NS = ["http://opcfoundation.org/UA/", "urn:server:local", "urn:cellgate:test", "urn:other"]


def _ref(name: str, identifier: str | int = "X", kind: Any = "s", **ns: Any) -> OpcUaTagRef:
    return OpcUaTagRef(name=name, kind=kind, identifier=identifier, **ns)


def test_plan_resolves_namespaces_by_rule() -> None:
    tags = [
        _ref("by_uri", "A", namespace_uri="urn:other"),
        _ref("by_index", "B", namespace_index=1),
        _ref("by_device", "C"),
        _ref("numeric", 2256, kind="i"),
    ]
    plan = plan_nodes(tags, device_namespace_uri="urn:cellgate:test", namespace_array=_NS)
    assert plan.problems == ()
    assert [(p.node_id.NamespaceIndex, p.node_id.Identifier, p.tags) for p in plan.nodes] == [
        (3, "A", ("by_uri",)),
        (1, "B", ("by_index",)),
        (2, "C", ("by_device",)),
        (2, 2256, ("numeric",)),
    ]


def test_plan_without_any_namespace_uses_ns0() -> None:
    plan = plan_nodes([_ref("state", 2259, kind="i")], device_namespace_uri=None, namespace_array=_NS)
    assert plan.nodes[0].node_id == _node(2259, 0, ua.NodeIdType.Numeric)


def test_plan_follows_a_reordered_namespace_array() -> None:
    """After a server restart the same URI may have another index: the plan must follow the URI."""
    tags = [_ref("t", "Temperature")]
    before = plan_nodes(tags, device_namespace_uri="urn:cellgate:test", namespace_array=_NS)
    after = plan_nodes(
        tags, device_namespace_uri="urn:cellgate:test", namespace_array=[*_NS[:2], "urn:decoy", *_NS[2:]]
    )
    assert before.nodes[0].node_id.NamespaceIndex == 2
    assert after.nodes[0].node_id.NamespaceIndex == 3


def test_plan_reports_unknown_namespaces_and_invalid_ids_without_raising() -> None:
    tags = [
        _ref("gone", namespace_uri="urn:not-there"),
        _ref("dev_gone"),  # device namespace not on this server
        _ref("index_too_big", namespace_index=9),
        _ref("bad_guid", "not-a-guid", kind="g", namespace_index=2),
        _ref("bad_opaque", "***", kind="b", namespace_index=2),
        _ref("ok", "Fine", namespace_index=2),
    ]
    plan = plan_nodes(tags, device_namespace_uri="urn:missing", namespace_array=_NS)
    assert plan.problems == (
        TagProblem("gone", STATUS_NAMESPACE_UNKNOWN),
        TagProblem("dev_gone", STATUS_NAMESPACE_UNKNOWN),
        TagProblem("index_too_big", STATUS_NAMESPACE_UNKNOWN),
        TagProblem("bad_guid", STATUS_NODE_ID_INVALID),
        TagProblem("bad_opaque", STATUS_NODE_ID_INVALID),
    )
    assert [p.tags for p in plan.nodes] == [("ok",)]


def test_plan_groups_tags_that_name_the_same_node() -> None:
    tags = [
        _ref("a", "N", namespace_index=2),
        _ref("b", "M", namespace_index=2),
        _ref("c", "N", namespace_uri="urn:cellgate:test"),
    ]
    plan = plan_nodes(tags, device_namespace_uri=None, namespace_array=_NS)
    assert [p.tags for p in plan.nodes] == [("a", "c"), ("b",)]
    assert plan.tags_by_node()[_node("N", 2, ua.NodeIdType.String)] == ("a", "c")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (_ref("n", 85, kind="i"), _node(85, 4, ua.NodeIdType.Numeric)),
        (_ref("n", "85", kind="i"), _node(85, 4, ua.NodeIdType.Numeric)),
        (_ref("s", "Line.Speed"), _node("Line.Speed", 4, ua.NodeIdType.String)),
        (_ref("g", str(_GUID), kind="g"), _node(_GUID, 4, ua.NodeIdType.Guid)),
        (
            _ref("b", base64.b64encode(b"\x01\x02").decode(), kind="b"),
            _node(b"\x01\x02", 4, ua.NodeIdType.ByteString),
        ),
    ],
)
def test_node_id_of_each_kind(ref: OpcUaTagRef, expected: ua.NodeId) -> None:
    node_id = node_id_of(ref, 4)
    assert node_id == expected
    assert node_id.NodeIdType == expected.NodeIdType


@pytest.mark.parametrize(
    ("data_value", "expected"),
    [
        (ua.DataValue(ua.Variant(250, ua.VariantType.UInt32)), 250),
        (ua.DataValue(ua.Variant(0, ua.VariantType.UInt32)), 0),
        (ua.DataValue(StatusCode=_code(StatusCodes.BadNodeIdUnknown)), 0),
        (ua.DataValue(ua.Variant("x")), 0),
        (None, 0),
    ],
)
def test_max_nodes_per_read(data_value: ua.DataValue | None, expected: int) -> None:
    assert max_nodes_per_read(data_value) == expected


def test_subscription_timing_keeps_keepalive_near_five_seconds() -> None:
    fast = subscription_timing(250)
    assert fast.max_keepalive_count == 20 and fast.keepalive_s == 5.0
    assert fast.lifetime_count >= 3 * fast.max_keepalive_count
    slow = subscription_timing(10_000)
    assert slow.max_keepalive_count == 1 and slow.lifetime_count >= 3


def test_device_options_repr_hides_password() -> None:
    options = OpcUaDeviceOptions(endpoint="opc.tcp://plc:4840", username="gw", password="s3cret")
    assert "s3cret" not in repr(options)
    assert options.mode == "subscribe" and options.queue_size == 1
