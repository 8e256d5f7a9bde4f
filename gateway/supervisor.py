"""The source supervisor: run a source forever, restarting it with capped backoff whenever it crashes or returns.

A source must never take the gateway down with it, and one that crashes at once must not be restarted in a tight
loop: the restarts are a tenacity run (``gateway.backoff.forever``) waiting 1 s doubling up to 60 s. A source that
ran longer than the cap before it ended starts the schedule over.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import structlog

from gateway.backoff import Backoff, Draw, Sleep, Streak, forever

log = structlog.get_logger("cellgate.runtime")

SUPERVISOR_BACKOFF = Backoff(min_s=1.0, max_s=60.0, jitter=0.2)
"""Wait before restarting a crashed source; a source that ran longer than ``max_s`` starts from ``min_s``."""


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    on_crash: Callable[[Exception], Awaitable[None]],
    on_restart: Callable[[], None],
    clock: Callable[[], float],
    sleep: Sleep = asyncio.sleep,
    draw: Draw = random.random,
    backoff: Backoff = SUPERVISOR_BACKOFF,
) -> None:
    """Run ``run`` until cancelled. After a crash (logged, then ``on_crash``) or a return, ``on_restart`` and a
    restart after the backoff. Cancellation ends it."""
    streak = Streak()
    async for attempt in forever(backoff.following(streak, draw), sleep=sleep):
        with attempt:
            started = clock()
            try:
                await run()
                log.warning("source_returned", source=name)
            except Exception as exc:  # a source must never take the gateway down with it
                log.error("source_crashed", source=name, error=repr(exc), exc_info=exc)
                await on_crash(exc)
            on_restart()
            if clock() - started > backoff.max_s:
                streak.good()
            streak.failed()
