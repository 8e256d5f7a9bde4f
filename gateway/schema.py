"""The normalised schema (version 1), neutral to the output encoding: Sample, Quality, statuses, topics, the tag
catalogue entry (TagMeta) and packet-size limits. The UNS JSON payloads are written by ``gateway.encoders.uns_json``.

Everything here is pure: plain values in, bytes or strings out. Topics and payloads are a public API
(see README "Topics and payloads"); change them only on purpose and bump ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple

from gateway.value_shape import FieldShape

SCHEMA_VERSION = 1

Value = float | int | bool | str | list[Any] | dict[str, Any]
"""A published value: a number, boolean or text; OPC UA arrays as (nested) lists, structures as objects."""


class Quality(StrEnum):
    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


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


# ------------------------------------------------------------------------------------------- catalogue


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


META_PART_DEFAULT_BYTES: Final = 256 * 1024
"""Largest ``_meta`` part (whole PUBLISH packet) when ``mqtt.max_packet_size`` is not set. Brokers cap packets
(Mosquitto's ``max_packet_size``, cloud brokers at 128-256 KiB, the MQTT 5 Maximum Packet Size): 256 KiB keeps a
10,000-tag catalogue in a handful of parts that every broker we know of takes."""

PUBLISH_OVERHEAD_BYTES: Final = 32
"""PUBLISH bytes besides topic and payload, rounded up: fixed header (5), topic length (2), packet id (2) and
MQTT 5 properties (a property length; retained control messages carry no properties)."""
