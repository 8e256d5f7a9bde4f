"""What every source hands to the runtime: raw readings (before scaling/deadband) and link state.

A source owns one client and one task per device (or per shared connection). It never blocks the loop
on I/O without a timeout, never raises on bad data, and reports problems as readings with quality bad.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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


@dataclass(slots=True)
class PollSchedule:
    """Fixed-rate polling that neither bursts nor idles after an overrun. Pure: the caller passes the time.

    Deadlines are ``interval_s`` apart (``deadline`` is the current one, where the first poll starts). After a
    cycle that ended within its slot the next poll waits for the next deadline. After one that ran past it the
    next poll starts at once and the schedule runs on from there: the device is then read as often as it can be
    (waiting for the next free slot would idle most of an interval after a cycle that overran by a little), and
    each poll still starts only after the previous one ended. ``late_s`` adds up how far overruns pushed the
    schedule back; ``skipped_cycles`` is that in intervals: the polls the fixed rate asked for that did not happen.
    """

    interval_s: float
    deadline: float
    overruns: int = 0
    late_s: float = 0.0

    @property
    def skipped_cycles(self) -> int:
        return int(self.late_s // self.interval_s)

    def after_cycle(self, now: float) -> bool:
        """Move on past the cycle that ended at ``now``; True when it overran (the next poll is due at once)."""
        self.deadline += self.interval_s
        if now <= self.deadline:
            return False
        self.overruns += 1
        self.late_s += now - self.deadline
        self.deadline = now
        return True
