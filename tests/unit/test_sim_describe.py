"""``simulators.describe``: the plan of a simulator run and its address map as a tag-map fragment.

Every variant (default set, scaled integers, CDAB, machines moved to the other protocol, a 10-rack hall) must load
through the gateway's tag-map loader and read every point the servers serve exactly once, at the address and with
the type the servers use.
"""

from __future__ import annotations

import pytest

from gateway.tagmap import ModbusDevice, OpcUaDevice, Plant, load_plant_from_text
from simulators.describe import (
    MachineKind,
    MachinePlan,
    Protocol,
    SimulatorOptions,
    SimulatorPlan,
    describe_yaml,
    plan_simulators,
    snake_segment,
    tag_name,
)
from simulators.machines.points import DataType
from simulators.servers.address_map import (
    MAX_VARIABLES_PER_OBJECT,
    NAMESPACE_URI,
    Encoding,
    NumberFormat,
    Table,
    WordOrder,
)

WRAPPER = "gateway: {id: describe, enterprise: acme, site: dunkirk}\nmqtt: {url: 'mqtt://127.0.0.1:1883'}\n"
OPCUA_TYPES = {DataType.DOUBLE: "float64", DataType.INT32: "int32", DataType.UINT32: "uint32",
               DataType.BOOLEAN: "bool", DataType.STRING: "string"}

VARIANTS = {
    "default": SimulatorOptions(),
    "scaled-cdab": SimulatorOptions(number_format=NumberFormat.SCALED, word_order=WordOrder.CDAB),
    "swapped-protocols": SimulatorOptions(
        protocols={MachineKind.CALENDER: Protocol.MODBUS, MachineKind.STACKER: Protocol.OPCUA,
                   MachineKind.RACK: Protocol.OPCUA}, racks=1, channels=8),
    "coater-over-modbus-scaled": SimulatorOptions(protocols={MachineKind.COATER: Protocol.MODBUS},
                                                  number_format=NumberFormat.SCALED, racks=0),
    "hall": SimulatorOptions(racks=10, channels=256, coaters=0, calenders=0, stackers=0),
}


def load(plan: SimulatorPlan) -> Plant:
    return load_plant_from_text(WRAPPER + describe_yaml(plan), filename="<describe>", environ={})


def check_covers(machine: MachinePlan, plant: Plant) -> None:
    device = plant.device(machine.device)
    specs = {p.name: p for p in machine.points}
    seen: list[str] = []
    if isinstance(device, OpcUaDevice):
        assert machine.protocol is Protocol.OPCUA
        assert device.namespace == NAMESPACE_URI
        prefix = f"s={machine.equipment}."
        for ua_tag in device.tags:
            assert ua_tag.node.startswith(prefix), ua_tag.node
            point = ua_tag.node.removeprefix(prefix)
            assert ua_tag.type is not None and ua_tag.type.value == OPCUA_TYPES[specs[point].data_type], ua_tag.name
            seen.append(point)
    else:
        assert isinstance(device, ModbusDevice)
        assert machine.register_map is not None
        registers = {(r.table.value, r.address): r for r in machine.register_map}
        for tag in device.tags:
            register = registers[(tag.table.value, tag.address)]
            assert tag.type.value == register.encoding.value, tag.name
            assert tag.scale == pytest.approx(register.scale), tag.name
            if register.encoding is Encoding.STRING:
                assert tag.length == register.length
            seen.append(register.point)
    assert len(seen) == len(set(seen)), f"{machine.device}: a point is read twice"
    assert set(seen) == set(specs), f"{machine.device}: {sorted(set(specs) ^ set(seen))[:5]}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_describe_is_a_valid_tag_map_that_covers_every_served_point(variant: str) -> None:
    plan = plan_simulators(VARIANTS[variant])
    plant = load(plan)
    assert [d.name for d in plant.devices] == [m.device for m in plan.machines]
    for machine in plan.machines:
        check_covers(machine, plant)
    orders = {d.order for d in plant.devices if isinstance(d, ModbusDevice)}
    assert orders <= {VARIANTS[variant].word_order}


def test_default_plan_places_machines_and_ports() -> None:
    plan = plan_simulators()
    summary = [(m.device, m.equipment, m.area, m.line, m.protocol.value, m.port) for m in plan.machines]
    assert summary == [
        ("coater-01", "Coater01", "electrode", "cathode-1", "opcua", 4840),
        ("calender-01", "Calender01", "electrode", "cathode-1", "opcua", 4840),
        ("stacker-01", "Stacker01", "cell-assembly", "line-1", "modbus", 5022),
        ("rack-01", "Rack01", "formation", "hall-a", "modbus", 5020),
        ("rack-02", "Rack02", "formation", "hall-a", "modbus", 5021),
    ]
    coater = plan.machine("coater-01")
    assert "Gauge.Profile.Lane01" in {p.name for p in coater.points}  # extended points
    rack = plan.machine("rack-01")
    assert "Ch016.CellId" in {p.name for p in rack.points}  # full protocol + extended channel points


def test_ports_follow_the_base_port_and_can_be_pinned_or_free() -> None:
    plan = plan_simulators(SimulatorOptions(racks=3, modbus_port=6000, modbus_ports={"stacker-01": 7000}))
    assert {m.device: m.port for m in plan.served(Protocol.MODBUS)} == {
        "stacker-01": 7000, "rack-01": 6000, "rack-02": 6001, "rack-03": 6002}
    free = plan_simulators(SimulatorOptions(modbus_port=0))
    assert {m.port for m in free.served(Protocol.MODBUS)} == {0}
    with pytest.raises(ValueError, match="same port"):
        plan_simulators(SimulatorOptions(modbus_ports={"stacker-01": 5020}))


def test_no_opcua_object_holds_more_than_100_variables() -> None:
    plan = plan_simulators(SimulatorOptions(protocols={MachineKind.RACK: Protocol.OPCUA}, channels=256))
    for machine in plan.machines:
        parents: dict[str, int] = {}
        for point in machine.points:
            parent = point.name.rpartition(".")[0]
            parents[parent] = parents.get(parent, 0) + 1
        assert max(parents.values()) <= MAX_VARIABLES_PER_OBJECT, machine.device


def test_register_tables_of_the_generic_layout() -> None:
    plan = plan_simulators()
    stacker = plan.machine("stacker-01")
    assert stacker.register_map is not None
    tables = {r.point: r.table for r in stacker.register_map}
    assert tables["Alarms.SeparatorBreak"] is Table.COIL
    assert tables["PackML.Blocked"] is Table.DISCRETE
    assert tables["Separator.TensionSP"] is Table.HOLDING
    assert tables["Separator.Tension"] is Table.INPUT
    addresses = {r.point: r.address for r in stacker.register_map}
    assert addresses["PackML.StateCurrent"] % 100 == 0  # each section starts at a multiple of 100


@pytest.mark.parametrize(("segment", "expected"), [
    ("AirTempSP", "air_temperature_sp"), ("Zone03", "zone03"), ("PackML", "packml"), ("NgHiPot", "ng_hipot"),
    ("MachDesignSpeed", "mach_design_speed"), ("OutOS", "out_os"), ("CellsNG", "cells_ng"), ("Ch001", "ch001"),
])
def test_snake_segment(segment: str, expected: str) -> None:
    assert snake_segment(segment) == expected


def test_rack_tag_names_keep_the_demo_names() -> None:
    assert tag_name("Rack.Heartbeat", MachineKind.RACK) == "heartbeat"
    assert tag_name("Rack.AmbientTemp", MachineKind.RACK) == "ambient/temperature"
    assert tag_name("Dryer.Zone03.AirTemp", MachineKind.COATER) == "dryer/zone03/air_temperature"


def test_racks_of_a_run_never_name_a_cell_alike() -> None:
    from simulators.machines.formation import CELL_ID_CHARACTERS, FormationRack
    from simulators.runner import build_model

    plan = plan_simulators(SimulatorOptions(racks=3, channels=1008))
    racks = [build_model(machine, seed=7) for machine in plan.machines if machine.kind is MachineKind.RACK]
    ids = [channel.cell_id for rack in racks if isinstance(rack, FormationRack) for channel in rack.channels]
    assert len(ids) == 3 * 1008
    assert len(set(ids)) == len(ids)
    assert {cell_id[:7] for cell_id in ids} == {"CELL01-", "CELL02-", "CELL03-"}
    assert max(map(len, ids)) <= CELL_ID_CHARACTERS  # what the CellId registers hold, so nothing is cut off


def test_a_cell_id_prefix_too_long_for_the_cellid_point_is_refused() -> None:
    from simulators.machines.formation import FormationConfig

    assert FormationConfig(channels=64, cell_id_prefix="CELL-R1-").channels == 64  # 8 + 8 characters: fits
    with pytest.raises(ValueError, match="16-character CellId"):
        FormationConfig(channels=100, cell_id_prefix="CELL-R1-")  # channel 100's ids need 9 digits
