"""The handshake loop of one device's events: trigger -> record -> store-and-forward -> PUBACK -> ack write.

Timing, per event, one step after the other (so a record is never acknowledged before the broker has it)::

    every interval_ms:  read the trigger tag
    trigger fires   ->  read the record (Modbus: one read per contiguous block; OPC UA: one Read call)
                    ->  publish it (QoS 1, through store-and-forward: live, or spooled while the broker is away)
                    ->  wait for the broker's PUBACK of that message (live or replayed from the spool)
                    ->  write the record's ack value to the ack tag (audit line ``plc_write``, counted)

While a record waits for its PUBACK nothing else of this device's events is read: the PLC holds the next
records in its FIFO. A write that fails (timeout, link lost, PLC error) leaves the record unacknowledged; the
trigger is then read afresh, so the record still presented is read and published again (subscribers drop the
duplicate by ``record_id``). Nothing is written but the declared ack tags, and only values within their type
and range.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from gateway.backoff import paced
from gateway.errors import SourceError
from gateway.events.core import (
    EventRecord,
    RecordField,
    TriggerState,
    WriteResult,
    ack_int,
    ack_value_problem,
    build_record,
)
from gateway.schema import Quality
from gateway.sinks.base import Delivery
from gateway.sources.base import PollSchedule, RawReading
from gateway.sources.reconnect import AGAIN, Reconnect, ReconnectPolicy, Step
from gateway.tagmap.events import TriggerOn
from gateway.vocabulary import DataType

log = structlog.get_logger("cellgate.events")


PublishRecord = Callable[[EventRecord], Awaitable["asyncio.Future[Delivery]"]]
"""Hands a record to store-and-forward; the future resolves once its fate is known."""


class EventLinkError(SourceError):
    """The connection to the PLC failed (connect, timeout, link lost): reconnect."""


class EventLoginRefusedError(EventLinkError):
    """The PLC refused the link's user identity: logged at every attempt (accounts lock after a few failures)."""


class EventReadError(SourceError):
    """The PLC refused a read (Modbus exception, OPC UA Bad status on the call): try again next interval."""


class PlcLink(Protocol):
    """The events' own connection to the PLC (``modbus_link``, ``opcua_link``)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self, tags: Sequence[str]) -> Mapping[str, RawReading]:
        """Read ``tags`` together; raises EventLinkError or EventReadError."""
        ...

    async def write(self, tag: str, value: int) -> tuple[WriteResult, str | None]:
        """Write ``value`` to ``tag`` (an ack tag); the result and, when not ok, why."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AckPlan:
    tag: str
    field: str
    """The record field whose value is written."""
    type: DataType
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedEvent:
    name: str
    trigger_tag: str
    trigger_on: TriggerOn
    fields: tuple[RecordField, ...]
    record_id: str | None
    ack: AckPlan | None

    @property
    def record_tags(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(entry.tag for entry in self.fields))


@dataclass(slots=True)
class EventStats:
    """Counters of one device's events (read by metrics; never reset)."""

    records: dict[str, int] = field(default_factory=dict)
    """Records handed to store-and-forward, by event."""
    writes: dict[str, int] = field(default_factory=dict)
    """Ack writes by result (``WriteResult``)."""
    acked_ids: int = 0


class EventRunner:
    """Runs the events of one device until cancelled (see the module docstring)."""

    def __init__(
        self,
        *,
        device: str,
        events: Sequence[PlannedEvent],
        link: PlcLink,
        publish: PublishRecord,
        interval_s: float,
        stats: EventStats | None = None,
        clock: Callable[[], float] = time.time,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
    ) -> None:
        self.device = device
        self.events = tuple(events)
        self.stats = stats if stats is not None else EventStats()
        self._link = link
        self._publish = publish
        self._interval_s = interval_s
        self._clock = clock
        self._reconnect = Reconnect(ReconnectPolicy(min_s=reconnect_min_s, max_s=reconnect_max_s))
        self._log = log.bind(device=device)
        self._read_problem: str | None = None
        self._undelivered: Delivery | None = None  # the last outcome logged as not delivered (once per change)

    async def run(self) -> None:
        """Connect, serve, reconnect on loss (a tenacity run: ``gateway.backoff.paced``); ends only by cancellation."""
        await paced()(self._connection)

    async def _connection(self) -> Step:
        """One attempt: connect and serve until the link fails; the step says how long to wait before the next."""
        loop = asyncio.get_running_loop()
        try:
            await self._link.connect()
        except EventLinkError as exc:
            step = self._reconnect.connect_failed(loop.time(), str(exc), random.random())
            if isinstance(exc, EventLoginRefusedError):  # every attempt: real servers lock accounts
                self._log.warning("events_login_refused", error=str(exc), attempt=step.attempts,
                                  retry_in_s=round(step.delay_s, 3))  # fmt: skip
            elif step.log is not None:  # the first failure of a streak, then a summary a minute
                self._log.warning("events_link_down", error=str(exc), attempts=step.attempts,
                                  retry_in_s=round(step.delay_s, 3))  # fmt: skip
            return step
        self._reconnect.connected(loop.time())
        self._log.info("events_link_up", events=[event.name for event in self.events])
        states = {event.name: TriggerState(event.trigger_on) for event in self.events}
        try:
            await self._serve(states)
        except EventLinkError as exc:
            step = self._reconnect.lost(loop.time(), str(exc), random.random())
            self._log.warning("events_link_down", error=str(exc), retry_in_s=round(step.delay_s, 3))
            return step
        finally:
            await self._link.close()
        return AGAIN

    async def _serve(self, states: Mapping[str, TriggerState]) -> None:
        loop = asyncio.get_running_loop()
        schedule = PollSchedule(interval_s=self._interval_s, deadline=loop.time())
        while True:
            fired = False
            for event in self.events:
                try:
                    fired |= await self._step(event, states[event.name])
                except EventReadError as exc:
                    states[event.name].forget()
                    if str(exc) != self._read_problem:  # once per change, not per interval
                        self._read_problem = str(exc)
                        self._log.warning("event_read_failed", event_name=event.name, error=str(exc))
            if not self._reconnect.stable:
                self._reconnect.answered(loop.time())  # the link works: a later loss reconnects at once
            schedule.after_cycle(loop.time())
            if fired:
                # A FIFO presents its next record as soon as the last one is acknowledged: read on at once, so a
                # backlog (after an outage) drains at the speed of the round trips, not one record per interval.
                schedule.deadline = loop.time()
                continue
            await asyncio.sleep(max(0.0, schedule.deadline - loop.time()))

    async def _step(self, event: PlannedEvent, state: TriggerState) -> bool:
        """One look at the trigger, and the record if it fired (True then)."""
        readings = await self._link.read((event.trigger_tag,))
        trigger = readings.get(event.trigger_tag)
        value = trigger.value if trigger is not None and trigger.quality is not Quality.BAD else None
        if not state.fires(value):
            return False
        readings = await self._link.read(event.record_tags)
        record = build_record(
            event=event.name, fields=event.fields, readings=readings, ts=self._clock(), record_id=event.record_id
        )
        if event.ack is not None and record.fields.get(event.ack.field) is None:
            # Without its id the record could never be acknowledged: read it again next interval.
            problem = record.problems.get(event.ack.field, "not read")
            raise EventReadError(f"{event.ack.field} of the record is unusable ({problem})")
        self._read_problem = None
        delivery = await self._publish(record)
        self.stats.records[event.name] = self.stats.records.get(event.name, 0) + 1
        if event.ack is None:
            return True
        outcome = await delivery
        if outcome is not Delivery.ACKED:
            if outcome is not self._undelivered:  # a lost record is tried again every interval: said once
                self._undelivered = outcome
                self._log.warning("event_record_not_delivered", event_name=event.name, record_id=record.record_id,
                                  outcome=str(outcome), action="not acknowledged to the PLC")  # fmt: skip
            if outcome is Delivery.LOST:
                state.forget()
            return False
        self._undelivered = None
        await self._acknowledge(event, event.ack, record, state)
        return True

    async def _acknowledge(self, event: PlannedEvent, ack: AckPlan, record: EventRecord, state: TriggerState) -> None:
        value = record.fields.get(ack.field)
        problem = ack_value_problem(value, ack.type, minimum=ack.minimum, maximum=ack.maximum)
        if problem is not None or value is None:
            self._count(WriteResult.REFUSED)
            self._log.error("plc_write", tag=ack.tag, value=value, result=str(WriteResult.REFUSED), error=problem,
                            event_name=event.name, record_id=record.record_id)  # fmt: skip
            return
        written = ack_int(value, ack.type)
        result, error = await self._link.write(ack.tag, written)
        self._count(result)
        if result is WriteResult.OK:
            self.stats.acked_ids += 1
            self._log.info("plc_write", tag=ack.tag, value=written, result=str(result), event_name=event.name,
                           record_id=record.record_id)  # fmt: skip
            return
        self._log.warning("plc_write", tag=ack.tag, value=written, result=str(result), error=error,
                          event_name=event.name, record_id=record.record_id)  # fmt: skip
        state.forget()  # the record is still presented: read and published again, then acknowledged
        if result is WriteResult.FAILED:
            raise EventLinkError(error or "ack write failed")

    def _count(self, result: WriteResult) -> None:
        self.stats.writes[str(result)] = self.stats.writes.get(str(result), 0) + 1
