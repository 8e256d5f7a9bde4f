"""The SQLite spool on a real file: order, removal, the size cap, restart, and seq checkpoints."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.schema import mark_historical
from gateway.sinks.spool import ROW_OVERHEAD_BYTES, SeqCheckpoint, Spool


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


def test_seq_checkpoint_after_a_clean_stop_continues_exactly(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10**6)
    assert spool.load_seq() == SeqCheckpoint(last_seq={}, saved_at=None, clean=True)
    spool.mark_running(now=1000.0)
    spool.save_seq({"a/t1": 41, "a/t2": 7}, now=1010.0, clean=False)
    spool.save_seq({"a/t1": 45}, now=1020.0, clean=True)
    spool.close()

    checkpoint = Spool(tmp_path / "spool.db", max_bytes=10**6).load_seq()
    assert checkpoint.clean
    assert checkpoint.last_seq == {"a/t1": 45, "a/t2": 7}
    assert checkpoint.resume_from("a/t1", now=5000.0, max_messages_per_s=100) == 45
    assert checkpoint.resume_from("never/seen", now=5000.0, max_messages_per_s=100) == 0


def test_seq_after_a_crash_skips_past_anything_the_lost_run_could_have_used(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10**6)
    spool.mark_running(now=1000.0)
    spool.save_seq({"a/t1": 41}, now=1010.0, clean=False)
    spool.close()  # no clean save: the process died

    checkpoint = Spool(tmp_path / "spool.db", max_bytes=10**6).load_seq()
    assert not checkpoint.clean
    assert checkpoint.saved_at == 1010.0
    # 12.5 s after the checkpoint at up to 2 messages/s: at most 25 numbers were used; skip past them.
    resumed = checkpoint.resume_from("a/t1", now=1022.5, max_messages_per_s=2.0)
    assert resumed >= 41 + 25
    assert resumed == 41 + 25 + 8
    # A clock that went backwards never makes the number go down.
    assert checkpoint.resume_from("a/t1", now=900.0, max_messages_per_s=2.0) >= 41


def test_mark_historical_adds_the_flag_once() -> None:
    payload = b'{"value":1.5,"unit":"V","quality":"good","ts":"2026-11-26T09:00:00.000Z","seq":3}'
    marked = mark_historical(payload)
    assert orjson.loads(marked) == {**orjson.loads(payload), "historical": True}
    assert mark_historical(marked) == marked
    assert orjson.loads(mark_historical(b"{}")) == {"historical": True}
    with pytest.raises(ValueError, match="JSON object"):
        mark_historical(b"[1]")
