"""One vocabulary: the tag map's enums reach the read plan as they are, with no parallel string sets."""

from __future__ import annotations

from gateway.assembly import active_devices, modbus_plan
from gateway.sources.modbus_plan import BYTE_ORDERS, TABLES, VALUE_TYPES
from gateway.tagmap import ByteOrder, DataType, ModbusDevice, Table, load_plant_from_text

PLANT = """
gateway: {id: gw, enterprise: acme, site: s1}
mqtt: {url: "mqtt://127.0.0.1:1883"}
devices:
  - name: rack
    area: a
    line: l
    protocol: modbus
    host: 127.0.0.1
    port: 1502
    order: CDAB
    tags:
      - {name: v, address: 40001, type: float32}
      - {name: run, address: 1, table: coil, type: bool}
"""


def test_the_planner_knows_exactly_the_tag_maps_members() -> None:
    assert tuple(Table) == TABLES
    assert tuple(DataType) == VALUE_TYPES
    assert tuple(ByteOrder) == BYTE_ORDERS


def test_the_read_plan_carries_the_tag_maps_enum_members() -> None:
    device = active_devices(load_plant_from_text(PLANT))[0]
    assert isinstance(device, ModbusDevice)
    requests = modbus_plan(device).requests
    tables = {request.table for request in requests}
    assert tables == {Table.HOLDING, Table.COIL}
    assert all(type(request.table) is Table for request in requests)
