"""The one backoff of every retry loop (MQTT reconnects, source connects, the source supervisor), as tenacity waits.

tenacity runs the loops: ``forever(wait)`` is a ``tenacity.AsyncRetrying`` that repeats an attempt after every end
(a link that ends is reconnected, a source that ends is restarted) until the task is cancelled, with ``wait=`` one
of the strategies below, ``before_sleep=`` the loop's own log line and ``sleep=`` injectable for the tests.

The schedule: the wait starts at ``min_s``, doubles per failed attempt up to ``max_s``, and jitter shortens it by up
to ``jitter`` of itself, so links that failed together do not retry in step::

    failures   1      2     3     4     5     6      7+
    wait (s)   min    2min  4min  8min  ...          max   (each shortened by up to ``jitter`` x itself)

The count of failures is tenacity's ``attempt_number`` by default. A loop whose attempts can connect and still fail
(a link that dies young, a source that crashes at once) keeps a ``Streak`` that the wait reads instead: the loop
calls ``failed()`` or ``good()`` when an attempt ends, so a link that lived long enough starts the schedule over
while one that died young is one more failure. ``delay_s`` is the same schedule as a pure function of the count and
a uniform draw, for the tests and for the links whose reconnects a state machine paces (``gateway.sources.reconnect``:
it also picks the log lines). Those run under ``paced()``: each attempt returns the step it ended with, and tenacity
waits that step's ``delay_s`` (``StepWait``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, retry_if_result, stop_never
from tenacity.wait import wait_base

MAX_DOUBLINGS = 64
"""Doublings are capped here so that ``2 ** failures`` never overflows however long a link fails."""

Draw = Callable[[], float]
"""A uniform random number in [0, 1) (``random.random``, or a fixed one in tests)."""
Sleep = Callable[[float], Awaitable[None]]
BeforeSleep = Callable[[RetryCallState], Awaitable[None] | None]


class Streak:
    """Failed attempts in a row of one link or task: the count a ``Backoff`` with this streak waits by."""

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1

    def good(self) -> None:
        """The attempt proved the link good: the next failure starts the schedule over."""
        self.failures = 0


class Backoff(wait_base):
    """Exponential backoff with jitter that only shortens (seconds; ``jitter`` a fraction in [0, 1)).

    A tenacity wait strategy: it counts failures from ``streak`` when given, else from the run's attempt number,
    and draws its jitter from ``draw``."""

    __slots__ = ("draw", "jitter", "max_s", "min_s", "streak")

    def __init__(
        self, *, min_s: float, max_s: float, jitter: float, streak: Streak | None = None, draw: Draw = random.random
    ) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"need 0 < min_s <= max_s, not min_s={min_s}, max_s={max_s}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {jitter}")
        self.min_s = min_s
        self.max_s = max_s
        self.jitter = jitter
        self.streak = streak
        self.draw = draw

    def __call__(self, retry_state: RetryCallState) -> float:
        failures = retry_state.attempt_number if self.streak is None else self.streak.failures
        return self.delay_s(failures, self.draw())

    def following(self, streak: Streak, draw: Draw = random.random) -> Backoff:
        """The same schedule, counting the failures of ``streak``."""
        return Backoff(min_s=self.min_s, max_s=self.max_s, jitter=self.jitter, streak=streak, draw=draw)

    def delay_s(self, failures: int, draw: float) -> float:
        """Wait before the next attempt after ``failures`` failed attempts in a row (0: none, wait 0: a good link
        that is lost is retried at once). ``draw`` in [0, 1]: 0 waits the full nominal time, 1 the shortest."""
        if failures <= 0:
            return 0.0
        nominal = min(self.max_s, self.min_s * 2.0 ** min(failures - 1, MAX_DOUBLINGS))
        return nominal * (1.0 - self.jitter * min(max(draw, 0.0), 1.0))


MQTT_JITTER = 0.5
"""The MQTT reconnect wait is drawn from the upper half of its ceiling."""


class MqttBackoff(wait_base):
    """The MQTT reconnect wait: the shared schedule two doublings on, drawn from the upper half of its ceiling.

    The ceiling is ``2 * min_s`` after a good connection was lost (failures 0: MQTT waits then too, so gateways that
    lost the same broker do not all come back in the same instant) and doubles per failed attempt up to ``max_s``;
    the wait is never below ``min_s`` and grows with every failure whatever the draw."""

    __slots__ = ("draw", "min_s", "schedule", "streak")

    def __init__(self, *, min_s: float, max_s: float, streak: Streak, draw: Draw = random.random) -> None:
        self.min_s = min_s
        self.schedule = Backoff(min_s=min_s, max_s=max_s, jitter=MQTT_JITTER)
        self.streak = streak
        self.draw = draw

    def __call__(self, retry_state: RetryCallState) -> float:
        return self.delay_s(self.streak.failures, self.draw())

    def delay_s(self, failures: int, draw: float) -> float:
        """Wait after ``failures`` (>= 0) failed attempts in a row since the last good connection; ``draw`` in
        [0, 1]: 0 waits the ceiling, 1 half of it."""
        return max(self.min_s, self.schedule.delay_s(failures + 2, draw))


def _always(_: Any) -> bool:
    return True


def forever(wait: wait_base, *, before_sleep: BeforeSleep | None = None, sleep: Sleep = asyncio.sleep) -> AsyncRetrying:
    """A tenacity run for a loop that must not end: after an attempt returns or raises an ``Exception`` the next
    one starts after ``wait``. Cancellation (a ``BaseException``) is not retried: it ends the run."""
    return AsyncRetrying(
        retry=retry_if_exception_type(Exception) | retry_if_result(_always),
        wait=wait,
        stop=stop_never,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )


class Paced(Protocol):
    """What an attempt of a ``paced()`` run returns: how long to wait before the next one."""

    @property
    def delay_s(self) -> float: ...


class StepWait(wait_base):
    """Waits the ``delay_s`` of what the attempt returned (0 after an attempt that raised: that ends the run)."""

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        if outcome is None or outcome.failed:
            return 0.0
        step: Paced = outcome.result()
        return step.delay_s


def paced(*, sleep: Sleep = asyncio.sleep) -> AsyncRetrying:
    """A tenacity run for a link whose waits a state machine decides: call it with an ``async`` attempt that returns
    a ``Paced`` step (connect, serve until the link is lost, say what happened); the next attempt starts after the
    step's delay. An exception (a bug, cancellation) is not retried: it ends the run and reaches the caller."""
    return AsyncRetrying(retry=retry_if_result(_always), wait=StepWait(), stop=stop_never, sleep=sleep, reraise=True)
