"""SQLite store-and-forward spool: messages the broker could not take, and the last ``seq`` per topic.

One database file in the state directory, WAL journal. Two tables:

* ``message``: (id, topic, payload, size) in arrival order. ``id`` is an AUTOINCREMENT key, so it keeps
  growing across restarts and "oldest first" is ``ORDER BY id``. Payloads are stored exactly as they are
  to be replayed (already marked ``"historical": true`` by the caller).
* ``seq``: the last ``seq`` handed out per topic, written as a checkpoint every few seconds and exactly
  at a clean stop, plus a ``state`` row saying when the checkpoint was taken and whether the stop was
  clean; see :class:`SeqCheckpoint` for how a run after a crash continues without reusing a number.

Size cap: ``max_bytes`` bounds the sum of topic + payload + a per-row overhead. Past it the oldest rows
are deleted and counted. The file itself reuses freed pages, so it stays near the cap as well.

This class is synchronous and not thread-safe by itself: the store-and-forward stage calls it from one
worker thread (``gateway.sinks.store_forward``), so the event loop never waits on the disk.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import SinkError

ROW_OVERHEAD_BYTES = 48
"""Counted per message on top of topic and payload: SQLite's row header, key and index share."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seq (
    topic TEXT PRIMARY KEY,
    last INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value REAL NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SeqCheckpoint:
    """The last ``seq`` per topic as saved by an earlier run.

    ``clean`` is True when that run stopped normally and saved its exact numbers. After a crash the
    numbers are from the last periodic checkpoint (``saved_at``, wall-clock seconds) and the run went on
    counting afterwards; :meth:`resume_from` skips far enough ahead that no number is used twice.
    """

    last_seq: Mapping[str, int]
    saved_at: float | None
    clean: bool

    def resume_from(self, topic: str, *, now: float, max_messages_per_s: float) -> int:
        """The last seq to continue after for ``topic`` (0 for a topic never seen).

        After a crash: the saved number plus the most messages the topic could have had between the
        checkpoint and ``now`` (``max_messages_per_s`` per second), plus a margin of 8. The subscriber sees
        a gap, which is honest: messages of that window may have been lost with the process.
        """
        last = self.last_seq.get(topic, 0)
        if self.clean or self.saved_at is None:
            return last
        elapsed_s = max(0.0, now - self.saved_at)
        return last + math.ceil(elapsed_s * max_messages_per_s) + 8


class Spool:
    """The spool database. ``max_bytes`` caps the stored messages (see the module docstring)."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        self.path = path
        self.max_bytes = max_bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per call.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a committed write survives a process crash; a power loss can lose the
            # last transactions (documented in the README).
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA journal_size_limit=67108864")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM message").fetchone()
        except sqlite3.Error as exc:
            raise SinkError(f"cannot open the spool {path}: {exc}") from exc
        self._count: int = row[0]
        self._bytes: int = row[1]
        self.dropped = 0
        """Messages deleted by the size cap since this spool was opened."""

    # ------------------------------------------------------------------------------- messages

    @property
    def count(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def append(self, messages: Sequence[tuple[str, bytes]]) -> int:
        """Store ``messages`` after every earlier one; returns how many old ones the cap dropped."""
        if not messages:
            return 0
        rows = [(topic, payload, len(topic) + len(payload) + ROW_OVERHEAD_BYTES) for topic, payload in messages]
        with self._transaction():
            self._db.executemany("INSERT INTO message (topic, payload, size) VALUES (?, ?, ?)", rows)
            self._count += len(rows)
            self._bytes += sum(row[2] for row in rows)
            dropped = self._enforce_cap()
        self.dropped += dropped
        return dropped

    def oldest(self, *, after_id: int, limit: int) -> list[SpooledMessage]:
        """Up to ``limit`` messages with id > ``after_id``, oldest first."""
        try:
            cursor = self._db.execute(
                "SELECT id, topic, payload FROM message WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
            )
            return [SpooledMessage(row[0], row[1], bytes(row[2])) for row in cursor]
        except sqlite3.Error as exc:
            raise SinkError(f"cannot read the spool {self.path}: {exc}") from exc

    def remove(self, ids: Iterable[int]) -> None:
        """Delete delivered messages; ids already gone (e.g. dropped by the cap) are ignored."""
        id_list = list(ids)
        if not id_list:
            return
        with self._transaction():
            for start in range(0, len(id_list), 500):
                chunk = id_list[start : start + 500]
                marks = ",".join("?" * len(chunk))
                row = self._db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM message WHERE id IN ({marks})", chunk
                ).fetchone()
                self._db.execute(f"DELETE FROM message WHERE id IN ({marks})", chunk)
                self._count -= row[0]
                self._bytes -= row[1]

    def _enforce_cap(self) -> int:
        dropped = 0
        while self._bytes > self.max_bytes and self._count:
            excess = self._bytes - self.max_bytes
            rows = self._db.execute("SELECT id, size FROM message ORDER BY id LIMIT 1000").fetchall()
            freed = 0
            last_id = rows[0][0]
            taken = 0
            for row_id, size in rows:
                last_id = row_id
                freed += size
                taken += 1
                if freed >= excess:
                    break
            self._db.execute("DELETE FROM message WHERE id <= ?", (last_id,))
            self._count -= taken
            self._bytes -= freed
            dropped += taken
        return dropped

    # ------------------------------------------------------------------------------------ seq

    def save_seq(self, last_seq: Mapping[str, int], *, now: float, clean: bool) -> None:
        """Checkpoint the last seq per topic; ``clean`` only at a normal stop, after the last message."""
        with self._transaction():
            self._db.executemany(
                "INSERT INTO seq (topic, last) VALUES (?, ?) ON CONFLICT(topic) DO UPDATE SET last = excluded.last",
                last_seq.items(),
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                [("seq_saved_at", now), ("clean_stop", 1.0 if clean else 0.0)],
            )

    def load_seq(self) -> SeqCheckpoint:
        try:
            last_seq = dict(self._db.execute("SELECT topic, last FROM seq").fetchall())
            state = dict(self._db.execute("SELECT key, value FROM state").fetchall())
        except sqlite3.Error as exc:
            raise SinkError(f"cannot read the spool {self.path}: {exc}") from exc
        return SeqCheckpoint(
            last_seq=last_seq,
            saved_at=state.get("seq_saved_at"),
            clean=state.get("clean_stop", 1.0) == 1.0,
        )

    def mark_running(self, *, now: float) -> None:
        """Record that a run started: until its clean stop, the saved seq values are only a checkpoint."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                [("clean_stop", 0.0), ("started_at", now)],
            )

    # ------------------------------------------------------------------------------ plumbing

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self.path, on_rollback=self._recount)

    def _recount(self) -> None:
        # The running totals were updated inside a transaction that did not commit.
        try:
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM message").fetchone()
        except sqlite3.Error:
            return
        self._count, self._bytes = row[0], row[1]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error; SQLite errors become SinkError."""

    def __init__(self, db: sqlite3.Connection, path: Path, *, on_rollback: Callable[[], None]) -> None:
        self._db = db
        self._path = path
        self._on_rollback = on_rollback

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise SinkError(f"cannot write the spool {self._path}: {exc}") from exc

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        try:
            if exc_type is None:
                self._db.execute("COMMIT")
                return
            self._db.execute("ROLLBACK")
        except sqlite3.Error as error:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._on_rollback()
            raise SinkError(f"cannot write the spool {self._path}: {error}") from error
        self._on_rollback()
        if isinstance(exc, sqlite3.Error):
            raise SinkError(f"cannot write the spool {self._path}: {exc}") from exc
