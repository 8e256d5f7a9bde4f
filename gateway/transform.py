"""Raw reading -> Sample: scaling, NaN and range checks, deadband / report-by-exception, heartbeat.

Pure: no clock (``now`` is passed in), no I/O, no logging. One ``TagTransform`` per tag keeps the little
state report-by-exception needs (the last published value, quality and time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.schema import (
    STATUS_NOT_A_NUMBER,
    STATUS_OUT_OF_RANGE,
    Quality,
    Sample,
    Value,
)
from gateway.sources.base import RawReading


@dataclass(frozen=True, slots=True, kw_only=True)
class TagRules:
    """How one tag's raw value becomes a published value.

    ``value = raw * scale + offset`` for numbers. Outside ``[minimum, maximum]`` the value is kept but its
    quality becomes uncertain (status ``out_of_range``). ``deadband`` is absolute, in the tag's unit, applied
    after scaling. ``heartbeat_s`` republishes an unchanged value at least that often; when neither deadband nor
    heartbeat is set every good reading is published (plain polling).
    """

    scale: float = 1.0
    offset: float = 0.0
    minimum: float | None = None
    maximum: float | None = None
    deadband: float | None = None
    heartbeat_s: float | None = None

    @property
    def scales(self) -> bool:
        return self.scale != 1.0 or self.offset != 0.0


def normalise_value(raw: RawReading, rules: TagRules) -> tuple[Value | None, Quality, str | None]:
    """Scale and check one raw reading; returns (value, quality, status)."""
    value = raw.value
    quality = raw.quality
    status = raw.status
    if quality is Quality.BAD or value is None:
        return value, Quality.BAD if value is None else quality, status
    if isinstance(value, bool | str):
        return value, quality, status
    if isinstance(value, float) and not math.isfinite(value):
        return None, Quality.BAD, STATUS_NOT_A_NUMBER
    if rules.scales:
        value = value * rules.scale + rules.offset
        if not math.isfinite(value):
            return None, Quality.BAD, STATUS_NOT_A_NUMBER
    below = rules.minimum is not None and value < rules.minimum
    above = rules.maximum is not None and value > rules.maximum
    if below or above:
        return value, Quality.UNCERTAIN, STATUS_OUT_OF_RANGE
    return value, quality, status


class TagTransform:
    """Report-by-exception state for one tag. ``apply`` returns the Sample to publish, or None to suppress it."""

    __slots__ = ("_last_publish_ts", "_last_quality", "_last_status", "_last_value", "device", "rules", "tag")

    def __init__(self, *, device: str, tag: str, rules: TagRules) -> None:
        self.device = device
        self.tag = tag
        self.rules = rules
        self._last_value: Value | None = None
        self._last_quality: Quality | None = None
        self._last_status: str | None = None
        self._last_publish_ts = 0.0

    def _changed(self, value: Value | None, quality: Quality, status: str | None) -> bool:
        if self._last_quality is None or quality is not self._last_quality or status != self._last_status:
            return True
        last = self._last_value
        if value is None or last is None or isinstance(value, bool | str) or isinstance(last, bool | str):
            return value != last
        deadband = self.rules.deadband
        if deadband is None:
            return value != last
        return abs(value - last) > deadband

    def apply(self, raw: RawReading, now: float) -> Sample | None:
        value, quality, status = normalise_value(raw, self.rules)
        rules = self.rules
        publish = self._changed(value, quality, status)
        if not publish:
            if rules.heartbeat_s is not None:
                publish = now - self._last_publish_ts >= rules.heartbeat_s
            else:
                # Plain polling (no deadband): every good reading goes out. A repeated bad reading with the same
                # status is reported once, not every cycle.
                publish = rules.deadband is None and quality is not Quality.BAD
        if not publish:
            return None
        self._last_value = value
        self._last_quality = quality
        self._last_status = status
        self._last_publish_ts = now
        # Positional (device, tag, value, quality, ts, status): the cheapest tuple to build, once per value.
        return Sample(self.device, self.tag, value, quality, raw.ts, status if quality is not Quality.GOOD else None)
