"""The browse planner: names, units, filters, skips, and templates + repeat for numbered sibling objects.

Every planned map is also loaded with the gateway's own tag-map loader, so "``cellgate check`` accepts it as is"
is checked for every case, not assumed.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gateway.browse_plan import (
    BrowsedDevice,
    BrowsedVariable,
    BrowsePlan,
    EngineeringUnit,
    path_selected,
    plan_tag_map,
    skip_reason,
    snake_segment,
    ucum_unit,
    unece_code,
)
from gateway.tagmap import OpcUaTag, Plant, load_plant_from_text

NS = "urn:test:plc"
UNECE = "http://www.opcfoundation.org/UA/units/un/cefact"
WRAPPER = {"gateway": {"id": "gw", "enterprise": "acme", "site": "plant"}, "mqtt": {"url": "mqtt://127.0.0.1:1883"}}


def packed(code: str) -> int:
    value = 0
    for char in code:
        value = (value << 8) | ord(char)
    return value


def var(*path: str, node: str | None = None, data_type: int | None = 11, **fields: Any) -> BrowsedVariable:
    return BrowsedVariable(path=path, node_id=node or f"nsu={NS};s={'.'.join(path)}", data_type=data_type,
                           data_type_name=fields.pop("data_type_name", "Double"), **fields)


def load(plan: BrowsePlan) -> Plant:
    document = {**WRAPPER, **({"templates": plan.templates} if plan.templates else {}), "devices": plan.devices}
    return load_plant_from_text(yaml.safe_dump(document, sort_keys=False), filename="<browse>", environ={})


def tags_by_node(plant: Plant) -> dict[str, OpcUaTag]:
    return {str(tag.node_id): tag for device in plant.devices for tag in device.tags if isinstance(tag, OpcUaTag)}


def plan(*variables: BrowsedVariable, device: str = "Rack01", **options: Any) -> BrowsePlan:
    return plan_tag_map([BrowsedDevice(device, f"nsu={NS};s={device}", variables)],
                        endpoint="opc.tcp://127.0.0.1:4840", namespace=NS, **options)


@pytest.mark.parametrize(
    ("browse_name", "segment"),
    [("AirTempSP", "air_temp_sp"), ("Zone03", "zone03"), ("CH001", "ch001"), ("HeaterOutput", "heater_output"),
     ("temperature", "temperature"), ("Motor Speed (rpm)", "motor_speed_rpm"), ("+#/", "node"),
     ("_Hidden", "hidden"), ("DB1.DBW4", "db1_dbw4")],
)
def test_browse_names_become_topic_safe_snake_case(browse_name: str, segment: str) -> None:
    assert snake_segment(browse_name) == segment


@pytest.mark.parametrize(
    ("unit", "ucum"),
    [(EngineeringUnit(UNECE, packed("CEL"), "°C"), "Cel"), (EngineeringUnit(UNECE, packed("2X"), "m/min"), "m/min"),
     (EngineeringUnit(UNECE, packed("AMH"), "Ah"), "A.h"), (EngineeringUnit(UNECE + "/", packed("P1"), "%"), "%"),
     (EngineeringUnit("http://unitsofmeasure.org", -1, "g/m2"), "g/m2"),
     (EngineeringUnit(UNECE, packed("ZZZ"), "furlong"), None), (EngineeringUnit("urn:vendor", 7, "bananas"), None)],
)
def test_unece_codes_map_to_ucum(unit: EngineeringUnit, ucum: str | None) -> None:
    assert ucum_unit(unit) == ucum


def test_unece_code_unpacks_the_unit_id() -> None:
    assert unece_code(4408652) == "CEL"
    assert unece_code(packed("2X")) == "2X"


@pytest.mark.parametrize(
    ("path", "include", "exclude", "selected"),
    [("M/Dryer/Zone01/AirTemp", [], [], True), ("M/Dryer/Zone01/AirTemp", ["M/Dryer/*"], [], True),
     ("M/Line/Speed", ["M/Dryer/*"], [], False), ("M/Dryer/Zone01/AirTemp", ["*"], ["*/Zone01/*"], False),
     ("M/Dryer/Zone02/AirTemp", ["*"], ["*/Zone01/*"], True)],
)
def test_include_and_exclude_globs_on_the_browse_path(
    path: str, include: list[str], exclude: list[str], selected: bool
) -> None:
    assert path_selected(path, include, exclude) is selected


@pytest.mark.parametrize(
    ("variable", "reason"),
    [(var("A"), None), (var("A", value_rank=1), None), (var("A", value_rank=2), None),
     (var("A", value_rank=-2), None), (var("A", value_rank=-3), None),
     (var("A", data_type=None, data_type_name="StepResult"), "unsupported_type:StepResult"),
     (var("A", data_type=None, data_type_name="StepResult", data_type_kind="structure"), None),
     (var("A", data_type=None, data_type_name="Mode", data_type_kind="enumeration"), None),
     (var("A", data_type=13, data_type_name="DateTime"), None),
     (var("A", data_type=25, data_type_name="DiagnosticInfo"), "unsupported_type:DiagnosticInfo"),
     (var("A", readable=False), "not readable (AccessLevel)")],
)
def test_what_is_skipped_and_why(variable: BrowsedVariable, reason: str | None) -> None:
    assert skip_reason(variable) == reason


def test_flat_tags_carry_type_unit_range_and_description() -> None:
    result = plan(
        var("Line", "Speed", unit=EngineeringUnit(UNECE, packed("2X"), "m/min"), low=0, high=80,
            description="Actual line speed."),
        var("Line", "Running", data_type=1, low=0, high=1),
        var("Recipe", data_type=12),
        var("Counts", data_type=7),
        var("Profile", value_rank=1, low=0, high=500),
        var("Status", data_type=None, data_type_name="PackMLStatus", data_type_kind="structure"),
        var("Mode", data_type=None, data_type_name="ModeEnum", data_type_kind="enumeration"),
        var("Diagnostics", data_type=25, data_type_name="DiagnosticInfo"),
    )
    plant = load(result)
    tags = tags_by_node(plant)
    speed = tags[f"nsu={NS};s=Line.Speed"]
    assert (speed.name, speed.type, speed.unit, speed.min, speed.max, speed.description) == (
        "line/speed", "float64", "m/min", 0, 80, "Actual line speed.")
    running = tags[f"nsu={NS};s=Line.Running"]
    assert (running.type, running.min, running.max) == ("bool", None, None)  # no range on a bool
    assert tags[f"nsu={NS};s=Recipe"].type == "string"
    assert tags[f"nsu={NS};s=Counts"].type == "uint32"
    profile = tags[f"nsu={NS};s=Profile"]  # an array: its element type, no range (ranges check scalars)
    assert (profile.type, profile.min, profile.max) == ("float64", None, None)
    assert tags[f"nsu={NS};s=Status"].type is None
    assert tags[f"nsu={NS};s=Mode"].type == "int32"
    assert [(s.path, s.reason) for s in result.skipped] == [("Rack01/Diagnostics", "unsupported_type:DiagnosticInfo")]
    device = plant.devices[0]
    assert (device.name, device.protocol, getattr(device, "namespace", None)) == ("rack01", "opcua", NS)
    assert getattr(device, "structures", None) is True  # a structure tag: load the type definitions


def channel(n: int, *, width: int = 3, extra: bool = False) -> list[BrowsedVariable]:
    name = f"CH{n:0{width}d}"
    out = [var("Channels", name, "Voltage", unit=EngineeringUnit(UNECE, packed("VLT"), "V"), low=0, high=5,
               description=f"Voltage of channel {n}."),
           var("Channels", name, "State", data_type=6, description="Channel state."),
           var("Channels", name, "Result", "Capacity", unit=EngineeringUnit(UNECE, packed("AMH"), "Ah"))]
    if extra:
        out.append(var("Channels", name, "Spare"))
    return out


def test_numbered_objects_with_the_same_children_become_one_template_and_one_repeat() -> None:
    variables = [v for n in range(1, 257) for v in channel(n)]
    result = plan(*variables, var("Heartbeat", data_type=7))
    assert result.repeats == 1 and len(result.templates) == 1
    (template,) = result.templates.values()
    assert [t["name"] for t in template] == ["voltage", "state", "result/capacity"]
    assert template[0]["node"] == f"nsu={NS};s=Channels.CH{{n:03d}}.Voltage"
    assert "description" not in template[0]  # differs per channel
    assert template[1]["description"] == "Channel state."  # the same for all
    device = result.devices[0]
    assert device["repeat"] == [{"template": "rack01-channels-ch", "count": 256, "first": 1,
                                 "name": "channels/ch{n:03d}"}]
    assert [t["name"] for t in device["tags"]] == ["heartbeat"]
    plant = load(result)
    tags = tags_by_node(plant)
    assert len(tags) == 256 * 3 + 1
    capacity = tags[f"nsu={NS};s=Channels.CH256.Result.Capacity"]
    assert (capacity.name, capacity.unit) == ("channels/ch256/result/capacity", "A.h")
    assert tags[f"nsu={NS};s=Channels.CH007.Voltage"].name == "channels/ch007/voltage"


def test_expanded_template_gives_the_same_tags_as_the_flat_map() -> None:
    variables = [v for n in range(1, 11) for v in channel(n, width=2)]
    templated = tags_by_node(load(plan(*variables)))
    with_templates = {node: (t.name, t.type, t.unit, t.min, t.max) for node, t in templated.items()}
    flat_plan = plan(*variables, templates=False)
    assert not flat_plan.templates
    flat = {node: (t.name, t.type, t.unit, t.min, t.max) for node, t in tags_by_node(load(flat_plan)).items()}
    assert with_templates == flat and len(flat) == 30


@pytest.mark.parametrize(
    "variables",
    [
        # one channel has an extra variable: not the same structure
        [v for n in range(1, 5) for v in channel(n, extra=(n == 3))],
        # numbers with a gap of one: no run of two
        [v for n in (1, 3, 5) for v in channel(n)],
        # numeric node ids cannot be written as a pattern
        [var("Channels", f"CH{n:03d}", "Voltage", node=f"nsu={NS};i={5000 + 7 * n}") for n in range(1, 5)],
    ],
    ids=["different-children", "not-consecutive", "numeric-node-ids"],
)
def test_no_template_when_instances_differ(variables: list[BrowsedVariable]) -> None:
    result = plan(*variables)
    assert not result.templates and "repeat" not in result.devices[0]
    assert len(tags_by_node(load(result))) == len(variables)


def test_braces_in_node_ids_survive_templates() -> None:
    variables = [var("Axis", f"A{n}", "Pos", node=f"nsu={NS};s={{plc}}.A{n}.Pos") for n in range(1, 4)]
    result = plan(*variables)
    assert result.repeats == 1
    assert set(tags_by_node(load(result))) == {f"nsu={NS};s={{plc}}.A{n}.Pos" for n in range(1, 4)}


def test_clashing_names_get_a_suffix() -> None:
    result = plan(var("Motor Speed"), var("Motor_Speed", node=f"nsu={NS};s=other"))
    names = sorted(t.name for t in load(result).devices[0].tags)
    assert names == ["motor_speed", "motor_speed_2"]


def test_devices_with_their_own_node_ids_get_their_own_template() -> None:
    devices = [BrowsedDevice(name, f"nsu={NS};s={name}",
                             tuple(var(name, "Zones", f"Zone{n}", "Temp", node=f"nsu={NS};s={name}.Zone{n}.Temp")
                                   for n in range(1, 4)))
               for name in ("Oven1", "Oven2")]
    result = plan_tag_map(devices, endpoint="opc.tcp://127.0.0.1:4840", namespace=NS)
    # The node patterns differ (Oven1 / Oven2), so two templates; each device has one repeat.
    assert len(result.templates) == 2
    assert [d["name"] for d in result.devices] == ["oven1", "oven2"]
    assert len(tags_by_node(load(result))) == 6
