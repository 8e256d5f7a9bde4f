from __future__ import annotations

import asyncio

import pytest

from gateway.queueing import MessageQueue


async def test_fifo_and_item_count() -> None:
    queue: MessageQueue[int] = MessageQueue(10)
    await queue.put([1, 2, 3])
    await queue.put([4])
    assert len(queue) == 4
    assert list(await queue.get()) == [1, 2, 3]
    assert queue.get_nowait() == [4]
    assert queue.get_nowait() is None
    assert len(queue) == 0


async def test_put_waits_for_room_counted_in_items() -> None:
    queue: MessageQueue[int] = MessageQueue(5)
    await queue.put([1, 2, 3, 4])
    blocked = asyncio.create_task(queue.put([5, 6]))  # 4 + 2 > 5: must wait
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert queue.full_waits == 1
    assert list(await queue.get()) == [1, 2, 3, 4]
    await asyncio.wait_for(blocked, 1)
    assert list(await queue.get()) == [5, 6]


async def test_batch_larger_than_queue_is_accepted_when_empty() -> None:
    queue: MessageQueue[int] = MessageQueue(2)
    await asyncio.wait_for(queue.put([1, 2, 3]), 1)
    assert len(queue) == 3


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MessageQueue(0)
