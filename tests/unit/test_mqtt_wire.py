"""The MQTT 3.1.1 / 5.0 packet codec: byte layouts from the specifications, round trips, fragmented input."""

from __future__ import annotations

import pytest

from gateway.mqtt.wire import (
    MAX_REMAINING_LENGTH,
    NO_PROPERTIES,
    PINGREQ_BYTES,
    PINGRESP_BYTES,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacketError,
    Packet,
    PingReq,
    PingResp,
    Property,
    ProtocolVersion,
    Puback,
    Publish,
    PublishEncoder,
    Will,
    connack_problem,
    decode_one,
    encode,
    encode_connect,
    encode_properties,
    encode_varint,
    is_failure,
    publish_packet,
    reason_text,
    refusal_reason,
    set_dup,
    shorten,
    topic_field,
)

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5

# ---------------------------------------------------------------------------------- varints


@pytest.mark.parametrize(
    ("value", "encoded"),
    [  # the boundaries of MQTT 5 §1.5.5
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (MAX_REMAINING_LENGTH, b"\xff\xff\xff\x7f"),
    ],
)
def test_variable_byte_integer(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded


@pytest.mark.parametrize("value", [-1, MAX_REMAINING_LENGTH + 1])
def test_variable_byte_integer_out_of_range(value: int) -> None:
    with pytest.raises(MalformedPacketError):
        encode_varint(value)


# ------------------------------------------------------------------------- exact byte layouts

WILL = Will(topic="a/s", payload=b"off", qos=1, retain=True)

ENCODED: list[tuple[str, Packet, ProtocolVersion, bytes]] = [
    (
        "§3.1 CONNECT 3.1.1 minimal, clean session [MQTT-3.1.2-4]",
        Connect(version=V311, client_id="c1", keepalive_s=30),
        V311,
        b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x1e\x00\x02c1",
    ),
    (
        "§3.1.2.3 CONNECT 3.1.1 will retained QoS1, user, password",
        Connect(version=V311, client_id="c", keepalive_s=60, will=WILL, username="u", password=b"p"),
        V311,
        # flags: user 0x80 | password 0x40 | will retain 0x20 | will QoS1 0x08 | will 0x04 | clean 0x02
        b"\x10\x1d\x00\x04MQTT\x04\xee\x00\x3c\x00\x01c\x00\x03a/s\x00\x03off\x00\x01u\x00\x01p",
    ),
    (
        "§3.1.2.11 CONNECT 5 with a will, empty properties everywhere",
        Connect(version=V5, client_id="c", keepalive_s=10, will=WILL),
        V5,
        b"\x10\x19\x00\x04MQTT\x05\x2e\x00\x0a\x00\x00\x01c\x00\x00\x03a/s\x00\x03off",
    ),
    (
        "§3.1.2.11.2 CONNECT 5 session expiry property, not clean",
        Connect(
            version=V5,
            client_id="",
            keepalive_s=0,
            clean_start=False,
            properties=((Property.SESSION_EXPIRY_INTERVAL, 3600),),
        ),
        V5,
        b"\x10\x12\x00\x04MQTT\x05\x00\x00\x00\x05\x11\x00\x00\x0e\x10\x00\x00",
    ),
    (
        "§3.1.2.11.4 CONNECT 5 announcing Maximum Packet Size 1 MiB",
        Connect(version=V5, client_id="c", keepalive_s=30, properties=((Property.MAXIMUM_PACKET_SIZE, 1 << 20),)),
        V5,
        b"\x10\x13\x00\x04MQTT\x05\x02\x00\x1e\x05\x27\x00\x10\x00\x00\x00\x01c",
    ),
    ("3.1.1 §3.2.2.3 CONNACK accepted", Connack(), V311, b"\x20\x02\x00\x00"),
    (
        "3.1.1 §3.2.2.3 CONNACK 'unacceptable protocol version' read by an MQTT 5 client: short form",
        Connack(reason_code=1, short_form=True),
        V5,
        b"\x20\x02\x00\x01",
    ),
    ("3.1.1 §3.2.2.3 CONNACK not authorized", Connack(reason_code=5), V311, b"\x20\x02\x00\x05"),
    (
        "§3.2.2.3.3 §3.2.2.3.8 CONNACK 5 with Receive Maximum and Topic Alias Maximum (what Mosquitto sends)",
        Connack(
            session_present=True,
            properties=((Property.RECEIVE_MAXIMUM, 20), (Property.TOPIC_ALIAS_MAXIMUM, 10)),
        ),
        V5,
        b"\x20\x09\x01\x00\x06\x21\x00\x14\x22\x00\x0a",
    ),
    (
        "§3.3 PUBLISH QoS0 [MQTT-2.2.1-2] no packet id",
        Publish(topic="a/b", payload=b"hi"),
        V311,
        b"\x30\x07\x00\x03a/bhi",
    ),
    (
        "§3.3.1.3 PUBLISH QoS1 retained, 3.1.1",
        Publish(topic="a/b", payload=b"hi", qos=1, retain=True, packet_id=10),
        V311,
        b"\x33\x09\x00\x03a/b\x00\x0ahi",
    ),
    (
        "§3.3.1.1 PUBLISH QoS1 DUP, 5: empty property length",
        Publish(topic="a/b", payload=b"hi", qos=1, dup=True, packet_id=0xABCD),
        V5,
        b"\x3a\x0a\x00\x03a/b\xab\xcd\x00hi",
    ),
    (
        "§3.3.2.3.9 PUBLISH 5 with content type",
        Publish(topic="t", payload=b"{}", properties=((Property.CONTENT_TYPE, "json"),)),
        V5,
        b"\x30\x0d\x00\x01t\x07\x03\x00\x04json{}",
    ),
    ("3.1.1 §3.4 PUBACK", Puback(7), V311, b"\x40\x02\x00\x07"),
    ("§3.4.2.1 PUBACK 5 success: reason left out", Puback(7), V5, b"\x40\x02\x00\x07"),
    ("§3.4.2.1 PUBACK 5 not authorized", Puback(7, 0x87), V5, b"\x40\x03\x00\x07\x87"),
    (
        "§3.4.2.2.2 PUBACK 5 with a reason string",
        Puback(7, 0x87, ((Property.REASON_STRING, "acl"),)),
        V5,
        b"\x40\x0a\x00\x07\x87\x06\x1f\x00\x03acl",
    ),
    ("§3.12 PINGREQ", PingReq(), V5, b"\xc0\x00"),
    ("§3.13 PINGRESP", PingResp(), V311, b"\xd0\x00"),
    ("3.1.1 §3.14 DISCONNECT", Disconnect(), V311, b"\xe0\x00"),
    ("§3.14.2.1 DISCONNECT 5 normal: reason left out", Disconnect(), V5, b"\xe0\x00"),
    ("§3.14.2.1 DISCONNECT 5 with will", Disconnect(reason_code=0x04), V5, b"\xe0\x01\x04"),
    (
        "§3.14.2.2.3 DISCONNECT 5 session taken over, reason string",
        Disconnect(reason_code=0x8E, properties=((Property.REASON_STRING, "x"),)),
        V5,
        b"\xe0\x06\x8e\x04\x1f\x00\x01x",
    ),
]


@pytest.mark.parametrize(("packet", "version", "wire"), [case[1:] for case in ENCODED], ids=[c[0] for c in ENCODED])
def test_encode_gives_the_specified_bytes(packet: Packet, version: ProtocolVersion, wire: bytes) -> None:
    assert encode(packet, version) == wire


@pytest.mark.parametrize(("packet", "version", "wire"), [case[1:] for case in ENCODED], ids=[c[0] for c in ENCODED])
def test_decode_gives_the_packet_back(packet: Packet, version: ProtocolVersion, wire: bytes) -> None:
    assert decode_one(wire, version) == packet


def test_every_property_type_round_trips() -> None:
    properties = (
        (Property.PAYLOAD_FORMAT_INDICATOR, 1),
        (Property.MESSAGE_EXPIRY_INTERVAL, 0xFFFFFFFF),
        (Property.CORRELATION_DATA, b"\x00\x01"),
        (Property.SUBSCRIPTION_IDENTIFIER, 300),
        (Property.RECEIVE_MAXIMUM, 65535),
        (Property.USER_PROPERTY, ("schema", "tag-v1")),
        (Property.USER_PROPERTY, ("schema", "again")),  # may repeat, order kept
    )
    packet = Publish(topic="t", payload=b"", qos=1, packet_id=1, properties=properties)
    assert decode_one(encode(packet, V5), V5) == packet


def test_connack_accessors_read_the_mqtt5_properties() -> None:
    connack = Connack(
        properties=(
            (Property.RECEIVE_MAXIMUM, 20),
            (Property.TOPIC_ALIAS_MAXIMUM, 10),
            (Property.MAXIMUM_PACKET_SIZE, 1024),
            (Property.SERVER_KEEP_ALIVE, 15),
            (Property.ASSIGNED_CLIENT_IDENTIFIER, "auto-1"),
            (Property.REASON_STRING, "ok"),
        )
    )
    assert (connack.receive_maximum, connack.topic_alias_maximum, connack.maximum_packet_size) == (20, 10, 1024)
    assert (connack.server_keep_alive, connack.assigned_client_identifier, connack.reason_string) == (
        15,
        "auto-1",
        "ok",
    )
    bare = Connack()
    assert (bare.receive_maximum, bare.topic_alias_maximum, bare.maximum_packet_size) == (65535, 0, None)
    assert bare.server_keep_alive is None and bare.accepted and not Connack(reason_code=0x87).accepted


def test_publish_fast_paths_build_the_same_bytes_as_the_general_encoder() -> None:
    for version in (V311, V5):
        encoder = PublishEncoder(version)
        for size in (0, 100, 200, 20_000):  # one, two and three length bytes
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            for retain in (False, True):
                qos1 = Publish(topic="acme/é", payload=payload, qos=1, retain=retain, packet_id=513)
                qos0 = Publish(topic="acme/é", payload=payload, retain=retain)
                field = topic_field("acme/é".encode())
                assert encoder.qos1(field, payload, 513, retain) == encode(qos1, version)
                assert encoder.qos0(field, payload, retain) == encode(qos0, version)
                assert publish_packet(
                    "acme/é".encode(), payload, qos=1, packet_id=513, retain=retain, v5=version == V5
                ) == (encode(qos1, version))


def test_set_dup_marks_a_resend_and_nothing_else() -> None:
    packet = Publish(topic="a", payload=b"x", qos=1, retain=True, packet_id=9)
    resent = decode_one(set_dup(encode(packet, V5)), V5)
    assert resent == Publish(topic="a", payload=b"x", qos=1, retain=True, dup=True, packet_id=9)


# ----------------------------------------------------------------------------- incremental decoder


def stream() -> tuple[bytes, list[Packet]]:
    """What a broker sends a publisher: CONNACK, PUBACKs (fast and slow forms), PINGRESP, DISCONNECT."""
    packets: list[Packet] = [
        Connack(properties=((Property.RECEIVE_MAXIMUM, 20),)),
        *(Puback(n) for n in range(1, 40)),
        Puback(40, 0x87, ((Property.REASON_STRING, "denied"),)),
        Puback(300, 0x10),
        PingResp(),
        Disconnect(reason_code=0x8B),
    ]
    return b"".join(encode(p, V5) for p in packets), packets


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 10_000])
def test_fragmented_input_gives_every_packet_once_in_order(chunk: int) -> None:
    data, expected = stream()
    decoder = Decoder(V5)
    got: list[Packet] = []
    for start in range(0, len(data), chunk):
        got += decoder.feed(data[start : start + chunk])
    assert got == expected
    assert decoder.buffered == 0


def test_a_split_packet_waits_for_its_rest() -> None:
    decoder = Decoder(V311)
    assert decoder.feed(b"\x40\x02\x00\x01\x40") == [Puback(1)]
    assert decoder.buffered == 1
    assert decoder.feed(b"\x02\x00") == []
    assert decoder.feed(b"\x02\xd0\x00") == [Puback(2), PingResp()]
    assert decoder.feed(b"") == []


def test_a_large_publish_split_inside_its_remaining_length() -> None:
    packet = Publish(topic="t", payload=b"z" * 20_000, qos=1, packet_id=5)
    data = encode(packet, V5)
    decoder = Decoder(V5)
    assert decoder.feed(data[:2]) == []  # first byte and half of a 3-byte length
    assert decoder.feed(data[2:]) == [packet]


def test_a_server_side_decoder_follows_the_version_of_connect() -> None:
    connect = Connect(version=V5, client_id="gw", keepalive_s=30, will=WILL, username="u", password=b"pw")
    publish = Publish(topic="a", payload=b"1", qos=1, packet_id=1)
    decoder = Decoder(V311)  # a broker does not know the version before CONNECT
    assert decoder.feed(encode_connect(connect) + encode(publish, V5) + PINGREQ_BYTES) == [connect, publish, PingReq()]
    assert decoder.version == V5


MALFORMED: list[tuple[str, ProtocolVersion, bytes]] = [
    ("§2.1.2 reserved packet type 0", V5, b"\x00\x00"),
    ("[MQTT-2.1.3-1] PUBACK with flags", V5, b"\x41\x02\x00\x01"),
    ("§2.2.1 PUBACK with packet id 0", V5, b"\x40\x02\x00\x00"),
    ("§2.2.1 PUBACK with packet id 0, slow path", V5, b"\x40\x03\x00\x00\x00"),
    ("§3.4 PUBACK too short", V311, b"\x40\x01\x00"),
    ("3.1.1 §3.4 PUBACK with extra bytes", V311, b"\x40\x03\x00\x01\x00"),
    ("§3.13 PINGRESP with a body", V5, b"\xd0\x01\x00"),
    ("§1.5.5 remaining length of five bytes", V5, b"\x30\xff\xff\xff\xff\x01"),
    ("§3.3.1.2 QoS 2 PUBLISH (not handled here)", V5, b"\x34\x06\x00\x01t\x00\x01\x00"),
    ("[MQTT-3.3.1-2] QoS 0 PUBLISH with DUP", V311, b"\x38\x03\x00\x01t"),
    ("[MQTT-1.5.4-1] topic of invalid UTF-8", V311, b"\x30\x04\x00\x02\xc3\x28"),
    ("[MQTT-1.5.4-2] topic with U+0000", V311, b"\x30\x03\x00\x01\x00"),
    ("§2.2.2.2 unknown property", V5, b"\x20\x05\x00\x00\x02\x7f\x00"),
    ("§2.2.2.1 property runs past the packet", V5, b"\x20\x04\x00\x00\x05\x21"),
    ("[MQTT-3.2.2-1] CONNACK with reserved flags", V311, b"\x20\x02\x02\x00"),
    ("§3.9 SUBACK is not for a publisher", V5, b"\x90\x03\x00\x01\x00"),
    ("[MQTT-3.1.2-1] CONNECT of another protocol", V5, b"\x10\x0c\x00\x04MQTZ\x04\x02\x00\x1e\x00\x00"),
]


@pytest.mark.parametrize(("version", "data"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_input_is_an_error(version: ProtocolVersion, data: bytes) -> None:
    with pytest.raises(MalformedPacketError):
        Decoder(version).feed(data)


def test_a_packet_announced_larger_than_the_limit_fails_before_it_is_buffered() -> None:
    decoder = Decoder(V5, max_packet_size=1024)
    with pytest.raises(MalformedPacketError, match="larger than the limit"):
        decoder.feed(b"\x30" + encode_varint(5000))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: encode(Publish(topic="t", payload=b"", qos=1), V5), "packet id"),
        (lambda: encode(Puback(0), V5), "packet id"),
        (lambda: encode(Publish(topic="t", payload=b"", properties=((Property.CONTENT_TYPE, "x"),)), V311), "3.1.1"),
        (lambda: encode_connect(Connect(version=V311, client_id="c", keepalive_s=70_000)), "keep alive"),
        (lambda: encode_connect(Connect(version=V311, client_id="c", keepalive_s=1, password=b"p")), "password"),
        (lambda: encode_properties(((Property.RECEIVE_MAXIMUM, 70_000),)), "out of range"),
        (lambda: encode_properties(((Property.CONTENT_TYPE, 1),)), "string"),
        (lambda: topic_field(b"x" * 65_536), "two-byte length"),
    ],
)
def test_what_cannot_be_encoded_is_an_error(make: object, match: str) -> None:
    assert callable(make)
    with pytest.raises(MalformedPacketError, match=match):
        make()


# ------------------------------------------------------------------------------------ reasons


def test_reason_texts_for_logs_and_errors() -> None:
    assert reason_text(0x87, V5) == "Not authorized (0x87)"
    assert reason_text(0x86, V5, connack=True) == "Bad User Name or Password (0x86)"
    assert reason_text(5, V311, connack=True) == "not authorized (5)"
    assert reason_text(4, V311, connack=True) == "bad user name or password (4)"
    assert reason_text(0x42, V5) == "unknown reason code (0x42)"
    assert [is_failure(code) for code in (0x00, 0x10, 0x7F, 0x80, 0x97)] == [False, False, False, True, True]
    assert encode(PingReq(), V311) == PINGREQ_BYTES and encode(PingResp(), V5) == PINGRESP_BYTES
    assert Puback(1).properties == NO_PROPERTIES


# ------------------------------------------------------------------------ CONNACK conformance

RM = Property.RECEIVE_MAXIMUM
CONNACK_CASES: list[tuple[str, Connack, ProtocolVersion, str | None, bool]] = [
    # (case, CONNACK, version of our CONNECT, problem text or None, protocol error)
    ("§3.2.2.2 accepted, no properties", Connack(), V5, None, False),
    ("§3.2.2.3.3 Receive Maximum 1 is fine", Connack(properties=((RM, 1),)), V5, None, False),
    ("3.1.1 §3.2.2.3 accepted", Connack(), V311, None, False),
    (
        "§3.2.2.3.3 Receive Maximum 0 is a Protocol Error",
        Connack(properties=((RM, 0),)),
        V5,
        "protocol error: CONNACK with Receive Maximum 0",
        True,
    ),
    (
        "§3.2.2.3.3 Receive Maximum more than once is a Protocol Error",
        Connack(properties=((RM, 5), (RM, 5))),
        V5,
        "protocol error: CONNACK carries RECEIVE_MAXIMUM more than once",
        True,
    ),
    (
        "§3.2.2.3.6 Maximum Packet Size 0 is a Protocol Error",
        Connack(properties=((Property.MAXIMUM_PACKET_SIZE, 0),)),
        V5,
        "protocol error: CONNACK with Maximum Packet Size 0",
        True,
    ),
    (
        "§3.2.2.3.10 User Property may repeat",
        Connack(properties=((Property.USER_PROPERTY, ("a", "1")), (Property.USER_PROPERTY, ("a", "2")))),
        V5,
        None,
        False,
    ),
    (
        "[MQTT-3.2.2-2] [MQTT-3.2.2-4] Session Present 1 after Clean Start 1: close",
        Connack(session_present=True),
        V5,
        "protocol error: CONNACK with Session Present 1 in reply to Clean Start 1",
        True,
    ),
    (
        "3.1.1 [MQTT-3.2.2-1] Session Present 1 after Clean Session 1: close",
        Connack(session_present=True),
        V311,
        "protocol error: CONNACK with Session Present 1 in reply to Clean Start 1",
        True,
    ),
    (
        "3.1.1 §3.1.2.2 CONNACK of 3.1.1 (return code 1) to an MQTT 5 CONNECT",
        Connack(reason_code=1, short_form=True),
        V5,
        "protocol version not supported: try protocol: 3.1.1 (the broker answered the MQTT 5 CONNECT with an "
        "MQTT 3.1.1 CONNACK: unacceptable protocol version (1))",
        False,
    ),
    (
        "§3.2.2.2 0x84 Unsupported Protocol Version",
        Connack(reason_code=0x84),
        V5,
        "protocol version not supported: try protocol: 3.1.1 (CONNACK refused: Unsupported Protocol Version (0x84))",
        False,
    ),
    (
        "§3.2.2.3.9 refused with a Reason String",
        Connack(reason_code=0x87, properties=((Property.REASON_STRING, "not on the list"),)),
        V5,
        "CONNACK refused: Not authorized (0x87) (not on the list)",
        False,
    ),
    (
        "3.1.1 §3.2.2.3 refused: not authorized",
        Connack(reason_code=5),
        V311,
        "CONNACK refused: not authorized (5)",
        False,
    ),
]


@pytest.mark.parametrize(
    ("connack", "version", "text", "protocol_error"),
    [case[1:] for case in CONNACK_CASES],
    ids=[case[0] for case in CONNACK_CASES],
)
def test_connack_problems(connack: Connack, version: ProtocolVersion, text: str | None, protocol_error: bool) -> None:
    problem = connack_problem(connack, version, clean_start=True)
    if text is None:
        assert problem is None
    else:
        assert problem is not None
        assert (problem.text, problem.protocol_error) == (text, protocol_error)


def test_session_present_is_fine_after_clean_start_0() -> None:
    """[MQTT-3.2.2-3]: with Clean Start 0 the server may resume a session."""
    assert connack_problem(Connack(session_present=True), V5, clean_start=False) is None


def test_a_reason_string_in_a_problem_is_bounded() -> None:
    connack = Connack(reason_code=0x87, properties=((Property.REASON_STRING, "x" * 60_000),))
    problem = connack_problem(connack, V5, clean_start=True)
    assert problem is not None and len(problem.text) < 300 and problem.text.endswith("(59800 more characters))")
    assert shorten("short") == "short"


@pytest.mark.parametrize(
    ("code", "token"),
    [  # §3.4.2.1 PUBACK reason codes >= 0x80, and 0x95 for a message the client will not send
        (0x80, "unspecified_error"),
        (0x83, "implementation_specific_error"),
        (0x87, "not_authorized"),
        (0x90, "topic_name_invalid"),
        (0x91, "packet_identifier_in_use"),
        (0x95, "packet_too_large"),
        (0x97, "quota_exceeded"),
        (0x99, "payload_format_invalid"),
        (0x9A, "reason_0x9a"),
    ],
)
def test_refusal_reasons_are_stable_tokens(code: int, token: str) -> None:
    assert refusal_reason(code) == token
