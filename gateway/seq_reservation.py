"""Durable ``seq`` reservations: after a crash no topic ever carries the same ``seq`` on two messages.

The scheme (what the property test in ``tests/unit/test_seq_reservation_property.py`` checks):

* A topic's ``seq`` grows by one per message on it, so it grows at most by the number of messages its device
  sent. Each device d counts the messages it sent in this run: C_d (:class:`SeqBudget`, monotonic in a run).
* A reservation (a small file: a ceiling R_d per device) is durable before a device sends past its last
  ceiling. Each renewal gives a device a block sized from its own rate so that it lasts about two
  checkpoint periods; renewals come with every checkpoint (``period_s``), so a device normally never waits
  for one. This is the frequent write, a few bytes per device.
* A snapshot (the large file: every topic's ``seq`` and each device's C_d at that moment) is written rarely
  (every ``SNAPSHOT_PERIOD_S``), and also before the first reservation of a run, after a reload (a topic may
  have moved to another device: no renewal until the snapshot of the new mapping is written) and exactly at
  a clean stop (``clean``: the next run continues without a gap).
* After a crash a topic of device d resumes after ``seq_at_snapshot + (R_d - C_d_at_snapshot)``: it cannot
  have advanced further than its device sent. A topic the snapshot does not list resumes after ``floor`` plus
  the largest such advance. The subscriber sees a gap (what its device sent since the snapshot, on other
  topics too, plus the rest of its block), never a reused number.
* Counters of two runs cannot be compared, so every file names its ``run``: a reservation of an older run
  than the snapshot means the snapshot's run sent nothing (R_d = C_d); one of a newer run, or an unclean
  snapshot without any readable reservation, counts as a lost state (below).
* Each kind has two slots (A and B) that take turns, each with a generation number and a checksum, written
  atomically (temp file, fsync, rename, directory fsync); the first reservation and the first snapshot of a
  run go to both slots. If a reservation slot is unreadable the other still bounds what was sent: each
  reservation records ``promise`` (P), a bound every block of the next reservation keeps to, so R_d + P of
  the remaining slot is safe whether the lost one was older or newer. If a snapshot slot is unreadable the
  other may be older than a reload that moved topics between devices: every topic then resumes after its
  ``seq`` plus the sum of all devices' advances.
* With no readable snapshot (or none at all in a state directory used before) the numbers resume at a
  wall-clock floor, microseconds since the epoch. That is above every number used before as long as the
  wall clock is not behind where it was at an earlier such loss and no topic averaged more than a million
  messages a second (about 1.8e15 in 2026, below 2**53 until the year 2255). Logged as ``seq_state_lost``.
* A full state disk does not stop the writes: :class:`SeqFileStore` keeps a reserve file (``seq.reserve``,
  ``SEQ_RESERVE_MIN_BYTES`` or twice the largest slot written) and gives it up when a write finds the disk
  full. A slot is replaced by a file of about its own size, so once the reserve is gone the writes go on in
  the room each replaced slot leaves; after each write the reserve is made again, with what room there is when
  there is not enough for all of it, so that another writer on the full disk (the spool) cannot take that room.
* If the state directory cannot be written (read-only, full) the gateway keeps running: the reservation
  is applied in memory, ``seq_reservation_failed`` is logged once per episode and the write is retried
  at the next checkpoint (``seq_snapshot_failed`` likewise for a snapshot; while the snapshot a start or a
  reload needs is not written, no reservation is). During such an episode a crash can make numbers repeat.

Pure core: :class:`SeqSnapshot`, :class:`SeqReservation`, their ``encode_*``/``decode_*``, :func:`plan_resume`,
:func:`size_reserve`. Shell: :class:`SeqFileStore` (files) and :class:`SeqReservations` (budgets, renewals,
snapshots, the clean stop), which the runtime drives: ``start`` before any device, ``claim`` a device's
topics, ``budget(device).take(n)`` before numbering, ``checkpoint`` every ``period_s``, ``remember`` +
``invalidate`` around a reload, ``stop`` after the last message.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import math
import os
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import orjson
import structlog

log = structlog.get_logger("cellgate.seq")

STATE_FORMAT = 2
"""Format 1 (per-topic ceilings rewritten at every checkpoint) reads as corrupt: a lost state, safe."""
SLOT_FILES = ("seq.a.json", "seq.b.json")
"""Reservation slots: slot ``generation % 2`` holds a reservation of that generation."""
SNAPSHOT_FILES = ("seq-snapshot.a.json", "seq-snapshot.b.json")
"""Snapshot slots, likewise."""
SNAPSHOT_PERIOD_S = 60.0
"""How often the per-topic snapshot is written while running: the large write (flash wear) against the gap a
crash leaves (what a device sent since the snapshot)."""
SNAPSHOT_COMPRESSION = 1
"""zlib level of the snapshot: the fastest; higher levels save little more on topic names."""
MIN_RESERVE = 64
"""The smallest block: also the smallest jump a topic's ``seq`` makes after a crash."""
RESERVE_PERIODS = 2.0
"""A block covers this many checkpoint periods at the rate seen since the last reservation."""
PROMISE_FACTOR = 4
"""A reservation promises that the next block is at most this many times what it asked for."""
SEQ_RESERVE_FILE = "seq.reserve"
"""Given up when a slot write finds the disk full, so the seq state is still written on a full state disk."""
SEQ_RESERVE_MIN_BYTES = 64 * 1024
"""Smallest reserve; it grows to twice the largest slot written (a snapshot of a large tag map)."""
WALL_CLOCK_FLOOR_PER_S = 1_000_000
"""The floor after a lost state: microseconds since the epoch."""

_T = TypeVar("_T")


class PreviousStop(enum.StrEnum):
    """How the previous run ended, as far as the seq state tells (``previous_stop`` of ``gateway_starting``)."""

    NEW = "new"
    """No seq state and a state directory never used: numbering starts at 1."""
    CLEAN = "clean"
    UNCLEAN = "unclean"
    ONE_SLOT_BAD = "unclean_one_slot_bad"
    """A slot was unreadable or missing: resumed from the other one with the extra margin."""
    LOST = "lost"
    """No usable seq state in a used state directory: resumed at the wall-clock floor."""


@dataclass(frozen=True, slots=True)
class DeviceSeq:
    """One device in a snapshot: its counter C_d and the last seq of each of its topics."""

    count: int
    seq: Mapping[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class SeqSnapshot:
    """Every topic's seq at one moment (exact when ``clean``), with each device's counter."""

    generation: int
    run: int
    clean: bool
    floor: int
    """Where a topic not listed stood when the run started."""
    promise: int
    """The promise in force when it was taken (the margin for a lost first reservation of its run)."""
    known: Mapping[str, int]
    """Topics no device numbered (resume points not claimed, topics of removed devices)."""
    devices: Mapping[str, DeviceSeq]
    saved_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SeqReservation:
    """One reservation: no device d sends past ``ceilings[d]`` messages in ``run`` until a newer one is durable."""

    generation: int
    run: int
    promise: int
    """No block of the next reservation is larger (see the module docstring)."""
    ceilings: Mapping[str, int]
    saved_at: float


class SlotCorruptError(Exception):
    """A slot file that exists but cannot be read or trusted."""


def _seal(body: bytes) -> bytes:
    return body + b"\n" + hashlib.blake2b(body, digest_size=16).hexdigest().encode() + b"\n"


def _unseal(data: bytes, kind: str, *, compressed: bool = False) -> dict[str, object]:
    body, sep, rest = data.rstrip(b"\n").rpartition(b"\n")  # the checksum line is hex: the last newline ends the body
    if not sep or hashlib.blake2b(body, digest_size=16).hexdigest().encode() != rest:
        raise SlotCorruptError("checksum mismatch (torn or damaged file)")
    try:
        raw = orjson.loads(zlib.decompress(body) if compressed else body)
    except (orjson.JSONDecodeError, zlib.error) as exc:
        raise SlotCorruptError(f"malformed state: {exc!r}") from exc
    if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT or raw.get("kind") != kind:
        raise SlotCorruptError(f"not a {kind} of format {STATE_FORMAT}")
    return raw


def encode_snapshot(snapshot: SeqSnapshot) -> bytes:
    """The file content: the JSON body compressed (zlib level 1: topic names repeat, about 17 times smaller at
    100,000 topics for about 12 ms), a newline, then the body's BLAKE2b-128 checksum line."""
    return _seal(
        zlib.compress(orjson.dumps(
            {
                "format": STATE_FORMAT,
                "kind": "snapshot",
                "generation": snapshot.generation,
                "run": snapshot.run,
                "clean": snapshot.clean,
                "floor": snapshot.floor,
                "promise": snapshot.promise,
                "saved_at": snapshot.saved_at,
                "known": dict(snapshot.known),
                "devices": {
                    name: {"count": device.count, "seq": dict(device.seq)} for name, device in snapshot.devices.items()
                },
            }
        ), SNAPSHOT_COMPRESSION)
    )


def decode_snapshot(data: bytes) -> SeqSnapshot:
    """The snapshot in ``data``; raises :class:`SlotCorruptError` if it is torn, damaged or not ours."""
    raw = _unseal(data, "snapshot", compressed=True)
    try:
        known, devices = raw["known"], raw["devices"]
        return SeqSnapshot(
            generation=_count(raw["generation"]),
            run=_count(raw["run"]),
            clean=bool(raw["clean"]),
            floor=_count(raw["floor"]),
            promise=_count(raw["promise"]),
            saved_at=_seconds(raw["saved_at"]),
            known=_counts(known),
            devices={
                str(name): DeviceSeq(_count(_mapping(device)["count"]), _counts(_mapping(device)["seq"]))
                for name, device in _mapping(devices).items()
            },
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SlotCorruptError(f"malformed state: {exc!r}") from exc


def encode_reservation(reservation: SeqReservation) -> bytes:
    """The file content: a JSON body line, then its BLAKE2b-128 checksum line."""
    return _seal(
        orjson.dumps(
            {
                "format": STATE_FORMAT,
                "kind": "reservation",
                "generation": reservation.generation,
                "run": reservation.run,
                "promise": reservation.promise,
                "saved_at": reservation.saved_at,
                "ceilings": dict(reservation.ceilings),
            }
        )
    )


def decode_reservation(data: bytes) -> SeqReservation:
    raw = _unseal(data, "reservation")
    try:
        return SeqReservation(
            generation=_count(raw["generation"]),
            run=_count(raw["run"]),
            promise=_count(raw["promise"]),
            saved_at=_seconds(raw["saved_at"]),
            ceilings=_counts(raw["ceilings"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SlotCorruptError(f"malformed state: {exc!r}") from exc


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


def _seconds(value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    return float(value)


def _mapping(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise TypeError(f"not a mapping: {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def _counts(value: object) -> dict[str, int]:
    return {key: _count(count) for key, count in _mapping(value).items()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Where this run continues: ``last`` per known topic, ``floor`` for the others."""

    previous_stop: PreviousStop
    last: dict[str, int]
    floor: int
    promise: int
    run: int
    """The highest run read (0 if none): this run's number is above it."""
    snapshot_generation: int
    reservation_generation: int
    """The highest generations read (0 if none): this run writes from the next ones on."""


def plan_resume(
    snapshots: Sequence[SeqSnapshot | SlotCorruptError | None],
    reservations: Sequence[SeqReservation | SlotCorruptError | None],
    *,
    used_before: bool,
    now: float,
) -> Resume:
    """Where to continue, from the slots of both kinds (``None`` = missing, :class:`SlotCorruptError` = unreadable).

    ``used_before``: the state directory held a run before (missing slots then mean a lost state, not a
    first start). ``now`` is wall-clock seconds, for the floor of a lost state.
    """
    snaps = sorted((slot for slot in snapshots if isinstance(slot, SeqSnapshot)), key=lambda s: s.generation)
    reserved = sorted((slot for slot in reservations if isinstance(slot, SeqReservation)), key=lambda r: r.generation)
    run = max([s.run for s in snaps] + [r.run for r in reserved], default=0)
    generations = {
        "snapshot_generation": max((s.generation for s in snaps), default=0),
        "reservation_generation": max((r.generation for r in reserved), default=0),
    }

    def fresh(previous_stop: PreviousStop, floor: int) -> Resume:
        return Resume(previous_stop=previous_stop, last={}, floor=floor, promise=MIN_RESERVE * PROMISE_FACTOR,
                      run=run, **generations)

    lost = fresh(PreviousStop.LOST, int(now * WALL_CLOCK_FLOOR_PER_S))
    if not snaps:
        nothing = all(slot is None for slot in (*snapshots, *reservations))
        return fresh(PreviousStop.NEW, 0) if nothing and not used_before else lost
    newest = snaps[-1]
    snapshot_bad = len(snapshots) - len(snaps)
    if newest.clean and not snapshot_bad:
        last = dict(newest.known)
        for device in newest.devices.values():
            for topic, seq in device.seq.items():
                last[topic] = max(seq, last.get(topic, 0))
        return Resume(previous_stop=PreviousStop.CLEAN, last=last, floor=newest.floor, promise=newest.promise,
                      run=run, **generations)
    if not reserved or any(r.run > newest.run for r in reserved):
        return lost  # what was sent after this snapshot cannot be bounded
    reservation_bad = len(reservations) - len(reserved)
    this_run = [r for r in reserved if r.run == newest.run]
    promise = max([newest.promise, *(r.promise for r in this_run)])
    ceilings = this_run[-1].ceilings if this_run else None
    advance: dict[str, int] = {}
    for name in {*newest.devices, *(ceilings or {})}:
        count = newest.devices[name].count if name in newest.devices else 0
        ceiling = ceilings.get(name, 0) if ceilings is not None else count
        if reservation_bad:
            ceiling += promise  # the lost slot may have been newer: its blocks kept to this promise
        advance[name] = max(ceiling - count, 0)
    everyone = sum(advance.values())
    if snapshot_bad:
        # The other snapshot may have been newer, after a reload moved topics: bound by all devices together.
        last = {topic: seq + everyone for topic, seq in newest.known.items()}
        unlisted = everyone
    else:
        last = dict(newest.known)  # numbered by no device: they did not move
        unlisted = max(advance.values(), default=0)
    for name, device in newest.devices.items():
        step = everyone if snapshot_bad else advance[name]
        for topic, seq in device.seq.items():
            last[topic] = max(seq + step, last.get(topic, 0))
    previous_stop = PreviousStop.ONE_SLOT_BAD if snapshot_bad or reservation_bad else PreviousStop.UNCLEAN
    return Resume(previous_stop=previous_stop, last=last, floor=newest.floor + unlisted, promise=promise,
                  run=run, **generations)


def size_reserve(*, used: int, elapsed_s: float, period_s: float, need: int) -> int:
    """The block wanted for a device: ``RESERVE_PERIODS`` checkpoint periods at its rate.

    ``used`` messages were sent by the device in ``elapsed_s`` since the last reservation; ``need`` is
    what it must send at once (it is waiting).
    """
    rate = used / max(elapsed_s, 1.0)
    return max(MIN_RESERVE, need, math.ceil(rate * period_s * RESERVE_PERIODS))


# --------------------------------------------------------------------------------------------- shell


class SeqStore(Protocol):
    """Where the slots live: :class:`SeqFileStore`, or the in-memory one of the property test."""

    def read(self, name: str) -> bytes | None:
        """The slot's content, None when it does not exist; raises OSError when it cannot be read."""
        ...

    def write(self, name: str, data: bytes) -> None:
        """Replace the slot atomically and durably; raises OSError."""
        ...

    def set_aside(self, name: str, problem: str) -> None:
        """A slot that cannot be trusted: keep it for forensics where it is no longer read, and say so."""
        ...


class SeqFileStore:
    """The slot files in ``directory``; a slot that cannot be trusted is moved aside (kept, logged).

    Keeps the reserve file ``SEQ_RESERVE_FILE`` (see the module docstring); ``reserve_min_bytes`` 0: none.
    Writes may come from two worker threads at once (a reservation and a snapshot): a lock orders them.
    """

    def __init__(self, directory: Path, *, reserve_min_bytes: int = SEQ_RESERVE_MIN_BYTES) -> None:
        self.directory = directory
        self._reserve_path = directory / SEQ_RESERVE_FILE
        self._reserve_min_bytes = reserve_min_bytes
        self._reserve_bytes = reserve_min_bytes
        self._lock = threading.Lock()
        self.reserve_used = 0
        """How often a write found the disk full and went ahead in the reserve's room."""

    def read(self, name: str) -> bytes | None:
        try:
            return (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None

    def set_aside(self, name: str, problem: str) -> None:
        path = self.directory / name
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        try:
            path.rename(aside)
        except OSError as error:
            log.error("seq_state_corrupt", path=str(path), error=problem, moved_to=None, move_error=str(error))
        else:
            log.error("seq_state_corrupt", path=str(path), error=problem, moved_to=str(aside))

    def write(self, name: str, data: bytes) -> None:
        """Replace slot ``name`` atomically and durably: temp file, fsync, rename, directory fsync. On a full
        disk the reserve is given up and the write tried once more."""
        with self._lock:
            try:
                self._replace(name, data)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not self._give_up_reserve():
                    raise
                self._replace(name, data)
                self.reserve_used += 1
            self._keep_reserve(len(data))

    def _give_up_reserve(self) -> bool:
        """Delete the reserve file; False when there was none."""
        try:
            self._reserve_path.unlink()
        except OSError:
            return False
        return True

    def _keep_reserve(self, written: int) -> None:
        """Make the reserve (again), at least twice ``written``, where there is room; else go without for now."""
        if not self._reserve_min_bytes:
            return
        self._reserve_bytes = max(self._reserve_bytes, 2 * written)
        try:
            if self._reserve_path.stat().st_size >= self._reserve_bytes:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            fd = os.open(self._reserve_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            return
        try:
            try:
                os.posix_fallocate(fd, 0, self._reserve_bytes)
            except OSError:
                # No room for all of it (yet): keep the room there is, down to what one write of this slot needs,
                # so that nothing else on the disk (the spool, logs) takes it before the next write; the full size
                # is tried again at the next write.
                room = self._free_bytes()
                if room >= written:
                    with contextlib.suppress(OSError):
                        os.posix_fallocate(fd, 0, room)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            if self._reserve_path.stat().st_size == 0:
                self._reserve_path.unlink()

    def _free_bytes(self) -> int:
        """Bytes this process may still write on the state directory's file system, whole blocks only."""
        try:
            stats = os.statvfs(self.directory)
        except OSError:
            return 0
        return stats.f_bavail * stats.f_frsize

    def _replace(self, name: str, data: bytes) -> None:
        path = self.directory / name
        temp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise


def read_slots(
    store: SeqStore, names: Sequence[str], decode: Callable[[bytes], _T]
) -> list[_T | SlotCorruptError | None]:
    """Each slot of ``names`` decoded; one that cannot be read or trusted is set aside (logged) and comes
    back as :class:`SlotCorruptError`."""
    slots: list[_T | SlotCorruptError | None] = []
    for name in names:
        try:
            data = store.read(name)
        except OSError as exc:
            log.error("seq_state_unreadable", slot=name, error=str(exc))
            slots.append(SlotCorruptError(str(exc)))
            continue
        if data is None:
            slots.append(None)
            continue
        try:
            slots.append(decode(data))
        except SlotCorruptError as exc:
            store.set_aside(name, str(exc))
            slots.append(exc)
    return slots


class SeqBudget:
    """How many more messages one device may send before the next reservation must be durable.

    The hot path, once per emitted batch: ``await budget.take(n)`` before numbering at most ``n``
    messages, then ``budget.left += n - sent`` for what was not sent. Between awaits, ``ceiling - left`` is
    the device's counter C_d: the messages it sent in this run.
    """

    __slots__ = ("_renew", "ceiling", "device", "left", "measured_at", "measured_count", "reserve")

    def __init__(self, device: str, renew: Callable[[SeqBudget, int], Awaitable[None]]) -> None:
        self.device = device
        self.left = 0
        self.ceiling = 0
        """C_d may reach this (at most the last durable reservation's R_d)."""
        self.measured_at: float | None = None
        self.measured_count = 0
        """The device's rate is ``count - measured_count`` since ``measured_at`` (a window of one checkpoint
        period or more: a renewal another device caused a moment ago says nothing about this one's rate)."""
        self.reserve = 0
        """This device's block in the last reservation."""
        self._renew = renew

    @property
    def count(self) -> int:
        """C_d: the messages this device sent in this run."""
        return self.ceiling - self.left

    async def take(self, need: int) -> None:
        while self.left < need:
            await self._renew(self, need)
        self.left -= need


async def _to_thread(call: Callable[[], _T]) -> _T:
    return await asyncio.to_thread(call)


class SeqReservations:
    """Owns the seq state of one run: resume points, per-device budgets, renewals, snapshots and the clean stop.

    ``snapshot`` returns, per device, the last seq handed out per topic (``DeviceOutbound.seq_snapshot``).
    ``run_io`` runs a blocking store call off the event loop.
    """

    def __init__(
        self,
        store: SeqStore,
        *,
        snapshot: Callable[[], Mapping[str, Mapping[str, int]]],
        period_s: float,
        snapshot_period_s: float = SNAPSHOT_PERIOD_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        run_io: Callable[[Callable[[], None]], Awaitable[None]] = _to_thread,
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._period_s = period_s
        self._snapshot_period_s = snapshot_period_s
        self._clock = clock
        self._monotonic = monotonic
        self._run_io = run_io
        self._lock = asyncio.Lock()
        """Held by a reservation (and the clean stop); a snapshot the reservation needs is taken inside it."""
        self._snapshot_lock = asyncio.Lock()
        self._budgets: dict[str, SeqBudget] = {}
        self._known: dict[str, int] = {}
        """Resume points not claimed by a device yet, and the last seq of topics whose device was removed."""
        self._known_shared = False
        """``_known`` is being read by a write in the worker: copy it before changing it."""
        self._floor = 0
        self._reserve = MIN_RESERVE
        self._promise = MIN_RESERVE * PROMISE_FACTOR
        self._run = 0
        self._reservation_generation = 0
        self._snapshot_generation = 0
        self._first_reservation = True
        self._first_snapshot = True
        """The next write of each kind goes to both slots (the first of a run)."""
        self._snapshot_due = True
        """No snapshot of the current topic-to-device mapping is durable: no reservation before one is."""
        self._mapping_version = 0
        self._snapshot_at = monotonic()
        self._failing = False
        self._snapshot_failing = False
        self.writes = 0
        """Reservation slot writes."""
        self.snapshot_writes = 0
        self.write_failures = 0
        self.bytes_written = 0
        """Bytes of every slot written (both kinds): what the seq state costs the disk."""
        self.resume: Resume | None = None

    @property
    def reserve(self) -> int:
        """The largest block of the last reservation."""
        return self._reserve

    @property
    def degraded(self) -> bool:
        """The last reservation could not be written: until one is, a crash can make numbers repeat."""
        return self._failing

    async def start(self, *, used_before: bool) -> Resume:
        """Read both kinds of slots and decide where to continue. Nothing is written until the first renewal."""
        snapshots: list[SeqSnapshot | SlotCorruptError | None] = []
        reservations: list[SeqReservation | SlotCorruptError | None] = []

        def read() -> None:
            snapshots[:] = read_slots(self._store, SNAPSHOT_FILES, decode_snapshot)
            reservations[:] = read_slots(self._store, SLOT_FILES, decode_reservation)

        await self._run_io(read)
        resume = plan_resume(snapshots, reservations, used_before=used_before, now=self._clock())
        if resume.previous_stop is PreviousStop.LOST:
            log.error(
                "seq_state_lost",
                floor=resume.floor,
                reason="no usable seq state in a used state directory",
                action="every topic resumes at the wall-clock floor (microseconds since the epoch)",
            )
        self.resume = resume
        self._known = dict(resume.last)
        self._known_shared = False
        self._floor = resume.floor
        self._reserve = MIN_RESERVE
        self._promise = resume.promise
        self._run = max(resume.run + 1, int(self._clock()))
        self._reservation_generation = resume.reservation_generation
        self._snapshot_generation = resume.snapshot_generation
        self._first_reservation = self._first_snapshot = True
        self._mapping_changed()
        for budget in self._budgets.values():  # budgets of an earlier run of this object start empty
            budget.left = budget.ceiling = budget.measured_count = budget.reserve = 0
            budget.measured_at = None
        self._snapshot_at = self._monotonic()
        return resume

    def claim(self, topics: Iterable[str]) -> dict[str, int]:
        """The seq each of ``topics`` continues after (its known value, else the floor).

        The caller's device numbers them from now on and shows them in ``snapshot``: they are no longer
        kept here (a large tag map's topics are held once, by the devices). In a running gateway call
        ``invalidate`` after the claims of a reload.
        """
        floor = self._floor
        known = self._own_known()
        self._mapping_changed()
        return {topic: known.pop(topic, floor) for topic in topics}

    def remember(self, last: Mapping[str, int]) -> None:
        """Raise the resume points to ``last`` (seq per topic handed out so far), e.g. before a reload."""
        known, floor = self._own_known(), self._floor
        for topic, seq in last.items():
            if seq > known.get(topic, floor):
                known[topic] = seq

    def _own_known(self) -> dict[str, int]:
        if self._known_shared:
            self._known = dict(self._known)
            self._known_shared = False
        return self._known

    def _mapping_changed(self) -> None:
        self._mapping_version += 1
        self._snapshot_due = True

    def budget(self, device: str) -> SeqBudget:
        """The budget of ``device`` (made empty for a new device: its first message waits for a renewal)."""
        budget = self._budgets.get(device)
        if budget is None:
            budget = self._budgets[device] = SeqBudget(device, self._renew)
        return budget

    def invalidate(self) -> None:
        """Empty every budget: after a reload moved topics between devices, a snapshot of the new mapping and
        a renewal come before any more messages."""
        for budget in self._budgets.values():
            budget.ceiling -= budget.left  # its counter (what it sent) stays what it was
            budget.left = 0
        self._mapping_changed()

    async def checkpoint(self) -> None:
        """The periodic renewal (every ``period_s``): each block re-sized from the device's rate since the last;
        every ``snapshot_period_s`` also a snapshot."""
        async with self._lock:
            await self._reserve_once()
        if self._monotonic() - self._snapshot_at >= self._snapshot_period_s:
            async with self._snapshot_lock:
                await self._take_snapshot(clean=False)

    async def stop(self) -> None:
        """Write the exact numbers after the last message of a clean stop."""
        async with self._lock, self._snapshot_lock:
            await self._take_snapshot(clean=True)

    async def _renew(self, budget: SeqBudget, need: int) -> None:
        async with self._lock:
            while budget.left < need:
                await self._reserve_once(waiting=budget, need=need)

    async def _reserve_once(self, *, waiting: SeqBudget | None = None, need: int = 0) -> None:
        """One reservation (lock held): size each block, cap every budget to it, write, then grant it."""
        snapshot_error: OSError | None = None
        while self._snapshot_due and snapshot_error is None:  # again if a reload changed the mapping meanwhile
            async with self._snapshot_lock:
                if self._snapshot_due:
                    snapshot_error = await self._take_snapshot(clean=False)
        now = self._monotonic()
        wanted: dict[SeqBudget, int] = {}
        for budget in self._budgets.values():
            if budget.measured_at is None:
                budget.measured_at, budget.measured_count = now, budget.count
            elapsed_s = now - budget.measured_at
            want = size_reserve(
                used=budget.count - budget.measured_count, elapsed_s=elapsed_s, period_s=self._period_s,
                need=need if budget is waiting else 0,
            )
            if elapsed_s < self._period_s:
                want = max(want, budget.reserve)  # blocks shrink at the checkpoints only
            else:
                budget.measured_at, budget.measured_count = now, budget.count
            wanted[budget] = want
        # A block may exceed the last durable reservation's promise only through an intermediate write.
        reserves = {budget: min(want, self._promise) for budget, want in wanted.items()}
        largest = max(reserves.values(), default=MIN_RESERVE)
        promise = max(PROMISE_FACTOR * max(wanted.values(), default=MIN_RESERVE), largest)
        # While the file is written devices go on under the old ceiling, but within their new block of the
        # counter now, so that both the old and the new reservation cover what they send.
        ceilings: dict[str, int] = {}
        for budget, reserve in reserves.items():
            if budget.left > reserve:
                budget.ceiling -= budget.left - reserve
                budget.left = reserve
            ceilings[budget.device] = budget.count + reserve
        reservation = SeqReservation(
            generation=self._reservation_generation + 1, run=self._run, promise=promise, ceilings=ceilings,
            saved_at=self._clock(),
        )
        if self._snapshot_due:
            # Without a durable snapshot of this mapping a reservation would bound the wrong topics.
            self._reservation_failed(promise, snapshot_error or OSError("no snapshot of the current topics"))
        else:
            await self._write_reservation(reservation)
        self._reserve = largest
        for budget, reserve in reserves.items():
            count = budget.count
            budget.ceiling = ceilings[budget.device]
            budget.left = budget.ceiling - count
            budget.reserve = reserve

    async def _write_reservation(self, reservation: SeqReservation) -> None:
        """Write ``reservation`` to its slot (to both after a failure episode or as the first of a run)."""
        both = self._first_reservation or self._failing
        generations = [reservation.generation, reservation.generation + 1] if both else [reservation.generation]
        for generation in generations:
            data = encode_reservation(_with_generation(reservation, generation))
            error, cancelled = await self._write_slot(SLOT_FILES[generation % len(SLOT_FILES)], _constant(data))
            if error is not None:
                self._reservation_failed(reservation.promise, error)
            else:
                self._reservation_generation = generation
                self._promise = reservation.promise
                self.writes += 1
            if cancelled:
                raise asyncio.CancelledError
            if error is not None:
                return
        self._first_reservation = False
        if self._failing:
            self._failing = False
            log.warning("seq_reservation_restored", failures=self.write_failures)

    def _reservation_failed(self, promise: int, error: OSError) -> None:
        self.write_failures += 1
        # Applied in memory all the same (sources never wait on a failing disk), promise included, so a
        # burst above it does not retry in a loop.
        self._promise = promise
        if not self._failing:
            self._failing = True
            log.error(
                "seq_reservation_failed",
                error=str(error),
                action="numbering goes on; until a reservation is written again a crash can repeat numbers",
            )

    async def _take_snapshot(self, *, clean: bool) -> OSError | None:
        """Write every topic's seq and each device's counter as of now (snapshot lock held)."""
        known, by_device = self._known, self._snapshot()
        self._known_shared = True
        counts = {budget.device: budget.count for budget in self._budgets.values()}
        version, now = self._mapping_version, self._monotonic()
        both = self._first_snapshot
        first = self._snapshot_generation + 1
        generations = [first, first + 1] if both else [first]
        run, floor, promise = self._run, self._floor, self._promise
        written = 0
        error: OSError | None = None
        for generation in generations:
            saved_at = self._clock()

            def encode(generation: int = generation, saved_at: float = saved_at) -> bytes:
                # In the worker: a large tag map has hundreds of thousands of topics.
                devices = {name: DeviceSeq(counts.get(name, 0), seq) for name, seq in by_device.items()}
                return encode_snapshot(
                    SeqSnapshot(generation=generation, run=run, clean=clean, floor=floor, promise=promise, known=known,
                                devices=devices, saved_at=saved_at)
                )

            error, cancelled = await self._write_slot(SNAPSHOT_FILES[generation % len(SNAPSHOT_FILES)], encode)
            if error is None:
                written += 1
                self._snapshot_generation = generation
                self.snapshot_writes += 1
            if cancelled:
                raise asyncio.CancelledError
            if error is not None:
                break
        self._snapshot_at = now
        if written:
            self._first_snapshot = written < len(generations)
            if version == self._mapping_version:
                self._snapshot_due = False
            if self._snapshot_failing:
                self._snapshot_failing = False
                log.warning("seq_snapshot_restored")
            return None
        assert error is not None
        if not self._snapshot_failing:
            self._snapshot_failing = True
            log.error(
                "seq_snapshot_failed",
                error=str(error),
                action="retried; a crash meanwhile leaves a larger seq gap, or repeats numbers if no reservation "
                "could be written either (seq_reservation_failed)",
            )
        return error

    async def _write_slot(self, name: str, encode: Callable[[], bytes]) -> tuple[OSError | None, bool]:
        """Encode and write one slot in the worker: (the OSError it failed with, whether we were cancelled).

        A cancellation (the stop cancels the checkpoint task) waits for the write to end first, so that two
        writes never race on one slot's temporary file; the caller records the outcome, then raises it.
        """
        size = [0]

        def write() -> None:
            data = encode()
            self._store.write(name, data)
            size[0] = len(data)

        task = asyncio.ensure_future(self._run_io(write))
        cancelled = False
        while not task.done():
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                cancelled = not task.cancelled()
            except Exception:  # looked at below, from the future
                break
        if task.cancelled():
            raise asyncio.CancelledError
        exc = task.exception()
        if isinstance(exc, OSError):
            return exc, cancelled
        if exc is not None:
            raise exc
        self.bytes_written += size[0]
        return None, cancelled


def _constant(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def _with_generation(reservation: SeqReservation, generation: int) -> SeqReservation:
    return SeqReservation(
        generation=generation, run=reservation.run, promise=reservation.promise, ceilings=reservation.ceilings,
        saved_at=reservation.saved_at,
    )
