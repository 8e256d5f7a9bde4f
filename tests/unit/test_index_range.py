"""``index:`` on OPC UA tags: parsing, selecting from (nested) arrays, and what readings become."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.schema import Quality
from gateway.sources.base import RawReading
from gateway.sources.opcua_status import indexed_readings
from gateway.tagmap import load_plant_from_text
from gateway.tagmap.index_range import IndexItem, parse_index_range, select

MATRIX = [[0, 1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23]]


@pytest.mark.parametrize(
    ("text", "items"),
    [("5", (5,)), ("0:9", ((0, 9),)), ("1,0:3", (1, (0, 3))), (" 2 : 4 , 7 ", ((2, 4), 7))],
)
def test_parse(text: str, items: tuple[IndexItem, ...]) -> None:
    assert parse_index_range(text) == items


@pytest.mark.parametrize("text", ["", "a", "-1", "3:3", "4:2", "1;2", "1:2:3", "9999999999"])
def test_bad_index_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="index"):
        parse_index_range(text)


@pytest.mark.parametrize(
    ("value", "text", "expected"),
    [
        (list(range(120)), "5", (5, True)),  # one element: the element itself
        (list(range(120)), "10:13", ([10, 11, 12, 13], True)),  # a range: an array
        (list(range(120)), "119", (119, True)),
        (list(range(120)), "120", (None, False)),
        (list(range(120)), "118:120", (None, False)),
        (MATRIX, "1", ([10, 11, 12, 13], True)),  # a row
        (MATRIX, "1,2", (12, True)),
        (MATRIX, "0:1,1:2", ([[1, 2], [11, 12]], True)),  # ranges keep the shape
        (MATRIX, "0:2,3", ([3, 13, 23], True)),  # a column
        (MATRIX, "0,0,0", (None, False)),  # deeper than the value
        ([{"a": 1}, {"a": 2}], "1", ({"a": 2}, True)),  # an array of structures
        (4.5, "0", (None, False)),  # a scalar has no elements
    ],
)
def test_select(value: Any, text: str, expected: tuple[Any, bool]) -> None:
    assert select(value, parse_index_range(text)) == expected


def test_indexed_readings_cut_only_indexed_tags() -> None:
    profile = [float(n) for n in range(120)]
    readings = [
        RawReading("lane5", profile, 1.0), RawReading("lanes", profile, 1.0), RawReading("all", profile, 1.0),
        RawReading("too_far", profile, 1.0), RawReading("bad", None, 1.0, Quality.BAD, "BadSensorFailure"),
        RawReading("scalar", 3.0, 1.0, Quality.UNCERTAIN, "UncertainLastUsableValue"),
    ]
    indexes = {name: parse_index_range(text) for name, text in
               (("lane5", "5"), ("lanes", "0:2"), ("too_far", "200"), ("bad", "1"), ("scalar", "0"))}
    assert indexed_readings(readings, indexes) == [
        RawReading("lane5", 5.0, 1.0), RawReading("lanes", [0.0, 1.0, 2.0], 1.0), RawReading("all", profile, 1.0),
        RawReading("too_far", None, 1.0, Quality.BAD, "index_out_of_range"),
        RawReading("bad", None, 1.0, Quality.BAD, "BadSensorFailure"),
        RawReading("scalar", None, 1.0, Quality.BAD, "index_out_of_range"),
    ]


MAP = """gateway: {id: g, enterprise: e, site: s}
mqtt: {url: 'mqtt://127.0.0.1:1883'}
templates:
  lane: [{name: value, node: 'ns=2;s=Profile', index: '{INDEX}'}]
devices:
  - name: d
    area: a
    line: l
    protocol: opcua
    endpoint: 'opc.tcp://127.0.0.1:4840'
    repeat: {template: lane, count: 2, first: 1, name: 'lane{n}'}
    tags: [{name: lane7, node: 'ns=2;s=Profile', index: 7}]
"""


def test_tag_map_index_field() -> None:
    plant = load_plant_from_text(MAP.replace("{INDEX}", "0:3"), filename="m.yaml", environ={})
    assert {tag.name: tag.index for tag in plant.devices[0].tags} == {
        "lane7": "7", "lane1/value": "0:3", "lane2/value": "0:3"}
    with pytest.raises(ConfigError) as caught:
        load_plant_from_text(MAP.replace("{INDEX}", "3:1"), filename="m.yaml", environ={})
    assert "index '3:1': in FIRST:LAST, LAST must be greater than FIRST" in str(caught.value.problems)
