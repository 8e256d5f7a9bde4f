"""The SQLite spool on a real file: order, removal, size limits, restart, damaged files, dead letters."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from gateway.cli import main as cli_main
from gateway.encoders.uns_json import mark_historical
from gateway.sinks.spool import ROW_OVERHEAD_BYTES, DeadLetter, DropReason, Spool
from gateway.state_dir import StateDirBusyError, locked_state_dir
from tests.support.tmpfs import mounted_tmpfs, remount_read_only


def message(n: int, topic: str = "a/b/t") -> tuple[str, bytes]:
    return topic, b'{"value":%6d,"seq":%6d}' % (n, n)  # fixed width: every row has the same size


def row_size(topic: str, payload: bytes) -> int:
    return len(topic) + len(payload) + ROW_OVERHEAD_BYTES


def test_messages_come_back_oldest_first_and_leave_when_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10**6)
    spool.append([message(n) for n in range(5)])
    spool.append([message(n) for n in range(5, 8)])
    rows = spool.oldest(after_id=0, limit=100)
    assert [row.payload for row in rows] == [message(n)[1] for n in range(8)]
    assert spool.count == 8
    assert spool.size_bytes == sum(row_size(*message(n)) for n in range(8))
    # A page after a cursor, as the replay reads it.
    assert [row.payload for row in spool.oldest(after_id=rows[2].id, limit=2)] == [message(3)[1], message(4)[1]]
    spool.remove([rows[0].id, rows[3].id, 10**9])  # an unknown id (dropped by the cap) is ignored
    assert [row.payload for row in spool.oldest(after_id=0, limit=100)] == [
        message(n)[1] for n in (1, 2, 4, 5, 6, 7)
    ]
    assert spool.count == 6
    assert spool.size_bytes == sum(row_size(*message(n)) for n in (1, 2, 4, 5, 6, 7))
    spool.close()


def test_the_cap_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    one = row_size(*message(0))
    spool = Spool(tmp_path / "spool.db", max_bytes=10 * one)
    assert spool.append([message(n) for n in range(10)]) == 0
    dropped = spool.append([message(n) for n in range(10, 14)])
    assert dropped == 4
    assert spool.dropped == 4
    assert spool.count == 10
    assert spool.size_bytes <= spool.max_bytes
    assert [row.payload for row in spool.oldest(after_id=0, limit=100)] == [message(n)[1] for n in range(4, 14)]
    # A single append larger than the whole cap keeps only its newest part.
    assert spool.append([message(n) for n in range(100, 130)]) == 30
    assert [row.payload for row in spool.oldest(after_id=0, limit=100)] == [message(n)[1] for n in range(120, 130)]
    spool.close()


def test_what_is_spooled_survives_a_reopen_and_ids_keep_growing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "spool.db"  # the directory is created
    spool = Spool(path, max_bytes=10**6)
    spool.append([message(n) for n in range(3)])
    last_id = spool.oldest(after_id=0, limit=10)[-1].id
    spool.remove([last_id])
    spool.close()

    again = Spool(path, max_bytes=10**6)
    assert again.count == 2
    assert again.size_bytes == sum(row_size(*message(n)) for n in range(2))
    again.append([message(9)])
    rows = again.oldest(after_id=0, limit=10)
    assert [row.payload for row in rows] == [message(0)[1], message(1)[1], message(9)[1]]
    assert rows[-1].id > last_id  # AUTOINCREMENT: a removed id is never reused, order stays by arrival
    again.close()


def test_a_spool_written_by_a_version_that_kept_seq_in_it_opens_and_keeps_its_messages(tmp_path: Path) -> None:
    """Spools written before seq moved to gateway.seq_reservation also hold ``seq`` and ``state`` tables: the
    file opens as sound (not moved aside), its messages replay, and those tables are left alone."""
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=10**6)
    spool.append([message(n) for n in range(3)])
    spool.close()
    db = sqlite3.connect(path)
    with db:
        db.execute("CREATE TABLE seq (topic TEXT PRIMARY KEY, last INTEGER NOT NULL) WITHOUT ROWID")
        db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID")
        db.execute("INSERT INTO seq VALUES ('a/b/t', 41)")
        db.execute("INSERT INTO state VALUES ('clean_stop', 0.0)")
    db.close()

    again = Spool(path, max_bytes=10**6)
    assert again.moved_aside is None
    assert [row.payload for row in again.oldest(after_id=0, limit=10)] == [message(n)[1] for n in range(3)]
    again.append([message(3)])
    assert again.count == 4
    again.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT topic, last FROM seq").fetchall() == [("a/b/t", 41)]
    db.close()


def test_mark_historical_adds_the_flag_once() -> None:
    payload = b'{"value":1.5,"unit":"V","quality":"good","ts":"2026-11-26T09:00:00.000Z","seq":3}'
    marked = mark_historical(payload)
    assert orjson.loads(marked) == {**orjson.loads(payload), "historical": True}
    assert mark_historical(marked) == marked
    assert orjson.loads(mark_historical(b"{}")) == {"historical": True}
    with pytest.raises(ValueError, match="JSON object"):
        mark_historical(b"[1]")


# --------------------------------------------------------------------------------- size limits


def test_min_free_mb_stops_the_file_growing_and_drops_the_oldest_instead(tmp_path: Path) -> None:
    """Issue 10 defect 1: the cap can be "leave min_free_mb free" as well as "at most max_mb"."""
    spool = Spool(tmp_path / "spool.db", max_bytes=10**9)
    spool.append([message(n) for n in range(2000)])
    spool.close()
    size_before = (tmp_path / "spool.db").stat().st_size
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    # Ask for more free space than the file system has: the spool may only reuse the pages it already has.
    spool = Spool(tmp_path / "spool.db", max_bytes=10**9, min_free_bytes=free + 10**9)
    assert spool.append([message(n) for n in range(2000, 2500)]) == 500
    assert spool.dropped_by_reason == {DropReason.MIN_FREE_MB: 500}
    assert spool.last_drop_reason is DropReason.MIN_FREE_MB
    assert spool.count == 2000
    rows = spool.oldest(after_id=0, limit=10**6)
    assert rows[0].payload == message(500)[1] and rows[-1].payload == message(2499)[1]  # the newest kept
    spool.close()
    assert (tmp_path / "spool.db").stat().st_size <= size_before + 16 * 4096


def test_max_mb_is_named_as_the_reason_when_it_is_the_limit_reached(tmp_path: Path) -> None:
    one = row_size(*message(0))
    spool = Spool(tmp_path / "spool.db", max_bytes=10 * one, min_free_bytes=1)
    spool.append([message(n) for n in range(12)])
    assert spool.dropped_by_reason == {DropReason.MAX_MB: 2}
    spool.close()


# ------------------------------------------------------------------------------- damaged files


def healthy_spool(path: Path, messages: int) -> None:
    spool = Spool(path, max_bytes=10**9)
    spool.append([message(n) for n in range(messages)])
    spool.close()  # the last connection checkpoints the WAL into the file


def smash_page(path: Path, page: int) -> None:
    data = bytearray(path.read_bytes())
    data[page * 4096 : (page + 1) * 4096] = random.Random(page).randbytes(4096)
    path.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "random bytes": lambda path: path.write_bytes(random.Random(1).randbytes(64 * 1024)),
    "truncated file": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2 + 100]),
    "smashed page": lambda path: smash_page(path, 20),
    "smashed header": lambda path: path.write_bytes(b"\xff" * 100 + path.read_bytes()[100:]),
    "zero-byte file": lambda path: path.write_bytes(b""),
}


@pytest.mark.parametrize("salvage", ["sqlite3 .recover", "row by row"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_spool_is_moved_aside_salvaged_and_replaced(
    tmp_path: Path, damage: str, salvage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 defect 4 (corrupt spool.db: random bytes, truncated, a smashed page, zero bytes): the file is
    moved aside as spool.db.corrupt-<UTC time>, what reads is salvaged, a fresh spool works, never an error."""
    if salvage == "row by row":
        monkeypatch.setenv("PATH", "")  # no sqlite3 program: the spool reads what it can itself
    elif shutil.which("sqlite3") is None:
        pytest.skip("the sqlite3 program is not installed")
    path = tmp_path / "spool.db"
    healthy_spool(path, 3000)
    original = path.read_bytes()
    DAMAGE[damage](path)
    Path(f"{path}-wal").write_bytes(b"stale wal")  # moved aside with the file, never applied to the fresh one

    spool = Spool(path, max_bytes=10**9)
    moved = spool.moved_aside
    assert moved is not None
    assert moved.path.parent == tmp_path and moved.path.name.startswith("spool.db.corrupt-")
    assert moved.path.read_bytes() != original and moved.path.exists()
    assert Path(f"{moved.path}-wal").read_bytes() == b"stale wal"
    assert moved.damage
    # Salvaged rows are the original messages, in their order; the rest of the corpus may lose them all.
    salvaged = [row.payload for row in spool.oldest(after_id=0, limit=10**6)]
    assert moved.salvaged == len(salvaged) == spool.count
    wanted = [message(n)[1] for n in range(3000)]
    assert salvaged == [payload for payload in wanted if payload in set(salvaged)]
    if damage == "smashed page":
        assert 2000 < len(salvaged) < 3000, "one page lost, the rest salvaged"
    if damage in ("truncated file", "smashed header"):
        assert len(salvaged) > 1000, "the whole leaf pages still in the file are salvaged"
    spool.append([message(9999)])
    assert spool.oldest(after_id=0, limit=10**6)[-1].payload == message(9999)[1]
    spool.close()
    again = Spool(path, max_bytes=10**9)
    assert again.moved_aside is None and again.count == len(salvaged) + 1
    again.close()


def test_a_sound_spool_is_not_moved_aside(tmp_path: Path) -> None:
    healthy_spool(tmp_path / "spool.db", 10)
    spool = Spool(tmp_path / "spool.db", max_bytes=10**9)
    assert spool.moved_aside is None and spool.count == 10
    spool.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "corrupt" in p.name) == []


# -------------------------------------------------------------------------------- dead letters


def test_refused_messages_become_dead_letters_and_can_be_requeued(tmp_path: Path) -> None:
    """Issue 10 defect 7, storage side: a refused replay moves from message to dead_letter (not just deleted),
    a refused live message is added; counted by reason; requeue puts them back at the end for replay."""
    spool = Spool(tmp_path / "spool.db", max_bytes=10**6)
    spool.append([message(n) for n in range(5)])
    rows = spool.oldest(after_id=0, limit=10)
    spool.settle(
        [rows[0].id],
        [
            DeadLetter(rows[1].topic, rows[1].payload, "not_authorized", rows[1].id),
            DeadLetter("a/b/big", b'{"value":1}', "packet_too_large"),
        ],
        now=1234.5,
    )
    assert [row.payload for row in spool.oldest(after_id=0, limit=10)] == [message(n)[1] for n in (2, 3, 4)]
    assert spool.count == 3
    assert spool.dead_letter_counts() == {"not_authorized": 1, "packet_too_large": 1}

    assert spool.requeue_dead_letters("not_authorized") == 1
    assert spool.dead_letter_counts() == {"packet_too_large": 1}
    assert [row.payload for row in spool.oldest(after_id=0, limit=10)] == [message(n)[1] for n in (2, 3, 4, 1)]
    assert spool.requeue_dead_letters() == 1
    assert spool.dead_letter_counts() == {}
    assert spool.oldest(after_id=0, limit=10)[-1].topic == "a/b/big"
    assert spool.count == 5
    assert spool.size_bytes == sum(row_size(r.topic, r.payload) for r in spool.oldest(after_id=0, limit=10))
    spool.close()


def test_the_dead_letter_table_is_capped_oldest_dropped_and_counted(tmp_path: Path) -> None:
    one = row_size(*message(0))
    spool = Spool(tmp_path / "spool.db", max_bytes=10**6, dead_letter_max_bytes=3 * one)
    for n in range(5):
        spool.settle([], [DeadLetter(*message(n), reason="not_authorized")], now=float(n))
    assert spool.dead_letter_counts() == {"not_authorized": 3}
    assert spool.dead_letters_dropped == 2
    spool.requeue_dead_letters()
    assert [row.payload for row in spool.oldest(after_id=0, limit=10)] == [message(n)[1] for n in (2, 3, 4)]
    spool.close()


# ---------------------------------------------------------------------------------- commands


def test_cellgate_spool_dead_letters_and_requeue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 10 defect 7: `cellgate spool dead-letters` counts by reason, `cellgate spool requeue [--reason R]`
    moves them back for replay, and refuses (exit 2) while a gateway holds the state directory."""
    state = tmp_path / "state"
    spool = Spool(state / "spool.db", max_bytes=10**6)
    spool.settle(
        [],
        [DeadLetter(*message(1), reason="not_authorized"), DeadLetter(*message(2), reason="not_authorized"),
         DeadLetter(*message(3), reason="packet_too_large")],
        now=1.0,
    )
    spool.close()

    assert cli_main(["spool", "dead-letters", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "not_authorized\t2" in out and "packet_too_large\t1" in out and "3 dead letter(s)" in out

    with locked_state_dir(state):  # what a running gateway holds
        assert cli_main(["spool", "requeue", "--state-dir", str(state)]) == 2
        err = capsys.readouterr().err
        assert f"in use by cellgate pid {os.getpid()}" in err and "stop it before" in err
        # Reading is safe while a gateway runs.
        assert cli_main(["spool", "dead-letters", "--state-dir", str(state)]) == 0
        assert "not_authorized\t2" in capsys.readouterr().out

    assert cli_main(["spool", "requeue", "--reason", "not_authorized", "--state-dir", str(state)]) == 0
    assert "2 dead letter(s) of reason not_authorized requeued" in capsys.readouterr().out
    assert cli_main(["spool", "dead-letters", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    assert "packet_too_large\t1" in out and "not_authorized" not in out
    spool = Spool(state / "spool.db", max_bytes=10**6)
    assert [row.payload for row in spool.oldest(after_id=0, limit=10)] == [message(1)[1], message(2)[1]]
    spool.close()


def test_the_state_directory_lock_works_on_a_read_only_directory(tmp_path: Path) -> None:
    """Issue 10 defect 1: the lock is flock on the directory itself, so a read-only state directory (no lock
    file can be written) still keeps a second gateway out; the missing pid file is reported, not fatal."""
    state = tmp_path / "state"
    with mounted_tmpfs(state, size="1m"):
        remount_read_only(state)
        with locked_state_dir(state) as lock:
            assert lock.locked and not lock.pid_written and lock.problem is not None
            with pytest.raises(StateDirBusyError, match="in use by another process"), locked_state_dir(
                state
            ):
                pass
        with locked_state_dir(state) as again:  # released at the end of the block
            assert again.locked


def test_a_full_disk_drops_the_oldest_keeps_the_newest_and_deletes_and_checkpoints_still_work(tmp_path: Path) -> None:
    """Issue 10 defect 1 (spool on a 2 MB tmpfs): once the disk is full every append still succeeds by dropping
    the oldest (reason disk_full), replayed rows can be deleted, and the file reopens."""
    with mounted_tmpfs(tmp_path / "disk", size="2m") as disk:
        spool = Spool(disk / "spool.db", max_bytes=10**9)
        padded = [(f"a/b/t{n % 50}", b'{"value":%8d,"pad":"%s"}' % (n, b"x" * 60)) for n in range(40_000)]
        for start in range(0, len(padded), 100):
            spool.append(padded[start : start + 100])  # never raises: the oldest make room
        assert spool.dropped_by_reason.get(DropReason.DISK_FULL, 0) > 0
        assert spool.count + spool.dropped == len(padded)
        rows = spool.oldest(after_id=0, limit=10**6)
        assert rows[-1].payload == padded[-1][1]  # the newest is kept
        assert [row.payload for row in rows] == [payload for _, payload in padded[-len(rows) :]]
        spool.remove([row.id for row in rows[:2500]])  # one replay flush
        spool.remove([row.id for row in rows[2500:]])  # everything at once: done in small transactions
        assert spool.count == 0
        spool.append(padded[:100])
        spool.close()
        again = Spool(disk / "spool.db", max_bytes=10**9)
        assert again.moved_aside is None and again.count == 100
        again.close()


def test_salvage_from_pages_never_brings_back_delivered_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 10 defect 4 (truncated spool.db): rows read straight from the file's pages come only from live
    pages; the freelist's stale copies of delivered (deleted) messages are skipped."""
    monkeypatch.setenv("PATH", "")  # the spool's own salvage, not the sqlite3 program's
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=10**9)
    spool.append([message(n) for n in range(3000)])
    spool.remove([row.id for row in spool.oldest(after_id=0, limit=2000)])  # delivered
    spool.close()
    path.write_bytes(path.read_bytes()[:-4096])  # the last page lost: SQLite can no longer walk the table
    again = Spool(path, max_bytes=10**9)
    salvaged = [row.payload for row in again.oldest(after_id=0, limit=10**6)]
    again.close()
    assert salvaged, "rows on the intact pages are salvaged"
    remaining = [message(n)[1] for n in range(2000, 3000)]
    assert salvaged == [payload for payload in remaining if payload in set(salvaged)]
