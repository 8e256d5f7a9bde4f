"""The runtime owns every task: sources -> bounded queue -> store-and-forward -> MQTT sink / spool.

Shape of a run::

    device sources (one task per connection, supervised) --emit--> DeviceOutbound.messages
        (transform -> Samples -> the device's encoder, gateway.encoders: topics, payloads, seq)
        --> bounded MessageQueue --> publish task --> StoreAndForward --> MqttSink (QoS1, PUBACK-tracked)
                                                                     \\--> Spool (broker down, window stuck;
                                                                          the encoder's historical form)
    replay task: Spool --> MqttSink (free window slots only, rate-limited; acknowledged per handle)
    report_link --> retained _status per device --> MqttSink.set_retained (restored after every reconnect)
    checkpoint task: seq reservation --> state_dir/seq.{a,b}.json every SEQ_CHECKPOINT_S, per-topic snapshot
        --> state_dir/seq-snapshot.{a,b}.json every SNAPSHOT_PERIOD_S (exact at a clean stop)
    health task: systemd READY=1 / WATCHDOG=1 / STATUS= (gateway.health)

Reload planning is in gateway.reload, garbage-collector and heap tuning in gateway.process_tuning.

Signals are handled here (``serve``): SIGTERM/SIGINT stop, SIGHUP reloads the tag map.

Stop stages (each with a time budget, sum below systemd's TimeoutStopSec): stop sources, drain the queue
to the broker or the spool, close the sink (publish offline, wait for PUBACKs, disconnect), spool what is
still unacknowledged and save the seq numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from gateway import __version__
from gateway.assembly import DeviceLink, SourceTask, active_devices, build_outbound, build_sources, mqtt_options_for
from gateway.encoders.uns_json import UnsJsonEncoder
from gateway.errors import ConfigError, SinkError
from gateway.event_loop import running_loop_name
from gateway.events.core import EventRecord
from gateway.events.runner import EventStats
from gateway.health import HEALTH_INTERVAL_S, PipelineView, ProgressWatch, report_health
from gateway.http_server import OpsHttp, read_token, serve_http
from gateway.metrics import DeviceState, GatewayState, LinkEvent, SparkplugState, build_registry
from gateway.mqtt.connection import MqttSink
from gateway.notify import SystemdNotifier
from gateway.outbound import DeviceOutbound, Message, sink_pairs
from gateway.process_tuning import memory_usage_mb, release_freed_memory, settle_garbage_collector
from gateway.queueing import MessageQueue
from gateway.reload import PlantFingerprint, plan_reload, without_tags
from gateway.seq_reservation import SeqBudget, SeqFileStore, SeqReservations
from gateway.sinks.base import Delivery
from gateway.sinks.fanout import MqttOutput, mqtt_output
from gateway.sinks.spool import Spool
from gateway.sinks.store_forward import StoreAndForward, open_spool
from gateway.sources.base import RawReading
from gateway.state_dir import LOCK_FILE_NAME, locked_state_dir
from gateway.supervisor import supervise
from gateway.tagmap import Plant
from gateway.tagmap.model import Output
from gateway.vocabulary import PublishMode

if TYPE_CHECKING:  # protobuf is imported only by gateways that publish Sparkplug
    from gateway.sparkplug_session import SparkplugSession

log = structlog.get_logger("cellgate.runtime")

# Stop budgets in seconds. Their sum must stay below systemd's TimeoutStopSec (see systemd/cellgate.service).
STOP_SOURCES_BUDGET_S = 2.0
DRAIN_QUEUE_BUDGET_S = 3.0
CLOSE_SINK_BUDGET_S = 3.0

GATEWAY_STOPPED_ERROR = "gateway stopped"
"""The ``error`` of every equipment's retained ``_status`` after a clean stop."""

LINK_EVENTS_KEPT = 20
"""Device link changes the status page lists."""

SEQ_CHECKPOINT_S = 5.0
"""How often the seq reservation is renewed while running (see gateway.seq_reservation)."""


@dataclass(slots=True)
class RuntimeCounters:
    """Numbers an operator wants to see; logged at stop."""

    messages_queued: int = 0
    messages_rejected_by_sink: int = 0
    source_restarts: int = 0
    batches_forwarded: int = 0
    reloads: int = 0
    reloads_rejected: int = 0
    per_device_messages: dict[str, int] = field(default_factory=dict)


def paced_reads(outbound: DeviceOutbound) -> bool:
    """Whether the device's polls may be emitted in parts (see ``sources.base.HoldBack``): one message per value
    (a ``_batch`` message or a DDATA is one poll), no context (a sample carries its poll's context tags)."""
    return outbound.mode is PublishMode.TAG and outbound.sparkplug is None and outbound.context is None


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
        gateway_id: str,
        seq_budget: SeqBudget,
        events: deque[LinkEvent],
        forward_record: Callable[[str, bytes], Awaitable[asyncio.Future[Delivery]]] | None = None,
    ) -> None:
        self.outbound = outbound
        self.event_stats = EventStats()
        self._forward_record = forward_record
        self._events = events
        self.tags = len(outbound.tag_names)
        self.last_message_at: float | None = None
        self.source_stats: object | None = None
        """The source's counters for this device, read at metrics scrapes (see DeviceLink.show_stats)."""
        self._gateway_id = gateway_id
        self._seq_budget = seq_budget
        self._queue = queue
        self._counters = counters
        self._on_status = on_status
        self._clock = clock
        self.connected: bool | None = None
        self.error: str | None = None
        self._since = clock()
        # Sparkplug DBIRTH/DDEATH: they go out ahead of the next data of the device, on the queue the data takes.
        self._link_messages: list[Message] = []
        self._flushes: set[asyncio.Task[None]] = set()
        self._emitting = 0

    @property
    def since(self) -> float:
        return self._since

    async def emit(self, readings: Sequence[RawReading]) -> None:
        if self.outbound.sparkplug is None:
            await self._emit(readings)
            return
        # Sparkplug: a DBIRTH/DDEATH goes after the data encoded before it and before the data encoded after it.
        self._emitting += 1
        try:
            await self._emit(readings)
        finally:
            self._emitting -= 1
        if self._link_messages and not self._emitting:
            await self._queue.put_unbounded(self._take_link_messages())

    async def _emit(self, readings: Sequence[RawReading]) -> None:
        # No seq number goes out before a durable reservation covers it (waits only when the budget is spent).
        budget = self._seq_budget
        need = self.outbound.seq_need(readings)
        await budget.take(need)
        now = self._clock()
        messages = self.outbound.messages(readings, now)
        budget.left += need - len(messages)
        if self._link_messages:
            messages = self._take_link_messages() + messages
        if not messages:
            return
        if self.connected:
            self.last_message_at = now  # a good read: not the bad readings sent while the link is down
        await self._queue.put(messages)
        self._counters.messages_queued += len(messages)
        name = self.outbound.device
        self._counters.per_device_messages[name] = self._counters.per_device_messages.get(name, 0) + len(messages)

    async def publish_record(self, record: EventRecord) -> asyncio.Future[Delivery]:
        """Number one event record and hand it to store-and-forward; the future resolves at its PUBACK."""
        assert self._forward_record is not None, "a running gateway gives every channel store-and-forward"
        await self._seq_budget.take(1)
        message = self.outbound.record_message(record)
        return await self._forward_record(message.topic, message.payload)

    def report_link(self, connected: bool, error: str | None) -> None:
        if connected == self.connected and error == self.error:
            return
        if connected != self.connected:
            self._since = self._clock()  # "since" is when the link changed, not when its error text did
        self.connected = connected
        self.error = error
        self._events.append(LinkEvent(self._clock(), self.outbound.device, connected, error))
        log.info("device_link", device=self.outbound.device, connected=connected, error=error)
        sparkplug = self.outbound.sparkplug
        if sparkplug is not None and connected != sparkplug.alive:
            message = sparkplug.link_changed(connected=connected, now=self._clock())
            if message is not None:
                self._link_messages.append(message)
                task = asyncio.get_running_loop().create_task(self._flush_link_messages())
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)
        if self.outbound.retained_status:
            self._on_status(
                self.outbound.status_message(
                    connected=connected, since=self._since, error=error, gateway=self._gateway_id
                )
            )

    def _take_link_messages(self) -> list[Message]:
        messages, self._link_messages = self._link_messages, []
        return messages

    async def _flush_link_messages(self) -> None:
        """Queue the link messages no data took along (a DDEATH: nothing follows it); an emit under way queues them
        itself once its data is queued."""
        if self._link_messages and not self._emitting:
            await self._queue.put_unbounded(self._take_link_messages())

    def link(self) -> DeviceLink:
        return DeviceLink(emit=self.emit, report_link=self.report_link, show_stats=self._show_stats,
                          publish_record=self.publish_record, event_stats=self.event_stats,
                          backlog=self._queue, paced_reads=paced_reads(self.outbound))  # fmt: skip

    def _show_stats(self, stats: object) -> None:
        self.source_stats = stats


@dataclass(frozen=True, slots=True)
class _RunningSource:
    task: asyncio.Task[None]
    devices: frozenset[str]


class Gateway:
    """Runs one tag map until ``stop`` is set. Build it, then ``await gateway.run(stop)``.

    ``state_dir`` holds the spool (unless the tag map's ``spool.path`` says otherwise) and a lock file so
    two gateways never share one spool. ``reload(plant)`` applies a new tag map while running.
    """

    def __init__(
        self,
        plant: Plant,
        *,
        state_dir: Path,
        clock: Callable[[], float] = time.time,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.plant = plant
        """The tag map while starting; once running, the same without its tags (see PlantFingerprint)."""
        self.fingerprint = PlantFingerprint.of(plant)
        self.state_dir = state_dir
        self.counters = RuntimeCounters()
        self._clock = clock
        self._notifier = notifier
        self._queue: MessageQueue[Message] = MessageQueue(plant.gateway.queue_size)
        self._channels: dict[str, _DeviceChannel] = {}
        self._links: dict[str, DeviceLink] = {}
        self._sources: dict[str, _RunningSource] = {}
        self._reloads: asyncio.Queue[Plant] = asyncio.Queue()
        self._stopping = False
        self._sink: MqttOutput | None = None
        self._forwarder: StoreAndForward | None = None
        self._state_dir_used = False
        self._events: deque[LinkEvent] = deque(maxlen=LINK_EVENTS_KEPT)
        self._started = clock()
        self._progress = ProgressWatch(self._pipeline_view())
        # The seq slots and Sparkplug's bdSeq: small files written with one reserve (still written on a full disk).
        self._state_files = SeqFileStore(state_dir)
        self._seq = SeqReservations(self._state_files, snapshot=self._seq_snapshot_by_device, period_s=SEQ_CHECKPOINT_S)
        self._sparkplug: SparkplugSession | None = None
        self._uns_json: UnsJsonEncoder | None = None

    @property
    def outbounds(self) -> list[DeviceOutbound]:
        return [channel.outbound for channel in self._channels.values()]

    @property
    def source_tasks(self) -> dict[str, asyncio.Task[None]]:
        """The running source tasks by name (e.g. ``modbus[127.0.0.1:502]``, ``opcua[coater-01]``)."""
        return {name: running.task for name, running in self._sources.items()}

    def reload(self, plant: Plant) -> None:
        """Apply ``plant`` while running: restart only the devices that changed (see ``plan_reload``)."""
        self._reloads.put_nowait(plant)

    # ------------------------------------------------------------------------------------- publish

    async def _publish_queue(self, forwarder: StoreAndForward) -> None:
        """Move batches from the queue to the broker or the spool until an empty batch marks the stop."""
        while True:
            messages = await self._queue.get()
            if not messages:
                return  # the stop marker: everything queued before it has been handed on
            try:
                await forwarder.forward(sink_pairs(messages))
            except SinkError as exc:
                # The sink refused part of a batch (e.g. paho's own queue full): count it and keep running;
                # one bad hand-over must never stop the gateway. (Part of the batch may have gone out.)
                self.counters.messages_rejected_by_sink += len(messages)
                log.error("sink_rejected_batch", messages=len(messages), error=str(exc))
            self.counters.batches_forwarded += 1

    async def _checkpoint_seq(self) -> None:
        while True:
            await asyncio.sleep(SEQ_CHECKPOINT_S)
            await self._seq.checkpoint()

    def _seq_snapshot(self) -> dict[str, int]:
        snapshot: dict[str, int] = {}
        for outbound in self.outbounds:
            snapshot.update(outbound.seq_snapshot())
        return snapshot

    def _seq_snapshot_by_device(self) -> dict[str, dict[str, int]]:
        return {outbound.device: outbound.seq_snapshot() for outbound in self.outbounds}

    def _restore_seq(self, outbound: DeviceOutbound) -> None:
        outbound.restore_seq(self._seq.claim(outbound.seq_topics))

    # ---------------------------------------------------------------------------------- health

    def _pipeline_view(self) -> PipelineView:
        channels = self._channels

        def devices() -> tuple[int, int]:
            return sum(1 for channel in channels.values() if channel.connected), len(channels)

        return PipelineView(
            devices=devices, forwarded=lambda: self.counters.batches_forwarded, queued=lambda: len(self._queue)
        )

    async def _report_health(self, sink: MqttOutput, forwarder: StoreAndForward) -> None:
        if self._notifier is None:
            # No systemd: still sample progress regularly, so /readyz judges a stall as the watchdog would.
            while True:
                self._progress.stalled_s()
                await asyncio.sleep(HEALTH_INTERVAL_S)
        pipeline = self._pipeline_view()
        await report_health(self._notifier, pipeline=pipeline, sink=sink, forwarder=forwarder, watch=self._progress)

    def state(self) -> GatewayState:
        """A snapshot for metrics, /readyz and the status page (only valid while running)."""
        sink, forwarder = self._sink, self._forwarder
        assert sink is not None
        assert forwarder is not None
        spool = forwarder.spool
        failed = {**forwarder.lost_by_reason, **forwarder.refused_by_reason}
        if self.counters.messages_rejected_by_sink:
            failed["sink_rejected"] = self.counters.messages_rejected_by_sink
        per_device = self.counters.per_device_messages
        return GatewayState(
            gateway_id=self.plant.gateway.id,
            version=__version__,
            started=self._started,
            now=self._clock(),
            devices=tuple(
                DeviceState(
                    name=name,
                    protocol=channel.outbound.protocol,
                    connected=channel.connected,
                    since=channel.since,
                    error=channel.error,
                    tags=channel.tags,
                    messages=per_device.get(name, 0),
                    last_message_at=channel.last_message_at,
                    source_stats=channel.source_stats,
                    samples=channel.outbound.sample_counts,
                )
                for name, channel in self._channels.items()
            ),
            queue_messages=len(self._queue),
            queue_age_s=self._queue.backlog_age_s(),
            queue_capacity=self.plant.gateway.queue_size,
            messages_queued=self.counters.messages_queued,
            mqtt_connected=sink.connected,
            broker=sink.broker,
            brokers=sink.brokers,
            inflight=sink.in_flight,
            mqtt_window=sink.window,
            published=sink.delivered,
            failed_by_reason=failed,
            spool_available=spool is not None,
            spool_messages=forwarder.spooled_now,
            spool_bytes=spool.size_bytes if spool is not None else 0,
            spool_max_bytes=spool.max_bytes if spool is not None else 0,
            spooled_total=forwarder.spooled_total,
            replayed_total=forwarder.replayed_total,
            spool_dropped_by_reason=forwarder.dropped_by_reason,
            source_restarts=self.counters.source_restarts,
            reloads=self.counters.reloads,
            stalled_s=self._progress.stalled_s(),
            events=tuple(self._events),
            event_records={(name, event): count for name, channel in self._channels.items()
                           for event, count in channel.event_stats.records.items()},
            plc_writes={(name, result): count for name, channel in self._channels.items()
                        for result, count in channel.event_stats.writes.items()},
            sparkplug=None if self._sparkplug is None else SparkplugState(
                bd_seq=self._sparkplug.node.bd_seq,
                rebirths=self._sparkplug.rebirths,
                commands_refused=self._sparkplug.commands_refused,
                commands_malformed=self._sparkplug.commands_malformed,
                replay_births=self._sparkplug.replay_births,
                dropped=dict(self._sparkplug.dropped),
            ),
        )  # fmt: skip

    async def _serve_http(self) -> None:
        settings = self.plant.http
        if settings.host_port is None:
            return
        try:
            token = read_token(settings.token_file)
        except (OSError, ValueError) as exc:
            # Fail closed: no listener rather than one without its token; data acquisition goes on.
            log.error("http_token_unreadable", token_file=settings.token_file, error=str(exc))
            return
        ops = OpsHttp(state=self.state, registry=build_registry(self.state), token=token)
        await serve_http(ops, *settings.host_port)

    # --------------------------------------------------------------------------------- supervision

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]], devices: Sequence[str]) -> None:
        """Run a source; if it dies, mark its devices disconnected and restart it with capped backoff."""

        async def crashed(exc: Exception) -> None:
            for device in devices:
                channel = self._channels.get(device)
                if channel is None:
                    continue
                channel.report_link(False, f"source crashed: {exc!r}")
                await channel.emit(channel.outbound.link_lost_readings(self._clock()))

        def restarted() -> None:
            self.counters.source_restarts += 1

        await supervise(name, run, on_crash=crashed, on_restart=restarted, clock=self._clock)

    def _start_source(self, group: asyncio.TaskGroup, source: SourceTask) -> None:
        reporting = source.devices if source.reports_link else ()
        task = group.create_task(self._supervise(source.name, source.run, reporting), name=source.name)
        self._sources[source.name] = _RunningSource(task, frozenset(source.devices))

    def _add_channel(self, sink: MqttOutput, outbound: DeviceOutbound) -> None:
        channel = _DeviceChannel(
            outbound=outbound,
            queue=self._queue,
            counters=self.counters,
            # Retained: the sink publishes it now (if connected) and again after every reconnect.
            on_status=lambda message: sink.set_retained(message.topic, message.payload),
            clock=self._clock,
            gateway_id=self.plant.gateway.id,
            seq_budget=self._seq.budget(outbound.device),
            events=self._events,
            forward_record=self._forwarder.forward_record if self._forwarder is not None else None,
        )
        self._channels[outbound.device] = channel
        self._links[outbound.device] = channel.link()
        if self._sparkplug is not None and outbound.sparkplug is not None:
            self._sparkplug.devices[outbound.device] = outbound.sparkplug
        for meta in outbound.meta_messages():
            sink.set_retained(meta.topic, meta.payload)
        channel.report_link(False, "connecting")

    # ---------------------------------------------------------------------------------- reload

    async def _apply_reload(self, group: asyncio.TaskGroup, sink: MqttOutput, new: Plant) -> None:
        new_fingerprint = await asyncio.to_thread(PlantFingerprint.of, new)
        # Planning a large map takes a second or more: do it off the event loop so polling goes on meanwhile.
        # Sources look their links up when they start, after the channels below exist.
        new_sources = await asyncio.to_thread(build_sources, new, self._links, pki_root=self.state_dir / "pki")
        wanted = {source.name: source for source in new_sources}
        plan = plan_reload(
            self.fingerprint,
            new_fingerprint,
            running={name: running.devices for name, running in self._sources.items()},
            wanted={name: frozenset(source.devices) for name, source in wanted.items()},
        )
        new_devices = {device.name: device for device in active_devices(new)}
        node = self._sparkplug.node if self._sparkplug is not None else None
        new_outbounds = await asyncio.to_thread(
            lambda: {name: build_outbound(new, new_devices[name], sparkplug=node) for name in plan.changed | plan.added}
        )
        if plan.sections_ignored:
            log.warning("reload_sections_need_restart", sections=list(plan.sections_ignored))
        await cancel_until_done([self._sources.pop(name).task for name in plan.sources_to_stop], budget_s=2.0)
        # Where every topic stands now, also those of devices about to go: a topic that comes back (or moves to
        # another device) continues after it.
        self._seq.remember(self._seq_snapshot())
        for name in plan.removed:
            channel = self._channels.pop(name)
            self._links.pop(name)
            if self._sparkplug is not None:
                self._sparkplug.retire(name)
                if channel.outbound.sparkplug is not None and channel.outbound.sparkplug.alive:
                    await self._queue.put_unbounded([channel.outbound.sparkplug.death(self._clock())])
            # A device no longer in the tag map leaves no retained status or catalogue behind.
            for topic in channel.outbound.retained_topics():
                sink.clear_retained(topic)
        for name in plan.changed | plan.added:
            outbound = new_outbounds[name]
            self._restore_seq(outbound)  # seq runs on across the change, and for a topic that changed device
            previous = self._channels.get(name)
            if previous is not None:
                outbound.sample_counts = previous.outbound.sample_counts  # counters run on across a reload
                old_device, new_device = previous.outbound.sparkplug, outbound.sparkplug
                if old_device is not None and new_device is not None:
                    # Sparkplug: the device is dead while its source restarts; the DBIRTH with the new metric set
                    # (kept tags keep their aliases and last values) follows when the link is up again.
                    new_device.adopt(old_device)
                    if old_device.alive:
                        await self._queue.put_unbounded([old_device.death(self._clock())])
                # A catalogue that shrank leaves no stale parts retained.
                kept = set(outbound.retained_topics())
                for topic in previous.outbound.retained_topics():
                    if topic not in kept:
                        sink.clear_retained(topic)
            self._add_channel(sink, outbound)
        # A topic can change device in a reload: every device renews its seq budget before its next message.
        self._seq.invalidate()
        self.plant = without_tags(new)
        self.fingerprint = new_fingerprint
        for name in plan.sources_to_start:
            self._start_source(group, wanted[name])
        self.counters.reloads += 1
        log.info(
            "reload_applied",
            added=sorted(plan.added),
            removed=sorted(plan.removed),
            changed=sorted(plan.changed),
            sources_restarted=list(plan.sources_to_start),
            sources_kept=len(self._sources) - len(plan.sources_to_start),
        )

    # ----------------------------------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> None:
        self._state_dir_used = (self.state_dir / LOCK_FILE_NAME).exists()  # for the seq state (lost vs new)
        with locked_state_dir(self.state_dir) as lock:
            if lock.problem is not None:
                log.error("state_dir_degraded", state_dir=str(self.state_dir), problem=lock.problem, locked=lock.locked)
            gateway = self.plant.gateway
            encoder = UnsJsonEncoder(
                enterprise=gateway.enterprise,
                site=gateway.site,
                gateway_id=gateway.id,
                started=self._clock(),
                version=__version__,
            )
            if Output.UNS_JSON in gateway.outputs:
                self._uns_json = encoder
            if Output.SPARKPLUG in gateway.outputs and gateway.sparkplug is not None:
                # protobuf is imported only by gateways that publish Sparkplug.
                from gateway.encoders.sparkplug import SparkplugEdgeNode
                from gateway.sparkplug_session import SparkplugSession

                node = SparkplugEdgeNode(
                    group_id=gateway.sparkplug.group_id, edge_node_id=gateway.sparkplug_edge_node_id, clock=self._clock
                )
                self._sparkplug = SparkplugSession(
                    node,
                    bd_seq_files=self._state_files,
                    clock=self._clock,
                    primary_host=gateway.sparkplug.primary_host,
                )
            settings = self.plant.spool
            spool_path = Path(settings.path) if settings.path else self.state_dir / "spool.db"

            def open_at_path() -> Spool:
                return Spool(
                    spool_path,
                    max_bytes=settings.max_bytes,
                    min_free_bytes=int(settings.min_free_mb * 1_000_000),
                    dead_letter_max_bytes=int(settings.dead_letter_max_mb * 1_000_000),
                )

            # Off the event loop: opening checks the file (PRAGMA quick_check) and may salvage a damaged one.
            spool = await asyncio.to_thread(open_spool, open_at_path)
            historical: Callable[[str, bytes], bytes | None] = encoder.historical
            if self._sparkplug is not None:
                from gateway.sparkplug_session import historical_form

                historical = historical_form(
                    self._sparkplug.node, encoder.historical if self._uns_json is not None else None
                )
            forwarder = StoreAndForward(
                spool,
                historical=historical,
                window_wait_s=settings.window_wait_ms / 1000,
                replay_per_s=settings.replay_per_s,
                reopen=open_at_path,
                clock=self._clock,
            )
            try:
                await self._run(stop, forwarder, encoder)
            finally:
                if forwarder.spool is not None:
                    with contextlib.suppress(Exception):
                        forwarder.spool.close()

    async def _run(self, stop: asyncio.Event, forwarder: StoreAndForward, encoder: UnsJsonEncoder) -> None:
        plant = self.plant
        sparkplug = self._sparkplug
        if sparkplug is None:
            options = mqtt_options_for(
                plant,
                will_topic=encoder.status_topic,
                will_payload=encoder.gateway_status(online=False).payload,
                online_payload=encoder.gateway_status(online=True).payload,
            )
        else:
            # One connection, one will: the NDEATH, which a host must see when the gateway is lost uncleanly. The UNS
            # JSON gateway status (with both outputs) is a retained message: online at every connect, offline at a
            # clean stop (after a crash it still says online: README "Sparkplug B").
            options = mqtt_options_for(
                plant,
                will_topic=sparkplug.node.topic("NDEATH"),
                will_payload=sparkplug.will_payload,
                online_payload=None,
                will_retain=False,
                subscriptions=sparkplug.subscriptions,
                on_message=sparkplug.on_message,
                session=sparkplug,
            )
        seq_resume = await self._seq.start(used_before=self._state_dir_used)
        log.info(
            "gateway_starting",
            gateway=plant.gateway.id,
            devices=len(active_devices(plant)),
            tags=sum(len(device.tags) for device in active_devices(plant)),
            broker=f"{options.host}:{options.port}",
            failover=[f"{host}:{port}" for host, port in options.failover],
            spool=str(forwarder.spool.path) if forwarder.spool is not None else None,
            spooled=forwarder.spooled_now,
            previous_stop=seq_resume.previous_stop.value,
            event_loop=running_loop_name(asyncio.get_running_loop()),
        )
        sink = mqtt_output(
            options, connections=plant.mqtt.connections, on_ack=forwarder.on_ack, on_refused=forwarder.on_refused
        )
        forwarder.bind(sink)
        self._sink, self._forwarder = sink, forwarder
        held_stores: set[asyncio.Task[None]] = set()
        if sparkplug is not None:
            assert isinstance(sink, MqttSink)  # Sparkplug outputs have one connection (a tag-map rule)

            def spool_held(held: list[tuple[str, bytes]]) -> None:
                task = asyncio.get_running_loop().create_task(forwarder.store(held))
                held_stores.add(task)
                task.add_done_callback(held_stores.discard)

            sparkplug.bind(sink.rebirth, spool_held, sink.send_session_messages)
            from gateway.sparkplug_session import HostGate

            forwarder.bind(HostGate(sink, sparkplug, on_refused=forwarder.on_refused))
            if self._uns_json is not None:
                sink.set_retained(encoder.status_topic, encoder.gateway_status(online=True).payload)
        async with sink:
            for device in active_devices(plant):
                outbound = build_outbound(plant, device, sparkplug=sparkplug.node if sparkplug is not None else None)
                self._restore_seq(outbound)
                self._add_channel(sink, outbound)
            async with asyncio.TaskGroup() as group:
                publish_task = group.create_task(self._publish_queue(forwarder), name="sink.publish")
                helpers = [
                    group.create_task(forwarder.replay(), name="spool.replay"),
                    group.create_task(self._checkpoint_seq(), name="seq.checkpoint"),
                    group.create_task(self._report_health(sink, forwarder), name="health"),
                    group.create_task(self._serve_http(), name="http"),
                ]
                for source in build_sources(plant, self._links, pki_root=self.state_dir / "pki"):
                    self._start_source(group, source)
                # Everything the tag map's models were needed for is built: let them go.
                self.plant = plant = without_tags(plant)
                release_freed_memory()
                settle_garbage_collector()
                log.info("memory_released", stage="start", **memory_usage_mb())
                log.info("gateway_running", sources=len(self._sources))
                await self._serve_reloads(group, sink, stop)

                log.info("gateway_stopping")
                if self._notifier is not None:
                    self._notifier.stopping()
                await cancel_until_done([s.task for s in self._sources.values()], budget_s=STOP_SOURCES_BUDGET_S)
                await self._drain(publish_task, forwarder)
                # Every equipment is reported offline before the gateway is: its retained _status must not
                # keep saying "connected" while nobody reads it (after a crash only the will says so).
                for channel in self._channels.values():
                    channel.report_link(False, GATEWAY_STOPPED_ERROR)
                await cancel_until_done(helpers, budget_s=1.0)
            if sparkplug is not None and self._uns_json is not None:
                # The will is the NDEATH (close publishes it): the UNS JSON offline status is said here.
                sink.set_retained(encoder.status_topic, encoder.gateway_status(online=False).payload)
            await sink.close(timeout_s=CLOSE_SINK_BUDGET_S)
        await forwarder.keep_unacked()
        await self._seq.stop()
        await forwarder.close()
        log.info(
            "gateway_stopped",
            messages_queued=self.counters.messages_queued,
            queue_full_waits=self._queue.full_waits,
            delivered=sink.delivered,
            spooled=forwarder.spooled_total,
            replayed=forwarder.replayed_total,
            spool_kept=forwarder.spooled_now,
            spool_dropped_by_cap=sum(forwarder.dropped_by_reason.values()),
            spool_dropped=forwarder.dropped_by_reason,
            spool_lost=forwarder.lost_by_reason,
            spool_available=forwarder.available,
            refused_by_broker=forwarder.refused_by_reason,
            dead_letters_dropped=forwarder.dead_letters_dropped,
            rejected_by_sink=self.counters.messages_rejected_by_sink,
            source_restarts=self.counters.source_restarts,
        )

    async def _serve_reloads(self, group: asyncio.TaskGroup, sink: MqttOutput, stop: asyncio.Event) -> None:
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                reload_wait = asyncio.ensure_future(self._reloads.get())
                await asyncio.wait({stop_wait, reload_wait}, return_when=asyncio.FIRST_COMPLETED)
                if not reload_wait.done():
                    reload_wait.cancel()
                    break
                try:
                    await self._apply_reload(group, sink, reload_wait.result())
                except Exception as exc:  # a reload must never take the gateway down
                    self.counters.reloads_rejected += 1
                    log.error("reload_failed", error=repr(exc), exc_info=exc)
                # The future holds the new tag map with all its tags; the replaced channels and the cancelled
                # sources' tasks sit in reference cycles. Let go of both, as after start-up.
                del reload_wait
                release_freed_memory()
                settle_garbage_collector()
                log.info("memory_released", stage="reload", **memory_usage_mb())
                if self._notifier is not None:
                    self._notifier.ready("reloaded")
        finally:
            stop_wait.cancel()

    async def _drain(self, publish_task: asyncio.Task[None], forwarder: StoreAndForward) -> None:
        """Let the publish task hand on everything queued; past the budget, spool the rest directly."""
        await self._queue.put_unbounded([])  # the stop marker
        done, _ = await asyncio.wait({publish_task}, timeout=DRAIN_QUEUE_BUDGET_S)
        if not done:
            forwarder.divert_to_spool()  # the broker is too slow: the remaining batches go to disk at once
            log.warning("stop_drain_slow", queued=len(self._queue), action="spooling the rest")
            done, _ = await asyncio.wait({publish_task}, timeout=DRAIN_QUEUE_BUDGET_S)
        if not done:
            await cancel_until_done([publish_task], budget_s=1.0)
            lost = len(self._queue)
            log.error("stop_drain_failed", lost=lost)


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


# ------------------------------------------------------------------------------------------- serve


async def serve(
    *,
    load: Callable[[], Plant],
    state_dir: Path,
    notifier: SystemdNotifier | None = None,
) -> None:
    """Run the gateway on ``load()`` until SIGTERM/SIGINT; SIGHUP calls ``load()`` again and applies it.

    A tag map that fails to load on SIGHUP is logged (every problem) and the gateway keeps running on the
    one it has. The first SIGTERM/SIGINT starts a graceful stop; a second SIGINT exits at once.
    """
    gateway = Gateway(load(), state_dir=state_dir, notifier=notifier)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reload_tasks: set[asyncio.Task[None]] = set()

    async def reload_from_file() -> None:
        if notifier is not None:
            notifier.reloading(time.monotonic_ns() // 1000)
        try:
            # Loading a large tag map takes a moment: keep it off the event loop so polling goes on.
            plant = await asyncio.to_thread(load)
        except ConfigError as exc:
            gateway.counters.reloads_rejected += 1
            for problem in exc.problems:
                log.error("reload_rejected", problem=str(problem))
            log.error("reload_rejected_keeping_current", problems=len(exc.problems))
            if notifier is not None:
                notifier.ready("reload rejected; running on the previous tag map")
            return
        except Exception as exc:  # e.g. the file vanished: same outcome, never a crash
            gateway.counters.reloads_rejected += 1
            log.error("reload_rejected_keeping_current", error=repr(exc))
            if notifier is not None:
                notifier.ready("reload rejected; running on the previous tag map")
            return
        log.info("reload_requested", devices=len(plant.devices))
        gateway.reload(plant)

    def on_sighup() -> None:
        task = loop.create_task(reload_from_file(), name="reload")
        reload_tasks.add(task)
        task.add_done_callback(reload_tasks.discard)

    def on_sigint() -> None:
        if stop.is_set():
            raise SystemExit(130)
        stop.set()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await gateway.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
