"""Raw readings of one device -> MQTT messages: transform, topic, payload and ``seq`` per topic.

Pure apart from the counters it keeps: the runtime passes ``now`` in and carries the messages out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import NamedTuple

from gateway.schema import (
    META_PART_DEFAULT_BYTES,
    PUBLISH_OVERHEAD_BYTES,
    STATUS_COMM_FAILURE,
    BatchEncoder,
    EquipmentTopics,
    Quality,
    Sample,
    TagMeta,
    encode_equipment_status,
    encode_meta_parts,
    encode_tag_payload,
    utf8_length,
)
from gateway.sources.base import RawReading
from gateway.transform import TagRules, TagTransform
from gateway.vocabulary import PublishMode

__all__ = ["DeviceOutbound", "Message", "PublishMode", "TagOutput"]


class Message(NamedTuple):
    """One MQTT message ready to publish.

    A NamedTuple, like Sample: in per-tag mode one is made per published value, and a frozen dataclass costs
    0.5 us to build (its __init__ sets each field through object.__setattr__), a NamedTuple 0.1 us.
    """

    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TagOutput:
    """What the outbound side needs to know of one tag."""

    name: str
    unit: str | None
    rules: TagRules
    meta: TagMeta


class DeviceOutbound:
    """Turns one device's raw readings into messages, keeping report-by-exception state and seq counters.

    ``seq`` counts up by one per topic (per equipment for batches), continuing after the values the caller
    restores (``restore_seq``), so a subscriber can see gaps and drop duplicates.
    """

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
    ) -> None:
        """``max_packet_bytes``: the largest PUBLISH packet the broker takes (``mqtt.max_packet_size``, else
        META_PART_DEFAULT_BYTES); the retained ``_meta`` catalogue is split into parts that fit it."""
        self.device = device
        self.protocol = protocol
        self.topics = topics
        self.mode = mode
        self.interval_ms = interval_ms
        # The catalogue is encoded once; the per-tag TagMeta objects are not kept (MBs at 50,000 tags).
        # Budget for the payload of a part: the packet less its topic (the longest a part can have) and header.
        longest_meta_topic = topics.meta_part(max(1, len(tags)))
        self._meta_payloads = encode_meta_parts(
            device=device,
            protocol=protocol,
            tags=[tag.meta for tag in tags],
            publish_mode=mode,
            interval_ms=interval_ms,
            max_payload_bytes=max_packet_bytes - PUBLISH_OVERHEAD_BYTES - utf8_length(longest_meta_topic),
        )
        self._units = {tag.name: tag.unit for tag in tags}
        self._transforms = {
            tag.name: TagTransform(device=device, tag=tag.name, rules=tag.rules) for tag in tags
        }
        # Each mode keeps only what it publishes with: per-tag topics, or the batch rows' prepared parts.
        batch = mode is PublishMode.BATCH
        self._tag_topics = {} if batch else {tag.name: topics.tag(tag.name) for tag in tags}
        self._batch_encoder = BatchEncoder(self._units) if batch else None
        self._seq: dict[str, int] = {}
        self.unknown_tags = 0  # readings for tags this device does not have (a source bug); counted, not raised

    @property
    def tag_names(self) -> list[str]:
        return list(self._units)

    @property
    def seq_topics(self) -> list[str]:
        """The topics this device numbers with ``seq`` (its tag topics, or its ``_batch`` topic)."""
        if self.mode is PublishMode.BATCH:
            return [self.topics.batch]
        return list(self._tag_topics.values())

    def seq_need(self, readings: Sized) -> int:
        """The most messages (so the most seq numbers on any one topic) ``messages(readings)`` can make.

        One per reading in per-tag mode, one per call in batch mode: what a device's seq budget is charged
        before numbering (see gateway.seq_reservation).
        """
        return 1 if self._batch_encoder is not None else len(readings)

    def restore_seq(self, last_seq: Mapping[str, int]) -> None:
        """Continue numbering after ``last_seq`` (per topic), e.g. the resume points of a previous run."""
        for topic, seq in last_seq.items():
            if seq > self._seq.get(topic, 0):
                self._seq[topic] = seq

    def seq_snapshot(self) -> dict[str, int]:
        """The last seq handed out per topic (only topics that have had a message)."""
        return dict(self._seq)

    def _next_seq(self, topic: str) -> int:
        seq = self._seq.get(topic, 0) + 1
        self._seq[topic] = seq
        return seq

    def samples(self, readings: Iterable[RawReading], now: float) -> list[Sample]:
        """The Samples to publish for ``readings`` (at ``now``, epoch seconds); readings of unknown tags are counted."""
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
        return out

    def messages(self, readings: Iterable[RawReading], now: float) -> list[Message]:
        samples = self.samples(readings, now)
        if not samples:
            return []
        if self._batch_encoder is not None:  # batch mode
            topic = self.topics.batch
            payload = self._batch_encoder.encode(samples, ts=now, seq=self._next_seq(topic))
            return [Message(topic, payload)]
        # Per-tag mode: one message per sample, so the per-sample lookups are bound to locals once.
        out: list[Message] = []
        append = out.append
        seqs = self._seq
        last_seq = seqs.get
        tag_topics = self._tag_topics
        units = self._units
        for sample in samples:
            tag = sample.tag
            topic = tag_topics[tag]
            seq = seqs[topic] = last_seq(topic, 0) + 1  # what _next_seq does
            append(_new_message(Message, (topic, encode_tag_payload(sample, unit=units[tag], seq=seq), False)))
        return out

    def link_lost_readings(self, now: float) -> list[RawReading]:
        """Every tag once with quality bad / comm_failure, for when the link to the PLC is lost."""
        return [
            RawReading(tag=name, value=None, ts=now, quality=Quality.BAD, status=STATUS_COMM_FAILURE)
            for name in self._units
        ]

    def status_message(
        self, *, connected: bool, since: float, error: str | None, gateway: str | None = None
    ) -> Message:
        payload = encode_equipment_status(connected=connected, since=since, error=error, gateway=gateway)
        return Message(self.topics.status, payload, retain=True)

    def meta_messages(self) -> list[Message]:
        """The retained catalogue: ``_meta``, then ``_meta/2`` ... ``_meta/N`` when it had to be split (see
        ``gateway.schema.encode_meta_parts``). Publish them all; on a reload clear the topics the previous
        outbound of the device had and this one has not (a shrunken catalogue leaves no stale part behind)."""
        return [
            Message(self.topics.meta_part(number), payload, retain=True)
            for number, payload in enumerate(self._meta_payloads, start=1)
        ]


# tuple.__new__(Message, (topic, payload, retain)) builds the NamedTuple in C, without its generated Python
# __new__: once per message in per-tag mode.
_new_message = tuple.__new__
