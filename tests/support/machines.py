"""Helpers for the pure machine-model tests: a PackML timing without disturbances and a point/value checker."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from simulators.machines.packml import PackMLTiming
from simulators.machines.points import DataType, PointSpec, Value

# Execute forever: no disturbances. Lets tests look at the process without PackML stops in the way.
STEADY = PackMLTiming(
    mean_s_between_holds=None,
    mean_s_between_suspends=None,
    mean_s_between_stops=None,
    mean_s_between_aborts=None,
    mean_s_between_completes=None,
)

PYTHON_TYPES: Mapping[DataType, tuple[type, ...]] = {
    DataType.DOUBLE: (float,),
    DataType.INT32: (int,),
    DataType.UINT32: (int,),
    DataType.BOOLEAN: (bool,),
    DataType.STRING: (str,),
}


def check_values_match_points(points: Sequence[PointSpec], values: Mapping[str, Value]) -> None:
    """Every point has a value of its declared type within its declared range, and nothing else has one."""
    names = [p.name for p in points]
    assert len(set(names)) == len(names), "point names must be unique"
    assert set(values) == set(names)
    for point in points:
        value = values[point.name]
        assert isinstance(value, PYTHON_TYPES[point.data_type]), (point.name, value)
        if point.data_type in (DataType.INT32, DataType.UINT32, DataType.DOUBLE):
            assert not isinstance(value, bool), point.name
        if isinstance(value, float):
            assert math.isfinite(value), point.name
        if point.min is not None and not isinstance(value, str | bool):
            assert value >= point.min, (point.name, value)
        if point.max is not None and not isinstance(value, str | bool):
            assert value <= point.max, (point.name, value)
