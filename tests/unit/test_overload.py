"""Bounded data age under overload, the pure parts: the queue's backlog age, the poll schedule held back by it,
the paced reads (a poll handed over in parts while the sink is busy), when the skipped polls are logged, the
device setting and its metric.

The behaviour on real processes (a gateway whose link to the broker carries half of what it offers) is in
tests/e2e/test_overload_e2e.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.assembly import build_outbound
from gateway.encoders.sparkplug import SparkplugEdgeNode
from gateway.errors import ConfigError
from gateway.metrics import build_registry
from gateway.queueing import MessageQueue
from gateway.runtime import paced_reads
from gateway.sources.base import HELD_EPISODE_QUIET_S, HeldLine, HeldLog, HoldBack, PollSchedule, RawReading
from gateway.sources.modbus import UnitStats
from gateway.tagmap import load_plant_from_text
from tests.unit.test_context import RACK, load
from tests.unit.test_operations import STATE, device


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_backlog_age_counts_from_put_until_the_consumer_asks_for_the_next_batch() -> None:
    clock = Clock()
    queue: MessageQueue[int] = MessageQueue(100, clock=clock)
    assert queue.backlog_age_s() == 0.0
    await queue.put([1, 2])
    clock.now = 1.0
    await queue.put([3])
    clock.now = 3.0
    assert queue.backlog_age_s() == 3.0  # the first batch, queued at 0
    assert list(await queue.get()) == [1, 2]
    clock.now = 4.0
    assert queue.backlog_age_s() == 4.0  # still being handed on: it counts until the next get
    assert list(await queue.get()) == [3]
    assert queue.backlog_age_s() == 3.0  # now the batch queued at 1
    assert queue.get_nowait() is None
    assert queue.backlog_age_s() == 0.0  # nothing in hand, nothing queued
    await queue.put_unbounded([])  # the stop marker is not data
    assert queue.get_nowait() == []
    assert queue.backlog_age_s() == 0.0


async def test_until_backlog_below_waits_for_the_consumer_to_move_on() -> None:
    clock = Clock()
    queue: MessageQueue[int] = MessageQueue(100, clock=clock)
    await queue.until_backlog_below(0.1)  # empty: at once
    await queue.put([1])
    clock.now = 0.5
    waiter = asyncio.create_task(queue.until_backlog_below(0.1))
    await asyncio.sleep(0.02)
    assert not waiter.done()
    await queue.get()  # taken, but in hand since 0: still old
    await asyncio.sleep(0.02)
    assert not waiter.done()
    consumer = asyncio.create_task(queue.get())  # asks for the next: the first is handed on
    await asyncio.wait_for(waiter, 1)
    consumer.cancel()


def test_a_held_poll_moves_the_schedule_and_counts_the_polls_it_skipped() -> None:
    schedule = PollSchedule(interval_s=0.1, deadline=1.0)
    schedule.resume(0.9)  # not late: nothing changes
    assert (schedule.deadline, schedule.held_s) == (1.0, 0.0)
    schedule.resume(1.25)  # due at 1.0, started at 1.25: the poll at 1.1 and the one at 1.2 never happen
    assert schedule.deadline == 1.25
    assert schedule.held_polls == 2
    assert not schedule.after_cycle(1.3)  # a held poll is no overrun; the schedule runs on from 1.25
    assert schedule.deadline == pytest.approx(1.35)
    assert (schedule.overruns, schedule.skipped_cycles) == (0, 0)
    for _ in range(10):  # each poll 0.01 s late: the fractions add up to a skipped poll
        schedule.resume(schedule.deadline + 0.01)
        schedule.after_cycle(schedule.deadline + 0.001)
    assert schedule.held_polls == 3


async def test_the_queue_is_busy_while_the_consumer_holds_a_batch_or_one_waits() -> None:
    queue: MessageQueue[int] = MessageQueue(100)
    assert not queue.busy
    await queue.put([1])
    await queue.put([2])
    assert queue.busy
    assert list(await queue.get()) == [1]
    assert queue.busy  # one in hand, one queued
    assert queue.get_nowait() == [2]
    assert queue.busy  # in hand until the consumer asks for the next
    assert queue.get_nowait() is None
    assert not queue.busy
    await queue.put_unbounded([])  # the stop marker
    assert queue.get_nowait() == []
    assert not queue.busy


async def test_until_room_waits_while_two_batches_are_queued_the_one_in_hand_does_not_count() -> None:
    queue: MessageQueue[int] = MessageQueue(100)
    await queue.until_room()  # empty: at once
    await queue.put([1])
    await queue.get()
    await queue.put([2])
    await queue.until_room()  # one in hand, one queued (the producer's own, say): at once
    await queue.put([3])
    waiter = asyncio.create_task(queue.until_room())  # [3] waits behind [2]
    await asyncio.sleep(0.02)
    assert not waiter.done()
    assert list(await queue.get()) == [2]  # taken: only [3] queued
    await asyncio.wait_for(waiter, 1)


def test_the_time_a_poll_waited_between_its_reads_is_held_not_an_overrun() -> None:
    schedule = PollSchedule(interval_s=0.1, deadline=1.0)
    # Reads of 0.05 s and 0.2 s of waits for the sink: ended at 1.25, due 1.1; the 0.15 s late are all waits.
    assert not schedule.after_cycle(1.25, held_s=0.2)
    assert (schedule.overruns, schedule.late_s, schedule.deadline) == (0, 0.0, 1.25)
    assert schedule.held_s == pytest.approx(0.15)  # one skipped poll and a half
    assert schedule.held_polls == 1
    # Reads of 0.15 s and 0.05 s of waits: 0.1 s late, of which 0.05 s the reads' own: an overrun.
    assert schedule.after_cycle(1.45, held_s=0.05)
    assert schedule.overruns == 1 and schedule.late_s == pytest.approx(0.05)
    assert schedule.held_s == pytest.approx(0.2) and schedule.deadline == 1.45
    # Waits within the slot skip nothing.
    assert not schedule.after_cycle(1.5, held_s=0.03)
    assert schedule.held_s == pytest.approx(0.2) and schedule.deadline == pytest.approx(1.55)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))


def readings(*tags: str) -> list[RawReading]:
    return [RawReading(tag=tag, value=1, ts=0.0) for tag in tags]


@pytest.mark.parametrize(("paced_reads", "cap_ms"), [(False, 100), (True, 0)])
def test_reads_are_paced_only_when_the_device_allows_parts_and_has_a_cap(paced_reads: bool, cap_ms: int) -> None:
    queue: MessageQueue[RawReading] = MessageQueue(100)
    assert HoldBack(queue, 100, 100, Log(), paced_reads=True).pace is queue
    assert HoldBack(queue, cap_ms, 100, Log(), paced_reads=paced_reads).pace is None
    assert HoldBack(None, 100, 100, Log(), paced_reads=True).pace is None


async def test_a_paced_poll_hands_its_parts_over_and_each_waits_for_room_before_the_next_read() -> None:
    clock = Clock()
    queue: MessageQueue[RawReading] = MessageQueue(100)
    log = Log()
    hold_back = HoldBack(queue, 100, 100, log, paced_reads=True)
    schedule = PollSchedule(interval_s=0.1, deadline=0.0)
    await queue.put(readings("older"))
    await queue.get()  # the sink is busy with another device's data, and more waits for it
    await queue.put(readings("queued"))
    await hold_back.before_poll(schedule, clock)

    async def consumer_takes_after(seconds: float) -> None:
        await asyncio.sleep(0.02)
        clock.now += seconds
        await queue.get()

    # The first part goes to the queue at once; the next read waits until the sink has taken the batch before it.
    taker = asyncio.create_task(consumer_takes_after(0.15))
    await hold_back.hand_over(readings("a", "b"), queue.put, clock)
    await taker
    assert hold_back.paced and hold_back.waited_s == pytest.approx(0.15)
    assert queue.busy and len(queue) == 2  # "queued" in hand, "a", "b" next: the next read may go ahead
    # The rest of a paced poll is one more part (it too waits for room); an unpaced one is emitted as it is.
    taker = asyncio.create_task(consumer_takes_after(0.05))
    await hold_back.finish(readings("c"), queue.put, clock)
    await taker
    assert hold_back.waited_s == pytest.approx(0.2)
    assert list(await queue.get()) == readings("c")
    # The poll took 0.22 s: 0.02 s of reads and 0.2 s of waits, held, not an overrun; the next poll is due at once.
    assert not hold_back.after_cycle(schedule, 0.22)
    assert (schedule.held_polls, schedule.overruns, schedule.deadline) == (1, 0, 0.22)
    assert (hold_back.paced, hold_back.waited_s) == (False, 0.0)
    # The episode is logged at the next poll (it skipped one), never per part.
    clock.now = 0.22
    assert queue.get_nowait() is None  # the sink caught up (nothing in hand)
    await hold_back.before_poll(schedule, clock)
    assert [(event, fields["skipped"]) for event, fields in log.lines] == [("poll_skipped", 1)]
    emitted: list[list[RawReading]] = []

    async def emit(parts: list[RawReading]) -> None:
        emitted.append(parts)

    await hold_back.finish(readings("d"), emit, clock)
    await hold_back.finish([], emit, clock)
    assert emitted == [readings("d")] and not hold_back.paced  # not paced: one emit, no wait
    assert not hold_back.after_cycle(schedule, 0.25)
    clock.now = 0.22 + HELD_EPISODE_QUIET_S  # the first poll that did not wait after a quiet second ends it
    await hold_back.before_poll(schedule, clock)
    assert [event for event, _ in log.lines] == ["poll_skipped", "poll_skipping_over"]


def run_held(log: HeldLog, schedule: PollSchedule, waits: list[float]) -> list[tuple[float, HeldLine]]:
    """Polls at each deadline; a wait > 0 holds that poll back so long (as the poll loops do)."""
    lines = []
    for wait in waits:
        start = schedule.deadline + wait
        schedule.resume(start)
        line = log.before_poll(schedule, held=wait > 0, now=start)
        if line is not None:
            lines.append((start, line))
        schedule.after_cycle(start + 0.001)
    return lines


def test_an_episode_of_skipped_polls_is_logged_when_it_starts_and_when_it_is_over_with_its_count() -> None:
    schedule = PollSchedule(interval_s=1.0, deadline=0.0)
    lines = run_held(HeldLog(), schedule, [0, 0, 2.5, 1.5, 0, 0])
    assert [line for _, line in lines] == [
        HeldLine(over=False, skipped=2, episode_s=0.0),  # the first wait: two polls skipped so far
        # From the first held poll (4.5) to the first one not held (8.0); 2.5 + 1.5 s held: four polls.
        HeldLine(over=True, skipped=4, episode_s=pytest.approx(3.5)),
    ]
    # A second episode counts from its own start.
    lines = run_held(HeldLog(), PollSchedule(interval_s=1.0, deadline=0.0), [3.0, 0, 1.0, 0])
    assert [line.skipped for _, line in lines] == [3, 3, 1, 1]


def test_polls_held_now_and_then_are_one_episode_until_a_quiet_second() -> None:
    schedule = PollSchedule(interval_s=0.1, deadline=0.0)
    # For 3 s every other poll is held half an interval (as paced reads do under a steady overload), then none.
    lines = run_held(HeldLog(), schedule, [0.05, 0.0] * 15 + [0.0] * 12)
    assert [(line.over, line.skipped) for _, line in lines] == [(False, 0), (True, 7)]
    ended_at, over = lines[-1]
    assert over.episode_s == pytest.approx(ended_at - lines[0][0])
    assert ended_at - 3.0 >= HELD_EPISODE_QUIET_S - 0.1  # one quiet second after the last held poll


def test_a_long_episode_is_logged_once_a_minute_never_per_poll() -> None:
    schedule = PollSchedule(interval_s=0.1, deadline=0.0)
    lines = run_held(HeldLog(), schedule, [0.1] * 3000)  # every poll held a whole interval, for 10 minutes
    minutes = schedule.deadline / 60
    assert len(lines) <= minutes + 1
    assert all(not line.over for _, line in lines)
    counts = [line.skipped for _, line in lines]
    assert counts == sorted(counts) and counts[0] == 1 and counts[-1] >= schedule.held_polls - 600  # running totals


MAP = """
gateway: {{id: gw, enterprise: e, site: s}}
mqtt: {{url: "mqtt://127.0.0.1:1883"}}
devices:
  - {{name: plc, area: a, line: l, protocol: modbus, host: 127.0.0.1, interval_ms: 250{extra},
      tags: [{{name: t, address: 0, type: uint16}}]}}
"""


@pytest.mark.parametrize(
    ("extra", "cap_ms"), [("", 250), (", max_queue_age_ms: 1000", 1000), (", max_queue_age_ms: 0", 0)]
)
def test_max_queue_age_defaults_to_one_interval_and_zero_turns_it_off(extra: str, cap_ms: int) -> None:
    plant = load_plant_from_text(MAP.format(extra=extra), filename="map.yaml", environ={})
    assert plant.devices[0].queue_age_cap_ms == cap_ms


def test_a_negative_max_queue_age_is_refused_at_its_line() -> None:
    with pytest.raises(ConfigError, match=r"map\.yaml:5.*max_queue_age_ms"):
        load_plant_from_text(MAP.format(extra=", max_queue_age_ms: -1"), filename="map.yaml", environ={})


def test_skipped_polls_are_exported_per_device() -> None:
    stats = UnitStats(cycles=40, backlog_skipped=7)
    state = replace(STATE, devices=(replace(device("rack-01", connected=True), source_stats=stats),))
    text = generate_latest(build_registry(lambda: state)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    sample = families["cellgate_poll_skipped"].samples[0]
    assert (sample.name, sample.labels, sample.value) == ("cellgate_poll_skipped_total", {"device": "rack-01"}, 7)


def test_the_age_of_the_oldest_data_waiting_for_the_sink_is_a_gauge() -> None:
    state = replace(STATE, queue_age_s=0.25)
    text = generate_latest(build_registry(lambda: state)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["cellgate_queue_oldest_age_seconds"].samples[0].value == 0.25


def test_only_devices_with_one_message_per_value_and_no_context_pace_their_reads() -> None:
    per_tag = load_plant_from_text(MAP.format(extra=""), filename="map.yaml", environ={})
    assert paced_reads(build_outbound(per_tag, per_tag.devices[0]))
    batch = load_plant_from_text(MAP.format(extra=", publish: batch"), filename="map.yaml", environ={})
    assert not paced_reads(build_outbound(batch, batch.devices[0]))  # a _batch message is one poll
    with_context = load(RACK.replace("PUBLISH", "tag"))
    assert not paced_reads(build_outbound(with_context, with_context.devices[0]))  # its poll's context tags
    node = SparkplugEdgeNode(group_id="g", edge_node_id="gw")
    assert not paced_reads(build_outbound(per_tag, per_tag.devices[0], sparkplug=node))  # one DDATA per poll
