"""SQLite store-and-forward spool: messages the broker could not take, and dead letters.

One database file in the state directory, WAL journal. Tables:

* ``message``: (id, topic, payload, size, priority) in arrival order. ``id`` is an AUTOINCREMENT key, so it
  keeps growing across restarts and "oldest first" is ``ORDER BY id``. Payloads are stored exactly as they are
  to be replayed (already marked ``"historical": true`` by the caller). ``priority`` 1 marks event records
  (``append_record``): the size limits drop every plain message (0) before the oldest record. Files from
  earlier versions get the column (0) when opened.
* ``dead_letter``: (id, topic, payload, reason, ts, size): messages the broker refused for good (not
  authorised, too large). Kept for ``cellgate spool requeue`` once the broker's policy is fixed, capped by
  ``dead_letter_max_bytes`` (oldest dropped).

``seq`` numbers are not kept here (see ``gateway.seq_reservation``). Files written by earlier versions also
hold ``seq`` and ``state`` tables: they open as usual and those tables are left alone, unread.

Size limits, whichever is reached first (the oldest rows are deleted and counted by reason):

* ``max_mb``: ``max_bytes`` bounds the sum of topic + payload + a per-row overhead.
* ``min_free_mb``: the file system keeps ``min_free_bytes`` free (``os.statvfs``). Deleted rows leave
  free pages in the file that later rows reuse, so the limit is "what is stored + the file's free pages +
  the room above ``min_free_bytes``".
* ``disk_full``: a write that fails with SQLITE_FULL. The spool keeps a reserve file (``spool.db.reserve``,
  ``RESERVE_BYTES``) next to the database; on a full disk it deletes the reserve, which gives SQLite room to
  checkpoint its WAL and delete the oldest rows, and from then on new rows only reuse the pages the
  deleted ones freed (the file stops growing) until the file system has room again. Files are created with
  ``auto_vacuum=INCREMENTAL``, so the freed pages of a reserve's worth of rows are handed back to the file
  system; the WAL grows back into that room, and the reserve is re-created once there is room for it twice
  over. A small WAL auto-checkpoint keeps the WAL, which SQLite reuses in place after each checkpoint, small.
  Deleting many rows on a full disk is done in small transactions, the WAL emptied between them.

Opening checks the file (``PRAGMA quick_check``). A damaged file (not a database, truncated, a smashed
page, zero bytes) is moved aside as ``spool.db.corrupt-<UTC time>`` with its -wal/-shm, what still reads
is salvaged into a fresh file (with the ``sqlite3`` program's ``.recover`` when it is installed, else row by
row, else from the table leaf pages still whole in the file).

This class is synchronous and not thread-safe by itself: the store-and-forward stage calls it from one
worker thread (``gateway.sinks.store_forward``), so the event loop never waits on the disk.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from gateway.errors import SinkError

RECORD_PRIORITY = 1
"""``message.priority`` of an event record: kept by the size limits while plain messages (0) can go instead."""
ROW_OVERHEAD_BYTES = 48
"""Counted per message on top of topic and payload: SQLite's row header, key and index share."""
RESERVE_BYTES = 1 << 20
"""Size of the reserve file given up when the disk is full, so deletes and checkpoints can still be written."""
WAL_AUTOCHECKPOINT_PAGES = 64
"""WAL pages before SQLite checkpoints (its default is 1000, 4 MB): keeps the WAL far below the reserve."""
RECOVER_TIMEOUT_S = 120.0
"""Most time ``sqlite3 .recover`` may take on a damaged spool before salvaging row by row instead."""
SETTLE_CHUNK_ON_FULL_DISK = 200
"""Rows deleted per transaction when the disk is full (each transaction's WAL must fit in what is free)."""
SALVAGE_PROBE_IDS = 2000
"""After an unreadable stretch of a damaged file, how many ids further the row-by-row salvage looks."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dead_letter (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    reason TEXT NOT NULL,
    ts REAL NOT NULL,
    size INTEGER NOT NULL
);
"""

_SQLITE_HEADER = b"SQLite format 3\x00"
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


class DropReason(StrEnum):
    """Why spooled messages were deleted before being replayed."""

    MAX_MB = "max_mb"
    MIN_FREE_MB = "min_free_mb"
    DISK_FULL = "disk_full"


class SpoolFullError(SinkError):
    """The disk is full even after the oldest rows were deleted: the messages of this append are lost."""


@dataclass(frozen=True, slots=True)
class SpooledMessage:
    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the broker refused; ``spool_id`` is its row in ``message`` when it was a replay."""

    topic: str
    payload: bytes
    reason: str
    spool_id: int | None = None


@dataclass(frozen=True, slots=True)
class MovedAside:
    """A damaged spool file found at open: where it went, why, and how many messages were salvaged."""

    path: Path
    damage: str
    salvaged: int


class Spool:
    """The spool database; see the module docstring for the limits and what opening a damaged file does.

    ``max_bytes``: cap on stored messages. ``min_free_bytes``: free space to leave on the file system
    (0: no such limit). ``dead_letter_max_bytes``: cap on the dead-letter table. ``reserve_bytes``: the
    reserve file given up on a full disk (0: none). Raises SinkError when the file cannot be opened at all.
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        min_free_bytes: int = 0,
        dead_letter_max_bytes: int = 16_000_000,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        if max_bytes < 1 or dead_letter_max_bytes < 1 or min_free_bytes < 0 or reserve_bytes < 0:
            raise ValueError("need max_bytes >= 1, dead_letter_max_bytes >= 1, min_free_bytes >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.reserve_bytes = reserve_bytes
        """Size of the reserve file: ``reserve_bytes``, at most an eighth of the file system (a tiny disk)."""
        self._reserve_path = path.with_name(path.name + ".reserve")
        self.moved_aside: MovedAside | None = None
        """Set when the file was damaged at open (see the module docstring)."""
        self.dropped_by_reason: dict[DropReason, int] = {}
        """Messages deleted by a size limit since this spool was opened, by limit."""
        self.last_drop_reason: DropReason | None = None
        self.dead_letters_dropped = 0
        """Dead letters deleted by ``dead_letter_max_bytes`` since this spool was opened."""
        self._disk_cap: int | None = None  # set after SQLITE_FULL: the stored bytes that fit on the disk
        self._last_id = 0  # id of the last row appended
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            damage = _damage(path)
            moved = _move_aside(path) if damage is not None else None
            self._db = _connect(path)
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM message").fetchone()
            dead = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM dead_letter").fetchone()
        except (sqlite3.Error, OSError) as exc:
            hint = "" if os.access(path.parent, os.W_OK) else f" ({path.parent} is not writable)"
            raise SinkError(f"cannot open the spool {path}: {exc}{hint}") from exc
        self._count: int = row[0]
        self._bytes: int = row[1]
        self._dead_bytes: int = dead[0]
        with contextlib.suppress(OSError):
            stat = os.statvfs(path.parent)
            self.reserve_bytes = min(reserve_bytes, stat.f_blocks * stat.f_frsize // 8)
        if moved is not None and damage is not None:
            self.moved_aside = MovedAside(moved, damage, self._salvage(moved))
        self._keep_reserve()

    # ------------------------------------------------------------------------------- messages

    @property
    def count(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def dropped(self) -> int:
        """Messages deleted by any size limit since this spool was opened."""
        return sum(self.dropped_by_reason.values())

    def append_record(self, topic: str, payload: bytes) -> int:
        """Store one event record (priority 1: dropped by a size limit only once no plain message is left);
        returns its id."""
        self.append([(topic, payload)], priority=RECORD_PRIORITY)
        return self._last_id

    def append(self, messages: Sequence[tuple[str, bytes]], *, priority: int = 0) -> int:
        """Store ``messages`` after every earlier one; returns how many old ones a size limit dropped.

        ``last_drop_reason`` names the limit. On SQLITE_FULL the reserve is given up, the oldest rows make
        room and the append is tried once more; SpoolFullError if even that fails.
        """
        if not messages:
            return 0
        rows = [
            (topic, payload, len(topic) + len(payload) + ROW_OVERHEAD_BYTES, priority) for topic, payload in messages
        ]
        incoming = sum(row[2] for row in rows)
        try:
            return self._append(rows, incoming)
        except SinkError as exc:
            if not _is_disk_full(exc):
                raise
        self._make_room_on_full_disk(incoming)
        try:
            return self._append(rows, incoming)
        except SinkError as exc:
            if _is_disk_full(exc):
                raise SpoolFullError(f"the disk of the spool {self.path} is full: {exc}") from exc
            raise

    def _append(self, rows: list[tuple[str, bytes, int, int]], incoming: int) -> int:
        limit, reason = self._limit()
        with self._transaction():
            # Room first, so that a full disk's new rows reuse the pages the deleted ones free (plain messages only:
            # a record must not make room for new plain messages that the check below would drop anyway).
            dropped = self._delete_oldest(self._bytes + incoming - limit, records_too=False)
            self._db.executemany("INSERT INTO message (topic, payload, size, priority) VALUES (?, ?, ?, ?)", rows)
            self._last_id = int(self._db.execute("SELECT last_insert_rowid()").fetchone()[0])
            self._count += len(rows)
            self._bytes += incoming
            dropped += self._delete_oldest(self._bytes - limit)  # a batch larger than the whole limit
        if dropped:
            self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + dropped
            self.last_drop_reason = reason
        return dropped

    def _limit(self) -> tuple[int, DropReason]:
        """The stored bytes allowed now, and which limit that is."""
        limit, reason = self.max_bytes, DropReason.MAX_MB
        if self._disk_cap is None and not self.min_free_bytes:
            return limit, reason
        free = _free_bytes(self.path.parent)
        if self._disk_cap is not None:
            if free is not None and free > self.min_free_bytes + 2 * self.reserve_bytes:
                self._disk_cap = None  # the file system has room again
                self._keep_reserve()
            elif self._disk_cap < limit:
                limit, reason = self._disk_cap, DropReason.DISK_FULL
        if self.min_free_bytes and free is not None:
            # Below min_free the file stops growing; its own pages stay usable (dropping rows frees no disk).
            room = self._bytes + self._free_page_bytes() + max(0, free - self.min_free_bytes)
            if room < limit:
                limit, reason = max(0, room), DropReason.MIN_FREE_MB
        return limit, reason

    def _make_room_on_full_disk(self, incoming: int) -> None:
        """SQLITE_FULL: give up the reserve, delete the oldest rows, hand their pages back, re-make the reserve.

        From then on (``_disk_cap``) new rows only replace the oldest ones, so the file stops growing.
        """
        with contextlib.suppress(OSError):
            self._reserve_path.unlink()
        self._checkpoint()
        # Room for this append and as much again, plus the reserve's worth to give back to the file system.
        target = max(0, self._bytes - 2 * incoming - self.reserve_bytes)
        try:
            with self._transaction():
                dropped = self._delete_oldest(self._bytes - target)
        except SinkError:
            dropped = 0
        if dropped:
            self.dropped_by_reason[DropReason.DISK_FULL] = self.dropped_by_reason.get(DropReason.DISK_FULL, 0) + dropped
            self.last_drop_reason = DropReason.DISK_FULL
        self._checkpoint()
        self._give_back_pages(self.reserve_bytes)
        # The WAL grows back into the room made here; the reserve returns once there is room for both.
        self._disk_cap = self._bytes + 2 * incoming

    def _checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it to zero bytes (frees its space on a full disk)."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _give_back_pages(self, nbytes: int) -> None:
        """Shrink the file by up to ``nbytes`` of its free pages (files created with auto_vacuum=INCREMENTAL)."""
        with contextlib.suppress(sqlite3.Error):
            size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            self._db.execute(f"PRAGMA incremental_vacuum({max(1, nbytes // size)})").fetchall()
        self._checkpoint()

    def _keep_reserve(self) -> None:
        """Create the reserve file when it is missing and there is room for it twice over (else go without)."""
        if not self.reserve_bytes or self._reserve_path.exists():
            return
        free = _free_bytes(self.path.parent)
        if free is None or free < self.min_free_bytes + 2 * self.reserve_bytes:
            return
        try:
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError:
            with contextlib.suppress(OSError):
                self._reserve_path.unlink()

    def _free_page_bytes(self) -> int:
        try:
            pages = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error:
            return 0
        return int(pages) * int(size)

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
        self.settle(ids, (), now=0.0)

    def settle(self, delivered: Iterable[int], refused: Sequence[DeadLetter], *, now: float) -> None:
        """In one transaction: delete ``delivered`` rows, and keep ``refused`` as dead letters.

        A refused replay (``spool_id`` set) leaves ``message`` for ``dead_letter``; a refused live message
        is added. The oldest dead letters past ``dead_letter_max_bytes`` are dropped and counted.
        ``now``: wall-clock seconds, stored as the dead letters' ``ts``. On a full disk the reserve is given
        up and the work is done in small transactions, the WAL emptied between them.
        """
        id_list = list(delivered) + [letter.spool_id for letter in refused if letter.spool_id is not None]
        if not id_list and not refused:
            return
        try:
            self._settle(id_list, refused, now)
            return
        except SinkError as exc:
            if not _is_disk_full(exc):
                raise
        with contextlib.suppress(OSError):
            self._reserve_path.unlink()
        self._checkpoint()
        for start in range(0, len(id_list), SETTLE_CHUNK_ON_FULL_DISK):
            self._settle(id_list[start : start + SETTLE_CHUNK_ON_FULL_DISK], (), now)
            self._checkpoint()
        self._settle([], refused, now)
        self._give_back_pages(self.reserve_bytes)

    def _settle(self, id_list: Sequence[int], refused: Sequence[DeadLetter], now: float) -> None:
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
            if refused:
                letters = [
                    (letter.topic, letter.payload, letter.reason, now, _row_size(letter.topic, letter.payload))
                    for letter in refused
                ]
                self._db.executemany(
                    "INSERT INTO dead_letter (topic, payload, reason, ts, size) VALUES (?, ?, ?, ?, ?)", letters
                )
                self._dead_bytes += sum(letter[4] for letter in letters)
                self.dead_letters_dropped += self._cap_dead_letters()

    def _delete_oldest(self, excess: int, *, records_too: bool = True) -> int:
        """Delete the oldest messages until ``excess`` bytes are gone (or none is left); returns how many.
        Plain messages go first, event records (priority 1) only once no plain message is left."""
        dropped = 0
        for priority in (0, RECORD_PRIORITY) if records_too else (0,):
            if excess <= 0:
                break
            deleted, freed = self._delete_oldest_of(priority, excess)
            dropped += deleted
            excess -= freed
        return dropped

    def _delete_oldest_of(self, priority: int, excess: int) -> tuple[int, int]:
        """``_delete_oldest`` within one priority: (messages deleted, bytes freed)."""
        dropped = 0
        total_freed = 0
        while excess > 0 and self._count:
            rows = self._db.execute(
                "SELECT id, size FROM message WHERE priority = ? ORDER BY id LIMIT 1000", (priority,)
            ).fetchall()
            if not rows:
                break
            freed = 0
            last_id = rows[0][0]
            taken = 0
            for row_id, size in rows:
                last_id = row_id
                freed += size
                taken += 1
                if freed >= excess:
                    break
            self._db.execute("DELETE FROM message WHERE priority = ? AND id <= ?", (priority, last_id))
            self._count -= taken
            self._bytes -= freed
            excess -= freed
            total_freed += freed
            dropped += taken
        return dropped, total_freed

    # ---------------------------------------------------------------------------- dead letters

    def _cap_dead_letters(self) -> int:
        dropped = 0
        while self._dead_bytes > self.dead_letter_max_bytes:
            row = self._db.execute("SELECT id, size FROM dead_letter ORDER BY id LIMIT 1").fetchone()
            if row is None:
                self._dead_bytes = 0
                break
            self._db.execute("DELETE FROM dead_letter WHERE id = ?", (row[0],))
            self._dead_bytes -= row[1]
            dropped += 1
        return dropped

    def dead_letter_counts(self) -> dict[str, int]:
        """How many dead letters are kept, by reason."""
        try:
            return dict(self._db.execute("SELECT reason, COUNT(*) FROM dead_letter GROUP BY reason").fetchall())
        except sqlite3.Error as exc:
            raise SinkError(f"cannot read the spool {self.path}: {exc}") from exc

    def requeue_dead_letters(self, reason: str | None = None) -> int:
        """Move dead letters (of ``reason``, or all) back to the end of ``message`` for replay; returns how many.

        The size cap applies as to any append (the oldest messages are dropped past it).
        """
        where, args = ("WHERE reason = ?", (reason,)) if reason is not None else ("", ())
        with self._transaction():
            moved = self._db.execute(
                f"INSERT INTO message (topic, payload, size) SELECT topic, payload, size FROM dead_letter {where} "
                "ORDER BY id",
                args,
            ).rowcount
            row = self._db.execute(f"SELECT COALESCE(SUM(size), 0) FROM dead_letter {where}", args).fetchone()
            self._db.execute(f"DELETE FROM dead_letter {where}", args)
            self._count += moved
            self._bytes += row[0]
            self._dead_bytes -= row[0]
            dropped = self._delete_oldest(self._bytes - self.max_bytes)
        if dropped:
            self.dropped_by_reason[DropReason.MAX_MB] = self.dropped_by_reason.get(DropReason.MAX_MB, 0) + dropped
        return int(moved)

    # ------------------------------------------------------------------------------ salvage

    def _salvage(self, damaged: Path) -> int:
        """Copy what still reads from the moved-aside file into this fresh spool; returns messages saved.

        Tried in turn until one yields messages: SQLite's own recovery (the ``sqlite3`` program), SQL reads
        row by row, then a scan of the file's table leaf pages (what survives a truncation). Rows are
        streamed in, never all held in memory.
        """
        # An empty file holds nothing to salvage, and SQLite opening it would delete the WAL kept beside it.
        empty = damaged.stat().st_size == 0
        recovered = None if empty else _recover_with_cli(damaged)
        sources = ([recovered] if recovered is not None else []) + ([] if empty else [damaged])
        readers = [functools.partial(_sql_rows, source) for source in sources]
        if not empty:
            readers.append(functools.partial(_leaf_page_rows, damaged))
        try:
            for read in readers:
                if self._insert_salvaged(read()):
                    break
        finally:
            if recovered is not None:
                _remove_with_journals(recovered)
        return self._count

    def _insert_salvaged(self, rows: Iterator[tuple[str, bytes]]) -> int:
        """Append ``rows`` in chunks under the size cap; returns how many were read."""
        total = 0
        while chunk := [(t, p, _row_size(t, p)) for t, p in itertools.islice(rows, 500)]:
            total += len(chunk)
            try:
                with self._transaction():
                    self._db.executemany("INSERT INTO message (topic, payload, size) VALUES (?, ?, ?)", chunk)
                    self._count += len(chunk)
                    self._bytes += sum(row[2] for row in chunk)
                    self._delete_oldest(self._bytes - self.max_bytes)
            except SinkError:
                break  # e.g. a full disk: keep what is in
        return total

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
            dead = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM dead_letter").fetchone()
        except sqlite3.Error:
            return
        self._count, self._bytes, self._dead_bytes = row[0], row[1], dead[0]


def read_dead_letter_counts(path: Path) -> dict[str, int]:
    """Dead letters by reason in the spool file at ``path``, read-only (safe while a gateway runs); {} if none."""
    if not path.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        try:
            return dict(db.execute("SELECT reason, COUNT(*) FROM dead_letter GROUP BY reason").fetchall())
        finally:
            db.close()
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return {}  # written by a version without dead letters
        raise SinkError(f"cannot read the spool {path}: {exc}") from exc


def _row_size(topic: str, payload: bytes) -> int:
    return len(topic) + len(payload) + ROW_OVERHEAD_BYTES


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per call.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # Set before the first table exists (a no-op on older files): lets a full disk get pages back.
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a committed write survives a process crash; a power loss can lose the
        # last transactions (documented in the README).
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        db.execute("PRAGMA journal_size_limit=67108864")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(message)")}
        if "priority" not in columns:  # a file written before event records
            db.execute("ALTER TABLE message ADD COLUMN priority INTEGER NOT NULL DEFAULT 0")
    except sqlite3.Error:
        db.close()
        raise
    return db


def _damage(path: Path) -> str | None:
    """What is wrong with the spool file at ``path`` (None: missing or sound).

    Only damage is reported; a file that cannot be opened for other reasons (permissions, a read-only or
    full disk) raises, so it is never moved aside for that. The check only reads: a damaged file and its WAL
    are kept as they were, for forensics.
    """
    try:
        with path.open("rb") as file:
            header = file.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return None
    if not header:
        # The spool always writes its schema at once: an empty file lost everything it had.
        return "empty file"
    if header != _SQLITE_HEADER:
        return "not an SQLite database (bad header)"
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        if exc.sqlite_errorcode in _CORRUPT_CODES:
            return str(exc)
        raise
    try:
        rows = db.execute("PRAGMA quick_check").fetchall()
        db.execute("SELECT COUNT(*), SUM(size) FROM message").fetchone()
    except sqlite3.Error as exc:
        if exc.sqlite_errorcode in _CORRUPT_CODES or "malformed" in str(exc):
            return str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "no such" in str(exc):
            return f"not a spool: {exc}"
        raise
    finally:
        db.close()
    if rows != [("ok",)]:
        return "; ".join(str(row[0]) for row in rows[:3])
    return None


def _move_aside(path: Path) -> Path:
    """Rename ``path`` and its -wal/-shm to ``<name>.corrupt-<UTC time>``; returns the new database path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, Path(f"{target}{suffix}"))
    return target


def _remove_with_journals(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(OSError):
            Path(f"{path}{suffix}").unlink()


def _recover_with_cli(damaged: Path) -> Path | None:
    """``sqlite3 -readonly damaged .recover | sqlite3 scratch``: a scratch database next to it with what SQLite's
    recovery finds; None without the program or when it fails. Piped, so a large file never sits in memory."""
    program = shutil.which("sqlite3")
    if program is None:
        return None
    scratch = damaged.with_name(damaged.name + ".recovered")
    _remove_with_journals(scratch)
    try:
        with subprocess.Popen(
            [program, "-readonly", str(damaged), ".recover"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        ) as dump:
            # check=False: a load that stops at an error still holds what was recovered before it.
            subprocess.run(
                [program, str(scratch)], stdin=dump.stdout, capture_output=True, timeout=RECOVER_TIMEOUT_S, check=False
            )
            dump.wait(timeout=RECOVER_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        _remove_with_journals(scratch)
        return None
    return scratch if scratch.exists() else None


def _sql_rows(source: Path) -> Iterator[tuple[str, bytes]]:
    """The messages (oldest first) that SQLite can still read from ``source``; damage is skipped."""
    try:
        db = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return
    try:
        yield from _readable_messages(db)
    finally:
        db.close()


def _readable_messages(db: sqlite3.Connection) -> Iterator[tuple[str, bytes]]:
    """Rows of ``message`` in id order, chunk by chunk; past an unreadable stretch, probe the next ids one by one."""
    after = 0
    while True:
        try:
            rows = db.execute(
                "SELECT id, topic, payload FROM message WHERE id > ? ORDER BY id LIMIT 500", (after,)
            ).fetchall()
        except sqlite3.Error:
            rows = None
        if rows == []:
            return
        if rows is not None:
            for row_id, topic, payload in rows:
                if isinstance(topic, str) and isinstance(payload, bytes):
                    yield topic, payload
                after = row_id
            continue
        found = False
        for candidate in range(after + 1, after + 1 + SALVAGE_PROBE_IDS):
            try:
                row = db.execute("SELECT topic, payload FROM message WHERE id = ?", (candidate,)).fetchone()
            except sqlite3.Error:
                continue
            after = candidate
            if row is not None and isinstance(row[0], str) and isinstance(row[1], bytes):
                found = True
                yield row[0], row[1]
                break
        if not found:
            return


def _leaf_page_rows(source: Path) -> Iterator[tuple[str, bytes]]:
    """Messages read straight from the table leaf pages of ``source``, by rowid, for a file SQLite cannot walk.

    A truncated file loses the b-tree's upper pages, but its leaf pages still hold whole rows. A cell counts
    only when it decodes as a ``message`` row (NULL id, text topic, blob payload, and the integer ``size``
    this module computes from them), which rules out other tables and garbage. Pages on the freelist (whose
    stale rows were delivered) are skipped when the header still names them. File format:
    https://www.sqlite.org/fileformat2.html (sections 1.3, 1.6, 2.1).
    """
    try:
        file = source.open("rb")
    except OSError:
        return
    with file:
        header = file.read(100)
        page_size = 4096
        if header.startswith(_SQLITE_HEADER) and len(header) == 100:
            raw = int.from_bytes(header[16:18], "big")
            page_size = 65536 if raw == 1 else raw if raw >= 512 and raw & (raw - 1) == 0 else 4096
        usable = page_size - (header[20] if len(header) == 100 else 0)
        skip = _freelist_pages(file, header, page_size)
        rows: list[tuple[int, str, bytes]] = []
        file.seek(0)
        number = 0
        while page := file.read(page_size):
            number += 1
            if number not in skip and len(page) == page_size:
                rows.extend(_leaf_cells(page, 100 if number == 1 else 0, usable))
    seen: set[int] = set()
    for rowid, topic, payload in sorted(rows, key=lambda row: row[0]):
        if rowid not in seen:
            seen.add(rowid)
            yield topic, payload


def _freelist_pages(file: BinaryIO, header: bytes, page_size: int) -> set[int]:
    """Page numbers of the freelist (trunk and leaf pages), as far as the header and the trunks still read."""
    pages: set[int] = set()
    if not header.startswith(_SQLITE_HEADER) or len(header) < 40:
        return pages
    trunk = int.from_bytes(header[32:36], "big")
    while trunk and trunk not in pages and len(pages) < 1 << 24:
        pages.add(trunk)
        file.seek((trunk - 1) * page_size)
        data = file.read(page_size)
        if len(data) < 8:
            break
        count = min(int.from_bytes(data[4:8], "big"), (len(data) - 8) // 4)
        pages.update(int.from_bytes(data[8 + 4 * i : 12 + 4 * i], "big") for i in range(count))
        trunk = int.from_bytes(data[0:4], "big")
    return pages


def _leaf_cells(page: bytes, offset: int, usable: int) -> Iterator[tuple[int, str, bytes]]:
    """The ``message`` rows (rowid, topic, payload) in one page, if it is a table leaf page (type 13)."""
    if page[offset] != 0x0D:
        return
    cells = int.from_bytes(page[offset + 3 : offset + 5], "big")
    max_local = usable - 35  # larger payloads continue on overflow pages: not salvaged
    for index in range(min(cells, (len(page) - offset - 8) // 2)):
        at = offset + 8 + 2 * index
        pointer = int.from_bytes(page[at : at + 2], "big")
        try:
            size, pos = _varint(page, pointer)
            rowid, pos = _varint(page, pos)
            if size > max_local or pos + size > len(page):
                continue
            row = _message_record(page[pos : pos + size])
        except IndexError:
            continue
        if row is not None:
            yield rowid, row[0], row[1]


def _message_record(record: bytes) -> tuple[str, bytes] | None:
    """(topic, payload) when ``record`` is a ``message`` row whose ``size`` column matches them."""
    header_size, pos = _varint(record, 0)
    types: list[int] = []
    while pos < header_size and len(types) < 6:
        serial, pos = _varint(record, pos)
        types.append(serial)
    if len(types) == 5 and types[4] in _INT_SIZES:  # with the priority column (read as a plain message)
        types = types[:4]
    if len(types) != 4 or types[0] != 0 or types[1] < 13 or types[1] % 2 != 1 or types[2] < 12 or types[2] % 2:
        return None
    if types[3] not in _INT_SIZES:
        return None
    topic_len, payload_len = (types[1] - 13) // 2, (types[2] - 12) // 2
    body = header_size
    topic_raw = record[body : body + topic_len]
    payload = record[body + topic_len : body + topic_len + payload_len]
    size_raw = record[body + topic_len + payload_len : body + topic_len + payload_len + _INT_SIZES[types[3]]]
    if len(size_raw) != _INT_SIZES[types[3]]:
        return None
    size = {8: 0, 9: 1}.get(types[3], int.from_bytes(size_raw, "big", signed=True))
    try:
        topic = topic_raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not topic or size != _row_size(topic, payload):
        return None
    return topic, payload


_INT_SIZES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8, 8: 0, 9: 0}
"""Bytes of an integer per SQLite record serial type."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """SQLite's big-endian varint at ``pos``: (value, position after it). IndexError past the end."""
    value = 0
    for index in range(9):
        byte = data[pos + index]
        if index == 8:
            return (value << 8) | byte, pos + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + index + 1
    raise AssertionError("unreachable")


def _free_bytes(directory: Path) -> int | None:
    try:
        stat = os.statvfs(directory)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _is_disk_full(error: BaseException) -> bool:
    cause = error.__cause__
    if isinstance(cause, sqlite3.Error):
        return cause.sqlite_errorcode == sqlite3.SQLITE_FULL or "disk is full" in str(cause)
    return isinstance(cause, OSError) and cause.errno == 28  # ENOSPC


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
