"""The tag-map models on their own: enums and synonyms, node ids, Modicon references, cross-field rules."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.tagmap import (
    MAX_ADDRESS,
    MAX_REGISTERS_PER_READ,
    ByteOrder,
    DataType,
    GatewaySection,
    ModbusDevice,
    ModbusTag,
    MqttSection,
    OpcUaDevice,
    OpcUaTag,
    ParsedNodeId,
    RepeatSpec,
    SpoolSection,
    Table,
    TagMap,
    build_plant,
    parse_modicon_reference,
    parse_node_id,
    resolve_namespace,
)
from tests.support.tagmap import problem_lines


@pytest.mark.parametrize(
    ("data_type", "length", "registers"),
    [
        (DataType.BOOL, None, 1),
        (DataType.INT16, None, 1),
        (DataType.UINT16, None, 1),
        (DataType.INT32, None, 2),
        (DataType.UINT32, None, 2),
        (DataType.FLOAT32, None, 2),
        (DataType.INT64, None, 4),
        (DataType.UINT64, None, 4),
        (DataType.FLOAT64, None, 4),
        (DataType.STRING, 8, 8),
    ],
)
def test_register_count(data_type: DataType, length: int | None, registers: int) -> None:
    assert data_type.register_count(length) == registers


def test_register_count_of_a_string_needs_its_length() -> None:
    with pytest.raises(ValueError, match="length"):
        DataType.STRING.register_count()


def test_enums_compare_equal_to_their_text() -> None:
    # Other modules (the Modbus planner) use plain strings; StrEnum keeps both worlds equal.
    holding: str = "holding"
    cdab: str = "CDAB"
    assert holding == Table.HOLDING
    assert cdab == ByteOrder.CDAB
    assert Table(holding) is Table.HOLDING
    assert [t for t in Table if t.is_bit_table] == [Table.COIL, Table.DISCRETE]


@pytest.mark.parametrize(
    ("given", "table"),
    [
        ("holding", Table.HOLDING),
        ("holding_register", Table.HOLDING),
        ("HR", Table.HOLDING),
        ("input_register", Table.INPUT),
        ("ir", Table.INPUT),
        ("coils", Table.COIL),
        ("Coil", Table.COIL),
        ("discrete_input", Table.DISCRETE),
        ("di", Table.DISCRETE),
    ],
)
def test_table_synonyms(given: str, table: Table) -> None:
    data_type = "bool" if table.is_bit_table else "int16"
    assert ModbusTag(name="t", table=given, address=0, type=data_type).table is table


@pytest.mark.parametrize(
    ("given", "data_type"),
    [
        ("FLOAT32", DataType.FLOAT32),
        ("real", DataType.FLOAT32),
        ("double", DataType.FLOAT64),
        ("word", DataType.UINT16),
    ],
)
def test_type_synonyms(given: str, data_type: DataType) -> None:
    assert ModbusTag(name="t", address=0, type=given).type is data_type


@pytest.mark.parametrize(
    ("given", "order"), [("cdab", ByteOrder.CDAB), ("DCBA", ByteOrder.DCBA), ("badc", ByteOrder.BADC)]
)
def test_order_given_lowercase_is_accepted(given: str, order: ByteOrder) -> None:
    assert ModbusTag(name="t", address=0, type="int32", order=given).order is order


def test_a_coil_tag_defaults_to_bool() -> None:
    tag = ModbusTag(name="door", table="coil", address=3)  # type: ignore[call-arg]
    assert (tag.type, tag.width, tag.end_address) == (DataType.BOOL, 1, 3)


# ------------------------------------------------------------------------------------------ node ids


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("i=2258", ParsedNodeId(kind="i", identifier=2258)),
        ("s=Coater01.Dryer.Zone03", ParsedNodeId(kind="s", identifier="Coater01.Dryer.Zone03")),
        ("ns=2;s=A;B", ParsedNodeId(namespace_index=2, kind="s", identifier="A;B")),
        ("nsu=urn:cellgate:sim;i=7", ParsedNodeId(namespace_uri="urn:cellgate:sim", kind="i", identifier=7)),
        (
            "g=72962b91-fa75-4ae6-8d28-b404dc7daf63",
            ParsedNodeId(kind="g", identifier="72962b91-fa75-4ae6-8d28-b404dc7daf63"),
        ),
        (
            "ns=1;b=M/RbKBsRVkePCePcx24oRA==",
            ParsedNodeId(namespace_index=1, kind="b", identifier="M/RbKBsRVkePCePcx24oRA=="),
        ),
    ],
)
def test_parse_node_id(text: str, parsed: ParsedNodeId) -> None:
    assert parse_node_id(text) == parsed
    assert str(parse_node_id(text)) == text  # canonical form round-trips


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty node id"),
        ("x=3", "expected i=<number>"),
        ("ns=2", "must be followed by ';'"),
        ("ns=two;s=a", "namespace index 'two'"),
        ("ns=70000;s=a", "namespace index '70000'"),
        ("i=12a", "i= needs a number"),
        ("i=4294967296", "i= needs a number"),
        ("s=", "empty s= identifier"),
        ("g=1234", "g= needs a GUID"),
        ("b=not base64!", "b= needs base64"),
        ("nsu=urn:x", "expected nsu=<uri>;"),
    ],
)
def test_parse_node_id_refuses(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_node_id(text)


def test_resolve_namespace() -> None:
    assert resolve_namespace(parse_node_id("s=A"), "urn:x") == ParsedNodeId(
        namespace_uri="urn:x", kind="s", identifier="A"
    )
    assert resolve_namespace(parse_node_id("i=85"), None) == ParsedNodeId(namespace_index=0, kind="i", identifier=85)
    explicit = parse_node_id("ns=3;s=A")
    assert resolve_namespace(explicit, "urn:x") is explicit
    with pytest.raises(ValueError, match="has no namespace"):
        resolve_namespace(parse_node_id("s=A"), None)


def test_opcua_tag_parses_its_node_at_validation() -> None:
    assert OpcUaTag(name="speed", node="ns=2;s=Line.Speed").node_id == ParsedNodeId(
        namespace_index=2, kind="s", identifier="Line.Speed"
    )
    with pytest.raises(ValidationError, match="node id 'q=1'"):
        OpcUaTag(name="speed", node="q=1")


# ---------------------------------------------------------------------------------- Modicon references


@pytest.mark.parametrize(
    ("text", "table", "address"),
    [
        ("40001", Table.HOLDING, 0),
        ("41001", Table.HOLDING, 1000),
        ("30017", Table.INPUT, 16),
        ("00001", Table.COIL, 0),
        ("10010", Table.DISCRETE, 9),
        ("400001", Table.HOLDING, 0),
        ("465536", Table.HOLDING, MAX_ADDRESS),
    ],
)
def test_parse_modicon_reference(text: str, table: Table, address: int) -> None:
    assert parse_modicon_reference(text) == (table, address)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("1234", "5 digits"),
        ("4000001", "5 digits"),
        ("20001", "must start with 0"),
        ("40000", "counts from 1"),
        ("465537", "counts from 1"),
        ("4x001", "neither an integer"),
    ],
)
def test_parse_modicon_reference_refuses(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_modicon_reference(text)


# ----------------------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"type": "float32", "bit": 3}, r"bit: bit only applies to bool tags"),
        ({"type": "bool"}, r"bit: a bool in a holding register needs `bit`"),
        ({"type": "string"}, r"length: a string needs `length`"),
        ({"type": "uint16", "length": 2}, r"length: length only applies to type string"),
        ({"type": "int16", "table": "coil"}, r"type: a coil holds a single bit"),
        ({"type": "float64", "address": 65533}, r"address: float64 at address 65533 spans 4 registers, up to 65536"),
        ({"type": "bool", "bit": 0, "scale": 2}, r"scale: scale only applies to numeric types, not bool"),
        ({"type": "string", "length": 4, "deadband": 1}, r"deadband: deadband only applies to numeric types"),
        ({"type": "int16", "min": 5, "max": 1}, r"min: min 5 is greater than max 1"),
        ({"type": "int16", "scale": 0}, r"scale: scale 0 would make every value equal to offset"),
        ({"type": "int16", "address": "40001", "table": "input"}, r"table: table 'input' conflicts"),
    ],
)
def test_modbus_tag_rules(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        ModbusTag.model_validate({"name": "t", "address": 0, **fields})


def test_modbus_tag_accepts_the_last_address() -> None:
    tag = ModbusTag(name="t", address=MAX_ADDRESS - 1, type=DataType.INT32)
    assert tag.end_address == MAX_ADDRESS


def test_string_length_is_capped_at_one_read() -> None:
    with pytest.raises(ValidationError, match="less than or equal to 125"):
        ModbusTag(name="t", address=0, type=DataType.STRING, length=MAX_REGISTERS_PER_READ + 1)


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"transport": "tcp"}, "host: transport tcp needs `host`"),
        ({"transport": "rtu"}, "serial: transport rtu needs `serial`"),
        (
            {"transport": "rtu", "serial": {"port": "/dev/ttyUSB0"}, "host": "h"},
            "host: host only applies to transport tcp",
        ),
        ({"host": "h", "serial": {"port": "/dev/ttyUSB0"}}, "serial: serial only applies to transport rtu"),
        ({"host": "h", "interval_ms": 9}, "greater than or equal to 10"),
        ({"host": "h", "unit_id": 248}, "less than or equal to 247"),
        (
            {"host": "h", "repeat": {"template": "x", "count": 2, "name": "c{n}"}},
            r"repeat\[0\].stride: a Modbus repeat with count > 1 needs `stride`",
        ),
        (
            {"host": "h", "max_registers_per_read": 2, "tags": [{"name": "e", "address": 0, "type": "float64"}]},
            r"tags\[0\].type: float64 spans 4 registers, more than the device's max_registers_per_read \(2\)",
        ),
        ({"host": "h", "max_concurrent_requests": 0}, "greater than or equal to 1"),
        ({"host": "h", "max_concurrent_requests": 17}, "less than or equal to 16"),
        (
            {"transport": "rtu", "serial": {"port": "/dev/ttyUSB0"}, "max_concurrent_requests": 2},
            "max_concurrent_requests: transport rtu carries one request at a time: max_concurrent_requests must be 1",
        ),
    ],
)
def test_modbus_device_rules(fields: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        ModbusDevice.model_validate({"name": "rack", "area": "formation", "line": "a", **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"host": "h"}, 1),  # the default: one request at a time, which every server handles
        ({"host": "h", "max_concurrent_requests": 8}, 8),
        ({"host": "h", "max_concurrent_requests": 16}, 16),
        ({"transport": "rtu", "serial": {"port": "/dev/ttyUSB0"}, "max_concurrent_requests": 1}, 1),
    ],
)
def test_max_concurrent_requests(fields: dict[str, Any], expected: int) -> None:
    device = ModbusDevice.model_validate({"name": "rack", "area": "formation", "line": "a", **fields})
    assert device.max_concurrent_requests == expected


MAX_CONCURRENT_TAGMAP = """\
gateway: {id: gw, enterprise: acme, site: dunkirk}
mqtt: {url: "mqtt://127.0.0.1"}
devices:
  - name: cycler-01
    area: formation
    line: a
    protocol: modbus
    transport: rtu
    serial: {port: /dev/ttyUSB0}
    max_concurrent_requests: 4
    tags: [{name: v, address: 0, type: uint16}]
  - name: coater-01
    area: electrode
    line: a
    protocol: opcua
    endpoint: opc.tcp://127.0.0.1:4840
    max_concurrent_requests: 4
    tags: [{name: s, node: "ns=2;s=S"}]
"""


def test_max_concurrent_requests_problems_point_at_the_file() -> None:
    assert problem_lines(MAX_CONCURRENT_TAGMAP) == [
        "tagmap.yaml:10:30: devices[0].max_concurrent_requests: transport rtu carries one request at a time: "
        "max_concurrent_requests must be 1 (or left out)",
        "tagmap.yaml:17:5: devices[1].max_concurrent_requests: unknown key 'max_concurrent_requests': "
        "a Modbus device setting, and this device has protocol: opcua",
    ]


def test_serial_settings_normalise_parity() -> None:
    device = ModbusDevice.model_validate(
        {
            "name": "m",
            "area": "a",
            "line": "l",
            "transport": "serial",
            "serial": {"port": "/dev/ttyS0", "parity": "even"},
        }
    )
    assert device.serial is not None and device.serial.parity == "E"


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("ch", "must contain {n}"),
        ("ch{i}", r"uses \{i\}; only \{n\} is available"),
        ("ch{n:03q}", "cannot format n=1"),
        ("ch {n}", "contains a space"),
        ("_ch{n}", "starts with '_'"),
        ("ch{n", "not a valid format string"),
    ],
)
def test_repeat_name_pattern(pattern: str, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        RepeatSpec(template="t", count=2, name=pattern)


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False),
        ("mqtt://broker", "broker", 1883, False),
        ("mqtts://broker.example", "broker.example", 8883, True),
        ("MQTTS://[::1]:8884", "::1", 8884, True),
    ],
)
def test_mqtt_url_helpers(url: str, host: str, port: int, tls: bool) -> None:
    mqtt = MqttSection(url=url)
    assert (mqtt.host, mqtt.port, mqtt.tls) == (host, port, tls)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("tcp://broker:1883", "must start with mqtt:// or mqtts://"),
        ("broker:1883", "must start with mqtt:// or mqtts://"),
        ("mqtt://:1883", "has no host"),
        ("mqtt://broker:99999", "port is not a number"),
        ("mqtt://broker/topic", "must not have a path"),
    ],
)
def test_mqtt_url_refused(url: str, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        MqttSection(url=url)


def test_mqtt_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ValidationError) as caught:
        MqttSection(url="mqtt://user:hunter2@broker")
    assert "credentials" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_models_are_frozen() -> None:
    tag = ModbusTag(name="t", address=0, type=DataType.INT16)
    with pytest.raises(ValidationError, match="frozen"):
        tag.address = 5  # type: ignore[misc]


def test_build_plant_from_models_made_in_code() -> None:
    tagmap = TagMap(
        gateway=GatewaySection(id="gw", enterprise="acme", site="dunkirk"),
        mqtt=MqttSection(url="mqtt://127.0.0.1"),
        templates={"zone": ({"name": "temp", "node": "s=Zone{n}.Temp"},)},
        devices=(
            OpcUaDevice(
                name="coater",
                area="electrode",
                line="l1",
                endpoint="opc.tcp://127.0.0.1:4840",
                namespace="urn:sim",
                repeat=(RepeatSpec(template="zone", count=2, name="zone{n}"),),
            ),
        ),
    )
    plant, issues = build_plant(tagmap)
    assert issues == []
    assert plant is not None
    device = plant.device("coater")
    assert isinstance(device, OpcUaDevice)
    assert [(t.name, str(t.node_id)) for t in device.tags] == [
        ("zone1/temp", "nsu=urn:sim;s=Zone1.Temp"),
        ("zone2/temp", "nsu=urn:sim;s=Zone2.Temp"),
    ]
    assert plant.mqtt.client_id == "cellgate-gw"
    assert device.sampling_interval_ms == device.interval_ms
    with pytest.raises(KeyError):
        plant.device("nope")


def test_spool_size_is_at_least_one_megabyte() -> None:
    """Issue 10 defect 9, recipe "a tiny spool.max_mb": refused by the model the runtime reads its cap from."""
    assert SpoolSection(max_mb=1).max_bytes == 1_000_000
    assert SpoolSection().max_bytes == 1_024_000_000
    for tiny in (0.9999999, 0.0000001):
        with pytest.raises(ValidationError, match="below the smallest spool, 1 MB"):
            SpoolSection(max_mb=tiny)


def test_a_password_needs_a_username() -> None:
    """Issue 10 defect 9, recipe "a password without a user name"."""
    with pytest.raises(ValidationError, match=r"a password is set .* but no username"):
        MqttSection(url="mqtt://127.0.0.1", password="secret")
    assert MqttSection(url="mqtt://127.0.0.1", username="edge", password="secret").username == "edge"
    assert MqttSection(url="mqtt://127.0.0.1", username="edge").password is None


def test_gateway_status_topic_must_fit_mqtt() -> None:
    assert GatewaySection(id="gw", enterprise="acme", site="dunkirk").status_topic == "acme/dunkirk/_gateway/gw/status"
    with pytest.raises(ValidationError, match="the gateway status topic: topic 'acme/dunkirk/_gateway/"):
        GatewaySection(id="g" * 70_000, enterprise="acme", site="dunkirk")
