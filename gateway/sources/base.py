"""What every source hands to the runtime: raw readings (before scaling/deadband) and link state.

A source owns one client and one task per device (or per shared connection). It never blocks the loop
on I/O without a timeout, never raises on bad data, and reports problems as readings with quality bad.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from gateway.schema import Quality, Value

POLL_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds of the poll cycle time histogram (``cellgate_device_poll_seconds``)."""


@dataclass(slots=True)
class CycleTimes:
    """Poll cycle durations as histogram buckets: one bisect and two additions per cycle, never per value."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(POLL_SECONDS_BUCKETS) + 1))
    """Cycles per bucket (not cumulative); the last one is above every bound."""
    sum_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(POLL_SECONDS_BUCKETS, seconds)] += 1
        self.sum_s += seconds


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
    held_s: float = 0.0
    """Time polls were held back past their deadline because the data already waiting for the sink was too old
    (see ``Backlog``); ``held_polls`` is that in intervals."""

    @property
    def skipped_cycles(self) -> int:
        return int(self.late_s // self.interval_s)

    @property
    def held_polls(self) -> int:
        """Polls the fixed rate asked for that were skipped because the backlog was too old."""
        return int(self.held_s // self.interval_s)

    def resume(self, now: float) -> None:
        """The poll held back by the backlog starts at ``now``: the schedule runs on from here (as after an
        overrun: no burst to catch up), the time past the deadline counted in ``held_s``."""
        if now > self.deadline:
            self.held_s += now - self.deadline
            self.deadline = now

    def after_cycle(self, now: float, *, held_s: float = 0.0) -> bool:
        """Move on past the cycle that ended at ``now``; True when it overran (the next poll is due at once).

        ``held_s``: how long the cycle waited for the sink between its reads (``HoldBack.hand_over``). When the
        cycle ended late, that much of the lateness counts as held (``held_s``), not as an overrun: only reads
        that took longer than the interval by themselves are an overrun. Either way the next poll is due at once.
        """
        self.deadline += self.interval_s
        if now <= self.deadline:
            return False
        late_s = now - self.deadline
        self.deadline = now
        held_s = min(held_s, late_s)
        self.held_s += held_s
        if late_s - held_s <= 0.0:
            return False
        self.overruns += 1
        self.late_s += late_s - held_s
        return True


class OverrunLine(NamedTuple):
    """A line a poll loop logs about overruns: ``poll_overrun`` (``caught_up`` False; ``overruns`` and
    ``skipped_cycles`` are the running totals) or ``poll_caught_up`` (``caught_up`` True; the counts are those since
    the previous ``poll_caught_up``, so the log shows what each episode of overload cost)."""

    caught_up: bool
    overruns: int
    skipped_cycles: int


@dataclass(slots=True)
class OverrunLog:
    """When a poll loop says that it cannot keep its rate. Pure: the caller passes the schedule and the time.

    The first overrun is logged at once, then at most one ``poll_overrun`` every ``every_s`` (with running totals),
    and after a logged one, once the schedule keeps time again, one ``poll_caught_up`` with what the episode cost.
    A stall that ends within the minute would otherwise show only its first cycle's numbers: the polls it cost
    (``skipped_cycles``: values that were never read) are in the log, not just in the counters. At most two lines
    per ``every_s``.
    """

    every_s: float = OVERLOAD_LOG_EVERY_S
    logged_at: float = -math.inf
    ended_overruns: int = 0
    ended_skipped: int = 0
    pending_end: bool = False

    def after_cycle(self, schedule: PollSchedule, *, overran: bool, now: float) -> OverrunLine | None:
        if overran:
            if now - self.logged_at < self.every_s:
                return None
            self.logged_at = now
            self.pending_end = True
            return OverrunLine(False, schedule.overruns, schedule.skipped_cycles)
        if not self.pending_end:
            return None
        self.pending_end = False
        line = OverrunLine(True, schedule.overruns - self.ended_overruns, schedule.skipped_cycles - self.ended_skipped)
        self.ended_overruns, self.ended_skipped = schedule.overruns, schedule.skipped_cycles
        return line


class Backlog(Protocol):
    """What a poll loop sees of the path to the sink (``gateway.queueing.MessageQueue``)."""

    busy: bool
    """The sink holds data or data waits for it (a plain attribute: poll loops read it after every request)."""

    def backlog_age_s(self) -> float:
        """Seconds the oldest data not yet handed to the sink has waited."""
        ...

    async def until_backlog_below(self, max_age_s: float) -> None:
        """Return once ``backlog_age_s()`` is below ``max_age_s``."""
        ...

    async def until_room(self) -> None:
        """Return once at most one batch waits for the sink besides what it holds."""
        ...


class HeldLine(NamedTuple):
    """A line a poll loop logs about polls skipped for the backlog: ``poll_skipped`` (``over`` False: the episode
    began, or goes on; ``skipped`` counts its skipped polls so far) or ``poll_skipping_over`` (``over`` True: the
    episode's total). ``episode_s``: how long the episode has lasted."""

    over: bool
    skipped: int
    episode_s: float


HELD_EPISODE_QUIET_S = 1.0
"""An episode of polls skipped for the backlog ends at the first poll that did not wait after this long without a
wait: an overload that holds every few polls back is one episode, not a pair of lines every few polls."""


@dataclass(slots=True)
class HeldLog:
    """When a poll loop says that it skips polls because the data already queued is older than its cap. Pure.

    An episode is a run of polls that had to wait for the backlog; it ends at the first poll that did not wait once
    ``quiet_s`` passed without a wait. Its first wait is logged at once, then at most one ``poll_skipped`` every
    ``every_s`` while it lasts, and one ``poll_skipping_over`` with the episode's count when it ends: never silent,
    never a line per cycle.
    """

    every_s: float = OVERLOAD_LOG_EVERY_S
    quiet_s: float = HELD_EPISODE_QUIET_S
    logged_at: float = -math.inf
    started_at: float | None = None
    held_at: float = -math.inf
    """When the last poll that waited started."""
    baseline_s: float = 0.0
    """``schedule.held_s`` when no episode was under way: what episodes before this one held."""

    def before_poll(self, schedule: PollSchedule, *, held: bool, now: float) -> HeldLine | None:
        """After the wait (if any) that came before the poll starting at ``now``; ``held``: it had to wait."""
        skipped = int((schedule.held_s - self.baseline_s) // schedule.interval_s)
        if held:
            self.held_at = now
            if self.started_at is None:
                self.started_at = now
                self.logged_at = -math.inf
            if now - self.logged_at < self.every_s:
                return None
            self.logged_at = now
            return HeldLine(False, skipped, now - self.started_at)
        if self.started_at is None:
            self.baseline_s = schedule.held_s
            return None
        if now - self.held_at < self.quiet_s:
            return None  # the episode goes on
        self.baseline_s = schedule.held_s
        line = HeldLine(True, skipped, now - self.started_at)
        self.started_at = None
        return line


@dataclass(slots=True)
class HoldBack:
    """What a poll loop does for an overloaded sink, so that it gets fresh data late rather than old data on time.

    Before each poll (``before_poll``): wait while the data already waiting for the sink (``backlog``) is
    ``max_queue_age_ms`` old. Between the reads of a poll, with ``paced_reads`` (the device's messages may be handed
    over in parts: one message per value, no context): while the sink is busy (``pace.busy``, one attribute read per
    request), hand the readings so far over and, before the next read, wait until the sink has taken what was
    queued before them (``hand_over``): the sink has the next part at hand while the next request is read, and a
    value waits for at most about three requests' worth of messages (the part the sink holds, the one before its
    own, its own), not for the rest of its poll and the poll before. A poll so paced takes longer than its
    interval; ``after_cycle`` counts the time it waited as held, not as an overrun. The polls whose time passes
    while waiting are skipped (``schedule.held_polls``), logged by episode (``HeldLog``) as ``poll_skipped`` /
    ``poll_skipping_over``. No backlog, or ``max_queue_age_ms`` 0: never waits, never hands a poll over in parts.
    """

    backlog: Backlog | None
    max_queue_age_ms: int
    interval_ms: int
    log: Any
    """The source's bound structlog logger."""
    paced_reads: bool = False
    lines: HeldLog = field(default_factory=HeldLog)
    pace: Backlog | None = field(init=False, default=None)
    """``backlog`` when reads are paced, else None: a poll loop's check after each request is
    ``pace is not None and pace.busy``."""
    paced: bool = field(init=False, default=False)
    """The poll under way has handed readings over in parts."""
    waited_s: float = field(init=False, default=0.0)
    """How long the poll under way has waited for the sink between its reads."""
    held_last: bool = field(init=False, default=False)
    """The previous poll's waits between its reads skipped polls (it counts as held, for the episode log)."""

    def __post_init__(self) -> None:
        if self.paced_reads and self.max_queue_age_ms > 0:
            self.pace = self.backlog

    async def before_poll(self, schedule: PollSchedule, clock: Callable[[], float]) -> None:
        """``clock``: the loop's time, the schedule's clock."""
        backlog, max_age_s = self.backlog, self.max_queue_age_ms / 1000
        if backlog is None or max_age_s <= 0:
            return
        age_s = backlog.backlog_age_s()
        held = age_s >= max_age_s
        if held:
            await backlog.until_backlog_below(max_age_s)
            schedule.resume(clock())
        line = self.lines.before_poll(schedule, held=held or self.held_last, now=clock())
        if line is None:
            return
        self.log.warning(
            "poll_skipping_over" if line.over else "poll_skipped",
            interval_ms=self.interval_ms,
            max_queue_age_ms=self.max_queue_age_ms,
            skipped=line.skipped,
            skipped_total=schedule.held_polls,
            episode_s=round(line.episode_s, 3),
            queue_age_ms=None if line.over else round(age_s * 1000, 1),
        )

    async def hand_over(self, readings: list[RawReading], emit: Emit, clock: Callable[[], float]) -> None:
        """Emit the readings of the poll so far, then wait until the sink has taken what was queued before them
        (only with ``pace``): the next read waits for room rather than its values for the sink."""
        assert self.pace is not None, "hand_over is for paced reads"
        self.paced = True
        await emit(readings)
        started = clock()
        await self.pace.until_room()
        self.waited_s += clock() - started

    async def finish(self, readings: list[RawReading], emit: Emit, clock: Callable[[], float]) -> None:
        """Emit the rest of a poll: at once, or as one more part of a poll handed over in parts."""
        if not readings:
            return
        if self.paced:
            await self.hand_over(readings, emit, clock)
        else:
            await emit(readings)

    def after_cycle(self, schedule: PollSchedule, now: float) -> bool:
        """``schedule.after_cycle`` with the time the poll waited between its reads; True when it overran."""
        waited_s, held_before = self.waited_s, schedule.held_s
        self.waited_s, self.paced = 0.0, False
        overran = schedule.after_cycle(now, held_s=waited_s)
        self.held_last = schedule.held_s > held_before
        return overran
