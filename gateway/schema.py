"""The normalised schema (version 1): Sample, Quality, topics and the JSON payload encoders.

Everything here is pure: plain values in, bytes or strings out. Topics and payloads are a public API
(see README "Topics and payloads"); change them only on purpose and bump ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple

import orjson

from gateway.value_shape import FieldShape, fields_as_written

SCHEMA_VERSION = 1

Value = float | int | bool | str | list[Any] | dict[str, Any]
"""A published value: a number, boolean or text; OPC UA arrays as (nested) lists, structures as objects."""


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


# For the per-value encoders: a module global is read much faster than a member off its Enum class.
_GOOD: Final = Quality.GOOD
_INF: Final = math.inf


# Status details used when quality is not good. OPC UA status names (e.g. "BadSensorFailure") are used as-is.
STATUS_COMM_FAILURE = "comm_failure"
STATUS_OUT_OF_RANGE = "out_of_range"
STATUS_NOT_A_NUMBER = "not_a_number"
STATUS_STALE = "stale"
STATUS_DECODE_ERROR = "decode_error"


def device_exception_status(exception_code: int) -> str:
    """Status for a Modbus exception response, e.g. ``device_exception:2`` (illegal data address)."""
    return f"device_exception:{exception_code}"


class Sample(NamedTuple):
    """One normalised reading of one tag.

    ``ts`` is the source timestamp in seconds since the Unix epoch (UTC). ``value`` is None only when
    quality is bad and no value could be read at all. ``status`` says why when quality is not good.
    A NamedTuple, not a frozen dataclass: one is made per published value, and a tuple is built in C
    (a frozen dataclass sets each field through ``object.__setattr__``).
    """

    device: str
    tag: str
    value: Value | None
    quality: Quality
    ts: float
    status: str | None = None


@dataclass(frozen=True, slots=True)
class SampleContext:
    """The context of a device's samples (README "Traceability: context"): the latest good value of each context
    tag, by key, as of the readings being encoded. Encoder-neutral: UNS JSON writes it as ``ctx``; an encoding
    that does not use it publishes the context tags as the ordinary tags they also are.

    ``device`` holds the device's own keys, which every sample carries. ``instances[i]`` holds the keys of the
    tags of one repeat instance (e.g. ``{"cell": ...}`` for the tags of ``ch003``); ``prefixes[i]`` is that
    instance's name and ``instance_of`` maps each such tag to ``i``. A sample's whole context is ``device`` and
    its instance's keys (they never share a key: the tag map check refuses it). A key whose tag has not had a
    good value yet is absent; after one, a bad or uncertain reading of the tag leaves the last good value.
    A new object whenever a value changes, so encoders may cache what they make of one by identity.
    """

    device: Mapping[str, Value]
    instances: tuple[Mapping[str, Value], ...] = ()
    prefixes: tuple[str, ...] = ()
    instance_of: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def of(self, tag: str) -> dict[str, Value]:
        """The whole context of ``tag``'s samples."""
        index = self.instance_of.get(tag)
        if index is None:
            return dict(self.device)
        return {**self.device, **self.instances[index]}


# --------------------------------------------------------------------------------------------- topics

MAX_TOPIC_BYTES: Final = 65535
"""Longest topic name, in UTF-8 bytes: MQTT writes it as a string with a two-byte length (3.1.1 and 5, 1.5.3/1.5.4)."""

SHOWN_TEXT_CHARS: Final = 80
"""Characters of a value shown in an error message before it is cut (see ``quoted``)."""

_SEGMENT_FORBIDDEN = re.compile(r"[+#/\s\x00]")


def quoted(text: str, limit: int = SHOWN_TEXT_CHARS) -> str:
    """``repr(text)`` for messages; a text longer than ``limit`` characters is cut and its size given, so a
    1 MB value makes a one-line message: ``'vvvv...'... (1048576 bytes)``."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text.encode('utf-8', errors='surrogatepass'))} bytes)"


def utf8_length(text: str) -> int:
    """Bytes of ``text`` in UTF-8 (a lone surrogate, which cannot be sent, counts as its 3 bytes)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", errors="surrogatepass"))


def topic_segment_problem(segment: str) -> str | None:
    """Why ``segment`` cannot be one level of an MQTT topic, or None if it can.

    Rejected: empty, wildcards ``+`` ``#``, ``/``, whitespace, NUL, a leading ``$`` (reserved by brokers), and
    text that is not UTF-8 (a lone surrogate such as YAML's ``"\\ud800"``: MQTT topics are UTF-8).
    """
    if not segment:
        return "empty topic segment"
    bad = _SEGMENT_FORBIDDEN.search(segment)
    if bad:
        shown = {" ": "a space", "\t": "a tab", "\n": "a newline", "\x00": "NUL"}.get(bad.group(), repr(bad.group()))
        return f"topic segment {quoted(segment)} contains {shown}"
    if segment.startswith("$"):
        return f"topic segment {quoted(segment)} starts with '$' (reserved by MQTT brokers)"
    if not segment.isascii():
        try:
            segment.encode("utf-8")
        except UnicodeEncodeError:
            return f"topic segment {quoted(segment)} is not UTF-8 text (it holds a lone surrogate)"
    return None


def topic_length_problem(topic: str) -> str | None:
    """Why ``topic`` is too long to publish (more than MAX_TOPIC_BYTES in UTF-8), or None."""
    size = utf8_length(topic)
    if size <= MAX_TOPIC_BYTES:
        return None
    return f"topic {quoted(topic)} is longer than the {MAX_TOPIC_BYTES} bytes MQTT allows"


def topic_path_problem(path: str) -> str | None:
    """Why a slash-separated path (e.g. a tag name ``dryer/zone03/air_temperature``) is not a valid topic tail."""
    for segment in path.split("/"):
        problem = topic_segment_problem(segment)
        if problem:
            return problem
    return None


@dataclass(frozen=True, slots=True)
class EquipmentTopics:
    """The topics of one piece of equipment: ``{enterprise}/{site}/{area}/{line}/{equipment}/...``."""

    base: str

    @classmethod
    def of(cls, *, enterprise: str, site: str, area: str, line: str, equipment: str) -> EquipmentTopics:
        return cls(base=f"{enterprise}/{site}/{area}/{line}/{equipment}")

    def tag(self, tag: str) -> str:
        return f"{self.base}/{tag}"

    @property
    def batch(self) -> str:
        return f"{self.base}/_batch"

    @property
    def status(self) -> str:
        return f"{self.base}/_status"

    @property
    def meta(self) -> str:
        return f"{self.base}/_meta"

    def meta_part(self, part: int) -> str:
        """Topic of part ``part`` (from 1) of a split ``_meta``: ``_meta`` itself, then ``_meta/2``, ``_meta/3``..."""
        return self.meta if part == 1 else f"{self.base}/_meta/{part}"


def gateway_status_topic(*, enterprise: str, site: str, gateway_id: str) -> str:
    return f"{enterprise}/{site}/_gateway/{gateway_id}/status"


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


@dataclass(frozen=True, slots=True)
class TagMeta:
    """One entry of an equipment's retained ``_meta`` catalogue."""

    tag: str
    type: str
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    description: str | None = None
    source: str | None = None  # e.g. "holding:1000" or "ns=2;s=Coater01.Line.Speed"
    shape: tuple[int, ...] | None = None  # array: length per dimension, outermost first (0: any length)
    fields: tuple[FieldShape, ...] | None = None  # structure: its fields in order, nested ones with their shape


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


META_PART_DEFAULT_BYTES: Final = 256 * 1024
"""Largest ``_meta`` part (whole PUBLISH packet) when ``mqtt.max_packet_size`` is not set. Brokers cap packets
(Mosquitto's ``max_packet_size``, cloud brokers at 128-256 KiB, the MQTT 5 Maximum Packet Size): 256 KiB keeps a
10,000-tag catalogue in a handful of parts that every broker we know of takes."""

PUBLISH_OVERHEAD_BYTES: Final = 32
"""PUBLISH bytes besides topic and payload, rounded up: fixed header (5), topic length (2), packet id (2) and
MQTT 5 properties (a property length; retained control messages carry no properties)."""


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
