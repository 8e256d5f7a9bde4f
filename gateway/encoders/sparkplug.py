"""The Sparkplug B 3.0 encoding (README "Sparkplug B").

Topics ``spBv1.0/{group_id}/{NBIRTH|NDATA|NDEATH|DBIRTH|DDATA|DDEATH}/{edge_node_id}[/{device}]``: the gateway is
the edge node, every equipment a device. Payloads are the specification's protobuf ``Payload``
(sparkplug_b.proto, compiled into ``sparkplug_b_pb2`` with the ``protobuf`` library).

``SparkplugEdgeNode`` holds what the specification keeps per edge node: ``bdSeq`` (one per MQTT connect, carried by
the NDEATH will and the NBIRTH after it) and ``seq`` (0 in NBIRTH, then +1 per NDATA/DBIRTH/DDATA/DDEATH, 255 -> 0).
``SparkplugDeviceEncoder`` makes one device's DBIRTH (every metric with name, alias, datatype and properties),
DDATA (by alias only) and DDEATH, numbering them from the edge node's ``seq``. Sparkplug messages are never
retained and are published at QoS 0 except the will (QoS 1), as the specification requires.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from gateway.encoders import sparkplug_b_pb2 as pb
from gateway.encoders.base import DeviceEncoder, Encoder, Message
from gateway.schema import Quality, Sample, TagMeta
from gateway.vocabulary import DataType

__all__ = [
    "NAMESPACE",
    "QUALITY_CODES",
    "REBIRTH_METRIC",
    "SparkplugDeviceEncoder",
    "SparkplugEdgeNode",
    "datatype_of",
]

NAMESPACE: Final = "spBv1.0"
REBIRTH_METRIC: Final = "Node Control/Rebirth"
BDSEQ_METRIC: Final = "bdSeq"

QUALITY_PROPERTY: Final = "Quality"
"""The metric property Ignition reads a value's quality from (Int32, OPC classic quality codes)."""
QUALITY_CODES: Final[Mapping[Quality, int]] = {Quality.GOOD: 192, Quality.UNCERTAIN: 64, Quality.BAD: 0}
_GOOD: Final = Quality.GOOD

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
    entry.int_value = QUALITY_CODES[quality]


class SparkplugEdgeNode:
    """The edge node (this gateway): bdSeq, the shared ``seq``, NBIRTH/NDEATH, Rebirth commands, replay form."""

    def __init__(
        self, *, group_id: str, edge_node_id: str, bd_seq: int = 0, clock: Callable[[], float] = time.time
    ) -> None:
        """``bd_seq``: the bdSeq of the first connect (0 for a fresh start; the specification counts per CONNECT).
        ``clock``: epoch seconds, for the NBIRTH of ``gateway_status``."""
        self._clock = clock
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self._prefix = f"{NAMESPACE}/{group_id}"
        self.bd_seq = bd_seq % 256
        self._seq = 0

    def topic(self, message_type: str, device: str | None = None) -> str:
        base = f"{self._prefix}/{message_type}/{self.edge_node_id}"
        return base if device is None else f"{base}/{device}"

    @property
    def ncmd_topic(self) -> str:
        """What to subscribe to for node commands (Rebirth)."""
        return self.topic("NCMD")

    def next_seq(self) -> int:
        """The seq of the next NDATA/DBIRTH/DDATA/DDEATH (after NBIRTH's 0: 1, 2 ... 255, 0, 1 ...)."""
        self._seq = (self._seq + 1) % 256
        return self._seq

    def will(self) -> Message:
        """NDEATH for the CONNECT of the current bdSeq: only the bdSeq metric, no seq (to be sent with QoS 1)."""
        payload = pb.Payload()
        metric = payload.metrics.add()
        metric.name = BDSEQ_METRIC
        metric.datatype = INT64
        metric.long_value = self.bd_seq
        return Message(self.topic("NDEATH"), payload.SerializeToString())

    def birth(self, now: float) -> Message:
        """NBIRTH after a connect (with the will of ``will()``): seq 0, bdSeq and Node Control/Rebirth."""
        self._seq = 0
        payload = pb.Payload(timestamp=_ms(now), seq=0)
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

    def wants_rebirth(self, topic: str, payload: bytes) -> bool:
        """True for an NCMD to this node that sets ``Node Control/Rebirth`` true. Malformed payloads are False."""
        if topic != self.ncmd_topic:
            return False
        command = pb.Payload()
        try:
            command.ParseFromString(payload)
        except Exception:
            return False
        return any(
            metric.name == REBIRTH_METRIC and metric.WhichOneof("value") == "boolean_value" and metric.boolean_value
            for metric in command.metrics
        )

    def historical(self, topic: str, payload: bytes) -> bytes:
        """``payload`` (an NDATA/DDATA of this node) as replayed from the spool: every metric ``is_historical``."""
        if f"/{self.edge_node_id}" not in topic or "DATA/" not in topic:
            raise ValueError(f"not a Sparkplug data message of this edge node: {topic}")
        message = pb.Payload()
        try:
            message.ParseFromString(payload)
        except Exception as error:
            raise ValueError(f"not a Sparkplug payload: {error}") from error
        for metric in message.metrics:
            metric.is_historical = True
        return message.SerializeToString()


class SparkplugDeviceEncoder:
    """One equipment as a Sparkplug device: DBIRTH with every metric, DDATA by alias, DDEATH on link loss.

    Aliases are unique per edge node: ``alias_base`` is where this device's block starts (assembly gives every
    device its own block). The last value of every tag is kept for the next DBIRTH (after a Rebirth or reconnect).
    """

    def __init__(self, *, node: SparkplugEdgeNode, device: str, catalogue: Sequence[TagMeta], alias_base: int) -> None:
        self.node = node
        self.device = device
        self._catalogue = list(catalogue)
        self._alias = {meta.tag: alias_base + index for index, meta in enumerate(self._catalogue)}
        self._datatype = {meta.tag: datatype_of(meta.type) for meta in self._catalogue}
        self._last: dict[str, Sample] = {}
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
        quality is not good (a metric without it is good, as Ignition reads it; it halves the cost per value)."""
        payload = pb.Payload(timestamp=_ms(now), seq=self.node.next_seq())
        add = payload.metrics.add
        last = self._last
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

    def birth(self, now: float) -> Message:
        """DBIRTH: every metric with name, alias, datatype, its last value (null before the first) and properties
        (engUnit, engLow/engHigh, Documentation from the tag map, and Quality)."""
        payload = pb.Payload(timestamp=_ms(now), seq=self.node.next_seq())
        for meta in self._catalogue:
            metric = payload.metrics.add()
            metric.name = meta.tag
            metric.alias = self._alias[meta.tag]
            datatype = self._datatype[meta.tag]
            metric.datatype = datatype
            sample = self._last.get(meta.tag)
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
            quality = sample.quality if sample is not None else Quality.BAD
            properties.values.add(type=INT32, int_value=QUALITY_CODES[quality])
        return Message(self.dbirth_topic, payload.SerializeToString())

    def death(self, now: float) -> Message:
        """DDEATH: the device cannot provide live data (its PLC link dropped); the host marks its metrics stale."""
        payload = pb.Payload(timestamp=_ms(now), seq=self.node.next_seq())
        return Message(self.ddeath_topic, payload.SerializeToString())

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
