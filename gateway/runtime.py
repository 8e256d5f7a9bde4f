"""The runtime owns every task: sources -> bounded queue -> MQTT sink; supervision and graceful stop.

Shape of a run::

    device sources (one task per connection, supervised) --emit--> DeviceOutbound.messages
        --> bounded asyncio.Queue[list[Message]] --> publish task --> MqttSink (QoS1, PUBACK-tracked)
    report_link --> retained _status per device --> MqttSink.set_retained (restored after every reconnect)

Stop stages (each with a time budget, sum below systemd's TimeoutStopSec): stop sources, drain the queue,
close the sink (publish offline, wait for PUBACKs, disconnect).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from gateway import __version__
from gateway.assembly import DeviceLink, active_devices, build_outbound, build_sources, mqtt_options_for
from gateway.errors import SinkError
from gateway.outbound import DeviceOutbound, Message
from gateway.queueing import MessageQueue
from gateway.schema import encode_gateway_status, gateway_status_topic
from gateway.sinks.mqtt import MqttSink
from gateway.sources.base import RawReading
from gateway.tagmap import Plant

log = structlog.get_logger("cellgate.runtime")

# Stop budgets in seconds. Their sum must stay below systemd's TimeoutStopSec (see systemd/cellgate.service).
STOP_SOURCES_BUDGET_S = 2.0
DRAIN_QUEUE_BUDGET_S = 3.0
CLOSE_SINK_BUDGET_S = 3.0

SUPERVISOR_BACKOFF_MIN_S = 1.0
SUPERVISOR_BACKOFF_MAX_S = 60.0


@dataclass(slots=True)
class RuntimeCounters:
    """Numbers an operator wants to see; logged at stop and (later) exported as metrics."""

    messages_queued: int = 0
    messages_rejected_by_sink: int = 0
    source_restarts: int = 0
    messages_dropped_at_stop: int = 0
    per_device_messages: dict[str, int] = field(default_factory=dict)


class _DeviceChannel:
    """Glue for one device: raw readings -> messages -> queue, link changes -> retained status."""

    def __init__(
        self,
        *,
        outbound: DeviceOutbound,
        queue: MessageQueue[Message],
        counters: RuntimeCounters,
        on_status: Callable[[Message], None],
        clock: Callable[[], float],
    ) -> None:
        self.outbound = outbound
        self._queue = queue
        self._counters = counters
        self._on_status = on_status
        self._clock = clock
        self.connected: bool | None = None
        self.error: str | None = None

    async def emit(self, readings: Sequence[RawReading]) -> None:
        messages = self.outbound.messages(readings, self._clock())
        if not messages:
            return
        await self._queue.put(messages)
        self._counters.messages_queued += len(messages)
        name = self.outbound.device
        self._counters.per_device_messages[name] = self._counters.per_device_messages.get(name, 0) + len(messages)

    def report_link(self, connected: bool, error: str | None) -> None:
        if connected == self.connected and error == self.error:
            return
        self.connected = connected
        self.error = error
        log.info(
            "device_link",
            device=self.outbound.device,
            connected=connected,
            error=error,
        )
        self._on_status(self.outbound.status_message(connected=connected, since=self._clock(), error=error))


class Gateway:
    """Runs one tag map until ``stop`` is set. Build it, then ``await gateway.run(stop)``."""

    def __init__(self, plant: Plant, *, clock: Callable[[], float] = time.time) -> None:
        self.plant = plant
        self.counters = RuntimeCounters()
        self._clock = clock
        self._queue: MessageQueue[Message] = MessageQueue(plant.gateway.queue_size)
        self._outbounds: list[DeviceOutbound] = [build_outbound(plant, device) for device in active_devices(plant)]
        self._channels: dict[str, _DeviceChannel] = {}

    # ------------------------------------------------------------------------------------- publish

    async def _publish_queue(self, sink: MqttSink) -> None:
        while True:
            messages = await self._queue.get()
            try:
                await sink.publish_many([(m.topic, m.payload) for m in messages])
            except SinkError as exc:
                # The sink refused part of a batch (e.g. paho's own queue full): count it and keep running;
                # one bad hand-over must never stop the gateway. (Part of the batch may have gone out.)
                self.counters.messages_rejected_by_sink += len(messages)
                log.error("sink_rejected_batch", messages=len(messages), error=str(exc))

    async def _drain_queue(self, sink: MqttSink) -> None:
        while (messages := self._queue.get_nowait()) is not None:
            await sink.publish_many([(m.topic, m.payload) for m in messages])

    # --------------------------------------------------------------------------------- supervision

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]], channels: list[_DeviceChannel]) -> None:
        """Run a source; if it dies, mark its devices disconnected and restart it with capped backoff."""
        backoff = SUPERVISOR_BACKOFF_MIN_S
        while True:
            started = self._clock()
            try:
                await run()
                log.warning("source_returned", source=name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a source must never take the gateway down with it
                log.error("source_crashed", source=name, error=repr(exc), exc_info=exc)
                for channel in channels:
                    channel.report_link(False, f"source crashed: {exc!r}")
                    await channel.emit(channel.outbound.link_lost_readings(self._clock()))
            self.counters.source_restarts += 1
            if self._clock() - started > SUPERVISOR_BACKOFF_MAX_S:
                backoff = SUPERVISOR_BACKOFF_MIN_S
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, SUPERVISOR_BACKOFF_MAX_S)

    # ----------------------------------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> None:
        plant = self.plant
        status_topic = gateway_status_topic(
            enterprise=plant.gateway.enterprise, site=plant.gateway.site, gateway_id=plant.gateway.id
        )
        started = self._clock()

        def status_payload(online: bool) -> bytes:
            return encode_gateway_status(online=online, gateway_id=plant.gateway.id, ts=started, version=__version__)

        options = mqtt_options_for(
            plant, will_topic=status_topic, will_payload=status_payload(False), online_payload=status_payload(True)
        )
        log.info(
            "gateway_starting",
            gateway=plant.gateway.id,
            devices=len(self._outbounds),
            tags=sum(len(outbound.tag_names) for outbound in self._outbounds),
            broker=f"{options.host}:{options.port}",
        )
        sink = MqttSink(options)
        async with sink:
            for outbound in self._outbounds:
                channel = _DeviceChannel(
                    outbound=outbound,
                    queue=self._queue,
                    counters=self.counters,
                    # Retained: the sink publishes it now (if connected) and again after every reconnect.
                    on_status=lambda message: sink.set_retained(message.topic, message.payload),
                    clock=self._clock,
                )
                self._channels[outbound.device] = channel
                meta = outbound.meta_message()
                sink.set_retained(meta.topic, meta.payload)
                channel.report_link(False, "connecting")

            links = {name: DeviceLink(emit=ch.emit, report_link=ch.report_link) for name, ch in self._channels.items()}
            sources = build_sources(plant, links)
            async with asyncio.TaskGroup() as group:
                publish_task = group.create_task(self._publish_queue(sink), name="sink.publish")
                source_tasks = [
                    group.create_task(
                        self._supervise(source.name, source.run, [self._channels[d] for d in source.devices]),
                        name=source.name,
                    )
                    for source in sources
                ]
                log.info("gateway_running", sources=len(source_tasks))
                await stop.wait()
                log.info("gateway_stopping")
                await cancel_until_done(source_tasks, budget_s=STOP_SOURCES_BUDGET_S)
                await cancel_until_done([publish_task], budget_s=STOP_SOURCES_BUDGET_S)
            try:
                await asyncio.wait_for(self._drain_queue(sink), DRAIN_QUEUE_BUDGET_S)
            except TimeoutError:
                self.counters.messages_dropped_at_stop = len(self._queue)
                log.warning("stop_drain_timeout", dropped=self.counters.messages_dropped_at_stop)
            await sink.close(timeout_s=CLOSE_SINK_BUDGET_S)
        log.info(
            "gateway_stopped",
            messages_queued=self.counters.messages_queued,
            queue_full_waits=self._queue.full_waits,
            delivered=sink.delivered,
            rejected_by_sink=self.counters.messages_rejected_by_sink,
            source_restarts=self.counters.source_restarts,
        )


async def cancel_until_done(tasks: Sequence[asyncio.Task[None]], *, budget_s: float) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again until every one has ended.

    On Python 3.11 ``asyncio.wait_for`` (used inside asyncua and pymodbus) can swallow a cancellation that
    arrives in the same loop step as its result (CPython gh-86296), and the task then runs on. One cancel is
    therefore not enough to stop a source for sure; repeating it is. Past ``budget_s`` this logs once and
    keeps trying, because the TaskGroup that owns the tasks cannot exit before they end.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    pending = {task for task in tasks if not task.done()}
    warned = False
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.2)
        if pending and not warned and loop.time() > deadline:
            warned = True
            log.warning("stop_tasks_slow", tasks=sorted(task.get_name() for task in pending), budget_s=budget_s)
