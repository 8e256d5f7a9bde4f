"""Property test of gateway.seq_reservation: no (topic, seq) is ever carried by two messages, whatever the rate.

Issue 10, defect 3 ("seq numbers are reused after a crash"): OPC UA with ``sampling_interval_ms`` below
``interval_ms`` or ``queue_size > 1`` sends far more than one message per cycle, and the old jump after a crash
(``elapsed_s * (1000/interval_ms + 1) + 8``) reused thousands of numbers. Here devices emit batches of random
size (bursts far above any reservation), checkpoints come at random times, store writes are held back for
random spans, writes fail
(read-only or full state directory: the reservation is only in memory, so no check in that run), and the
process is killed at random points: what survives a kill is exactly what the store last wrote, sometimes with
one slot torn or damaged (issue 10, defect 4: seq never restarts below what subscribers saw), or both lost.
After a clean stop the next run must continue without a gap.

Two kinds of files (the flash-wear redesign): frequent small reservations (a ceiling per device) and rare
per-topic snapshots (every ``snapshot_period_s``, here short so that runs see several). Every slot write of
either kind is a separate store call held at the gate, so kills fall between the two kinds' writes, between
the two slots of a first write, and while either is pending (a pending write never reaches the store); the
damage after a kill hits either kind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from hypothesis import example, given
from hypothesis import strategies as st

from gateway.outbound import DeviceOutbound, PublishMode, TagOutput
from gateway.schema import EquipmentTopics, TagMeta
from gateway.seq_reservation import (
    SLOT_FILES,
    SNAPSHOT_FILES,
    PreviousStop,
    SeqBudget,
    SeqReservations,
    SlotCorruptError,
    decode_reservation,
    decode_snapshot,
)
from gateway.sources.base import RawReading
from gateway.transform import TagRules
from tests.support.fuzz import fuzz_settings

TAGS = ("t0", "t1", "t2", "t3")
SNAPSHOT_PERIOD_S = 20.0
"""Shorter than the runtime's, so that a run of a few dozen steps writes periodic snapshots too."""


class KilledError(Exception):
    """The simulated process died while this store call was pending."""


@dataclass
class MemoryStore:
    """The slots of both kinds; ``write`` applies at once, like the file store's rename after fsync."""

    slots: dict[str, bytes] = field(default_factory=dict)
    failures_left: int = 0
    """The next this many writes fail (a full or read-only state directory)."""

    def read(self, name: str) -> bytes | None:
        return self.slots.get(name)

    def write(self, name: str, data: bytes) -> None:
        if self.failures_left:
            self.failures_left -= 1
            raise OSError(28, "No space left on device")
        self.slots[name] = data

    def set_aside(self, name: str, problem: str) -> None:
        self.slots.pop(name, None)


class GatedIo:
    """Store calls wait until the test lets them through, so emits and kills can fall in between."""

    def __init__(self) -> None:
        self.pending: list[asyncio.Future[None]] = []
        self.dead = False

    async def run_io(self, call: Callable[[], None]) -> None:
        if self.dead:
            raise KilledError
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(gate)
        await gate
        if self.dead:
            raise KilledError
        call()

    def complete_one(self) -> None:
        if self.pending:
            gate = self.pending.pop(0)
            if not gate.done():
                gate.set_result(None)

    def kill(self) -> None:
        self.dead = True
        for gate in self.pending:
            if not gate.done():
                gate.set_exception(KilledError())
        self.pending.clear()


def make_device(index: int, mode: PublishMode, tag_count: int, equipment: str | None = None) -> DeviceOutbound:
    """A device with ``tag_count`` tags: with one tag in per-tag mode its budget bounds one topic exactly.
    Its topics are those of ``equipment`` (default its own name): a reload can move them to another device."""
    topics = EquipmentTopics.of(enterprise="e", site="s", area="a", line="l", equipment=equipment or f"dev{index}")
    tags = [
        TagOutput(name=tag, unit=None, rules=TagRules(), meta=TagMeta(tag=tag, type="float64"))
        for tag in TAGS[:tag_count]
    ]
    return DeviceOutbound(device=f"dev{index}", protocol="opcua", topics=topics, mode=mode, interval_ms=1000, tags=tags)


async def emit(
    outbound: DeviceOutbound, budget: SeqBudget, readings: list[RawReading], now: float
) -> list[tuple[str, int]]:
    """What gateway.runtime._DeviceChannel.emit does with the budget, returning the (topic, seq) pairs sent."""
    need = outbound.seq_need(readings)
    await budget.take(need)
    messages = outbound.messages(readings, now)
    budget.left += need - len(messages)
    return [(m.topic, orjson.loads(m.payload)["seq"]) for m in messages]


_emit = st.tuples(st.just("emit"), st.integers(0, 2), st.integers(0, 3), st.integers(1, 400))
_tick = st.tuples(st.just("tick"), st.floats(0.01, 12.0))
# Repeated entries weigh the choice: mostly emits and time passing.
_during_run = st.one_of(
    _emit, _emit, _emit, _emit, _tick, _tick,
    st.tuples(st.just("checkpoint")),
    st.tuples(st.just("hold"), st.integers(1, 6)),
    st.tuples(st.just("fail"), st.integers(1, 3)),
    st.tuples(st.just("reload"), st.integers(0, 2), st.integers(1, 4)),
    st.tuples(st.just("swap"), st.integers(0, 2), st.integers(1, 2)),
)
_damages = ["plain", "plain", "plain", "torn", "flip", "delete_one", "both_lost"]
_kinds = ["snapshot", "reservation"]
_end_of_run = st.one_of(
    st.tuples(st.just("kill"), st.sampled_from(_damages), st.sampled_from(_kinds)), st.tuples(st.just("stop"))
)
# A script: a few runs, each some steps then a kill or a clean stop.
scripts = st.lists(
    st.tuples(st.lists(_during_run, min_size=1, max_size=40), _end_of_run), min_size=2, max_size=5
).map(lambda runs: [step for steps, end in runs for step in [*steps, end]])


_ONE_TAG = [(PublishMode.TAG, 1), (PublishMode.TAG, 1), (PublishMode.BATCH, 2)]
_BURST = ("emit", 0, 0, 400)
_KILL = ("kill", "plain", "reservation")
_TORN = ("kill", "torn", "reservation")
_SNAPSHOT_TORN = ("kill", "torn", "snapshot")


# Hand-picked cases besides the random search: a burst that spends a whole reservation right before the kill;
# the same with the newest slot torn (the older slot's promise must cover it); a burst during a slow write;
# a stop then a deleted slot.
@example(devices=_ONE_TAG, script=[("tick", 1.0), _BURST, _KILL, ("tick", 1.0), _BURST], damaged="newest")
@example(devices=_ONE_TAG, script=[("tick", 1.0), _BURST, _TORN, ("tick", 1.0), _BURST], damaged="newest")
@example(
    devices=_ONE_TAG,
    script=[("tick", 6.0), ("emit", 0, 0, 50), ("tick", 1.0), ("checkpoint",), ("hold", 3), _BURST, ("emit", 1, 0, 9),
            _KILL, ("tick", 1.0), _BURST, ("emit", 1, 0, 400), _KILL],
    damaged="newest",
)
@example(
    devices=_ONE_TAG,
    script=[("tick", 1.0), _BURST, ("stop",), ("tick", 1.0), _BURST, ("kill", "delete_one", "reservation"),
            ("tick", 1.0), _BURST],
    damaged="newest",
)
@example(  # a reload (topics move to a device with more tags), a periodic snapshot, then the newest snapshot torn
    devices=_ONE_TAG,
    script=[("tick", 1.0), _BURST, ("emit", 1, 0, 300), ("tick", 21.0), ("checkpoint",), ("reload", 0, 4), _BURST,
            ("tick", 21.0), ("checkpoint",), ("emit", 0, 1, 400), ("emit", 1, 0, 400), _SNAPSHOT_TORN, ("tick", 1.0),
            _BURST, ("emit", 0, 3, 400)],
    damaged="newest",
)
@example(  # a reload moves topics between devices, the snapshot of the new mapping is then lost
    devices=_ONE_TAG,
    script=[("tick", 1.0), _BURST, ("emit", 1, 0, 300), ("tick", 21.0), ("checkpoint",), ("swap", 0, 1),
            ("emit", 0, 0, 400), ("emit", 1, 0, 400), ("tick", 1.0), ("emit", 0, 0, 400), _SNAPSHOT_TORN,
            ("tick", 1.0), _BURST, ("emit", 1, 0, 400)],
    damaged="newest",
)
@example(  # killed while the first snapshot of a run is written (held), then again after its reservation
    devices=_ONE_TAG,
    script=[("tick", 1.0), ("hold", 2), _BURST, _KILL, ("tick", 1.0), ("hold", 1), _BURST, ("tick", 1.0), _KILL,
            ("tick", 1.0), _BURST],
    damaged="newest",
)
@example(  # both slots lost: the wall-clock floor
    devices=_ONE_TAG, script=[("tick", 1.0), _BURST, ("kill", "both_lost", "snapshot"), ("tick", 2.0), _BURST],
    damaged="older",
)
@example(  # writes fail during a burst, the next checkpoint succeeds, then the newest slot is torn
    devices=_ONE_TAG,
    script=[("tick", 1.0), ("fail", 2), _BURST, ("checkpoint",), _TORN, ("tick", 1.0), _BURST],
    damaged="newest",
)
@example(  # R shrinks at a checkpoint while a device still holds a large budget from the old block
    devices=_ONE_TAG,
    script=[("tick", 1.0), _BURST, ("tick", 6.0), ("emit", 0, 0, 1), ("tick", 12.0), ("hold", 4), ("checkpoint",),
            ("emit", 0, 0, 300), ("tick", 0.1), ("tick", 0.1), _KILL, ("tick", 1.0), _BURST],
    damaged="newest",
)
@given(
    devices=st.lists(st.tuples(st.sampled_from(list(PublishMode)), st.integers(1, 4)), min_size=3, max_size=3),
    script=scripts,
    damaged=st.sampled_from(["newest", "newest", "older"]),
)
@fuzz_settings(300)
def test_no_topic_ever_carries_a_seq_twice(
    devices: list[tuple[PublishMode, int]], script: list[tuple[object, ...]], damaged: str
) -> None:
    """Issue 10 defect 3 recipe as a property: random rates, bursts, checkpoint timings and kill points."""
    asyncio.run(_simulate(devices, script, damaged))


async def _simulate(devices: list[tuple[PublishMode, int]], script: list[tuple[object, ...]], damaged: str) -> None:
    store = MemoryStore()
    used: dict[str, set[int]] = {}
    clock = [1_765_000_000.0]
    value = [0.0]
    used_before = False
    exact_after_clean: dict[str, int] | None = None  # last seq per topic at a clean stop, for the next run
    steps = iter(script)
    while True:
        io = GatedIo()
        reservations: SeqReservations
        outbounds = [make_device(index, mode, tag_count) for index, (mode, tag_count) in enumerate(devices)]
        equipment = [f"dev{index}" for index in range(len(devices))]

        def snapshot(outbounds: list[DeviceOutbound] = outbounds) -> dict[str, dict[str, int]]:
            return {outbound.device: outbound.seq_snapshot() for outbound in outbounds}

        reservations = SeqReservations(
            store, snapshot=snapshot, period_s=5.0, snapshot_period_s=SNAPSHOT_PERIOD_S, clock=lambda: clock[0],
            monotonic=lambda: clock[0], run_io=io.run_io,
        )
        starting = asyncio.ensure_future(reservations.start(used_before=used_before))
        used_before = True
        tasks: dict[int, asyncio.Task[list[tuple[str, int]]]] = {}
        background: list[asyncio.Task[None]] = []
        started = False
        ended = False
        hold = 0
        for step in steps:
            await _settle()
            if starting.done() and not started:
                resume = starting.result()
                started = True
                for outbound in outbounds:
                    outbound.restore_seq(reservations.claim(outbound.seq_topics))
                if exact_after_clean is not None:
                    assert resume.previous_stop is PreviousStop.CLEAN
                    assert _flat(snapshot()) == exact_after_clean, "a clean stop must be followed by exact numbers"
            exact_after_clean = None
            kind = step[0]
            if kind == "emit" and started:
                device, first_tag, count = int(step[1]), int(step[2]), int(step[3])
                if device in tasks and not tasks[device].done():
                    continue  # one source per device: its next batch comes after the last one
                readings = []
                for index in range(count):
                    value[0] += 1.0
                    tag = outbounds[device].tag_names[(first_tag + index * 7 // 3) % len(outbounds[device].tag_names)]
                    readings.append(RawReading(tag=tag, value=value[0], ts=clock[0]))
                clock[0] += count / 1e6  # no topic gets more than a message a microsecond (the floor's premise)
                budget = reservations.budget(outbounds[device].device)
                tasks[device] = asyncio.ensure_future(emit(outbounds[device], budget, readings, clock[0]))
            elif kind == "tick":
                clock[0] += float(step[1])
            elif kind == "checkpoint" and started:
                background.append(asyncio.ensure_future(reservations.checkpoint()))
            elif kind == "hold":
                hold = int(step[1])
            elif kind == "reload" and started:
                # What Gateway._apply_reload does: the device's source stopped, its topics remembered, a new
                # outbound (here with another number of tags) continues after them, every budget renewed.
                device, tag_count = int(step[1]), int(step[2])
                _collect(tasks, used)
                if device in tasks:
                    tasks.pop(device).cancel()
                    await _settle()
                reservations.remember(_flat(snapshot()))
                outbounds[device] = make_device(device, devices[device][0], tag_count, equipment[device])
                outbounds[device].restore_seq(reservations.claim(outbounds[device].seq_topics))
                reservations.invalidate()
            elif kind == "swap" and started:
                # A reload that swaps two devices' equipment: their topics move to the other device.
                first, second = int(step[1]), (int(step[1]) + int(step[2])) % len(outbounds)
                _collect(tasks, used)
                for device in (first, second):
                    if device in tasks:
                        tasks.pop(device).cancel()
                await _settle()
                reservations.remember(_flat(snapshot()))
                equipment[first], equipment[second] = equipment[second], equipment[first]
                for device in (first, second):
                    tag_count = len(outbounds[device].tag_names)
                    outbounds[device] = make_device(device, devices[device][0], tag_count, equipment[device])
                    outbounds[device].restore_seq(reservations.claim(outbounds[device].seq_topics))
                reservations.invalidate()
            elif kind == "fail":
                store.failures_left = int(step[1])
            elif kind == "kill":
                _collect(tasks, used)
                if reservations.degraded:
                    used.clear()  # the documented limit: numbers sent while no reservation could be written
                io.kill()
                _damage(store, str(step[1]), damaged, str(step[2]))
                ended = True
                break
            elif kind == "stop" and started:
                exact_after_clean = await _clean_stop(io, reservations, tasks, background, used, snapshot)
                if reservations.degraded:
                    exact_after_clean = None  # the exact numbers could not be written
                    used.clear()  # the documented limit, as for a kill
                ended = True
                break
            _collect(tasks, used)
            # Store calls complete after each step, unless held back for a few steps (a slow disk): kills and
            # emits then fall while a reservation is being written.
            if hold:
                hold -= 1
            else:
                for _ in range(20):
                    await _settle()
                    if not io.pending:
                        break
                    while io.pending:
                        io.complete_one()
                _collect(tasks, used)
        await _settle()
        _collect(tasks, used)
        io.kill()  # whatever is still pending never reaches the store
        for task in [*tasks.values(), *background, starting]:
            task.cancel()
        await asyncio.gather(*tasks.values(), *background, starting, return_exceptions=True)
        if not ended:
            return


def _flat(by_device: dict[str, dict[str, int]]) -> dict[str, int]:
    return {topic: seq for topics in by_device.values() for topic, seq in topics.items()}


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def _collect(tasks: dict[int, asyncio.Task[list[tuple[str, int]]]], used: dict[str, set[int]]) -> None:
    for device, task in list(tasks.items()):
        if not task.done() or task.cancelled() or task.exception() is not None:
            continue
        for topic, seq in task.result():
            seen = used.setdefault(topic, set())
            assert seq not in seen, f"{topic} seq {seq} used twice"
            seen.add(seq)
        del tasks[device]


def _damage(store: MemoryStore, how: str, which: str, kind: str) -> None:
    """What the disk holds after the kill: as written, or one slot (newest or older) of one kind torn /
    flipped / gone, or both slots of that kind lost."""
    names, decode = (SNAPSHOT_FILES, decode_snapshot) if kind == "snapshot" else (SLOT_FILES, decode_reservation)
    generations = []
    for name in names:
        data = store.slots.get(name)
        try:
            generations.append(decode(data).generation if data is not None else -1)
        except SlotCorruptError:
            generations.append(-1)
    newest = generations.index(max(generations))
    name = names[newest if which == "newest" else 1 - newest]
    data = store.slots.get(name)
    if how == "torn" and data is not None:
        store.slots[name] = data[: len(data) // 2]
    elif how == "flip" and data is not None:
        index = len(data) // 3
        store.slots[name] = data[:index] + bytes([data[index] ^ 0x04]) + data[index + 1 :]
    elif how == "delete_one":
        store.slots.pop(name, None)
    elif how == "both_lost":
        store.slots[names[0]] = b"garbage"
        store.slots.pop(names[1], None)


async def _clean_stop(
    io: GatedIo,
    reservations: SeqReservations,
    tasks: dict[int, asyncio.Task[list[tuple[str, int]]]],
    background: list[asyncio.Task[None]],
    used: dict[str, set[int]],
    snapshot: Callable[[], dict[str, dict[str, int]]],
) -> dict[str, int]:
    """The runtime's stop: sources cancelled, checkpoint task cancelled (its write ends first), exact save."""
    _collect(tasks, used)
    for task in tasks.values():
        task.cancel()
    for task in background:
        task.cancel()
    pending = [*tasks.values(), *background]
    while not all(task.done() for task in pending):
        io.complete_one()
        await _settle()
    _collect(tasks, used)
    stopping = asyncio.ensure_future(reservations.stop())
    while not stopping.done():
        io.complete_one()
        await _settle()
    stopping.result()
    return _flat(snapshot())
