"""gateway.seq_reservation: the state file format, where a run resumes, the file store and the budgets.

Issue 10, defect 3 ("seq numbers are reused after a crash") and the seq part of defect 4 ("seq can never
restart below what subscribers already saw", also when the state is corrupt or gone). The property test over
random rates and kill points is tests/unit/test_seq_reservation_property.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from gateway.seq_reservation import (
    MIN_RESERVE,
    SEQ_RESERVE_FILE,
    SLOT_FILES,
    SNAPSHOT_FILES,
    DeviceSeq,
    PreviousStop,
    SeqFileStore,
    SeqReservation,
    SeqReservations,
    SeqSnapshot,
    SlotCorruptError,
    decode_reservation,
    decode_snapshot,
    encode_reservation,
    encode_snapshot,
    plan_resume,
    read_slots,
    size_reserve,
)

NOW = 1_765_000_000.0
RUN = 7


def snap(
    generation: int, *, clean: bool = False, count: int = 1000, run: int = RUN, known: dict[str, int] | None = None
) -> SeqSnapshot:
    """Device "dev" had sent ``count`` messages; its topic a/t stood at 41, a/u at 7; b/k had no device."""
    return SeqSnapshot(
        generation=generation, run=run, clean=clean, floor=0, promise=400,
        known=known if known is not None else {"b/k": 5},
        devices={"dev": DeviceSeq(count, {"a/t": 41, "a/u": 7}), "other": DeviceSeq(10, {"c/x": 3})},
        saved_at=NOW,
    )


def res(generation: int, *, ceiling: int = 1100, run: int = RUN, promise: int = 800) -> SeqReservation:
    """Device "dev" may reach ``ceiling`` messages, "other" 30."""
    return SeqReservation(generation=generation, run=run, promise=promise, ceilings={"dev": ceiling, "other": 30},
                          saved_at=NOW)


# ------------------------------------------------------------------------------------------- format


def test_encoded_state_reads_back() -> None:
    assert decode_snapshot(encode_snapshot(snap(5, clean=True))) == snap(5, clean=True)
    assert decode_reservation(encode_reservation(res(3))) == res(3)


def test_a_changed_ceiling_is_refused() -> None:
    data = encode_reservation(res(3))
    assert b'"dev":1100' in data  # a reservation is plain JSON (a snapshot is compressed)
    with pytest.raises(SlotCorruptError):
        decode_reservation(data.replace(b'"dev":1100', b'"dev":1000'))


def test_one_kind_is_never_read_as_the_other() -> None:
    with pytest.raises(SlotCorruptError):
        decode_snapshot(encode_reservation(res(3)))
    with pytest.raises(SlotCorruptError):
        decode_reservation(encode_snapshot(snap(3)))


DAMAGES = [
    pytest.param(lambda data: data[: len(data) // 2], id="torn"),
    pytest.param(lambda data: data[:12] + bytes([data[12] ^ 0x01]) + data[13:], id="one-bit-flipped"),
    pytest.param(lambda data: b"", id="empty"),
    pytest.param(lambda data: os.urandom(64), id="random-bytes"),
    pytest.param(lambda data: data.split(b"\n")[0] + b"\n", id="no-checksum"),
]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_state_is_refused(damage: object) -> None:
    with pytest.raises(SlotCorruptError):
        decode_snapshot(damage(encode_snapshot(snap(3))))  # type: ignore[operator]
    with pytest.raises(SlotCorruptError):
        decode_reservation(damage(encode_reservation(res(3))))  # type: ignore[operator]


# --------------------------------------------------------------------------------------- resume plan

MISSING = None
BAD = SlotCorruptError("checksum mismatch")
WALL = int(NOW * 1e6)


@pytest.mark.parametrize(
    ("snapshots", "reservations", "used_before", "stop", "t", "k", "unknown"),
    [
        # Never used: numbering starts at 1.
        pytest.param([MISSING, MISSING], [MISSING, MISSING], False, PreviousStop.NEW, 0, 0, 0, id="first-start"),
        # Clean stop: exactly the saved numbers, no gap, whatever the reservations say.
        pytest.param([snap(4), snap(5, clean=True)], [res(8), BAD], True, PreviousStop.CLEAN, 41, 5, 0, id="clean"),
        # Crash: seq at the snapshot + what the device's ceiling allowed past its counter then (1100 - 1000).
        # A topic of no device did not move; one not listed: the floor + the largest advance.
        pytest.param([snap(7), snap(6)], [res(9), res(8, ceiling=1050)], True, PreviousStop.UNCLEAN, 141, 5, 100,
                     id="unclean"),
        # The reservations are of an older run: nothing was sent since this run's snapshot.
        pytest.param([snap(7), snap(6)], [res(9, run=RUN - 1), res(8, run=RUN - 1)], True, PreviousStop.UNCLEAN,
                     41, 5, 0, id="no-reservation-in-this-run"),
        # A reservation slot lost: the other one + P (the lost one may have been newer).
        pytest.param([snap(7), snap(6)], [res(9), BAD], True, PreviousStop.ONE_SLOT_BAD, 941, 5, 900,
                     id="reservation-corrupt"),
        pytest.param([snap(7), snap(6)], [MISSING, res(9, run=RUN - 1)], True, PreviousStop.ONE_SLOT_BAD,
                     41 + 400, 5, 400, id="reservation-deleted-other-of-older-run"),
        # A snapshot slot lost: the other may predate a reload, so every topic gets all devices' advances
        # (dev 100 + other 20).
        pytest.param([snap(7), BAD], [res(9), res(8)], True, PreviousStop.ONE_SLOT_BAD, 161, 125, 120,
                     id="snapshot-corrupt"),
        pytest.param([MISSING, snap(7, clean=True)], [res(9), res(8)], True, PreviousStop.ONE_SLOT_BAD, 161, 125,
                     120, id="clean-snapshot-but-other-deleted"),
        # Nothing to bound what was sent: the wall-clock floor, microseconds since the epoch.
        pytest.param([BAD, BAD], [res(9), res(8)], True, PreviousStop.LOST, None, None, WALL, id="snapshots-corrupt"),
        pytest.param([BAD, MISSING], [MISSING, MISSING], False, PreviousStop.LOST, None, None, WALL,
                     id="corrupt-and-missing"),
        pytest.param([MISSING, MISSING], [res(9), res(8)], True, PreviousStop.LOST, None, None, WALL,
                     id="snapshots-deleted"),
        pytest.param([snap(7), snap(6)], [MISSING, MISSING], True, PreviousStop.LOST, None, None, WALL,
                     id="unclean-reservations-deleted"),
        pytest.param([snap(7), snap(6)], [res(9, run=RUN + 1), res(8)], True, PreviousStop.LOST, None, None, WALL,
                     id="reservation-of-a-newer-run"),
    ],
)
def test_plan_resume(
    snapshots: list[SeqSnapshot | SlotCorruptError | None],
    reservations: list[SeqReservation | SlotCorruptError | None],
    used_before: bool,
    stop: PreviousStop,
    t: int | None,
    k: int | None,
    unknown: int,
) -> None:
    resume = plan_resume(snapshots, reservations, used_before=used_before, now=NOW)
    assert resume.previous_stop is stop
    assert resume.last.get("a/t", resume.floor) == (t if t is not None else unknown)
    assert resume.last.get("b/k", resume.floor) == (k if k is not None else unknown)
    assert resume.floor == unknown


def test_the_floor_after_a_loss_is_above_numbers_given_out_since_an_earlier_loss() -> None:
    first = plan_resume([BAD, BAD], [BAD, BAD], used_before=True, now=NOW)
    # Even a topic sent a message every microsecond since then stays below the next floor.
    used_since = first.floor + 5 * 1_000_000
    assert plan_resume([BAD, BAD], [BAD, BAD], used_before=True, now=NOW + 5.0).floor >= used_since
    assert first.floor < 2**53  # exact in JSON and JavaScript


@pytest.mark.parametrize(
    ("used", "elapsed_s", "need", "expected"),
    [
        (0, 5.0, 0, MIN_RESERVE),  # idle: the minimum
        (1000, 5.0, 0, 2000),  # 200/s over two 5 s periods
        (1000, 0.1, 0, 10_000),  # a burst right after a renewal: rate over at least 1 s
        (10, 5.0, 5000, 5000),  # one batch larger than everything else
    ],
)
def test_size_reserve(used: int, elapsed_s: float, need: int, expected: int) -> None:
    assert size_reserve(used=used, elapsed_s=elapsed_s, period_s=5.0, need=need) == expected


# -------------------------------------------------------------------------------------------- files


def test_file_store_writes_atomically_and_reads_back(tmp_path: Path) -> None:
    store = SeqFileStore(tmp_path)
    assert read_slots(store, SNAPSHOT_FILES, decode_snapshot) == [None, None]
    store.write(SNAPSHOT_FILES[1], encode_snapshot(snap(1)))
    store.write(SNAPSHOT_FILES[0], encode_snapshot(snap(2, clean=True)))
    store.write(SLOT_FILES[1], encode_reservation(res(1)))
    assert read_slots(store, SNAPSHOT_FILES, decode_snapshot) == [snap(2, clean=True), snap(1)]
    assert read_slots(store, SLOT_FILES, decode_reservation) == [None, res(1)]
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted([*SNAPSHOT_FILES, SLOT_FILES[1], SEQ_RESERVE_FILE])  # no temporary file left


def test_a_corrupt_slot_is_moved_aside_and_named_in_one_log_line(tmp_path: Path) -> None:
    store = SeqFileStore(tmp_path)
    store.write(SLOT_FILES[1], encode_reservation(res(1)))
    (tmp_path / SLOT_FILES[0]).write_bytes(os.urandom(300))
    with structlog.testing.capture_logs() as logs:
        slots = read_slots(store, SLOT_FILES, decode_reservation)
    assert isinstance(slots[0], SlotCorruptError)
    assert slots[1] == res(1)
    (event,) = [entry for entry in logs if entry["event"] == "seq_state_corrupt"]
    moved = Path(event["moved_to"])
    assert moved.exists() and moved.parent == tmp_path and moved.name.startswith(SLOT_FILES[0] + ".corrupt-")
    assert not (tmp_path / SLOT_FILES[0]).exists()


def test_a_failed_write_keeps_the_previous_slot(tmp_path: Path) -> None:
    store = SeqFileStore(tmp_path)
    store.write(SLOT_FILES[0], encode_reservation(res(2)))
    (tmp_path / (SLOT_FILES[0] + ".tmp")).mkdir()  # the temporary file cannot be created
    with pytest.raises(OSError):
        store.write(SLOT_FILES[0], encode_reservation(res(4)))
    assert read_slots(store, SLOT_FILES, decode_reservation)[0] == res(2)


# ------------------------------------------------------------------------------------- reservations


def reservations(directory: Path, last: dict[str, int]) -> SeqReservations:
    """Reservations for one device "dev" whose topics stand at ``last``."""
    return SeqReservations(SeqFileStore(directory), snapshot=lambda: {"dev": dict(last)}, period_s=5.0)


async def test_clean_stop_then_exact_numbers_crash_then_a_jump_past_the_block(tmp_path: Path) -> None:
    live: dict[str, int] = {}
    first = reservations(tmp_path, live)
    assert (await first.start(used_before=False)).previous_stop is PreviousStop.NEW
    first.claim(["a/t"])
    budget = first.budget("dev")
    await budget.take(3)
    live.update({"a/t": 3})
    await first.stop()

    live.clear()
    second = reservations(tmp_path, live)
    resume = await second.start(used_before=True)
    assert resume.previous_stop is PreviousStop.CLEAN
    claimed = second.claim(["a/t", "a/new"])
    assert claimed == {"a/t": 3, "a/new": 0}
    live.update({topic: seq for topic, seq in claimed.items() if seq})  # as DeviceOutbound.restore_seq does
    budget = second.budget("dev")
    await budget.take(500)  # more than the current block: a snapshot then a reservation are written first
    live.update({"a/t": 503})
    reserve = second.reserve
    assert reserve >= 500
    # Killed here (no stop): the next run resumes past everything this block allowed.
    third = reservations(tmp_path, {})
    resume = await third.start(used_before=True)
    assert resume.previous_stop is PreviousStop.UNCLEAN
    assert third.claim(["a/t"])["a/t"] == 3 + reserve >= 503


async def test_after_a_crash_a_topic_resumes_at_its_snapshot_plus_what_its_device_could_send_since(
    tmp_path: Path,
) -> None:
    """The two-file scheme: topic seq from the (older) snapshot + (R_d - C_d at the snapshot), per device."""
    now = [1_000.0]
    live: dict[str, dict[str, int]] = {"fast": {}, "slow": {}}
    seq = SeqReservations(
        SeqFileStore(tmp_path), snapshot=lambda: {name: dict(topics) for name, topics in live.items()}, period_s=5.0,
        clock=lambda: now[0], monotonic=lambda: now[0],
    )
    await seq.start(used_before=False)
    seq.claim(["f/1", "f/2", "s/1"])
    fast, slow = seq.budget("fast"), seq.budget("slow")
    f2_at_snapshot = 0
    for _ in range(90):  # 90 s: fast sends 100 messages/s over two topics, slow one message/s
        now[0] += 1.0
        await fast.take(100)
        live["fast"]["f/1"] = live["fast"].get("f/1", 0) + 50
        live["fast"]["f/2"] = live["fast"].get("f/2", 0) + 50
        await slow.take(1)
        live["slow"]["s/1"] = live["slow"].get("s/1", 0) + 1
        if int(now[0]) % 5 == 0:
            snapshots = seq.snapshot_writes
            await seq.checkpoint()
            if seq.snapshot_writes > snapshots:
                f2_at_snapshot = live["fast"]["f/2"]
    # The first snapshot of the run went to both slots, then one periodic snapshot (every 60 s); a reservation
    # (both slots at first) at every checkpoint, and a few while the fast device's block grows to its rate.
    assert seq.snapshot_writes == 3
    assert 18 + 1 <= seq.writes <= 18 + 1 + 3
    assert 3000 < f2_at_snapshot < 4500
    after = reservations(tmp_path, {})
    await after.start(used_before=True)
    resumed = after.claim(["f/1", "f/2", "s/1"])
    # f/1 resumes after its seq at the snapshot + all its device sent since (on f/2 too) + the rest of the block.
    assert resumed["f/1"] == live["fast"]["f/1"] + (live["fast"]["f/2"] - f2_at_snapshot) + fast.left
    # The slow device's one topic jumps by the rest of its own small block only, not by the fast one's.
    assert resumed["s/1"] == live["slow"]["s/1"] + slow.left
    assert 0 < slow.left < fast.left


async def test_a_device_waits_only_when_its_budget_is_spent(tmp_path: Path) -> None:
    seq = reservations(tmp_path, {})
    await seq.start(used_before=False)
    budget = seq.budget("dev")
    await budget.take(1)
    writes = seq.writes
    for _ in range(seq.reserve - 1):
        await budget.take(1)
    assert seq.writes == writes, "no write while the budget lasts"
    await budget.take(1)
    assert seq.writes == writes + 1


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path``: a state directory that can be filled or made read-only for real."""
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is refused here ({result.stderr.decode().strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


async def test_read_only_state_directory_keeps_numbering_and_says_so_once(tmp_path: Path) -> None:
    """Read-only state directory: sources never wait, ``seq_reservation_failed`` once, restored when writable."""
    with tmpfs(tmp_path / "state", "1m") as state_dir:
        live: dict[str, int] = {}
        seq = reservations(state_dir, live)
        await seq.start(used_before=False)
        remount(state_dir, "ro")
        budget = seq.budget("dev")
        with structlog.testing.capture_logs() as logs:
            for n in range(1, 20 * seq.reserve):
                await asyncio.wait_for(budget.take(1), 5)  # never stuck on the disk
                live["a/t"] = n
            await seq.checkpoint()
            assert seq.degraded
            remount(state_dir, "rw")
            await seq.checkpoint()
        assert not seq.degraded
        events = [entry["event"] for entry in logs]
        assert events.count("seq_reservation_failed") == 1
        assert events.count("seq_reservation_restored") == 1
        # The run's first snapshot could not be written either, so no reservation was: both said once.
        assert events.count("seq_snapshot_failed") == 1
        assert events.count("seq_snapshot_restored") == 1
        after = reservations(state_dir, {})
        await after.start(used_before=True)
        assert after.claim(["a/t"])["a/t"] > live["a/t"]


async def test_full_state_directory_keeps_numbering(tmp_path: Path) -> None:
    """A full state directory (issue 10 defect 1's tmpfs): the reservation fails, sources go on."""
    with tmpfs(tmp_path / "state", "256k") as state_dir:
        seq = reservations(state_dir, {})
        await seq.start(used_before=False)
        filler = state_dir / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
                os.fsync(out.fileno())
        budget = seq.budget("dev")
        for _ in range(5 * seq.reserve):
            await asyncio.wait_for(budget.take(1), 5)
        assert seq.degraded and seq.write_failures >= 1
        filler.unlink()
        await seq.checkpoint()
        assert not seq.degraded


async def test_renewals_follow_the_checkpoints_not_the_messages(tmp_path: Path) -> None:
    """2,000 messages/s (the recipe's coater: 101 topics at 20/s) with a 5 s checkpoint: after a short warm-up
    a reservation is written at the checkpoints only, never per batch; a burst 50 times the rate costs at most
    two extra writes."""
    now = [1_000.0]
    live: dict[str, int] = {}
    seq = SeqReservations(
        SeqFileStore(tmp_path), snapshot=lambda: {"coater": dict(live)}, period_s=5.0,
        clock=lambda: now[0], monotonic=lambda: now[0],
    )
    await seq.start(used_before=False)
    budget = seq.budget("coater")
    sent = 0

    async def run_for(seconds: float, per_batch: int) -> None:
        nonlocal sent
        for step in range(int(seconds * 20)):  # a batch every 50 ms
            now[0] += 0.05
            await budget.take(per_batch)
            sent += per_batch
            live["t"] = sent
            if step % 100 == 99:  # every 5 s
                await seq.checkpoint()

    await run_for(10.0, 100)  # warm-up: the block grows to the rate
    writes = seq.writes
    await run_for(30.0, 100)
    assert seq.writes - writes == 6, "one write per checkpoint, none in between"
    writes = seq.writes
    await budget.take(5_000)  # one batch of 5,000 (a reconnect's backlog)
    assert seq.writes - writes <= 2


class CountingStore:
    """In memory, counting the slot writes."""

    def __init__(self) -> None:
        self.slots: dict[str, bytes] = {}
        self.writes: dict[str, int] = {}

    def read(self, name: str) -> bytes | None:
        return self.slots.get(name)

    def write(self, name: str, data: bytes) -> None:
        self.slots[name] = data
        self.writes[name] = self.writes.get(name, 0) + 1

    def set_aside(self, name: str, problem: str) -> None:
        self.slots.pop(name, None)


async def test_one_devices_renewal_does_not_shrink_the_others_blocks() -> None:
    """20 devices at 1,000 messages/s each (benchmarks/seq_wear.py at a smaller scale): blocks were re-sized from
    what each device sent since the previous renewal, a moment earlier, so every device's renewal shrank the
    others' blocks and each batch caused a write (about 20 a second). Now a reservation per checkpoint, after
    a warm-up, and one snapshot per SNAPSHOT_PERIOD_S."""
    now = [1_000.0]
    store = CountingStore()
    names = [f"dev{d}" for d in range(20)]
    seq = SeqReservations(
        store, snapshot=lambda: {name: {f"{name}/t": 1} for name in names}, period_s=5.0,
        clock=lambda: now[0], monotonic=lambda: now[0],
    )
    await seq.start(used_before=False)
    budgets = [seq.budget(name) for name in names]

    async def run_for(seconds: int) -> None:
        for second in range(1, seconds + 1):
            now[0] += 1.0
            for budget in budgets:
                await budget.take(1_000)
            if second % 5 == 0:
                await seq.checkpoint()

    await run_for(30)  # warm-up: the blocks grow to the rates
    writes, snapshots = seq.writes, seq.snapshot_writes
    await run_for(120)
    assert seq.writes - writes <= 24 + 2, "a reservation at each of the 24 checkpoints, hardly more"
    assert seq.snapshot_writes - snapshots == 2
    assert sum(count for name, count in store.writes.items() if name in SNAPSHOT_FILES) == seq.snapshot_writes

