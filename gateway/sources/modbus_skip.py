"""When to stop polling a Modbus unit that keeps timing out, and when to probe it again (pure: no clock, no I/O).

Several units share one client: the drives of an RS-485 line, or the slaves behind a TCP->RTU gateway. Requests
go out one at a time, so a unit that never answers (a slave powered off, a dead slot behind the gateway) costs a
full timeout on every poll and stalls its healthy neighbours. After ``after_timeouts`` consecutive timed-out
polls the unit is skipped for a back-off period; when the period is over, one poll probes it (its first request
is the probe: a cycle ends at its first timeout). A failed probe doubles the period, up to ``max_s``; any answer
ends the back-off.

Worked example with the defaults (3 timeouts, 5 s doubling to 60 s, 20 % jitter)::

    poll  timeout timeout timeout -> skipped 4..5 s -> probe timeout -> skipped 8..10 s -> probe answer -> polling
          (1)     (2)     (3: back-off level 1)        (back-off level 2)                 (on_success: recovered)

Jitter only ever shortens a period (``nominal * (1 - jitter * draw)``), so a unit that answers again is back
within ``max_s`` of its last failed probe, and dead units on one line do not all probe in the same cycle.

Only timeouts count. A connection error (refused, reset, not connected) is the whole connection's problem and
goes through the connection's reconnect path; it neither counts as a timeout nor ends a back-off.
"""

from __future__ import annotations

from dataclasses import dataclass

# Consecutive timed-out polls of one unit before it is skipped.
SKIP_AFTER_TIMEOUTS = 3
# First back-off period; each failed probe doubles it, up to SKIP_MAX_S.
SKIP_MIN_S = 5.0
SKIP_MAX_S = 60.0
# Up to this fraction of a period is taken off at random, so dead units on one line do not probe in lockstep.
SKIP_JITTER = 0.2


@dataclass(frozen=True, slots=True, kw_only=True)
class SkipPolicy:
    """How a unit that keeps timing out is backed off (seconds; ``jitter`` is a fraction in [0, 1))."""

    after_timeouts: int = SKIP_AFTER_TIMEOUTS
    min_s: float = SKIP_MIN_S
    max_s: float = SKIP_MAX_S
    jitter: float = SKIP_JITTER

    def __post_init__(self) -> None:
        if self.after_timeouts < 1:
            raise ValueError(f"after_timeouts must be >= 1, not {self.after_timeouts}")
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"need 0 < min_s <= max_s, not min_s={self.min_s}, max_s={self.max_s}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {self.jitter}")

    def nominal_s(self, level: int) -> float:
        """Back-off period before jitter at ``level`` (1 = the first skip): min_s * 2**(level-1), capped."""
        # min() before the power would overflow: 2**1100 is a float overflow, and level grows without bound.
        doublings = min(level - 1, 64)
        return float(min(self.max_s, self.min_s * 2.0**doublings))


@dataclass(frozen=True, slots=True, kw_only=True)
class Skip:
    """A unit goes (again) into back-off: skip its polls until ``resume_at`` (same clock as ``now``)."""

    level: int  # 1 = first skip, 2 = after the first failed probe, ...
    nominal_s: float  # the period before jitter (stable, so it can go into a status text)
    period_s: float  # the period actually used
    resume_at: float


class UnitSkip:
    """Back-off state of one unit. The poll loop asks ``should_poll(now)`` before every poll and reports the
    outcome: ``on_timeout(now, draw)`` (``draw`` is a uniform random number in [0, 1) for the jitter) or
    ``on_success()`` (any answer, exception responses included)."""

    __slots__ = ("consecutive_timeouts", "level", "policy", "resume_at")

    def __init__(self, policy: SkipPolicy) -> None:
        self.policy = policy
        self.consecutive_timeouts = 0
        self.level = 0  # 0 = polling normally; n = in back-off, n-th period
        self.resume_at: float | None = None

    @property
    def backing_off(self) -> bool:
        """True from the first skip until an answer (including while a probe is in flight)."""
        return self.level > 0

    def should_poll(self, now: float) -> bool:
        return self.resume_at is None or now >= self.resume_at

    def on_timeout(self, now: float, draw: float) -> Skip | None:
        """A poll timed out. Returns the new back-off when the unit is now skipped, None while it keeps polling."""
        self.consecutive_timeouts += 1
        if self.consecutive_timeouts < self.policy.after_timeouts:
            return None
        # Reached the threshold, or a probe failed: next (longer) period.
        self.level += 1
        nominal = self.policy.nominal_s(self.level)
        period = nominal * (1.0 - self.policy.jitter * min(max(draw, 0.0), 1.0))
        self.resume_at = now + period
        return Skip(level=self.level, nominal_s=nominal, period_s=period, resume_at=self.resume_at)

    def on_success(self) -> bool:
        """The unit answered. Returns True when this ends a back-off (the unit recovered)."""
        recovered = self.level > 0
        self.consecutive_timeouts = 0
        self.level = 0
        self.resume_at = None
        return recovered
