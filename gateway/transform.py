"""Raw reading -> Sample: scaling, NaN and range checks, deadband / report-by-exception, heartbeat.

Pure: no clock (``now`` is passed in), no I/O, no logging. One ``TagTransform`` per tag keeps the little
state report-by-exception needs (the last published value, quality and time).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Final

from gateway.schema import (
    STATUS_NOT_A_NUMBER,
    STATUS_OUT_OF_RANGE,
    Quality,
    Sample,
    Value,
)
from gateway.sources.base import RawReading

# Hot-path constants: a module global is read directly, an Enum member off its class (Quality.GOOD) through the
# class's attribute lookup; apply() runs once per value read.
_GOOD: Final = Quality.GOOD
_UNCERTAIN: Final = Quality.UNCERTAIN
_INF: Final = math.inf
# Values published as read, compared by equality: text, booleans, OPC UA arrays and structures. A tuple, not
# ``bool | str | ...``: that union would be built again at every call of the per-value paths.
_NOT_SCALED: Final = (bool, str, list, dict)
_NUMBERS: Final = frozenset((int, float))
"""The types a deadband applies to (``bool`` is not among them: ``type(True)`` is bool)."""


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
    # Derived once (rules are shared by the tags of a template) for TagTransform.apply's fast path.
    scales: bool = dataclasses.field(init=False, repr=False, compare=False)
    """Whether ``raw * scale + offset`` changes anything."""
    low: float = dataclasses.field(init=False, repr=False, compare=False)
    """``minimum``, or -inf: ``value < low`` is "below the range" either way."""
    high: float = dataclasses.field(init=False, repr=False, compare=False)
    """``maximum``, or +inf."""
    publishes_every_reading: bool = dataclasses.field(init=False, repr=False, compare=False)
    """Plain polling (no deadband, no heartbeat): every good reading is published, whatever came before."""
    passes_through: bool = dataclasses.field(init=False, repr=False, compare=False)
    """Plain polling of the value as read (no scaling, no limits): a good finite number is published as it is,
    whatever came before (see ``DeviceOutbound``'s per-call path)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", self.scale != 1.0 or self.offset != 0.0)
        object.__setattr__(self, "low", -math.inf if self.minimum is None else self.minimum)
        object.__setattr__(self, "high", math.inf if self.maximum is None else self.maximum)
        object.__setattr__(self, "publishes_every_reading", self.deadband is None and self.heartbeat_s is None)
        object.__setattr__(
            self,
            "passes_through",
            self.publishes_every_reading and not self.scales and self.minimum is None and self.maximum is None,
        )


def normalise_value(raw: RawReading, rules: TagRules) -> tuple[Value | None, Quality, str | None]:
    """Scale and check one raw reading; returns (value, quality, status)."""
    value = raw.value
    quality = raw.quality
    status = raw.status
    if quality is Quality.BAD or value is None:
        return value, Quality.BAD if value is None else quality, status
    if isinstance(value, _NOT_SCALED):
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
        if type(value) not in _NUMBERS or type(last) not in _NUMBERS:
            return value != last  # None, text, booleans, arrays, structures: any change
        deadband = self.rules.deadband
        if deadband is None:
            return value != last
        # Both are int or float here (checked by exact type above, which mypy cannot follow).
        return abs(value - last) > deadband  # type: ignore[operator,no-any-return]

    def apply(self, raw: RawReading, now: float) -> Sample | None:
        """The Sample to publish for ``raw`` (read at ``now``, epoch seconds), or None to suppress it.

        The same result as ``apply_generic``, faster for the reading nearly every poll brings: a good int or
        float that stays finite. That one is scaled and range-checked inline (what ``normalise_value`` does,
        without the call and the tuple); everything else takes the generic path.
        """
        _, value, ts, quality, status = raw
        if quality is not _GOOD or (type(value) is not float and type(value) is not int):  # bool is not int
            return self.apply_generic(raw, now)
        rules = self.rules
        if rules.scales:
            value = value * rules.scale + rules.offset
        if not -_INF < value < _INF:  # NaN or infinite, as read or once scaled: the generic path says so
            return self.apply_generic(raw, now)
        if value < rules.low or value > rules.high:
            quality = _UNCERTAIN
            status = STATUS_OUT_OF_RANGE
        if not rules.publishes_every_reading and quality is self._last_quality and status == self._last_status:
            # _changed for a number, inline (a call per value saved): same quality and status as last time.
            last = self._last_value
            if type(last) is float or type(last) is int:
                deadband = rules.deadband
                changed = value != last if deadband is None else abs(value - last) > deadband
            else:
                changed = value != last
            heartbeat = rules.heartbeat_s
            if not changed and (heartbeat is None or not now - self._last_publish_ts >= heartbeat):
                return None  # with a deadband and no heartbeat due, an unchanged good value is not republished
        self._last_value = value
        self._last_quality = quality
        self._last_status = status
        self._last_publish_ts = now
        return _new_sample(Sample, (self.device, self.tag, value, quality, ts, None if quality is _GOOD else status))

    def apply_generic(self, raw: RawReading, now: float) -> Sample | None:
        """``apply`` for any reading, through ``normalise_value``: the reference the fast path must match."""
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


# Sample is a NamedTuple: tuple.__new__(Sample, (all six fields)) builds it in C, without the Python __new__
# that NamedTuple generates (once per published value).
_new_sample = tuple.__new__
