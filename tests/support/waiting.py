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
