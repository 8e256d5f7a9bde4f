"""The one clock of the simulator servers: a fixed-rate loop that advances models in model time.

Scheduling is fixed-rate (next deadline = previous deadline + period), so the update rate does not drift with the
time a tick takes. A tick that overruns by more than a period does not cause a burst of catch-up ticks: the missed
ticks are dropped and model time falls behind wall time by that much (it is a simulator, not a recorder).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


def check_rate(*, step_hz: float, speedup: float) -> None:
    if not 0.0 < step_hz <= 1000.0:
        raise ValueError(f"step_hz must be within (0, 1000], got {step_hz!r}")
    if not 0.0 < speedup <= 1_000_000.0:
        raise ValueError(f"speedup must be within (0, 1e6], got {speedup!r}")


async def run_fixed_rate(*, period_s: float, tick: Callable[[], Awaitable[None]]) -> None:
    """Await ``tick()`` every ``period_s`` seconds of wall time, forever (until cancelled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    while True:
        deadline += period_s
        await tick()
        now = loop.time()
        if now > deadline + period_s:
            deadline = now  # overran by more than a period: drop the missed ticks
        await asyncio.sleep(max(0.0, deadline - now))


async def stop_task(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end, without swallowing a cancellation of the caller."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # mark a crash as retrieved; join() is where it is reported


class AutoStepper:
    """The optional background task of one simulator server that advances its models at ``step_hz``.

    Each tick advances model time by ``speedup / step_hz`` seconds via ``step``. ``join`` waits for the task
    and re-raises its crash; it never returns while all is well (or when the stepper was never started).
    """

    def __init__(
        self, *, name: str, step_hz: float, speedup: float, step: Callable[[float], Awaitable[None]]
    ) -> None:
        self._name = name
        self._period_s = 1.0 / step_hz
        self._dt_s = speedup / step_hz
        self._step = step
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(
            run_fixed_rate(period_s=self._period_s, tick=lambda: self._step(self._dt_s)), name=self._name
        )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await stop_task(task)

    async def join(self) -> None:
        if self._task is None:
            await asyncio.Event().wait()
        else:
            await asyncio.shield(self._task)
