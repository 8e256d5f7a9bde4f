"""Our own Modbus TCP client: reads (functions 1, 2, 3, 4) with several requests in flight, and the few writes
an event handshake needs (5 write single coil, 6 write single register, 16 write multiple registers).

Why not pymodbus: its ``AsyncModbusTcpClient`` holds a lock around every transaction, so a poll cycle of 24
register reads waits for 24 round trips one after the other, however many transactions the PLC could answer at
once. Modbus TCP frames carry a transaction id precisely so that a client may pipeline (Modbus Messaging on TCP/IP
Implementation Guide v1.0b, 4.2: the id pairs a response with its request). Here each request gets a fresh id and
its own future, and the answer finds its request by that id, whatever the order the answers come in.

Frame layout (MBAP header + PDU, all big-endian)::

    transaction id (2) | protocol id = 0 (2) | length (2) = 1 + len(PDU) | unit id (1) | PDU (function, data)

Pure core, thin shell: ``build_read_request``, ``split_frames`` and ``validate_response`` take bytes and plain
values and return values (problems included); ``ModbusTcpClient`` (an ``asyncio.Protocol`` underneath) only moves
bytes and resolves futures:

* every request has its own deadline (``loop.call_at`` on our own future, no ``asyncio.wait_for``: on Python 3.11
  that can swallow the cancellation of its caller, CPython gh-86296); cancelling a caller cancels its request;
* an answer with an unknown transaction id (typically a late answer to a request that already timed out) is
  dropped and counted;
* a broken stream (protocol id not 0, a length field outside 2..254) cannot be resynchronised: the connection is
  closed and every pending request fails with ``ModbusConnectionError``;
* a well-framed answer that does not fit its request (function code, unit id, byte count) fails that request only
  (``ModbusResponseError``); an exception response is an ``ExceptionResponse`` result, not an error.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType
from typing import Final, Self, TypeAlias, cast

from gateway.errors import SourceError
from gateway.tagmap.limits import MAX_ADDRESS, MAX_BITS_PER_READ, MAX_REGISTERS_PER_READ

MBAP_HEADER_SIZE: Final = 7
"""Transaction id (2), protocol id (2), length (2), unit id (1)."""
MODBUS_PROTOCOL_ID: Final = 0
MIN_LENGTH_FIELD: Final = 2
"""The length field counts the unit id and the PDU: at least the unit id and a function code."""
MAX_LENGTH_FIELD: Final = 254
"""A Modbus TCP ADU is at most 260 bytes: 6 header bytes before the unit id, so the length field is <= 254."""
MAX_TRANSACTION_ID: Final = 0xFFFF
MAX_UNIT_ID_BYTE: Final = 0xFF
EXCEPTION_FLAG: Final = 0x80
"""A server answers an exception with the request's function code | 0x80, then one exception code byte."""

_MBAP: Final = struct.Struct(">HHHB")
_READ_REQUEST: Final = struct.Struct(">HHHBBHH")
# The length field of a read request: unit id + function code + start (2) + count (2).
_READ_REQUEST_LENGTH: Final = 6


class ReadFunction(IntEnum):
    """The Modbus read function codes this client speaks."""

    READ_COILS = 1
    READ_DISCRETE_INPUTS = 2
    READ_HOLDING_REGISTERS = 3
    READ_INPUT_REGISTERS = 4

    @property
    def reads_bits(self) -> bool:
        return self in (ReadFunction.READ_COILS, ReadFunction.READ_DISCRETE_INPUTS)

    @property
    def max_count(self) -> int:
        return MAX_BITS_PER_READ if self.reads_bits else MAX_REGISTERS_PER_READ


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionResponse:
    """The server refused the request: ``code`` is the Modbus exception code (2 = illegal data address, ...)."""

    function: int
    code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MalformedResponse:
    """A well-framed answer that does not fit its request; ``reason`` says how."""

    reason: str


# Register reads answer the raw register bytes exactly as on the wire (big-endian, 2 per register); bit reads the
# requested bits, LSB of the first byte first.
ReadAnswer: TypeAlias = bytes | list[bool] | ExceptionResponse


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFrame:
    """One Modbus TCP frame cut from the stream: its transaction id, unit id and PDU (function code first)."""

    transaction_id: int
    unit_id: int
    pdu: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameSplit:
    """What ``split_frames`` found: the complete frames, how many bytes they used, and why the stream is broken
    (None while it is fine). Bytes after ``consumed`` are an incomplete frame (or, with a problem, garbage)."""

    frames: tuple[ResponseFrame, ...]
    consumed: int
    problem: str | None = None


class ModbusTcpError(SourceError):
    """Base of this client's errors."""


class ModbusConnectionError(ModbusTcpError):
    """Not connected, the connection was lost, or the stream broke: the connection's problem, not one request's."""


class ModbusTimeoutError(ModbusTcpError):
    """No answer within the request's deadline, on a connection that is (as far as we know) up."""


class ModbusResponseError(ModbusTcpError):
    """The answer does not fit the request (function code, unit id or byte count): only this request failed."""


class WriteFunction(IntEnum):
    """The Modbus write function codes this client speaks (Modbus Application Protocol v1.1b3, 6.5, 6.6, 6.12)."""

    WRITE_SINGLE_COIL = 5
    WRITE_SINGLE_REGISTER = 6
    WRITE_MULTIPLE_REGISTERS = 16


MAX_REGISTERS_PER_WRITE: Final = 123
"""Function 16 writes 1..123 registers (0x7B: the request must fit the 253-byte PDU)."""
COIL_ON: Final = 0xFF00
"""Function 5 writes ON as 0xFF00 and OFF as 0x0000; any other value is illegal (exception 3)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteConfirmed:
    """The server echoed the write: ``count`` registers (or the coil) from ``address`` were written."""

    function: int
    address: int
    count: int


WriteAnswer: TypeAlias = WriteConfirmed | ExceptionResponse


# --------------------------------------------------------------------------------------------- pure core


def build_read_request(*, transaction_id: int, unit_id: int, function: ReadFunction, start: int, count: int) -> bytes:
    """The 12 bytes of one read request. Raises ValueError for values the protocol cannot carry.

    >>> build_read_request(transaction_id=1, unit_id=1, function=ReadFunction.READ_HOLDING_REGISTERS,
    ...                    start=1000, count=2).hex(" ")
    '00 01 00 00 00 06 01 03 03 e8 00 02'
    """
    if not 0 <= transaction_id <= MAX_TRANSACTION_ID:
        raise ValueError(f"transaction id {transaction_id} outside 0..{MAX_TRANSACTION_ID}")
    if not 0 <= unit_id <= MAX_UNIT_ID_BYTE:
        raise ValueError(f"unit id {unit_id} outside 0..{MAX_UNIT_ID_BYTE}")
    function = ReadFunction(function)
    if not 1 <= count <= function.max_count:
        raise ValueError(f"count {count} outside 1..{function.max_count} for function {int(function)}")
    if start < 0 or start + count - 1 > MAX_ADDRESS:
        raise ValueError(f"addresses {start}..{start + count - 1} outside 0..{MAX_ADDRESS}")
    return _READ_REQUEST.pack(
        transaction_id, MODBUS_PROTOCOL_ID, _READ_REQUEST_LENGTH, unit_id, int(function), start, count
    )


def build_write_request(
    *, transaction_id: int, unit_id: int, function: WriteFunction, address: int, values: Sequence[int]
) -> bytes:
    """The frame of one write: a coil (``values`` = [0 or 1]), one register or up to 123 registers (each
    0..65535). Raises ValueError for values the protocol cannot carry.

    >>> build_write_request(transaction_id=7, unit_id=1, function=WriteFunction.WRITE_MULTIPLE_REGISTERS,
    ...                     address=100, values=[0, 42]).hex(" ")
    '00 07 00 00 00 0b 01 10 00 64 00 02 04 00 00 00 2a'
    """
    if not 0 <= transaction_id <= MAX_TRANSACTION_ID:
        raise ValueError(f"transaction id {transaction_id} outside 0..{MAX_TRANSACTION_ID}")
    if not 0 <= unit_id <= MAX_UNIT_ID_BYTE:
        raise ValueError(f"unit id {unit_id} outside 0..{MAX_UNIT_ID_BYTE}")
    function = WriteFunction(function)
    count = len(values)
    if any(not 0 <= value <= 0xFFFF for value in values):
        raise ValueError(f"register values must be 0..65535, got {list(values)}")
    if function is WriteFunction.WRITE_MULTIPLE_REGISTERS:
        if not 1 <= count <= MAX_REGISTERS_PER_WRITE:
            raise ValueError(f"count {count} outside 1..{MAX_REGISTERS_PER_WRITE} for function 16")
        pdu = struct.pack(f">BHHB{count}H", int(function), address, count, 2 * count, *values)
    else:
        if count != 1:
            raise ValueError(f"function {int(function)} writes one value, got {count}")
        value = values[0]
        if function is WriteFunction.WRITE_SINGLE_COIL:
            if value not in (0, 1):
                raise ValueError(f"a coil is written 0 or 1, got {value}")
            value = COIL_ON if value else 0
        pdu = struct.pack(">BHH", int(function), address, value)
    if address < 0 or address + max(count, 1) - 1 > MAX_ADDRESS:
        raise ValueError(f"addresses {address}..{address + count - 1} outside 0..{MAX_ADDRESS}")
    return _MBAP.pack(transaction_id, MODBUS_PROTOCOL_ID, 1 + len(pdu), unit_id) + pdu


def _refused_or_other(
    pdu: bytes, function: ReadFunction | WriteFunction
) -> ExceptionResponse | MalformedResponse | None:
    """An exception response to ``function``, or a PDU that answers no request of it; None for its normal answer."""
    if not pdu:
        return MalformedResponse(reason="empty PDU")
    code = pdu[0]
    if code == function | EXCEPTION_FLAG:
        if len(pdu) != 2:
            return MalformedResponse(reason=f"exception response of {len(pdu)} bytes, not 2")
        return ExceptionResponse(function=int(function), code=pdu[1])
    if code != function:
        return MalformedResponse(reason=f"function code {code} in the answer to function {int(function)}")
    return None


def parse_write_response(
    pdu: bytes, *, function: WriteFunction, address: int, values: Sequence[int]
) -> WriteAnswer | MalformedResponse:
    """The answer to a write, checked against the request: functions 5 and 6 echo the address and value,
    function 16 the address and register count."""
    refused = _refused_or_other(pdu, function)
    if refused is not None:
        return refused
    if len(pdu) != 5:
        return MalformedResponse(reason=f"write answer of {len(pdu)} bytes, not 5")
    echoed_address, echoed = struct.unpack(">HH", pdu[1:5])
    if function is WriteFunction.WRITE_MULTIPLE_REGISTERS:
        expected = len(values)
    elif function is WriteFunction.WRITE_SINGLE_COIL:
        expected = COIL_ON if values[0] else 0
    else:
        expected = values[0]
    if echoed_address != address or echoed != expected:
        return MalformedResponse(
            reason=f"the answer echoes address {echoed_address} / {echoed}, the request was {address} / {expected}"
        )
    return WriteConfirmed(function=int(function), address=address, count=len(values))


def split_frames(buffer: bytes) -> FrameSplit:
    """Cut the complete frames off the front of the received bytes.

    Frames are found by their length field only, so a stream that is out of step is recognised by what cannot
    be a Modbus TCP header: a protocol id other than 0 or a length outside 2..254. The frames before the broken
    header are still returned (they were framed correctly).
    """
    frames: list[ResponseFrame] = []
    offset = 0
    size = len(buffer)
    while size - offset >= MBAP_HEADER_SIZE:
        transaction_id, protocol_id, length, unit_id = _MBAP.unpack_from(buffer, offset)
        if protocol_id != MODBUS_PROTOCOL_ID:
            return FrameSplit(frames=tuple(frames), consumed=offset, problem=f"protocol id {protocol_id}, not 0")
        if not MIN_LENGTH_FIELD <= length <= MAX_LENGTH_FIELD:
            problem = f"length field {length} outside {MIN_LENGTH_FIELD}..{MAX_LENGTH_FIELD}"
            return FrameSplit(frames=tuple(frames), consumed=offset, problem=problem)
        end = offset + MBAP_HEADER_SIZE - 1 + length
        if end > size:
            break
        frames.append(
            ResponseFrame(transaction_id=transaction_id, unit_id=unit_id, pdu=buffer[offset + MBAP_HEADER_SIZE : end])
        )
        offset = end
    return FrameSplit(frames=tuple(frames), consumed=offset)


def expected_byte_count(function: ReadFunction, count: int) -> int:
    """Data bytes of a full answer: 2 per register, or one per 8 bits (rounded up)."""
    return (count + 7) // 8 if function.reads_bits else 2 * count


def parse_read_response(pdu: bytes, *, function: ReadFunction, count: int) -> ReadAnswer | MalformedResponse:
    """The answer in the PDU of a response to a read of ``count`` registers or bits, checked against the request.

    Register reads give the register bytes as on the wire; bit reads the first ``count`` bits, LSB first (the
    rest of the last byte is padding).
    """
    refused = _refused_or_other(pdu, function)
    if refused is not None:
        return refused
    if len(pdu) < 2:
        return MalformedResponse(reason="answer without a byte count")
    byte_count = pdu[1]
    expected = expected_byte_count(function, count)
    if byte_count != expected:
        return MalformedResponse(reason=f"byte count {byte_count}, expected {expected} for {count}")
    if len(pdu) != 2 + byte_count:
        return MalformedResponse(reason=f"{len(pdu) - 2} data bytes, the byte count says {byte_count}")
    if function.reads_bits:
        return [bool(pdu[2 + (index >> 3)] >> (index & 7) & 1) for index in range(count)]
    return pdu[2:]


def validate_response(
    frame: ResponseFrame, *, unit_id: int, function: ReadFunction, count: int
) -> ReadAnswer | MalformedResponse:
    """``parse_read_response`` after checking the unit id the server echoed (0, broadcast, is not checked:
    pymodbus does the same)."""
    if unit_id and frame.unit_id != unit_id:
        return MalformedResponse(reason=f"answer from unit {frame.unit_id} to a request for unit {unit_id}")
    return parse_read_response(frame.pdu, function=function, count=count)


# ----------------------------------------------------------------------------------------------- I/O shell


@dataclass(slots=True)
class TcpClientStats:
    """Counters of one client (read by metrics; never reset, kept across reconnects when passed in)."""

    # Connections opened (each connect() that succeeded).
    connects: int = 0
    requests_sent: int = 0
    answers: int = 0
    timeouts: int = 0
    # Answers whose transaction id matched no pending request (late answers after a timeout or a cancel): dropped.
    unknown_transaction_ids: int = 0
    # Answers that did not fit their request (request-level failures).
    malformed_answers: int = 0
    # Connections closed because the stream could not be framed (protocol id, length field).
    broken_streams: int = 0


@dataclass(slots=True)
class _Pending:
    function: ReadFunction | WriteFunction
    unit_id: int
    count: int
    future: asyncio.Future[ReadAnswer]
    deadline: asyncio.TimerHandle | None = None
    # A write's answer check (its echo); None for reads.
    check_write: Callable[[bytes], WriteAnswer | MalformedResponse] | None = None


class _MbapProtocol(asyncio.Protocol):
    """Frames the byte stream and hands each answer to the future of its transaction id."""

    def __init__(self, stats: TcpClientStats, on_lost: Callable[[_MbapProtocol, str], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, _Pending] = {}
        self._stats = stats
        self._on_lost = on_lost
        self._rest = b""
        self._closed_reason: str | None = None
        self._last_transaction_id = 0

    @property
    def open(self) -> bool:
        return self.transport is not None and self._closed_reason is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not always an asyncio.Transport instance: uvloop's are its own classes.
        self.transport = cast(asyncio.Transport, transport)

    def next_transaction_id(self) -> int:
        """The next id after the last one, 16-bit wrapping, skipping ids still pending."""
        candidate = self._last_transaction_id
        for _ in range(MAX_TRANSACTION_ID + 1):
            candidate = (candidate + 1) & MAX_TRANSACTION_ID
            if candidate not in self.pending:
                self._last_transaction_id = candidate
                return candidate
        raise ModbusConnectionError("all 65536 transaction ids are pending")  # bounded by max_in_flight: never

    def data_received(self, data: bytes) -> None:
        if self._closed_reason is not None:
            return
        buffer = self._rest + data if self._rest else data
        split = split_frames(buffer)
        self._rest = buffer[split.consumed :]
        for frame in split.frames:
            self._dispatch(frame)
        if split.problem is not None:
            self._stats.broken_streams += 1
            self.close(f"stream out of step: {split.problem}")

    def _dispatch(self, frame: ResponseFrame) -> None:
        pending = self.pending.pop(frame.transaction_id, None)
        if pending is None or pending.future.done():  # done: cancelled, its cleanup not run yet
            self._stats.unknown_transaction_ids += 1
            return
        if pending.deadline is not None:
            pending.deadline.cancel()
        answer: ReadAnswer | WriteAnswer | MalformedResponse
        if pending.check_write is not None:
            if pending.unit_id and frame.unit_id != pending.unit_id:
                reason = f"answer from unit {frame.unit_id} to a request for unit {pending.unit_id}"
                answer = MalformedResponse(reason=reason)
            else:
                answer = pending.check_write(frame.pdu)
        else:
            assert isinstance(pending.function, ReadFunction)
            answer = validate_response(frame, unit_id=pending.unit_id, function=pending.function, count=pending.count)
        self._stats.answers += 1
        if isinstance(answer, MalformedResponse):
            self._stats.malformed_answers += 1
            pending.future.set_exception(ModbusResponseError(answer.reason))
        else:
            pending.future.set_result(answer)  # type: ignore[arg-type]  # a write's future takes a WriteAnswer

    def expire(self, transaction_id: int, pending: _Pending, timeout_s: float) -> None:
        """The deadline of one request passed: fail it (its id is free again; a late answer is dropped)."""
        if self.pending.get(transaction_id) is pending:
            del self.pending[transaction_id]
        if not pending.future.done():
            self._stats.timeouts += 1
            pending.future.set_exception(ModbusTimeoutError(f"no answer within {timeout_s:g} s"))

    def close(self, reason: str) -> None:
        """Close the connection and fail every pending request with ``reason`` (idempotent)."""
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._fail_pending(reason)
        if self.transport is not None:
            self.transport.abort()  # the stream is useless; do not wait to flush it
        self._on_lost(self, reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(f"connection lost: {_describe(exc)}" if exc is not None else "connection closed by the server")

    def _fail_pending(self, reason: str) -> None:
        pending, self.pending = self.pending, {}
        for entry in pending.values():
            if entry.deadline is not None:
                entry.deadline.cancel()
            if not entry.future.done():
                entry.future.set_exception(ModbusConnectionError(reason))


class ModbusTcpClient:
    """One Modbus TCP connection for reads, with up to ``max_in_flight`` requests on the wire at once.

    ``await connect()`` (raises ``ModbusConnectionError``), then ``await read(...)`` or, to pipeline without a
    task per request, ``future = await send_read(...)`` and await the futures later. ``close()`` fails whatever
    is pending. There is no reconnecting here: after a loss (``on_connection_lost(reason)`` is called once)
    the owner calls ``connect()`` again.

    Waiting for a free slot (``max_in_flight``) happens before a request's deadline starts, so queueing behind
    other requests is never a timeout.
    """

    def __init__(
        self,
        host: str,
        port: int = 502,
        *,
        connect_timeout_s: float = 3.0,
        max_in_flight: int = 1,
        on_connection_lost: Callable[[str], None] | None = None,
        stats: TcpClientStats | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, not {max_in_flight}")
        if connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be > 0, not {connect_timeout_s}")
        self.host = host
        self.port = port
        self.max_in_flight = max_in_flight
        self.stats = stats if stats is not None else TcpClientStats()
        self._connect_timeout_s = connect_timeout_s
        self._on_connection_lost = on_connection_lost
        self._slots = asyncio.Semaphore(max_in_flight)
        self._protocol: _MbapProtocol | None = None

    @property
    def connected(self) -> bool:
        return self._protocol is not None and self._protocol.open

    @property
    def in_flight(self) -> int:
        """Requests sent and not answered, timed out or cancelled yet."""
        return len(self._protocol.pending) if self._protocol is not None else 0

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def connect(self) -> None:
        """Open the connection (closing a previous one first), within ``connect_timeout_s``."""
        self.close()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _MbapProtocol(self.stats, self._lost), self.host, self.port
                )
        except TimeoutError as exc:
            raise ModbusConnectionError(f"no connection within {self._connect_timeout_s:g} s") from exc
        except OSError as exc:  # refused, unreachable, name resolution
            raise ModbusConnectionError(_describe(exc)) from exc
        self._protocol = protocol
        self.stats.connects += 1

    def close(self, reason: str = "connection closed by the client") -> None:
        """Close the connection, failing pending requests with ``ModbusConnectionError(reason)``. No-op if closed;
        ``on_connection_lost`` is not called (the owner knows)."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close(reason)

    def _lost(self, protocol: _MbapProtocol, reason: str) -> None:
        if protocol is not self._protocol:
            return  # an old connection that we closed ourselves
        self._protocol = None
        if self._on_connection_lost is not None:
            self._on_connection_lost(reason)

    async def send_read(
        self, function: ReadFunction, *, unit_id: int, start: int, count: int, timeout_s: float
    ) -> asyncio.Future[ReadAnswer]:
        """Wait for a free slot, put one read on the wire and return the future of its answer.

        The future resolves to the answer (``bytes`` of the registers, ``list[bool]``, or ``ExceptionResponse``)
        or fails with ``ModbusTimeoutError`` after ``timeout_s``, ``ModbusResponseError`` or
        ``ModbusConnectionError``. Cancel it to give the request up (a late answer is then dropped). Raises
        ``ModbusConnectionError`` when not connected and ValueError for a request the protocol cannot carry.
        """
        function = ReadFunction(function)

        def frame(transaction_id: int) -> bytes:
            return build_read_request(
                transaction_id=transaction_id, unit_id=unit_id, function=function, start=start, count=count
            )

        return await self._send(function, unit_id, count, frame, timeout_s)

    async def _send(
        self,
        function: ReadFunction | WriteFunction,
        unit_id: int,
        count: int,
        frame_for: Callable[[int], bytes],
        timeout_s: float,
        check_write: Callable[[bytes], WriteAnswer | MalformedResponse] | None = None,
    ) -> asyncio.Future[ReadAnswer]:
        """Wait for a free slot, put the request ``frame_for(transaction id)`` on the wire, return its future."""
        await self._slots.acquire()
        try:
            protocol = self._protocol
            if protocol is None or not protocol.open or protocol.transport is None:
                raise ModbusConnectionError(f"not connected to {self.host}:{self.port}")
            transaction_id = protocol.next_transaction_id()
            frame = frame_for(transaction_id)
        except BaseException:
            self._slots.release()
            raise
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ReadAnswer] = loop.create_future()
        pending = _Pending(function=function, unit_id=unit_id, count=count, future=future, check_write=check_write)
        pending.deadline = loop.call_at(loop.time() + timeout_s, protocol.expire, transaction_id, pending, timeout_s)
        protocol.pending[transaction_id] = pending
        # Whatever ends the request (answer, deadline, connection loss, cancel) frees its slot and its id.
        future.add_done_callback(lambda _: self._finished(protocol, transaction_id, pending))
        protocol.transport.write(frame)
        self.stats.requests_sent += 1
        return future

    def _finished(self, protocol: _MbapProtocol, transaction_id: int, pending: _Pending) -> None:
        if pending.deadline is not None:
            pending.deadline.cancel()
        if protocol.pending.get(transaction_id) is pending:
            del protocol.pending[transaction_id]
        self._slots.release()

    async def read(
        self, function: ReadFunction, *, unit_id: int, start: int, count: int, timeout_s: float
    ) -> ReadAnswer:
        """One read: ``send_read`` and wait for its answer. Cancelling the caller cancels the request."""
        future = await self.send_read(function, unit_id=unit_id, start=start, count=count, timeout_s=timeout_s)
        return await future


    async def write(
        self, function: WriteFunction, *, unit_id: int, address: int, values: Sequence[int], timeout_s: float
    ) -> WriteAnswer:
        """One write (function 5, 6 or 16), answered ``WriteConfirmed`` or ``ExceptionResponse``; fails like
        ``read``. Writes share the reads' slots (``max_in_flight``) and transaction ids."""
        function = WriteFunction(function)
        values = list(values)

        def frame(transaction_id: int) -> bytes:
            return build_write_request(
                transaction_id=transaction_id, unit_id=unit_id, function=function, address=address, values=values
            )

        def check(pdu: bytes) -> WriteAnswer | MalformedResponse:
            return parse_write_response(pdu, function=function, address=address, values=values)

        future = await self._send(function, unit_id, len(values), frame, timeout_s, check)
        answer: object = await future
        assert isinstance(answer, WriteConfirmed | ExceptionResponse)
        return answer


def abandon(future: asyncio.Future[ReadAnswer]) -> None:
    """Give up a request's future: cancel it if it is pending, or mark its error as seen if it already failed
    (so asyncio does not log "exception was never retrieved")."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
