"""Raw readings of one device -> encoder-neutral Samples -> messages of the device's encoder.

``DeviceOutbound`` applies each tag's transform (scaling, limits, deadband, heartbeat) and hands the Samples to
its ``DeviceEncoder`` (gateway.encoders), which makes the topics, payloads and ``seq`` numbers. Pure apart from
the state it keeps: the runtime passes ``now`` in and carries the messages out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass

from gateway.encoders.base import DeviceEncoder, Message
from gateway.encoders.uns_json import UnsJsonDeviceEncoder
from gateway.schema import (
    META_PART_DEFAULT_BYTES,
    STATUS_COMM_FAILURE,
    EquipmentTopics,
    Quality,
    Sample,
    TagMeta,
)
from gateway.sources.base import RawReading
from gateway.transform import TagRules, TagTransform
from gateway.vocabulary import PublishMode

__all__ = ["DeviceOutbound", "Message", "PublishMode", "TagOutput"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TagOutput:
    """What the outbound side needs to know of one tag."""

    name: str
    unit: str | None
    rules: TagRules
    meta: TagMeta


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
    ) -> None:
        """``encoder``: the device's output encoding; by default UNS JSON on ``topics`` in ``mode``, with its
        retained ``_meta`` split into parts that fit ``max_packet_bytes`` (``mqtt.max_packet_size``)."""
        self.device = device
        self.protocol = protocol
        self.topics = topics
        self.mode = mode
        self.interval_ms = interval_ms
        self.encoder: DeviceEncoder = encoder or UnsJsonDeviceEncoder(
            device=device,
            protocol=protocol,
            topics=topics,
            mode=mode,
            interval_ms=interval_ms,
            units={tag.name: tag.unit for tag in tags},
            catalogue=[tag.meta for tag in tags],
            max_packet_bytes=max_packet_bytes,
        )
        self._encode = self.encoder.encode
        self._transforms = {
            tag.name: TagTransform(device=device, tag=tag.name, rules=tag.rules) for tag in tags
        }
        self.unknown_tags = 0  # readings for tags this device does not have (a source bug); counted, not raised

    @property
    def tag_names(self) -> list[str]:
        return list(self._transforms)

    @property
    def seq_topics(self) -> list[str]:
        """The topics this device numbers with ``seq`` (UNS JSON: its tag topics, or its ``_batch`` topic)."""
        return self.encoder.seq_topics

    def seq_need(self, readings: Sized) -> int:
        """The most messages (so the most seq numbers on any one topic) ``messages(readings)`` can make: what a
        device's seq budget is charged before numbering (see gateway.seq_reservation)."""
        return self.encoder.seq_need(len(readings))

    def restore_seq(self, last_seq: Mapping[str, int]) -> None:
        """Continue numbering after ``last_seq`` (per topic), e.g. the resume points of a previous run."""
        self.encoder.restore_seq(last_seq)

    def seq_snapshot(self) -> dict[str, int]:
        """The last seq handed out per topic (only topics that have had a message)."""
        return self.encoder.seq_snapshot()

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
        return self._encode(samples, now)

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
