"""The closed sets of the tag map, one enum each, used from the YAML model down to the read plans and encoders.

A StrEnum member equals its text (``Table.HOLDING == "holding"``), so values read from a file, logs and JSON
stay plain strings; code compares and stores members, never a parallel ``Literal`` of the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final, Literal, TypeAlias

__all__ = [
    "ByteOrder",
    "DataType",
    "MqttProtocol",
    "OpcUaMode",
    "OpcUaSecurityMode",
    "OpcUaSecurityPolicy",
    "Parity",
    "PublishMode",
    "QoS",
    "StopBits",
    "Table",
    "Transport",
]

# Closed sets whose members are numbers or protocol tokens rather than words: Literal types, defined once here.
MqttProtocol: TypeAlias = Literal["5", "3.1.1"]
"""MQTT protocol version as written in the tag map (``mqtt.protocol``)."""
QoS: TypeAlias = Literal[0, 1]
"""The MQTT QoS levels the gateway publishes at."""
Parity: TypeAlias = Literal["N", "E", "O"]
"""Modbus RTU serial parity: none, even, odd."""
StopBits: TypeAlias = Literal[1, 2]
"""Modbus RTU serial stop bits."""


class DataType(StrEnum):
    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"

    @property
    def is_numeric(self) -> bool:
        """True for the integer and float types (the ones scale/offset/deadband/min/max apply to)."""
        return self not in (DataType.BOOL, DataType.STRING)

    def register_count(self, length: int | None = None) -> int:
        """16-bit registers one value occupies; a string occupies ``length`` registers (2 characters each)."""
        if self is DataType.STRING:
            if length is None:
                raise ValueError("a string's register count is its length, and no length was given")
            return length
        return _REGISTERS[self]


_REGISTERS: Final[Mapping[DataType, int]] = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT32: 2,
    DataType.FLOAT64: 4,
}


class Table(StrEnum):
    """Modbus data tables ("register types")."""

    HOLDING = "holding"
    INPUT = "input"
    COIL = "coil"
    DISCRETE = "discrete"

    @property
    def is_bit_table(self) -> bool:
        """Coils and discrete inputs hold single bits; holding/input tables hold 16-bit registers."""
        return self in (Table.COIL, Table.DISCRETE)


class ByteOrder(StrEnum):
    """Byte order of multi-register values, as the letters of ``0xAABBCCDD`` in wire order."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class PublishMode(StrEnum):
    TAG = "tag"
    BATCH = "batch"


class OpcUaMode(StrEnum):
    SUBSCRIBE = "subscribe"
    POLL = "poll"


class OpcUaSecurityPolicy(StrEnum):
    """OPC UA secure-channel policy as written in the tag map (``security.policy``), by the OPC UA names."""

    AUTO = "auto"  # the strongest policy the server offers with the mode
    BASIC256SHA256 = "Basic256Sha256"
    AES128_SHA256_RSAOAEP = "Aes128_Sha256_RsaOaep"
    AES256_SHA256_RSAPSS = "Aes256_Sha256_RsaPss"


class OpcUaSecurityMode(StrEnum):
    """OPC UA message security mode (``security.mode``), by the OPC UA names."""

    SIGN = "Sign"
    SIGN_AND_ENCRYPT = "SignAndEncrypt"


class EventLoopSetting(StrEnum):
    """The gateway process's event loop (``gateway.event_loop``)."""

    AUTO = "auto"  # uvloop when it can be imported, else the stock loop
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class Transport(StrEnum):
    TCP = "tcp"
    RTU = "rtu"
