"""Event records in the spool: the size limits drop every plain message before a record; old files gain the column."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.sinks.spool import ROW_OVERHEAD_BYTES, Spool


def message(n: int, topic: str = "a/b/t") -> tuple[str, bytes]:
    return topic, b'{"value":%6d,"seq":%6d}' % (n, n)  # fixed width: every row has the same size


ONE = len("a/b/t") + len(message(0)[1]) + ROW_OVERHEAD_BYTES


def payloads(spool: Spool) -> list[bytes]:
    return [row.payload for row in spool.oldest(after_id=0, limit=1000)]


def test_the_cap_drops_plain_messages_before_records_even_newer_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10 * ONE)
    first = spool.append_record(*message(1000))  # the oldest row of all
    spool.append([message(n) for n in range(5)])
    second = spool.append_record(*message(1001))
    assert second > first
    dropped = spool.append([message(n) for n in range(5, 12)])  # 14 rows for a cap of 10
    assert dropped == 4
    kept = [message(1000)[1], message(4)[1], message(1001)[1], *(message(n)[1] for n in range(5, 12))]
    assert payloads(spool) == kept
    spool.append_record(*message(1002))
    assert spool.count == 10
    assert message(1000)[1] in payloads(spool)
    # A batch as large as the cap: the plain rows go (the oldest of the batch too), the three records stay.
    spool.append([message(n) for n in range(20, 30)])
    assert payloads(spool) == [message(1000)[1], message(1001)[1], message(1002)[1],
                               *(message(n)[1] for n in range(23, 30))]  # fmt: skip
    assert spool.count == 10 and spool.size_bytes <= spool.max_bytes
    # Nothing but records: the oldest record goes.
    for n in range(1003, 1011):
        spool.append_record(*message(n))
    assert payloads(spool) == [message(n)[1] for n in range(1001, 1011)]
    spool.close()


def test_records_replay_in_arrival_order_with_the_messages(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10**6)
    spool.append([message(1)])
    record_id = spool.append_record(*message(2))
    spool.append([message(3)])
    rows = spool.oldest(after_id=0, limit=10)
    assert [row.payload for row in rows] == [message(n)[1] for n in (1, 2, 3)]
    assert rows[1].id == record_id
    spool.remove([record_id])
    assert payloads(spool) == [message(1)[1], message(3)[1]]
    spool.close()


def test_a_spool_written_before_records_opens_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE message (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,"
        " size INTEGER NOT NULL);"
    )
    old.execute("INSERT INTO message (topic, payload, size) VALUES (?, ?, ?)", (*message(1), ONE))
    old.commit()
    old.close()
    spool = Spool(path, max_bytes=3 * ONE)
    assert spool.count == 1
    spool.append_record(*message(2))
    spool.append([message(3), message(4)])  # over the cap: the old plain row goes, the record stays
    assert payloads(spool) == [message(2)[1], message(3)[1], message(4)[1]]
    spool.close()
