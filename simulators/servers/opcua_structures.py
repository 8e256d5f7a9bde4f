"""Arrays and structured values of the OPC UA simulator, served as real PLC servers do (asyncua 2.1).

For a coater (``Coater01`` below), next to its scalar points::

    Gauge/ProfileArray     Double[120]            s=Coater01.Gauge.ProfileArray   (ValueRank 1)
    PackML/Status          PackMLStatus           s=Coater01.PackML.Status
    DryerZoneStatus        DryerZoneStatus[10]    s=Coater01.DryerZoneStatus      (ValueRank 1, below the machine)

``PackMLStatus`` = {StateCurrent: Int32, UnitModeCurrent: Int32, CurMachSpeed: Double, Blocked: Boolean,
Starved: Boolean, Counts: PackMLCounts}, ``PackMLCounts`` = {ProdProcessedCount: UInt32, ProdDefectiveCount:
UInt32} (a nested structure), ``DryerZoneStatus`` = {AirTempSP: Double, AirTemp: Double, HeaterOutput: Double}
(an array of structures). The data types live in the simulators' namespace with their DataTypeDefinition, so a
client can decode them (asyncua: ``load_data_type_definitions``). Values follow the scalar points of the same
names at every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.structures104 import load_data_type_definitions, new_struct, new_struct_field
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from simulators.machines.coater import Coater
from simulators.machines.points import Value

PROFILE_NODE = "Gauge.ProfileArray"
STATUS_NODE = "PackML.Status"
ZONES_NODE = "DryerZoneStatus"


@dataclass(frozen=True, slots=True)
class StructureTypes:
    counts: type[Any]
    status: type[Any]
    zone: type[Any]
    status_id: ua.NodeId
    zone_id: ua.NodeId


async def add_structure_types(server: Server, namespace_index: int) -> StructureTypes:
    """Create PackMLCounts, PackMLStatus and DryerZoneStatus and load their Python classes in the server."""
    counts, _ = await new_struct(server, namespace_index, "PackMLCounts", [
        new_struct_field("ProdProcessedCount", ua.VariantType.UInt32),
        new_struct_field("ProdDefectiveCount", ua.VariantType.UInt32),
    ])
    status, _ = await new_struct(server, namespace_index, "PackMLStatus", [
        new_struct_field("StateCurrent", ua.VariantType.Int32),
        new_struct_field("UnitModeCurrent", ua.VariantType.Int32),
        new_struct_field("CurMachSpeed", ua.VariantType.Double),
        new_struct_field("Blocked", ua.VariantType.Boolean),
        new_struct_field("Starved", ua.VariantType.Boolean),
        new_struct_field("Counts", counts),
    ])
    zone, _ = await new_struct(server, namespace_index, "DryerZoneStatus", [
        new_struct_field("AirTempSP", ua.VariantType.Double),
        new_struct_field("AirTemp", ua.VariantType.Double),
        new_struct_field("HeaterOutput", ua.VariantType.Double),
    ])
    # asyncua keeps one class per type name for the whole process (in the ``ua`` module) and makes none when a
    # class for the same type id is there already: a second server of this process reuses it.
    loaded = await load_data_type_definitions(server, overwrite_existing=True)

    def class_of(name: str, node: Node) -> type[Any] | None:
        found = loaded.get(name) or getattr(ua, name, None)
        return found if getattr(found, "data_type", None) == node.nodeid else None

    counts_cls = class_of("PackMLCounts", counts)
    status_cls = class_of("PackMLStatus", status)
    zone_cls = class_of("DryerZoneStatus", zone)
    if counts_cls is None or status_cls is None or zone_cls is None:
        raise RuntimeError("asyncua did not load the simulator's structure types")
    return StructureTypes(counts_cls, status_cls, zone_cls, status.nodeid, zone.nodeid)


def coater_extras(machine: Coater, types: StructureTypes, zones: int) -> dict[str, ua.Variant]:
    """The values of the array and structure nodes of a coater, from its current scalar values."""
    values: Mapping[str, Value] = machine.values()
    status = types.status(
        StateCurrent=int(values["PackML.StateCurrent"]),
        UnitModeCurrent=int(values["PackML.UnitModeCurrent"]),
        CurMachSpeed=float(values["Line.Speed"]),
        Blocked=bool(values["PackML.Blocked"]),
        Starved=bool(values["PackML.Starved"]),
        Counts=types.counts(ProdProcessedCount=ua.UInt32(int(values["PackML.ProdProcessedCount"])),
                            ProdDefectiveCount=ua.UInt32(int(values["PackML.ProdDefectiveCount"]))),
    )
    zone_values = [
        types.zone(AirTempSP=float(values[f"Dryer.Zone{n:02d}.AirTempSP"]),
                   AirTemp=float(values[f"Dryer.Zone{n:02d}.AirTemp"]),
                   HeaterOutput=float(values[f"Dryer.Zone{n:02d}.HeaterOutput"]))
        for n in range(1, zones + 1)
    ]
    return {
        PROFILE_NODE: ua.Variant(machine.cross_web_profile(), ua.VariantType.Double),
        STATUS_NODE: ua.Variant(status, ua.VariantType.ExtensionObject),
        ZONES_NODE: ua.Variant(zone_values, ua.VariantType.ExtensionObject),
    }


async def add_coater_extras(
    parents: Mapping[str, Node], machine_name: str, machine: Coater, types: StructureTypes, namespace_index: int,
    zones: int,
) -> dict[str, ua.NodeId]:
    """Add the array and structure variables below the coater's Gauge and PackML objects and the machine."""
    initial = coater_extras(machine, types, zones)
    data_types = {PROFILE_NODE: ua.NodeId(ua.Int32(ObjectIds.Double)), STATUS_NODE: types.status_id,
                  ZONES_NODE: types.zone_id}
    out: dict[str, ua.NodeId] = {}
    for point, variant in initial.items():
        group, _, leaf = point.rpartition(".")
        node_id = ua.NodeId(ua.String(f"{machine_name}.{point}"), ua.Int16(namespace_index), ua.NodeIdType.String)
        variable = await parents[group].add_variable(
            node_id, ua.QualifiedName(leaf, namespace_index), variant, datatype=data_types[point])
        if point != STATUS_NODE:
            size = len(variant.Value)
            await variable.write_value_rank(ua.ValueRank.OneDimension)
            await variable.write_attribute(
                AttributeIds.ArrayDimensions, ua.DataValue(ua.Variant([size], ua.VariantType.UInt32)))
        out[point] = node_id
    return out
