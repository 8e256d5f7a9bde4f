"""gateway.supervisor: a crashed or returned source is restarted under the shared backoff (a tenacity run with an
injected sleep: no real waits); a source that ran long starts the schedule over; cancellation ends it."""

from __future__ import annotations

import asyncio

import pytest

from gateway.supervisor import SUPERVISOR_BACKOFF, supervise


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_crashes_are_restarted_with_doubling_waits_and_a_long_run_starts_over() -> None:
    clock = Clock()
    waits: list[float] = []
    crashes: list[str] = []
    restarts = 0
    script = iter(["crash 1", "crash 2", "return", "crash 3", "long", "crash 4"])

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def run() -> None:
        step = next(script, None)
        if step is None:
            raise asyncio.CancelledError  # as a stop cancels the task
        if step == "long":
            clock.now += SUPERVISOR_BACKOFF.max_s + 1  # ran longer than the cap, then crashed
            raise ConnectionError("lost after a long run")
        if step.startswith("crash"):
            raise ValueError(step)

    async def on_crash(exc: Exception) -> None:
        crashes.append(str(exc))

    def on_restart() -> None:
        nonlocal restarts
        restarts += 1

    with pytest.raises(asyncio.CancelledError):
        await supervise("source", run, on_crash=on_crash, on_restart=on_restart, clock=clock, sleep=sleep,
                        draw=lambda: 0.0)  # fmt: skip
    assert waits == [1.0, 2.0, 4.0, 8.0, 1.0, 2.0]  # a return counts like a crash; the long run starts over
    assert crashes == ["crash 1", "crash 2", "crash 3", "lost after a long run", "crash 4"]
    assert restarts == 6


async def test_a_running_source_is_cancelled_without_a_restart() -> None:
    started = asyncio.Event()
    restarts = 0

    async def run() -> None:
        started.set()
        await asyncio.Event().wait()

    async def on_crash(exc: Exception) -> None:
        raise AssertionError(f"no crash expected: {exc!r}")

    def on_restart() -> None:
        nonlocal restarts
        restarts += 1

    task = asyncio.create_task(supervise("source", run, on_crash=on_crash, on_restart=on_restart, clock=Clock()))
    await asyncio.wait_for(started.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert restarts == 0
