"""Tag map: YAML -> validated, expanded ``Plant`` (pydantic models), with FILE:LINE:COL errors.

Typical use::

    from gateway.tagmap import load_plant
    plant = load_plant("config/demo.yaml")          # raises gateway.errors.ConfigError with every problem
    for device in plant.devices:                    # ModbusDevice | OpcUaDevice, tags fully expanded
        ...

The contract is /tmp/cellgate-spec/tagmap.md (see README "Tag map").
"""

from __future__ import annotations

from gateway.tagmap.env import ENV_NESTED_DELIMITER, ENV_PREFIX
from gateway.tagmap.expand import build_plant
from gateway.tagmap.issues import Issue, format_loc
from gateway.tagmap.limits import (
    MAX_ADDRESS,
    MAX_BIT_INDEX,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    MAX_REPEAT_COUNT,
    MAX_UNIT_ID,
    MIN_INTERVAL_MS,
)
from gateway.tagmap.loader import format_problems, load_plant, load_plant_from_text
from gateway.tagmap.model import (
    Device,
    GatewaySection,
    HttpSection,
    ModbusDevice,
    ModbusTag,
    MqttSection,
    OpcUaDevice,
    OpcUaTag,
    Plant,
    RepeatSpec,
    SerialSettings,
    SpoolSection,
    Tag,
    TagMap,
    parse_modicon_reference,
)
from gateway.tagmap.nodeid import NodeIdKind, ParsedNodeId, parse_node_id, resolve_namespace
from gateway.vocabulary import ByteOrder, DataType, OpcUaMode, PublishMode, Table, Transport

__all__ = [
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "MAX_ADDRESS",
    "MAX_BITS_PER_READ",
    "MAX_BIT_INDEX",
    "MAX_REGISTERS_PER_READ",
    "MAX_REPEAT_COUNT",
    "MAX_UNIT_ID",
    "MIN_INTERVAL_MS",
    "ByteOrder",
    "DataType",
    "Device",
    "GatewaySection",
    "HttpSection",
    "Issue",
    "ModbusDevice",
    "ModbusTag",
    "MqttSection",
    "NodeIdKind",
    "OpcUaDevice",
    "OpcUaMode",
    "OpcUaTag",
    "ParsedNodeId",
    "Plant",
    "PublishMode",
    "RepeatSpec",
    "SerialSettings",
    "SpoolSection",
    "Table",
    "Tag",
    "TagMap",
    "Transport",
    "build_plant",
    "format_loc",
    "format_problems",
    "load_plant",
    "load_plant_from_text",
    "parse_modicon_reference",
    "parse_node_id",
    "resolve_namespace",
]
