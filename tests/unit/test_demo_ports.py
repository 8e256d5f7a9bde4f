"""``cellgate demo --any-ports``: free ports for every simulator and the embedded broker, none of the tag map's."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.cli import DEFAULT_DEMO_CONFIG
from gateway.demo import choose_ports
from gateway.tagmap import load_plant
from gateway.tagmap.model import ModbusDevice, OpcUaDevice


def test_any_ports_takes_none_of_the_tag_maps_ports() -> None:
    plant = load_plant(str(DEFAULT_DEMO_CONFIG))
    map_ports = {plant.mqtt.port}
    map_ports |= {urlsplit(d.endpoint).port or 4840 for d in plant.devices if isinstance(d, OpcUaDevice)}
    map_ports |= {d.port for d in plant.devices if isinstance(d, ModbusDevice)}
    ports = choose_ports(plant, any_ports=True)
    chosen = [ports.opcua, ports.broker, *ports.modbus.values()]
    assert set(ports.modbus) == {d.name for d in plant.devices if isinstance(d, ModbusDevice)}
    assert not set(chosen) & map_ports, (chosen, map_ports)
    assert len(set(chosen)) == len(chosen)
    assert all(port > 0 for port in chosen)
