"""config/demo.yaml reads every point of the default simulator set exactly once, at the right address and type.

The file is parsed with plain ``yaml.safe_load`` and templates are expanded here (per /tmp/cellgate-spec/tagmap.md
semantics), so this test does not depend on the gateway's tag-map loader.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from simulators.runner import describe_default_set

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo.yaml"
NUMERIC_TYPES = {"int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"}
MULTI_REGISTER_TYPES = {"int32", "uint32", "int64", "uint64", "float32", "float64"}


@pytest.fixture(scope="module")
def demo() -> dict[str, Any]:
    loaded = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def device(demo: dict[str, Any], protocol: str) -> dict[str, Any]:
    (found,) = [d for d in demo["devices"] if d["protocol"] == protocol]
    return dict(found)


def expanded_tags(dev: dict[str, Any], templates: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The device's own tags plus its template instances, with names and addresses (or nodes) filled in."""
    tags = [dict(t) for t in dev.get("tags") or []]
    repeats = dev.get("repeat") or []
    for repeat in [repeats] if isinstance(repeats, dict) else repeats:
        first = repeat.get("first", 1)
        for i in range(repeat["count"]):
            n = first + i
            prefix = repeat["name"].format(n=n)
            for template_tag in templates[repeat["template"]]:
                tag = dict(template_tag)
                tag["name"] = f"{prefix}/{template_tag['name']}"
                if "address" in tag:
                    tag["address"] = repeat["start"] + i * repeat["stride"] + template_tag["address"]
                if "node" in tag:
                    tag["node"] = tag["node"].format(n=n)
                tags.append(tag)
    return tags


def opcua_key(node: str, default_namespace: str) -> tuple[str, str]:
    """(namespace URI, "s=...") for the node forms the demo may use."""
    if node.startswith("nsu="):
        namespace, _, rest = node[4:].partition(";")
        return namespace, rest
    assert not node.startswith("ns="), f"{node}: use the device namespace or nsu=, not a namespace index"
    return default_namespace, node


def check_range_and_unit(tag: Mapping[str, Any], point: Mapping[str, Any]) -> None:
    name = tag["name"]
    assert tag.get("unit") == point["unit"], f"{name}: unit {tag.get('unit')!r}, simulator says {point['unit']!r}"
    for bound in ("min", "max"):
        if point[bound] is not None:
            assert tag.get(bound) == pytest.approx(point[bound]), f"{name}: {bound} should be {point[bound]}"
        else:
            assert tag.get(bound) is None, f"{name}: the simulator has no {bound}"


def test_gateway_identity_and_isa95_placement(demo: dict[str, Any]) -> None:
    assert demo["gateway"]["id"] == "edge-demo-01"
    assert demo["gateway"]["enterprise"] == "acme"
    assert demo["gateway"]["site"] == "dunkirk"
    coater, rack = device(demo, "opcua"), device(demo, "modbus")
    assert (coater["area"], coater["line"]) == ("electrode", "cathode-1")
    assert (rack["area"], rack["line"]) == ("formation", "hall-a")
    assert len({d["name"] for d in demo["devices"]}) == len(demo["devices"])


def test_coater_tags_read_every_opcua_point_exactly_once(demo: dict[str, Any]) -> None:
    (server,) = describe_default_set()["opcua"]
    dev = device(demo, "opcua")
    endpoint, described_endpoint = urlsplit(dev["endpoint"]), urlsplit(server["endpoint"])
    assert (endpoint.hostname, endpoint.port) == (described_endpoint.hostname, described_endpoint.port)
    assert dev["namespace"] == server["namespace"]
    assert dev.get("mode", "subscribe") == "subscribe"

    points = {(server["namespace"], p["node"]): p for p in server["points"]}
    tags = expanded_tags(dev, demo.get("templates") or {})
    assert len({t["name"] for t in tags}) == len(tags), "tag names must be unique within the device"
    keys = Counter(opcua_key(t["node"], dev["namespace"]) for t in tags)
    missing = sorted(node for key, node in points if (key, node) not in keys)
    assert not missing, f"points no tag reads: {missing}"
    assert not [k for k in keys if k not in points], "tags that point at nothing"
    assert not [k for k, count in keys.items() if count > 1], "points read more than once"
    for tag in tags:
        point = points[opcua_key(tag["node"], dev["namespace"])]
        if "type" in tag:
            assert tag["type"] == point["type"], tag["name"]
        check_range_and_unit(tag, point)


def test_rack_tags_read_every_modbus_point_exactly_once(demo: dict[str, Any]) -> None:
    (server,) = describe_default_set()["modbus"]
    dev = device(demo, "modbus")
    assert dev.get("transport", "tcp") == "tcp"
    assert (dev["host"], dev["port"], dev.get("unit_id", 1)) == (server["host"], server["port"], server["unit_id"])

    points = {(p["table"], p["address"]): p for p in server["points"]}
    tags = expanded_tags(dev, demo.get("templates") or {})
    assert len({t["name"] for t in tags}) == len(tags), "tag names must be unique within the device"
    for tag in tags:
        assert isinstance(tag["address"], int), f"{tag['name']}: the demo uses plain 0-based addresses"
    keys = Counter((t.get("table", "holding"), t["address"]) for t in tags)
    missing = sorted(p["point"] for key, p in points.items() if key not in keys)
    assert not missing, f"points no tag reads: {missing}"
    assert not [k for k in keys if k not in points], "tags that point at nothing"
    assert not [k for k, count in keys.items() if count > 1], "points read more than once"
    for tag in tags:
        point = points[(tag.get("table", "holding"), tag["address"])]
        assert tag["type"] == point["type"], tag["name"]
        assert tag.get("scale", 1.0) == pytest.approx(point["scale"]), tag["name"]
        if tag["type"] in MULTI_REGISTER_TYPES:
            assert (tag.get("order") or dev.get("order") or "ABCD") == point["order"], tag["name"]
        check_range_and_unit(tag, point)


def test_the_rack_repeat_covers_the_simulated_channels(demo: dict[str, Any]) -> None:
    (server,) = describe_default_set()["modbus"]
    repeats = device(demo, "modbus")["repeat"]
    channel = next(r for r in repeats if r["start"] == server["channel_start"])
    assert (channel["count"], channel["stride"]) == (server["channels"], server["channel_stride"])
    alarms = next(r for r in repeats if r["start"] == server["channel_alarm_coil_start"])
    assert (alarms["count"], alarms["stride"]) == (server["channels"], 1)


def test_deadbands_sit_on_noisy_numeric_tags_only(demo: dict[str, Any]) -> None:
    templates = demo.get("templates") or {}
    for protocol in ("opcua", "modbus"):
        tags = expanded_tags(device(demo, protocol), templates)
        with_deadband = [t for t in tags if t.get("deadband") is not None]
        assert len(with_deadband) >= 3, protocol
        for tag in with_deadband:
            assert tag.get("type") in NUMERIC_TYPES, tag["name"]
            assert tag["deadband"] > 0, tag["name"]
