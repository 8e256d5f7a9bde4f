"""Store and forward: live messages go to the broker when it can take them, to the spool when it cannot.

::

    forward(messages) --connected, window slot within window_wait_s--> Sink (live)
                      \\--otherwise (broker down, window stuck, shutdown)--> Spool (marked historical)
    replay task: Spool oldest first --free window slot only, at most replay_per_s--> Sink
                 PUBACK --> removed from the spool (in groups, at least every ACK_FLUSH_S)
    refused by the broker (on_refused) --> dead_letter table of the spool
    forward_record(event record) --a window slot within window_wait_s (none once stuck)--> Sink (own handle, < 0)
                                 \\--otherwise--> Spool (priority: the size limits drop plain messages first)
                                 its future resolves at its PUBACK (live or replayed), refusal or loss

Live data always has the window first: a replay takes a slot only when one is free at that moment and no
live batch is being handed over, and the live path never waits behind a replay. Within each topic the spool
keeps arrival order, so historical messages arrive in order among themselves; they may interleave with newer
live ones (the ``historical`` flag and ``seq`` say which is which).

A stuck window (a hung broker: connected, no PUBACK) costs ``window_wait_s`` once: from then on batches
take only the slots free at that moment and the rest goes straight to the spool, at the rate it
arrives, until a PUBACK comes (fewer messages in flight); event records likewise. So the queue in front
never fills and the sources never block.

Without a spool (it cannot be opened: read-only or full disk, permissions) the gateway runs on live data
only: what cannot be sent is counted as lost with a reason and said loudly (``spool_unavailable`` at
once, then at most every ``SPOOL_REMINDER_S``), and opening is tried again every ``SPOOL_RETRY_S``.

All spool I/O runs on one worker thread (SQLite is blocking), so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import structlog

from gateway.errors import SinkError
from gateway.sinks.base import Delivery, Handle, Sink
from gateway.sinks.spool import DeadLetter, DropReason, Spool, SpooledMessage, SpoolFullError

log = structlog.get_logger("cellgate.spool")

Historical = Callable[[str, bytes], bytes | None]
"""The encoder's replay form of a message (topic, payload): what the spool keeps (e.g. ``"historical": true``);
None for a message not worth replaying (a Sparkplug birth or death: the births of the next connection supersede it)."""

P = ParamSpec("P")
R = TypeVar("R")

REPLAY_CHUNK = 500
"""Messages read from the spool per query while replaying."""
REPLAY_SLOT_POLL_S = 0.002
"""How long a replay waits before looking for a free window slot again."""
ACK_FLUSH_S = 0.5
"""Acknowledged replays are deleted from the spool in groups, at least this often, whatever the replay does."""
SPOOL_RETRY_S = 30.0
"""How often opening an unavailable spool is tried again."""
SPOOL_REMINDER_S = 60.0
"""Least time between two ``spool_unavailable`` / ``spool_messages_lost`` lines of one episode."""
REPLAY_ERROR_PAUSE_S = 1.0
"""How long the replay pauses after the spool could not be read."""

SpoolOpener = Callable[[], Spool]


def open_spool(opener: SpoolOpener) -> Spool | None:
    """``opener()``, logging a damaged file moved aside; None (logged loudly) when the spool cannot be opened."""
    try:
        spool = opener()
    except SinkError as exc:
        log.error("spool_unavailable", error=str(exc), action="live data only", retry_s=SPOOL_RETRY_S, lost=0)
        return None
    if spool.moved_aside is not None:
        moved = spool.moved_aside
        log.error(
            "spool_corrupt_moved_aside",
            moved_to=str(moved.path),
            damage=moved.damage,
            salvaged=moved.salvaged,
            spool=str(spool.path),
        )
    return spool


class StoreAndForward:
    """Owns the spool side of the sink. Create it, then ``bind(sink)`` before the first ``forward``.

    ``spool`` None: no spool yet (see the module docstring); ``reopen`` opens it, tried every
    ``reopen_every_s`` while there is none (also after a write failure closed it). ``window_wait_s``: how
    long a live message may wait for an in-flight slot before it goes to the spool. ``replay_per_s``: the
    most spooled messages replayed per second. ``clock``: wall-clock seconds, for the dead letters' time
    stamps.
    """

    def __init__(
        self,
        spool: Spool | None,
        *,
        window_wait_s: float,
        replay_per_s: float,
        historical: Historical,
        reopen: SpoolOpener | None = None,
        reopen_every_s: float = SPOOL_RETRY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_wait_s < 0 or replay_per_s <= 0:
            raise ValueError("need window_wait_s >= 0 and replay_per_s > 0")
        self.spool = spool
        self._historical = historical
        self._reopen = reopen
        self._reopen_every_s = reopen_every_s
        self._clock = clock
        self._window_wait_s = window_wait_s
        self._window_stuck = False
        self._stuck_in_flight = 0  # messages in flight when last seen stuck: fewer now means a PUBACK came
        self._stuck_logged = False
        self._stuck_logged_at = -SPOOL_REMINDER_S
        self.window_stuck_episodes = 0
        """How often the in-flight window stayed full for ``window_wait_s`` while connected (a hung broker)."""
        self._replay_interval_s = 1.0 / replay_per_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellgate-spool")
        self._sink: Sink | None = None
        self._spooled = asyncio.Event()  # set while the spool may hold messages to replay
        if spool is not None and spool.count:
            self._spooled.set()
        self._cursor = 0  # highest spool id handed to the sink in this run
        self._tokens = 0.0  # replays that may go out now (rate limit: a token bucket refilled at replay_per_s)
        self._tokens_at = 0.0  # monotonic time the bucket was last refilled
        self._acked: list[int] = []
        self._refused: list[DeadLetter] = []
        self._replays_in_flight = 0
        # Event records whose sender waits for their fate: live ones in the sink by handle (negative, so never a
        # spool id), spooled ones by spool id.
        self._live_records: dict[Handle, tuple[str, bytes, asyncio.Future[Delivery]]] = {}
        self._spooled_records: dict[int, asyncio.Future[Delivery]] = {}
        self._next_record_handle = -1
        self._live_handing = False  # a live batch is being handed over
        self._cap_episode_dropped = 0
        self._episode_reasons: set[DropReason] = set()
        self._unavailable_since = 0.0 if spool is not None else time.monotonic()
        self._last_reminder = time.monotonic()
        self._last_open_try = time.monotonic()
        self.spooled_total = 0
        """Live messages written to the spool in this run."""
        self.replayed_total = 0
        """Spooled messages acknowledged by the broker in this run."""
        self.spool_errors = 0
        self.lost_by_reason: dict[str, int] = {}
        """Messages neither sent nor kept, by reason (``spool_unavailable``, ``disk_full``, ``write_failed``)."""
        self.refused_by_reason: dict[str, int] = {}
        """Messages the broker refused for good (kept as dead letters), by reason."""
        self.dropped_by_reason: dict[str, int] = {}
        """Spooled messages deleted by a size limit in this run, by limit (``max_mb``, ``min_free_mb``,
        ``disk_full``)."""

    # ---------------------------------------------------------------------------------- set-up

    @property
    def available(self) -> bool:
        """False while running without a spool."""
        return self.spool is not None

    @property
    def spooled_now(self) -> int:
        """Messages in the spool now (0 without a spool)."""
        return self.spool.count if self.spool is not None else 0

    @property
    def dead_letters_dropped(self) -> int:
        """Dead letters deleted by ``spool.dead_letter_max_mb`` since the spool was opened."""
        return self.spool.dead_letters_dropped if self.spool is not None else 0

    def bind(self, sink: Sink) -> None:
        self._sink = sink

    def on_ack(self, handle: Handle) -> None:
        """The sink's ``on_ack``: the replay of spooled message ``handle`` (its spool id), or a live event record
        (a negative handle), was acknowledged."""
        if handle < 0:
            live = self._live_records.pop(handle, None)
            if live is not None:
                _settle(live[2], Delivery.ACKED)
            return
        self._replay_done(handle)
        self.replayed_total += 1
        waiter = self._spooled_records.pop(handle, None)
        if waiter is not None:
            _settle(waiter, Delivery.ACKED)

    def _replay_done(self, spool_id: int) -> None:
        self._replays_in_flight -= 1
        self._acked.append(spool_id)

    def on_refused(self, topic: str, payload: bytes, reason: str, handle: Handle | None) -> bool:
        """The sink's ``on_refused``: the broker will never take this message (``reason``, e.g. ``not_authorized``).

        Kept in the spool's dead-letter table (a replay moves there from the message table) at the next
        acknowledgement flush; counted by reason. Never blocks. Returns whether it is kept (False without a
        spool); the sink logs the refusal, once per reason, with that answer.
        """
        self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1
        if handle is not None and handle < 0:  # a live event record: kept like any refused live message
            live = self._live_records.pop(handle, None)
            if live is not None:
                _settle(live[2], Delivery.REFUSED)
            handle = None
        elif handle is not None:
            waiter = self._spooled_records.pop(handle, None)
            if waiter is not None:
                _settle(waiter, Delivery.REFUSED)
        if handle is None:
            # Replayed as historical once requeued; a payload the encoder cannot mark is kept as it was.
            with contextlib.suppress(ValueError):
                payload = self._historical(topic, payload) or payload
        self._refused.append(DeadLetter(topic, payload, reason, handle))
        if handle is not None:  # a replay: its spool id (see _replay_rows)
            self._replay_done(handle)
        return self.spool is not None

    async def _io(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: call(*args, **kwargs))

    # ------------------------------------------------------------------------------------ live

    async def forward(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Hand ``messages`` to the broker, or whatever it cannot take now to the spool, in order."""
        self._live_handing = True  # the replay takes no slot meanwhile (see _replay_rows)
        try:
            await self._forward(messages)
        finally:
            self._live_handing = False

    async def _forward(self, messages: Sequence[tuple[str, bytes]]) -> None:
        sink = self._require_sink()
        if self._window_wait_s < 0:
            taken = 0
        elif self._still_stuck(sink):
            taken = await sink.offer_many(messages, wait_s=0)  # only the slots free right now
            self._stuck_in_flight = sink.in_flight
        else:
            taken = await sink.offer_many(messages, wait_s=self._window_wait_s)
            if taken < len(messages) and sink.connected:
                self._window_stuck_now(sink)
        if taken < len(messages):
            await self.store(messages[taken:])

    def _still_stuck(self, sink: Sink) -> bool:
        """Whether the window is still stuck: no PUBACK since it was found stuck (no fewer messages in flight,
        and some).

        A slot that is free proves nothing: with ``mqtt.connections`` > 1 the other connections may still have
        free slots of their hung windows, so taking a message there must not start another wait.
        """
        if self._window_stuck and (sink.in_flight < self._stuck_in_flight or not sink.in_flight):
            self._window_moving()
        return self._window_stuck

    def _window_stuck_now(self, sink: Sink) -> None:
        """No slot for window_wait_s while connected: nothing waits for one again until a PUBACK comes."""
        self._window_stuck = True
        self._stuck_in_flight = sink.in_flight
        self.window_stuck_episodes += 1
        now = time.monotonic()
        if now - self._stuck_logged_at >= SPOOL_REMINDER_S:  # a slow broker may do this every second
            self._stuck_logged_at = now
            self._stuck_logged = True
            log.warning(
                "broker_window_stuck",
                in_flight=sink.in_flight,
                waited_s=self._window_wait_s,
                stuck_episodes=self.window_stuck_episodes,
            )

    def _window_moving(self) -> None:
        self._window_stuck = False
        if self._stuck_logged:
            self._stuck_logged = False
            log.info("broker_window_moving", stuck_episodes=self.window_stuck_episodes)

    async def forward_record(self, topic: str, payload: bytes) -> asyncio.Future[Delivery]:
        """Hand one event record to the broker (waiting up to ``window_wait_s`` for a slot) or to the spool,
        as an event record; the future resolves when its fate is known: ``ACKED`` at its PUBACK (live, or
        replayed later), ``REFUSED``, or ``LOST`` (no spool). Never resolved if the gateway stops first: the
        record is then spooled (``keep_unacked``) and its PLC still holds it."""
        sink = self._require_sink()
        done: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        if self._window_wait_s >= 0 and sink.connected:
            handle = self._next_record_handle
            self._next_record_handle -= 1
            self._live_records[handle] = (topic, payload, done)  # before publishing: QoS 0 acks at once
            stuck = self._still_stuck(sink)  # then only a slot free right now, as for a data batch
            deadline = time.monotonic() + (0.0 if stuck else self._window_wait_s)
            while not (published := sink.try_publish(topic, payload, handle)):
                if not sink.connected or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(REPLAY_SLOT_POLL_S)
            if stuck:
                self._stuck_in_flight = sink.in_flight
            if published:
                return done
            del self._live_records[handle]
            if not stuck and sink.connected:
                self._window_stuck_now(sink)
        spool_id = await self._store_record(topic, payload)
        if spool_id is None:
            _settle(done, Delivery.LOST)
        else:
            self._spooled_records[spool_id] = done
        return done

    async def _store_record(self, topic: str, payload: bytes) -> int | None:
        """Spool one event record (historical form, record priority); its spool id, None if it was lost."""
        spool = self.spool
        if spool is None:
            self._lose(1, "spool_unavailable")
            return None
        before = dict(spool.dropped_by_reason)
        try:
            # Records are UNS JSON (never a Sparkplug birth, the only form with no historical one).
            stored = self._historical(topic, payload)
            spool_id = await self._io(spool.append_record, topic, payload if stored is None else stored)
        except SpoolFullError as exc:
            self.spool_errors += 1
            self._note_dropped(spool, before)
            self._lose(1, "disk_full", error=str(exc))
            return None
        except SinkError as exc:
            self.spool_errors += 1
            self._lose(1, "write_failed", error=str(exc))
            await self._give_up_spool(str(exc))
            return None
        self.spooled_total += 1
        self._spooled.set()
        self._note_dropped(spool, before)
        return spool_id

    async def store(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Write live messages to the spool, marked historical. A spool failure is counted and logged."""
        if not messages:
            return
        spool = self.spool
        if spool is None:
            self._lose(len(messages), "spool_unavailable")
            return
        historical = self._historical
        rows = [(topic, marked) for topic, payload in messages if (marked := historical(topic, payload)) is not None]
        if not rows:
            return
        before = dict(spool.dropped_by_reason)
        try:
            await self._io(spool.append, rows)
        except SpoolFullError as exc:
            self.spool_errors += 1
            self._note_dropped(spool, before)
            self._lose(len(rows), "disk_full", error=str(exc))
            return
        except SinkError as exc:
            self.spool_errors += 1
            self._lose(len(rows), "write_failed", error=str(exc))
            await self._give_up_spool(str(exc))
            return
        self.spooled_total += len(rows)
        self._spooled.set()
        self._note_dropped(spool, before)

    def _note_dropped(self, spool: Spool, before: Mapping[DropReason, int]) -> None:
        """Count what the size limits dropped since ``before``; log once per limit per episode (ends at a replay)."""
        for reason, total in spool.dropped_by_reason.items():
            dropped = total - before.get(reason, 0)
            if dropped <= 0:
                continue
            self.dropped_by_reason[str(reason)] = self.dropped_by_reason.get(str(reason), 0) + dropped
            self._cap_episode_dropped += dropped
            if reason not in self._episode_reasons:
                self._episode_reasons.add(reason)
                log.warning(
                    "spool_full_dropping_oldest",
                    reason=str(reason),
                    max_mb=round(spool.max_bytes / 1e6, 3),
                    min_free_mb=round(spool.min_free_bytes / 1e6, 3),
                    dropped=dropped,
                )

    def _lose(self, messages: int, reason: str, *, error: str | None = None) -> None:
        """Count messages neither sent nor kept; say so at once, then at most every SPOOL_REMINDER_S."""
        first = reason not in self.lost_by_reason
        self.lost_by_reason[reason] = self.lost_by_reason.get(reason, 0) + messages
        now = time.monotonic()
        if first or now - self._last_reminder >= SPOOL_REMINDER_S:
            self._last_reminder = now
            log.error("spool_messages_lost", reason=reason, lost=dict(self.lost_by_reason), error=error)

    async def _give_up_spool(self, error: str) -> None:
        """A write failed for a reason other than a full disk: close the spool, run without, retry later."""
        spool, self.spool = self.spool, None
        if spool is None:
            return
        self._unavailable_since = self._last_open_try = self._last_reminder = time.monotonic()
        self._spooled.clear()
        log.error(
            "spool_unavailable", error=error, action="live data only", retry_s=self._reopen_every_s,
            lost=dict(self.lost_by_reason),
        )
        await self._io(spool.close)

    # ---------------------------------------------------------------------------------- replay

    async def replay(self) -> None:
        """Run forever: whenever connected, replay the spool oldest first. Cancel to stop.

        Also runs the upkeep: acknowledgements flushed every ACK_FLUSH_S, an unavailable spool reopened.
        """
        async with asyncio.TaskGroup() as group:
            group.create_task(self._upkeep(), name="spool.upkeep")
            await self._replay()

    async def _replay(self) -> None:
        sink = self._require_sink()
        self._tokens, self._tokens_at = 0.0, time.monotonic()
        while True:
            await self._spooled.wait()
            spool = self.spool
            if spool is None:
                await asyncio.sleep(REPLAY_ERROR_PAUSE_S)
                continue
            if not sink.connected:
                await sink.until_connected()
                log.info("spool_replay_starting", spooled=spool.count)
            try:
                rows = await self._io(spool.oldest, after_id=self._cursor, limit=REPLAY_CHUNK)
            except SinkError as exc:
                self.spool_errors += 1
                log.error("spool_read_failed", error=str(exc))
                await asyncio.sleep(REPLAY_ERROR_PAUSE_S)
                continue
            if not rows:
                await self._flush_acks()
                if self._replays_in_flight <= 0 and spool.count == 0:
                    self._finish_episode()
                else:
                    await asyncio.sleep(ACK_FLUSH_S / 5)  # acknowledgements still to come
                continue
            await self._replay_rows(sink, rows)  # returns early when disconnected: wait for the next connection

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(ACK_FLUSH_S)
            await self._flush_acks()
            if self.spool is None:
                await self._retry_open()

    async def _retry_open(self) -> None:
        now = time.monotonic()
        if now - self._last_reminder >= SPOOL_REMINDER_S:
            self._last_reminder = now
            log.error(
                "spool_unavailable",
                action="live data only",
                down_s=round(now - self._unavailable_since),
                lost=dict(self.lost_by_reason),
                retry_s=self._reopen_every_s,
            )
        if self._reopen is None or now - self._last_open_try < self._reopen_every_s:
            return
        self._last_open_try = now
        spool = await self._io(open_spool, self._reopen)
        if spool is None:
            return
        self.spool = spool
        self._cursor = 0
        if spool.count:
            self._spooled.set()
        log.warning("spool_available_again", spool=str(spool.path), spooled=spool.count, lost=dict(self.lost_by_reason))

    async def _replay_rows(self, sink: Sink, rows: Sequence[SpooledMessage]) -> bool:
        """Send ``rows`` in order at the replay rate, into free window slots; False if disconnected first.

        The rate is a token bucket refilled at ``replay_per_s`` (banking at most a second of unused rate, so a
        pause never turns into a burst of more than a second's worth). Each turn of the event loop sends as many
        rows as the bucket and the free slots allow, one write for all of them, then yields: a sleep per message
        would cost an event-loop turn per message and cap the replay far below the rate asked for.
        """
        rate = 1.0 / self._replay_interval_s
        index, count = 0, len(rows)
        while index < count:
            if self._live_handing:
                # Live data first: while a live batch is handed over (or spooled) the replay takes no slot, so
                # under load it uses the capacity live data leaves.
                await asyncio.sleep(REPLAY_SLOT_POLL_S)
                continue
            now = time.monotonic()
            self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
            self._tokens_at = now
            if self._tokens < 1.0:
                await asyncio.sleep(max((1.0 - self._tokens) / rate, REPLAY_SLOT_POLL_S))
                continue
            allowed = min(int(self._tokens), count - index)
            sent = 0
            while sent < allowed:
                row = rows[index]
                if not sink.try_publish(row.topic, row.payload, row.id):
                    break
                self._cursor = row.id
                self._replays_in_flight += 1
                index += 1
                sent += 1
            self._tokens -= sent
            if sent < allowed:  # no free slot (live data has the window first), or the link is down
                if not sink.connected:
                    return False
                await asyncio.sleep(REPLAY_SLOT_POLL_S)
            else:
                await asyncio.sleep(0)  # let live data and PUBACKs through between bursts
        return True

    async def _flush_acks(self) -> None:
        """Delete acknowledged replays and keep refused messages as dead letters, in one transaction."""
        if not self._acked and not self._refused:
            return
        acked, self._acked = self._acked, []
        refused, self._refused = self._refused, []
        spool = self.spool
        if spool is None:
            if refused:
                self._lose(len(refused), "spool_unavailable")
            return
        try:
            await self._io(spool.settle, acked, refused, now=self._clock())
        except SinkError as exc:
            self.spool_errors += 1
            # Not deleted: they are replayed again next time (a duplicate, never a loss).
            log.error("spool_remove_failed", messages=len(acked), dead_letters=len(refused), error=str(exc))

    def _finish_episode(self) -> None:
        self._spooled.clear()
        log.info(
            "spool_replay_done",
            replayed=self.replayed_total,
            dropped_by_cap=self._cap_episode_dropped,
            dropped=dict(self.dropped_by_reason),
        )
        self._cap_episode_dropped = 0
        self._episode_reasons.clear()

    # ----------------------------------------------------------------------------------- close

    def divert_to_spool(self) -> None:
        """From now on ``forward`` writes straight to the spool (the stop is out of time for the broker)."""
        self._window_wait_s = -1.0

    async def keep_unacked(self) -> None:
        """After the sink is closed: spool what it still holds unacknowledged, delete acked replays."""
        sink = self._require_sink()
        await self.store(sink.unacked())
        live, self._live_records = self._live_records, {}
        for topic, payload, _ in live.values():  # event records the sink still held (published with a handle)
            await self._store_record(topic, payload)
        await self._flush_acks()
        if self.spool is not None and self.spool.count:
            log.info("spool_kept_for_next_start", messages=self.spool.count, bytes=self.spool.size_bytes)

    async def close(self) -> None:
        """Close the spool database and the worker thread."""
        if self.spool is not None:
            await self._io(self.spool.close)
        self._executor.shutdown(wait=True)

    def _require_sink(self) -> Sink:
        if self._sink is None:
            raise SinkError("StoreAndForward used before bind(sink)")
        return self._sink


def _settle(future: asyncio.Future[Delivery], outcome: Delivery) -> None:
    if not future.done():
        future.set_result(outcome)
