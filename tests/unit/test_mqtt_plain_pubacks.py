"""wire.plain_puback_ids: the fast path for a read of plain PUBACKs agrees with the full decoder, and steps
aside (None) for anything else, so the decoder still sees and reports it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.mqtt.wire import Decoder, ProtocolVersion, Puback, plain_puback_ids


def puback(packet_id: int) -> bytes:
    return bytes([0x40, 2, packet_id >> 8, packet_id & 0xFF])


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=300))
def test_the_ids_of_plain_pubacks_are_what_the_decoder_reads(ids: list[int]) -> None:
    data = b"".join(puback(packet_id) for packet_id in ids)
    assert plain_puback_ids(data) == ids
    for version in (ProtocolVersion.V5, ProtocolVersion.V311):
        assert Decoder(version).feed(data) == [Puback(packet_id) for packet_id in ids]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "nothing read"),
        (puback(1)[:3], "a PUBACK cut short"),
        (puback(1) + puback(2)[:2], "the next PUBACK cut short"),
        (puback(1) + bytes([0x40, 3, 0, 2, 0x87]), "an MQTT 5 PUBACK with a reason code (a refusal)"),
        (puback(1) + bytes([0xD0, 0, 0xD0, 0]), "two PINGRESPs: 4 bytes that are not a PUBACK"),
        (bytes([0x20, 2, 0, 0]), "a CONNACK of 4 bytes"),
        (puback(1) + puback(0), "packet id 0 (malformed: the decoder reports it)"),
    ],
)
def test_anything_but_whole_plain_pubacks_goes_to_the_decoder(data: bytes, why: str) -> None:
    assert plain_puback_ids(data) is None, why
