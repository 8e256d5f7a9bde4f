"""Durable ``seq`` reservations: after a crash no topic ever carries the same ``seq`` on two messages.

The scheme (what the property test in ``tests/unit/test_seq_reservation_property.py`` checks):

* A topic's ``seq`` grows by one per message on it, so it can grow at most by the number of messages its
  device sent. Each device gets a block of R_d messages per reservation (:class:`SeqBudget`), R_d sized
  from the device's own rate so that it lasts about two checkpoint periods.
* A reservation is a state file holding, per topic, a ceiling (``last``): the seq handed out when it was
  written plus its device's R_d. No topic goes past its ceiling (or ``floor + reserve``, ``reserve`` the
  largest R_d, for a topic not listed) until a newer reservation is durable: a device that would spend more
  than its block waits for the next reservation. Reservations are renewed at every checkpoint, so that wait
  normally never happens.
* After a crash every topic resumes after its ceiling: the subscriber sees a gap (at most R_d plus what the
  crash lost), never a reused number. After a clean stop the file holds the exact numbers (``clean``) and
  the next run continues without a gap.
* Two files (slots A and B) take turns, each with a generation number and a checksum, written atomically
  (temp file, fsync, rename, directory fsync). If one is unreadable the other still bounds what was used:
  each file also records ``promise`` (P), a bound every R_d of the next reservation keeps to, so resuming
  after ``last + P`` of the remaining slot is safe whether the lost slot was older or newer. The first
  reservation of a run is written to both slots, so the pair always describes the same run.
* With neither slot readable (or both missing in a state directory used before) the numbers resume at a
  wall-clock floor, microseconds since the epoch. That is above every number used before as long as the
  wall clock is not behind where it was at an earlier such loss and no topic averaged more than a million
  messages a second (about 1.8e15 in 2026, below 2**53 until the year 2255). Logged as ``seq_state_lost``.
* If the state directory cannot be written (read-only, full) the gateway keeps running: the reservation
  is applied in memory, ``seq_reservation_failed`` is logged once per episode and the write is retried
  at the next checkpoint. During such an episode a crash can make numbers repeat.

Pure core: :class:`SeqState`, :func:`encode_state`, :func:`decode_state`, :func:`plan_resume`,
:func:`size_reserve`, :func:`reservation_state`, :func:`exact_state`. Shell: :class:`SeqFileStore` (files) and
:class:`SeqReservations` (budgets, renewals, the clean stop), which the runtime drives: ``start`` before any
device, ``claim`` a device's topics, ``budget(device).take(n)`` before numbering, ``checkpoint`` every 5 s,
``remember`` + ``invalidate`` around a reload, ``stop`` after the last message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import orjson
import structlog

log = structlog.get_logger("cellgate.seq")

STATE_FORMAT = 1
SLOT_FILES = ("seq.a.json", "seq.b.json")
"""Slot ``generation % 2`` holds a reservation of that generation."""
MIN_RESERVE = 64
"""The smallest block R: also the smallest jump a topic's ``seq`` makes after a crash."""
RESERVE_PERIODS = 2.0
"""R covers this many checkpoint periods at the rate seen since the last reservation."""
PROMISE_FACTOR = 4
"""A reservation promises that the next R is at most this many times what it asked for."""
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
    """One slot was unreadable or missing: resumed from the other one with the extra margin P."""
    LOST = "lost"
    """No readable seq state in a used state directory: resumed at the wall-clock floor."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SeqState:
    """One reservation (or, with ``clean``, the exact numbers of a stopped run)."""

    generation: int
    clean: bool
    reserve: int
    """The largest block R_d of this reservation: how far a topic not in ``last`` may be past ``floor``."""
    promise: int
    """No block of the next reservation is larger (see the module docstring)."""
    floor: int
    """Where a topic not in ``last`` stood when the run started."""
    last: Mapping[str, int]
    """Per topic: the ceiling of this reservation, or with ``clean`` the exact last seq."""
    saved_at: float


class SlotCorruptError(Exception):
    """A slot file that exists but cannot be read or trusted."""


def encode_state(state: SeqState) -> bytes:
    """The file content: a JSON body line, then its BLAKE2b-128 checksum line."""
    body = orjson.dumps(
        {
            "format": STATE_FORMAT,
            "generation": state.generation,
            "clean": state.clean,
            "reserve": state.reserve,
            "promise": state.promise,
            "floor": state.floor,
            "saved_at": state.saved_at,
            "last": dict(state.last),
        }
    )
    return body + b"\n" + hashlib.blake2b(body, digest_size=16).hexdigest().encode() + b"\n"


def decode_state(data: bytes) -> SeqState:
    """The state in ``data``; raises :class:`SlotCorruptError` if it is torn, damaged or not ours."""
    body, sep, rest = data.rstrip(b"\n").rpartition(b"\n")
    if not sep or hashlib.blake2b(body, digest_size=16).hexdigest().encode() != rest:
        raise SlotCorruptError("checksum mismatch (torn or damaged file)")
    try:
        raw = orjson.loads(body)
        if raw["format"] != STATE_FORMAT:
            raise SlotCorruptError(f"unknown format {raw['format']!r}")
        last = raw["last"]
        state = SeqState(
            generation=_count(raw["generation"]),
            clean=bool(raw["clean"]),
            reserve=_count(raw["reserve"]),
            promise=_count(raw["promise"]),
            floor=_count(raw["floor"]),
            saved_at=float(raw["saved_at"]),
            last={str(topic): _count(seq) for topic, seq in last.items()},
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SlotCorruptError(f"malformed state: {exc!r}") from exc
    return state


def _count(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Where this run continues: ``last`` per known topic, ``floor`` for the others."""

    previous_stop: PreviousStop
    last: dict[str, int]
    floor: int
    reserve: int
    promise: int
    generation: int
    """The highest generation read (0 if none): this run writes from ``generation + 1`` on."""


def plan_resume(
    slots: Sequence[SeqState | SlotCorruptError | None], *, used_before: bool, now: float
) -> Resume:
    """Where to continue, from the two slots (``None`` = missing, :class:`SlotCorruptError` = unreadable).

    ``used_before``: the state directory held a run before (two missing slots then mean a lost state,
    not a first start). ``now`` is wall-clock seconds, for the floor of a lost state.
    """
    states = sorted((slot for slot in slots if isinstance(slot, SeqState)), key=lambda s: s.generation)
    bad = sum(1 for slot in slots if not isinstance(slot, SeqState))
    if not states:
        generation = 0
        if bad == len(slots) and all(slot is None for slot in slots) and not used_before:
            return Resume(previous_stop=PreviousStop.NEW, last={}, floor=0, reserve=MIN_RESERVE,
                          promise=MIN_RESERVE * PROMISE_FACTOR, generation=generation)
        floor = int(now * WALL_CLOCK_FLOOR_PER_S)
        return Resume(previous_stop=PreviousStop.LOST, last={}, floor=floor, reserve=MIN_RESERVE,
                      promise=MIN_RESERVE * PROMISE_FACTOR, generation=generation)
    newest = states[-1]
    if bad:
        # The other slot may have been a newer reservation: its ceilings were at most these plus P.
        previous_stop, extra = PreviousStop.ONE_SLOT_BAD, newest.promise
    elif newest.clean:
        previous_stop, extra = PreviousStop.CLEAN, 0
    else:
        previous_stop, extra = PreviousStop.UNCLEAN, 0  # ``last`` holds the ceilings
    unlisted = 0 if previous_stop is PreviousStop.CLEAN else newest.reserve
    return Resume(
        previous_stop=previous_stop,
        last={topic: seq + extra for topic, seq in newest.last.items()},
        floor=newest.floor + unlisted + extra,
        reserve=newest.reserve,
        promise=newest.promise,
        generation=newest.generation,
    )


def size_reserve(*, used: int, elapsed_s: float, period_s: float, need: int) -> int:
    """The block R_d wanted for a device: ``RESERVE_PERIODS`` checkpoint periods at its rate.

    ``used`` messages were sent by the device in ``elapsed_s`` since the last reservation; ``need`` is
    what it must send at once (it is waiting).
    """
    rate = used / max(elapsed_s, 1.0)
    return max(MIN_RESERVE, need, math.ceil(rate * period_s * RESERVE_PERIODS))


def reservation_state(
    *,
    known: Mapping[str, int],
    snapshot: Mapping[str, Mapping[str, int]],
    blocks: Mapping[str, int],
    largest: int,
) -> dict[str, int]:
    """The ceilings of a reservation: each device's topics (``snapshot``) plus its block R_d (``blocks``).

    ``known`` holds the topics no device numbers at the moment (resume points not yet claimed, topics of
    removed devices): they get the ``largest`` block, as does a device without a block of its own.
    """
    ceilings = {topic: seq + largest for topic, seq in known.items()}
    for device, topics in snapshot.items():
        block = blocks.get(device, largest)
        for topic, seq in topics.items():
            ceilings[topic] = seq + block
    return ceilings


def exact_state(*, known: Mapping[str, int], snapshot: Mapping[str, Mapping[str, int]]) -> dict[str, int]:
    """The exact last seq per topic, for a clean stop."""
    exact = dict(known)
    for topics in snapshot.values():
        exact.update(topics)
    return exact


# --------------------------------------------------------------------------------------------- shell


class SeqStore(Protocol):
    """Where the two slots live: :class:`SeqFileStore`, or the in-memory one of the property test."""

    def read(self) -> list[SeqState | SlotCorruptError | None]: ...

    def write(self, slot: int, data: bytes) -> None: ...


class SeqFileStore:
    """The two slot files in ``directory``; a slot that cannot be read is moved aside (kept, logged)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def read(self) -> list[SeqState | SlotCorruptError | None]:
        return [self._read_slot(self.directory / name) for name in SLOT_FILES]

    def _read_slot(self, path: Path) -> SeqState | SlotCorruptError | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("seq_state_unreadable", path=str(path), error=str(exc))
            return SlotCorruptError(str(exc))
        try:
            return decode_state(data)
        except SlotCorruptError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            try:
                path.rename(aside)
            except OSError as error:
                log.error("seq_state_corrupt", path=str(path), error=str(exc), moved_to=None, move_error=str(error))
            else:
                log.error("seq_state_corrupt", path=str(path), error=str(exc), moved_to=str(aside))
            return exc

    def write(self, slot: int, data: bytes) -> None:
        """Replace slot ``slot`` atomically and durably: temp file, fsync, rename, directory fsync."""
        path = self.directory / SLOT_FILES[slot]
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


class SeqBudget:
    """How many more messages one device may send before the next reservation must be durable.

    The hot path, once per emitted batch: ``await budget.take(n)`` before numbering at most ``n``
    messages, then ``budget.left += n - sent`` for what was not sent.
    """

    __slots__ = ("_renew", "device", "granted", "left", "reserve")

    def __init__(self, device: str, renew: Callable[[SeqBudget, int], Awaitable[None]]) -> None:
        self.device = device
        self.left = 0
        self.granted = 0
        """``left`` right after the last reservation: ``granted - left`` is what the device sent since."""
        self.reserve = 0
        """This device's block R_d in the last reservation."""
        self._renew = renew

    async def take(self, need: int) -> None:
        while self.left < need:
            await self._renew(self, need)
        self.left -= need


async def _to_thread(call: Callable[[], _T]) -> _T:
    return await asyncio.to_thread(call)


class SeqReservations:
    """Owns the seq state of one run: resume points, per-device budgets, renewals and the clean stop.

    ``snapshot`` returns, per device, the last seq handed out per topic (``DeviceOutbound.seq_snapshot``).
    ``run_io`` runs a blocking store call off the event loop.
    """

    def __init__(
        self,
        store: SeqStore,
        *,
        snapshot: Callable[[], Mapping[str, Mapping[str, int]]],
        period_s: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        run_io: Callable[[Callable[[], None]], Awaitable[None]] = _to_thread,
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._period_s = period_s
        self._clock = clock
        self._monotonic = monotonic
        self._run_io = run_io
        self._lock = asyncio.Lock()
        self._budgets: dict[str, SeqBudget] = {}
        self._known: dict[str, int] = {}
        """Resume points not claimed by a device yet, and the last seq of topics whose device was removed."""
        self._known_shared = False
        """``_known`` is being read by a write in the worker: copy it before changing it."""
        self._floor = 0
        self._reserve = MIN_RESERVE
        self._promise = MIN_RESERVE * PROMISE_FACTOR
        self._generation = 0
        self._reserved_at = monotonic()
        self._failing = False
        self.writes = 0
        self.write_failures = 0
        self.resume: Resume | None = None

    @property
    def reserve(self) -> int:
        """The largest block R_d of the last reservation."""
        return self._reserve

    @property
    def degraded(self) -> bool:
        """The last reservation could not be written: until one is, a crash can make numbers repeat."""
        return self._failing

    async def start(self, *, used_before: bool) -> Resume:
        """Read both slots, decide where to continue, and mark this run unclean in both slots."""
        slots: list[SeqState | SlotCorruptError | None] = [None, None]

        def read() -> None:
            slots[:] = self._store.read()

        await self._run_io(read)
        resume = plan_resume(slots, used_before=used_before, now=self._clock())
        if resume.previous_stop is PreviousStop.LOST:
            log.error(
                "seq_state_lost",
                floor=resume.floor,
                reason="no readable seq state in a used state directory",
                action="every topic resumes at the wall-clock floor (microseconds since the epoch)",
            )
        self.resume = resume
        self._known = dict(resume.last)
        self._floor = resume.floor
        self._reserve = resume.reserve
        self._promise = max(resume.promise, resume.reserve)
        self._generation = resume.generation
        self.invalidate()  # budgets of an earlier run of this object start empty
        async with self._lock:
            for _ in SLOT_FILES:  # the first reservation of a run goes to both slots
                await self._reserve_once()
        return resume

    def claim(self, topics: Iterable[str]) -> dict[str, int]:
        """The seq each of ``topics`` continues after (its known value, else the floor).

        The caller's device numbers them from now on and shows them in ``snapshot``: they are no longer
        kept here (a large tag map's topics are held once, by the devices).
        """
        floor = self._floor
        known = self._own_known()
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

    def budget(self, device: str) -> SeqBudget:
        """The budget of ``device`` (made empty for a new device: its first message waits for a renewal)."""
        budget = self._budgets.get(device)
        if budget is None:
            budget = self._budgets[device] = SeqBudget(device, self._renew)
        return budget

    def invalidate(self) -> None:
        """Empty every budget: after a reload moved topics between devices, renew before any more messages."""
        for budget in self._budgets.values():
            budget.granted -= budget.left  # what it sent since the last reservation stays what it was
            budget.left = 0

    async def checkpoint(self) -> None:
        """The periodic renewal (every ``period_s``): each R_d re-sized from the device's rate since the last."""
        async with self._lock:
            await self._reserve_once()

    async def stop(self) -> None:
        """Write the exact numbers after the last message of a clean stop."""
        async with self._lock:
            known, snapshot = self._known, self._snapshot()
            self._known_shared = True
            state = SeqState(
                generation=self._generation + 1, clean=True, reserve=self._reserve, promise=self._promise,
                floor=self._floor, last={}, saved_at=self._clock(),
            )
            await self._write(state, lambda: exact_state(known=known, snapshot=snapshot))

    async def _renew(self, budget: SeqBudget, need: int) -> None:
        async with self._lock:
            while budget.left < need:
                await self._reserve_once(waiting=budget, need=need)

    async def _reserve_once(self, *, waiting: SeqBudget | None = None, need: int = 0) -> None:
        """One reservation (lock held): size each R_d, cap every budget to it, write, then grant it."""
        now = self._monotonic()
        elapsed_s = now - self._reserved_at
        wanted = {
            budget: size_reserve(
                used=budget.granted - budget.left, elapsed_s=elapsed_s, period_s=self._period_s,
                need=need if budget is waiting else 0,
            )
            for budget in self._budgets.values()
        }
        # An R_d may exceed the last durable reservation's promise only through an intermediate write.
        reserves = {budget: min(want, self._promise) for budget, want in wanted.items()}
        largest = max(reserves.values(), default=MIN_RESERVE)
        promise = max(PROMISE_FACTOR * max(wanted.values(), default=MIN_RESERVE), largest)
        known, snapshot = self._known, self._snapshot()
        self._known_shared = True
        blocks = {budget.device: reserve for budget, reserve in reserves.items()}
        # While the file is written devices go on under the old reservation, but within R_d of the snapshot,
        # so that both the old and the new reservation cover what they send.
        mark = {}
        for budget, reserve in reserves.items():
            budget.left = min(budget.left, reserve)
            mark[budget] = budget.left
        state = SeqState(
            generation=self._generation + 1, clean=False, reserve=largest, promise=promise,
            floor=self._floor, last={}, saved_at=self._clock(),
        )
        await self._write(
            state, lambda: reservation_state(known=known, snapshot=snapshot, blocks=blocks, largest=largest)
        )
        self._reserve = largest
        self._reserved_at = now
        for budget, left_at_mark in mark.items():
            reserve = reserves[budget]
            budget.left = reserve - (left_at_mark - budget.left)
            budget.granted = budget.reserve = reserve

    async def _write(self, state: SeqState, last: Callable[[], dict[str, int]]) -> None:
        """Write ``state`` with ``last()`` to its slot; on success it is the last durable reservation.

        ``last`` runs in the worker with the encoding: a large tag map has hundreds of thousands of topics.
        A cancellation (the stop cancels the checkpoint task) waits for the write to end first, so that two
        writes never race on one slot's temporary file.
        """
        slot = state.generation % len(SLOT_FILES)

        def write_slot() -> None:
            self._store.write(slot, encode_state(dataclasses.replace(state, last=last())))

        write = asyncio.ensure_future(self._run_io(write_slot))
        cancelled = False
        while not write.done():
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                cancelled = not write.cancelled()
            except Exception:  # looked at below, from the future
                break
        try:
            await self._record(state, last, write)
        finally:
            if cancelled:
                raise asyncio.CancelledError

    async def _record(self, state: SeqState, last: Callable[[], dict[str, int]], write: asyncio.Future[None]) -> None:
        exc = write.exception()
        if isinstance(exc, OSError):
            self.write_failures += 1
            # Applied in memory all the same (sources never wait on a failing disk), promise included, so a
            # burst above it does not retry in a loop.
            self._promise = state.promise
            if not self._failing:
                self._failing = True
                log.error(
                    "seq_reservation_failed",
                    error=str(exc),
                    action="numbering goes on; until a reservation is written again a crash can repeat numbers",
                )
            return
        if exc is not None:
            raise exc
        self._generation = state.generation
        self._promise = state.promise
        self.writes += 1
        if self._failing:
            self._failing = False
            log.warning("seq_reservation_restored", failures=self.write_failures)
            # The other slot is from before the failures, so its ``last + R + P`` no longer bounds what was
            # sent: write this reservation to both slots, as at the start of a run.
            await self._write(dataclasses.replace(state, generation=state.generation + 1), last)
