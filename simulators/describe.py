"""Which machines a simulator run serves, where, and the address map of every point (pure: no sockets).

``plan_simulators(SimulatorOptions(...))`` decides the set: machines, names, ISA-95 placement, protocol, port and
register map of each. ``simulators.runner`` serves a plan; ``describe_plan(plan)`` turns it into a tag-map
fragment (``templates`` + ``devices``) that reads every point it serves, and ``describe_yaml(plan)`` prints that
as YAML (``python -m simulators --describe``).

The default set (``SimulatorOptions()``):

==========  ============  ==============================  ========  ======================================
device      equipment     ISA-95 area / line              protocol  where
==========  ============  ==============================  ========  ======================================
coater-01   Coater01      electrode / cathode-1           OPC UA    opc.tcp://127.0.0.1:4840, one server
calender-01 Calender01    electrode / cathode-1           OPC UA    for both, namespace urn:cellgate:simulators
stacker-01  Stacker01     cell-assembly / line-1          Modbus    127.0.0.1:5022, unit 1
rack-01     Rack01        formation / hall-a              Modbus    127.0.0.1:5020, unit 1
rack-02     Rack02        formation / hall-a              Modbus    127.0.0.1:5021, unit 1
==========  ============  ==============================  ========  ======================================

Every Modbus machine has its own port, as real racks have their own address: racks first (``modbus_port`` for
rack-01, +1 for each next rack), then stackers, then coaters and calenders served over Modbus. ``modbus_port=0``
gives every one a free port (known once bound); ``modbus_ports`` pins single machines. The coater uses its
extended point list, the racks the full formation + grading protocol with the extended channel points.

Tag names follow the point names: each dotted segment becomes a snake_case topic segment (``Dryer.Zone03.AirTempSP``
-> ``dryer/zone03/air_temperature_sp``); rack-level points drop their ``Rack.`` prefix and keep the names the demo
map has always used (``heartbeat``, ``ambient/temperature``, ...); rack channels are a template instance per channel
(``ch001/voltage``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import yaml

from simulators.machines.calender import CalenderConfig, calender_points
from simulators.machines.coater import CoaterConfig, coater_points
from simulators.machines.formation import FormationConfig, channel_name, formation_rack_points
from simulators.machines.points import DataType, PointSpec
from simulators.machines.stacker import StackerConfig, stacker_points
from simulators.servers.address_map import (
    CHANNEL_ALARM_COIL_BASE,
    DEFAULT_UNIT_ID,
    NAMESPACE_URI,
    Encoding,
    NumberFormat,
    RegisterMap,
    RegisterPoint,
    Table,
    WordOrder,
    channel_base,
    channel_stride,
    formation_register_map,
    machine_register_map,
    node_id_string,
)

HOST = "127.0.0.1"
DEFAULT_OPCUA_PORT = 4840
DEFAULT_MODBUS_PORT = 5020
DEFAULT_RACKS = 2
DEFAULT_CHANNELS = 16
RACK_CELL_SERIAL_STRIDE = 10_000  # a rack channel's own cell ids: channel n counts from n x 10,000
DEFAULT_STEP_HZ = 5.0
DEFAULT_RACK_STEP_HZ = 1.0
RACK_MAX_GAP = 12
CHANNEL_TEMPLATE = "cycler-channel"
CHANNEL_ALARM_TEMPLATE = "cycler-channel-alarm"


class MachineKind(StrEnum):
    COATER = "coater"
    CALENDER = "calender"
    STACKER = "stacker"
    RACK = "rack"


class Protocol(StrEnum):
    OPCUA = "opcua"
    MODBUS = "modbus"


DEFAULT_PROTOCOLS: Mapping[MachineKind, Protocol] = {
    MachineKind.COATER: Protocol.OPCUA,
    MachineKind.CALENDER: Protocol.OPCUA,
    MachineKind.STACKER: Protocol.MODBUS,
    MachineKind.RACK: Protocol.MODBUS,
}
# Modbus machines get their ports in this order (racks first, so --modbus-port is rack-01's port).
_MODBUS_PORT_ORDER = (MachineKind.RACK, MachineKind.STACKER, MachineKind.COATER, MachineKind.CALENDER)
_EQUIPMENT_PREFIX: Mapping[MachineKind, str] = {
    MachineKind.COATER: "Coater", MachineKind.CALENDER: "Calender", MachineKind.STACKER: "Stacker",
    MachineKind.RACK: "Rack",
}
_INTERVAL_MS: Mapping[MachineKind, int] = {
    MachineKind.COATER: 250, MachineKind.CALENDER: 250, MachineKind.STACKER: 500, MachineKind.RACK: 1000,
}

ModelConfig = CoaterConfig | CalenderConfig | StackerConfig | FormationConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorOptions:
    """What to simulate and where. Counts may be 0 (a run without that machine type)."""

    racks: int = DEFAULT_RACKS
    channels: int = DEFAULT_CHANNELS
    coaters: int = 1
    calenders: int = 1
    stackers: int = 1
    protocols: Mapping[MachineKind, Protocol] = field(default_factory=lambda: dict(DEFAULT_PROTOCOLS))
    number_format: NumberFormat = NumberFormat.FLOAT32
    word_order: WordOrder = WordOrder.ABCD
    host: str = HOST
    opcua_port: int = DEFAULT_OPCUA_PORT
    modbus_port: int = DEFAULT_MODBUS_PORT
    modbus_ports: Mapping[str, int] = field(default_factory=dict)
    seed: int = 1
    speedup: float = 1.0
    step_hz: float = DEFAULT_STEP_HZ
    rack_step_hz: float = DEFAULT_RACK_STEP_HZ

    def __post_init__(self) -> None:
        for name in ("racks", "coaters", "calenders", "stackers"):
            if not 0 <= getattr(self, name) <= 99:
                raise ValueError(f"{name} must be 0..99")
        if not 1 <= self.channels <= 1008:
            raise ValueError("channels must be 1..1008")
        for name in ("opcua_port", "modbus_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be 0..65535")
        for device, port in self.modbus_ports.items():
            if not 0 <= port <= 65535:
                raise ValueError(f"modbus port of {device} must be 0..65535")


@dataclass(frozen=True, slots=True, kw_only=True)
class MachinePlan:
    """One simulated machine: identity, placement, transport and address map."""

    kind: MachineKind
    device: str  # tag-map device name, e.g. "rack-01"
    equipment: str  # model / OPC UA / fault name, e.g. "Rack01"
    area: str
    line: str
    description: str
    protocol: Protocol
    port: int  # Modbus port, or the OPC UA server's port; 0 = a free one
    config: ModelConfig
    points: tuple[PointSpec, ...]
    register_map: RegisterMap | None  # Modbus only
    interval_ms: int
    channels: int = 0  # racks only
    unit_id: int = DEFAULT_UNIT_ID


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorPlan:
    options: SimulatorOptions
    machines: tuple[MachinePlan, ...]

    def served(self, protocol: Protocol) -> tuple[MachinePlan, ...]:
        return tuple(m for m in self.machines if m.protocol is protocol)

    def machine(self, device: str) -> MachinePlan:
        for machine in self.machines:
            if machine.device == device:
                return machine
        raise KeyError(device)


def _model_config(kind: MachineKind, index: int, options: SimulatorOptions) -> ModelConfig:
    if kind is MachineKind.COATER:
        return CoaterConfig(extended_points=True)
    if kind is MachineKind.CALENDER:
        return CalenderConfig()
    if kind is MachineKind.STACKER:
        return StackerConfig()
    # Rack 3's channel 12 names its cells CELL03-00120001, ... (a stride of 10,000 keeps 1,008 channels in 16
    # characters): unique across the racks of a run, as real cell ids are.
    return FormationConfig.full(channels=options.channels, cell_id_prefix=f"CELL{index:02d}-",
                                cell_serial_stride=RACK_CELL_SERIAL_STRIDE)


def model_points(config: ModelConfig) -> tuple[PointSpec, ...]:
    if isinstance(config, CoaterConfig):
        return coater_points(len(config.zone_setpoints_cel), config=config)
    if isinstance(config, CalenderConfig):
        return calender_points(config)
    if isinstance(config, StackerConfig):
        return stacker_points(config)
    return formation_rack_points(config.channels, extended=config.extended_points)


def _placement(kind: MachineKind, index: int) -> tuple[str, str, str]:
    """(area, line, description) of machine ``index`` (1-based) of ``kind``."""
    if kind is MachineKind.COATER:
        return "electrode", f"cathode-{index}", "Slot-die electrode coater with a 10-zone dryer (simulated)."
    if kind is MachineKind.CALENDER:
        return "electrode", f"cathode-{index}", "Calender (roll press) for coated cathode (simulated)."
    if kind is MachineKind.STACKER:
        return "cell-assembly", f"line-{index}", "Z-fold pouch-cell stacker (simulated)."
    return "formation", "hall-a", "Formation rack, formation and grading protocol (simulated)."


def plan_simulators(options: SimulatorOptions | None = None) -> SimulatorPlan:
    """The machines of a run, in a fixed order (coaters, calenders, stackers, racks), with ports assigned."""
    options = options if options is not None else SimulatorOptions()
    counts = {MachineKind.COATER: options.coaters, MachineKind.CALENDER: options.calenders,
              MachineKind.STACKER: options.stackers, MachineKind.RACK: options.racks}
    protocols = {**DEFAULT_PROTOCOLS, **options.protocols}
    modbus_order = [(kind, index) for kind in _MODBUS_PORT_ORDER if protocols[kind] is Protocol.MODBUS
                    for index in range(1, counts[kind] + 1)]
    machines: list[MachinePlan] = []
    for kind in (MachineKind.COATER, MachineKind.CALENDER, MachineKind.STACKER, MachineKind.RACK):
        for index in range(1, counts[kind] + 1):
            device = f"{kind.value}-{index:02d}"
            protocol = protocols[kind]
            config = _model_config(kind, index, options)
            points = model_points(config)
            register_map: RegisterMap | None = None
            if protocol is Protocol.MODBUS:
                position = modbus_order.index((kind, index))
                default_port = options.modbus_port + position if options.modbus_port else 0
                port = options.modbus_ports.get(device, default_port)
                if isinstance(config, FormationConfig):
                    register_map = formation_register_map(config.channels, extended=config.extended_points,
                                                          number_format=options.number_format)
                else:
                    register_map = machine_register_map(points, number_format=options.number_format)
            else:
                port = options.opcua_port
            area, line, description = _placement(kind, index)
            machines.append(MachinePlan(
                kind=kind, device=device, equipment=f"{_EQUIPMENT_PREFIX[kind]}{index:02d}", area=area, line=line,
                description=description, protocol=protocol, port=port, config=config, points=points,
                register_map=register_map, interval_ms=_INTERVAL_MS[kind],
                channels=config.channels if isinstance(config, FormationConfig) else 0,
            ))
    ports = [m.port for m in machines if m.protocol is Protocol.MODBUS and m.port]
    if len(ports) != len(set(ports)):
        raise ValueError(f"two Modbus machines on the same port: {sorted(ports)}")
    if options.opcua_port and options.opcua_port in ports and any(m.protocol is Protocol.OPCUA for m in machines):
        raise ValueError(f"port {options.opcua_port} is both the OPC UA port and a Modbus port")
    return SimulatorPlan(options=options, machines=tuple(machines))


# ------------------------------------------------------------------------------------------------ tag names

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+\d*|[A-Z]+\d*|\d+")
_SEGMENT_NAMES: Mapping[str, str] = {"PackML": "packml"}
_WORD_NAMES: Mapping[str, str] = {"temp": "temperature"}
# Rack-level points keep the names config/demo.yaml has always given them (subscribers use them).
_RACK_TAG_NAMES: Mapping[str, str] = {
    "Rack.StateCurrent": "packml/state_current",
    "Rack.DcBusVoltage": "dc_bus/voltage",
    "Rack.GridPower": "grid/power",
    "Rack.ActiveEnergy": "grid/energy",
    "Rack.AmbientTemp": "ambient/temperature",
    "Rack.ClampPressure": "clamp/pressure",
    "Rack.ClampPressureSP": "clamp/pressure_sp",
    "Rack.PlateTemp": "plate/temperature",
}


def snake_segment(segment: str) -> str:
    """``AirTempSP`` -> ``air_temperature_sp``; ``Zone03`` -> ``zone03``; ``HiPot`` -> ``hipot``."""
    if segment in _SEGMENT_NAMES:
        return _SEGMENT_NAMES[segment]
    words = [w.lower() for w in _WORD.findall(segment)]
    text = "_".join(_WORD_NAMES.get(w, w) for w in words)
    return text.replace("hi_pot", "hipot")


def tag_name(point: str, kind: MachineKind) -> str:
    """The tag-map name of a model point (see the module docstring)."""
    if kind is MachineKind.RACK:
        if point in _RACK_TAG_NAMES:
            return _RACK_TAG_NAMES[point]
        point = point.removeprefix("Rack.")
    return "/".join(snake_segment(segment) for segment in point.split("."))


# ------------------------------------------------------------------------------------------------ describe

_TAGMAP_TYPES: Mapping[DataType, str] = {
    DataType.DOUBLE: "float64", DataType.INT32: "int32", DataType.UINT32: "uint32", DataType.BOOLEAN: "bool",
    DataType.STRING: "string",
}


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _meta(spec: PointSpec, *, numeric: bool, description: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.unit is not None:
        out["unit"] = spec.unit
    if numeric:
        if spec.min is not None:
            out["min"] = _number(spec.min)
        if spec.max is not None:
            out["max"] = _number(spec.max)
    out["description"] = description if description is not None else spec.description
    return out


def _opcua_tag(name: str, node: str, spec: PointSpec, description: str | None = None) -> dict[str, Any]:
    numeric = spec.data_type not in (DataType.BOOLEAN, DataType.STRING)
    return {"name": name, "node": node, "type": _TAGMAP_TYPES[spec.data_type],
            **_meta(spec, numeric=numeric, description=description)}


def _modbus_tag(name: str, register: RegisterPoint, address: int, spec: PointSpec,
                description: str | None = None) -> dict[str, Any]:
    tag: dict[str, Any] = {"name": name}
    if register.table is not Table.HOLDING:
        tag["table"] = register.table.value
    tag["address"] = address
    tag["type"] = register.encoding.value
    if register.encoding is Encoding.STRING:
        tag["length"] = register.length
    if register.scale != 1.0:
        tag["scale"] = register.scale
    numeric = register.encoding not in (Encoding.BOOL, Encoding.STRING)
    return {**tag, **_meta(spec, numeric=numeric, description=description)}


_CHANNEL_POINT = re.compile(r"^Ch\d+\.")


def _channel_description(text: str) -> str:
    """``Channel 1 cell voltage.`` -> ``Cell voltage.`` (template tags describe every channel)."""
    rest = re.sub(r"^Channel \d+ ", "", text)
    if rest.startswith("is "):
        return f"The channel {rest}"
    return rest[:1].upper() + rest[1:]


def _channel_pattern(channels: int) -> str:
    width = len(channel_name(1, channels)) - 2
    return f"{{n:0{width}d}}"


def describe_machine(machine: MachinePlan, options: SimulatorOptions) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(device mapping, templates it uses) of one machine, as the tag map writes them."""
    device: dict[str, Any] = {
        "name": machine.device, "area": machine.area, "line": machine.line, "protocol": machine.protocol.value,
        "description": machine.description,
    }
    templates: dict[str, list[Any]] = {}
    rack = machine.kind is MachineKind.RACK
    own = [spec for spec in machine.points if not (rack and _CHANNEL_POINT.match(spec.name))]
    first = channel_name(1, machine.channels) + "." if rack else None
    first_channel = [spec for spec in machine.points if first is not None and spec.name.startswith(first)]
    pattern = _channel_pattern(machine.channels) if rack else ""
    if machine.protocol is Protocol.OPCUA:
        device["endpoint"] = f"opc.tcp://{options.host}:{machine.port}"
        device["namespace"] = NAMESPACE_URI
        device["mode"] = "subscribe"
        device["interval_ms"] = machine.interval_ms
        device["tags"] = [
            _opcua_tag(tag_name(s.name, machine.kind), f"s={node_id_string(machine.equipment, s.name)}", s)
            for s in own
        ]
        if rack:
            template = f"{machine.device}-channel"
            templates[template] = [
                _opcua_tag(tag_name(s.name.split(".", 1)[1], machine.kind),
                           "s=" + node_id_string(machine.equipment, f"Ch{pattern}.{s.name.split('.', 1)[1]}"), s,
                           _channel_description(s.description))
                for s in first_channel
            ]
            device["repeat"] = [{"template": template, "count": machine.channels, "first": 1,
                                 "name": f"ch{pattern}"}]
        return device, templates
    assert machine.register_map is not None
    device["transport"] = "tcp"
    device["host"] = options.host
    device["port"] = machine.port
    device["unit_id"] = machine.unit_id
    device["interval_ms"] = machine.interval_ms
    device["order"] = options.word_order.value
    registers = {r.point: r for r in machine.register_map}
    if rack:
        device["max_gap"] = RACK_MAX_GAP
    device["tags"] = [_modbus_tag(tag_name(s.name, machine.kind), registers[s.name], registers[s.name].address, s)
                      for s in own]
    if rack:
        assert isinstance(machine.config, FormationConfig)
        extended = machine.config.extended_points
        base = channel_base(1, extended=extended)
        channel_tags: list[dict[str, Any]] = []
        alarm_tags: list[dict[str, Any]] = []
        for spec in first_channel:
            suffix = spec.name.split(".", 1)[1]
            register = registers[spec.name]
            name = tag_name(suffix, machine.kind)
            description = _channel_description(spec.description)
            if register.table is Table.COIL:
                alarm_tags.append(_modbus_tag(name, register, register.address - CHANNEL_ALARM_COIL_BASE, spec,
                                              description))
            else:
                channel_tags.append(_modbus_tag(name, register, register.address - base, spec, description))
        templates[CHANNEL_TEMPLATE] = channel_tags
        templates[CHANNEL_ALARM_TEMPLATE] = alarm_tags
        device["repeat"] = [
            {"template": CHANNEL_TEMPLATE, "count": machine.channels, "start": base,
             "stride": channel_stride(extended=extended),
             "first": 1, "name": f"ch{pattern}"},
            {"template": CHANNEL_ALARM_TEMPLATE, "count": machine.channels, "start": CHANNEL_ALARM_COIL_BASE,
             "stride": 1, "first": 1, "name": f"ch{pattern}"},
        ]
    return device, templates


def describe_plan(plan: SimulatorPlan) -> dict[str, Any]:
    """The tag-map fragment (``templates``, ``devices``) that reads every point of ``plan`` exactly once."""
    templates: dict[str, list[Any]] = {}
    devices: list[dict[str, Any]] = []
    for machine in plan.machines:
        device, used = describe_machine(machine, plan.options)
        for name, tags in used.items():
            if templates.setdefault(name, tags) != tags:
                raise AssertionError(f"template {name} differs between machines")
        devices.append(device)
    return {"templates": templates, "devices": devices}


def _flow(value: Any) -> str:
    """One-line YAML for a mapping or a scalar (a scalar dumped alone would get a document end marker)."""
    text = str(yaml.safe_dump([value], default_flow_style=True, width=math.inf, sort_keys=False,
                              allow_unicode=True)).strip()
    return text[1:-1]


def describe_yaml(plan: SimulatorPlan) -> str:
    """``describe_plan`` as YAML: block style for devices, one line per tag; a valid tag-map fragment."""
    described = describe_plan(plan)
    options = plan.options
    lines = [
        "# Address map of the Cellgate simulators, as a tag-map fragment (python -m simulators --describe).",
        f"# {len(plan.machines)} machine(s); Modbus values are {options.number_format.value}, 32-bit word order "
        f"{options.word_order.value}. Add `gateway:` and `mqtt:` sections to run it.",
        "# Result FIFOs (result/*, one record per roll or cell): while result/record_id is not 0 (result/ready) the",
        "# result/* fields hold the oldest unacknowledged record; write that record_id to result/ack (uint32, the one",
        "# writable tag: an OPC UA variable, a Modbus holding register) and the next record is presented (Modbus: at",
        "# once; OPC UA: at the next model step). Records stay until acknowledged; ids count up from 1, never repeat.",
    ]
    if described["templates"]:
        lines.append("templates:")
        for name, tags in described["templates"].items():
            lines.append(f"  {name}:")
            lines += [f"    - {_flow(tag).strip()}" for tag in tags]
    lines.append("devices:")
    for device in described["devices"]:
        first = True
        for key, value in device.items():
            lead = "  - " if first else "    "
            first = False
            if key == "tags" or key == "repeat":
                lines.append(f"{lead}{key}:")
                lines += [f"      - {_flow(item).strip()}" for item in value]
            else:
                lines.append(f"{lead}{key}: {_flow(value).strip()}")
    return "\n".join(lines) + "\n"


def every_point(plan: SimulatorPlan) -> dict[str, tuple[str, ...]]:
    """Device name -> every model point it serves (for coverage checks)."""
    return {m.device: tuple(p.name for p in m.points) for m in plan.machines}


def device_ports(plan: SimulatorPlan) -> dict[str, int]:
    """Device name -> planned port (Modbus: its own; OPC UA: the server's)."""
    return {m.device: m.port for m in plan.machines}
