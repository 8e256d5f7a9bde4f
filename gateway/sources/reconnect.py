"""When a source reconnects to its PLC, and what it says about it (pure: no clock, no I/O, no logging).

One ``Reconnect`` per link (a Modbus connection, an OPC UA device, an event link). The source tells it what
happened, passing the time in: ``connected(now)``, ``answered(now)`` (the first good exchange on the link, and every
one after), ``connect_failed(now, error, draw)`` and ``lost(now, error, draw)``. It answers with how long to wait
before the next attempt and which log line, if any, the event deserves. The source's connect loop is a tenacity run
(``gateway.backoff.paced``): each attempt returns its last step and tenacity waits the step's ``delay_s``.

A TCP connect is not proof of a working link. A PLC at its connection limit, or a server that accepts and closes at
once, lets every connect succeed; if a successful connect reset the backoff, the source would reconnect thousands of
times a second and log two lines each time. So a link only counts as good once it is *stable*: it answered at least
once and has lived ``stable_s``. A link lost before that is one more failed attempt, exactly like a refused connect,
and the wait before the next attempt keeps growing (the shared schedule, ``gateway.backoff.Backoff``: by default
0.5 s doubling up to 30 s, jitter shortening each wait by up to 20 %).

A stable link that is lost is reconnected at once (failures back to 0). Log lines: one per state change
(``FAILING`` for the first failure after a good link or at start, ``LOST`` when a stable link goes, ``UP`` when
a link is up: at once when no failure came before, otherwise when the new link has become stable), and while
failures go on at most one ``SUMMARY`` per ``summary_every_s`` with the attempt count and the last error.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from gateway.backoff import Backoff

RECONNECT_MIN_S: Final = 0.5
RECONNECT_MAX_S: Final = 30.0
RECONNECT_JITTER: Final = 0.2
STABLE_LINK_S: Final = 5.0
"""A link that answered and lived this long is good; one lost earlier counts as a failed attempt."""
RECONNECT_SUMMARY_EVERY_S: Final = 60.0
"""While a link keeps failing, one summary line at most this often (per link)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconnectPolicy:
    """Backoff and logging of one link's reconnects (seconds; ``jitter`` is a fraction in [0, 1))."""

    min_s: float = RECONNECT_MIN_S
    max_s: float = RECONNECT_MAX_S
    jitter: float = RECONNECT_JITTER
    stable_s: float = STABLE_LINK_S
    summary_every_s: float = RECONNECT_SUMMARY_EVERY_S

    backoff: Backoff = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Backoff checks min_s, max_s and jitter.
        object.__setattr__(self, "backoff", Backoff(min_s=self.min_s, max_s=self.max_s, jitter=self.jitter))
        if self.stable_s < 0 or self.summary_every_s <= 0:
            raise ValueError("need stable_s >= 0 and summary_every_s > 0")

    def delay_s(self, failures: int, draw: float) -> float:
        """Wait before the next attempt after ``failures`` failed attempts in a row (see ``gateway.backoff``;
        ``draw`` uniform in [0, 1)). 0 for no failure: a good link that is lost is reconnected at once."""
        return self.backoff.delay_s(failures, draw)


class LogLine(enum.Enum):
    """Which line an event deserves (the source names the event after its protocol)."""

    UP = "up"  # the link is (again) good
    LOST = "lost"  # a stable link went
    FAILING = "failing"  # the first failed attempt after a good link, or at start
    SUMMARY = "summary"  # failures go on: attempts so far and the last error, at most once per summary_every_s


class Step(NamedTuple):
    """What to do after an event: wait ``delay_s`` before the next attempt, log ``log`` (None: nothing).

    ``failures`` are the failed attempts in a row so far, ``attempts`` every attempt since the link was last good
    (successful connects of links that died young included), ``failing_s`` how long that has gone on (0 when the
    link is good), ``lived_s`` how long the link that was just lost had been up (None for a refused connect).
    """

    delay_s: float
    log: LogLine | None
    failures: int
    attempts: int
    failing_s: float
    error: str | None
    lived_s: float | None = None


AGAIN: Final = Step(0.0, None, 0, 0, 0.0, None)
"""Nothing happened to the link: the next attempt at once, nothing to log."""


class Reconnect:
    """Reconnect state of one link; see the module docstring."""

    __slots__ = (
        "_answered",
        "_connected_at",
        "_failing_since",
        "_summary_at",
        "attempts",
        "failures",
        "last_error",
        "policy",
        "stable",
    )

    def __init__(self, policy: ReconnectPolicy | None = None) -> None:
        self.policy = policy if policy is not None else ReconnectPolicy()
        self.failures = 0
        self.attempts = 0
        self.last_error: str | None = None
        self.stable = False
        self._answered = False
        self._connected_at: float | None = None
        self._failing_since: float | None = None
        self._summary_at = -math.inf

    @property
    def failing(self) -> bool:
        """True from the first failed attempt until a link is stable again."""
        return self._failing_since is not None

    def connected(self, now: float) -> Step:
        """A connect succeeded. ``UP`` at once unless attempts are failing (then ``answered`` says it later)."""
        self.attempts += 1
        self._connected_at = now
        self._answered = False
        self.stable = False
        if self.failing:
            return self._step(now, None)
        return Step(0.0, LogLine.UP, 0, self.attempts, 0.0, None)

    def answered(self, now: float) -> Step | None:
        """A good exchange on the current link. Returns a step (``UP`` after failures, else no line) once, when the
        link becomes stable; None otherwise. Cheap: call it after every good poll."""
        if self.stable or self._connected_at is None:
            return None
        self._answered = True
        if now - self._connected_at < self.policy.stable_s:
            return None
        self.stable = True
        step = Step(0.0, LogLine.UP if self.failing else None, self.failures, self.attempts, self._failing_s(now),
                    self.last_error)  # fmt: skip
        self._reset()
        return step

    def connect_failed(self, now: float, error: str, draw: float) -> Step:
        """A connect attempt failed (refused, timed out, closed during the handshake)."""
        self.attempts += 1
        return self._fail(now, error, draw, lived_s=None)

    def lost(self, now: float, error: str, draw: float) -> Step:
        """The current link went. A stable link (or one proven by ``answered`` for ``stable_s``) is reconnected at
        once; one that never answered, or lived less than ``stable_s``, is a failed attempt."""
        connected_at, self._connected_at = self._connected_at, None
        lived_s = None if connected_at is None else max(0.0, now - connected_at)
        good = self.stable or (self._answered and lived_s is not None and lived_s >= self.policy.stable_s)
        self.stable = False
        self._answered = False
        if good:
            self._reset()
            self.last_error = error
            return Step(0.0, LogLine.LOST, 0, 0, 0.0, error, lived_s)
        return self._fail(now, error, draw, lived_s=lived_s)

    def _fail(self, now: float, error: str, draw: float, *, lived_s: float | None) -> Step:
        self.failures += 1
        self.last_error = error
        delay = self.policy.delay_s(self.failures, draw)
        if self._failing_since is None:
            self._failing_since = now
            self._summary_at = now
            return Step(delay, LogLine.FAILING, self.failures, self.attempts, 0.0, error, lived_s)
        if now - self._summary_at >= self.policy.summary_every_s:
            self._summary_at = now
            return Step(delay, LogLine.SUMMARY, self.failures, self.attempts, self._failing_s(now), error, lived_s)
        return Step(delay, None, self.failures, self.attempts, self._failing_s(now), error, lived_s)

    def _step(self, now: float, log: LogLine | None) -> Step:
        return Step(0.0, log, self.failures, self.attempts, self._failing_s(now), self.last_error)

    def _failing_s(self, now: float) -> float:
        return 0.0 if self._failing_since is None else max(0.0, now - self._failing_since)

    def _reset(self) -> None:
        self.failures = 0
        self.attempts = 0
        self._failing_since = None
        self._summary_at = -math.inf
