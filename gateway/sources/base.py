"""What every source hands to the runtime: raw readings (before scaling/deadband) and link state.

A source owns one client and one task per device (or per shared connection). It never blocks the loop
on I/O without a timeout, never raises on bad data, and reports problems as readings with quality bad.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple

from gateway.schema import Quality, Value

OVERLOAD_LOG_EVERY_S = 60.0
"""A source that keeps overrunning its interval or dropping readings logs it at most this often (with totals):
overload is never silent, and never a log line per cycle."""


class RawReading(NamedTuple):
    """One value as read from the PLC, before the transform (scale, range, deadband).

    ``tag`` is the tag's name within its device. ``ts`` is the source timestamp (epoch seconds, UTC);
    sources without one (Modbus) use the time the response arrived. A NamedTuple because one is made per
    value read (see ``gateway.schema.Sample``).
    """

    tag: str
    value: Value | None
    ts: float
    quality: Quality = Quality.GOOD
    status: str | None = None


# Awaiting emit applies backpressure: it returns once the readings are queued for the sink.
Emit = Callable[[Sequence[RawReading]], Awaitable[None]]
# report_link(connected, error): called on every change of link state (not on every poll).
ReportLink = Callable[[bool, str | None], None]
