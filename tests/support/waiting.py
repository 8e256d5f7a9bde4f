"""Waiting for a condition in tests: poll it, fail with a message that says what did not happen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str = "the condition") -> None:
    """Block until ``predicate()`` is truthy; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.2)


async def wait_until_async(predicate: Callable[[], object], timeout_s: float, what: str = "the condition") -> None:
    """``wait_until`` for the event loop: other tasks run while it polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.05)


def wait_while_progressing(
    predicate: Callable[[], object], progress: Callable[[], int], *, stall_s: float, cap_s: float, what: str
) -> None:
    """Block until ``predicate()`` is truthy, as long as ``progress()`` (a count that only grows while work gets
    done: records received, bytes written) keeps growing: AssertionError naming ``what`` once it has not grown for
    ``stall_s``, or after ``cap_s`` in all. For a backlog whose drain time depends on the machine's speed: a loaded
    machine drains it more slowly, a stuck one not at all."""
    started = time.monotonic()
    last, last_change = progress(), started
    while not predicate():
        now = time.monotonic()
        current = progress()
        if current != last:
            last, last_change = current, now
        elif now - last_change > stall_s:
            raise AssertionError(f"no progress for {stall_s:g} s (at {current}) waiting for {what}")
        if now - started > cap_s:
            raise AssertionError(f"timed out after {cap_s:g} s (at {current}) waiting for {what}")
        time.sleep(0.2)
