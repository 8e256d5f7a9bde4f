"""The Sparkplug B 3.0 encoding (README "Sparkplug B").

Topics ``spBv1.0/{group_id}/{NBIRTH|NDATA|NDEATH|DBIRTH|DDATA|DDEATH}/{edge_node_id}[/{device}]``: the gateway is
the edge node, every equipment a device. Payloads are the specification's protobuf ``Payload``
(sparkplug_b.proto, compiled into ``sparkplug_b_pb2`` with the ``protobuf`` library).

``SparkplugEdgeNode`` holds what the specification keeps per edge node: ``bdSeq`` (one per MQTT connect, carried by
the NDEATH will and the NBIRTH after it) and ``seq`` (0 in NBIRTH, then +1 per DBIRTH/DDATA/DDEATH, 255 -> 0).
``SparkplugDeviceEncoder`` makes one device's DBIRTH (every metric with name, alias, datatype and properties),
DDATA (by alias only) and DDEATH.

``seq`` must count in the order messages reach the broker, which only the MQTT connection knows (live data,
replays from the spool and births after a reconnect interleave there). So the encoders make payloads without
``seq`` and ``SparkplugEdgeNode.stamp`` appends it as each message is handed to the connection
(``gateway.mqtt.options.SessionHooks``); a message left unacknowledged by a lost connection is renumbered after the
next births, as historical data (``resend``). No Sparkplug message is retained.
"""

from __future__ import annotations

import json
import operator
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from gateway.encoders import sparkplug_b_pb2 as pb
from gateway.encoders.base import DeviceEncoder, Encoder, Message
from gateway.schema import Quality, Sample, TagMeta
from gateway.vocabulary import DataType

__all__ = [
    "NAMESPACE",
    "QUALITY_CODES",
    "REBIRTH_METRIC",
    "Command",
    "SparkplugDeviceEncoder",
    "SparkplugEdgeNode",
    "datatype_of",
    "parse_command",
]

NAMESPACE: Final = "spBv1.0"
REBIRTH_METRIC: Final = "Node Control/Rebirth"
BDSEQ_METRIC: Final = "bdSeq"

QUALITY_PROPERTY: Final = "Quality"
"""The metric property Ignition reads a value's quality from (Int32, Ignition 8 QualityCode)."""
QUALITY_CODES: Final[Mapping[Quality, int]] = {
    Quality.GOOD: 192,  # Good
    Quality.UNCERTAIN: 0x40000100,  # Uncertain (1073742080): level bit 30, subcode 256
    Quality.BAD: -0x7FFFFE00,  # Bad (-2147483136 = 0x80000200 as Int32): level bit 31, subcode 512
}
"""Ignition 8's codes (Cirrus Link, "Understanding and decoding Ignition QualityCodes"). Not OPC classic 0/64: Ignition
8 reads 0 as Good_Unspecified, so a bad value sent as 0 would show good."""
_QUALITY_WIRE: Final = {quality: code & 0xFFFFFFFF for quality, code in QUALITY_CODES.items()}
"""PropertyValue.int_value is a uint32 holding an Int32's bits (two's complement), as the .proto says."""
_GOOD: Final = Quality.GOOD
_TAG: Final = operator.attrgetter("tag")

# Sparkplug datatype ids (specification 6.4.16, DataType in sparkplug_b.proto).
INT32: Final = pb.Int32
INT64: Final = pb.Int64
UINT64: Final = pb.UInt64
FLOAT: Final = pb.Float
DOUBLE: Final = pb.Double
BOOLEAN: Final = pb.Boolean
STRING: Final = pb.String

# Tag types (TagMeta.type: gateway.vocabulary.DataType, or "variant" for an OPC UA tag without a type) ->
# Sparkplug datatype. Numeric tags are Double: scale and offset turn any register into a real number, so the
# birth's datatype holds for every value the tag can have. A variant (any OPC UA value, arrays and structures
# included) is String holding its JSON.
_DATATYPES: Final[Mapping[str, int]] = {
    **{kind.value: DOUBLE for kind in DataType if kind.is_numeric},
    DataType.BOOL.value: BOOLEAN,
    DataType.STRING.value: STRING,
}


def datatype_of(tag_type: str) -> int:
    """The Sparkplug datatype a tag of ``tag_type`` (TagMeta.type) is published with."""
    return _DATATYPES.get(tag_type, STRING)


# seq as the protobuf field it is (number 3, varint: tag byte 0x18), appended after the metrics: where the encoder
# would put it anyway (fields 4 and 5 are not used), and a parser takes the last occurrence.
_SEQ_FIELD: Final = tuple(
    bytes((0x18, seq)) if seq < 0x80 else bytes((0x18, (seq & 0x7F) | 0x80, seq >> 7)) for seq in range(256)
)


def _ms(ts: float) -> int:
    return int(ts * 1000)


def _set_value(metric: pb.Payload.Metric, datatype: int, value: object) -> None:
    """Fill the metric's value (or ``is_null``) for ``datatype``; a value that does not fit is sent as null."""
    if value is None:
        metric.is_null = True
    elif datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype == DOUBLE:
        if isinstance(value, int | float):
            metric.double_value = float(value)
        else:
            metric.is_null = True
    elif isinstance(value, str):
        metric.string_value = value
    else:
        metric.string_value = json.dumps(value, separators=(",", ":"))


def _quality_properties(metric: pb.Payload.Metric, quality: Quality) -> None:
    properties = metric.properties
    properties.keys.append(QUALITY_PROPERTY)
    entry = properties.values.add()
    entry.type = INT32
    entry.int_value = _QUALITY_WIRE[quality]


class SparkplugEdgeNode:
    """The edge node (this gateway): bdSeq, the shared ``seq``, NBIRTH/NDEATH, the replay form of its messages."""

    def __init__(
        self, *, group_id: str, edge_node_id: str, bd_seq: int = 0, clock: Callable[[], float] = time.time
    ) -> None:
        """``bd_seq``: the bdSeq of the first connect. ``clock``: epoch seconds (the NBIRTH of ``gateway_status``)."""
        self._clock = clock
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.prefix = f"{NAMESPACE}/{group_id}/"
        """``spBv1.0/{group_id}/``: every topic of the node starts with it."""
        self._kind_end = len(self.prefix) + 6  # NBIRTH, DBIRTH, DDEATH, NDEATH, DDATA/, NDATA/
        self.bd_seq = bd_seq % 256
        self._seq = 0
        self._next_alias = 0
        self._aliases: dict[tuple[str, str, int], int] = {}
        """(device, tag, datatype) -> alias, for every metric given an alias by ``aliases_for`` in this run."""

    def topic(self, message_type: str, device: str | None = None) -> str:
        base = f"{self.prefix}{message_type}/{self.edge_node_id}"
        return base if device is None else f"{base}/{device}"

    @property
    def ncmd_topic(self) -> str:
        """What to subscribe to for node commands (Rebirth)."""
        return self.topic("NCMD")

    @property
    def dcmd_filter(self) -> str:
        """What to subscribe to for device commands (all refused: Cellgate does not write to the PLCs)."""
        return self.topic("DCMD", "+")

    def aliases_for(self, device: str, metrics: Sequence[tuple[str, int]]) -> dict[str, int]:
        """Aliases of a device's metrics (tag, datatype): the alias a metric of the same device, name and datatype
        had before in this run (a reload that changes a device keeps the aliases of the tags it keeps, so data spooled
        before it still reads right), a new one otherwise. An alias never names two metrics in one run: unique per
        edge node, as the specification asks, without an NBIRTH when a device's tags change."""
        table = self._aliases
        aliases: dict[str, int] = {}
        for tag, datatype in metrics:
            key = (device, tag, datatype)
            alias = table.get(key)
            if alias is None:
                alias = table[key] = self._next_alias
                self._next_alias += 1
            aliases[tag] = alias
        return aliases

    def will(self) -> Message:
        """NDEATH for the CONNECT of the current bdSeq: only the bdSeq metric, no seq (to be sent with QoS 1)."""
        payload = pb.Payload()
        metric = payload.metrics.add()
        metric.name = BDSEQ_METRIC
        metric.datatype = INT64
        metric.long_value = self.bd_seq
        return Message(self.topic("NDEATH"), payload.SerializeToString())

    def birth(self, now: float) -> Message:
        """NBIRTH (``stamp`` gives it seq 0 and starts a new seq run): bdSeq and Node Control/Rebirth."""
        payload = pb.Payload(timestamp=_ms(now))
        bd_seq = payload.metrics.add()
        bd_seq.name = BDSEQ_METRIC
        bd_seq.timestamp = _ms(now)
        bd_seq.datatype = INT64
        bd_seq.long_value = self.bd_seq
        rebirth = payload.metrics.add()
        rebirth.name = REBIRTH_METRIC
        rebirth.timestamp = _ms(now)
        rebirth.datatype = BOOLEAN
        rebirth.boolean_value = False
        return Message(self.topic("NBIRTH"), payload.SerializeToString())

    def next_connection(self) -> None:
        """Count a new MQTT CONNECT: the next ``will()`` and ``birth()`` carry bdSeq + 1 (255 -> 0)."""
        self.bd_seq = (self.bd_seq + 1) % 256

    def gateway_status(self, *, online: bool) -> Message:
        """The Encoder protocol's gateway status: NBIRTH when online, the NDEATH will when offline."""
        return self.birth(self._clock()) if online else self.will()

    def _kind(self, topic: str) -> str | None:
        """NBIRTH, DBIRTH, DDEATH, NDEATH, DDATA/ or NDATA/ for a topic of this node's group; None otherwise."""
        return topic[len(self.prefix) : self._kind_end] if topic.startswith(self.prefix) else None

    def stamp(self, topic: str, payload: bytes) -> bytes:
        """``payload`` with the next ``seq`` as it is handed to the connection: 0 for an NBIRTH (a new run), none
        for NDEATH, +1 (255 -> 0) for the others. Messages of other encodings pass unchanged."""
        if not topic.startswith(self.prefix):
            return payload
        kind = topic[len(self.prefix) : self._kind_end]
        if kind == "NBIRTH":
            self._seq = 0
        elif kind == "NDEATH":
            return payload
        else:
            self._seq = (self._seq + 1) & 0xFF
        return payload + _SEQ_FIELD[self._seq]

    def unstamp(self, topic: str) -> None:
        """Take back the ``seq`` the last ``stamp`` gave ``topic``: that message will not be sent (too large for the
        broker), so the next one gets its number and ``seq`` stays contiguous on the wire."""
        kind = self._kind(topic)
        if kind is not None and kind not in ("NBIRTH", "NDEATH"):
            self._seq = (self._seq - 1) & 0xFF

    def resend(self, topic: str, payload: bytes) -> bytes | None:
        """A message the last connection left unacknowledged, after the next births: data renumbered in the new seq
        run and historical; births and deaths None (the new births say the current state). Others unchanged."""
        unstamped = self.resend_form(topic, payload)
        return self.stamp(topic, unstamped) if unstamped is not None and unstamped is not payload else unstamped

    def resend_form(self, topic: str, payload: bytes) -> bytes | None:
        """What ``resend`` stamps: data historical without ``seq``, None for births and deaths, others unchanged."""
        kind = self._kind(topic)
        if kind is None:
            return payload
        if kind in ("DDATA/", "NDATA/"):
            return self._historical_data(payload)
        return None

    def historical(self, topic: str, payload: bytes) -> bytes | None:
        """The spool's form of a message: data marked ``is_historical`` on every metric, without ``seq`` (given at the
        replay); None for births and deaths (the births after the next connect say the state). ValueError for a
        message of another encoding or a payload that does not parse."""
        kind = self._kind(topic)
        if kind is None or f"/{self.edge_node_id}" not in topic:
            raise ValueError(f"not a Sparkplug message of this edge node: {topic}")
        if kind not in ("DDATA/", "NDATA/"):
            return None
        return self._historical_data(payload)

    @staticmethod
    def _historical_data(payload: bytes) -> bytes:
        message = pb.Payload()
        try:
            message.ParseFromString(payload)
        except Exception as error:
            raise ValueError(f"not a Sparkplug payload: {error}") from error
        message.ClearField("seq")
        for metric in message.metrics:
            metric.is_historical = True
        return message.SerializeToString()


@dataclass(frozen=True, slots=True)
class Command:
    """What an NCMD/DCMD asked: a Rebirth, and the metrics it tried to write (refused: Cellgate is read-only)."""

    rebirth: bool
    writes: tuple[str, ...]
    """Metric names (or ``alias:N``) of the writes asked for."""
    device: str | None
    malformed: bool = False


def parse_command(node: SparkplugEdgeNode, topic: str, payload: bytes) -> Command | None:
    """An NCMD to ``node`` or a DCMD to one of its devices; None for any other topic."""
    device: str | None = None
    if topic != node.ncmd_topic:
        prefix = node.topic("DCMD") + "/"
        if not topic.startswith(prefix):
            return None
        device = topic[len(prefix) :]
    command = pb.Payload()
    try:
        command.ParseFromString(payload)
    except Exception:
        return Command(rebirth=False, writes=(), device=device, malformed=True)
    rebirth = False
    writes: list[str] = []
    for metric in command.metrics:
        if (
            device is None
            and metric.name == REBIRTH_METRIC
            and metric.WhichOneof("value") == "boolean_value"
        ):
            rebirth = rebirth or metric.boolean_value
            continue
        writes.append(metric.name or f"alias:{metric.alias}")
    return Command(rebirth=rebirth, writes=tuple(writes), device=device)


class SparkplugDeviceEncoder:
    """One equipment as a Sparkplug device: DBIRTH with every metric, DDATA by alias, DDEATH on link loss.

    Aliases are unique per edge node (``SparkplugEdgeNode.aliases_for``). The last value of every tag is kept for the
    next DBIRTH (after a Rebirth or reconnect). Between a DDEATH and the next DBIRTH the device is not ``alive``:
    its samples only update the last values (a host must not see DDATA of a dead device).
    """

    def __init__(
        self, *, node: SparkplugEdgeNode, device: str, catalogue: Sequence[TagMeta], alias_base: int | None = None
    ) -> None:
        """``alias_base``: aliases ``alias_base``, +1, ... in catalogue order; None: from the node's alias table
        (``SparkplugEdgeNode.aliases_for``: a device rebuilt by a reload keeps the aliases of the tags it keeps)."""
        self.node = node
        self.device = device
        self.alive = False
        self._catalogue = list(catalogue)
        self._datatype = {meta.tag: datatype_of(meta.type) for meta in self._catalogue}
        if alias_base is None:
            self._alias = node.aliases_for(device, [(meta.tag, self._datatype[meta.tag]) for meta in self._catalogue])
        else:
            self._alias = {meta.tag: alias_base + index for index, meta in enumerate(self._catalogue)}
        self._last: dict[str, Sample] = {}
        """The last sample of each tag the general path (or a dead device's samples, or ``adopt``) gave since the
        prebuilt payload last held every tag's value (``_template_holds_last``): these override the payload's."""
        self._template_holds_last = False
        """The prebuilt payload's metrics hold each tag's last value (good, with its timestamp), under ``_last``.
        A poll taken from it keeps no sample: nothing per value for the garbage collector to follow."""
        # DDATA of every tag at once, all good numbers (a poll of a numeric device): this payload's metrics get the new
        # values and timestamps, no metric object is made (see _encode_every_tag). None: the device has other types.
        self._template: pb.Payload | None = None
        self._metric_of: dict[str, pb.Payload.Metric] = {}  # tag -> its metric in the template (kept views)
        self._ordered: tuple[tuple[str, pb.Payload.Metric], ...] = ()  # (tag, metric) in the last poll's order
        if self._catalogue and all(datatype == DOUBLE for datatype in self._datatype.values()):
            self._template = pb.Payload()
            for meta in self._catalogue:
                self._metric_of[meta.tag] = self._template.metrics.add(
                    alias=self._alias[meta.tag], timestamp=0, double_value=0.0
                )
            self._ordered = tuple(self._metric_of.items())
        self.ddata_topic = node.topic("DDATA", device)
        self.dbirth_topic = node.topic("DBIRTH", device)
        self.ddeath_topic = node.topic("DDEATH", device)

    # Sparkplug numbers per edge node and restarts at every NBIRTH: nothing to persist between runs.
    @property
    def seq_topics(self) -> list[str]:
        return []

    def seq_need(self, samples: int) -> int:
        return 1

    def restore_seq(self, last_seq: Mapping[str, int]) -> None:
        return None

    def seq_snapshot(self) -> dict[str, int]:
        return {}

    def encode(self, samples: Sequence[Sample], now: float) -> list[Message]:
        """One DDATA with a metric per sample: alias, timestamp, value, and the Quality property when the
        quality is not good (a metric without it is good, as Ignition reads it; it halves the cost per value).
        Nothing while the device is not alive."""
        if self._template is not None and len(samples) == len(self._ordered) and self.alive:
            data = self._encode_every_tag(samples, now)
            if data is not None:
                return [Message(self.ddata_topic, data)]
        last = self._last
        if not self.alive:
            for sample in samples:
                last[sample.tag] = sample
            return []
        payload = pb.Payload(timestamp=_ms(now))
        add = payload.metrics.add
        aliases = self._alias
        datatypes = self._datatype
        for sample in samples:
            tag = sample.tag
            last[tag] = sample
            value = sample.value
            datatype = datatypes[tag]
            if datatype == DOUBLE and value.__class__ is float:  # the common case, without the general call
                metric = add(alias=aliases[tag], timestamp=int(sample.ts * 1000), double_value=value)
            else:
                metric = add(alias=aliases[tag], timestamp=int(sample.ts * 1000))
                _set_value(metric, datatype, value)
            if sample.quality is not _GOOD:  # a metric without the property is good (Ignition's default)
                _quality_properties(metric, sample.quality)
        return [Message(self.ddata_topic, payload.SerializeToString())]

    def _encode_every_tag(self, samples: Sequence[Sample], now: float) -> bytes | None:
        """The DDATA of ``samples`` when they are every tag once, each a good number, from the prebuilt payload; None
        when they are not (then the general path encodes them; the payload is overwritten before its next use).

        A poll reads its tags in the same order every time: while the tags come in the order of the last poll taken
        here (``_ordered``), each sample's metric is the next one of that order, with no lookup and no check for a
        tag given twice (an order of distinct tags, matched tag by tag, has none). The payload then holds the last
        value of every tag (``_template_holds_last``)."""
        template = self._template
        assert template is not None
        ts_seen, ms = -1.0, 0  # the samples of one read share their ts: convert it once per read
        for (_, tag, value, quality, ts, _), (expected, metric) in zip(samples, self._ordered, strict=True):
            if value.__class__ is not float:
                if value.__class__ is not int or quality is not _GOOD:  # a register's whole number is a Double too
                    return None
                value = float(value)
            elif quality is not _GOOD:
                return None
            if tag is not expected and tag != expected:
                if not self._fill_in_new_order(samples):
                    return None
                break
            if ts != ts_seen:
                ts_seen, ms = ts, int(ts * 1000)
            metric.timestamp = ms
            metric.double_value = value
        if self._last:
            self._last.clear()  # older than this poll, which has every tag
        self._template_holds_last = True
        template.timestamp = _ms(now)
        return template.SerializeToString()

    def _fill_in_new_order(self, poll: Sequence[Sample]) -> bool:
        """Fill the prebuilt payload from ``poll`` by tag and keep its order as ``_ordered``; False when a tag is
        given twice or a value is not a good number."""
        if len(set(map(_TAG, poll))) != len(poll):
            return False
        metric_of = self._metric_of
        ordered: list[tuple[str, pb.Payload.Metric]] = []
        for _, tag, value, quality, ts, _ in poll:
            if value.__class__ is not float:
                if value.__class__ is not int or quality is not _GOOD:
                    return False
                value = float(value)
            elif quality is not _GOOD:
                return False
            metric = metric_of[tag]
            metric.timestamp = int(ts * 1000)
            metric.double_value = value
            ordered.append((tag, metric))
        self._ordered = tuple(ordered)
        return True

    def _last_values(self) -> dict[str, Sample]:
        """The last sample of every tag seen. One the prebuilt payload holds has its timestamp in whole milliseconds:
        ``ts`` is the middle of that millisecond, so ``_ms(ts)`` gives it back exactly."""
        last: dict[str, Sample] = {}
        if self._template_holds_last:
            device = self.device
            for tag, metric in self._metric_of.items():
                last[tag] = Sample(device, tag, metric.double_value, _GOOD, (metric.timestamp + 0.5) / 1000)
        last.update(self._last)
        return last

    def adopt(self, previous: SparkplugDeviceEncoder) -> None:
        """Take the last values of ``previous`` (the same device before a reload) for the tags kept with the same
        datatype: the next DBIRTH carries them."""
        for tag, sample in previous._last_values().items():
            if self._datatype.get(tag) == previous._datatype.get(tag):
                self._last[tag] = sample

    def birth(self, now: float) -> Message:
        """DBIRTH: every metric with name, alias, datatype, its last value (null before the first) and properties
        (engUnit, engLow/engHigh, Documentation from the tag map, and Quality). The device is alive from here."""
        self.alive = True
        return Message(self.dbirth_topic, self._birth_payload(now, quality=None))

    def replay_birth(self, now: float) -> Message:
        """DBIRTH for data replayed while the device's link is down (its historical DDATA must follow a DBIRTH of
        the session): the last values, every one with Quality bad; the device stays not ``alive``."""
        return Message(self.dbirth_topic, self._birth_payload(now, quality=Quality.BAD))

    def _birth_payload(self, now: float, *, quality: Quality | None) -> bytes:
        """``quality`` None: each metric's last quality (bad before the first value)."""
        payload = pb.Payload(timestamp=_ms(now))
        last = self._last
        held = self._metric_of if self._template_holds_last else {}
        for meta in self._catalogue:
            metric = payload.metrics.add()
            metric.name = meta.tag
            metric.alias = self._alias[meta.tag]
            datatype = self._datatype[meta.tag]
            metric.datatype = datatype
            sample = last.get(meta.tag)
            kept = held.get(meta.tag) if sample is None else None
            if kept is not None:  # from the prebuilt payload: a good number as a Double, its timestamp in ms
                metric.timestamp = kept.timestamp
                metric.double_value = kept.double_value
            else:
                metric.timestamp = _ms(sample.ts if sample is not None else now)
                _set_value(metric, datatype, None if sample is None else sample.value)
            properties = metric.properties
            for key, text in (("engUnit", meta.unit), ("Documentation", meta.description)):
                if text is not None:
                    properties.keys.append(key)
                    properties.values.add(type=STRING, string_value=text)
            for key, bound in (("engLow", meta.min), ("engHigh", meta.max)):
                if bound is not None:
                    properties.keys.append(key)
                    properties.values.add(type=DOUBLE, double_value=bound)
            properties.keys.append(QUALITY_PROPERTY)
            if quality is not None:
                shown = quality
            else:
                shown = sample.quality if sample is not None else _GOOD if kept is not None else Quality.BAD
            properties.values.add(type=INT32, int_value=_QUALITY_WIRE[shown])
        return payload.SerializeToString()

    def death(self, now: float) -> Message:
        """DDEATH: the device cannot provide live data (its PLC link dropped); the host marks its metrics stale."""
        self.alive = False
        return Message(self.ddeath_topic, self.death_payload(now))

    @staticmethod
    def death_payload(now: float) -> bytes:
        """A DDEATH's payload (without ``seq``): only the timestamp."""
        return pb.Payload(timestamp=_ms(now)).SerializeToString()

    def link_changed(self, *, connected: bool, now: float) -> Message | None:
        """DBIRTH when the link is (back) up, DDEATH when it drops after a DBIRTH; None for a device never born."""
        if connected:
            return self.birth(now)
        return self.death(now) if self.alive else None

    def status(self, *, connected: bool, since: float, error: str | None, gateway: str | None) -> Message:
        """The link state as Sparkplug says it: DBIRTH when the device is (again) connected, DDEATH when not."""
        return self.birth(since) if connected else self.death(since)

    def meta(self) -> list[Message]:
        """Nothing retained: the DBIRTH carries the catalogue."""
        return []

    def retained_topics(self) -> list[str]:
        return []


if TYPE_CHECKING:  # both fit the seam's protocols (checked by mypy)
    _device_encoder: type[DeviceEncoder] = SparkplugDeviceEncoder
    _encoder: type[Encoder] = SparkplugEdgeNode
