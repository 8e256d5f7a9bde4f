"""What a source emits and reports, collected for a test that runs the source on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

from gateway.schema import Quality
from gateway.sources.base import Emit, RawReading


class RunnableSource(Protocol):
    def run(self, emit: Emit, report_link: Callable[[bool, str | None], None]) -> Awaitable[None]: ...


class Recorder:
    """Collects what a source emits and reports; lets a test wait for a condition (``default_within_s``)."""

    def __init__(self, default_within_s: float = 6.0) -> None:
        self.readings: list[RawReading] = []
        self.links: list[tuple[bool, str | None]] = []
        self._changed = asyncio.Event()
        self._default_within_s = default_within_s

    async def emit(self, readings: Sequence[RawReading]) -> None:
        self.readings.extend(readings)
        self._changed.set()

    def report_link(self, connected: bool, error: str | None) -> None:
        self.links.append((connected, error))
        self._changed.set()

    def of(self, tag: str) -> list[RawReading]:
        return [reading for reading in self.readings if reading.tag == tag]

    def latest(self, tag: str) -> RawReading | None:
        found = self.of(tag)
        return found[-1] if found else None

    def has(self, tag: str, value: object) -> bool:
        return any(reading.value == value for reading in self.of(tag))

    def good(self) -> list[RawReading]:
        return [reading for reading in self.readings if reading.quality is Quality.GOOD]

    def errors(self) -> list[str]:
        """The errors of the link reports that said "down"."""
        return [error for up, error in self.links if not up and error]

    async def wait_until(self, condition: Callable[[], bool], within_s: float | None = None) -> None:
        async with asyncio.timeout(self._default_within_s if within_s is None else within_s):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(source: RunnableSource, recorder: Recorder, emit: Emit | None = None) -> AsyncIterator[None]:
    """Run ``source`` into ``recorder`` for the block; a source that crashed fails the test."""
    task = asyncio.ensure_future(source.run(emit or recorder.emit, recorder.report_link))
    try:
        yield
    finally:
        crashed = task.done() and not task.cancelled() and task.exception() is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not crashed, f"source task crashed: {task.exception()!r}"
