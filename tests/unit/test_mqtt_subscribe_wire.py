"""SUBSCRIBE / SUBACK in the MQTT codec: byte layouts from the specifications (3.1.1 §3.8-3.9, 5.0 §3.8-3.9)."""

from __future__ import annotations

import pytest

from gateway.mqtt.wire import (
    Decoder,
    MalformedPacketError,
    Property,
    ProtocolVersion,
    Suback,
    Subscribe,
    decode_one,
    encode,
)

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5


@pytest.mark.parametrize(
    ("packet", "version", "wire"),
    [
        # 3.1.1 §3.8.1: 0x82 (flags 0010), §3.8.2 packet id, §3.8.3 filter + requested QoS byte.
        (Subscribe(packet_id=10, filters=(("a/b", 1),)), V311, b"\x82\x08\x00\x0a\x00\x03a/b\x01"),
        (
            Subscribe(packet_id=1, filters=(("x", 0), ("y/#", 1))),
            V311,
            b"\x82\x0c\x00\x01\x00\x01x\x00\x00\x03y/#\x01",
        ),
        # 5.0 §3.8.2.1: a property length (0) after the packet id; options byte: QoS, other bits 0.
        (Subscribe(packet_id=10, filters=(("a/b", 1),)), V5, b"\x82\x09\x00\x0a\x00\x00\x03a/b\x01"),
        # §3.9: 0x90, packet id, return codes (3.1.1: 0x00-0x02 granted, 0x80 failure).
        (Suback(packet_id=10, reason_codes=(1,)), V311, b"\x90\x03\x00\x0a\x01"),
        (Suback(packet_id=7, reason_codes=(0, 0x80)), V311, b"\x90\x04\x00\x07\x00\x80"),
        # 5.0 §3.9.2.1: property length, then reason codes (0x87 Not authorized).
        (Suback(packet_id=7, reason_codes=(0x87,)), V5, b"\x90\x04\x00\x07\x00\x87"),
        (
            Suback(packet_id=7, reason_codes=(0x01,), properties=((Property.REASON_STRING, "ok"),)),
            V5,
            b"\x90\x09\x00\x07\x05\x1f\x00\x02ok\x01",
        ),
    ],
)
def test_layout_and_round_trip(packet: Subscribe | Suback, version: ProtocolVersion, wire: bytes) -> None:
    assert encode(packet, version) == wire
    assert decode_one(wire, version) == packet


def test_a_suback_split_across_reads_comes_out_whole() -> None:
    decoder = Decoder(V311)
    wire = b"\x90\x04\x00\x07\x00\x80"
    assert decoder.feed(wire[:3]) == []
    assert decoder.feed(wire[3:]) == [Suback(packet_id=7, reason_codes=(0, 0x80))]


@pytest.mark.parametrize(
    ("wire", "version", "problem"),
    [
        (b"\x80\x08\x00\x0a\x00\x03a/b\x01", V311, "reserved flags"),  # §3.8.1: flags must be 0010
        (b"\x82\x02\x00\x0a", V311, "without a topic filter"),  # §3.8.3-3: at least one filter
        (b"\x82\x08\x00\x0a\x00\x03a/b\x05", V311, "options"),  # 3.1.1 §3.8.3.1: reserved bits are 0
        (b"\x82\x09\x00\x0a\x00\x00\x03a/b\xc1", V5, "options"),  # 5.0 §3.8.3.1: bits 6-7 reserved
        (b"\x82\x08\x00\x00\x00\x03a/b\x01", V311, "packet id 0"),  # §2.2.1: non-zero packet id
        (b"\x90\x02\x00\x07", V311, "without a return code"),  # §3.9.3: one per filter
        (b"\x92\x03\x00\x07\x00", V311, "reserved flags"),  # §3.9.1: flags 0000
        (b"\x90\x03\x00\x00\x00", V311, "packet id 0"),
    ],
)
def test_malformed(wire: bytes, version: ProtocolVersion, problem: str) -> None:
    with pytest.raises(MalformedPacketError, match=problem):
        decode_one(wire, version)


@pytest.mark.parametrize(
    ("packet", "problem"),
    [
        (Subscribe(packet_id=1, filters=()), "without a topic filter"),
        (Subscribe(packet_id=0, filters=(("a", 0),)), "packet id"),
        (Subscribe(packet_id=1, filters=(("", 0),)), "empty topic filter"),  # §4.7.3: at least one character
    ],
)
def test_refuses_to_encode_an_invalid_subscribe(packet: Subscribe, problem: str) -> None:
    with pytest.raises(MalformedPacketError, match=problem):
        encode(packet, V311)
