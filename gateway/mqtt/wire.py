"""MQTT 3.1.1 and 5.0 packets as bytes: the pure codec under the MQTT sink (no sockets, no clock, no logs).

What the sink needs, and what a test broker needs to talk to it: CONNECT (will, username, password,
keep alive, clean start, MQTT 5 properties), CONNACK (reason code, properties), PUBLISH at QoS 0 and 1
(retain, dup), PUBACK (MQTT 5 reason code and properties), PINGREQ / PINGRESP and DISCONNECT (MQTT 5
reason code). ``Decoder.feed`` takes bytes as they come off the socket, in pieces of any size, and
returns every complete packet in them.

The hot path is one PUBLISH out and one PUBACK in per message, so ``publish_packet`` builds a PUBLISH
from already encoded topic bytes, and the decoder reads the 4-byte PUBACK (the only form Mosquitto
sends for a successful QoS1 publish) without the general parser. Everything else is rare and written
for clarity. Byte layouts follow the OASIS specifications (3.1.1: mqtt-v3.1.1-os, 5.0: mqtt-v5.0-os);
section numbers in comments refer to 5.0.
"""

from __future__ import annotations

import sys
from array import array
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from gateway.vocabulary import QoS

# ------------------------------------------------------------------------------- protocol limits

MAX_REMAINING_LENGTH = 268_435_455
"""The largest Remaining Length a four-byte variable byte integer can carry (§1.5.5)."""
MAX_PACKET_ID = 65_535
MAX_STRING_BYTES = 65_535
"""UTF-8 strings and binary data carry a two-byte length (§1.5.4, §1.5.6)."""
DEFAULT_RECEIVE_MAXIMUM = 65_535
"""Receive Maximum when the server does not send one, and the implicit one of MQTT 3.1.1 (§3.2.2.3.3)."""



class ProtocolVersion(IntEnum):
    """The Protocol Level byte of CONNECT."""

    V311 = 4
    V5 = 5


class PacketType(IntEnum):
    """The high nibble of the fixed header's first byte (§2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class MalformedPacketError(ValueError):
    """Bytes that are not a valid packet of the protocol version in use, or a packet that cannot be encoded."""


# ----------------------------------------------------------------------------- MQTT 5 properties


class Property(IntEnum):
    """MQTT 5 property identifiers (§2.2.2.2)."""

    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class _Kind(IntEnum):
    """How a property value is written (§1.5)."""

    BYTE = 1
    TWO_BYTES = 2
    FOUR_BYTES = 3
    VARINT = 4
    STRING = 5
    BINARY = 6
    STRING_PAIR = 7


_PROPERTY_KINDS: dict[int, _Kind] = {
    Property.PAYLOAD_FORMAT_INDICATOR: _Kind.BYTE,
    Property.MESSAGE_EXPIRY_INTERVAL: _Kind.FOUR_BYTES,
    Property.CONTENT_TYPE: _Kind.STRING,
    Property.RESPONSE_TOPIC: _Kind.STRING,
    Property.CORRELATION_DATA: _Kind.BINARY,
    Property.SUBSCRIPTION_IDENTIFIER: _Kind.VARINT,
    Property.SESSION_EXPIRY_INTERVAL: _Kind.FOUR_BYTES,
    Property.ASSIGNED_CLIENT_IDENTIFIER: _Kind.STRING,
    Property.SERVER_KEEP_ALIVE: _Kind.TWO_BYTES,
    Property.AUTHENTICATION_METHOD: _Kind.STRING,
    Property.AUTHENTICATION_DATA: _Kind.BINARY,
    Property.REQUEST_PROBLEM_INFORMATION: _Kind.BYTE,
    Property.WILL_DELAY_INTERVAL: _Kind.FOUR_BYTES,
    Property.REQUEST_RESPONSE_INFORMATION: _Kind.BYTE,
    Property.RESPONSE_INFORMATION: _Kind.STRING,
    Property.SERVER_REFERENCE: _Kind.STRING,
    Property.REASON_STRING: _Kind.STRING,
    Property.RECEIVE_MAXIMUM: _Kind.TWO_BYTES,
    Property.TOPIC_ALIAS_MAXIMUM: _Kind.TWO_BYTES,
    Property.TOPIC_ALIAS: _Kind.TWO_BYTES,
    Property.MAXIMUM_QOS: _Kind.BYTE,
    Property.RETAIN_AVAILABLE: _Kind.BYTE,
    Property.USER_PROPERTY: _Kind.STRING_PAIR,
    Property.MAXIMUM_PACKET_SIZE: _Kind.FOUR_BYTES,
    Property.WILDCARD_SUBSCRIPTION_AVAILABLE: _Kind.BYTE,
    Property.SUBSCRIPTION_IDENTIFIER_AVAILABLE: _Kind.BYTE,
    Property.SHARED_SUBSCRIPTION_AVAILABLE: _Kind.BYTE,
}

PropertyValue = int | str | bytes | tuple[str, str]
Properties = tuple[tuple[Property, PropertyValue], ...]
"""MQTT 5 properties in wire order; a tuple because User Property may repeat."""

NO_PROPERTIES: Properties = ()


def find_property(properties: Properties, prop: Property) -> PropertyValue | None:
    """The value of the first ``prop`` in ``properties``, or None."""
    for key, value in properties:
        if key == prop:
            return value
    return None


# -------------------------------------------------------------------------------- reason codes

REASON_NAMES: dict[int, str] = {
    0x00: "Success",
    0x04: "Disconnect with Will Message",
    0x10: "No matching subscribers",
    0x80: "Unspecified error",
    0x81: "Malformed Packet",
    0x82: "Protocol Error",
    0x83: "Implementation specific error",
    0x84: "Unsupported Protocol Version",
    0x85: "Client Identifier not valid",
    0x86: "Bad User Name or Password",
    0x87: "Not authorized",
    0x88: "Server unavailable",
    0x89: "Server busy",
    0x8A: "Banned",
    0x8B: "Server shutting down",
    0x8C: "Bad authentication method",
    0x8D: "Keep Alive timeout",
    0x8E: "Session taken over",
    0x8F: "Topic Filter invalid",
    0x90: "Topic Name invalid",
    0x91: "Packet Identifier in use",
    0x92: "Packet Identifier not found",
    0x93: "Receive Maximum exceeded",
    0x94: "Topic Alias invalid",
    0x95: "Packet too large",
    0x96: "Message rate too high",
    0x97: "Quota exceeded",
    0x98: "Administrative action",
    0x99: "Payload format invalid",
    0x9A: "Retain not supported",
    0x9B: "QoS not supported",
    0x9C: "Use another server",
    0x9D: "Server moved",
    0x9E: "Shared Subscriptions not supported",
    0x9F: "Connection rate exceeded",
    0xA0: "Maximum connect time",
    0xA1: "Subscription Identifiers not supported",
    0xA2: "Wildcard Subscriptions not supported",
}
"""MQTT 5 reason codes (§2.4). 0x00 is also "Normal disconnection" and "Granted QoS 0"."""

CONNACK_311_NAMES: dict[int, str] = {
    0: "Connection Accepted",
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
"""MQTT 3.1.1 CONNACK return codes (3.1.1 §3.2.2.3)."""

NORMAL_DISCONNECTION = 0x00
PROTOCOL_ERROR = 0x82
UNSUPPORTED_PROTOCOL_VERSION = 0x84
PACKET_TOO_LARGE = 0x95

_REFUSAL_TOKENS: dict[int, str] = {
    0x80: "unspecified_error",
    0x83: "implementation_specific_error",
    0x87: "not_authorized",
    0x90: "topic_name_invalid",
    0x91: "packet_identifier_in_use",
    0x95: "packet_too_large",
    0x97: "quota_exceeded",
    0x99: "payload_format_invalid",
}


def refusal_reason(reason_code: int) -> str:
    """A short stable snake_case token for a refused PUBLISH: the PUBACK reason codes of §3.4.2.1 (and
    0x95 "Packet too large", which a client also uses for a message it will not send), else
    ``reason_0x..``. Used in counters, dead-letter rows and logs, so the tokens never change."""
    return _REFUSAL_TOKENS.get(reason_code) or f"reason_0x{reason_code:02x}"


def is_failure(reason_code: int) -> bool:
    """MQTT 5: reason codes of 0x80 and above are failures (§2.4)."""
    return reason_code >= 0x80


def reason_text(reason_code: int, version: ProtocolVersion, *, connack: bool = False) -> str:
    """A reason code as words with its number, e.g. ``Not authorized (0x87)``, for logs and errors."""
    if connack and version == ProtocolVersion.V311:
        name = CONNACK_311_NAMES.get(reason_code, "unknown return code")
        return f"{name} ({reason_code})"
    return f"{REASON_NAMES.get(reason_code, 'unknown reason code')} (0x{reason_code:02X})"


# ------------------------------------------------------------------------------------- packets


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    """The will of a CONNECT: published by the broker when the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: QoS = 1
    retain: bool = False
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect:
    version: ProtocolVersion
    client_id: str
    keepalive_s: int
    clean_start: bool = True
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True, kw_only=True)
class Connack:
    """CONNACK. ``reason_code`` is the 3.1.1 return code or the MQTT 5 reason code; 0 is success in both."""

    session_present: bool = False
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES
    # MQTT 5 decoding only: the CONNACK ended after its reason code, without a Property Length. That is
    # the 3.1.1 layout (remaining length 2): what a 3.1.1-only server answers an MQTT 5 CONNECT with,
    # return code 1 "unacceptable protocol version" (3.1.1 §3.1.2.2).
    short_form: bool = False

    @property
    def accepted(self) -> bool:
        return self.reason_code == 0

    def _int(self, prop: Property) -> int | None:
        value = find_property(self.properties, prop)
        return value if isinstance(value, int) else None

    @property
    def receive_maximum(self) -> int:
        """How many QoS1/2 PUBLISH the server takes unacknowledged (65535 when absent, and for 3.1.1)."""
        value = self._int(Property.RECEIVE_MAXIMUM)
        return DEFAULT_RECEIVE_MAXIMUM if value is None else value

    @property
    def topic_alias_maximum(self) -> int:
        value = self._int(Property.TOPIC_ALIAS_MAXIMUM)
        return 0 if value is None else value

    @property
    def maximum_packet_size(self) -> int | None:
        """The largest packet (bytes, fixed header included) the server accepts; None: no limit."""
        return self._int(Property.MAXIMUM_PACKET_SIZE)

    @property
    def server_keep_alive(self) -> int | None:
        """Seconds; when present it replaces the keep alive the client asked for (§3.2.2.3.14)."""
        return self._int(Property.SERVER_KEEP_ALIVE)

    @property
    def assigned_client_identifier(self) -> str | None:
        value = find_property(self.properties, Property.ASSIGNED_CLIENT_IDENTIFIER)
        return value if isinstance(value, str) else None

    @property
    def reason_string(self) -> str | None:
        value = find_property(self.properties, Property.REASON_STRING)
        return value if isinstance(value, str) else None


REASON_STRING_CHARS = 200
"""Characters of a broker's Reason String kept for logs and errors: it may be 65,535 bytes long."""


def shorten(text: str, limit: int = REASON_STRING_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class ConnackProblem(NamedTuple):
    """Why a CONNACK ends the connection attempt, as words for logs and errors. ``protocol_error``: the
    CONNACK breaks the specification, so an MQTT 5 client closes with DISCONNECT 0x82 (§4.13.2);
    otherwise the broker refused the connection."""

    text: str
    protocol_error: bool


def connack_problem(connack: Connack, version: ProtocolVersion, *, clean_start: bool) -> ConnackProblem | None:
    """None when the connection may be used; else what is wrong with ``connack``, the answer to a CONNECT
    of ``version`` with ``clean_start``."""
    v5 = version == ProtocolVersion.V5
    if v5 and connack.short_form:
        code = reason_text(connack.reason_code, ProtocolVersion.V311, connack=True)
        return ConnackProblem(
            "protocol version not supported: try protocol: 3.1.1 "
            f"(the broker answered the MQTT 5 CONNECT with an MQTT 3.1.1 CONNACK: {code})",
            False,
        )
    if not connack.accepted:
        refused = "CONNACK refused: " + reason_text(connack.reason_code, version, connack=True)
        if connack.reason_string:
            refused += f" ({shorten(connack.reason_string)})"
        if v5 and connack.reason_code == UNSUPPORTED_PROTOCOL_VERSION:
            return ConnackProblem(f"protocol version not supported: try protocol: 3.1.1 ({refused})", False)
        return ConnackProblem(refused, False)
    if connack.session_present and clean_start:
        # The server must answer Clean Start 1 with Session Present 0 [MQTT-3.2.2-2]; a client without
        # session state that gets Session Present 1 must close the connection [MQTT-3.2.2-4].
        return ConnackProblem("protocol error: CONNACK with Session Present 1 in reply to Clean Start 1", True)
    if v5:
        seen: set[Property] = set()
        for prop, _ in connack.properties:
            if prop in seen and prop != Property.USER_PROPERTY:  # §3.2.2.3: each at most once
                return ConnackProblem(f"protocol error: CONNACK carries {prop.name} more than once", True)
            seen.add(prop)
        if connack.receive_maximum == 0:  # §3.2.2.3.3
            return ConnackProblem("protocol error: CONNACK with Receive Maximum 0", True)
        if connack.maximum_packet_size == 0:  # §3.2.2.3.6
            return ConnackProblem("protocol error: CONNACK with Maximum Packet Size 0", True)
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish:
    topic: str
    payload: bytes
    qos: QoS = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None  # QoS 1 only
    properties: Properties = NO_PROPERTIES


class Puback(NamedTuple):
    """PUBACK. A NamedTuple rather than a frozen dataclass: it is just as immutable, and the decoder builds one
    per QoS1 message without a frozen dataclass's ``object.__setattr__`` call per field."""

    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class PingReq:
    pass


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect:
    reason_code: int = NORMAL_DISCONNECTION  # MQTT 5 only; 3.1.1 DISCONNECT is empty
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe:
    """SUBSCRIBE (§3.8): topic filters with the QoS asked for each (QoS 0 and 1; no MQTT 5 options)."""

    packet_id: int
    filters: tuple[tuple[str, QoS], ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True, kw_only=True)
class Suback:
    """SUBACK (§3.9): one return / reason code per filter, in order (0x00-0x02 granted QoS, >= 0x80 refused)."""

    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES


Packet = Connect | Connack | Publish | Puback | PingReq | PingResp | Disconnect | Subscribe | Suback

PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"


# ------------------------------------------------------------------------------------ encoding


def encode_varint(value: int) -> bytes:
    """Variable Byte Integer (§1.5.5): 7 bits per byte, least significant first, high bit = more."""
    if value < 0x80:
        if value < 0:
            raise MalformedPacketError(f"negative variable byte integer {value}")
        return bytes((value,))
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value > MAX_REMAINING_LENGTH:
        raise MalformedPacketError(f"{value} is larger than a variable byte integer can hold ({MAX_REMAINING_LENGTH})")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _binary(data: bytes) -> bytes:
    if len(data) > MAX_STRING_BYTES:
        raise MalformedPacketError(f"{len(data)} bytes do not fit a two-byte length")
    return len(data).to_bytes(2, "big") + data


def _string(text: str) -> bytes:
    return _binary(text.encode("utf-8"))


def encode_properties(properties: Properties) -> bytes:
    """Property Length (varint) followed by the properties."""
    body = bytearray()
    for prop, value in properties:
        kind = _PROPERTY_KINDS.get(prop)
        if kind is None:
            raise MalformedPacketError(f"unknown property 0x{prop:02X}")
        body.append(prop)
        if kind == _Kind.STRING_PAIR:
            if not isinstance(value, tuple):
                raise MalformedPacketError(f"property {Property(prop).name} needs a (name, value) pair")
            body += _string(value[0]) + _string(value[1])
        elif kind == _Kind.STRING:
            if not isinstance(value, str):
                raise MalformedPacketError(f"property {Property(prop).name} needs a string")
            body += _string(value)
        elif kind == _Kind.BINARY:
            if not isinstance(value, bytes):
                raise MalformedPacketError(f"property {Property(prop).name} needs bytes")
            body += _binary(value)
        else:
            if not isinstance(value, int):
                raise MalformedPacketError(f"property {Property(prop).name} needs an integer")
            try:
                if kind == _Kind.BYTE:
                    body += value.to_bytes(1, "big")
                elif kind == _Kind.TWO_BYTES:
                    body += value.to_bytes(2, "big")
                elif kind == _Kind.FOUR_BYTES:
                    body += value.to_bytes(4, "big")
                else:
                    body += encode_varint(value)
            except OverflowError as exc:
                raise MalformedPacketError(f"property {Property(prop).name} value {value} out of range") from exc
    return encode_varint(len(body)) + bytes(body)


def _fixed_header(first_byte: int, remaining: int) -> bytes:
    return bytes((first_byte,)) + encode_varint(remaining)


def encode_connect(packet: Connect) -> bytes:
    """CONNECT (§3.1). The password is binary data; a will is always QoS as given, retained as given."""
    if not 0 <= packet.keepalive_s <= 0xFFFF:
        raise MalformedPacketError(f"keep alive {packet.keepalive_s} s is not in 0..65535")
    if packet.password is not None and packet.username is None and packet.version == ProtocolVersion.V311:
        raise MalformedPacketError("MQTT 3.1.1 does not allow a password without a user name")
    v5 = packet.version == ProtocolVersion.V5
    flags = 0x02 if packet.clean_start else 0
    will = packet.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if packet.username is not None:
        flags |= 0x80
    if packet.password is not None:
        flags |= 0x40
    variable = _string("MQTT") + bytes((packet.version, flags)) + packet.keepalive_s.to_bytes(2, "big")
    if v5:
        variable += encode_properties(packet.properties)
    payload = _string(packet.client_id)
    if will is not None:
        if v5:
            payload += encode_properties(will.properties)
        payload += _string(will.topic) + _binary(will.payload)
    if packet.username is not None:
        payload += _string(packet.username)
    if packet.password is not None:
        payload += _binary(packet.password)
    return _fixed_header(0x10, len(variable) + len(payload)) + variable + payload


def encode_connack(packet: Connack, version: ProtocolVersion) -> bytes:
    body = bytes((0x01 if packet.session_present else 0, packet.reason_code))
    if version == ProtocolVersion.V5 and not packet.short_form:
        body += encode_properties(packet.properties)
    return _fixed_header(0x20, len(body)) + body


def publish_packet(
    topic: bytes,
    payload: bytes,
    *,
    qos: QoS,
    packet_id: int = 0,
    retain: bool = False,
    dup: bool = False,
    v5: bool,
) -> bytes:
    """PUBLISH (§3.3) from a topic already encoded as UTF-8 (the sink checks and encodes it once).

    MQTT 5 gets an empty property list. ``packet_id`` is needed for QoS 1 and ignored for QoS 0.
    """
    if len(topic) > MAX_STRING_BYTES:
        raise MalformedPacketError(f"topic of {len(topic)} bytes does not fit a two-byte length")
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    head = len(topic).to_bytes(2, "big") + topic
    if qos:
        if not 0 < packet_id <= MAX_PACKET_ID:
            raise MalformedPacketError(f"packet id {packet_id} is not in 1..65535")
        head += packet_id.to_bytes(2, "big")
    if v5:
        head += b"\x00"  # Property Length 0
    return bytes((first,)) + encode_varint(len(head) + len(payload)) + head + payload


def topic_field(topic: bytes) -> bytes:
    """A topic already encoded as UTF-8 as it appears in PUBLISH: two-byte length, then the bytes."""
    if len(topic) > MAX_STRING_BYTES:
        raise MalformedPacketError(f"topic of {len(topic)} bytes does not fit a two-byte length")
    return len(topic).to_bytes(2, "big") + topic


class PublishEncoder:
    """PUBLISH packets for the hot path of a client: one per message, from a topic field the caller
    keeps per topic (``topic_field``), so a message costs a few concatenations. ``publish_packet``
    builds the same bytes (a test checks it); this skips its keyword arguments and checks."""

    __slots__ = ("_properties",)

    def __init__(self, version: ProtocolVersion) -> None:
        self._properties = b"\x00" if version == ProtocolVersion.V5 else b""  # MQTT 5: no properties

    def qos1(self, topic: bytes, payload: bytes, packet_id: int, retain: bool) -> bytes:
        """``topic`` is a ``topic_field``; ``packet_id`` must be in 1..65535 (not checked here)."""
        properties = self._properties
        remaining = len(topic) + 2 + len(properties) + len(payload)
        return b"".join(
            (
                b"\x33" if retain else b"\x32",
                bytes((remaining & 0x7F | 0x80, remaining >> 7))  # the usual case: 128 B .. 16 KiB
                if 0x80 <= remaining < 0x4000
                else encode_varint(remaining),
                topic,
                packet_id.to_bytes(2, "big"),
                properties,
                payload,
            )
        )

    def qos0(self, topic: bytes, payload: bytes, retain: bool) -> bytes:
        properties = self._properties
        remaining = len(topic) + len(properties) + len(payload)
        return b"".join(
            (
                b"\x31" if retain else b"\x30",
                bytes((remaining,)) if remaining < 0x80 else encode_varint(remaining),
                topic,
                properties,
                payload,
            )
        )


def set_dup(packet: bytes) -> bytes:
    """The same PUBLISH with the DUP flag set: how a QoS1 message is sent again within the same session
    (Clean Start 0 and Session Present 1, §4.4); on a new session a resend is a first delivery, DUP 0."""
    return bytes((packet[0] | 0x08,)) + packet[1:]


def encode_publish(packet: Publish, version: ProtocolVersion) -> bytes:
    if packet.qos and packet.packet_id is None:
        raise MalformedPacketError("a QoS 1 PUBLISH needs a packet id")
    v5 = version == ProtocolVersion.V5
    if not packet.properties:
        return publish_packet(
            packet.topic.encode("utf-8"),
            packet.payload,
            qos=packet.qos,
            packet_id=packet.packet_id or 0,
            retain=packet.retain,
            dup=packet.dup,
            v5=v5,
        )
    if not v5:
        raise MalformedPacketError("MQTT 3.1.1 has no properties")
    first = 0x30 | (packet.qos << 1) | (0x01 if packet.retain else 0) | (0x08 if packet.dup else 0)
    head = _string(packet.topic)
    if packet.qos:
        assert packet.packet_id is not None
        head += packet.packet_id.to_bytes(2, "big")
    head += encode_properties(packet.properties)
    return _fixed_header(first, len(head) + len(packet.payload)) + head + packet.payload


def encode_puback(packet: Puback, version: ProtocolVersion) -> bytes:
    """PUBACK (§3.4). MQTT 5 leaves out the reason code when it is 0 and there are no properties."""
    if not 0 < packet.packet_id <= MAX_PACKET_ID:
        raise MalformedPacketError(f"packet id {packet.packet_id} is not in 1..65535")
    body = packet.packet_id.to_bytes(2, "big")
    if version == ProtocolVersion.V5 and (packet.reason_code or packet.properties):
        body += bytes((packet.reason_code,))
        if packet.properties:
            body += encode_properties(packet.properties)
    return _fixed_header(0x40, len(body)) + body


def encode_disconnect(packet: Disconnect, version: ProtocolVersion) -> bytes:
    """DISCONNECT (§3.14). MQTT 5 leaves out a normal reason code without properties."""
    if version == ProtocolVersion.V311 or (packet.reason_code == NORMAL_DISCONNECTION and not packet.properties):
        return b"\xe0\x00"
    body = bytes((packet.reason_code,))
    if packet.properties:
        body += encode_properties(packet.properties)
    return _fixed_header(0xE0, len(body)) + body


def encode_subscribe(packet: Subscribe, version: ProtocolVersion) -> bytes:
    """SUBSCRIBE (§3.8): fixed-header flags 0010 (§3.8.1), at least one filter (§3.8.3), each followed by its
    options byte: the requested QoS in bits 0-1, the other bits 0 (3.1.1 reserved; MQTT 5 No Local, Retain As
    Published and Retain Handling 0: the defaults)."""
    if not 0 < packet.packet_id <= MAX_PACKET_ID:
        raise MalformedPacketError(f"packet id {packet.packet_id} is not in 1..65535")
    if not packet.filters:
        raise MalformedPacketError("SUBSCRIBE without a topic filter")
    body = packet.packet_id.to_bytes(2, "big")
    if version == ProtocolVersion.V5:
        body += encode_properties(packet.properties)
    for topic_filter, qos in packet.filters:
        if not topic_filter:
            raise MalformedPacketError("SUBSCRIBE with an empty topic filter")
        body += _string(topic_filter) + bytes((qos,))
    return _fixed_header(0x82, len(body)) + body


def encode_suback(packet: Suback, version: ProtocolVersion) -> bytes:
    """SUBACK (§3.9), as a broker sends it (for tests and a server-side reader)."""
    body = packet.packet_id.to_bytes(2, "big")
    if version == ProtocolVersion.V5:
        body += encode_properties(packet.properties)
    body += bytes(packet.reason_codes)
    return _fixed_header(0x90, len(body)) + body


def encode(packet: Packet, version: ProtocolVersion) -> bytes:
    """Any supported packet as bytes (CONNECT carries its own version)."""
    if isinstance(packet, Puback):
        return encode_puback(packet, version)
    if isinstance(packet, Publish):
        return encode_publish(packet, version)
    if isinstance(packet, Connect):
        return encode_connect(packet)
    if isinstance(packet, Connack):
        return encode_connack(packet, version)
    if isinstance(packet, PingReq):
        return PINGREQ_BYTES
    if isinstance(packet, PingResp):
        return PINGRESP_BYTES
    if isinstance(packet, Subscribe):
        return encode_subscribe(packet, version)
    if isinstance(packet, Suback):
        return encode_suback(packet, version)
    return encode_disconnect(packet, version)


# ------------------------------------------------------------------------------------ decoding


class _Reader:
    """Reads the fields of one packet body; every read checks the end so a short body is MalformedPacketError."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, size: int) -> bytes:
        if self.pos + size > self.end:
            raise MalformedPacketError("packet ends inside a field")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MalformedPacketError("packet ends inside a field")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise MalformedPacketError("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.uint(2))

    def string(self) -> str:
        try:
            text = self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacketError(f"invalid UTF-8 string: {exc}") from exc
        if "\x00" in text:
            raise MalformedPacketError("UTF-8 string contains U+0000")  # §1.5.4
        return text

    def properties(self) -> Properties:
        length = self.varint()
        stop = self.pos + length
        if stop > self.end:
            raise MalformedPacketError("property length runs past the packet")
        found: list[tuple[Property, PropertyValue]] = []
        while self.pos < stop:
            ident = self.varint()
            kind = _PROPERTY_KINDS.get(ident)
            if kind is None:
                raise MalformedPacketError(f"unknown property 0x{ident:02X}")
            value: PropertyValue
            if kind == _Kind.BYTE:
                value = self.byte()
            elif kind == _Kind.TWO_BYTES:
                value = self.uint(2)
            elif kind == _Kind.FOUR_BYTES:
                value = self.uint(4)
            elif kind == _Kind.VARINT:
                value = self.varint()
            elif kind == _Kind.STRING:
                value = self.string()
            elif kind == _Kind.BINARY:
                value = self.binary()
            else:
                value = (self.string(), self.string())
            found.append((Property(ident), value))
        if self.pos != stop:
            raise MalformedPacketError("a property runs past the property length")
        return tuple(found)


# Fixed-header flags every packet type must carry (§2.1.3); PUBLISH has its own.
_REQUIRED_FLAGS = {
    PacketType.CONNECT: 0,
    PacketType.CONNACK: 0,
    PacketType.PUBACK: 0,
    PacketType.PINGREQ: 0,
    PacketType.PINGRESP: 0,
    PacketType.DISCONNECT: 0,
    PacketType.SUBSCRIBE: 0b0010,  # §3.8.1
    PacketType.SUBACK: 0,
}
_PINGREQ = PingReq()
_PINGRESP = PingResp()


_PLAIN_PUBACK_SIZE = 4  # 0x40, remaining length 2, packet id: the only PUBACK Mosquitto sends for a success


def plain_puback_ids(data: bytes) -> list[int] | None:
    """The packet ids when ``data`` is nothing but whole plain PUBACKs (``40 02 id``: MQTT 3.1.1, and MQTT 5
    success without properties), else None (then ``Decoder.feed`` takes it, which also reports a malformed one).

    What a broker answers to a window of QoS 1 messages: one check of the whole read and the ids unpacked in C,
    instead of a ``Puback`` decoded per packet. The caller must have no partial packet buffered before ``data``.
    """
    size = len(data)
    count = size >> 2
    if not count or size & 3 or data[0::4] != b"\x40" * count or data[1::4] != b"\x02" * count:
        return None
    words = array("H", data)
    ids = words[1::2]  # the packet id of each 4-byte PUBACK, in the machine's byte order
    if sys.byteorder == "little":
        ids.byteswap()
    if 0 in ids:
        return None  # packet id 0 is malformed: the decoder says so
    return ids.tolist()


class Decoder:
    """Incremental decoder: ``feed`` bytes as they arrive, get back the packets they complete.

    A packet split across reads is kept until the rest arrives; several packets in one read all come
    back at once, in order. The protocol version decides whether bodies carry MQTT 5 properties; a
    decoded CONNECT switches the decoder to that CONNECT's version (for a server-side reader).
    ``max_packet_size`` (bytes, whole packet) bounds what is buffered: a larger announced packet is
    MalformedPacketError at once, before its bytes arrive. After MalformedPacketError the stream is unusable.
    """

    def __init__(self, version: ProtocolVersion, *, max_packet_size: int = MAX_REMAINING_LENGTH + 5) -> None:
        self.version = version
        self.max_packet_size = max_packet_size
        self._pending = b""

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete packet waiting for the rest."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[Packet]:
        if self._pending:
            data = self._pending + data
        packets: list[Packet] = []
        size = len(data)
        pos = 0
        while size - pos >= 2:
            first = data[pos]
            # Fast path: PUBACK with packet id only (3.1.1, and MQTT 5 success without properties).
            if first == 0x40 and data[pos + 1] == 2:
                if size - pos < 4:
                    break
                packet_id = (data[pos + 2] << 8) | data[pos + 3]
                if not packet_id:
                    raise MalformedPacketError("PUBACK with packet id 0")
                packets.append(Puback(packet_id))
                pos += 4
                continue
            # Remaining Length: 1 to 4 bytes after the first one.
            length = 0
            index = pos + 1
            shift = 0
            while True:
                if index >= size:
                    length = -1  # the length itself is incomplete
                    break
                byte = data[index]
                index += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    raise MalformedPacketError("remaining length longer than 4 bytes")
            if length < 0:
                break
            if index - pos + length > self.max_packet_size:
                raise MalformedPacketError(
                    f"packet of {index - pos + length} bytes is larger than the limit of {self.max_packet_size}"
                )
            end = index + length
            if end > size:
                break
            packets.append(self._decode(first, _Reader(data, index, end)))
            pos = end
        self._pending = data[pos:] if pos < size else b""
        return packets

    def _decode(self, first: int, body: _Reader) -> Packet:
        kind_number = first >> 4
        flags = first & 0x0F
        if kind_number == PacketType.PUBLISH:
            return self._publish(flags, body)
        try:
            kind = PacketType(kind_number)
        except ValueError as exc:
            raise MalformedPacketError(f"reserved packet type {kind_number}") from exc
        required = _REQUIRED_FLAGS.get(kind)
        if required is None:
            raise MalformedPacketError(f"{kind.name} is not supported by this client")
        if flags != required:
            raise MalformedPacketError(f"{kind.name} with reserved flags 0x{flags:X}")
        packet: Packet
        if kind == PacketType.PUBACK:
            packet = self._puback(body)
        elif kind == PacketType.CONNACK:
            packet = self._connack(body)
        elif kind == PacketType.PINGREQ:
            packet = _PINGREQ
        elif kind == PacketType.PINGRESP:
            packet = _PINGRESP
        elif kind == PacketType.DISCONNECT:
            packet = self._disconnect(body)
        elif kind == PacketType.SUBACK:
            packet = self._suback(body)
        elif kind == PacketType.SUBSCRIBE:
            packet = self._subscribe(body)
        else:
            packet = self._connect(body)
        if body.remaining():
            raise MalformedPacketError(f"{kind.name} has {body.remaining()} bytes too many")
        return packet

    @property
    def _v5(self) -> bool:
        return self.version == ProtocolVersion.V5

    def _puback(self, body: _Reader) -> Puback:
        packet_id = body.uint(2)
        if not packet_id:
            raise MalformedPacketError("PUBACK with packet id 0")
        if not self._v5 or not body.remaining():
            return Puback(packet_id)
        reason = body.byte()
        properties = body.properties() if body.remaining() else NO_PROPERTIES
        return Puback(packet_id, reason, properties)

    def _connack(self, body: _Reader) -> Connack:
        flags = body.byte()
        if flags & 0xFE:
            raise MalformedPacketError(f"CONNACK with reserved acknowledge flags 0x{flags:02X}")
        reason = body.byte()
        if self._v5 and not body.remaining():
            return Connack(session_present=bool(flags & 0x01), reason_code=reason, short_form=True)
        properties = body.properties() if self._v5 else NO_PROPERTIES
        return Connack(session_present=bool(flags & 0x01), reason_code=reason, properties=properties)

    def _disconnect(self, body: _Reader) -> Disconnect:
        if not self._v5 or not body.remaining():
            return Disconnect()
        reason = body.byte()
        properties = body.properties() if body.remaining() else NO_PROPERTIES
        return Disconnect(reason_code=reason, properties=properties)

    def _suback(self, body: _Reader) -> Suback:
        packet_id = body.uint(2)
        if not packet_id:
            raise MalformedPacketError("SUBACK with packet id 0")
        properties = body.properties() if self._v5 else NO_PROPERTIES
        codes = body.take(body.remaining())
        if not codes:
            raise MalformedPacketError("SUBACK without a return code")  # one per filter, §3.9.3
        return Suback(packet_id=packet_id, reason_codes=tuple(codes), properties=properties)

    def _subscribe(self, body: _Reader) -> Subscribe:
        packet_id = body.uint(2)
        if not packet_id:
            raise MalformedPacketError("SUBSCRIBE with packet id 0")
        properties = body.properties() if self._v5 else NO_PROPERTIES
        filters: list[tuple[str, QoS]] = []
        while body.remaining():
            topic_filter = body.string()
            options = body.byte()
            qos = options & 0x03
            # 3.1.1 §3.8.3.1: the upper six bits are reserved; MQTT 5 §3.8.3.1: bits 6-7 are.
            reserved = 0xFC if not self._v5 else 0xC0
            if options & reserved or qos > 1:
                raise MalformedPacketError(f"SUBSCRIBE options 0x{options:02X} (QoS 0 and 1, no reserved bits)")
            filters.append((topic_filter, 1 if qos else 0))
        if not filters:
            raise MalformedPacketError("SUBSCRIBE without a topic filter")  # §3.8.3
        return Subscribe(packet_id=packet_id, filters=tuple(filters), properties=properties)

    def _publish(self, flags: int, body: _Reader) -> Publish:
        qos = (flags >> 1) & 0x03
        if qos > 1:
            raise MalformedPacketError(f"PUBLISH with QoS {qos} (this codec handles QoS 0 and 1)")
        dup = bool(flags & 0x08)
        if dup and not qos:
            raise MalformedPacketError("QoS 0 PUBLISH with DUP set")  # §3.3.1.1
        topic = body.string()
        packet_id: int | None = None
        if qos:
            packet_id = body.uint(2)
            if not packet_id:
                raise MalformedPacketError("PUBLISH with packet id 0")
        properties = body.properties() if self._v5 else NO_PROPERTIES
        payload = body.take(body.remaining())
        return Publish(
            topic=topic,
            payload=payload,
            qos=1 if qos else 0,
            retain=bool(flags & 0x01),
            dup=dup,
            packet_id=packet_id,
            properties=properties,
        )

    def _connect(self, body: _Reader) -> Connect:
        if body.string() != "MQTT":
            raise MalformedPacketError("CONNECT with a protocol name other than MQTT")
        level = body.byte()
        try:
            version = ProtocolVersion(level)
        except ValueError as exc:
            raise MalformedPacketError(f"unsupported protocol level {level}") from exc
        self.version = version  # every later packet of this connection speaks it
        flags = body.byte()
        if flags & 0x01:
            raise MalformedPacketError("CONNECT with the reserved flag set")
        keepalive_s = body.uint(2)
        properties = body.properties() if self._v5 else NO_PROPERTIES
        client_id = body.string()
        will: Will | None = None
        if flags & 0x04:
            will_qos = (flags >> 3) & 0x03
            if will_qos > 1:
                raise MalformedPacketError(f"will QoS {will_qos} (this codec handles QoS 0 and 1)")
            will_properties = body.properties() if self._v5 else NO_PROPERTIES
            will_topic = body.string()
            will = Will(
                topic=will_topic,
                payload=body.binary(),
                qos=1 if will_qos else 0,
                retain=bool(flags & 0x20),
                properties=will_properties,
            )
        elif flags & 0x38:
            raise MalformedPacketError("will QoS or retain set without a will")
        username = body.string() if flags & 0x80 else None
        password = body.binary() if flags & 0x40 else None
        return Connect(
            version=version,
            client_id=client_id,
            keepalive_s=keepalive_s,
            clean_start=bool(flags & 0x02),
            will=will,
            username=username,
            password=password,
            properties=properties,
        )


def decode_one(data: bytes, version: ProtocolVersion) -> Packet:
    """Exactly one packet from ``data``; MalformedPacketError if it is incomplete or followed by more bytes."""
    decoder = Decoder(version)
    packets = decoder.feed(data)
    if len(packets) != 1 or decoder.buffered:
        raise MalformedPacketError(
            f"expected exactly one packet, got {len(packets)} and {decoder.buffered} spare bytes"
        )
    return packets[0]
