"""Broken tag maps give every problem at once, each at FILE:LINE:COL of the offending YAML node.

The corpus lives in tests/cases/tagmap_errors/<case>/{tagmap.yaml,expected.txt}; expected lines are exact.
"""

from __future__ import annotations

import pytest

from gateway.errors import ConfigError
from gateway.tagmap import format_problems
from tests.support.tagmap import HEADER, MINIMAL_MODBUS, ErrorCase, error_cases, load, problem_lines

REQUIRED_CASES = {
    "wrong_type",
    "unknown_key",
    "bad_indentation",
    "tab_character",
    "duplicate_tag_names",
    "duplicate_device_names",
    "duplicate_yaml_key",
    "missing_required_field",
    "invalid_topic_segment",
    "bad_node_id",
    "address_past_end",
    "bit_on_float",
    "string_without_length",
    "unknown_template",
    "modicon_conflict",
    "min_greater_than_max",
    "several_errors",
    "template_instance_errors",
}


@pytest.mark.parametrize("case", error_cases(), ids=lambda case: case.name)
def test_error_case(case: ErrorCase) -> None:
    assert case.expected, f"{case.name}/expected.txt is empty"
    assert problem_lines(case.text) == case.expected


def test_the_corpus_covers_the_required_cases() -> None:
    assert {case.name for case in error_cases()} >= REQUIRED_CASES


# The key lines of the corpus, spelled out so a reader sees the promise without opening the folders.
@pytest.mark.parametrize(
    ("case", "prefix", "message_part"),
    [
        ("wrong_type", "tagmap.yaml:12:15: devices[0].tags[0].type: ", "did you mean 'float32'?"),
        ("unknown_key", "tagmap.yaml:11:9: devices[0].tags[0].adress: ", "did you mean 'address'?"),
        ("bad_indentation", "tagmap.yaml:12:8: ", "bad indentation"),
        ("tab_character", "tagmap.yaml:6:1: ", "tab character"),
        ("duplicate_yaml_key", "tagmap.yaml:13:9: devices[0].tags[0].name: ", "duplicate key 'name' (first at 10:9)"),
        ("duplicate_device_names", "tagmap.yaml:10:11: devices[1].name: ", "(first at 4:11)"),
        ("missing_required_field", "tagmap.yaml:4:5: devices[0].line: ", "missing required field"),
        ("address_past_end", "tagmap.yaml:10:33: devices[0].tags[0].address: ", "past the last Modbus address 65535"),
        (
            "template_instance_errors",
            "tagmap.yaml:7:31: devices[1].repeat[0] (ch004) -> templates.cycler-channel[2].address: ",
            "float64 at address 65534",
        ),
    ],
)
def test_key_positions(case: str, prefix: str, message_part: str) -> None:
    lines = next(c.expected for c in error_cases() if c.name == case)
    assert any(line.startswith(prefix) and message_part in line for line in lines), lines


def test_several_errors_are_all_reported_in_file_order() -> None:
    lines = next(c.expected for c in error_cases() if c.name == "several_errors")
    assert len(lines) >= 8
    positions = [tuple(int(part) for part in line.split(":")[1:3]) for line in lines]
    assert positions == sorted(positions)


def test_error_in_a_merged_anchor_points_at_the_anchor() -> None:
    text = (
        HEADER
        + """\
base: &float {type: float33, unit: V}
devices:
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    tags:
      - {name: voltage, address: 0, <<: *float}
"""
    )
    assert problem_lines(text) == [
        "tagmap.yaml:3:1: base: unknown key 'base'",
        "tagmap.yaml:3:21: devices[0].tags[0].type: unknown type 'float33' (did you mean 'float32'?); expected one of: "
        "bool, int16, uint16, int32, uint32, int64, uint64, float32, float64, string",
    ]


def test_problem_in_a_single_repeat_mapping_has_no_list_index() -> None:
    text = MINIMAL_MODBUS.replace(
        "    tags:\n", "    repeat: {template: ch, count: 0, stride: 2, name: 'c{n}'}\n    tags:\n"
    ).replace("mqtt: {", "templates:\n  ch: [{name: v, address: 0, type: int16}]\nmqtt: {")
    assert problem_lines(text) == [
        "tagmap.yaml:11:35: devices[0].repeat.count: Input should be greater than or equal to 1 (got 0)",
    ]


def test_environment_problems_name_the_variable() -> None:
    lines = problem_lines(
        MINIMAL_MODBUS,
        {
            "CELLGATE_MQTT__QOS": "2",
            "CELLGATE_MQTT__QOSS": "1",
            "CELLGATE_GATEWAY__ID": "edge 7",
            "CELLGATE_MQTT__URL": "mqtt://user:hunter2@broker",
        },
    )
    assert lines == [
        "env CELLGATE_GATEWAY__ID: topic segment 'edge 7' contains a space",
        "env CELLGATE_MQTT__URL: put credentials in username/password (or CELLGATE_MQTT__PASSWORD), not in the url",
        "env CELLGATE_MQTT__QOS: Input should be 0 or 1 (got 2)",
        "env CELLGATE_MQTT__QOSS: unknown key 'qoss' (did you mean 'qos'?)",
    ]
    assert not any("hunter2" in line for line in lines)


def test_a_whole_section_from_the_environment_must_be_json() -> None:
    assert problem_lines(MINIMAL_MODBUS, {"CELLGATE_MQTT": "mqtt://broker"}) == [
        "env CELLGATE_MQTT: expected a JSON object, or set single values as CELLGATE_MQTT__<SETTING>"
    ]


def test_format_problems_lists_every_problem_and_a_count() -> None:
    with pytest.raises(ConfigError) as caught:
        load(HEADER + "devices: nope\nextra: 1\n")
    assert format_problems(caught.value).splitlines() == [
        "tagmap.yaml:3:10: devices: expected a list of devices (each item starting with '- name: ...')",
        "tagmap.yaml:4:1: extra: unknown key 'extra'",
        "2 problems found",
    ]


def test_missing_sections() -> None:
    assert problem_lines("templates: {}\n") == [
        "tagmap.yaml:1:1: gateway: missing required section",
        "tagmap.yaml:1:1: mqtt: missing required section",
        "tagmap.yaml:1:1: devices: missing required section",
    ]


def test_a_second_yaml_document_is_a_syntax_error() -> None:
    assert problem_lines(MINIMAL_MODBUS + "---\nmore: 1\n") == [
        "tagmap.yaml:11:1: but found another document (expected a single document in the stream at 1:1)"
    ]
