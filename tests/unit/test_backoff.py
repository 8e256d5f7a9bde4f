"""gateway.backoff: the one schedule behind MQTT reconnects, source connects and the source supervisor, as tenacity
wait strategies run by ``tenacity.AsyncRetrying`` (sleeps injected: no test here waits for real)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from gateway.backoff import Backoff, MqttBackoff, Streak, forever, paced
from gateway.sources.reconnect import ReconnectPolicy, Step

SCHEDULE = Backoff(min_s=0.5, max_s=30.0, jitter=0.2)


def waiting(delay_s: float) -> Step:
    """A reconnect step that only says how long to wait."""
    return Step(delay_s, None, 0, 0, 0.0, None)


class Stop(BaseException):
    """Ends a run from inside an attempt, as cancellation does (not an ``Exception``: never retried)."""


class Sleeps:
    """An injected ``sleep=``: records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.mark.parametrize(
    ("failures", "draw", "expected_s"),
    [
        (0, 0.5, 0.0),
        (1, 0.0, 0.5),
        (2, 0.0, 1.0),
        (7, 0.0, 30.0),
        (10_000, 0.0, 30.0),
        (1, 0.999_999, 0.4),
        (3, 2.0, 2.0 * 0.8),  # a draw out of range is clamped, never lengthens or negates the wait
        (3, -1.0, 2.0),
    ],
)
def test_waits_double_from_min_to_max_and_jitter_only_shortens(failures: int, draw: float, expected_s: float) -> None:
    assert SCHEDULE.delay_s(failures, draw) == pytest.approx(expected_s, rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"min_s": 0.0}, {"min_s": 2.0, "max_s": 1.0}, {"jitter": 1.0}, {"jitter": -0.1}])
def test_a_schedule_that_makes_no_sense_is_refused(kwargs: dict[str, float]) -> None:
    settings = {"min_s": 0.5, "max_s": 30.0, "jitter": 0.2} | kwargs
    with pytest.raises(ValueError):
        Backoff(**settings)


def test_source_reconnects_use_the_shared_schedule() -> None:
    policy = ReconnectPolicy(min_s=0.5, max_s=30.0, jitter=0.2)
    assert isinstance(policy.backoff, wait_base)
    for failures in range(12):
        for draw in (0.0, 0.3, 0.999):
            assert policy.delay_s(failures, draw) == SCHEDULE.delay_s(failures, draw)


def test_mqtt_waits_from_the_upper_half_of_a_ceiling_that_doubles_per_failure() -> None:
    """MQTT waits after a loss too (failures 0): 1 s ceiling for min 0.5 s, doubling up to max_s."""
    mqtt = MqttBackoff(min_s=0.5, max_s=10.0, streak=Streak())
    assert [mqtt.delay_s(n, 1.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]  # half the ceiling, >= min
    assert [mqtt.delay_s(n, 0.0) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert mqtt.delay_s(2, 0.5) == pytest.approx(3.0)  # halfway between 2 s and the ceiling of 4 s
    assert mqtt.delay_s(3, 0.000_001) == pytest.approx(8.0, rel=1e-5)


async def test_a_plain_tenacity_run_waits_by_the_schedule_of_its_attempt_number() -> None:
    """As any tenacity wait: a connect that keeps raising waits 0.5, 1, 2, 4 s between its five attempts."""
    sleeps = Sleeps()
    calls = 0

    async def connect() -> None:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError("refused")

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(OSError),
        wait=Backoff(min_s=0.5, max_s=30.0, jitter=0.2, draw=lambda: 0.0),
        stop=stop_after_attempt(5),
        sleep=sleeps,
        reraise=True,
    )
    with pytest.raises(ConnectionRefusedError):
        await retrying(connect)
    assert calls == 5
    assert sleeps.waits == [0.5, 1.0, 2.0, 4.0]


async def run(wait: wait_base, attempt: Callable[[], Awaitable[None]], sleeps: Sleeps) -> None:
    """``attempt`` in a ``forever`` run until it raises a BaseException."""
    async for tenacity_attempt in forever(wait, sleep=sleeps):
        with tenacity_attempt:
            await attempt()


def scripted(streak: Streak, outcomes: list[str]) -> Callable[[], Awaitable[None]]:
    """Attempts that end as ``outcomes`` says (a link that died young, or a good one), then Stop."""
    remaining = iter(outcomes)

    async def attempt() -> None:
        outcome = next(remaining, None)
        if outcome is None:
            raise Stop
        if outcome == "good":
            streak.good()
        else:
            streak.failed()
        # the attempt ends normally (the link was served until it was lost): forever() retries that too

    return attempt


async def test_a_streak_counts_links_that_died_young_and_a_good_link_starts_over() -> None:
    """The rule tenacity's attempt number cannot carry: every attempt connects and ends, but only the ones the loop
    marks failed (died young) grow the wait; a good link that is lost is retried at once, then from ``min_s``."""
    sleeps = Sleeps()
    streak = Streak()
    attempts = scripted(streak, ["young", "young", "young", "good", "young", "young"])
    with pytest.raises(Stop):
        await run(SCHEDULE.following(streak, lambda: 0.0), attempts, sleeps)
    assert sleeps.waits == [0.5, 1.0, 2.0, 0.0, 0.5, 1.0]


async def test_forever_retries_errors_and_returns_but_cancellation_ends_it() -> None:
    sleeps = Sleeps()
    ends: list[str] = []

    async def one_attempt() -> None:
        ends.append(["raised", "returned", "cancelled"][len(ends)])
        if ends[-1] == "raised":
            raise RuntimeError("a bug in one attempt")
        if ends[-1] == "cancelled":
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await run(Backoff(min_s=0.5, max_s=30.0, jitter=0.2, draw=lambda: 0.0), one_attempt, sleeps)
    assert ends == ["raised", "returned", "cancelled"]
    assert sleeps.waits == [0.5, 1.0]  # by attempt number: no streak given


async def test_jitter_drawn_in_a_run_only_shortens_the_wait() -> None:
    sleeps = Sleeps()
    streak = Streak()
    attempts = scripted(streak, ["young"] * 12)
    with pytest.raises(Stop):
        await run(SCHEDULE.following(streak, random.Random(7).random), attempts, sleeps)
    nominal = [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30, 30]
    assert len(sleeps.waits) == len(nominal)
    for wait, full in zip(sleeps.waits, nominal, strict=True):
        assert full * 0.8 <= wait <= full
    assert len(set(sleeps.waits[6:])) > 1  # drawn, not fixed


async def test_the_mqtt_wait_reads_its_streak_in_a_run() -> None:
    sleeps = Sleeps()
    streak = Streak()
    with pytest.raises(Stop):
        await run(MqttBackoff(min_s=0.5, max_s=10.0, streak=streak, draw=lambda: 0.0),
                  scripted(streak, ["good", "young", "young", "good"]), sleeps)  # fmt: skip
    assert sleeps.waits == [1.0, 2.0, 4.0, 1.0]


async def test_a_paced_run_waits_what_each_attempt_says_and_ends_on_an_exception() -> None:
    """The run of a source's connect loop: the state machine decides each wait (its step), tenacity waits it; a bug
    or cancellation is not retried but reaches the caller (the supervisor)."""
    sleeps = Sleeps()
    steps = iter([waiting(0.5), waiting(1.0), waiting(0.0), waiting(2.0)])
    attempts = 0

    async def attempt(label: str) -> Step:
        nonlocal attempts
        attempts += 1
        step = next(steps, None)
        if step is None:
            raise LookupError(f"{label}: out of steps")
        return step

    with pytest.raises(LookupError, match="link: out of steps"):
        await paced(sleep=sleeps)(attempt, "link")
    assert attempts == 5
    assert sleeps.waits == [0.5, 1.0, 0.0, 2.0]


async def test_a_paced_run_is_cancelled_without_another_attempt() -> None:
    attempts = 0
    started = asyncio.Event()

    async def attempt() -> Step:
        nonlocal attempts
        attempts += 1
        started.set()
        await asyncio.Event().wait()
        return waiting(0.0)

    task = asyncio.create_task(paced()(attempt))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1
