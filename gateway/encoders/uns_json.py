"""The UNS JSON encoding (schema version 1, README "Topics and payloads").

Topics ``{enterprise}/{site}/{area}/{line}/{equipment}/{tag}`` (per-tag mode) or ``.../_batch`` (batch mode),
retained ``_status`` and ``_meta`` per equipment, retained ``{enterprise}/{site}/_gateway/{id}/status`` for the
gateway (its offline form is the MQTT will). ``seq`` counts up by one per topic, continuing after the values
restored from the previous run, so a subscriber can see gaps and drop duplicates. A replay from the spool
carries ``"historical": true``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import operator
import time
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any, Final

import orjson

from gateway.encoders.base import Message
from gateway.schema import (
    PUBLISH_OVERHEAD_BYTES,
    SCHEMA_VERSION,
    EquipmentTopics,
    Quality,
    Sample,
    SampleContext,
    TagMeta,
    Value,
    gateway_status_topic,
    utf8_length,
)
from gateway.value_shape import fields_as_written
from gateway.vocabulary import PublishMode

__all__ = [
    "BatchEncoder",
    "UnsJsonDeviceEncoder",
    "UnsJsonEncoder",
    "encode_batch_payload",
    "encode_equipment_status",
    "encode_gateway_status",
    "encode_meta",
    "encode_meta_parts",
    "encode_tag_payload",
    "format_ts",
    "historical",
    "mark_historical",
    "tag_payload_dict",
]

# For the per-value encoders: a module global is read much faster than a member off its Enum class.
_GOOD: Final = Quality.GOOD
_INF: Final = math.inf


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
    ``"historical": true`` is appended as its last member (see ``mark_historical``)."""
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
        which the retained ``_meta`` catalogue is split to fit (see ``encode_meta_parts``);
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
        # Per-tag mode, per tag: its topic, and what follows the value in its good payload up to the ts (one
        # bytes object per unit, shared by the tags that have it).
        self._topic_of: dict[str, str] = {} if batch else {tag: topics.tag(tag) for tag in units}
        self._unit_part_of: dict[str, bytes] = (
            {} if batch else {tag: _good_unit_part(unit) for tag, unit in units.items()}
        )
        self._batch_encoder = BatchEncoder(self._units) if batch else None
        self._seq: dict[str, int] = {}
        self._context_parts = _ContextParts(SampleContext({}))

    @property
    def seq_topics(self) -> list[str]:
        if self._batch_encoder is not None:
            return [self.topics.batch]
        return list(self._topic_of.values())

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
        # Per-tag mode: one message per sample. A good sample's payload is encode_tag_payload's, formatted in one
        # step from prepared parts: the tag's unit part, the ts part (once per distinct ts: the samples of one
        # read share theirs), the value's JSON (cut from one orjson.dumps of all the values, see _value_texts)
        # and the seq. Other samples take tag_payload_dict, as there.
        good = self._good_tag_messages(samples)
        if good is not None:
            return good
        # Not all good, or a tag twice: sample by sample.
        return self._tag_messages(samples, None)

    def _good_tag_messages(self, samples: Sequence[Sample]) -> list[Message] | None:
        """``encode``'s per-tag messages of a call of good samples, each tag at most once, made in C (no Python
        work per sample); None for any other call."""
        if not samples:
            return None
        _, tags, _, qualities, times, _ = zip(*samples, strict=True)
        if qualities.count(_GOOD) != len(qualities):
            return None
        topics = list(map(self._topic_of.__getitem__, tags))
        if len(set(topics)) != len(topics):  # a tag twice in one call: its seq counts up within the call
            return None
        texts = _value_texts(samples)
        ts_parts = {moment: _json_ts(moment) + b',"seq":' for moment in dict.fromkeys(times)}
        seqs = list(map(_add, map(self._seq.get, topics, repeat(0)), repeat(1)))
        self._seq.update(zip(topics, seqs, strict=True))
        payloads = map(
            bytes.__mod__,
            repeat(b'{"value":%b%b%b%d}'),
            zip(texts, map(self._unit_part_of.__getitem__, tags), map(ts_parts.__getitem__, times), seqs, strict=True),
        )
        return list(map(_new_message, repeat(Message), zip(topics, payloads, repeat(False))))

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
        return self._tag_messages(samples, parts)

    def _tag_messages(self, samples: Sequence[Sample], parts: _ContextParts | None) -> list[Message]:
        """Per-tag messages sample by sample, the per-sample lookups bound to locals once; with ``parts``, each
        payload ends with its sample's context tail in place of the closing brace."""
        tails = parts.tag_tails if parts is not None else ()
        tail_of = parts.tail_of.get if parts is not None else None
        device_tail = parts.device_tail if parts is not None else b"}"
        out: list[Message] = []
        append = out.append
        seqs = self._seq
        last_seq = seqs.get
        topic_of = self._topic_of
        unit_part_of = self._unit_part_of
        units = self._units
        ts_key = math.nan  # equal to no ts, so the first good sample makes its part
        ts_part = b""
        for sample, text in zip(samples, _value_texts(samples), strict=True):
            _, tag, _, quality, ts, _ = sample
            topic = topic_of[tag]
            unit_part = unit_part_of[tag]
            seq = seqs[topic] = last_seq(topic, 0) + 1
            index = None if tail_of is None else tail_of(tag)
            tail = device_tail if index is None else tails[index]
            if quality is _GOOD:
                if ts != ts_key:
                    ts_key = ts
                    ts_part = _json_ts(ts) + b',"seq":'
                payload = b'{"value":%b%b%b%d%b' % (text, unit_part, ts_part, seq, tail)
            else:
                payload = _json(tag_payload_dict(sample, unit=units[tag], seq=seq))
                if len(tail) > 1:
                    payload = payload[:-1] + tail
            append(_new_message(Message, (topic, payload, False)))
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
_VALUE_OF: Final = operator.itemgetter(2)  # Sample.value
_add: Final = operator.add


def _value_texts(samples: Sequence[Sample]) -> list[bytes]:
    """The JSON of each sample's value, as ``orjson.dumps(value)`` writes it alone.

    One ``orjson.dumps`` of the list of values, cut at its commas: numbers, booleans and null hold none. When a
    value does (a string, an array, a structure) the pieces do not add up, and each value is dumped on its own.
    """
    values = list(map(_VALUE_OF, samples))
    texts = orjson.dumps(values)[1:-1].split(b",")
    if len(texts) != len(values):
        return list(map(orjson.dumps, values))
    return texts


# ------------------------------------------------------------------------------------------- payloads


@functools.lru_cache(maxsize=1024)
def format_ts(ts: float) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``: ``2026-11-26T04:43:00.123Z``.

    Cached: the readings of one Modbus response (or one OPC UA notification burst) share their timestamp.
    """
    whole = math.floor(ts)  # not int(): before 1970 that rounds up and leaves negative milliseconds
    millis = round((ts - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return f"{_utc_second(whole)}.{millis:03d}Z"


@functools.lru_cache(maxsize=4096)
def _utc_second(whole: int) -> str:
    # strftime is the expensive part of a timestamp, and one poll cycle's samples share their second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def tag_payload_dict(
    sample: Sample, *, unit: str | None, seq: int, historical: bool = False
) -> dict[str, Any]:
    _, _, value, quality, ts, status = sample
    if isinstance(value, float) and not -_INF < value < _INF:
        value = None  # JSON has no NaN/Infinity: a non-finite float is published as null (its quality is bad)
    body: dict[str, Any] = {
        "value": value,
        "unit": unit,
        "quality": quality,  # a StrEnum: orjson writes its value
        "ts": format_ts(ts),
        "seq": seq,
    }
    if quality is not _GOOD and status:
        body["status"] = status
    if historical:
        body["historical"] = True
    return body


def _json(body: Any) -> bytes:
    """``orjson.dumps`` copied into a bytes object of its exact size.

    orjson 3.13 returns bytes that keep a 4 KiB allocation behind a payload of about a hundred bytes; queued
    and in-flight messages would each hold 4 KiB. The copy keeps a message's memory to its size.
    """
    return memoryview(orjson.dumps(body)).tobytes()


def encode_tag_payload(sample: Sample, *, unit: str | None, seq: int, historical: bool = False) -> bytes:
    """Per-tag payload: ``{"value", "unit", "quality", "ts", "seq"}`` (+ ``status``, ``historical``)."""
    if sample.quality is not _GOOD or historical:
        return _json(tag_payload_dict(sample, unit=unit, seq=seq, historical=historical))
    # A good live sample, once per value in per-tag mode: the bytes tag_payload_dict + orjson would give, joined
    # from parts (orjson writes NaN/Infinity as null too), into an exact-size bytes object; a property test
    # (tests/unit/test_hot_path_equivalence.py) checks the bytes are the same.
    return b"".join(
        (
            b'{"value":',
            orjson.dumps(sample.value),
            _good_unit_part(unit),
            _json_ts(sample.ts),
            b',"seq":',
            orjson.dumps(seq),
            b"}",
        )
    )


@functools.lru_cache(maxsize=256)
def _good_unit_part(unit: str | None) -> bytes:
    # What follows the value in a good per-tag payload, up to the ts: a device has a handful of units.
    return b',"unit":' + orjson.dumps(unit) + b',"quality":"good","ts":'


@functools.lru_cache(maxsize=1024)
def _json_ts(ts: float) -> bytes:
    # The readings of one response share their ts, as for format_ts. Kept through _json, which copies orjson's
    # output to exact-size bytes (orjson's own buffers are page-sized), so the cache stays small.
    return _json(format_ts(ts))


def mark_historical(payload: bytes) -> bytes:
    """The same per-tag or batch payload with ``"historical": true`` added (for messages put in the spool).

    Payloads are JSON objects written by the encoders above, so the member is appended before the final
    brace without parsing; a payload already marked is returned unchanged.
    """
    if payload.endswith(b',"historical":true}'):
        return payload
    if not payload.endswith(b"}"):
        raise ValueError("not a JSON object payload")
    if payload.rstrip() == b"{}":
        return b'{"historical":true}'
    return payload[:-1] + b',"historical":true}'


def encode_batch_payload(
    samples: Sequence[Sample],
    *,
    units: Mapping[str, str | None],
    ts: float,
    seq: int,
    historical: bool = False,
) -> bytes:
    """Batch payload: ``{"ts", "seq", "samples": [{"tag", "value", "unit", "quality", "ts"[, "status"]}]}``."""
    # The hot loop of batch mode, once per value: fields unpacked in one step, no helper calls, and each distinct
    # ts formatted once (the samples of one read share theirs).
    rows: list[dict[str, Any]] = []
    append = rows.append
    units_get = units.get
    last_ts = math.nan  # equal to no ts, so the first sample formats its own
    last_text = ""
    for _, tag, value, quality, sample_ts, status in samples:
        if sample_ts != last_ts:
            last_ts = sample_ts
            last_text = format_ts(sample_ts)
        if isinstance(value, float) and not -_INF < value < _INF:
            value = None  # as in tag_payload_dict
        row: dict[str, Any] = {
            "tag": tag,
            "value": value,
            "unit": units_get(tag),
            "quality": quality,
            "ts": last_text,
        }
        if quality is not _GOOD and status:
            row["status"] = status
        append(row)
    body: dict[str, Any] = {"ts": format_ts(ts), "seq": seq, "samples": rows}
    if historical:
        body["historical"] = True
    return _json(body)


class BatchEncoder:
    """``encode_batch_payload`` for the tags of one device, byte for byte, for less CPU per value.

    Building a row dict per value is most of ``encode_batch_payload``'s cost. Here the constant parts of a good
    row are prepared once per tag (``{"tag":"ch001/voltage","value":`` and ``,"unit":"V","quality":"good","ts":``),
    the values of a whole batch are serialised by one ``orjson.dumps`` of their list and cut at the commas, each
    distinct ``ts`` is written once, and the rows are joined in C. Any batch that is not plain (a sample that is
    not good, a tag not given here, a value whose JSON holds a comma, e.g. a string) goes to
    ``encode_batch_payload`` instead, so the bytes are always the same as that function's.
    """

    __slots__ = ("_heads", "_middles", "_units")

    def __init__(self, units: Mapping[str, str | None]) -> None:
        """``units``: the unit (or None) of every tag of the device."""
        self._units = units
        self._heads = {tag: b'{"tag":' + orjson.dumps(tag) + b',"value":' for tag in units}
        # Shared by the tags with one unit: one bytes object per unit, not per tag.
        by_unit = {unit: b',"unit":' + orjson.dumps(unit) + b',"quality":"good","ts":' for unit in set(units.values())}
        self._middles = {tag: by_unit[unit] for tag, unit in units.items()}

    def encode(self, samples: Sequence[Sample], *, ts: float, seq: int, historical: bool = False) -> bytes:
        """The batch payload of ``samples`` sent at ``ts`` (epoch seconds) with ``seq``: see encode_batch_payload."""
        rows = self._good_rows(samples)
        if rows is None:
            return encode_batch_payload(samples, units=self._units, ts=ts, seq=seq, historical=historical)
        # orjson writes every JSON object compactly, in insertion order: {"ts":..,"seq":..,"samples":[..]}.
        return b"".join(
            (
                b'{"ts":',
                orjson.dumps(format_ts(ts)),
                b',"seq":',
                orjson.dumps(seq),
                b',"samples":[',
                rows,
                b'],"historical":true}' if historical else b"]}",
            )
        )

    def _good_rows(self, samples: Sequence[Sample]) -> bytes | None:
        """The rows of a batch of good samples of known tags, or None when the batch is not that plain."""
        if not samples:
            return None
        _, tags, values, qualities, times, _ = zip(*samples, strict=True)
        if qualities.count(_GOOD) != len(qualities):
            return None
        # Numbers, booleans and null hold no comma; a string may: then the pieces do not add up.
        value_texts = orjson.dumps(values)[1:-1].split(b",")
        if len(value_texts) != len(values):
            return None
        try:
            heads = list(map(self._heads.__getitem__, tags))
        except KeyError:  # a tag this encoder was not given: encode_batch_payload writes its unit as null
            return None
        middles = map(self._middles.__getitem__, tags)
        tails = {moment: orjson.dumps(format_ts(moment)) + b"}" for moment in dict.fromkeys(times)}
        return b",".join(map(b"".join, zip(heads, value_texts, middles, map(tails.__getitem__, times), strict=True)))


def encode_equipment_status(*, connected: bool, since: float, error: str | None, gateway: str | None = None) -> bytes:
    """Retained ``_status``: ``{"connected", "since", "error"}`` plus ``"gateway"`` (the id of the gateway
    that reads the equipment) when given: a subscriber trusts ``connected`` only while that gateway's own
    retained status says ``online`` (after a crash the will marks the gateway offline, not each equipment)."""
    body: dict[str, object] = {"connected": connected, "since": format_ts(since), "error": error}
    if gateway is not None:
        body["gateway"] = gateway
    return _json(body)


def encode_meta(
    *, device: str, protocol: str, tags: Iterable[TagMeta], publish_mode: str, interval_ms: int
) -> bytes:
    """Retained ``_meta``: the tag catalogue of one equipment."""
    return _json(
        {
            "schema": SCHEMA_VERSION,
            "equipment": device,
            "protocol": protocol,
            "publish": publish_mode,
            "interval_ms": interval_ms,
            "tags": {meta.tag: _meta_entry(meta) for meta in tags},
        }
    )


def encode_meta_parts(
    *,
    device: str,
    protocol: str,
    tags: Iterable[TagMeta],
    publish_mode: str,
    interval_ms: int,
    max_payload_bytes: int,
    context: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Retained ``_meta`` in parts of at most ``max_payload_bytes`` each (a tag whose entry alone is larger gets
    a part of its own, the only way it can exceed the limit).

    One part: exactly ``encode_meta``. Several: each part is the same header plus ``"part": k`` (from 1),
    ``"parts": N``, ``"digest"`` (the same in every part of one catalogue, so a subscriber can tell parts of
    an older catalogue apart) and the ``"tags"`` of that part, in catalogue order; the union of the parts'
    ``tags`` is the catalogue.

    ``context``: a device with context keys lists them in the header as ``"context": {key: tag}`` (a repeat
    instance's key as ``"{name pattern}/{tag}"``, e.g. ``"ch{n:03d}/cell_id"``); without, the header has no
    ``context`` member.
    """
    header: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "equipment": device,
        "protocol": protocol,
        "publish": publish_mode,
        "interval_ms": interval_ms,
    }
    if context:
        header["context"] = dict(context)
    entries = [orjson.dumps(meta.tag) + b":" + orjson.dumps(_meta_entry(meta)) for meta in tags]
    whole = b"".join((orjson.dumps({**header, "tags": {}})[:-2], b",".join(entries), b"}}"))
    if len(whole) <= max_payload_bytes:
        return [whole]
    digest = hashlib.sha256(whole).hexdigest()[:16]
    # The header of a part, with room for the largest part numbers: 7 digits each (250,000 tags at most).
    head_size = len(orjson.dumps({**header, "part": 9_999_999, "parts": 9_999_999, "digest": digest, "tags": {}}))
    # A part is its header (ending in '"tags":{') + its entries, comma-separated + '}}': head_size + entries + commas.
    groups: list[list[bytes]] = []
    size = 0
    for entry in entries:
        if groups and size + len(entry) + 1 <= max_payload_bytes:
            groups[-1].append(entry)
            size += len(entry) + 1
        else:
            groups.append([entry])
            size = head_size + len(entry)
    parts: list[bytes] = []
    for number, group in enumerate(groups, start=1):
        head = orjson.dumps({**header, "part": number, "parts": len(groups), "digest": digest, "tags": {}})[:-2]
        parts.append(b"".join((head, b",".join(group), b"}}")))
    return parts


def _meta_entry(meta: TagMeta) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": meta.type,
        "unit": meta.unit,
        "min": meta.min,
        "max": meta.max,
        "description": meta.description,
        "source": meta.source,
    }
    # Only arrays and structures carry these keys: a scalar's entry stays as it was.
    if meta.shape is not None:
        entry["shape"] = list(meta.shape)
    if meta.fields is not None:
        entry["fields"] = fields_as_written(meta.fields)
    return entry


def encode_gateway_status(*, online: bool, gateway_id: str, ts: float, version: str) -> bytes:
    """Retained gateway status; the MQTT will carries the same shape with ``online: false``."""
    return _json(
        {"online": online, "gateway": gateway_id, "since": format_ts(ts), "version": version, "schema": SCHEMA_VERSION}
    )
