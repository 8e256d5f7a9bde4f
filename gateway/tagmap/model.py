"""The tag-map schema: pydantic v2 models for the file as written (``TagMap``) and its expanded result (``Plant``).

Defaults live here and only here. Synonyms (``hr`` -> holding, ``cdab`` -> CDAB, ...) are normalised at load
time, so the rest of the gateway only ever sees the enum values. Cross-field rules are small named functions
(``_rule_*``) run by one model validator per model; each yields ``Issue``s with the sub-path of the field at
fault, so errors point at the exact YAML node.

``Plant`` is what the runtime consumes: every device with its final tag list (templates and repeats expanded,
``repeat`` empty), Modbus tags with their byte order filled from the device, OPC UA tags with resolved node
ids, ``mqtt.client_id`` and ``sampling_interval_ms`` filled. See ``gateway.tagmap.loader`` for building one.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    model_validator,
)

from gateway.schema import (
    gateway_status_topic,
    quoted,
    topic_length_problem,
    topic_path_problem,
    topic_segment_problem,
    utf8_length,
)
from gateway.tagmap.events import Events
from gateway.tagmap.index_range import parse_index_range
from gateway.tagmap.issues import Issue, did_you_mean, raise_issues, rule_error
from gateway.tagmap.limits import (
    MAX_ADDRESS,
    MAX_BIT_INDEX,
    MAX_BITS_PER_READ,
    MAX_FORMAT_WIDTH,
    MAX_MQTT_STRING_BYTES,
    MAX_REGISTERS_PER_READ,
    MAX_REPEAT_COUNT,
    MAX_UNIT_ID,
    MIN_INTERVAL_MS,
    MIN_SPOOL_MB,
)
from gateway.tagmap.nodeid import ParsedNodeId, parse_node_id
from gateway.value_shape import FieldShape, parse_fields, parse_shape
from gateway.vocabulary import (
    ByteOrder,
    DataType,
    EventLoopSetting,
    MqttProtocol,
    OpcUaMode,
    OpcUaSecurityMode,
    OpcUaSecurityPolicy,
    Parity,
    PublishMode,
    QoS,
    StopBits,
    Table,
    Transport,
)

# ------------------------------------------------------------------------------------------------ enums


def _enum_normaliser(
    enum_cls: type[StrEnum],
    what: str,
    synonyms: Mapping[str, StrEnum] | None = None,
    refusals: Mapping[str, str] | None = None,
) -> Callable[[Any], Any]:
    """A before-validator accepting enum values case-insensitively plus ``synonyms``.

    ``refusals`` are words that look plausible but are ambiguous, answered with an explanation.
    """
    lookup: dict[str, StrEnum] = {member.value.lower(): member for member in enum_cls}
    lookup.update({word.lower(): member for word, member in (synonyms or {}).items()})
    choices = [member.value for member in enum_cls]

    def normalise(value: Any) -> Any:
        if isinstance(value, enum_cls) or not isinstance(value, str):
            return value  # non-text input: the enum validator reports it
        key = value.strip().lower()
        found = lookup.get(key)
        if found is not None:
            return found
        refusal = (refusals or {}).get(key)
        if refusal is not None:
            raise rule_error([Issue((), refusal)])
        raise rule_error(
            [
                Issue(
                    (),
                    f"unknown {what} {quoted(value)}{did_you_mean(value, choices)}; "
                    f"expected one of: {', '.join(choices)}",
                )
            ]
        )

    return normalise


_normalise_data_type = _enum_normaliser(
    DataType,
    "type",
    synonyms={
        "boolean": DataType.BOOL,
        "float": DataType.FLOAT32,
        "real": DataType.FLOAT32,
        "double": DataType.FLOAT64,
        "lreal": DataType.FLOAT64,
        "word": DataType.UINT16,
        "dword": DataType.UINT32,
        "str": DataType.STRING,
    },
)
_normalise_table = _enum_normaliser(
    Table,
    "table",
    synonyms={
        "holding_register": Table.HOLDING,
        "holding_registers": Table.HOLDING,
        "hr": Table.HOLDING,
        "input_register": Table.INPUT,
        "input_registers": Table.INPUT,
        "ir": Table.INPUT,
        "coils": Table.COIL,
        "discrete_input": Table.DISCRETE,
        "discrete_inputs": Table.DISCRETE,
        "di": Table.DISCRETE,
    },
)
_normalise_order = _enum_normaliser(
    ByteOrder,
    "order",
    refusals={
        word: f"order {word!r} is ambiguous: write ABCD (big-endian), CDAB (word-swapped, 'little' word order), "
        "BADC (byte-swapped) or DCBA (fully little-endian)"
        for word in ("big", "little", "big_endian", "little_endian", "big-endian", "little-endian")
    },
)
_normalise_publish = _enum_normaliser(PublishMode, "publish mode")
_normalise_opcua_mode = _enum_normaliser(
    OpcUaMode, "mode", synonyms={"subscription": OpcUaMode.SUBSCRIBE, "polling": OpcUaMode.POLL}
)
_normalise_transport = _enum_normaliser(Transport, "transport", synonyms={"serial": Transport.RTU})

DataTypeField = Annotated[DataType, BeforeValidator(_normalise_data_type)]
TableField = Annotated[Table, BeforeValidator(_normalise_table)]
ByteOrderField = Annotated[ByteOrder, BeforeValidator(_normalise_order)]
PublishModeField = Annotated[PublishMode, BeforeValidator(_normalise_publish)]
OpcUaModeField = Annotated[OpcUaMode, BeforeValidator(_normalise_opcua_mode)]
TransportField = Annotated[Transport, BeforeValidator(_normalise_transport)]

# ------------------------------------------------------------------------------------- topic segments


def _check_topic_segment(value: str) -> str:
    problem = topic_segment_problem(value)
    if problem:
        raise rule_error([Issue((), problem)])
    return value


def _check_area(value: str) -> str:
    _check_topic_segment(value)
    if value.startswith("_"):
        # {enterprise}/{site}/_gateway/... is the gateway's own status topic.
        message = f"area {quoted(value)} starts with '_' (reserved for gateway topics such as _gateway)"
        raise rule_error([Issue((), message)])
    return value


def tag_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a tag name (a slash-separated topic tail under the equipment), or None."""
    problem = topic_path_problem(name)
    if problem:
        return problem
    if name.startswith("_"):
        return f"tag name {quoted(name)} starts with '_' (reserved for equipment topics _status, _meta, _batch)"
    return None


def _check_tag_name(value: str) -> str:
    problem = tag_name_problem(value)
    if problem:
        raise rule_error([Issue((), problem)])
    return value


TopicSegment = Annotated[str, AfterValidator(_check_topic_segment)]
AreaSegment = Annotated[str, AfterValidator(_check_area)]
TagName = Annotated[str, AfterValidator(_check_tag_name)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


# ------------------------------------------------------------------------------------------- context

MAX_CONTEXT_KEYS: Final = 32
"""Most context keys per device or repeat: context rides on every sample, so it stays a handful of ids."""

_CONTEXT_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_context_key(key: str) -> str:
    """Context keys are identifiers (``lot``, ``roll_id``): JSON member names a subscriber can use as they are."""
    if not _CONTEXT_KEY.fullmatch(key):
        message = f"context key {quoted(key)} is not an identifier (letters, digits and _, not first a digit)"
        raise rule_error([Issue((), message, True)])
    return key


def _check_context_size(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_CONTEXT_KEYS:
        raise rule_error([Issue((), f"{len(value)} context keys; at most {MAX_CONTEXT_KEYS}")])
    return value


ContextKeys = Annotated[
    dict[Annotated[str, AfterValidator(_check_context_key)], TagName], AfterValidator(_check_context_size)
]
"""``{key: tag name}``: the latest good value of each tag travels as ``ctx.{key}`` with the samples."""


def _one_or_many(value: Any) -> Any:
    """``repeat:`` takes one mapping or a list of them."""
    return [value] if isinstance(value, dict) else value


class _Model(BaseModel):
    # hide_input_in_errors: a ValidationError printed by code that builds models must not show secrets.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


# ------------------------------------------------------------------------------------------- sections


class Output(StrEnum):
    """An output encoding (``gateway.outputs``): every sample goes through each one listed."""

    UNS_JSON = "uns-json"
    SPARKPLUG = "sparkplug"


class SparkplugSection(_Model):
    """Sparkplug B 3.0 (``outputs: [sparkplug]``): the gateway is the edge node, every equipment a device."""

    group_id: TopicSegment
    """The Sparkplug group (``spBv1.0/{group_id}/...``)."""
    edge_node_id: TopicSegment | None = None
    """The edge node id; default ``gateway.id``."""
    primary_host: TopicSegment | None = None
    """A primary host application id: after every connect, births and data wait (spooled) until
    ``spBv1.0/STATE/{primary_host}`` says online (README "Sparkplug B")."""


class GatewaySection(_Model):
    id: TopicSegment
    enterprise: TopicSegment
    site: TopicSegment
    queue_size: int = Field(default=10000, ge=1)
    """Capacity of the bounded queue between the sources and the sink, in messages."""
    outputs: tuple[Output, ...] = Field(default=(Output.UNS_JSON,), min_length=1)
    """The output encodings, each at most once: UNS JSON (the default), Sparkplug B, or both."""
    sparkplug: SparkplugSection | None = None
    """Needed when ``outputs`` lists ``sparkplug``."""
    event_loop: EventLoopSetting = EventLoopSetting.AUTO
    """The process's event loop: ``auto`` is uvloop when it can be imported, else the stock asyncio loop
    (``gateway.event_loop``); read at start only."""

    @model_validator(mode="after")
    def _check(self) -> GatewaySection:
        raise_issues(_rule_gateway_status_topic(self))
        raise_issues(_rule_outputs(self))
        return self

    @property
    def sparkplug_edge_node_id(self) -> str:
        """The Sparkplug edge node id: ``sparkplug.edge_node_id``, else the gateway id."""
        if self.sparkplug is not None and self.sparkplug.edge_node_id is not None:
            return self.sparkplug.edge_node_id
        return self.id

    @property
    def status_topic(self) -> str:
        """``{enterprise}/{site}/_gateway/{id}/status``: the gateway's retained status and its MQTT will."""
        return gateway_status_topic(enterprise=self.enterprise, site=self.site, gateway_id=self.id)


def _rule_outputs(gateway: GatewaySection) -> Iterator[Issue]:
    if len(set(gateway.outputs)) != len(gateway.outputs):
        yield Issue(("outputs",), "lists an output more than once")
    if Output.SPARKPLUG in gateway.outputs and gateway.sparkplug is None:
        yield Issue(("sparkplug",), "outputs lists sparkplug: give sparkplug.group_id")


def _rule_gateway_status_topic(gateway: GatewaySection) -> Iterator[Issue]:
    problem = topic_length_problem(gateway.status_topic)
    if problem:
        longest = max(("id", "enterprise", "site"), key=lambda name: len(getattr(gateway, name)))
        yield Issue((longest,), f"the gateway status topic: {problem}")


def _mqtt_protocol(value: Any) -> Any:
    # YAML reads `protocol: 5` as an int.
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 5:
        return "5"
    return value


def _int_from_text(value: Any) -> Any:
    # Environment overrides arrive as text; Literal[0, 1] would not coerce "1".
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


MAX_MQTT_CONNECTIONS: Final = 16
MQTT_DEFAULT_PORTS: Final[Mapping[str, int]] = {"mqtt": 1883, "mqtts": 8883}


def _check_mqtt_url(url: str) -> str:
    raise_issues(_mqtt_url_problems(url))
    return url


class MqttSection(_Model):
    url: Annotated[str, AfterValidator(_check_mqtt_url)]
    """mqtt://host[:port] or mqtts://host[:port] (ports default to 1883 / 8883)."""
    client_id: NonEmptyStr | None = None
    """MQTT client id; in a Plant always set (default ``cellgate-{gateway.id}``)."""
    qos: Annotated[QoS, BeforeValidator(_int_from_text)] = 1
    keepalive_s: int = Field(default=30, ge=1, le=65535)
    protocol: Annotated[MqttProtocol, BeforeValidator(_mqtt_protocol)] = "5"
    username: str | None = None
    password: SecretStr | None = None
    password_file: NonEmptyStr | None = None
    """File holding the password (first line); a relative name is looked up in $CREDENTIALS_DIRECTORY."""
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    max_inflight: int = Field(default=1000, ge=1, le=9999)
    """QoS 1 messages awaiting PUBACK at once; with MQTT 5 the broker's Receive Maximum caps it."""
    connections: int = Field(default=1, ge=1, le=MAX_MQTT_CONNECTIONS)
    """MQTT connections for data, each topic always on the same one (per-topic order); the first also carries
    the will, the retained status and the subscriptions. Each has its own window: with a broker announcing a
    small Receive Maximum (Mosquitto: 20), more connections keep more QoS 1 messages in flight."""
    reconnect_max_s: float = Field(default=10, ge=1, le=3600)
    """Cap of the reconnect backoff (1 s, doubling); also how long failover waits per attempt at most."""
    failover_urls: tuple[Annotated[str, AfterValidator(_check_mqtt_url)], ...] = ()
    """More brokers, tried in turn after 3 failed connection attempts to the current one."""
    max_packet_size: int | None = Field(default=None, ge=1024, le=268_435_460)
    """Largest packet the broker takes, in bytes, for brokers that cannot announce it (MQTT 3.1.1); a smaller
    Maximum Packet Size announced by an MQTT 5 broker wins. Larger messages go to the dead-letter table."""
    puback_timeout_s: float = Field(default=10, gt=0, le=3600)
    """A connection whose oldest unacknowledged message has waited this long for its PUBACK is dropped
    and reconnected (a hung broker), even while keep-alive has not noticed yet."""

    @model_validator(mode="after")
    def _check(self) -> MqttSection:
        raise_issues(
            [*_rule_mqtt_tls_files(self), *_rule_mqtt_failover_scheme(self), *_rule_mqtt_credentials(self)]
        )
        return self

    @property
    def failover(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of each failover broker."""
        out: list[tuple[str, int]] = []
        for url in self.failover_urls:
            parts = urlsplit(url)
            out.append((parts.hostname or "", parts.port or MQTT_DEFAULT_PORTS[parts.scheme.lower()]))
        return tuple(out)

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or MQTT_DEFAULT_PORTS[parts.scheme.lower()]

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme.lower() == "mqtts"


def _is_loopback_listen(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class HttpSection(_Model):
    """The operations listener: /metrics (Prometheus), /healthz, /readyz and the status page at /."""

    listen: NonEmptyStr | None = "127.0.0.1:9108"
    """``host:port`` (``[::1]:9108`` for IPv6); null: no listener. 9108 is free in Prometheus' port list."""
    token_file: NonEmptyStr | None = None
    """File holding a bearer token every request must carry; required when ``listen`` is not loopback."""

    @model_validator(mode="after")
    def _check(self) -> HttpSection:
        raise_issues(_rule_http(self))
        return self

    @property
    def host_port(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def _rule_http(http: HttpSection) -> Iterator[Issue]:
    if http.listen is None:
        return
    host, sep, port = http.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        yield Issue(("listen",), f"expected host:port (e.g. 127.0.0.1:9108), got {http.listen!r}")
        return
    if not _is_loopback_listen(http.listen) and http.token_file is None:
        yield Issue(("token_file",), f"listen {http.listen} is not a loopback address: set http.token_file")


class SpoolSection(_Model):
    """Store-and-forward: where undeliverable messages wait for the broker, and how big that may grow."""

    path: NonEmptyStr | None = None
    """SQLite file; default ``spool.db`` in the state directory (``cellgate run --state-dir``)."""
    max_mb: float = Field(default=1024, gt=0)
    """Cap on spooled messages (topic + payload + 48 bytes per message); past it the oldest are dropped.
    At least MIN_SPOOL_MB."""
    replay_per_s: int = Field(default=60000, ge=1)
    """Most spooled messages replayed per second once the broker is back (live data always goes first)."""
    window_wait_ms: int = Field(default=1000, ge=0)
    """How long a live message may wait for a free in-flight slot before it goes to the spool instead."""
    min_free_mb: float = Field(default=64, ge=0)
    """Free space to leave on the spool's file system: past it the oldest spooled messages are dropped, as
    past ``max_mb``; whichever limit is reached first applies."""
    dead_letter_max_mb: float = Field(default=16, gt=0)
    """Cap on messages the broker refused (too large, not authorised), kept for a later replay. At least
    MIN_SPOOL_MB, as ``max_mb``: a refused message can be a large batch or ``_meta`` part, and a smaller cap
    (0 bytes once converted, for a tiny value) could keep none of them."""

    @model_validator(mode="after")
    def _check(self) -> SpoolSection:
        raise_issues(_rule_spool_size(self))
        return self

    @property
    def max_bytes(self) -> int:
        """``max_mb`` in bytes (1 MB = 1,000,000 bytes): what the runtime gives the spool as its cap."""
        return int(self.max_mb * 1_000_000)


def _rule_spool_size(spool: SpoolSection) -> Iterator[Issue]:
    if spool.max_bytes < MIN_SPOOL_MB * 1_000_000:
        yield Issue(
            ("max_mb",),
            f"max_mb {spool.max_mb:g} is below the smallest spool, {MIN_SPOOL_MB} MB: it could not hold one large "
            "batch or _meta part (SQLite's own pages take more); give at least 1",
        )
    if spool.dead_letter_max_mb < MIN_SPOOL_MB:
        yield Issue(
            ("dead_letter_max_mb",),
            f"dead_letter_max_mb {spool.dead_letter_max_mb:g} is below {MIN_SPOOL_MB} MB: it could not keep one "
            "large refused batch or _meta part; give at least 1",
        )


def _rule_mqtt_credentials(mqtt: MqttSection) -> Iterator[Issue]:
    if mqtt.password is not None and mqtt.password_file is not None:
        yield Issue(("password_file",), "set either password or password_file, not both")
    if mqtt.password_file is not None and mqtt.username is None:
        yield Issue(("username",), "a password_file is set but no username: set username too")
    if mqtt.password is not None and mqtt.username is None:
        # MQTT 3.1.1 forbids a password without a user name (3.1.2.9); the client refuses it for MQTT 5 as well.
        yield Issue(
            ("username",),
            "a password is set (in the file or CELLGATE_MQTT__PASSWORD) but no username: "
            "set username too (or CELLGATE_MQTT__USERNAME)",
        )
    sizes = {
        "client_id": utf8_length(mqtt.client_id or ""),
        "username": utf8_length(mqtt.username or ""),
        "password": utf8_length(mqtt.password.get_secret_value()) if mqtt.password else 0,
    }
    for name, size in sizes.items():
        if size > MAX_MQTT_STRING_BYTES:
            yield Issue((name,), f"{name} is {size} bytes, longer than the {MAX_MQTT_STRING_BYTES} MQTT allows")


def _mqtt_url_problems(url: str) -> Iterator[Issue]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in MQTT_DEFAULT_PORTS or not url.lower().startswith(f"{scheme}://"):
        yield Issue((), "url must start with mqtt:// or mqtts://, e.g. mqtt://127.0.0.1:1883")
        return
    # Never echo the url here: it may carry a password.
    if parts.username is not None or parts.password is not None:
        yield Issue((), "put credentials in username/password (or CELLGATE_MQTT__PASSWORD), not in the url")
    if not parts.hostname:
        yield Issue((), "url has no host, e.g. mqtt://broker.example:1883")
    try:
        port = parts.port
    except ValueError:
        yield Issue((), "url port is not a number 1..65535")
    else:
        if port == 0:
            yield Issue((), "url port is not a number 1..65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        yield Issue((), "url must not have a path, query or fragment")


def _rule_mqtt_failover_scheme(mqtt: MqttSection) -> Iterator[Issue]:
    scheme = urlsplit(mqtt.url).scheme.lower()
    for index, url in enumerate(mqtt.failover_urls):
        if urlsplit(url).scheme.lower() != scheme:
            # One TLS setting (and one set of certificates) serves every broker of the list.
            yield Issue(("failover_urls", index), f"every failover url must use {scheme}:// like url")


def _rule_mqtt_tls_files(mqtt: MqttSection) -> Iterator[Issue]:
    if not mqtt.url.lower().startswith("mqtts://"):
        for name in ("ca_file", "cert_file", "key_file"):
            if getattr(mqtt, name) is not None:
                yield Issue((name,), f"{name} needs an mqtts:// url (TLS)")
    if mqtt.key_file is not None and mqtt.cert_file is None:
        yield Issue(("key_file",), "key_file needs cert_file (the client certificate it belongs to)")


# ----------------------------------------------------------------------------------------------- tags


# A tag's numbers must be finite: `scale: .nan` would turn every value into not_a_number, `min: .nan` would switch
# the range check off silently, and '1e999' (YAML text pydantic reads as a float) is infinity.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _TagBase(_Model):
    name: TagName
    """Slash-separated topic tail under the equipment, e.g. ``dryer/zone03/air_temperature``."""
    unit: str | None = None
    """UCUM code, e.g. ``Cel``, ``V``, ``A.h``."""
    description: str | None = None
    scale: FiniteFloat = 1.0
    """value = raw * scale + offset (numeric types only)."""
    offset: FiniteFloat = 0.0
    min: FiniteFloat | None = None
    """Range check: a value outside [min, max] gets quality uncertain, status out_of_range (value kept)."""
    max: FiniteFloat | None = None
    deadband: FiniteFloat | None = Field(default=None, ge=0)
    """Absolute; publish only when |value - last published| > deadband."""
    heartbeat_s: FiniteFloat | None = Field(default=None, gt=0)
    """Republish an unchanged value at least this often, in seconds."""
    read_only: bool = False
    """The gateway never writes this tag: an event's ``ack`` may not name it."""


_NUMERIC_ONLY_FIELDS: Final = ("scale", "offset", "deadband", "min", "max")


def _rule_numeric_only(tag: _TagBase, data_type: DataType | None) -> Iterator[Issue]:
    """scale/offset/deadband/min/max mean nothing for bool and string values."""
    if data_type is None or data_type.is_numeric:
        return
    for field in _NUMERIC_ONLY_FIELDS:
        if field in tag.model_fields_set and getattr(tag, field) is not None:
            yield Issue((field,), f"{field} only applies to numeric types, not {data_type.value}")


def _rule_range(tag: _TagBase) -> Iterator[Issue]:
    if tag.min is not None and tag.max is not None and tag.min > tag.max:
        yield Issue(("min",), f"min {tag.min:g} is greater than max {tag.max:g}")


def _rule_scale_not_zero(tag: _TagBase) -> Iterator[Issue]:
    if tag.scale == 0:
        yield Issue(("scale",), "scale 0 would make every value equal to offset")


_TABLE_WORDS: Final[Mapping[Table, str]] = {
    Table.HOLDING: "holding register",
    Table.INPUT: "input register",
    Table.COIL: "coil",
    Table.DISCRETE: "discrete input",
}
_MODICON_TABLES: Final[Mapping[str, Table]] = {
    "0": Table.COIL,
    "1": Table.DISCRETE,
    "3": Table.INPUT,
    "4": Table.HOLDING,
}


def parse_modicon_reference(text: str) -> tuple[Table, int]:
    """A Modicon reference -> (table, 0-based protocol address). Raises ValueError.

    Worked example: ``"40001"`` is holding register 0; ``"30017"`` is input register 16; ``"400001"`` (6-digit
    form, offsets up to 65536) is holding register 0 as well. The leading digit picks the table:
    0 coil, 1 discrete input, 3 input register, 4 holding register. Other lengths are ambiguous (is ``"1000"``
    a coil or protocol address 1000?) and are refused.
    """
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(
            f"address {text!r} is neither an integer 0..{MAX_ADDRESS} nor a Modicon reference such as '40001'"
        )
    if len(digits) not in (5, 6):
        raise ValueError(
            f"Modicon reference {text!r} must have 5 digits ('40001') or 6 digits ('400001'); "
            "for a 0-based protocol address write a plain integer"
        )
    table = _MODICON_TABLES.get(digits[0])
    if table is None:
        raise ValueError(
            f"Modicon reference {text!r} must start with 0 (coil), 1 (discrete input), 3 (input register) "
            "or 4 (holding register)"
        )
    offset = int(digits[1:])
    highest = 9999 if len(digits) == 5 else MAX_ADDRESS + 1
    if not 1 <= offset <= highest:
        raise ValueError(f"Modicon reference {text!r}: the offset counts from 1 and goes up to {highest}")
    return table, offset - 1


class ModbusTag(_TagBase):
    table: TableField = Table.HOLDING
    address: int = Field(ge=0, le=MAX_ADDRESS)
    """0-based protocol address (a Modicon string such as "40001" is converted at load time)."""
    type: DataTypeField
    """Required, except in coil/discrete tables where it defaults to bool."""
    bit: int | None = Field(default=None, ge=0, le=MAX_BIT_INDEX)
    """bool from bit n (LSB = 0) of a holding/input register."""
    length: int | None = Field(default=None, ge=1, le=MAX_REGISTERS_PER_READ)
    """string only: number of registers (2 characters each)."""
    order: ByteOrderField | None = None
    """Per-tag override of the device order; in a Plant always set."""

    foreign_key_hint: ClassVar[tuple[frozenset[str], str]] = (
        frozenset({"node"}),
        "'node' is an OPC UA tag setting; Modbus tags are read by `table` and `address`",
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_modicon_and_default_type(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        address = data.get("address")
        if isinstance(address, str):
            try:
                table, protocol_address = parse_modicon_reference(address)
            except ValueError as exc:
                raise rule_error([Issue(("address",), str(exc))]) from None
            explicit = data.get("table")
            if explicit is not None:
                try:
                    explicit_table = _normalise_table(explicit)
                except ValueError:
                    explicit_table = None  # the table field validator reports it
                if isinstance(explicit_table, Table) and explicit_table is not table:
                    raise rule_error(
                        [
                            Issue(
                                ("table",),
                                f"table {explicit_table.value!r} conflicts with Modicon reference {address!r} "
                                f"(a {_TABLE_WORDS[table]}); drop `table` or fix the reference",
                            )
                        ]
                    )
            data = {**data, "address": protocol_address, "table": table}
        if "type" not in data:
            try:
                table_given = _normalise_table(data.get("table", Table.HOLDING))
            except ValueError:
                table_given = None
            if isinstance(table_given, Table) and table_given.is_bit_table:
                data = {**data, "type": DataType.BOOL}
        return data

    @model_validator(mode="after")
    def _check(self) -> ModbusTag:
        raise_issues(
            [
                *_rule_bit_table_holds_bools(self),
                *_rule_bit(self),
                *_rule_string_length(self),
                *_rule_address_span(self),
                *_rule_numeric_only(self, self.type),
                *_rule_range(self),
                *_rule_scale_not_zero(self),
            ]
        )
        return self

    @property
    def width(self) -> int:
        """Addresses the tag spans: 1 in coil/discrete tables and for a register bit, else its registers."""
        if self.table.is_bit_table:
            return 1
        return self.type.register_count(self.length)

    @property
    def end_address(self) -> int:
        """Last address the tag occupies (inclusive)."""
        return self.address + self.width - 1


def _rule_bit_table_holds_bools(tag: ModbusTag) -> Iterator[Issue]:
    if tag.table.is_bit_table and tag.type is not DataType.BOOL:
        yield Issue(("type",), f"a {tag.table.value} holds a single bit: type must be bool, not {tag.type.value}")


def _rule_bit(tag: ModbusTag) -> Iterator[Issue]:
    in_registers = not tag.table.is_bit_table
    if tag.type is DataType.BOOL and in_registers and tag.bit is None:
        yield Issue(("bit",), f"a bool in a {tag.table.value} register needs `bit` (0..15, LSB = 0)")
    elif tag.bit is not None and not (tag.type is DataType.BOOL and in_registers):
        where = f"{tag.table.value} tag" if not in_registers else f"{tag.type.value} tag"
        yield Issue(("bit",), f"bit only applies to bool tags in holding/input registers, not to a {where}")


def _rule_string_length(tag: ModbusTag) -> Iterator[Issue]:
    if tag.type is DataType.STRING and tag.length is None:
        yield Issue(("length",), "a string needs `length` (number of registers, 2 characters each)")
    elif tag.type is not DataType.STRING and tag.length is not None:
        yield Issue(("length",), f"length only applies to type string, not {tag.type.value}")


def _rule_address_span(tag: ModbusTag) -> Iterator[Issue]:
    if tag.table.is_bit_table or (tag.type is DataType.STRING and tag.length is None):
        return
    if tag.end_address > MAX_ADDRESS:
        yield Issue(
            ("address",),
            f"{tag.type.value} at address {tag.address} spans {tag.width} registers, up to {tag.end_address}, "
            f"past the last Modbus address {MAX_ADDRESS}",
        )


def _rule_shape(tag: OpcUaTag) -> Iterator[Issue]:
    if tag.shape is not None:
        _, problems = parse_shape(list(tag.shape), ("shape",))
        yield from (Issue(loc, message) for loc, message in problems)


def _fields_value(value: Any) -> Any:
    """``fields: [A, {B: {fields: [...]}}, ...]`` -> FieldShape tuples, every problem at its path."""
    if value is None:
        return None
    fields, problems = parse_fields(value)
    if problems:
        raise rule_error([Issue(loc, message) for loc, message in problems])
    return fields


def _index_text(value: Any) -> Any:
    """``index: 5`` (a YAML int) or ``index: '0:9'``; checked by parse_index_range."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(text, str):
        try:
            parse_index_range(text)
        except ValueError as exc:
            raise rule_error([Issue((), str(exc))]) from None
    return text


class OpcUaTag(_TagBase):
    node: str
    """Node id as written: s=.., i=.., g=.., b=.., optionally after ns=N; or nsu=URI; (see nodeid.py)."""
    type: DataTypeField | None = None
    """Documentation/meta hint only; the server's variant type is what is read."""
    index: Annotated[str, BeforeValidator(_index_text)] | None = None
    """Array values: publish only this element or range (``5``, ``0:9``, ``1,0:3``; see index_range.py)."""
    shape: tuple[int, ...] | None = None
    """Array value: its length per dimension, outermost first (0: any length). Published in ``_meta``; a value
    of another shape is bad, ``shape_mismatch``. Describes the published value (after ``index``)."""
    fields: Annotated[tuple[FieldShape, ...] | None, BeforeValidator(_fields_value)] = None
    """Structure value: its fields in order, a nested structure or array as ``{name: {fields, shape}}`` (see
    value_shape.py). With ``shape``: an array of such structures. Published in ``_meta``; a value that does not
    have exactly these fields is bad, ``shape_mismatch``."""

    _node_id: ParsedNodeId | None = PrivateAttr(default=None)

    foreign_key_hint: ClassVar[tuple[frozenset[str], str]] = (
        frozenset({"address", "table", "bit", "length", "order"}),
        "a Modbus tag setting; OPC UA tags are read by `node`",
    )

    @model_validator(mode="after")
    def _check(self) -> OpcUaTag:
        issues: list[Issue] = []
        try:
            self._node_id = parse_node_id(self.node)
        except ValueError as exc:
            issues.append(Issue(("node",), str(exc)))
        issues += [*_rule_numeric_only(self, self.type), *_rule_range(self), *_rule_scale_not_zero(self)]
        issues += [*_rule_shape(self)]
        raise_issues(issues)
        return self

    @property
    def node_id(self) -> ParsedNodeId:
        """The parsed node id; in a Plant its namespace is resolved (namespace_uri or namespace_index set)."""
        if self._node_id is None:  # only for instances made with model_construct
            self._node_id = parse_node_id(self.node)
        return self._node_id

    def with_node_id(self, node_id: ParsedNodeId, **update: Any) -> OpcUaTag:
        """A copy with ``node_id`` (already parsed and checked by the caller) and the ``update`` fields."""
        copy = self.model_copy(update=update or None)
        copy._node_id = node_id
        return copy


# -------------------------------------------------------------------------------------------- repeats


def _check_repeat_name_pattern(pattern: str) -> str:
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None]
    except ValueError as exc:
        raise rule_error([Issue((), f"name pattern {pattern!r} is not a valid format string: {exc}")]) from None
    others = sorted({field for field in fields if field != "n"})
    if others:
        shown = ", ".join("{" + field + "}" for field in others)
        raise rule_error(
            [Issue((), f"name pattern {pattern!r} uses {shown}; only {{n}} is available (e.g. 'ch{{n:03d}}')")]
        )
    if "n" not in fields:
        raise rule_error(
            [Issue((), f"name pattern {pattern!r} must contain {{n}} (e.g. 'ch{{n:03d}}') so instances differ")]
        )
    problem = format_spec_problem(pattern)
    if problem:
        raise rule_error([Issue((), f"name pattern {problem}")])
    return pattern


def format_spec_problem(pattern: str) -> str | None:
    """Why formatting ``pattern`` with ``n`` could build a huge string, or None (also for invalid patterns,
    which the caller reports in its own words).

    Refused: a placeholder nested in a format spec (``{n:{n}}`` pads to a width of n) and a width or precision
    above MAX_FORMAT_WIDTH (``{n:>999999999}``, ``{n:.999999999f}``). Checked before formatting, never by trying.
    """
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError:
        return None
    for _, field, spec, _ in parsed:
        if field is None or not spec:
            continue
        if "{" in spec or "}" in spec:
            return f"{pattern!r} nests a placeholder in a format spec ({{{field}:{spec}}}); write a fixed width"
        for digits in _SPEC_NUMBER.findall(spec):
            if len(digits.lstrip("0")) > len(str(MAX_FORMAT_WIDTH)) or int(digits) > MAX_FORMAT_WIDTH:
                shown = digits if len(digits) <= 12 else f"{digits[:9]}..."
                return f"{pattern[:60]!r} asks for a width or precision of {shown}; at most {MAX_FORMAT_WIDTH}"
    return None


# Digit runs in a format spec: the width and the precision (and a digit used as fill character, which is small).
_SPEC_NUMBER = re.compile(r"[0-9]+")


class RepeatSpec(_Model):
    """``count`` instances of a template; instance n (``first`` .. ``first+count-1``) starts at
    ``start + (n - first) * stride`` (Modbus) and its tags are named ``{name.format(n=n)}/{template tag name}``."""

    template: NonEmptyStr
    count: int = Field(ge=1, le=MAX_REPEAT_COUNT)
    start: int = Field(default=0, ge=0, le=MAX_ADDRESS)
    """Modbus only: address of instance n=first."""
    stride: int | None = Field(default=None, ge=1, le=MAX_ADDRESS)
    """Modbus only: address distance between instances (required when count > 1)."""
    first: int = Field(default=1, ge=0)
    name: Annotated[str, AfterValidator(_check_repeat_name_pattern)]
    """Python format string with ``n``, e.g. ``ch{n:03d}``."""
    context: ContextKeys = Field(default_factory=dict)
    """Context of each instance's tags: ``{key: tag name relative to the instance}``, e.g. ``{cell: cell_id}``
    gives the tags of ch003 the value of ``ch003/cell_id``. The tag may come from another repeat of the device."""

    @model_validator(mode="after")
    def _check(self) -> RepeatSpec:
        raise_issues(_rule_repeat_names_format(self))
        return self

    def numbers(self) -> range:
        return range(self.first, self.first + self.count)

    def instance_name(self, n: int) -> str:
        return self.name.format(n=n)


def _rule_repeat_names_format(repeat: RepeatSpec) -> Iterator[Issue]:
    for n in (repeat.first, repeat.first + repeat.count - 1):
        try:
            formatted = repeat.instance_name(n)
        except (ValueError, TypeError) as exc:
            yield Issue(("name",), f"name pattern {repeat.name!r} cannot format n={n}: {exc}")
            return
        problem = tag_name_problem(formatted)
        if problem:
            yield Issue(("name",), f"name pattern {repeat.name!r} gives {formatted!r} for n={n}: {problem}")
            return


# -------------------------------------------------------------------------------------------- devices


_PARITIES: Final[Mapping[str, str]] = {"n": "N", "none": "N", "e": "E", "even": "E", "o": "O", "odd": "O"}


def _parity(value: Any) -> Any:
    return _PARITIES.get(value.strip().lower(), value) if isinstance(value, str) else value


class SerialSettings(_Model):
    port: NonEmptyStr
    """Serial device, e.g. /dev/ttyUSB0."""
    baudrate: int = Field(default=19200, ge=1)
    parity: Annotated[Parity, BeforeValidator(_parity)] = "N"
    stopbits: StopBits = 1
    bytesize: int = Field(default=8, ge=5, le=8)


class RepeatContext(_Model):
    """The context of one repeat's instances, in a Plant (expansion derives it from ``repeat[].context``)."""

    name: str
    """The repeat's name pattern, e.g. ``ch{n:03d}``."""
    instances: tuple[str, ...]
    """The instance prefixes it made, e.g. ``("ch001", "ch002")``."""
    tags: tuple[str, ...]
    """The tag names (relative to an instance) each instance has."""
    keys: dict[str, str]
    """``{key: tag name relative to the instance}``."""


class _DeviceBase(_Model):
    name: TopicSegment
    area: AreaSegment
    line: TopicSegment
    description: str | None = None
    enabled: bool = True
    interval_ms: int = Field(default=1000, ge=MIN_INTERVAL_MS)
    """Poll interval, or OPC UA subscription publishing interval, in milliseconds."""
    max_queue_age_ms: int | None = Field(default=None, ge=0)
    """Polls (Modbus, OPC UA poll mode) are skipped while the data already waiting for the MQTT sink has waited
    this long; None: one ``interval_ms``; 0: never skip (the source waits for room in the queue instead)."""
    publish: PublishModeField = PublishMode.TAG
    repeat: Annotated[tuple[RepeatSpec, ...], BeforeValidator(_one_or_many)] = ()
    """As written; in a Plant always empty (its instances are in ``tags``)."""
    context: ContextKeys = Field(default_factory=dict)
    """``{key: tag name}``: the latest good value of each of these tags of the device is attached to every sample
    of the device as ``ctx`` (README "Traceability: context")."""
    repeat_context: tuple[RepeatContext, ...] = ()
    """In a Plant: the context of repeat instances, derived from ``repeat[].context`` (what a tag map writes here is
    replaced by that)."""
    events: Events = Field(default_factory=dict)
    """Event records with an optional PLC handshake, by event name (see ``gateway.tagmap.events``)."""

    @property
    def queue_age_cap_ms(self) -> int:
        """``max_queue_age_ms`` with its default applied (0: never skip)."""
        return self.interval_ms if self.max_queue_age_ms is None else self.max_queue_age_ms


class ModbusDevice(_DeviceBase):
    protocol: Literal["modbus"] = "modbus"
    transport: TransportField = Transport.TCP
    host: NonEmptyStr | None = None
    port: int = Field(default=502, ge=1, le=65535)
    serial: SerialSettings | None = None
    unit_id: int = Field(default=1, ge=0, le=MAX_UNIT_ID)
    timeout_ms: int = Field(default=1000, ge=1)
    order: ByteOrderField = ByteOrder.ABCD
    max_registers_per_read: int = Field(default=MAX_REGISTERS_PER_READ, ge=1, le=MAX_REGISTERS_PER_READ)
    max_bits_per_read: int = Field(default=MAX_BITS_PER_READ, ge=1, le=MAX_BITS_PER_READ)
    max_gap: int = Field(default=10, ge=0)
    """Registers (or bits) a read may span that no tag needs."""
    max_concurrent_requests: int = Field(default=1, ge=1, le=16)
    """TCP only: how many read requests may be on the wire at once on this device's connection (answers are
    matched by transaction id). 1 = one at a time, which every server handles; raise it only for a PLC known to
    answer several transactions at once. Devices sharing one host:port use the smallest value among them."""
    tags: tuple[ModbusTag, ...] = ()

    foreign_key_hint: ClassVar[tuple[frozenset[str], str]] = (
        frozenset({"endpoint", "namespace", "mode", "sampling_interval_ms", "queue_size", "username", "password",
                   "password_file", "security", "user_certificate", "user_key"}),
        "an OPC UA device setting, and this device has protocol: modbus",
    )

    @model_validator(mode="after")
    def _check(self) -> ModbusDevice:
        raise_issues(
            [
                *_rule_transport_settings(self),
                *_rule_modbus_repeats(self),
                *(
                    issue.under(("tags", index))
                    for index, tag in enumerate(self.tags)
                    for issue in tag_fits_device(tag, self)
                ),
            ]
        )
        return self


def tag_fits_device(tag: ModbusTag, device: ModbusDevice) -> Iterator[Issue]:
    """A tag must fit in one read of its device (paths relative to the tag)."""
    if not tag.table.is_bit_table and tag.width > device.max_registers_per_read:
        field = "length" if tag.type is DataType.STRING else "type"
        yield Issue(
            (field,),
            f"{tag.type.value} spans {tag.width} registers, more than the device's max_registers_per_read "
            f"({device.max_registers_per_read})",
        )


def _rule_transport_settings(device: ModbusDevice) -> Iterator[Issue]:
    given = device.model_fields_set
    if device.transport is Transport.TCP:
        if device.host is None:
            yield Issue(("host",), "transport tcp needs `host`")
        if "serial" in given and device.serial is not None:
            yield Issue(("serial",), "serial only applies to transport rtu")
    else:
        if device.serial is None:
            yield Issue(("serial",), "transport rtu needs `serial` (port, baudrate, parity, stopbits, bytesize)")
        for field in ("host", "port"):
            if field in given and getattr(device, field) is not None:
                yield Issue((field,), f"{field} only applies to transport tcp")
        if device.max_concurrent_requests > 1:
            yield Issue(
                ("max_concurrent_requests",),
                "transport rtu carries one request at a time: max_concurrent_requests must be 1 (or left out)",
            )


def _rule_modbus_repeats(device: ModbusDevice) -> Iterator[Issue]:
    for index, repeat in enumerate(device.repeat):
        if repeat.count > 1 and repeat.stride is None:
            yield Issue(("repeat", index, "stride"), "a Modbus repeat with count > 1 needs `stride` (addresses)")


def _check_opcua_endpoint(endpoint: str) -> str:
    raise_issues(_opcua_endpoint_problems(endpoint))
    return endpoint


class OpcUaSecurity(_Model):
    """How the OPC UA secure channel is protected (see README "Security")."""

    policy: OpcUaSecurityPolicy = OpcUaSecurityPolicy.AUTO
    """auto: the strongest policy the server offers with ``mode``."""
    mode: OpcUaSecurityMode = OpcUaSecurityMode.SIGN_AND_ENCRYPT
    allow_insecure: bool = False
    """Only with this may ``auto`` fall back to SecurityPolicy None when the server offers nothing else."""
    check_hostname: bool = True
    """The server certificate must name the endpoint's host (DNS name or IP address) in its SubjectAltName."""
    accept_outdated_crl: bool = False
    """Accept a CA-signed server certificate whose CA's CRLs in issuers/ have all passed their nextUpdate
    (revocation status unknown); a warning is logged at every connect. For plants that cannot refresh CRLs."""


class OpcUaDevice(_DeviceBase):
    protocol: Literal["opcua"] = "opcua"
    endpoint: Annotated[str, AfterValidator(_check_opcua_endpoint)]
    """e.g. opc.tcp://127.0.0.1:4840"""
    namespace: NonEmptyStr | None = None
    """Namespace URI for node ids without ns=/nsu=; resolved to an index at every connect."""
    mode: OpcUaModeField = OpcUaMode.SUBSCRIBE
    sampling_interval_ms: int | None = Field(default=None, ge=0)
    """Server sampling interval; in a Plant always set (default: interval_ms)."""
    queue_size: int = Field(default=1, ge=1)
    """Monitored-item queue size on the server."""
    timeout_ms: int = Field(default=4000, ge=1)
    username: str | None = None
    password: SecretStr | None = None
    password_file: NonEmptyStr | None = None
    """File holding the password (first line); a relative name is looked up in $CREDENTIALS_DIRECTORY."""
    security: OpcUaSecurity | None = None
    """Absent: SecurityPolicy None (no certificate)."""
    user_certificate: NonEmptyStr | None = None
    """X.509 user identity: certificate file (DER or PEM); needs ``user_key`` and ``security``."""
    user_key: NonEmptyStr | None = None
    structures: bool = False
    """Load the server's DataTypeDefinitions at every connect so structured values are published as objects."""
    tags: tuple[OpcUaTag, ...] = ()

    foreign_key_hint: ClassVar[tuple[frozenset[str], str]] = (
        frozenset(
            {"transport", "host", "port", "serial", "unit_id", "order", "max_registers_per_read", "max_bits_per_read",
             "max_gap", "max_concurrent_requests"}
        ),
        "a Modbus device setting, and this device has protocol: opcua",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> OpcUaDevice:
        raise_issues([*_rule_opcua_repeats(self), *_rule_opcua_credentials(self)])
        return self


def _rule_opcua_credentials(device: OpcUaDevice) -> Iterator[Issue]:
    if device.password is not None and device.password_file is not None:
        yield Issue(("password_file",), "set either password or password_file, not both")
    if device.password_file is not None and device.username is None:
        yield Issue(("username",), "a password_file is set but no username: set username too")
    if (device.user_certificate is None) != (device.user_key is None):
        yield Issue(("user_certificate",), "an X.509 user identity needs both user_certificate and user_key")
    if device.user_certificate is not None and device.username is not None:
        yield Issue(("user_certificate",), "choose one user identity: username or user_certificate")
    if device.user_certificate is not None and device.security is None:
        yield Issue(("security",), "an X.509 user identity needs a secure channel: set security")
    if device.password is not None and device.username is None:
        # A user-name identity token needs the name; without it the session would be anonymous, the password unused.
        yield Issue(("username",), "a password is set but no username: set username too")


def _opcua_endpoint_problems(endpoint: str) -> Iterator[Issue]:
    parts = urlsplit(endpoint)
    if parts.scheme.lower() != "opc.tcp" or not endpoint.lower().startswith("opc.tcp://"):
        yield Issue((), "endpoint must start with opc.tcp://, e.g. opc.tcp://127.0.0.1:4840")
        return
    if parts.username is not None or parts.password is not None:
        yield Issue((), "put credentials in username/password, not in the endpoint")
    if not parts.hostname:
        yield Issue((), "endpoint has no host")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port lazily
    except ValueError:
        yield Issue((), "endpoint port is not a number 1..65535")


def _rule_opcua_repeats(device: OpcUaDevice) -> Iterator[Issue]:
    for index, repeat in enumerate(device.repeat):
        for field in ("start", "stride"):
            if field in repeat.model_fields_set:
                yield Issue(
                    ("repeat", index, field),
                    f"{field} only applies to Modbus repeats; OPC UA templates use {{n}} in `node`",
                )


Device: TypeAlias = Annotated[ModbusDevice | OpcUaDevice, Field(discriminator="protocol")]
Tag: TypeAlias = ModbusTag | OpcUaTag

TemplateTags: TypeAlias = Annotated[tuple[dict[str, Any], ...], Field(min_length=1)]
"""A template as written: its tags stay plain mappings until a repeat expands them for its device's protocol."""


class TagMap(_Model):
    """The tag-map file as written (templates and repeats not yet expanded)."""

    gateway: GatewaySection
    mqtt: MqttSection
    spool: SpoolSection = Field(default_factory=SpoolSection)
    http: HttpSection = Field(default_factory=HttpSection)
    templates: dict[str, TemplateTags] = Field(default_factory=dict)
    devices: tuple[Device, ...]


def _rule_sparkplug_one_connection(plant: Plant) -> Iterator[Issue]:
    # The edge node is one MQTT session: its NDEATH will, the births and the data must share one connection
    # (a DBIRTH must reach the host before that device's DDATA on another topic).
    if Output.SPARKPLUG in plant.gateway.outputs and plant.mqtt.connections > 1:
        yield Issue(("mqtt", "connections"), "Sparkplug B needs one MQTT connection for the edge node: use 1")


class Plant(_Model):
    """The validated, expanded tag map: what the runtime runs."""

    gateway: GatewaySection
    mqtt: MqttSection
    devices: tuple[Device, ...]
    spool: SpoolSection = Field(default_factory=SpoolSection)
    http: HttpSection = Field(default_factory=HttpSection)

    @model_validator(mode="after")
    def _check(self) -> Plant:
        raise_issues(_rule_sparkplug_one_connection(self))
        return self

    def device(self, name: str) -> ModbusDevice | OpcUaDevice:
        for device in self.devices:
            if device.name == name:
                return device
        raise KeyError(name)

    @property
    def tag_count(self) -> int:
        return sum(len(device.tags) for device in self.devices)
