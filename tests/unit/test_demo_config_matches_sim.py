"""config/demo.yaml reads every point of the default simulator set exactly once, as ``--describe`` describes it.

Both files go through the gateway's tag-map loader (templates and repeats expanded), then every device and tag is
compared: placement, transport, node ids or register addresses, types, scales, units and ranges. Deadbands and
comments are the demo's own additions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.tagmap import ModbusDevice, ModbusTag, OpcUaDevice, OpcUaTag, Plant, load_plant, load_plant_from_text
from simulators.describe import describe_yaml, plan_simulators

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
WRAPPER = "gateway: {id: describe, enterprise: acme, site: dunkirk}\nmqtt: {url: 'mqtt://127.0.0.1:1883'}\n"
NUMERIC_TYPES = {"int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}


@pytest.fixture(scope="module")
def demo() -> Plant:
    return load_plant(DEMO, environ={})


@pytest.fixture(scope="module")
def described() -> Plant:
    return load_plant_from_text(WRAPPER + describe_yaml(plan_simulators()), filename="<describe>", environ={})


def device_key(device: ModbusDevice | OpcUaDevice) -> dict[str, Any]:
    common = {"name": device.name, "area": device.area, "line": device.line, "protocol": device.protocol,
              "interval_ms": device.interval_ms}
    if isinstance(device, OpcUaDevice):
        return {**common, "endpoint": device.endpoint.rstrip("/"), "namespace": device.namespace, "mode": device.mode}
    return {**common, "transport": device.transport, "host": device.host, "port": device.port,
            "unit_id": device.unit_id, "order": device.order}


def tag_key(tag: ModbusTag | OpcUaTag) -> dict[str, Any]:
    common = {"unit": tag.unit, "min": tag.min, "max": tag.max, "scale": tag.scale, "type": tag.type}
    if isinstance(tag, OpcUaTag):
        return {**common, "node": tag.node}
    return {**common, "table": tag.table, "address": tag.address, "length": tag.length, "order": tag.order}


def by_name(plant: Plant) -> Mapping[str, ModbusDevice | OpcUaDevice]:
    return {device.name: device for device in plant.devices}


def test_demo_has_the_default_set_by_isa95_area_and_line(demo: Plant) -> None:
    assert (demo.gateway.id, demo.gateway.enterprise, demo.gateway.site) == ("edge-demo-01", "acme", "dunkirk")
    placement = {d.name: (d.area, d.line, d.protocol) for d in demo.devices}
    assert placement == {
        "coater-01": ("electrode", "cathode-1", "opcua"),
        "calender-01": ("electrode", "cathode-1", "opcua"),
        "stacker-01": ("cell-assembly", "line-1", "modbus"),
        "rack-01": ("formation", "hall-a", "modbus"),
        "rack-02": ("formation", "hall-a", "modbus"),
    }
    ports = {d.name: d.port for d in demo.devices if isinstance(d, ModbusDevice)}
    assert ports == {"rack-01": 5020, "rack-02": 5021, "stacker-01": 5022}
    assert {d.endpoint for d in demo.devices if isinstance(d, OpcUaDevice)} == {"opc.tcp://127.0.0.1:4840"}


def test_demo_and_describe_have_the_same_devices(demo: Plant, described: Plant) -> None:
    assert [d.name for d in demo.devices] == [d.name for d in described.devices]
    for name, device in by_name(described).items():
        assert device_key(by_name(demo)[name]) == device_key(device), name


def test_demo_and_describe_have_the_same_tags_at_the_same_addresses(demo: Plant, described: Plant) -> None:
    for name, device in by_name(described).items():
        expected = {tag.name: tag_key(tag) for tag in device.tags}
        actual = {tag.name: tag_key(tag) for tag in by_name(demo)[name].tags}
        assert sorted(set(expected) - set(actual)) == [], f"{name}: tags the demo lacks"
        assert sorted(set(actual) - set(expected)) == [], f"{name}: tags the simulators do not serve"
        different = {tag: (actual[tag], expected[tag]) for tag in expected if actual[tag] != expected[tag]}
        assert not different, f"{name}: {list(different.items())[:3]}"


def test_the_demo_uses_templates_for_rack_channels() -> None:
    import yaml

    raw = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    racks = [d for d in raw["devices"] if d["name"].startswith("rack-")]
    assert len(racks) == 2
    for rack in racks:
        templates = {r["template"]: r for r in rack["repeat"]}
        assert templates["cycler-channel"]["count"] == 16
        assert templates["cycler-channel"]["stride"] == 48
        assert templates["cycler-channel-alarm"]["start"] == 100


def test_deadbands_sit_on_noisy_numeric_tags_only(demo: Plant) -> None:
    for protocol in ("opcua", "modbus"):
        tags = [t for d in demo.devices if d.protocol == protocol for t in d.tags]
        with_deadband = [t for t in tags if t.deadband is not None]
        assert len(with_deadband) >= 3, protocol
        for tag in with_deadband:
            assert tag.type is not None and tag.type.value in NUMERIC_TYPES, tag.name
            assert tag.deadband is not None and tag.deadband > 0, tag.name
