"""The UNS JSON encoding (schema version 1, README "Topics and payloads").

Topics ``{enterprise}/{site}/{area}/{line}/{equipment}/{tag}`` (per-tag mode) or ``.../_batch`` (batch mode),
retained ``_status`` and ``_meta`` per equipment, retained ``{enterprise}/{site}/_gateway/{id}/status`` for the
gateway (its offline form is the MQTT will). ``seq`` counts up by one per topic, continuing after the values
restored from the previous run, so a subscriber can see gaps and drop duplicates. A replay from the spool
carries ``"historical": true``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from gateway.encoders.base import Message
from gateway.schema import (
    PUBLISH_OVERHEAD_BYTES,
    BatchEncoder,
    EquipmentTopics,
    Sample,
    SampleContext,
    TagMeta,
    Value,
    encode_equipment_status,
    encode_gateway_status,
    encode_meta_parts,
    encode_tag_payload,
    gateway_status_topic,
    mark_historical,
    utf8_length,
)
from gateway.vocabulary import PublishMode

__all__ = ["UnsJsonDeviceEncoder", "UnsJsonEncoder", "historical"]


class UnsJsonEncoder:
    """Gateway-wide UNS JSON messages: the retained gateway status (and will), and the historical form."""

    def __init__(self, *, enterprise: str, site: str, gateway_id: str, started: float, version: str) -> None:
        """``started``: when this run began (epoch seconds), the ``since`` of the gateway status."""
        self.status_topic = gateway_status_topic(enterprise=enterprise, site=site, gateway_id=gateway_id)
        self._gateway_id = gateway_id
        self._started = started
        self._version = version

    def gateway_status(self, *, online: bool) -> Message:
        payload = encode_gateway_status(
            online=online, gateway_id=self._gateway_id, ts=self._started, version=self._version
        )
        return Message(self.status_topic, payload, retain=True)

    def historical(self, topic: str, payload: bytes) -> bytes:
        return historical(topic, payload)


def historical(topic: str, payload: bytes) -> bytes:
    """The replay form of a UNS JSON data payload: every one is a JSON object this module's encoders wrote, so
    ``"historical": true`` is appended as its last member (see ``gateway.schema.mark_historical``)."""
    return mark_historical(payload)


class UnsJsonDeviceEncoder:
    """One equipment's UNS JSON messages, keeping its ``seq`` per topic (per equipment for batches)."""

    def __init__(
        self,
        *,
        device: str,
        protocol: str,
        topics: EquipmentTopics,
        mode: PublishMode,
        interval_ms: int,
        units: Mapping[str, str | None],
        catalogue: Sequence[TagMeta],
        max_packet_bytes: int,
        context: Mapping[str, str] | None = None,
    ) -> None:
        """``units`` of every tag by name; ``max_packet_bytes``: the largest PUBLISH packet the broker takes,
        which the retained ``_meta`` catalogue is split to fit (see ``gateway.schema.encode_meta_parts``);
        ``context``: the device's context keys and the tags they name, listed in ``_meta``."""
        self.topics = topics
        self.mode = mode
        # The catalogue is encoded once; the per-tag TagMeta objects are not kept (MBs at 50,000 tags).
        # Budget for the payload of a part: the packet less its topic (the longest a part can have) and header.
        longest_meta_topic = topics.meta_part(max(1, len(catalogue)))
        self._meta_payloads = encode_meta_parts(
            device=device,
            protocol=protocol,
            tags=catalogue,
            publish_mode=mode,
            interval_ms=interval_ms,
            max_payload_bytes=max_packet_bytes - PUBLISH_OVERHEAD_BYTES - utf8_length(longest_meta_topic),
            context=context,
        )
        self._units = dict(units)
        # Each mode keeps only what it publishes with: per-tag topics, or the batch rows' prepared parts.
        batch = mode is PublishMode.BATCH
        self._tag_topics = {} if batch else {tag: topics.tag(tag) for tag in units}
        self._batch_encoder = BatchEncoder(self._units) if batch else None
        self._seq: dict[str, int] = {}
        self._context_parts = _ContextParts(SampleContext({}))

    @property
    def seq_topics(self) -> list[str]:
        if self._batch_encoder is not None:
            return [self.topics.batch]
        return list(self._tag_topics.values())

    def seq_need(self, samples: int) -> int:
        """One per sample in per-tag mode, one per call in batch mode."""
        return 1 if self._batch_encoder is not None else samples

    def restore_seq(self, last_seq: Mapping[str, int]) -> None:
        for topic, seq in last_seq.items():
            if seq > self._seq.get(topic, 0):
                self._seq[topic] = seq

    def seq_snapshot(self) -> dict[str, int]:
        return dict(self._seq)

    def encode(self, samples: Sequence[Sample], now: float) -> list[Message]:
        if self._batch_encoder is not None:
            topic = self.topics.batch
            seq = self._seq[topic] = self._seq.get(topic, 0) + 1
            return [Message(topic, self._batch_encoder.encode(samples, ts=now, seq=seq))]
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
            seq = seqs[topic] = last_seq(topic, 0) + 1
            append(_new_message(Message, (topic, encode_tag_payload(sample, unit=units[tag], seq=seq), False)))
        return out

    def encode_in_context(self, samples: Sequence[Sample], context: SampleContext, now: float) -> list[Message]:
        """``encode`` with ``"ctx"``: per tag, the sample's whole context; per batch, the device's keys as ``"ctx"``
        and each repeat instance's keys under ``"instance_ctx": {instance: {...}}`` (once, not per row). A member
        with no key that has a value yet is left out.

        Each payload is the one ``encode`` makes with the context as its last member(s): the JSON of a context is
        made once per change of it, and joined to the payloads here without parsing them. The property test
        tests/unit/test_context.py::test_a_tag_payload_in_context_is_the_plain_payload_plus_ctx checks a per-tag
        payload equals ``tag_payload_dict`` plus ``ctx``.
        """
        parts = self._context_parts
        if parts.context is not context:
            parts = self._context_parts = _ContextParts(context)
        if self._batch_encoder is not None:
            messages = self.encode(samples, now)
            if parts.batch_tail == b"}":
                return messages
            return [Message(message.topic, message.payload[:-1] + parts.batch_tail) for message in messages]
        # encode()'s per-tag loop, with the sample's context tail in place of the payload's closing brace.
        tails = parts.tag_tails
        tail_of = parts.tail_of.get
        device_tail = parts.device_tail
        out: list[Message] = []
        append = out.append
        seqs = self._seq
        last_seq = seqs.get
        tag_topics = self._tag_topics
        units = self._units
        for sample in samples:
            tag = sample.tag
            topic = tag_topics[tag]
            seq = seqs[topic] = last_seq(topic, 0) + 1
            payload = encode_tag_payload(sample, unit=units[tag], seq=seq)
            index = tail_of(tag)
            tail = device_tail if index is None else tails[index]
            append(_new_message(Message, (topic, payload[:-1] + tail if len(tail) > 1 else payload, False)))
        return out

    def status(self, *, connected: bool, since: float, error: str | None, gateway: str | None) -> Message:
        payload = encode_equipment_status(connected=connected, since=since, error=error, gateway=gateway)
        return Message(self.topics.status, payload, retain=True)

    def meta(self) -> list[Message]:
        """``_meta``, then ``_meta/2`` ... ``_meta/N`` when it had to be split."""
        return [
            Message(self.topics.meta_part(number), payload, retain=True)
            for number, payload in enumerate(self._meta_payloads, start=1)
        ]


    def retained_topics(self) -> list[str]:
        return [self.topics.status, *(message.topic for message in self.meta())]


class _ContextParts:
    """The JSON members one ``SampleContext`` adds to payloads, made once per context (it changes rarely)."""

    __slots__ = ("batch_tail", "context", "device_tail", "tag_tails", "tail_of")

    def __init__(self, context: SampleContext) -> None:
        self.context = context
        # A payload's last byte is its closing brace; a tail replaces it. No key with a value yet: no member.
        self.device_tail = _ctx_tail(context.device)
        self.tag_tails = [_ctx_tail({**context.device, **keys}) for keys in context.instances]
        self.tail_of = context.instance_of
        by_name: dict[str, dict[str, Value]] = {}
        for name, keys in zip(context.prefixes, context.instances, strict=True):
            if keys:  # an instance whose keys have no good value yet is left out
                by_name.setdefault(name, {}).update(keys)  # two repeats may make the same instance (ch001)
        instances = b',"instance_ctx":' + orjson.dumps(by_name) if by_name else b""
        self.batch_tail = self.device_tail[:-1] + instances + b"}"


def _ctx_tail(keys: Mapping[str, Value]) -> bytes:
    return b',"ctx":' + orjson.dumps(dict(keys)) + b"}" if keys else b"}"


# tuple.__new__(Message, (topic, payload, retain)) builds the NamedTuple in C, without its generated Python
# __new__: once per message in per-tag mode.
_new_message = tuple.__new__
