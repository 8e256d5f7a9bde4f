"""Prometheus metrics: one registry per gateway, read from the runtime's own counters at scrape time.

Nothing here runs on the hot path: the sources, queue, store-and-forward and sink keep the plain counters
they always kept, and ``GatewayCollector`` turns one ``GatewayState`` snapshot into metric families when
Prometheus scrapes. Labels stay bounded: ``device``, ``reason`` (never a tag).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.sources.base import POLL_SECONDS_BUCKETS, CycleTimes

if TYPE_CHECKING:
    from gateway.outbound import SampleCounts

PREFIX = "cellgate"


@dataclass(frozen=True, slots=True)
class DeviceState:
    """One device as the runtime sees it now."""

    name: str
    protocol: str
    connected: bool | None
    """None until the source reported its first link state."""
    since: float
    """Wall-clock time the link state last changed (or the device was added)."""
    error: str | None
    tags: int
    messages: int
    """Messages queued for this device since the gateway started."""
    last_message_at: float | None
    """Wall-clock time of the last batch of readings turned into messages (the last good read)."""
    source_stats: object | None = None
    """The source's own counters (gateway.sources: UnitStats, OpcUaSourceStats), read by attribute name."""
    samples: SampleCounts | None = None
    """Samples published for this device, by quality (kept by its DeviceOutbound)."""

    def source_count(self, *names: str) -> int | None:
        """The first of ``names`` the source's counters have (Modbus and OPC UA name some alike counts apart)."""
        for name in names:
            value = getattr(self.source_stats, name, None)
            if isinstance(value, int):
                return value
        return None


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """A device link change, for the status page."""

    at: float
    device: str
    connected: bool
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SparkplugState:
    """The Sparkplug edge node's counters (gateway.sparkplug_session.SparkplugSession)."""

    bd_seq: int
    """The bdSeq of the current (or last) MQTT CONNECT."""
    rebirths: int
    """Rebirth commands acted on."""
    commands_refused: int
    """Writes asked for by NCMD/DCMD (each metric), refused: Cellgate is read-only."""
    commands_malformed: int
    """NCMD/DCMD payloads that did not parse."""
    replay_births: int
    """DBIRTHs sent ahead of replayed data of a device whose link is down."""
    dropped: Mapping[str, int] = field(default_factory=dict)
    """Messages not sent because the device was not born on the wire, by reason (sparkplug_session.DROP_REASONS)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayState:
    """A snapshot of a running gateway: what metrics, readiness and the status page read."""

    gateway_id: str
    version: str
    started: float
    now: float
    devices: tuple[DeviceState, ...]
    queue_messages: int
    queue_capacity: int
    messages_queued: int
    mqtt_connected: bool
    broker: str
    brokers: tuple[str, ...]
    """Every configured broker, the primary first (the fail-over order)."""
    inflight: int
    published: int
    mqtt_window: int = 0
    """Data messages the MQTT in-flight window takes now (``Sink.window``)."""
    failed_by_reason: Mapping[str, int]
    spool_available: bool
    spool_messages: int
    spool_bytes: int
    spool_max_bytes: int
    spooled_total: int
    replayed_total: int
    spool_dropped_by_reason: Mapping[str, int]
    source_restarts: int
    reloads: int
    stalled_s: float
    events: tuple[LinkEvent, ...]
    event_records: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Event records handed to store-and-forward, by (device, event)."""
    plc_writes: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """Ack writes to PLCs, by (device, result)."""
    queue_age_s: float = 0.0
    """How long the oldest message not yet handed to the MQTT sink has waited (``MessageQueue.backlog_age_s``)."""
    sparkplug: SparkplugState | None = None
    """None unless ``gateway.outputs`` lists sparkplug."""


_SOURCE_COUNTERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("poll_cycles", "Poll cycles run (Modbus units, OPC UA poll mode)", ("cycles", "polls")),
    ("poll_overruns", "Poll cycles that ran past their interval", ("overruns", "poll_overruns")),
    (
        "poll_skipped_cycles",
        "Polls the fixed rate asked for that overruns cost",
        ("skipped_cycles", "poll_skipped_cycles"),
    ),
    (
        "poll_skipped",
        "Polls skipped because the data already waiting for the MQTT sink was older than max_queue_age_ms, or while"
        " a poll's paced reads waited for it",
        ("backlog_skipped",),
    ),
    ("device_missed_cycles", "Intervals that passed without a good read (link down, back-off)", ("missed_cycles",)),
    ("device_link_losses", "OPC UA connections lost", ("link_losses",)),
    ("device_notifications", "OPC UA data change notifications", ("notifications",)),
)
READ_RESULTS = ("ok", "timeout", "connection_error", "exception", "decode_error", "error")
"""Every ``result`` of ``cellgate_device_reads_total`` (a source reports the ones it can tell apart)."""
QUALITIES = ("good", "uncertain", "bad")


def _source_families(devices: tuple[DeviceState, ...]) -> Iterator[Metric]:
    for name, doc, attributes in _SOURCE_COUNTERS:
        family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["device"])
        for device in devices:
            value = device.source_count(*attributes)
            if value is not None:
                family.add_metric([device.name], value)
        yield family
    histogram = HistogramMetricFamily(
        f"{PREFIX}_device_poll_seconds", "Poll cycle time: reads and hand-over to the queue", labels=["device"]
    )
    for device in devices:
        times = getattr(device.source_stats, "cycle_times", None)
        if isinstance(times, CycleTimes):
            cumulative = list(accumulate(times.counts))
            buckets = [(str(bound), count) for bound, count in zip(POLL_SECONDS_BUCKETS, cumulative, strict=False)]
            histogram.add_metric([device.name], [*buckets, ("+Inf", cumulative[-1])], times.sum_s)
    yield histogram
    reads = CounterMetricFamily(
        f"{PREFIX}_device_reads",
        "Requests to the device by result (Modbus read requests; OPC UA Read calls, Publish responses, connects)",
        labels=["device", "result"],
    )
    for device in devices:
        by_result = getattr(device.source_stats, "reads_by_result", None)
        if callable(by_result):
            for result, value in by_result().items():
                reads.add_metric([device.name, result], value)
    yield reads
    samples = CounterMetricFamily(
        f"{PREFIX}_samples", "Values published (samples handed to the encoder) by quality", labels=["device", "quality"]
    )
    for device in devices:
        if device.samples is not None:
            for quality in QUALITIES:
                samples.add_metric([device.name, quality], getattr(device.samples, quality))
    yield samples


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


def _by_label(
    family: GaugeMetricFamily | CounterMetricFamily, values: Mapping[str, int]
) -> GaugeMetricFamily | CounterMetricFamily:
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


class GatewayCollector(Collector):
    """Metric families from ``state()`` at scrape time."""

    def __init__(self, state: Callable[[], GatewayState]) -> None:
        self._state = state

    def describe(self) -> Iterator[Metric]:
        return iter(())  # unchecked collector: families depend on the running devices

    def collect(self) -> Iterator[Metric]:
        s = self._state()
        info = GaugeMetricFamily(
            f"{PREFIX}_build_info", "Cellgate version and Python; value 1", labels=["version", "python", "gateway"]
        )
        info.add_metric([s.version, platform.python_version(), s.gateway_id], 1)
        yield info
        yield _gauge("start_time_seconds", "Gateway start, Unix time", s.started)
        up = GaugeMetricFamily(f"{PREFIX}_device_up", "1 while the device's link is up", labels=["device"])
        since = GaugeMetricFamily(
            f"{PREFIX}_device_link_change_time_seconds", "Last link state change, Unix time", labels=["device"]
        )
        last = GaugeMetricFamily(
            f"{PREFIX}_device_last_read_time_seconds",
            "Last readings turned into messages, Unix time",
            labels=["device"],
        )
        tags = GaugeMetricFamily(f"{PREFIX}_device_tags", "Tags configured for the device", labels=["device"])
        messages = CounterMetricFamily(f"{PREFIX}_device_messages", "Messages queued for the device", labels=["device"])
        for device in s.devices:
            up.add_metric([device.name], 1 if device.connected else 0)
            since.add_metric([device.name], device.since)
            tags.add_metric([device.name], device.tags)
            messages.add_metric([device.name], device.messages)
            if device.last_message_at is not None:
                last.add_metric([device.name], device.last_message_at)
        yield from (up, since, last, tags, messages)
        yield from _source_families(s.devices)
        yield _counter("messages_queued", "Messages put into the queue", s.messages_queued)
        yield _gauge("queue_messages", "Messages waiting in the queue", s.queue_messages)
        yield _gauge(
            "queue_oldest_age_seconds", "How long the oldest message not yet handed to the MQTT sink has waited",
            s.queue_age_s,
        )
        yield _gauge("queue_capacity_messages", "Capacity of the queue (gateway.queue_size)", s.queue_capacity)
        yield _counter("messages_published", "Data messages the broker acknowledged", s.published)
        yield _by_label(
            CounterMetricFamily(f"{PREFIX}_messages_failed", "Messages neither delivered nor kept", labels=["reason"]),
            s.failed_by_reason,
        )
        yield _gauge("mqtt_connected", "1 while connected to a broker", 1 if s.mqtt_connected else 0)
        yield _gauge("mqtt_inflight", "Messages sent and not yet acknowledged", s.inflight)
        yield _gauge(
            "mqtt_window_messages",
            "Data messages the in-flight window takes now: min(mqtt.max_inflight, Receive Maximum) per connection,"
            " lowered while PUBACKs queue",
            s.mqtt_window,
        )
        yield _gauge("spool_available", "1 while store-and-forward has its spool", 1 if s.spool_available else 0)
        yield _gauge("spool_messages", "Messages in the spool", s.spool_messages)
        yield _gauge("spool_bytes", "Size of the spooled messages", s.spool_bytes)
        yield _gauge("spool_max_bytes", "Cap on the spool (spool.max_mb)", s.spool_max_bytes)
        yield _counter("spooled", "Live messages written to the spool", s.spooled_total)
        yield _counter("replayed", "Spooled messages the broker acknowledged", s.replayed_total)
        yield _by_label(
            CounterMetricFamily(
                f"{PREFIX}_spool_dropped", "Spooled messages deleted by a size limit", labels=["reason"]
            ),
            s.spool_dropped_by_reason,
        )
        yield _counter("source_restarts", "Sources restarted after a crash", s.source_restarts)
        yield _counter("reloads", "Tag map reloads applied", s.reloads)
        yield _gauge("pipeline_stalled_seconds", "How long queued messages have not moved", s.stalled_s)
        records = CounterMetricFamily(
            f"{PREFIX}_event_records", "Event records handed to store-and-forward", labels=["device", "event"]
        )
        for (device_name, event), count in sorted(s.event_records.items()):
            records.add_metric([device_name, event], count)
        writes = CounterMetricFamily(
            f"{PREFIX}_plc_writes", "Ack writes to PLCs by result (ok, refused, exception, failed)",
            labels=["device", "result"],
        )
        for (device_name, result), count in sorted(s.plc_writes.items()):
            writes.add_metric([device_name, result], count)
        yield from (records, writes)
        if s.sparkplug is not None:
            yield from _sparkplug_families(s.sparkplug)


SPARKPLUG_COMMAND_RESULTS = ("rebirth", "refused", "malformed")
"""Every ``result`` of ``cellgate_sparkplug_commands_total``."""


def _sparkplug_families(sparkplug: SparkplugState) -> Iterator[Metric]:
    commands = CounterMetricFamily(
        f"{PREFIX}_sparkplug_commands",
        "Sparkplug NCMD/DCMD by result: rebirth (Rebirth acted on), refused (a write, per metric: read-only), "
        "malformed (a payload that did not parse)",
        labels=["result"],
    )
    for result, value in zip(
        SPARKPLUG_COMMAND_RESULTS,
        (sparkplug.rebirths, sparkplug.commands_refused, sparkplug.commands_malformed),
        strict=True,
    ):
        commands.add_metric([result], value)
    yield commands
    yield _counter("sparkplug_rebirths", "Sparkplug Rebirth commands acted on (NBIRTH and DBIRTHs sent again)",
                   sparkplug.rebirths)
    yield _counter(
        "sparkplug_replay_births",
        "Sparkplug DBIRTHs sent ahead of replayed data of a device whose link is down",
        sparkplug.replay_births,
    )
    yield _by_label(
        CounterMetricFamily(
            f"{PREFIX}_sparkplug_dropped",
            "Sparkplug messages not sent because their device is not born on the wire, by reason: ddeath_not_born (a "
            "DDEATH reaching a connection whose births no longer had the device; DDATA that cannot be born is kept as "
            "a dead letter instead: messages_failed reason sparkplug_not_born)",
            labels=["reason"],
        ),
        sparkplug.dropped,
    )
    yield _gauge("sparkplug_bdseq", "Sparkplug bdSeq of the current (or last) MQTT CONNECT", sparkplug.bd_seq)


def build_registry(state: Callable[[], GatewayState]) -> CollectorRegistry:
    """The gateway's one registry: its own collector plus process and platform metrics."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    registry.register(GatewayCollector(state))
    return registry
