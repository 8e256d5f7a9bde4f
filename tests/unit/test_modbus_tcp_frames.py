"""The pure part of our Modbus TCP client: request frames, cutting frames off a stream, checking answers.

Expected bytes are written out by hand from the spec (MBAP header + PDU, big-endian), and cross-checked against
pymodbus's own framer, an independent implementation.
"""

from __future__ import annotations

import struct

import pytest
from pymodbus.framer import FramerSocket
from pymodbus.pdu import DecodePDU, ModbusPDU
from pymodbus.pdu.bit_message import ReadCoilsRequest, ReadCoilsResponse, ReadDiscreteInputsRequest
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadHoldingRegistersResponse,
    ReadInputRegistersRequest,
)

from gateway.sources.modbus_tcp import (
    ExceptionResponse,
    FrameSplit,
    MalformedResponse,
    ReadAnswer,
    ReadFunction,
    ResponseFrame,
    build_read_request,
    expected_byte_count,
    parse_read_response,
    split_frames,
    validate_response,
)

HOLDING, INPUT = ReadFunction.READ_HOLDING_REGISTERS, ReadFunction.READ_INPUT_REGISTERS
COILS, DISCRETE = ReadFunction.READ_COILS, ReadFunction.READ_DISCRETE_INPUTS


def frame(transaction_id: int, unit_id: int, pdu: bytes, *, protocol_id: int = 0, length: int | None = None) -> bytes:
    """A response frame as a server sends it (length = unit id + PDU unless given)."""
    return struct.pack(">HHHB", transaction_id, protocol_id, len(pdu) + 1 if length is None else length, unit_id) + pdu


# ------------------------------------------------------------------------------------------------ requests


@pytest.mark.parametrize(
    ("transaction_id", "unit_id", "function", "start", "count", "expected"),
    [
        (1, 1, HOLDING, 1000, 2, "00 01 00 00 00 06 01 03 03 e8 00 02"),
        (0, 0, INPUT, 0, 125, "00 00 00 00 00 06 00 04 00 00 00 7d"),
        (0xFFFF, 255, COILS, 3, 10, "ff ff 00 00 00 06 ff 01 00 03 00 0a"),
        (0x1234, 17, DISCRETE, 65535, 1, "12 34 00 00 00 06 11 02 ff ff 00 01"),
        (7, 247, COILS, 0, 2000, "00 07 00 00 00 06 f7 01 00 00 07 d0"),
        (8, 1, HOLDING, 65411, 125, "00 08 00 00 00 06 01 03 ff 83 00 7d"),  # the last 125 registers
    ],
)
def test_build_read_request(
    transaction_id: int, unit_id: int, function: ReadFunction, start: int, count: int, expected: str
) -> None:
    built = build_read_request(
        transaction_id=transaction_id, unit_id=unit_id, function=function, start=start, count=count
    )
    assert built.hex(" ") == expected


PYMODBUS_REQUESTS: dict[ReadFunction, type[ModbusPDU]] = {
    HOLDING: ReadHoldingRegistersRequest,
    INPUT: ReadInputRegistersRequest,
    COILS: ReadCoilsRequest,
    DISCRETE: ReadDiscreteInputsRequest,
}


@pytest.mark.parametrize("function", list(ReadFunction))
def test_request_frames_match_pymodbus(function: ReadFunction) -> None:
    pdu = PYMODBUS_REQUESTS[function](address=321, count=12, dev_id=9, transaction_id=4242)
    theirs = FramerSocket(DecodePDU(False)).buildFrame(pdu)
    ours = build_read_request(transaction_id=4242, unit_id=9, function=function, start=321, count=12)
    assert ours == theirs


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"transaction_id": -1}, "transaction id -1 outside 0..65535"),
        ({"transaction_id": 65536}, "transaction id 65536 outside"),
        ({"unit_id": 256}, "unit id 256 outside 0..255"),
        ({"count": 0}, "count 0 outside 1..125"),
        ({"count": 126}, "count 126 outside 1..125"),
        ({"function": COILS, "count": 2001}, "count 2001 outside 1..2000"),
        ({"start": -1}, "addresses -1..-1 outside"),
        ({"start": 65500, "count": 100}, "addresses 65500..65599 outside 0..65535"),
        ({"function": 5}, "5 is not a valid ReadFunction"),  # a write: not this client's business
    ],
)
def test_build_read_request_refuses_what_the_protocol_cannot_carry(fields: dict[str, int], complaint: str) -> None:
    arguments = {"transaction_id": 1, "unit_id": 1, "function": HOLDING, "start": 0, "count": 1, **fields}
    with pytest.raises(ValueError, match=complaint):
        build_read_request(**arguments)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------- framing

ANSWER = frame(1, 1, bytes.fromhex("03 04 00 01 be ef"))  # 13 bytes
EXCEPTION = frame(2, 1, bytes.fromhex("83 02"))  # 9 bytes


@pytest.mark.parametrize(
    ("buffer", "expected"),
    [
        (b"", FrameSplit(frames=(), consumed=0)),
        (ANSWER[:6], FrameSplit(frames=(), consumed=0)),  # header incomplete
        (ANSWER[:-1], FrameSplit(frames=(), consumed=0)),  # PDU incomplete
        (
            ANSWER,
            FrameSplit(
                frames=(ResponseFrame(transaction_id=1, unit_id=1, pdu=bytes.fromhex("03 04 00 01 be ef")),),
                consumed=13,
            ),
        ),
        (
            ANSWER + EXCEPTION + EXCEPTION[:3],
            FrameSplit(
                frames=(
                    ResponseFrame(transaction_id=1, unit_id=1, pdu=bytes.fromhex("03 04 00 01 be ef")),
                    ResponseFrame(transaction_id=2, unit_id=1, pdu=bytes.fromhex("83 02")),
                ),
                consumed=22,
            ),
        ),
        (
            frame(3, 1, b"\x03\x00", protocol_id=1),
            FrameSplit(frames=(), consumed=0, problem="protocol id 1, not 0"),
        ),
        (
            ANSWER + frame(3, 1, b"\x03", length=1),
            FrameSplit(
                frames=(ResponseFrame(transaction_id=1, unit_id=1, pdu=bytes.fromhex("03 04 00 01 be ef")),),
                consumed=13,
                problem="length field 1 outside 2..254",
            ),
        ),
        (frame(3, 1, b"", length=0), FrameSplit(frames=(), consumed=0, problem="length field 0 outside 2..254")),
        (frame(3, 1, b"", length=255), FrameSplit(frames=(), consumed=0, problem="length field 255 outside 2..254")),
        # Not Modbus at all: "HT" is read as the transaction id, "TP" (0x5450) as the protocol id.
        (b"HTTP/1.1 400 Bad Request\r\n", FrameSplit(frames=(), consumed=0, problem="protocol id 21584, not 0")),
    ],
)
def test_split_frames(buffer: bytes, expected: FrameSplit) -> None:
    assert split_frames(buffer) == expected


def test_split_frames_takes_the_largest_frame_the_protocol_allows() -> None:
    pdu = bytes([3, 250]) + bytes(range(250)) + b"\x00"  # 253 bytes: length field 254
    split = split_frames(frame(9, 1, pdu))
    assert split.problem is None and split.consumed == 6 + 254
    assert split.frames == (ResponseFrame(transaction_id=9, unit_id=1, pdu=pdu),)


def test_split_frames_of_pymodbus_responses() -> None:
    """Frames as pymodbus's server side builds them, two in one buffer."""
    framer = FramerSocket(DecodePDU(True))
    registers = ReadHoldingRegistersResponse(registers=[1, 0xBEEF], dev_id=7, transaction_id=5)
    coils = ReadCoilsResponse(bits=[True, False, True] + [False] * 5, dev_id=7, transaction_id=6)
    split = split_frames(framer.buildFrame(registers) + framer.buildFrame(coils))
    assert split.problem is None
    assert [(f.transaction_id, f.unit_id, f.pdu.hex(" ")) for f in split.frames] == [
        (5, 7, "03 04 00 01 be ef"),
        (6, 7, "01 01 05"),
    ]


# ------------------------------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("function", "count", "expected"),
    [(HOLDING, 1, 2), (INPUT, 125, 250), (COILS, 1, 1), (COILS, 8, 1), (DISCRETE, 9, 2), (COILS, 2000, 250)],
)
def test_expected_byte_count(function: ReadFunction, count: int, expected: int) -> None:
    assert expected_byte_count(function, count) == expected


@pytest.mark.parametrize(
    ("pdu", "function", "count", "expected"),
    [
        # Registers: the bytes as on the wire, untouched.
        ("03 04 00 01 be ef", HOLDING, 2, bytes.fromhex("00 01 be ef")),
        ("04 02 ff fe", INPUT, 1, b"\xff\xfe"),
        # Bits: LSB of the first byte first; the padding of the last byte is cut off.
        ("01 02 0d 01", COILS, 10, [True, False, True, True, False, False, False, False, True, False]),
        ("02 01 ff", DISCRETE, 3, [True, True, True]),
        ("01 01 80", COILS, 8, [False] * 7 + [True]),
        # Exception responses: function | 0x80 and one code byte.
        ("83 02", HOLDING, 2, ExceptionResponse(function=3, code=2)),
        ("81 04", COILS, 1, ExceptionResponse(function=1, code=4)),
        ("84 0b", INPUT, 5, ExceptionResponse(function=4, code=11)),
        # Malformed: each fails only its request.
        ("", HOLDING, 1, MalformedResponse(reason="empty PDU")),
        ("83", HOLDING, 1, MalformedResponse(reason="exception response of 1 bytes, not 2")),
        ("83 02 00", HOLDING, 1, MalformedResponse(reason="exception response of 3 bytes, not 2")),
        ("04 02 00 01", HOLDING, 1, MalformedResponse(reason="function code 4 in the answer to function 3")),
        ("84 02", HOLDING, 1, MalformedResponse(reason="function code 132 in the answer to function 3")),
        ("03", HOLDING, 1, MalformedResponse(reason="answer without a byte count")),
        ("03 02 00 01", HOLDING, 2, MalformedResponse(reason="byte count 2, expected 4 for 2")),
        ("03 04 00 01 00", HOLDING, 2, MalformedResponse(reason="3 data bytes, the byte count says 4")),
        ("03 04 00 01 00 02 03", HOLDING, 2, MalformedResponse(reason="5 data bytes, the byte count says 4")),
        ("01 01 ff", COILS, 9, MalformedResponse(reason="byte count 1, expected 2 for 9")),
    ],
)
def test_parse_read_response(
    pdu: str, function: ReadFunction, count: int, expected: ReadAnswer | MalformedResponse
) -> None:
    assert parse_read_response(bytes.fromhex(pdu), function=function, count=count) == expected


def test_a_register_answer_is_bytes_and_a_bit_answer_is_bools() -> None:
    registers = parse_read_response(bytes.fromhex("03 02 12 34"), function=HOLDING, count=1)
    assert type(registers) is bytes
    bits = parse_read_response(bytes.fromhex("01 01 01"), function=COILS, count=1)
    assert isinstance(bits, list) and all(type(bit) is bool for bit in bits)


@pytest.mark.parametrize(
    ("answer_unit", "request_unit", "expected"),
    [
        (5, 5, b"\x00\x2a"),
        (6, 5, MalformedResponse(reason="answer from unit 6 to a request for unit 5")),
        (255, 0, b"\x00\x2a"),  # unit 0 (broadcast, or "whatever the gateway is") is not checked
    ],
)
def test_validate_response_checks_the_unit_id(
    answer_unit: int, request_unit: int, expected: ReadAnswer | MalformedResponse
) -> None:
    answer = ResponseFrame(transaction_id=1, unit_id=answer_unit, pdu=bytes.fromhex("03 02 00 2a"))
    assert validate_response(answer, unit_id=request_unit, function=HOLDING, count=1) == expected
