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
    SLOT_FILES,
    PreviousStop,
    SeqFileStore,
    SeqReservations,
    SeqState,
    SlotCorruptError,
    decode_state,
    encode_state,
    plan_resume,
    size_reserve,
)

NOW = 1_765_000_000.0


def state(generation: int, *, clean: bool = False, last: dict[str, int] | None = None, floor: int = 0) -> SeqState:
    return SeqState(
        generation=generation, clean=clean, reserve=100, promise=400, floor=floor,
        last=last if last is not None else {"a/t": 41, "a/u": 7}, saved_at=NOW,
    )


# ------------------------------------------------------------------------------------------- format


def test_encoded_state_reads_back() -> None:
    original = state(5, clean=True)
    assert decode_state(encode_state(original)) == original


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="torn"),
        pytest.param(lambda data: data.replace(b'"a/t":41', b'"a/t":11'), id="changed-number"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: os.urandom(64), id="random-bytes"),
        pytest.param(lambda data: data.split(b"\n")[0] + b"\n", id="no-checksum"),
    ],
)
def test_a_damaged_state_is_refused(damage: object) -> None:
    data = encode_state(state(3))
    with pytest.raises(SlotCorruptError):
        decode_state(damage(data))  # type: ignore[operator]


# --------------------------------------------------------------------------------------- resume plan

MISSING = None
BAD = SlotCorruptError("checksum mismatch")


@pytest.mark.parametrize(
    ("slots", "used_before", "stop", "t_resume", "unknown_resume"),
    [
        # Never used: numbering starts at 1.
        pytest.param([MISSING, MISSING], False, PreviousStop.NEW, 0, 0, id="first-start"),
        # Clean stop: exactly the saved numbers, no gap.
        pytest.param([state(4), state(5, clean=True)], True, PreviousStop.CLEAN, 41, 0, id="clean"),
        # Crash: the newest reservation's ceilings; a topic not listed, the floor + the largest block.
        pytest.param([state(7), state(6, clean=True)], True, PreviousStop.UNCLEAN, 41, 100, id="unclean"),
        # One slot unreadable or gone: the other one + P (the lost one may have been newer).
        pytest.param([state(6), BAD], True, PreviousStop.ONE_SLOT_BAD, 441, 500, id="newest-corrupt"),
        pytest.param([MISSING, state(6, clean=True)], True, PreviousStop.ONE_SLOT_BAD, 441, 500, id="one-deleted"),
        # Nothing readable: the wall-clock floor, microseconds since the epoch.
        pytest.param([BAD, BAD], True, PreviousStop.LOST, None, int(NOW * 1e6), id="both-corrupt"),
        pytest.param([BAD, MISSING], False, PreviousStop.LOST, None, int(NOW * 1e6), id="corrupt-and-missing"),
        pytest.param([MISSING, MISSING], True, PreviousStop.LOST, None, int(NOW * 1e6), id="deleted-in-used-dir"),
    ],
)
def test_plan_resume(
    slots: list[SeqState | SlotCorruptError | None],
    used_before: bool,
    stop: PreviousStop,
    t_resume: int | None,
    unknown_resume: int,
) -> None:
    resume = plan_resume(slots, used_before=used_before, now=NOW)
    assert resume.previous_stop is stop
    assert resume.last.get("a/t", resume.floor) == (t_resume if t_resume is not None else unknown_resume)
    assert resume.floor == unknown_resume


def test_the_floor_after_a_loss_is_above_numbers_given_out_since_an_earlier_loss() -> None:
    first = plan_resume([BAD, BAD], used_before=True, now=NOW)
    # Even a topic sent a message every microsecond since then stays below the next floor.
    used_since = first.floor + 5 * 1_000_000
    assert plan_resume([BAD, BAD], used_before=True, now=NOW + 5.0).floor >= used_since
    assert plan_resume([BAD, BAD], used_before=True, now=NOW).floor < 2**53  # exact in JSON and JavaScript


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
    assert store.read() == [None, None]
    store.write(1, encode_state(state(1)))
    store.write(0, encode_state(state(2, clean=True)))
    assert store.read() == [state(2, clean=True), state(1)]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(SLOT_FILES)  # no temporary file left


def test_a_corrupt_slot_is_moved_aside_and_named_in_one_log_line(tmp_path: Path) -> None:
    store = SeqFileStore(tmp_path)
    store.write(1, encode_state(state(1)))
    (tmp_path / SLOT_FILES[0]).write_bytes(os.urandom(300))
    with structlog.testing.capture_logs() as logs:
        slots = store.read()
    assert isinstance(slots[0], SlotCorruptError)
    assert slots[1] == state(1)
    (event,) = [entry for entry in logs if entry["event"] == "seq_state_corrupt"]
    moved = Path(event["moved_to"])
    assert moved.exists() and moved.parent == tmp_path and moved.name.startswith(SLOT_FILES[0] + ".corrupt-")
    assert not (tmp_path / SLOT_FILES[0]).exists()


def test_a_failed_write_keeps_the_previous_slot(tmp_path: Path) -> None:
    store = SeqFileStore(tmp_path)
    store.write(0, encode_state(state(2)))
    (tmp_path / (SLOT_FILES[0] + ".tmp")).mkdir()  # the temporary file cannot be created
    with pytest.raises(OSError):
        store.write(0, encode_state(state(4)))
    assert store.read()[0] == state(2)


# ------------------------------------------------------------------------------------- reservations


def reservations(directory: Path, last: dict[str, int]) -> SeqReservations:
    """Reservations for one device "dev" whose topics stand at ``last``."""
    return SeqReservations(SeqFileStore(directory), snapshot=lambda: {"dev": dict(last)}, period_s=5.0)


async def test_clean_stop_then_exact_numbers_crash_then_a_jump_past_the_block(tmp_path: Path) -> None:
    live: dict[str, int] = {}
    first = reservations(tmp_path, live)
    assert (await first.start(used_before=False)).previous_stop is PreviousStop.NEW
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
    await budget.take(500)  # more than the current block: a reservation is written first
    live.update({"a/t": 503})
    reserve = second.reserve
    assert reserve >= 500
    # Killed here (no stop): the next run resumes past everything this block allowed.
    third = reservations(tmp_path, {})
    resume = await third.start(used_before=True)
    assert resume.previous_stop is PreviousStop.UNCLEAN
    assert third.claim(["a/t"])["a/t"] >= 3 + reserve >= 503


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
