"""The bounded hand-over between sources and the sink, counted in messages (not in poll cycles)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class MessageQueue(Generic[T]):
    """A FIFO of batches holding at most ``max_items`` items in total.

    ``put`` waits (backpressure on the source) while the batch does not fit; a batch larger than the whole
    queue is still accepted once the queue is empty, so a big poll cycle can never deadlock. ``full_waits``
    counts how often a producer had to wait.

    The queue also knows how long its oldest batch has waited for the sink (``backlog_age_s``): a batch counts
    as waiting from its ``put`` until the consumer asks for the *next* batch (``get`` / ``get_nowait``), so the
    time the sink spends handing a batch to the broker (or the spool) counts too. Sources use it to skip polls
    rather than queue data that would only grow older (``until_backlog_below``; see the device setting
    ``max_queue_age_ms``), and to hand a poll over in parts while the consumer is busy (``busy``, ``until_room``),
    so each part waits behind at most two others. ``clock``: monotonic seconds.
    """

    def __init__(self, max_items: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if max_items < 1:
            raise ValueError("max_items must be >= 1")
        self.max_items = max_items
        self._clock = clock
        self._batches: deque[tuple[Sequence[T], float]] = deque()
        self._count = 0
        self._changed = asyncio.Condition()
        self._in_hand_since: float | None = None  # put time of the batch the consumer is handing on
        self.full_waits = 0
        self.busy = False
        """The consumer holds a batch, or batches are queued: a plain attribute, read by poll loops per request."""

    def __len__(self) -> int:
        """Items (not batches) waiting."""
        return self._count

    def backlog_age_s(self) -> float:
        """Seconds the oldest batch not yet handed on has waited (the one the consumer holds, else the first
        queued one); 0.0 when there is none."""
        if self._in_hand_since is not None:
            since = self._in_hand_since
        elif self._batches:
            since = self._batches[0][1]
        else:
            return 0.0
        return max(0.0, self._clock() - since)

    async def until_backlog_below(self, max_age_s: float) -> None:
        """Return once ``backlog_age_s()`` is below ``max_age_s`` (at once if it is). The age only drops when the
        consumer takes the next batch, and that wakes the waiters."""
        if self.backlog_age_s() < max_age_s:
            return
        async with self._changed:
            await self._changed.wait_for(lambda: self.backlog_age_s() < max_age_s)

    async def until_room(self) -> None:
        """Return once at most one batch is queued (the consumer may hold another): a producer that has just put
        one waits until the one before it is taken, so the consumer has the next batch at hand while the producer
        prepares another, and none waits behind more than two."""
        if len(self._batches) <= 1:
            return
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._batches) <= 1)

    async def put(self, batch: Sequence[T]) -> None:
        async with self._changed:
            if self._count and self._count + len(batch) > self.max_items:
                self.full_waits += 1
                await self._changed.wait_for(lambda: not self._count or self._count + len(batch) <= self.max_items)
            self._batches.append((batch, self._clock()))
            self._count += len(batch)
            self.busy = True
            self._changed.notify_all()

    async def get(self) -> Sequence[T]:
        async with self._changed:
            self._in_hand_since = None  # asking for the next batch: the previous one is handed on
            self.busy = bool(self._batches)
            self._changed.notify_all()
            await self._changed.wait_for(lambda: bool(self._batches))
            batch = self._take()
            self._changed.notify_all()  # room for waiting producers
            return batch

    async def put_unbounded(self, batch: Sequence[T]) -> None:
        """Append ``batch`` without waiting for room (for the stop marker, which must not wait)."""
        async with self._changed:
            self._batches.append((batch, self._clock()))
            self._count += len(batch)
            self.busy = True
            self._changed.notify_all()

    def get_nowait(self) -> Sequence[T] | None:
        """The oldest batch, or None when empty. Waiting producers are woken on the next put/get."""
        self._in_hand_since = None
        if not self._batches:
            self.busy = False
            return None
        return self._take()

    def _take(self) -> Sequence[T]:
        batch, since = self._batches.popleft()
        self._count -= len(batch)
        self._in_hand_since = since if batch else None  # the empty stop marker is not data
        self.busy = self._in_hand_since is not None or bool(self._batches)
        return batch
