"""Store and forward: live messages go to the broker when it can take them, to the spool when it cannot.

::

    forward(messages) --connected, window slot within window_wait_s--> MqttSink (live)
                      \\--otherwise (broker down, window stuck, shutdown)--> Spool (marked historical)
    replay task: Spool oldest first --free window slot only, at most replay_per_s--> MqttSink
                 PUBACK --> removed from the spool

Live data always has the window first: a replay takes a slot only when one is free at that moment, and
the live path never waits behind a replay. Within each topic the spool keeps arrival order, so
historical messages arrive in order among themselves; they may interleave with newer live ones (the
``historical`` flag and ``seq`` say which is which).

All spool I/O runs on one worker thread (SQLite is blocking), so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import structlog

from gateway.errors import SinkError
from gateway.schema import mark_historical
from gateway.sinks.mqtt import MqttSink
from gateway.sinks.spool import SeqCheckpoint, Spool, SpooledMessage

log = structlog.get_logger("cellgate.spool")

P = ParamSpec("P")
R = TypeVar("R")

REPLAY_CHUNK = 500
"""Messages read from the spool per query while replaying."""
REPLAY_SLOT_POLL_S = 0.002
"""How long a replay waits before looking for a free window slot again."""
ACK_FLUSH_S = 0.5
"""Acknowledged replays are deleted from the spool in groups, at least this often."""


class StoreAndForward:
    """Owns the spool side of the sink. Create it, then ``bind(sink)`` before the first ``forward``.

    ``window_wait_s``: how long a live message may wait for an in-flight slot before it goes to the spool.
    ``replay_per_s``: the most spooled messages replayed per second.
    """

    def __init__(self, spool: Spool, *, window_wait_s: float, replay_per_s: float) -> None:
        if window_wait_s < 0 or replay_per_s <= 0:
            raise ValueError("need window_wait_s >= 0 and replay_per_s > 0")
        self.spool = spool
        self._window_wait_s = window_wait_s
        self._replay_interval_s = 1.0 / replay_per_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cellgate-spool")
        self._sink: MqttSink | None = None
        self._spooled = asyncio.Event()  # set while the spool may hold messages to replay
        if spool.count:
            self._spooled.set()
        self._cursor = 0  # highest spool id handed to the sink in this run
        self._next_replay_at = 0.0  # monotonic time the next replay may go out (rate limit)
        self._acked: list[int] = []
        self._replays_in_flight = 0
        self._cap_episode_dropped = 0
        self.spooled_total = 0
        """Live messages written to the spool in this run."""
        self.replayed_total = 0
        """Spooled messages acknowledged by the broker in this run."""
        self.spool_errors = 0

    # ---------------------------------------------------------------------------------- set-up

    def bind(self, sink: MqttSink) -> None:
        self._sink = sink

    def on_spool_ack(self, spool_id: int, ok: bool) -> None:
        """The sink's ``on_spool_ack``: a replayed message was acknowledged (or refused: dropped too)."""
        self._replays_in_flight -= 1
        self._acked.append(spool_id)
        if ok:
            self.replayed_total += 1

    async def _io(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: call(*args, **kwargs))

    async def load_seq(self) -> SeqCheckpoint:
        return await self._io(self.spool.load_seq)

    async def save_seq(self, last_seq: Mapping[str, int], *, now: float, clean: bool) -> None:
        try:
            await self._io(self.spool.save_seq, last_seq, now=now, clean=clean)
        except SinkError as exc:
            self.spool_errors += 1
            log.error("spool_seq_save_failed", error=str(exc))

    async def mark_running(self, *, now: float) -> None:
        await self._io(self.spool.mark_running, now=now)

    # ------------------------------------------------------------------------------------ live

    async def forward(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Hand ``messages`` to the broker, or whatever it cannot take now to the spool, in order."""
        sink = self._require_sink()
        taken = 0 if self._window_wait_s < 0 else await sink.offer_many(messages, wait_s=self._window_wait_s)
        if taken < len(messages):
            await self.store(messages[taken:])

    async def store(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Write live messages to the spool, marked historical. A spool failure is counted and logged."""
        if not messages:
            return
        rows = [(topic, mark_historical(payload)) for topic, payload in messages]
        try:
            dropped = await self._io(self.spool.append, rows)
        except SinkError as exc:
            self.spool_errors += len(rows)
            log.error("spool_write_failed", messages=len(rows), error=str(exc))
            return
        self.spooled_total += len(rows)
        self._spooled.set()
        if dropped:
            if not self._cap_episode_dropped:
                log.warning(
                    "spool_full_dropping_oldest",
                    max_mb=round(self.spool.max_bytes / 1e6, 3),
                    dropped=dropped,
                )
            self._cap_episode_dropped += dropped

    # ---------------------------------------------------------------------------------- replay

    async def replay(self) -> None:
        """Run forever: whenever connected, replay the spool oldest first. Cancel to stop."""
        sink = self._require_sink()
        self._next_replay_at = time.monotonic()
        while True:
            await self._spooled.wait()
            if not sink.connected:
                await sink.until_connected()
                log.info("spool_replay_starting", spooled=self.spool.count)
            rows = await self._io(self.spool.oldest, after_id=self._cursor, limit=REPLAY_CHUNK)
            if not rows:
                await self._flush_acks()
                if self._replays_in_flight <= 0 and self.spool.count == 0:
                    self._finish_episode()
                else:
                    await asyncio.sleep(ACK_FLUSH_S / 5)  # acknowledgements still to come
                continue
            last_flush = time.monotonic()
            for row in rows:
                if not await self._replay_one(sink, row):
                    break  # disconnected: wait for the next connection
                if time.monotonic() - last_flush > ACK_FLUSH_S:
                    last_flush = time.monotonic()
                    await self._flush_acks()

    async def _replay_one(self, sink: MqttSink, row: SpooledMessage) -> bool:
        """Send one spooled message at the replay rate, into a free window slot; False if disconnected."""
        now = time.monotonic()
        if self._next_replay_at > now:
            await asyncio.sleep(self._next_replay_at - now)
        # Never bank more than a second of unused rate (after a pause the replay would burst).
        self._next_replay_at = max(self._next_replay_at + self._replay_interval_s, time.monotonic() - 1.0)
        while not sink.try_replay(row.id, row.topic, row.payload):
            if not sink.connected:
                return False
            await asyncio.sleep(REPLAY_SLOT_POLL_S)
        self._cursor = row.id
        self._replays_in_flight += 1
        return True

    async def _flush_acks(self) -> None:
        if not self._acked:
            return
        acked, self._acked = self._acked, []
        try:
            await self._io(self.spool.remove, acked)
        except SinkError as exc:
            self.spool_errors += 1
            log.error("spool_remove_failed", messages=len(acked), error=str(exc))

    def _finish_episode(self) -> None:
        self._spooled.clear()
        log.info(
            "spool_replay_done",
            replayed=self.replayed_total,
            dropped_by_cap=self._cap_episode_dropped,
        )
        self._cap_episode_dropped = 0

    # ----------------------------------------------------------------------------------- close

    def divert_to_spool(self) -> None:
        """From now on ``forward`` writes straight to the spool (the stop is out of time for the broker)."""
        self._window_wait_s = -1.0

    async def keep_unacked(self) -> None:
        """After the sink is closed: spool what it still holds unacknowledged, delete acked replays."""
        sink = self._require_sink()
        await self.store(sink.unacked())
        await self._flush_acks()
        if self.spool.count:
            log.info("spool_kept_for_next_start", messages=self.spool.count, bytes=self.spool.size_bytes)

    async def close(self) -> None:
        """Close the spool database and the worker thread."""
        await self._io(self.spool.close)
        self._executor.shutdown(wait=True)

    def _require_sink(self) -> MqttSink:
        if self._sink is None:
            raise SinkError("StoreAndForward used before bind(sink)")
        return self._sink
