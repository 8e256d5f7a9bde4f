"""Our Modbus TCP client and ModbusConnection with several requests in flight, on real sockets on 127.0.0.1.

The servers are pymodbus 3.16's own (the ordinary case) and a raw asyncio server written here, whose every answer a
test scripts: late, out of order, never, garbage, an exception, a wrong byte count, or the socket closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.assembly import DeviceLink, build_sources
from gateway.schema import STATUS_COMM_FAILURE, STATUS_DECODE_ERROR, Quality
from gateway.sources.modbus import ModbusConnection, ModbusUnit, SerialEndpoint, TcpEndpoint
from gateway.sources.modbus_plan import ModbusField, ReadLimits, ReadPlan, plan_reads
from gateway.sources.modbus_skip import SkipPolicy
from gateway.sources.modbus_tcp import (
    ExceptionResponse,
    ModbusConnectionError,
    ModbusResponseError,
    ModbusTcpClient,
    ModbusTimeoutError,
    ReadFunction,
    TcpClientStats,
    _MbapProtocol,
)
from tests.support.modbus import (
    FC_COILS,
    FC_DISCRETE,
    FC_HOLDING,
    FC_INPUT,
    Recorder,
    all_good,
    free_tcp_port,
    sim_device,
    tcp_server,
)
from tests.support.tagmap import load
from tests.support.waiting import wait_until_async

HOLDING, INPUT = ReadFunction.READ_HOLDING_REGISTERS, ReadFunction.READ_INPUT_REGISTERS
COILS, DISCRETE = ReadFunction.READ_COILS, ReadFunction.READ_DISCRETE_INPUTS


# ------------------------------------------------------------------------------------- a scriptable server


def register_value(address: int) -> int:
    """What every register of the raw server holds: a function of its address, so each answer is recognisable."""
    return (address * 3 + 1) & 0xFFFF


def bit_value(address: int) -> bool:
    return address % 3 == 0


@dataclass(frozen=True, slots=True)
class Request:
    transaction_id: int
    unit_id: int
    function: int
    start: int
    count: int


def answer_pdu(request: Request) -> bytes:
    """The correct answer PDU to a read request, from ``register_value`` / ``bit_value``."""
    addresses = range(request.start, request.start + request.count)
    if request.function in (FC_COILS, FC_DISCRETE):
        packed = bytearray((request.count + 7) // 8)
        for index, address in enumerate(addresses):
            if bit_value(address):
                packed[index // 8] |= 1 << (index % 8)
        return bytes((request.function, len(packed))) + bytes(packed)
    data = struct.pack(f">{request.count}H", *(register_value(a) for a in addresses))
    return bytes((request.function, len(data))) + data


def expected_registers(start: int, count: int) -> bytes:
    return struct.pack(f">{count}H", *(register_value(a) for a in range(start, start + count)))


@dataclass(eq=False)
class ServerConnection:
    server: RawServer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    index: int  # 0 for the first connection the server accepted

    async def next_request(self) -> Request:
        transaction_id, protocol_id, length, unit_id, function, start, count = struct.unpack(
            ">HHHBBHH", await self.reader.readexactly(12)
        )
        assert (protocol_id, length) == (0, 6), "not a read request"
        request = Request(transaction_id, unit_id, function, start, count)
        self.server.requests.append(request)
        self.server.connection_requests[self.index].append(request)
        self.server.outstanding += 1
        self.server.max_outstanding = max(self.server.max_outstanding, self.server.outstanding)
        return request

    def answer(self, request: Request, pdu: bytes | None = None, *, unit_id: int | None = None) -> None:
        pdu = answer_pdu(request) if pdu is None else pdu
        unit = request.unit_id if unit_id is None else unit_id
        self.send(struct.pack(">HHHB", request.transaction_id, 0, len(pdu) + 1, unit) + pdu)
        self.server.outstanding -= 1

    def send(self, data: bytes) -> None:
        self.writer.write(data)


Scenario = Callable[[ServerConnection], Awaitable[None]]


@dataclass(eq=False)
class RawServer:
    """Counts connections and requests, and how many requests it held unanswered at once (``max_outstanding``)."""

    scenario: Scenario
    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    connection_requests: list[list[Request]] = field(default_factory=list)  # per connection, in accept order
    outstanding: int = 0
    max_outstanding: int = 0
    scenarios: set[asyncio.Future[None]] = field(default_factory=set)
    serving: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.serving.add(task)
        self.connections += 1
        self.connection_requests.append([])
        self.outstanding = 0  # requests of a closed connection are never answered
        # The scenario runs in a task of its own, which the teardown cancels: cancelling this handler task instead
        # makes asyncio's stream machinery log a CancelledError traceback (Python 3.11).
        scenario = asyncio.ensure_future(self.scenario(ServerConnection(self, reader, writer, self.connections - 1)))
        self.scenarios.add(scenario)
        try:
            await asyncio.wait([scenario])
        finally:
            self.scenarios.discard(scenario)
            self.serving.discard(task)
            writer.close()
        if not scenario.cancelled():
            error = scenario.exception()
            if error is not None and not isinstance(error, asyncio.IncompleteReadError | ConnectionError):
                raise error  # a broken scenario: asyncio logs it, and the test sees no answers


@contextlib.asynccontextmanager
async def raw_server(scenario: Scenario) -> AsyncIterator[RawServer]:
    raw = RawServer(scenario)
    server = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()
        for running in list(raw.scenarios):
            running.cancel()
        if raw.serving:
            await asyncio.wait(list(raw.serving))
        await server.wait_closed()


async def answer_each(connection: ServerConnection) -> None:
    """A plain server: every request answered at once, in order."""
    while True:
        connection.answer(await connection.next_request())


async def answer_when_quiet(connection: ServerConnection) -> None:
    """Collects requests until none came for 30 ms, then answers them all in reverse order: out-of-order answers,
    and ``max_outstanding`` shows how many the client had on the wire at once."""
    while True:
        batch = [await connection.next_request()]
        while True:
            try:
                async with asyncio.timeout(0.03):
                    batch.append(await connection.next_request())
            except TimeoutError:
                break
        for request in reversed(batch):
            connection.answer(request)


def answer_in_reverse_batches(size: int) -> Scenario:
    """Answers only once ``size`` requests are waiting, last first: a client that cannot pipeline gets nothing."""

    async def scenario(connection: ServerConnection) -> None:
        while True:
            batch = [await connection.next_request() for _ in range(size)]
            for request in reversed(batch):
                connection.answer(request)

    return scenario


async def never_answer(connection: ServerConnection) -> None:
    while True:
        await connection.next_request()


# ---------------------------------------------------------------------------------------------- the client


def client_for(port: int, **options: object) -> ModbusTcpClient:
    return ModbusTcpClient("127.0.0.1", port, connect_timeout_s=2.0, **options)  # type: ignore[arg-type]


async def test_reads_every_table_of_a_pymodbus_server() -> None:
    port = free_tcp_port()
    async with tcp_server([sim_device(3)], port) as server:
        await server.async_setValues(3, FC_HOLDING, 10, [0x1234, 0xBEEF])
        await server.async_setValues(3, FC_INPUT, 0, [7])
        await server.async_setValues(3, FC_COILS, 0, [True, False, True] + [False] * 6 + [True])
        await server.async_setValues(3, FC_DISCRETE, 4, [True])
        async with client_for(port) as client:
            assert client.connected
            registers = await client.read(HOLDING, unit_id=3, start=10, count=2, timeout_s=2)
            assert registers == bytes.fromhex("1234 beef")  # exactly the bytes on the wire
            assert await client.read(INPUT, unit_id=3, start=0, count=1, timeout_s=2) == b"\x00\x07"
            coils = await client.read(COILS, unit_id=3, start=0, count=10, timeout_s=2)
            assert coils == [True, False, True] + [False] * 6 + [True]  # 10 bits, not the 16 of two bytes
            assert await client.read(DISCRETE, unit_id=3, start=3, count=2, timeout_s=2) == [False, True]
            # An address the device does not have: an exception response, not an error.
            refused = await client.read(HOLDING, unit_id=3, start=150, count=1, timeout_s=2)
            assert refused == ExceptionResponse(function=3, code=2)
            assert client.in_flight == 0
        assert not client.connected
    assert client.stats.requests_sent == client.stats.answers == 5
    assert client.stats.timeouts == client.stats.unknown_transaction_ids == 0


async def test_answers_out_of_order_find_their_requests() -> None:
    async with raw_server(answer_in_reverse_batches(4)) as server, client_for(server.port, max_in_flight=4) as client:
        starts = [0, 100, 200, 300]
        answers = await asyncio.gather(
            *(client.read(HOLDING, unit_id=1, start=start, count=10, timeout_s=5) for start in starts)
        )
        assert answers == [expected_registers(start, 10) for start in starts]
        assert server.max_outstanding == 4
        # Transaction ids: one per request, counting up.
        assert [r.transaction_id for r in server.requests] == [1, 2, 3, 4]


async def test_no_more_than_max_in_flight_on_the_wire() -> None:
    async with raw_server(answer_when_quiet) as server, client_for(server.port, max_in_flight=3) as client:
        answers = await asyncio.gather(
            *(client.read(INPUT, unit_id=2, start=10 * n, count=5, timeout_s=5) for n in range(9))
        )
        assert answers == [expected_registers(10 * n, 5) for n in range(9)]
        assert server.max_outstanding == 3
        assert client.in_flight == 0


async def test_a_late_answer_is_dropped_and_counted() -> None:
    release = asyncio.Event()

    async def late_first(connection: ServerConnection) -> None:
        first = await connection.next_request()
        await release.wait()
        connection.answer(first)  # after its deadline
        await answer_each(connection)

    async with raw_server(late_first) as server, client_for(server.port) as client:
        with pytest.raises(ModbusTimeoutError, match=r"no answer within 0\.1 s"):
            await client.read(HOLDING, unit_id=1, start=0, count=2, timeout_s=0.1)
        assert client.in_flight == 0 and client.connected
        release.set()
        # The next request gets its own answer, not the stale one that arrives first.
        assert await client.read(HOLDING, unit_id=1, start=50, count=2, timeout_s=2) == expected_registers(50, 2)
        assert client.stats.unknown_transaction_ids == 1
        assert client.stats.timeouts == 1


async def test_a_server_that_never_answers_times_out_each_request() -> None:
    async with raw_server(never_answer) as server, client_for(server.port, max_in_flight=2) as client:
        outcomes = await asyncio.gather(
            client.read(HOLDING, unit_id=1, start=0, count=1, timeout_s=0.1),
            client.read(COILS, unit_id=1, start=0, count=1, timeout_s=0.2),
            return_exceptions=True,
        )
        assert [type(outcome) for outcome in outcomes] == [ModbusTimeoutError, ModbusTimeoutError]
        assert client.connected  # a timeout alone does not close the connection (the owner decides)
        await wait_until_async(lambda: client.in_flight == 0, 2, "the timed-out requests to be released")
        assert len(server.requests) == 2


async def test_garbage_closes_the_connection_and_fails_everything_pending() -> None:
    lost: list[str] = []

    async def garbage_after_three(connection: ServerConnection) -> None:
        for _ in range(3):
            await connection.next_request()
        connection.send(b"\xde\xad\xbe\xef" * 4)  # protocol id 0xbeef
        await connection.reader.read()  # until the client closes

    async with raw_server(garbage_after_three) as server:
        client = client_for(server.port, max_in_flight=3, on_connection_lost=lost.append)
        await client.connect()
        outcomes = await asyncio.gather(
            *(client.read(HOLDING, unit_id=1, start=n, count=1, timeout_s=5) for n in range(3)),
            return_exceptions=True,
        )
        assert all(isinstance(outcome, ModbusConnectionError) for outcome in outcomes), outcomes
        assert "stream out of step: protocol id 48879, not 0" in str(outcomes[0])
        assert lost == ["stream out of step: protocol id 48879, not 0"]
        assert not client.connected
        assert client.stats.broken_streams == 1
        with pytest.raises(ModbusConnectionError, match="not connected"):
            await client.read(HOLDING, unit_id=1, start=0, count=1, timeout_s=1)
        await wait_until_async(lambda: not server.serving, 2, "the server to see the connection closed")


async def test_a_length_field_out_of_range_closes_the_connection() -> None:
    async def bad_length(connection: ServerConnection) -> None:
        request = await connection.next_request()
        connection.send(struct.pack(">HHHB", request.transaction_id, 0, 300, 1) + b"\x03")
        await connection.reader.read()

    lost: list[str] = []
    async with raw_server(bad_length) as server:
        client = client_for(server.port, on_connection_lost=lost.append)
        await client.connect()
        with pytest.raises(ModbusConnectionError, match=r"length field 300 outside 2\.\.254"):
            await client.read(HOLDING, unit_id=1, start=0, count=1, timeout_s=5)
        assert len(lost) == 1 and not client.connected


async def test_an_exception_answer_is_a_result() -> None:
    async def refuse(connection: ServerConnection) -> None:
        while True:
            request = await connection.next_request()
            connection.answer(request, bytes((request.function | 0x80, 2)))

    async with raw_server(refuse) as server, client_for(server.port) as client:
        assert await client.read(INPUT, unit_id=1, start=9, count=3, timeout_s=2) == ExceptionResponse(
            function=4, code=2
        )
        assert await client.read(COILS, unit_id=1, start=0, count=3, timeout_s=2) == ExceptionResponse(
            function=1, code=2
        )
        assert client.connected


@pytest.mark.parametrize(
    ("bad_answer", "complaint"),
    [
        (lambda r: bytes((r.function, 2 * r.count - 2)) + b"\x00" * (2 * r.count - 2), "byte count 2, expected 4"),
        (lambda r: bytes((r.function + 1, 2 * r.count)) + b"\x00" * (2 * r.count), "function code 4 in the answer"),
        (lambda r: bytes((r.function, 2 * r.count)) + b"\x00" * 3, "3 data bytes, the byte count says 4"),
    ],
)
async def test_a_malformed_answer_fails_only_its_request(
    bad_answer: Callable[[Request], bytes], complaint: str
) -> None:
    async def first_malformed(connection: ServerConnection) -> None:
        first = await connection.next_request()
        connection.answer(first, bad_answer(first))
        await answer_each(connection)

    async with raw_server(first_malformed) as server, client_for(server.port) as client:
        with pytest.raises(ModbusResponseError, match=complaint):
            await client.read(HOLDING, unit_id=1, start=0, count=2, timeout_s=2)
        # The stream is still in step: the next request is fine.
        assert await client.read(HOLDING, unit_id=1, start=8, count=2, timeout_s=2) == expected_registers(8, 2)
        assert client.stats.malformed_answers == 1 and client.stats.broken_streams == 0


async def test_an_answer_from_another_unit_fails_its_request() -> None:
    async def wrong_unit(connection: ServerConnection) -> None:
        request = await connection.next_request()
        connection.answer(request, unit_id=request.unit_id + 1)
        await answer_each(connection)

    async with raw_server(wrong_unit) as server, client_for(server.port) as client:
        with pytest.raises(ModbusResponseError, match="answer from unit 6 to a request for unit 5"):
            await client.read(HOLDING, unit_id=5, start=0, count=1, timeout_s=2)


async def test_a_server_that_closes_the_socket_fails_what_is_pending() -> None:
    async def close_on_request(connection: ServerConnection) -> None:
        await connection.next_request()
        connection.writer.close()

    lost: list[str] = []
    async with raw_server(close_on_request) as server:
        client = client_for(server.port, on_connection_lost=lost.append)
        await client.connect()
        with pytest.raises(ModbusConnectionError, match=r"closed by the server|connection lost"):
            await client.read(HOLDING, unit_id=1, start=0, count=1, timeout_s=5)
        assert not client.connected and len(lost) == 1
        # connect() again works (the owner reconnects).
        await client.connect()
        assert client.connected
        client.close()
        assert len(lost) == 1  # closing it ourselves is not a loss


async def test_cancelling_the_caller_cancels_its_request_and_frees_the_slot() -> None:
    async with raw_server(never_answer) as server, client_for(server.port, max_in_flight=1) as client:
        first = asyncio.create_task(client.read(HOLDING, unit_id=1, start=0, count=1, timeout_s=30))
        await wait_until_async(lambda: len(server.requests) == 1, 2, "the first request on the wire")
        # The second waits for the only slot; cancelling it while it waits sends nothing.
        second = asyncio.create_task(client.read(HOLDING, unit_id=1, start=1, count=1, timeout_s=30))
        await asyncio.sleep(0.05)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert len(server.requests) == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await wait_until_async(lambda: client.in_flight == 0, 2, "the cancelled request to be released")
        # The slot is free again: a new request goes out (and times out: this server never answers).
        with pytest.raises(ModbusTimeoutError):
            await client.read(HOLDING, unit_id=1, start=2, count=1, timeout_s=0.05)
        assert [r.start for r in server.requests] == [0, 2]


async def test_connect_to_a_closed_port_fails() -> None:
    client = client_for(free_tcp_port())
    with pytest.raises(ModbusConnectionError):
        await client.connect()
    assert not client.connected


def test_transaction_ids_wrap_and_skip_ids_still_pending() -> None:
    """(No socket: 65,536 requests on the wire just to wrap the counter would be a slow way to test one line.)"""
    protocol = _MbapProtocol(TcpClientStats(), lambda _protocol, _reason: None)
    for transaction_id in (65535, 0, 2):
        protocol.pending[transaction_id] = None  # type: ignore[assignment]  # only the keys matter here
    protocol._last_transaction_id = 65533
    assert [protocol.next_transaction_id() for _ in range(3)] == [65534, 1, 3]


# --------------------------------------------------------------------------- ModbusConnection, N in flight

# Eight holding blocks of 4 registers, far enough apart that each is its own request, then two coil blocks.
MANY_FIELDS = [
    *(ModbusField(key=f"block{n}/value", table="holding", address=100 * n, type="uint32") for n in range(8)),
    *(ModbusField(key=f"block{n}/word", table="holding", address=100 * n + 3, type="uint16") for n in range(8)),
    ModbusField(key="coil/a", table="coil", address=0, type="bool"),
    ModbusField(key="coil/b", table="coil", address=500, type="bool"),
]


def many_plan(unit_id: int = 1) -> ReadPlan:
    plan = plan_reads(MANY_FIELDS, unit_id=unit_id, limits=ReadLimits(max_gap=10))
    assert len(plan.requests) == 10 and not plan.problems
    return plan


def expected_values() -> dict[str, object]:
    values: dict[str, object] = {}
    for n in range(8):
        base = 100 * n
        values[f"block{n}/value"] = register_value(base) << 16 | register_value(base + 1)
        values[f"block{n}/word"] = register_value(base + 3)
    values["coil/a"], values["coil/b"] = bit_value(0), bit_value(500)
    return values


def make_unit(name: str, recorder: Recorder, plan: ReadPlan, interval_ms: int = 50) -> ModbusUnit:
    return ModbusUnit(
        name=name, plan=plan, interval_ms=interval_ms, emit=recorder.emit, report_link=recorder.report_link
    )


def tcp_connection(port: int, units: list[ModbusUnit], **options: object) -> ModbusConnection:
    return ModbusConnection(
        endpoint=TcpEndpoint(host="127.0.0.1", port=port),
        units=units,
        reconnect_min_s=0.05,
        reconnect_max_s=0.3,
        **options,  # type: ignore[arg-type]
    )


async def test_concurrent_reads_keep_plan_order_and_values() -> None:
    rec = Recorder()
    plan = many_plan()
    async with (
        raw_server(answer_when_quiet) as server,
        tcp_connection(server.port, [make_unit("rack", rec, plan)], max_concurrent_requests=4) as connection,
    ):
        await rec.wait_until(lambda r: len(r.cycles) >= 3 and all_good(r))
        cycle = rec.cycles[-1]
        assert [r.tag for r in cycle] == list(plan.keys)  # the plan's order, although answered last-first
        assert {r.tag: r.value for r in cycle} == expected_values()
        assert server.max_outstanding == 4
        assert rec.links == [(True, None)]
        assert connection.tcp_stats.unknown_transaction_ids == 0
        assert connection.stats["rack"].comm_failures == 0


async def test_one_request_at_a_time_by_default() -> None:
    rec1, rec2 = Recorder(), Recorder()
    units = [make_unit("a", rec1, many_plan(1)), make_unit("b", rec2, many_plan(2))]
    async with raw_server(answer_when_quiet) as server, tcp_connection(server.port, units) as connection:
        assert connection.max_concurrent_requests == 1
        await rec1.wait_until(lambda r: len(r.cycles) >= 2 and all_good(r))
        await rec2.wait_until(lambda r: len(r.cycles) >= 2 and all_good(r))
        assert server.max_outstanding == 1
        assert {r.tag: r.value for r in rec2.last.values()} == expected_values()


async def test_the_units_of_a_connection_share_its_limit() -> None:
    rec1, rec2 = Recorder(), Recorder()
    units = [make_unit("a", rec1, many_plan(1)), make_unit("b", rec2, many_plan(2))]
    async with raw_server(answer_when_quiet) as server, tcp_connection(server.port, units, max_concurrent_requests=3):
        await rec1.wait_until(lambda r: len(r.cycles) >= 3 and all_good(r))
        await rec2.wait_until(lambda r: len(r.cycles) >= 3 and all_good(r))
        assert server.max_outstanding == 3  # not 3 per unit
        assert {r.unit_id for r in server.requests} == {1, 2}


async def test_exception_and_malformed_answers_fail_only_their_tags() -> None:
    async def refuse_and_mangle(connection: ServerConnection) -> None:
        while True:
            request = await connection.next_request()
            if request.start == 200:
                connection.answer(request, bytes((request.function | 0x80, 2)))
            elif request.start == 500 and request.function == FC_HOLDING:
                connection.answer(request, bytes((request.function, 2)) + b"\x00\x01")  # 1 register of 4
            else:
                connection.answer(request)

    rec = Recorder()
    async with (
        raw_server(refuse_and_mangle) as server,
        tcp_connection(server.port, [make_unit("rack", rec, many_plan())], max_concurrent_requests=8) as connection,
    ):
        await rec.wait_until(lambda r: len(r.cycles) >= 2)
        last = rec.last
        bad = {tag: (r.quality, r.status) for tag, r in last.items() if r.quality is not Quality.GOOD}
        assert bad == {
            "block2/value": (Quality.BAD, "device_exception:2"),
            "block2/word": (Quality.BAD, "device_exception:2"),
            "block5/value": (Quality.BAD, STATUS_DECODE_ERROR),
            "block5/word": (Quality.BAD, STATUS_DECODE_ERROR),
        }
        good = {tag: r.value for tag, r in last.items() if r.quality is Quality.GOOD}
        assert good == {tag: v for tag, v in expected_values().items() if not tag.startswith(("block2", "block5"))}
        assert [r.tag for r in rec.cycles[-1]] == list(many_plan().keys)
        assert rec.links == [(True, None)]  # answers, even refusals, keep the link up
        stats = connection.stats["rack"]
        assert stats.exception_responses >= 2 and stats.request_errors >= 2 and stats.comm_failures == 0


async def test_a_broken_stream_is_a_comm_failure_then_the_connection_is_reopened() -> None:
    async def garbage_on_first_connection(connection: ServerConnection) -> None:
        if connection.server.connections == 1:
            await connection.next_request()
            connection.send(b"garbage, not a Modbus frame")
            await connection.reader.read()
            return
        await answer_each(connection)

    rec = Recorder()
    async with (
        raw_server(garbage_on_first_connection) as server,
        tcp_connection(server.port, [make_unit("rack", rec, many_plan())], max_concurrent_requests=4) as connection,
    ):
        await rec.wait_until(all_good)
        assert rec.cycles[0] and all(r.status == STATUS_COMM_FAILURE for r in rec.cycles[0])
        assert [up for up, _ in rec.links] == [False, True]
        assert "stream out of step" in (rec.links[0][1] or "")
        assert server.connections == 2
        assert connection.tcp_stats.broken_streams == 1


async def test_a_dead_unit_costs_one_timeout_per_cycle_and_three_reopen_the_connection() -> None:
    rec = Recorder()
    skip = SkipPolicy(after_timeouts=5, min_s=5.0, max_s=5.0)  # no back-off within this test
    async with raw_server(never_answer) as server:
        unit = make_unit("dead", rec, many_plan(), interval_ms=20)
        async with tcp_connection(
            server.port, [unit], max_concurrent_requests=4, timeout_ms=100, skip=skip
        ) as connection:
            await wait_until_async(lambda: server.connections >= 2, 10, "the connection to be reopened")
            stats = connection.stats["dead"]
            # Three cycles timed out, each counted once although four of its reads were on the wire; then the
            # connection was closed and opened again.
            assert stats.timeouts >= 3
            assert len(server.connection_requests[0]) == 3 * 4
            assert all(all(r.status == STATUS_COMM_FAILURE for r in cycle) for cycle in rec.cycles)
            assert rec.links[0][0] is False and all(not up for up, _ in rec.links)


async def test_retries_resend_a_request_that_was_not_answered() -> None:
    async def ignore_the_first_of_each_block(connection: ServerConnection) -> None:
        seen: set[tuple[int, int]] = set()
        while True:
            request = await connection.next_request()
            if (request.function, request.start) in seen:
                connection.answer(request)
            else:
                seen.add((request.function, request.start))
                connection.server.outstanding -= 1  # dropped, never to be answered

    rec = Recorder()
    plan = many_plan()
    async with (
        raw_server(ignore_the_first_of_each_block) as server,
        tcp_connection(
            server.port, [make_unit("rack", rec, plan)], max_concurrent_requests=4, timeout_ms=100, retries=1
        ) as connection,
    ):
        await rec.wait_until(lambda r: len(r.cycles) >= 2)
        assert all(all_good(Recorder(cycles=[cycle])) for cycle in rec.cycles)  # the first cycle too
        assert {r.tag: r.value for r in rec.last.values()} == expected_values()
        assert rec.links == [(True, None)]
        assert connection.stats["rack"].comm_failures == 0
        assert connection.tcp_stats.timeouts == len(plan.requests)  # each block once, on its first read
        # The resend is a new transaction of the same read.
        first, resend = [r for r in server.requests if (r.function, r.start) == (FC_HOLDING, 0)][:2]
        assert first.transaction_id != resend.transaction_id and first.count == resend.count


async def test_stopping_a_connection_with_requests_in_flight_does_not_hang() -> None:
    rec = Recorder()
    async with raw_server(never_answer) as server:
        connection = tcp_connection(server.port, [make_unit("rack", rec, many_plan())], max_concurrent_requests=4,
                                    timeout_ms=30_000)  # fmt: skip
        async with connection:
            await wait_until_async(lambda: len(server.requests) == 4, 5, "four requests on the wire")
        assert not connection.connected
        assert rec.cycles == []  # no cycle finished, nothing emitted


def test_max_concurrent_requests_is_checked() -> None:
    plan = many_plan()
    rec = Recorder()
    tcp = TcpEndpoint(host="127.0.0.1", port=1502)
    for bad in (0, 17):
        with pytest.raises(ValueError, match=f"max_concurrent_requests must be 1..16, not {bad}"):
            ModbusConnection(endpoint=tcp, units=[make_unit("u", rec, plan)], max_concurrent_requests=bad)
    with pytest.raises(ValueError, match="a serial line carries one request at a time"):
        ModbusConnection(
            endpoint=SerialEndpoint(port="/dev/ttyUSB0"), units=[make_unit("u", rec, plan)], max_concurrent_requests=2
        )


async def test_pymodbus_server_with_one_request_at_a_time() -> None:
    """The ordinary case, end to end through ModbusConnection: pymodbus's own server, default settings."""
    port = free_tcp_port()
    rec = Recorder()
    plan = plan_reads([ModbusField(key="speed", table="holding", address=0, type="uint16")], unit_id=1)
    async with tcp_server([sim_device(1)], port) as server:
        await server.async_setValues(1, FC_HOLDING, 0, [1450])
        async with tcp_connection(port, [make_unit("drive", rec, plan)]):
            await rec.wait_until(lambda r: all_good(r) and r.last["speed"].value == 1450)



def shared_connection_tagmap(port: int) -> str:
    """Two racks behind one host:port (unit ids 1 and 2) asking for different limits; four reads each."""
    devices = []
    for index, limit in ((1, 6), (2, 2)):
        tags = ", ".join(f"{{name: t{n}, address: {200 * n}, type: uint16}}" for n in range(4))
        devices.append(
            f"  - {{name: rack-0{index}, area: formation, line: a, protocol: modbus, host: 127.0.0.1, port: {port},"
            f" unit_id: {index}, interval_ms: 50, max_concurrent_requests: {limit}, tags: [{tags}]}}"
        )
    header = 'gateway: {id: gw, enterprise: acme, site: dunkirk}\nmqtt: {url: "mqtt://127.0.0.1"}\ndevices:\n'
    return header + "\n".join(devices) + "\n"


async def test_devices_sharing_a_connection_get_the_smallest_limit() -> None:
    recorders = {"rack-01": Recorder(), "rack-02": Recorder()}
    links = {name: DeviceLink(emit=rec.emit, report_link=rec.report_link) for name, rec in recorders.items()}
    async with raw_server(answer_when_quiet) as server:
        [task] = build_sources(load(shared_connection_tagmap(server.port)), links)
        assert task.devices == ("rack-01", "rack-02")
        runner = asyncio.ensure_future(task.run())
        try:
            for recorder in recorders.values():
                await recorder.wait_until(lambda r: len(r.cycles) >= 2 and all_good(r))
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        assert server.max_outstanding == 2
        assert recorders["rack-02"].last["t3"].value == register_value(600)
