"""Modbus write requests and answers (functions 5, 6, 16) and the ack register encoder, as tables.

Frames are checked byte for byte against the examples of the Modbus Application Protocol Specification v1.1b3
(6.5 Write Single Coil, 6.6 Write Single Register, 6.12 Write Multiple Registers), wrapped in an MBAP header.
``registers_for`` is checked against the test suite's own encoder (``tests.support.modbus.encode_registers``)
and against the poll loop's decoder (round trip), for every byte order.
"""

from __future__ import annotations

import pytest

from gateway.events.core import registers_for
from gateway.sources.modbus_plan import compile_register_decoder
from gateway.sources.modbus_tcp import (
    ExceptionResponse,
    MalformedResponse,
    WriteConfirmed,
    WriteFunction,
    build_write_request,
    parse_write_response,
)
from gateway.vocabulary import ByteOrder, DataType
from tests.support.modbus import encode_registers

F = WriteFunction


@pytest.mark.parametrize(
    ("function", "address", "values", "pdu_hex"),
    [
        # 6.5: "write coil 173 ON" -> 05 00 AC FF 00
        (F.WRITE_SINGLE_COIL, 172, [1], "05 00 ac ff 00"),
        (F.WRITE_SINGLE_COIL, 172, [0], "05 00 ac 00 00"),
        # 6.6: "write register 2 to 00 03" -> 06 00 01 00 03
        (F.WRITE_SINGLE_REGISTER, 1, [3], "06 00 01 00 03"),
        # 6.12: "write two registers starting at 2 to 00 0A and 01 02" -> 10 00 01 00 02 04 00 0A 01 02
        (F.WRITE_MULTIPLE_REGISTERS, 1, [0x000A, 0x0102], "10 00 01 00 02 04 00 0a 01 02"),
    ],
)
def test_write_requests_match_the_specification_examples(
    function: WriteFunction, address: int, values: list[int], pdu_hex: str
) -> None:
    frame = build_write_request(transaction_id=0x1234, unit_id=9, function=function, address=address, values=values)
    pdu = bytes.fromhex(pdu_hex)
    assert frame[:7] == bytes([0x12, 0x34, 0, 0, 0, len(pdu) + 1, 9])  # MBAP: length counts unit id + PDU
    assert frame[7:] == pdu


@pytest.mark.parametrize(
    ("function", "address", "values"),
    [
        (F.WRITE_SINGLE_COIL, 0, [2]),  # a coil is 0 or 1
        (F.WRITE_SINGLE_REGISTER, 0, [0x10000]),  # a register holds 16 bits
        (F.WRITE_SINGLE_REGISTER, 0, [1, 2]),  # function 6 writes one register
        (F.WRITE_MULTIPLE_REGISTERS, 0, []),  # at least one
        (F.WRITE_MULTIPLE_REGISTERS, 0, [0] * 124),  # at most 123
        (F.WRITE_MULTIPLE_REGISTERS, 65535, [0, 0]),  # past the last address
    ],
)
def test_write_requests_the_protocol_cannot_carry_are_refused(
    function: WriteFunction, address: int, values: list[int]
) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        build_write_request(transaction_id=1, unit_id=1, function=function, address=address, values=values)


@pytest.mark.parametrize(
    ("function", "address", "values", "answer_hex", "expected"),
    [
        (F.WRITE_SINGLE_COIL, 172, [1], "05 00 ac ff 00", WriteConfirmed(function=5, address=172, count=1)),
        (F.WRITE_SINGLE_REGISTER, 1, [3], "06 00 01 00 03", WriteConfirmed(function=6, address=1, count=1)),
        # 6.12 response: function, starting address, quantity of registers
        (F.WRITE_MULTIPLE_REGISTERS, 1, [10, 258], "10 00 01 00 02", WriteConfirmed(function=16, address=1, count=2)),
        # 7: an exception answer is the function code | 0x80 and the code (2: illegal data address)
        (F.WRITE_MULTIPLE_REGISTERS, 1, [10, 258], "90 02", ExceptionResponse(function=16, code=2)),
        (F.WRITE_SINGLE_REGISTER, 1, [3], "86 04", ExceptionResponse(function=6, code=4)),
    ],
)
def test_write_answers(
    function: WriteFunction, address: int, values: list[int], answer_hex: str, expected: object
) -> None:
    answer = parse_write_response(bytes.fromhex(answer_hex), function=function, address=address, values=values)
    assert answer == expected


@pytest.mark.parametrize(
    ("function", "values", "answer_hex", "reason"),
    [
        (F.WRITE_SINGLE_REGISTER, [3], "06 00 01 00 04", "echoes"),  # another value written
        (F.WRITE_MULTIPLE_REGISTERS, [1, 2], "10 00 02 00 02", "echoes"),  # another address
        (F.WRITE_MULTIPLE_REGISTERS, [1, 2], "10 00 01 00 01", "echoes"),  # another count
        (F.WRITE_SINGLE_REGISTER, [3], "03 02 00 03", "function code 3"),
        (F.WRITE_SINGLE_REGISTER, [3], "06 00 01", "3 bytes"),
        (F.WRITE_SINGLE_REGISTER, [3], "", "empty"),
    ],
)
def test_write_answers_that_do_not_fit_the_request(
    function: WriteFunction, values: list[int], answer_hex: str, reason: str
) -> None:
    answer = parse_write_response(bytes.fromhex(answer_hex), function=function, address=1, values=values)
    assert isinstance(answer, MalformedResponse)
    assert reason in answer.reason


@pytest.mark.parametrize("order", list(ByteOrder))
@pytest.mark.parametrize(
    ("data_type", "value"),
    [
        (DataType.UINT16, 65535),
        (DataType.INT16, -2),
        (DataType.UINT32, 70000),
        (DataType.UINT32, 2**32 - 1),
        (DataType.INT32, -123456),
        (DataType.UINT64, 2**40 + 5),
        (DataType.INT64, -(2**50)),
    ],
)
def test_ack_registers_match_an_independent_encoder_and_decode_back(
    order: ByteOrder, data_type: DataType, value: int
) -> None:
    registers = registers_for(value, data_type, order)
    assert registers == encode_registers(value, data_type.value, order.value)
    block = b"".join(register.to_bytes(2, "big") for register in registers)
    decode = compile_register_decoder(data_type, byte_offset=0, order=order, bit=None, length=len(registers))
    assert decode(block) == value


def test_worked_example_of_the_docstring() -> None:
    assert registers_for(70000, DataType.UINT32, ByteOrder.ABCD) == [0x0001, 0x1170]
    assert registers_for(70000, DataType.UINT32, ByteOrder.CDAB) == [0x1170, 0x0001]
    assert registers_for(70000, DataType.UINT32, ByteOrder.BADC) == [0x0100, 0x7011]
    assert registers_for(70000, DataType.UINT32, ByteOrder.DCBA) == [0x7011, 0x0100]
