"""The bounded hand-over between sources and the sink, counted in messages (not in poll cycles)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class MessageQueue(Generic[T]):
    """A FIFO of batches holding at most ``max_items`` items in total.

    ``put`` waits (backpressure on the source) while the batch does not fit; a batch larger than the whole
    queue is still accepted once the queue is empty, so a big poll cycle can never deadlock. ``full_waits``
    counts how often a producer had to wait.
    """

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.max_items = max_items
        self._batches: deque[Sequence[T]] = deque()
        self._count = 0
        self._changed = asyncio.Condition()
        self.full_waits = 0

    def __len__(self) -> int:
        """Items (not batches) waiting."""
        return self._count

    async def put(self, batch: Sequence[T]) -> None:
        async with self._changed:
            if self._count and self._count + len(batch) > self.max_items:
                self.full_waits += 1
                await self._changed.wait_for(lambda: not self._count or self._count + len(batch) <= self.max_items)
            self._batches.append(batch)
            self._count += len(batch)
            self._changed.notify_all()

    async def get(self) -> Sequence[T]:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._batches))
            batch = self._batches.popleft()
            self._count -= len(batch)
            self._changed.notify_all()
            return batch

    async def put_unbounded(self, batch: Sequence[T]) -> None:
        """Append ``batch`` without waiting for room (for the stop marker, which must not wait)."""
        async with self._changed:
            self._batches.append(batch)
            self._count += len(batch)
            self._changed.notify_all()

    def get_nowait(self) -> Sequence[T] | None:
        """The oldest batch, or None when empty. Producers waiting for room are woken on the next put/get."""
        if not self._batches:
            return None
        batch = self._batches.popleft()
        self._count -= len(batch)
        return batch
