"""Loading valid tag maps: expansion, defaults, synonyms, environment overrides, secrets, files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.errors import ConfigError
from gateway.tagmap import (
    ByteOrder,
    DataType,
    ModbusDevice,
    ModbusTag,
    OpcUaDevice,
    OpcUaMode,
    OpcUaTag,
    ParsedNodeId,
    Plant,
    PublishMode,
    Table,
    Transport,
    load_plant,
)
from tests.support.tagmap import HEADER, MINIMAL_MODBUS, SPEC_EXAMPLE, load

PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="module")
def plant() -> Plant:
    return load_plant(SPEC_EXAMPLE, environ={"CELLGATE_MQTT__PASSWORD": PASSWORD})


def _modbus(plant: Plant, name: str) -> ModbusDevice:
    device = plant.device(name)
    assert isinstance(device, ModbusDevice)
    return device


def _opcua(plant: Plant, name: str) -> OpcUaDevice:
    device = plant.device(name)
    assert isinstance(device, OpcUaDevice)
    return device


def _tag(device: ModbusDevice, name: str) -> ModbusTag:
    return next(tag for tag in device.tags if tag.name == name)


def test_devices_and_tag_counts(plant: Plant) -> None:
    assert [(d.name, d.protocol, len(d.tags)) for d in plant.devices] == [
        ("rack-01", "modbus", 4 + 64 * 3),
        ("meter-01", "modbus", 1),
        ("coater-01", "opcua", 3 + 4 * 2),
    ]
    assert plant.tag_count == 196 + 1 + 11
    assert all(device.repeat == () for device in plant.devices)


@pytest.mark.parametrize(
    ("tag", "address", "data_type"),
    [
        ("ch001/voltage", 1000, DataType.FLOAT32),
        ("ch001/current", 1002, DataType.FLOAT32),
        ("ch001/step", 1004, DataType.UINT16),
        ("ch002/voltage", 1032, DataType.FLOAT32),
        ("ch064/step", 1000 + 63 * 32 + 4, DataType.UINT16),
    ],
)
def test_template_tags_are_placed_by_start_and_stride(
    plant: Plant, tag: str, address: int, data_type: DataType
) -> None:
    expanded = _tag(_modbus(plant, "rack-01"), tag)
    assert (expanded.table, expanded.address, expanded.type) == (Table.HOLDING, address, data_type)
    assert expanded.order is ByteOrder.CDAB  # filled from the device (`order: cdab`)


def test_expanded_tags_keep_template_fields_and_order(plant: Plant) -> None:
    rack = _modbus(plant, "rack-01")
    names = [tag.name for tag in rack.tags]
    assert names[:7] == [
        "ambient/temperature",
        "door/open",
        "alarm/word_bit3",
        "serial_number",
        "ch001/voltage",
        "ch001/current",
        "ch001/step",
    ]
    assert names[-1] == "ch064/step"
    assert _tag(rack, "ch010/current").unit == "A"


def test_explicit_tags_synonyms_and_modicon(plant: Plant) -> None:
    rack = _modbus(plant, "rack-01")
    ambient = _tag(rack, "ambient/temperature")
    assert (ambient.table, ambient.scale, ambient.min, ambient.max) == (Table.HOLDING, 0.1, -20.0, 80.0)
    door = _tag(rack, "door/open")
    assert (door.table, door.type, door.bit) == (Table.COIL, DataType.BOOL, None)
    alarm = _tag(rack, "alarm/word_bit3")
    assert (alarm.table, alarm.type, alarm.bit) == (Table.INPUT, DataType.BOOL, 3)
    serial_number = _tag(rack, "serial_number")  # "40101" -> holding register 100
    assert (serial_number.table, serial_number.address, serial_number.length) == (Table.HOLDING, 100, 8)
    energy = _tag(_modbus(plant, "meter-01"), "energy")  # "300001" -> input register 0
    assert (energy.table, energy.address, energy.order) == (Table.INPUT, 0, ByteOrder.DCBA)


def test_modbus_defaults(plant: Plant) -> None:
    rack = _modbus(plant, "rack-01")
    assert (rack.transport, rack.host, rack.port, rack.unit_id, rack.publish) == (
        Transport.TCP,
        "127.0.0.1",
        5021,
        1,
        PublishMode.BATCH,
    )
    meter = _modbus(plant, "meter-01")
    assert (meter.transport, meter.unit_id, meter.interval_ms, meter.timeout_ms, meter.publish) == (
        Transport.RTU,
        7,
        1000,
        1000,
        PublishMode.TAG,
    )
    assert (meter.max_registers_per_read, meter.max_bits_per_read, meter.max_gap, meter.order) == (
        125,
        2000,
        10,
        ByteOrder.ABCD,
    )
    assert meter.serial is not None
    assert (meter.serial.port, meter.serial.baudrate, meter.serial.parity) == ("/dev/ttyUSB0", 19200, "E")
    assert meter.enabled and meter.description is None


def test_opcua_device(plant: Plant) -> None:
    coater = _opcua(plant, "coater-01")
    assert (coater.mode, coater.interval_ms, coater.sampling_interval_ms, coater.queue_size, coater.timeout_ms) == (
        OpcUaMode.SUBSCRIBE,
        250,
        250,
        1,
        4000,
    )
    nodes = {tag.name: tag.node_id for tag in coater.tags}
    assert nodes["line/speed"] == ParsedNodeId(
        namespace_uri="urn:cellgate:simulators", kind="s", identifier="Coater01.Line.Speed"
    )
    assert nodes["server/time"] == ParsedNodeId(namespace_index=0, kind="i", identifier=2258)
    assert nodes["state"].namespace_uri == "urn:cellgate:packml"
    zone = next(tag for tag in coater.tags if tag.name == "dryer/zone03/air_temperature")
    assert isinstance(zone, OpcUaTag)
    assert (zone.node, zone.unit, zone.deadband) == ("s=Coater01.Dryer.Zone03.AirTemp", "Cel", 0.2)
    assert str(zone.node_id) == "nsu=urn:cellgate:simulators;s=Coater01.Dryer.Zone03.AirTemp"


def test_gateway_and_mqtt_defaults(plant: Plant) -> None:
    assert (plant.gateway.id, plant.gateway.enterprise, plant.gateway.site, plant.gateway.queue_size) == (
        "edge-demo-01",
        "acme",
        "dunkirk",
        5000,
    )
    mqtt = plant.mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls, mqtt.protocol, mqtt.qos) == ("broker.example", 8884, True, "3.1.1", 1)
    assert mqtt.client_id == "cellgate-edge-demo-01"
    assert mqtt.password is not None and mqtt.password.get_secret_value() == PASSWORD


def test_secrets_never_show(plant: Plant) -> None:
    for shown in (repr(plant), str(plant), repr(plant.mqtt), str(plant.model_dump()), plant.model_dump_json()):
        assert PASSWORD not in shown
    assert "**********" in repr(plant.mqtt)


def test_plant_is_immutable(plant: Plant) -> None:
    with pytest.raises(ValidationError, match="frozen"):
        plant.gateway = plant.gateway  # type: ignore[misc]


def test_the_minimal_map_gets_every_default() -> None:
    minimal = load(MINIMAL_MODBUS)
    device = minimal.devices[0]
    assert isinstance(device, ModbusDevice)
    assert (device.port, device.interval_ms, device.publish, device.tags[0].order) == (
        502,
        1000,
        PublishMode.TAG,
        ByteOrder.ABCD,
    )
    tag = device.tags[0]
    assert (tag.scale, tag.offset, tag.deadband, tag.heartbeat_s, tag.description) == (1.0, 0.0, None, None, None)
    assert (minimal.mqtt.port, minimal.mqtt.qos, minimal.mqtt.protocol, minimal.mqtt.keepalive_s) == (1883, 1, "5", 30)
    assert minimal.gateway.queue_size == 10000


def test_repeat_as_one_mapping_equals_a_list_of_one() -> None:
    template = "templates:\n  ch: [{name: v, address: 0, type: int16}]\n"
    device = "devices:\n  - {name: r, area: a, line: l, protocol: modbus, host: h,\n     repeat: %s}\n"
    spec = "{template: ch, count: 3, start: 10, stride: 5, name: 'c{n}'}"
    single = load(HEADER + template + device % spec)
    listed = load(HEADER + template + device % f"[{spec}]")
    assert single == listed
    rack = single.devices[0]
    assert isinstance(rack, ModbusDevice)
    assert [(t.name, t.address) for t in rack.tags] == [("c1/v", 10), ("c2/v", 15), ("c3/v", 20)]


# ---------------------------------------------------------------------------------------- environment


def test_environment_wins_over_the_file() -> None:
    plant = load(
        MINIMAL_MODBUS,
        {
            "CELLGATE_MQTT__URL": "mqtts://broker.plant:8884",
            "CELLGATE_MQTT__USERNAME": "edge",
            "CELLGATE_MQTT__PASSWORD": PASSWORD,
            "cellgate_mqtt__qos": "0",  # names are case-insensitive
            "CELLGATE_GATEWAY__ID": "edge-07",
            "CELLGATE_LOG_LEVEL": "DEBUG",  # other CELLGATE_ settings are not the tag map's business
        },
    )
    assert (plant.mqtt.host, plant.mqtt.port, plant.mqtt.tls, plant.mqtt.qos) == ("broker.plant", 8884, True, 0)
    assert plant.mqtt.username == "edge"
    assert plant.mqtt.password is not None and plant.mqtt.password.get_secret_value() == PASSWORD
    assert plant.gateway.id == "edge-07"
    assert plant.gateway.enterprise == "acme"  # not overridden: kept from the file
    assert plant.mqtt.client_id == "cellgate-edge-07"
    assert PASSWORD not in repr(plant)


def test_a_whole_section_as_json() -> None:
    plant = load(MINIMAL_MODBUS, {"CELLGATE_MQTT": '{"qos": 0, "keepalive_s": 5}'})
    assert (plant.mqtt.qos, plant.mqtt.keepalive_s, plant.mqtt.host) == (0, 5, "127.0.0.1")


def test_environment_can_supply_a_section_missing_from_the_file() -> None:
    text = MINIMAL_MODBUS.replace('mqtt: {url: "mqtt://127.0.0.1:1883"}\n', "")
    assert load(text, {"CELLGATE_MQTT__URL": "mqtt://10.0.0.5"}).mqtt.host == "10.0.0.5"


# ---------------------------------------------------------------------------------------------- files


def test_load_plant_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(MINIMAL_MODBUS, encoding="utf-8")
    assert load_plant(path, environ={}).tag_count == 1
    path.write_text(MINIMAL_MODBUS.replace("float32", "float33"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_plant(str(path), environ={})
    assert str(caught.value.problems[0]).startswith(f"{path}:10:43: devices[0].tags[0].type: unknown type 'float33'")


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the tag map"):
        load_plant(tmp_path / "absent.yaml", environ={})
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"gateway: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_plant(binary, environ={})


def test_anchors_and_merge_keys_are_supported() -> None:
    text = (
        HEADER
        + """\
devices:
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    tags:
      - &voltage {name: v1, address: 0, type: float32, unit: V}
      - {<<: *voltage, name: v2, address: 2}
"""
    )
    tags = load(text).devices[0].tags
    assert [(t.name, t.unit) for t in tags] == [("v1", "V"), ("v2", "V")]
    assert isinstance(tags[1], ModbusTag) and tags[1].address == 2
