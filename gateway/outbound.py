"""Raw readings of one device -> encoder-neutral Samples -> messages of the device's encoder.

``DeviceOutbound`` applies each tag's transform (scaling, limits, deadband, heartbeat) and hands the Samples to
its ``DeviceEncoder`` (gateway.encoders), which makes the topics, payloads and ``seq`` numbers. Pure apart from
the state it keeps: the runtime passes ``now`` in and carries the messages out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Final

from gateway.encoders.base import ContextEncoder, DeviceEncoder, JointDeviceEncoder, Message
from gateway.encoders.uns_json import UnsJsonDeviceEncoder
from gateway.events.core import EventEncoder, EventRecord
from gateway.schema import (
    META_PART_DEFAULT_BYTES,
    STATUS_COMM_FAILURE,
    EquipmentTopics,
    Quality,
    Sample,
    SampleContext,
    TagMeta,
    Value,
)
from gateway.sources.base import RawReading
from gateway.transform import TagRules, TagTransform
from gateway.vocabulary import PublishMode

if TYPE_CHECKING:  # protobuf is imported only by gateways that publish Sparkplug
    from gateway.encoders.sparkplug import SparkplugDeviceEncoder

__all__ = [
    "ContextPlan",
    "DeviceOutbound",
    "InstanceContext",
    "Message",
    "PublishMode",
    "SampleCounts",
    "TagOutput",
    "sink_pairs",
]

_QUALITY_OF: Final = itemgetter(3)  # Sample.quality
_NUMBER_TYPES: Final = frozenset((int, float))  # exact types: bool is not among them
# Sample is a NamedTuple: tuple.__new__(Sample, (all six fields)) builds one in C.
_new_sample = tuple.__new__
_GOOD: Final = Quality.GOOD
_BAD: Final = Quality.BAD


_TOPIC_AND_PAYLOAD: Final = itemgetter(0, 1)  # Message.topic, Message.payload


def sink_pairs(messages: Sequence[Message]) -> list[tuple[str, bytes]]:
    """``(topic, payload)`` of each message, as the sink takes them (``StoreAndForward.forward``); built in C."""
    return list(map(_TOPIC_AND_PAYLOAD, messages))


@dataclass(slots=True)
class SampleCounts:
    """Samples handed to the device's encoder (published), by quality (``cellgate_samples_total``)."""

    good: int = 0
    uncertain: int = 0
    bad: int = 0

    def add(self, samples: list[Sample]) -> None:
        """Count one batch. Per batch in Python; per sample only C (itemgetter, list.count by identity)."""
        qualities = list(map(_QUALITY_OF, samples))
        good = qualities.count(_GOOD)
        self.good += good
        if good != len(qualities):
            bad = qualities.count(_BAD)
            self.bad += bad
            self.uncertain += len(qualities) - good - bad


@dataclass(frozen=True, slots=True, kw_only=True)
class TagOutput:
    """What the outbound side needs to know of one tag."""

    name: str
    unit: str | None
    rules: TagRules
    meta: TagMeta


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceContext:
    """Context keys of the tags of one repeat instance: ``keys`` name tags of the device (e.g. ``{"cell":
    "ch003/cell_id"}``), ``members`` are the tags that carry them (the instance's tags)."""

    name: str
    keys: Mapping[str, str]
    members: Sequence[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class ContextPlan:
    """Which tags' latest good values travel with a device's samples (README "Traceability: context")."""

    device: Mapping[str, str]
    """``{key: tag}``: carried by every sample of the device."""
    instances: Sequence[InstanceContext] = ()
    described: Mapping[str, str] | None = None
    """``{key: source}`` as ``_meta`` lists it (default: ``device``)."""

    def __bool__(self) -> bool:
        return bool(self.device) or any(instance.keys for instance in self.instances)


class _ContextState:
    """The latest good value of each context tag, updated from the Samples of each call before they are encoded."""

    __slots__ = ("_instance_of", "_prefixes", "_values", "_watch", "current")

    def __init__(self, plan: ContextPlan) -> None:
        # _values[0]: the device's keys; _values[i + 1]: instance i's keys.
        self._values: list[dict[str, Value]] = [{} for _ in range(1 + len(plan.instances))]
        self._watch: dict[str, list[tuple[dict[str, Value], str]]] = {}
        for key, tag in plan.device.items():
            self._watch.setdefault(tag, []).append((self._values[0], key))
        self._instance_of: dict[str, int] = {}
        for index, instance in enumerate(plan.instances):
            for key, tag in instance.keys.items():
                self._watch.setdefault(tag, []).append((self._values[index + 1], key))
            for member in instance.members:
                self._instance_of[member] = index
        self._prefixes = tuple(instance.name for instance in plan.instances)
        self.current = self._snapshot()

    def _snapshot(self) -> SampleContext:
        device, *instances = self._values
        return SampleContext(
            dict(device),
            tuple(dict(values) for values in instances),
            self._prefixes,
            self._instance_of,
        )

    def update(self, samples: Sequence[Sample]) -> SampleContext:
        """The context after ``samples``: a good sample of a context tag sets its key; others leave it."""
        watch = self._watch.get
        changed = False
        for sample in samples:
            targets = watch(sample.tag)
            value = sample.value
            if targets is None or sample.quality is not Quality.GOOD or value is None:
                continue
            for values, key in targets:
                if key not in values or values[key] != value or type(values[key]) is not type(value):
                    values[key] = value
                    changed = True
        if changed:
            self.current = self._snapshot()
        return self.current


class DeviceOutbound:
    """Turns one device's raw readings into messages: report-by-exception state here, encoding in ``encoder``."""

    def __init__(
        self,
        *,
        device: str,
        protocol: str,
        topics: EquipmentTopics,
        mode: PublishMode,
        interval_ms: int,
        tags: Sequence[TagOutput],
        max_packet_bytes: int = META_PART_DEFAULT_BYTES,
        encoder: DeviceEncoder | None = None,
        context: ContextPlan | None = None,
        sparkplug: SparkplugDeviceEncoder | None = None,
        uns_json: bool = True,
        events: Sequence[str] = (),
    ) -> None:
        """``encoder``: the device's output encoding; by default UNS JSON on ``topics`` in ``mode``, with its
        retained ``_meta`` split into parts that fit ``max_packet_bytes`` (``mqtt.max_packet_size``).
        ``context``: the tags whose latest good values go with every sample (an encoder that is not a
        ``ContextEncoder`` publishes them only as ordinary tags).
        ``sparkplug``: the device as a Sparkplug device too (``uns_json`` True: both encodings) or only.
        ``events``: the names of the device's events, published on ``{equipment}/_events/{event}`` (UNS JSON
        records, whatever the outputs)."""
        self.device = device
        self.protocol = protocol
        self.topics = topics
        self.mode = mode
        self.interval_ms = interval_ms
        self.sparkplug = sparkplug
        self.retained_status = uns_json
        """Whether the link state is a retained message (UNS JSON ``_status``); Sparkplug's DBIRTH/DDEATH travel
        with the data instead (see ``sparkplug``)."""
        self.encoder: DeviceEncoder = encoder or UnsJsonDeviceEncoder(
            device=device,
            protocol=protocol,
            topics=topics,
            mode=mode,
            interval_ms=interval_ms,
            units={tag.name: tag.unit for tag in tags},
            catalogue=[tag.meta for tag in tags],
            max_packet_bytes=max_packet_bytes,
            context=(context.described or context.device) if context else None,
        )
        if sparkplug is not None:
            self.encoder = JointDeviceEncoder(self.encoder, sparkplug) if uns_json else sparkplug
        self._encode = self.encoder.encode
        # None for a device without context: messages() then takes the plain path, with no per-sample context work.
        self._context = _ContextState(context) if context else None
        self._encode_in_context = (
            self.encoder.encode_in_context if isinstance(self.encoder, ContextEncoder) else None
        )
        self._transforms = {
            tag.name: TagTransform(device=device, tag=tag.name, rules=tag.rules) for tag in tags
        }
        # A device whose every tag passes its good numbers through as read (plain polling) turns a call of
        # plain readings into Samples in one step (see _passed_through).
        self._passes_through = bool(tags) and all(tag.rules.passes_through for tag in tags)
        self._not_last_good: set[str] = set(self._transforms) if self._passes_through else set()
        """Tags whose last published Sample was not good, or that have published none yet."""
        self.unknown_tags = 0  # readings for tags this device does not have (a source bug); counted, not raised
        self.sample_counts = SampleCounts()
        self.events = EventEncoder(base=topics.base, events=events) if events else None

    @property
    def tag_names(self) -> list[str]:
        return list(self._transforms)

    @property
    def seq_topics(self) -> list[str]:
        """The topics this device numbers with ``seq`` (UNS JSON: its tag topics, or its ``_batch`` topic; and its
        event topics)."""
        if self.events is not None:
            return [*self.encoder.seq_topics, *self.events.seq_topics]
        return self.encoder.seq_topics

    def seq_need(self, readings: Sized) -> int:
        """The most messages (so the most seq numbers on any one topic) ``messages(readings)`` can make: what a
        device's seq budget is charged before numbering (see gateway.seq_reservation)."""
        return self.encoder.seq_need(len(readings))

    def restore_seq(self, last_seq: Mapping[str, int]) -> None:
        """Continue numbering after ``last_seq`` (per topic), e.g. the resume points of a previous run."""
        self.encoder.restore_seq(last_seq)
        if self.events is not None:
            self.events.restore_seq(last_seq)

    def seq_snapshot(self) -> dict[str, int]:
        """The last seq handed out per topic (only topics that have had a message)."""
        if self.events is not None:
            return {**self.encoder.seq_snapshot(), **self.events.seq_snapshot()}
        return self.encoder.seq_snapshot()

    def record_message(self, record: EventRecord) -> Message:
        """The message of one event record (its own ``seq`` per event topic)."""
        assert self.events is not None, "a device without events has no records"
        return self.events.encode(record)

    def samples(self, readings: Iterable[RawReading], now: float) -> list[Sample]:
        """The Samples to publish for ``readings`` (at ``now``, epoch seconds); readings of unknown tags are counted."""
        if self._passes_through:
            readings = readings if isinstance(readings, Sequence) else list(readings)
            passed = self._passed_through(readings)
            if passed is not None:
                return passed
        out: list[Sample] = []
        append = out.append
        transform_of = self._transforms.get
        for reading in readings:
            transform = transform_of(reading.tag)
            if transform is None:
                self.unknown_tags += 1
                continue
            sample = transform.apply(reading, now)
            if sample is not None:
                append(sample)
        if self._passes_through:
            not_last_good = self._not_last_good
            for sample in out:
                if sample.quality is _GOOD:
                    not_last_good.discard(sample.tag)
                else:
                    not_last_good.add(sample.tag)
            if not not_last_good:
                self._not_last_good = set()  # a set keeps its table when emptied: the first poll filled it
        return out

    def _passed_through(self, readings: Sequence[RawReading]) -> list[Sample] | None:
        """The Samples of a call of good finite numbers of known tags whose last published Sample was good, made
        in C (no Python work per reading); None when the call is not that plain (then each reading takes its
        tag's transform).

        What each ``TagTransform.apply`` would return: its tag passes a good finite number through (no scaling,
        no limits) and publishes every reading, whatever came before. The transforms are not updated: with rules
        like these and a good last Sample, what a transform decides next depends only on that last quality,
        which stays good (``_not_last_good`` keeps track; tests/unit/test_hot_path_equivalence.py compares the paths).
        """
        if not readings:
            return None
        tags, values, times, qualities, _ = zip(*readings, strict=True)
        if qualities.count(_GOOD) != len(qualities) or not _NUMBER_TYPES.issuperset(map(type, values)):
            return None
        try:
            if not math.isfinite(sum(values, 0.0)):  # a NaN or an infinity (or a sum beyond float range)
                return None
        except OverflowError:  # an int beyond float range
            return None
        if not all(map(self._transforms.__contains__, tags)) or not self._not_last_good.isdisjoint(tags):
            return None
        return list(
            map(_new_sample, repeat(Sample), zip(repeat(self.device), tags, values, repeat(_GOOD), times, repeat(None)))
        )

    def messages(self, readings: Iterable[RawReading], now: float) -> list[Message]:
        samples = self.samples(readings, now)
        if not samples:
            return []
        self.sample_counts.add(samples)
        if self._context is None:
            return self._encode(samples, now)
        # The context tags were read with the values (one Modbus plan, one OPC UA Read, or the notifications
        # delivered with them): their new values count for every sample of this call.
        context = self._context.update(samples)
        if self._encode_in_context is None:
            return self._encode(samples, now)
        return self._encode_in_context(samples, context, now)

    @property
    def context(self) -> SampleContext | None:
        """The device's current context (None: the device has no context keys)."""
        return None if self._context is None else self._context.current

    def link_lost_readings(self, now: float) -> list[RawReading]:
        """Every tag once with quality bad / comm_failure, for when the link to the PLC is lost."""
        return [
            RawReading(tag=name, value=None, ts=now, quality=Quality.BAD, status=STATUS_COMM_FAILURE)
            for name in self._transforms
        ]

    def status_message(
        self, *, connected: bool, since: float, error: str | None, gateway: str | None = None
    ) -> Message:
        return self.encoder.status(connected=connected, since=since, error=error, gateway=gateway)

    def meta_messages(self) -> list[Message]:
        """The retained catalogue (UNS JSON: ``_meta``, then ``_meta/2`` ... ``_meta/N`` when it had to be split,
        see ``uns_json.encode_meta_parts``). Publish them all; on a reload clear the topics the previous
        outbound of the device had and this one has not (a shrunken catalogue leaves no stale part behind)."""
        return self.encoder.meta()

    def retained_topics(self) -> list[str]:
        """Every topic this device's output is retained on (see ``DeviceEncoder.retained_topics``)."""
        return self.encoder.retained_topics()
