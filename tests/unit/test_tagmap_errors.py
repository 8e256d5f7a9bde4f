"""Broken tag maps give every problem at once, each at FILE:LINE:COL of the offending YAML node.

The corpus lives in tests/cases/tagmap_errors/<case>/{tagmap.yaml,expected.txt}; expected lines are exact.
"""

from __future__ import annotations

import pytest

from gateway.assembly import build_outbound, mqtt_options_for
from gateway.errors import ConfigError
from gateway.mqtt.options import publish_topic_problem
from gateway.schema import MAX_TOPIC_BYTES
from gateway.tagmap import format_problems
from gateway.tagmap.loader import MAX_PROBLEM_CHARS
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
    # Issue 10 defect 9: maps that passed `check` and then crashed `run` (or had every message refused).
    "password_without_username",
    "spool_too_small",
    "topic_too_long",
    "topic_too_long_for_max_packet_size",
    "mqtt_fields_too_long",
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


# ------------------------------------------------------- issue 10 defect 9: one validation for check and run


def test_a_password_from_the_environment_without_username_points_at_the_mqtt_section() -> None:
    """Issue 10 defect 9, recipe "a password without a user name", the password given as CELLGATE_MQTT__PASSWORD
    (what systemd's EnvironmentFile=/etc/cellgate/cellgate.env sets): refused at the file's mqtt section."""
    lines = problem_lines(MINIMAL_MODBUS, {"CELLGATE_MQTT__PASSWORD": "hunter2"})
    assert lines == [
        "tagmap.yaml:2:7: mqtt.username: a password is set (in the file or CELLGATE_MQTT__PASSWORD) but no username: "
        "set username too (or CELLGATE_MQTT__USERNAME)"
    ]
    assert not any("hunter2" in line for line in lines)


def test_a_password_with_a_username_from_the_environment_loads() -> None:
    plant = load(MINIMAL_MODBUS, {"CELLGATE_MQTT__PASSWORD": "hunter2", "CELLGATE_MQTT__USERNAME": "edge"})
    assert plant.mqtt.username == "edge"


def test_a_1mb_tag_name_gives_one_bounded_line() -> None:
    """Issue 10 defect 9, recipe "a 1 MB tag name": refused (its topic is longer than MQTT allows), in one short line
    that shows the start of the value and its size."""
    lines = problem_lines(MINIMAL_MODBUS.replace("name: voltage", "name: " + "v" * 1_048_576))
    assert len(lines) == 1
    assert lines[0].startswith("tagmap.yaml:10:16: devices[0].tags[0].name: topic 'acme/dunkirk/formation/hall-a/")
    assert "... (1048614 bytes) is longer than the 65535 bytes MQTT allows" in lines[0]
    assert len(lines[0]) < 300


def test_a_long_unknown_key_is_shown_cut() -> None:
    # YAML itself refuses an implicit key longer than 1024 characters.
    lines = problem_lines(MINIMAL_MODBUS.replace("name: voltage", "k" * 1000 + ": 1, name: voltage"))
    assert len(lines) == 1
    assert lines[0].count("(1000 bytes)") == 2  # in the path and in the message
    assert len(lines[0]) < 400


def test_every_problem_line_is_bounded() -> None:
    """Whatever message a rule writes, the line stays short: a 1 MB value never reaches the terminal or the journal."""
    lines = problem_lines(MINIMAL_MODBUS.replace("type: float32", "type: " + "x" * 1_048_576))
    assert lines and all(len(line) <= 2 * MAX_PROBLEM_CHARS for line in lines)


def tag_named(name: str) -> str:
    return MINIMAL_MODBUS.replace("name: voltage", f"name: {name}")


def test_the_longest_accepted_tag_name_gives_topics_the_mqtt_client_accepts() -> None:
    """The topic rule and the runtime agree: at the limit every topic the device publishes (tag, _status, _batch, _meta
    and its parts) and the gateway status topic pass the MQTT client's own check; one byte more is refused."""
    prefix = "acme/dunkirk/formation/hall-a/rack-01/"
    longest = "v" * (MAX_TOPIC_BYTES - len(prefix))
    plant = load(tag_named(longest))
    outbound = build_outbound(plant, plant.devices[0])
    topics = [
        *outbound.seq_topics,
        outbound.topics.status,
        outbound.topics.batch,
        *(message.topic for message in outbound.meta_messages()),
    ]
    assert max(len(topic) for topic in topics) == MAX_TOPIC_BYTES
    assert all(publish_topic_problem(topic) is None for topic in topics)
    options = mqtt_options_for(plant, will_topic=plant.gateway.status_topic, will_payload=b"{}", online_payload=b"{}")
    assert options.will_topic == "acme/dunkirk/_gateway/gw1/status"
    assert problem_lines(tag_named(longest + "v"))[0].startswith("tagmap.yaml:10:16: devices[0].tags[0].name: topic")


def test_the_gateway_builds_its_mqtt_options_from_every_map_that_loads() -> None:
    """The MQTT client's constructor checks (which raised at `run`) hold for a map the validation accepts."""
    plant = load(
        MINIMAL_MODBUS.replace('mqtt: {url: "mqtt://127.0.0.1:1883"}', 'mqtt: {url: "mqtt://127.0.0.1:1883", '
                               'username: edge, max_inflight: 9999, keepalive_s: 1, reconnect_max_s: 1}'),
        {"CELLGATE_MQTT__PASSWORD": "hunter2"},
    )
    options = mqtt_options_for(plant, will_topic=plant.gateway.status_topic, will_payload=b"{}", online_payload=b"{}")
    assert options.password == "hunter2" and options.max_inflight == 9999


def test_a_tiny_spool_from_the_environment_names_the_variable() -> None:
    assert problem_lines(MINIMAL_MODBUS, {"CELLGATE_SPOOL__MAX_MB": "0.5"}) == [
        "env CELLGATE_SPOOL__MAX_MB: max_mb 0.5 is below the smallest spool, 1 MB: it could not hold one large batch "
        "or _meta part (SQLite's own pages take more); give at least 1"
    ]


def test_an_opcua_password_needs_a_username() -> None:
    text = HEADER + """\
devices:
  - name: coater-01
    area: electrode
    line: cathode-1
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    password: not-shown
    tags: [{name: speed, node: "ns=2;s=Speed"}]
"""
    assert problem_lines(text) == [
        "tagmap.yaml:4:5: devices[0].username: a password is set but no username: set username too"
    ]


def test_a_device_whose_own_topics_are_too_long_is_refused_at_its_name() -> None:
    """`_meta/N` is the longest topic of an equipment of its own: checked even when every tag name is short."""
    prefix = "acme/dunkirk/formation/hall-a/"
    name = "r" * (MAX_TOPIC_BYTES - len(prefix) - len("/_meta/1") + 1)
    lines = problem_lines(MINIMAL_MODBUS.replace("name: rack-01", f"name: {name}"))
    assert len(lines) == 1
    assert lines[0].startswith("tagmap.yaml:4:11: devices[0].name: topic 'acme/dunkirk/formation/hall-a/rrr")
    assert lines[0].endswith(f"... ({MAX_TOPIC_BYTES + 1} bytes) is longer than the 65535 bytes MQTT allows")
    assert load(MINIMAL_MODBUS.replace("name: rack-01", f"name: {name[:-1]}")).devices[0].name == name[:-1]
