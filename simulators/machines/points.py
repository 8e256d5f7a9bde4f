"""Point descriptors: the one source of truth for what a simulated machine exposes.

A machine model lists its points once (name, data type, unit, description, range). The OPC UA server builds
its address space from that list, the Modbus register map refers to the same names, and
``simulators.runner.describe_default_set()`` turns both into the address map that ``config/demo.yaml`` is
checked against.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

# The value of one point. Same shape as ``gateway.schema.Value`` (the simulators do not import the gateway).
Value = float | int | bool | str


class DataType(StrEnum):
    """Data type of a point, named after the OPC UA built-in type that carries it."""

    DOUBLE = "Double"
    INT32 = "Int32"
    UINT32 = "UInt32"
    BOOLEAN = "Boolean"
    STRING = "String"


@dataclass(frozen=True, slots=True, kw_only=True)
class PointSpec:
    """One value a machine exposes.

    ``name`` is a dotted path relative to the machine (``Dryer.Zone03.AirTemp``); every segment but the last
    is an object in the OPC UA hierarchy. ``unit`` is a UCUM code or None for dimensionless values.
    ``min``/``max`` is the physical or instrument range (None where the value has no upper bound, e.g. counters).
    """

    name: str
    data_type: DataType
    unit: str | None
    description: str
    min: float | None = None
    max: float | None = None


class Machine(Protocol):
    """What a server needs from a machine model: its points, and values keyed by point name."""

    @property
    def points(self) -> Sequence[PointSpec]: ...

    def values(self) -> Mapping[str, Value]:
        """Current values of every point, keyed by ``PointSpec.name``, without advancing time."""
        ...

    def step(self, dt_s: float) -> Mapping[str, Value]:
        """Advance the model by ``dt_s`` seconds of model time and return the new values."""
        ...


def check_dt(dt_s: float) -> None:
    """Reject a time step that would make a model run backwards or produce NaN."""
    if not math.isfinite(dt_s) or dt_s < 0.0:
        raise ValueError(f"dt_s must be a finite number >= 0, got {dt_s!r}")


def clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value
