"""Pure helpers of the OPC UA source: status → quality, Variant → Value, timestamps, node planning.

Nothing here touches a socket, a clock or a logger: the I/O shell (``opcua.py``) passes the receive time
and the server's namespace array in and carries out what these functions compute.

Conventions (part of the public contract; the README status list should repeat them):

* OPC UA StatusCodes keep their OPC UA name as ``status`` (``BadSensorFailure``, ``UncertainLastUsableValue``).
  Good* codes give quality good and no status. The severity is the top two bits: ``00`` good,
  ``01`` uncertain, ``10``/``11`` bad (Part 4 §7.34.1 says to treat the reserved ``11`` as bad).
* Arrays (and matrices: a Variant with ArrayDimensions) become JSON arrays, nested per dimension, so a
  2 x 3 matrix is ``[[a, b, c], [d, e, f]]``; each element is converted as a scalar would be.
* Structures (ExtensionObjects that asyncua decoded because the server exposes their DataTypeDefinition and the
  source loaded it with ``load_data_type_definitions``) become JSON objects with the definition's field names,
  nested structures and arrays of structures included.
* A value of a type we do not publish (a structure the server does not describe, Null, DataValue,
  DiagnosticInfo, anything unexpected) becomes quality bad with status ``unsupported_type:<TypeName>``: an
  undescribed structure is named by its DataType's BrowseName when the source read it at connect
  (``unsupported_type:PackMLStatus``, see ``name_unsupported``), else by its encoding's node id
  (``unsupported_type:ExtensionObject[ns=2;i=3002]``); an array of something unsupported is ``Array[<that>]``.
* Conversions: Boolean → bool; integer types → int; Float/Double → float (Float is rounded to the shortest
  decimal that round-trips through float32, so 3.7f publishes as 3.7 and not 3.700000047683716);
  String/XmlElement → str; LocalizedText → its text; DateTime → ISO 8601 UTC with milliseconds and ``Z``
  (same format as payload timestamps); ByteString → **base64** (standard alphabet, padded — the encoding
  OPC UA's own JSON mapping uses); Guid → canonical UUID text; NodeId / ExpandedNodeId / QualifiedName →
  their OPC UA string form; StatusCode as a value → its name. Text is always valid Unicode: bytes that were not
  UTF-8 on the wire (asyncua keeps them as lone surrogates) become U+FFFD.
* A value of a supported type that cannot be represented (an integer outside Int64/UInt64, a DateTime that
  leaves the calendar in UTC, a malformed NodeId) becomes quality bad with status ``decode_error``.
* A SourceTimestamp / ServerTimestamp at MinDateTime (≤ 1601-01-01, what servers send for "never set") or
  MaxDateTime counts as absent: the next timestamp in line is used.
* A tag whose namespace URI the server does not list gets quality bad, status ``namespace_unknown``
  (this is our diagnosis, not a server status code, hence snake_case). A node reference that cannot be
  turned into a NodeId (bad GUID or base64 text) gets ``node_id_invalid``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from asyncua import ua
from asyncua.ua import status_codes
from asyncua.ua.uaerrors import UaError

from gateway.schema import STATUS_DECODE_ERROR, Quality, Value
from gateway.sources.base import RawReading
from gateway.tagmap.index_range import INDEX_OUT_OF_RANGE, IndexItem, select
from gateway.tagmap.nodeid import NodeIdKind
from gateway.value_shape import ValueShape, fits
from gateway.vocabulary import OpcUaMode

STATUS_NAMESPACE_UNKNOWN = "namespace_unknown"
STATUS_NODE_ID_INVALID = "node_id_invalid"
UNSUPPORTED_TYPE_PREFIX = "unsupported_type:"
STATUS_SHAPE_MISMATCH = "shape_mismatch"

_SEVERITY_MASK = 0xC0000000
_SEVERITY_UNCERTAIN = 0x40000000
_CODE_MASK = 0xFFFF0000  # low 16 bits are info bits (overflow, limits) and do not change the code's name
_STATUS_BITS = 0xFFFFFFFF
# The widest integers OPC UA has (Int64, UInt64), which is also what the JSON encoder (orjson) can write.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1



# ------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcUaDeviceOptions:
    """Connection and acquisition settings of one OPC UA device (already validated by the tag map).

    ``interval_ms`` is the subscription publishing interval (subscribe) or the poll period (poll);
    ``sampling_interval_ms`` defaults to ``interval_ms``; ``queue_size`` is the server-side monitored-item
    queue; ``timeout_ms`` bounds every network call (and each connect attempt).
    """

    endpoint: str
    namespace_uri: str | None = None
    mode: OpcUaMode = OpcUaMode.SUBSCRIBE
    interval_ms: int = 1000
    sampling_interval_ms: int | None = None
    queue_size: int = 1
    timeout_ms: int = 4000
    username: str | None = None
    password: str | None = None
    structures: bool = False
    """Load the server's DataTypeDefinitions at every connect, so its structures decode into objects."""
    max_queue_age_ms: int = 0
    """Poll mode: skip polls while the data waiting for the sink is this old (0: never; see sources.base.HoldBack)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", OpcUaMode(self.mode))  # "poll" as text is the member POLL

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        return (
            f"OpcUaDeviceOptions(endpoint={self.endpoint!r}, namespace_uri={self.namespace_uri!r}, "
            f"mode={self.mode!r}, interval_ms={self.interval_ms}, username={self.username!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OpcUaTagRef:
    """One tag and its node reference, already parsed.

    ``identifier`` is an int for ``kind="i"``, otherwise text: the string id (``s``), the GUID text (``g``)
    or the base64 text of the opaque id (``b``). At most one of ``namespace_uri`` / ``namespace_index``
    is set; with neither, the device's namespace URI applies, and without that namespace 0.
    """

    name: str
    kind: NodeIdKind
    identifier: str | int
    namespace_uri: str | None = None
    namespace_index: int | None = None
    name_structure: bool = False
    """Read its node's DataType at connect, to name a structure the device cannot decode (the map gives the tag
    no ``type``, so it may be one)."""


# ------------------------------------------------------------------------------------- status codes


def status_name(code: int) -> str:
    """The OPC UA name of a StatusCode value, ignoring its info bits; ``0x80AB0000`` style when unknown."""
    code &= _STATUS_BITS
    known = status_codes.code_to_name_doc.get(code & _CODE_MASK)
    return known[0] if known is not None else f"0x{code:08X}"


def quality_of_status(code: ua.StatusCode | int | None, name: str | None = None) -> tuple[Quality, str | None]:
    """Quality and status detail for an OPC UA StatusCode (object or raw value; None means Good).

    ``name`` overrides the looked-up name (e.g. when the caller already has it).
    """
    if code is None:
        return Quality.GOOD, None
    raw = code.value if isinstance(code, ua.StatusCode) else code
    if isinstance(raw, bool) or not isinstance(raw, int):
        return Quality.BAD, STATUS_DECODE_ERROR  # not a StatusCode at all: nothing in the reading can be trusted
    value = raw & _STATUS_BITS  # a UInt32 on the wire; a negative or wider int is taken as its low 32 bits
    severity = value & _SEVERITY_MASK
    if severity == 0:
        return Quality.GOOD, None
    detail = name if name is not None else status_name(value)
    if severity == _SEVERITY_UNCERTAIN:
        return Quality.UNCERTAIN, detail
    return Quality.BAD, detail


# ------------------------------------------------------------------------------------------- values

_FLOAT32 = struct.Struct("<f")


def _shortest_float32(value: float) -> float:
    """The shortest decimal that maps to the same float32, so 3.7f is published as 3.7."""
    if not math.isfinite(value):
        return value
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        try:
            if _FLOAT32.unpack(_FLOAT32.pack(candidate))[0] == value:
                return candidate
        except OverflowError:
            break
    return value


def format_datetime(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z``; a naive datetime is taken as UTC (as OPC UA DateTime is)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def datetime_to_epoch(moment: datetime) -> float:
    """Seconds since the Unix epoch (UTC); a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _unsupported(type_name: str) -> tuple[None, str]:
    return None, f"{UNSUPPORTED_TYPE_PREFIX}{type_name}"


def _utf8_text(text: str) -> str:
    """``text`` as valid Unicode: asyncua decodes OPC UA Strings with ``errors="surrogateescape"``, so a PLC that
    sends Latin-1 (a bare 0xB0 for the degree sign) yields lone surrogates that no UTF-8/JSON encoder accepts.
    The original bytes are recovered and every invalid sequence becomes U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = text.encode("utf-8", "surrogateescape")  # undoes asyncua's decoding: the bytes as received
        except UnicodeEncodeError:
            raw = text.encode("utf-8", "surrogatepass")  # other lone surrogates (not from the wire)
        return raw.decode("utf-8", "replace")
    return text


def convert_value(value: object, variant_type: ua.VariantType | None = None) -> tuple[Value | None, str | None]:
    """Convert one OPC UA value to our Value. Never raises.

    Returns ``(value, None)`` on success or ``(None, "unsupported_type:<TypeName>")``. ``variant_type``
    (from the Variant) refines the conversion (Float rounding) and names unsupported types; without it the
    Python type decides. Text is always valid Unicode (see ``_utf8_text``). A value that has the right type
    but cannot be represented (an integer beyond 64 bits, a DateTime that leaves the calendar when moved to
    UTC) gives ``(None, "decode_error")``.
    """
    try:
        converted, problem = _convert_value(value, variant_type)
    except Exception:  # a malformed object from the library (e.g. a NodeId whose identifier misfits its type)
        return None, STATUS_DECODE_ERROR
    if isinstance(converted, str):
        converted = _utf8_text(converted)
    return converted, problem


def _convert_value(value: object, variant_type: ua.VariantType | None) -> tuple[Value | None, str | None]:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return value, None
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            return None, STATUS_DECODE_ERROR
        return int(value), None  # int() drops IntEnum subclasses so JSON encoders see a plain int
    if isinstance(value, float):
        if variant_type is ua.VariantType.Float:
            return _shortest_float32(value), None
        return float(value), None
    if isinstance(value, str):
        return str(value), None
    if isinstance(value, ua.LocalizedText):
        return value.Text or "", None
    if isinstance(value, datetime):
        try:
            return format_datetime(value), None
        except OverflowError:  # e.g. 0001-01-01 in UTC+14 is before year 1 in UTC
            return None, STATUS_DECODE_ERROR
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii"), None
    if isinstance(value, uuid.UUID):
        return str(value), None
    if isinstance(value, ua.NodeId | ua.QualifiedName):  # ExpandedNodeId is a NodeId subclass
        return value.to_string(), None
    if isinstance(value, ua.StatusCode):
        return status_name(value.value), None
    if value is None:
        return _unsupported("Null")
    if isinstance(value, list | tuple):
        return _convert_array(value, variant_type)
    if isinstance(value, ua.DataValue | ua.DiagnosticInfo | ua.Variant):  # not values of a variable
        return _unsupported(type(value).__name__)
    if isinstance(value, ua.ExtensionObject):  # a structure whose definition was not loaded: still encoded
        return _unsupported(f"ExtensionObject[{value.TypeId.to_string()}]")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _convert_structure(value)
    if variant_type is not None and variant_type is not ua.VariantType.Null:
        return _unsupported(variant_type.name)
    return _unsupported(type(value).__name__)


def _convert_array(
    items: list[object] | tuple[object, ...], variant_type: ua.VariantType | None
) -> tuple[Value | None, str | None]:
    out: list[Value | None] = []
    for item in items:
        converted, problem = _convert_value(item, variant_type)
        if problem is not None:
            if problem.startswith(UNSUPPORTED_TYPE_PREFIX):
                return _unsupported(f"Array[{problem.removeprefix(UNSUPPORTED_TYPE_PREFIX)}]")
            return None, problem
        out.append(_utf8_text(converted) if isinstance(converted, str) else converted)
    return out, None


def _convert_structure(value: object) -> tuple[Value | None, str | None]:
    out: dict[str, Value | None] = {}
    for item in dataclasses.fields(value):  # type: ignore[arg-type]  # checked by the caller
        field_value = getattr(value, item.name)
        if field_value is None:  # an optional field that is absent
            out[item.name] = None
            continue
        converted, problem = _convert_value(field_value, None)
        if problem is not None:
            return None, problem
        out[item.name] = _utf8_text(converted) if isinstance(converted, str) else converted
    return out, None


def _reshape(flat: list[Value | None], dimensions: Sequence[int]) -> list[Value | None] | None:
    """Nested lists of ``dimensions`` (outermost first) from a flat row-major list, or None when they disagree."""
    if math.prod(dimensions) != len(flat):
        return None
    nested: list[Value | None] = flat
    for size in reversed(dimensions[1:]):
        nested = [nested[start:start + size] for start in range(0, len(nested), size)]
    return nested


def convert_variant(variant: ua.Variant | None) -> tuple[Value | None, str | None]:
    """Convert a Variant (as found in ``DataValue.Value``) to our Value; see :func:`convert_value`."""
    if variant is None:
        return _unsupported("Null")
    value, problem = convert_value(variant.Value, variant.VariantType)
    dimensions = variant.Dimensions
    flat = isinstance(value, list) and bool(value) and not isinstance(value[0], list)
    if problem is None and dimensions and len(dimensions) > 1 and flat and isinstance(value, list):
        shaped = _reshape(value, dimensions)  # flat on the wire: give it its shape
        if shaped is None:
            return None, STATUS_DECODE_ERROR
        value = shaped
    return value, problem


# OPC UA Part 6, 5.2.2.5: a DateTime at or before 1601-01-01 (the encoding's zero, what servers send for "never
# set") or at or after 9999-12-31 23:59:59 is MinDateTime / MaxDateTime, i.e. not a real moment.
_MIN_DATETIME_EPOCH = datetime(1601, 1, 1, tzinfo=UTC).timestamp()
_MAX_DATETIME_EPOCH = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def _real_moment(moment: datetime | None) -> float | None:
    if not isinstance(moment, datetime):
        return None
    epoch = datetime_to_epoch(moment)
    return epoch if _MIN_DATETIME_EPOCH < epoch < _MAX_DATETIME_EPOCH else None


def source_time(data_value: ua.DataValue | None, *, received_at: float) -> float:
    """SourceTimestamp, else ServerTimestamp, else the receive time; epoch seconds UTC.

    A timestamp that is Min/MaxDateTime (or not a datetime at all) counts as absent.
    """
    if data_value is not None:
        for moment in (data_value.SourceTimestamp, data_value.ServerTimestamp):
            epoch = _real_moment(moment)
            if epoch is not None:
                return epoch
    return received_at


def name_unsupported(status: str, type_names: Mapping[str, str]) -> str:
    """``unsupported_type:ExtensionObject[<encoding id>]`` (also inside ``Array[...]``) with the structure's type
    name instead (``unsupported_type:PackMLStatus``) when ``type_names`` (encoding id text -> DataType BrowseName)
    knows the id; any other status as it is."""
    marker = "ExtensionObject["
    start = status.find(marker)
    if start < 0:
        return status
    depth = status.count("Array[", 0, start)
    name = type_names.get(status[start + len(marker) : len(status) - depth - 1])
    return status if name is None else status[:start] + name + "]" * depth


def readings_from_data_value(
    tags: Sequence[str],
    data_value: ua.DataValue | None,
    *,
    received_at: float,
    type_names: Mapping[str, str] | None = None,
) -> list[RawReading]:
    """One RawReading per tag for one DataValue (several tags may name the same node).

    Bad status → value None (OPC UA says the value of a Bad DataValue must be ignored). Uncertain keeps
    the value and carries the status name. An unsupported value type turns the reading bad; an undescribed
    structure is named from ``type_names`` (see :func:`name_unsupported`).
    """
    ts = source_time(data_value, received_at=received_at)
    if data_value is None:
        return bad_readings(tags, f"{UNSUPPORTED_TYPE_PREFIX}Null", ts=ts)
    quality, status = quality_of_status(data_value.StatusCode)
    value = None
    if quality is not Quality.BAD:
        value, problem = convert_variant(data_value.Value)
        if problem is not None:
            quality, status = Quality.BAD, name_unsupported(problem, type_names) if type_names else problem
    return [RawReading(tag=tag, value=value, ts=ts, quality=quality, status=status) for tag in tags]


def bad_readings(tags: Sequence[str], status: str, *, ts: float) -> list[RawReading]:
    """Quality-bad readings without a value, e.g. ``comm_failure`` for every tag on link loss."""
    return [RawReading(tag=tag, value=None, ts=ts, quality=Quality.BAD, status=status) for tag in tags]


# ---------------------------------------------------------------------------------- node planning


def node_id_of(ref: OpcUaTagRef, namespace_index: int) -> ua.NodeId:
    """The NodeId of a tag reference in a resolved namespace. Raises ValueError for a malformed identifier."""
    identifier = ref.identifier
    if ref.kind == "i":
        if isinstance(identifier, str):
            identifier = int(identifier)  # ValueError for non-digits
        return ua.NodeId(ua.Int32(identifier), ua.Int16(namespace_index), ua.NodeIdType.Numeric)
    if not isinstance(identifier, str):
        raise ValueError(f"{ref.kind}= identifier must be text, got {identifier!r}")
    if ref.kind == "s":
        return ua.NodeId(ua.String(identifier), ua.Int16(namespace_index), ua.NodeIdType.String)
    if ref.kind == "g":
        return ua.NodeId(ua.Guid(identifier), ua.Int16(namespace_index), ua.NodeIdType.Guid)
    try:
        opaque = base64.b64decode(identifier, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"b= identifier is not base64: {identifier!r}") from exc
    return ua.NodeId(ua.ByteString(opaque), ua.Int16(namespace_index), ua.NodeIdType.ByteString)


@dataclass(frozen=True, slots=True)
class PlannedNode:
    """One node to read or monitor and the tags (in tag-map order) that take its value."""

    node_id: ua.NodeId
    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TagProblem:
    """A tag that cannot be read on this connection, with the status its readings carry."""

    tag: str
    status: str


@dataclass(frozen=True, slots=True)
class NodePlan:
    """What one connection reads: unique nodes in first-seen order, and the tags that cannot be read."""

    nodes: tuple[PlannedNode, ...]
    problems: tuple[TagProblem, ...]

    def tags_by_node(self) -> dict[ua.NodeId, tuple[str, ...]]:
        return {planned.node_id: planned.tags for planned in self.nodes}


def plan_nodes(
    tags: Sequence[OpcUaTagRef], *, device_namespace_uri: str | None, namespace_array: Sequence[str]
) -> NodePlan:
    """Resolve every tag's namespace against the server's NamespaceArray of *this* connection.

    Rule: the tag's ``namespace_uri``, else its ``namespace_index``, else the device's namespace URI,
    else namespace 0. An unknown URI (or an index beyond the array) → ``namespace_unknown``.
    """
    index_of_uri = {uri: index for index, uri in reversed(list(enumerate(namespace_array)))}
    grouped: dict[ua.NodeId, list[str]] = {}
    problems: list[TagProblem] = []
    for ref in tags:
        namespace_index: int | None
        if ref.namespace_uri is not None:
            namespace_index = index_of_uri.get(ref.namespace_uri)
        elif ref.namespace_index is not None:
            namespace_index = ref.namespace_index if 0 <= ref.namespace_index < len(namespace_array) else None
        elif device_namespace_uri is not None:
            namespace_index = index_of_uri.get(device_namespace_uri)
        else:
            namespace_index = 0
        if namespace_index is None:
            problems.append(TagProblem(ref.name, STATUS_NAMESPACE_UNKNOWN))
            continue
        try:
            node_id = node_id_of(ref, namespace_index)
        except (ValueError, UaError):
            problems.append(TagProblem(ref.name, STATUS_NODE_ID_INVALID))
            continue
        grouped.setdefault(node_id, []).append(ref.name)
    nodes = tuple(PlannedNode(node_id, tuple(names)) for node_id, names in grouped.items())
    return NodePlan(nodes=nodes, problems=tuple(problems))


def max_nodes_per_read(data_value: ua.DataValue | None) -> int:
    """The server's MaxNodesPerRead from a read of its OperationLimits node; 0 (no limit) if unusable."""
    if data_value is None or data_value.StatusCode is None or not data_value.StatusCode.is_good():
        return 0
    raw = data_value.Value.Value if data_value.Value is not None else None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        return 0
    return raw


# ------------------------------------------------------------------------------------- scheduling


# Subscription keep-alive: a publish response (data or keep-alive) at least this often, so a silent
# subscription is noticed. asyncua's default keep-alive count is 75 % of the session timeout (45 min).
SUBSCRIPTION_KEEPALIVE_S = 5.0
# Orphaned server-side subscriptions (we never transfer them; a new client makes new ones) die after this.
SUBSCRIPTION_LIFETIME_S = 60.0


@dataclass(frozen=True, slots=True)
class SubscriptionTiming:
    publishing_interval_ms: float
    max_keepalive_count: int
    lifetime_count: int

    @property
    def keepalive_s(self) -> float:
        return self.publishing_interval_ms * self.max_keepalive_count / 1000.0


def subscription_timing(interval_ms: float) -> SubscriptionTiming:
    """Keep-alive and lifetime counts for a publishing interval (lifetime ≥ 3 × keep-alive per Part 4)."""
    interval_ms = max(float(interval_ms), 1.0)
    keepalive = max(1, math.ceil(SUBSCRIPTION_KEEPALIVE_S * 1000.0 / interval_ms))
    lifetime = max(3 * keepalive, math.ceil(SUBSCRIPTION_LIFETIME_S * 1000.0 / interval_ms))
    return SubscriptionTiming(interval_ms, keepalive, lifetime)


def indexed_readings(
    readings: Sequence[RawReading], indexes: Mapping[str, tuple[IndexItem, ...]]
) -> list[RawReading]:
    """The readings with each indexed tag's value cut to its ``index`` (see ``gateway.tagmap.index_range``).

    A value without the elements asked for (too short, not an array) gets quality bad, status
    ``index_out_of_range``; a bad reading stays as it is. Only tags with an ``index`` pay for this.
    """
    out: list[RawReading] = []
    for reading in readings:
        items = indexes.get(reading.tag)
        if items is None or reading.value is None:
            out.append(reading)
            continue
        value, ok = select(reading.value, items)
        if ok:
            out.append(reading._replace(value=value))
        else:
            out.append(reading._replace(value=None, quality=Quality.BAD, status=INDEX_OUT_OF_RANGE))
    return out


def shaped_readings(readings: Sequence[RawReading], shapes: Mapping[str, ValueShape]) -> list[RawReading]:
    """The readings with every value that does not fit its tag's declared shape turned bad, ``shape_mismatch``
    (a subscriber relies on ``_meta``'s ``shape``/``fields``). Only tags that declare one pay for this."""
    out: list[RawReading] = []
    for reading in readings:
        declared = shapes.get(reading.tag)
        if declared is None or reading.value is None or fits(reading.value, declared.shape, declared.fields):
            out.append(reading)
        else:
            out.append(reading._replace(value=None, quality=Quality.BAD, status=STATUS_SHAPE_MISMATCH))
    return out
