from __future__ import annotations

import asyncio

from gateway.runtime import cancel_until_done


async def swallows_first_cancel(log: list[str]) -> None:
    """Like a task whose wait_for lost a cancellation (CPython gh-86296): the first cancel does not stop it."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        log.append("swallowed")
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
    await asyncio.Event().wait()  # runs on until cancelled again


async def test_cancel_until_done_stops_a_task_that_swallowed_a_cancel() -> None:
    log: list[str] = []
    stubborn = asyncio.create_task(swallows_first_cancel(log))
    plain = asyncio.create_task(asyncio.sleep(10))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_until_done([stubborn, plain], budget_s=1.0), 5)
    assert log == ["swallowed"]
    assert stubborn.cancelled()
    assert plain.cancelled()


async def test_cancel_until_done_with_finished_tasks_returns_at_once() -> None:
    done = asyncio.create_task(asyncio.sleep(0))
    await done
    await asyncio.wait_for(cancel_until_done([done], budget_s=1.0), 1)
    assert done.done()
