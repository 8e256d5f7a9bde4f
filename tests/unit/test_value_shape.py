"""``shape:`` / ``fields:`` on OPC UA tags: validated in the map, published in ``_meta``, values checked."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from asyncua import ua

from gateway.browse import shape_of
from gateway.browse_plan import STRUCTURE, BrowsedVariable, BrowsePlan, _tag_fields
from gateway.encoders.uns_json import encode_meta
from gateway.errors import ConfigError
from gateway.schema import Quality, TagMeta
from gateway.sources.base import RawReading
from gateway.sources.opcua_status import name_unsupported, readings_from_data_value, shaped_readings
from gateway.tagmap import load_plant_from_text
from gateway.value_shape import FieldShape, ValueShape, fields_as_written, fits

MAP = """gateway: {id: g, enterprise: e, site: s}
mqtt: {url: 'mqtt://127.0.0.1:1883'}
devices:
  - name: d
    area: a
    line: l
    protocol: opcua
    endpoint: 'opc.tcp://127.0.0.1:4840'
    tags: [TAGS]
"""


def _load(tags: str) -> Any:
    return load_plant_from_text(MAP.replace("TAGS", tags), filename="m.yaml", environ={})


def test_tag_map_shape_and_fields() -> None:
    plant = _load("{name: p, node: 'ns=2;s=P', shape: [2, 0]}, {name: s, node: 'ns=2;s=S', fields: [A, B]}")
    tags = {tag.name: tag for tag in plant.devices[0].tags}
    assert (tags["p"].shape, tags["p"].fields) == ((2, 0), None)
    assert (tags["s"].shape, tags["s"].fields) == (None, (FieldShape("A"), FieldShape("B")))


NESTED = ("{name: s, node: 'ns=2;s=S', fields: [A, {B: {fields: [C, {D: {shape: [2]}}]}}, "
          "{E: {shape: [3], fields: [F, G]}}]}")


def test_nested_fields_load_to_their_depth_and_are_written_back_the_same() -> None:
    [tag] = _load(NESTED).devices[0].tags
    assert tag.fields == (
        FieldShape("A"),
        FieldShape("B", fields=(FieldShape("C"), FieldShape("D", shape=(2,)))),
        FieldShape("E", shape=(3,), fields=(FieldShape("F"), FieldShape("G"))),
    )
    assert fields_as_written(tag.fields) == [
        "A", {"B": {"fields": ["C", {"D": {"shape": [2]}}]}}, {"E": {"shape": [3], "fields": ["F", "G"]}}]


def test_an_array_of_structures_is_shape_and_fields() -> None:
    [tag] = _load("{name: z, node: 'ns=2;s=Z', shape: [10], fields: [AirTempSP, AirTemp]}").devices[0].tags
    assert (tag.shape, tag.fields) == ((10,), (FieldShape("AirTempSP"), FieldShape("AirTemp")))


@pytest.mark.parametrize(("tags", "problem"), [
    ("{name: p, node: 'ns=2;s=P', shape: []}", "shape needs 1 to 32 dimensions, got 0"),
    ("{name: p, node: 'ns=2;s=P', shape: [3, -1]}", "a dimension is a length >= 0 (0: any length), not -1"),
    ("{name: p, node: 'ns=2;s=P', fields: [A, {B: {fields: [C, C]}}]}",
     "fields[1].B.fields[1]: field names must be non-empty and unique: 'C'"),
    ("{name: p, node: 'ns=2;s=P', fields: [{B: {shape: [-1]}}]}",
     "fields[0].B.shape[0]: a dimension is a length >= 0 (0: any length), not -1"),
    ("{name: p, node: 'ns=2;s=P', fields: [{B: {size: 3}}]}",
     "fields[0].B: a nested field is described by `shape` (array) and/or `fields` (structure)"),
    ("{name: p, node: 'ns=2;s=P', fields: [{B: {}, C: {}}]}", "fields[0]: a field is a name or"),
    ("{name: p, node: 'ns=2;s=P', fields: [{B: {fields: []}}]}", "fields[0].B.fields: fields lists the structure's"),
    ("{name: p, node: 'ns=2;s=P', fields: [A, A]}", "field names must be non-empty and unique: 'A'"),
    ("{name: p, node: 'ns=2;s=P', fields: []}", "fields lists the structure's field names"),
])
def test_bad_shape_or_fields_are_refused(tags: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tags)
    assert problem in str(caught.value)  # FILE:LINE:COL path: message


@pytest.mark.parametrize(("value", "declared", "expected"), [
    ([1.0, 2.0, 3.0], ValueShape(shape=(3,)), True),
    ([1.0, 2.0], ValueShape(shape=(3,)), False),
    ([1.0, 2.0], ValueShape(shape=(0,)), True),
    ([[1, 2], [3, 4], [5, 6]], ValueShape(shape=(3, 2)), True),
    ([[1, 2], [3]], ValueShape(shape=(2, 0)), True),
    ([[1, 2], [3, 4]], ValueShape(shape=(2, 3)), False),
    ([1, 2], ValueShape(shape=(2, 2)), False),
    ([[1], [2]], ValueShape(shape=(2,)), False),
    (5.0, ValueShape(shape=(1,)), False),
    ({"A": 1, "B": {"C": 2}}, ValueShape(fields=(FieldShape("A"), FieldShape("B"))), True),
    ({"B": 1, "A": 2}, ValueShape(fields=(FieldShape("A"), FieldShape("B"))), False),
    ({"A": 1}, ValueShape(fields=(FieldShape("A"), FieldShape("B"))), False),
    ([{"A": 1}], ValueShape(fields=(FieldShape("A"),)), False),
    # Nested structures and array fields are checked to the depth declared.
    ({"A": 1, "B": {"C": 2}}, ValueShape(fields=(FieldShape("A"), FieldShape("B", fields=(FieldShape("C"),)))), True),
    ({"A": 1, "B": {"X": 2}}, ValueShape(fields=(FieldShape("A"), FieldShape("B", fields=(FieldShape("C"),)))), False),
    ({"A": 1, "B": 2}, ValueShape(fields=(FieldShape("A"), FieldShape("B", fields=(FieldShape("C"),)))), False),
    ({"V": [1, 2]}, ValueShape(fields=(FieldShape("V", shape=(2,)),)), True),
    ({"V": [1, 2, 3]}, ValueShape(fields=(FieldShape("V", shape=(2,)),)), False),
    # An array of structures: every element has the fields.
    ([{"A": 1}, {"A": 2}], ValueShape(shape=(2,), fields=(FieldShape("A"),)), True),
    ([{"A": 1}, {"B": 2}], ValueShape(shape=(2,), fields=(FieldShape("A"),)), False),
    ([[{"A": 1}], [{"A": 2}]], ValueShape(shape=(2, 1), fields=(FieldShape("A"),)), True),
    ([1, 2], ValueShape(shape=(2,), fields=(FieldShape("A"),)), False),
])
def test_fits(value: Any, declared: ValueShape, expected: bool) -> None:
    assert fits(value, declared.shape, declared.fields) is expected


def test_shaped_readings_mark_only_misfits_bad() -> None:
    readings = [
        RawReading("ok", [1, 2], 1.0, Quality.GOOD, None),
        RawReading("short", [1], 1.0, Quality.GOOD, None),
        RawReading("undeclared", [1], 1.0, Quality.GOOD, None),
        RawReading("already_bad", None, 1.0, Quality.BAD, "comm_failure"),
    ]
    shapes = {name: ValueShape(shape=(2,)) for name in ("ok", "short", "already_bad")}
    assert shaped_readings(readings, shapes) == [
        readings[0],
        RawReading("short", None, 1.0, Quality.BAD, "shape_mismatch"),
        readings[2],
        readings[3],
    ]


def test_meta_carries_shape_and_fields_only_when_declared() -> None:
    tags = [TagMeta(tag="scalar", type="float64"), TagMeta(tag="profile", type="float64", shape=(120,)),
            TagMeta(tag="status", type="", fields=(
                FieldShape("StateCurrent"), FieldShape("Counts", fields=(FieldShape("Processed"),)))),
            TagMeta(tag="zones", type="", shape=(10,), fields=(FieldShape("AirTemp"),))]
    entries = orjson.loads(encode_meta(device="d", protocol="opcua", tags=tags, publish_mode="change",
                                       interval_ms=1000))["tags"]
    assert "shape" not in entries["scalar"] and "fields" not in entries["scalar"]
    assert entries["profile"]["shape"] == [120]
    assert entries["status"]["fields"] == ["StateCurrent", {"Counts": {"fields": ["Processed"]}}]
    assert (entries["zones"]["shape"], entries["zones"]["fields"]) == ([10], ["AirTemp"])


@pytest.mark.parametrize(("rank", "dimensions", "expected"), [
    (-1, None, None), (0, None, None), (-2, None, None),
    (1, [120], (120,)), (2, [3, 4], (3, 4)), (1, None, (0,)), (2, [5], (0, 0)), (1, [0], (0,)),
])
def test_browse_dimensions(rank: int, dimensions: list[int] | None, expected: tuple[int, ...] | None) -> None:
    assert shape_of(rank, dimensions) == expected


def test_browse_writes_shape_and_fields() -> None:
    plan = BrowsePlan(devices=[], templates={})
    array = BrowsedVariable(path=("P",), node_id="nsu=u;s=P", data_type=11, data_type_name="Double", value_rank=1,
                            dimensions=(120,))
    structure = BrowsedVariable(path=("S",), node_id="nsu=u;s=S", data_type=None, data_type_name="PackMLStatus",
                                data_type_kind=STRUCTURE, fields=(
                                    FieldShape("StateCurrent"), FieldShape("Counts", fields=(FieldShape("N"),))))
    zones = BrowsedVariable(path=("Z",), node_id="nsu=u;s=Z", data_type=None, data_type_name="DryerZoneStatus",
                            data_type_kind=STRUCTURE, value_rank=1, dimensions=(10,), fields=(FieldShape("AirTemp"),))
    any_rank = BrowsedVariable(path=("A",), node_id="nsu=u;s=A", data_type=None, data_type_name="DryerZoneStatus",
                               data_type_kind=STRUCTURE, value_rank=0, fields=(FieldShape("AirTemp"),))
    assert _tag_fields(array, plan)["shape"] == [120]
    assert _tag_fields(structure, plan)["fields"] == ["StateCurrent", {"Counts": {"fields": ["N"]}}]
    assert (_tag_fields(zones, plan)["shape"], _tag_fields(zones, plan)["fields"]) == ([10], ["AirTemp"])
    # Its number of dimensions unknown, an array of structures is described by neither.
    assert "fields" not in _tag_fields(any_rank, plan) and "shape" not in _tag_fields(any_rank, plan)


@pytest.mark.parametrize(("status", "expected"), [
    ("unsupported_type:ExtensionObject[ns=2;i=3002]", "unsupported_type:PackMLStatus"),
    ("unsupported_type:Array[ExtensionObject[ns=2;i=3002]]", "unsupported_type:Array[PackMLStatus]"),
    ("unsupported_type:Array[Array[ExtensionObject[ns=2;i=3002]]]", "unsupported_type:Array[Array[PackMLStatus]]"),
    ("unsupported_type:ExtensionObject[ns=2;i=9999]", "unsupported_type:ExtensionObject[ns=2;i=9999]"),
    ("unsupported_type:DiagnosticInfo", "unsupported_type:DiagnosticInfo"),
    ("decode_error", "decode_error"),
])
def test_undescribed_structure_is_named(status: str, expected: str) -> None:
    assert name_unsupported(status, {"ns=2;i=3002": "PackMLStatus"}) == expected


def test_readings_name_an_undescribed_structure() -> None:
    body = ua.ExtensionObject(TypeId=ua.NodeId(3002, 2), Body=b"\x01")
    data_value = ua.DataValue(ua.Variant(body, ua.VariantType.ExtensionObject))
    [named] = readings_from_data_value(("s",), data_value, received_at=1.0, type_names={"ns=2;i=3002": "PackMLStatus"})
    assert (named.quality, named.value, named.status) == (Quality.BAD, None, "unsupported_type:PackMLStatus")
    [plain] = readings_from_data_value(("s",), data_value, received_at=1.0)
    assert plain.status == "unsupported_type:ExtensionObject[ns=2;i=3002]"
