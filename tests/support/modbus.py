"""Test helpers for the Modbus source: an independent register encoder, pymodbus 3.16 simulator servers,
a socat pty pair for RTU, and a recorder for what a source emits.

The encoder is written from the byte-order definitions, with ``struct`` and word lists, and shares no code
with ``gateway.sources.modbus_plan``, so round-trip tests compare two implementations.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.base import ModbusBaseServer
from pymodbus.simulator import DataType, SimData, SimDevice

from gateway.schema import Value
from gateway.sources.base import RawReading

# function codes of the simulator's async_setValues: 1 coils, 2 discrete inputs, 3 holding, 4 input registers
FC_COILS, FC_DISCRETE, FC_HOLDING, FC_INPUT = 1, 2, 3, 4

_FORMATS = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


def _words(data: bytes) -> list[int]:
    return [data[i] << 8 | data[i + 1] for i in range(0, len(data), 2)]


def _swap_bytes(word: int) -> int:
    return (word & 0xFF) << 8 | word >> 8


def encode_registers(value: Value, value_type: str, order: str = "ABCD", *, length: int | None = None) -> list[int]:
    """Registers as a device with byte/word ``order`` would hold ``value``.

    ABCD: big-endian words in order; CDAB: word list reversed; BADC: bytes swapped in each word; DCBA: both.
    Strings: UTF-8, padded with NUL to ``length`` registers, high byte first (order ignored).
    """
    if value_type == "string":
        assert isinstance(value, str) and length is not None
        data = value.encode("utf-8").ljust(2 * length, b"\x00")
        assert len(data) == 2 * length, "string longer than its registers"
        return _words(data)
    words = _words(struct.pack(">" + _FORMATS[value_type], value))
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [_swap_bytes(word) for word in words]
    return words


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def sim_device(
    device_id: int,
    *,
    holding: int = 100,
    input_registers: int = 20,
    coils: int = 32,
    discrete: int = 16,
    action: Callable[..., object] | None = None,
) -> SimDevice:
    """A device with four separate tables starting at address 0; addresses past their sizes raise code 2."""
    return SimDevice(
        id=device_id,
        simdata=(
            [SimData(0, count=coils, values=False, datatype=DataType.BITS)],
            [SimData(0, count=discrete, values=False, datatype=DataType.BITS)],
            [SimData(0, count=holding, values=0, datatype=DataType.REGISTERS)],
            [SimData(0, count=input_registers, values=0, datatype=DataType.REGISTERS)],
        ),
        action=action,  # type: ignore[arg-type]
    )


@dataclass
class Stall:
    """Makes a simulated device answer late (after ``delay_s``) while ``active``: a PLC that stops answering."""

    active: bool = False
    delay_s: float = 1.0

    async def action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.active:
            await asyncio.sleep(self.delay_s)
        return None


@dataclass
class DeafUnits:
    """Makes a server ignore every request addressed to ``unit_ids``: no answer, no exception, nothing, like a
    powered-off slave on an RS-485 line or a dead slot behind a TCP->RTU gateway. The other units answer.

    Pass ``trace_pdu`` to the server. pymodbus hands it each decoded request; returning None drops the request
    (the frame is consumed, so the stream stays in step), which is how a request gets swallowed.
    """

    unit_ids: set[int] = field(default_factory=set)
    swallowed: int = 0

    def trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        if not sending and pdu.dev_id in self.unit_ids:
            self.swallowed += 1
            return None
        return pdu


async def start_tcp_server(
    devices: Sequence[SimDevice], port: int, *, trace_pdu: Callable[[bool, ModbusPDU], ModbusPDU | None] | None = None
) -> ModbusTcpServer:
    # pymodbus annotates trace_pdu as returning a PDU; None (drop the request) works, see DeafUnits.
    server = ModbusTcpServer(list(devices), address=("127.0.0.1", port), trace_pdu=trace_pdu)  # type: ignore[arg-type]
    await server.serve_forever(background=True)
    return server


async def stop_server(server: ModbusBaseServer) -> None:
    await server.shutdown()  # type: ignore[no-untyped-call]


@contextlib.asynccontextmanager
async def tcp_server(
    devices: Sequence[SimDevice], port: int, *, trace_pdu: Callable[[bool, ModbusPDU], ModbusPDU | None] | None = None
) -> AsyncIterator[ModbusTcpServer]:
    server = await start_tcp_server(devices, port, trace_pdu=trace_pdu)
    try:
        yield server
    finally:
        await stop_server(server)


@contextlib.contextmanager
def socat_pty_pair(directory: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals (server end, client end): a serial null-modem cable for RTU tests."""
    socat = shutil.which("socat")
    assert socat is not None, "socat missing (the caller skips)"
    server_end, client_end = directory / "rtu-server", directory / "rtu-client"
    log_path = directory / "socat.log"
    # socat's log goes to a file, not a pipe: nobody reads a pipe while the test runs, and a full one blocks socat.
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [socat, "-d", "-d", f"pty,raw,echo=0,link={server_end}", f"pty,raw,echo=0,link={client_end}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 5
        # socat creates each link after opening its pty, so an existing link is ready to open.
        while not (server_end.exists() and client_end.exists()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat did not create the pty pair: {log_path.read_text(errors='replace')}")
            time.sleep(0.02)
        yield str(server_end), str(client_end)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.asynccontextmanager
async def serial_server(
    devices: Sequence[SimDevice],
    port: str,
    *,
    baudrate: int = 19200,
    trace_pdu: Callable[[bool, ModbusPDU], ModbusPDU | None] | None = None,
) -> AsyncIterator[ModbusSerialServer]:
    server = ModbusSerialServer(
        list(devices),
        framer=FramerType.RTU,
        port=port,
        baudrate=baudrate,
        trace_pdu=trace_pdu,  # type: ignore[arg-type]  # None drops a request, see DeafUnits
    )
    await server.serve_forever(background=True)
    try:
        yield server
    finally:
        await stop_server(server)


@dataclass
class Recorder:
    """Collects what one unit emits (one list per cycle) and every ``report_link`` call, in order."""

    cycles: list[list[RawReading]] = field(default_factory=list)
    links: list[tuple[bool, str | None]] = field(default_factory=list)
    emit_started: list[float] = field(default_factory=list)
    emit_delay_s: float = 0.0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def emit(self, readings: Sequence[RawReading]) -> None:
        self.emit_started.append(time.monotonic())
        self.cycles.append(list(readings))
        self._changed.set()
        if self.emit_delay_s:
            await asyncio.sleep(self.emit_delay_s)

    def report_link(self, connected: bool, error: str | None) -> None:
        self.links.append((connected, error))
        self._changed.set()

    @property
    def last(self) -> dict[str, RawReading]:
        return {reading.tag: reading for reading in self.cycles[-1]} if self.cycles else {}

    async def wait_until(self, condition: Callable[[Recorder], bool], *, within_s: float = 5.0) -> None:
        """Wait until ``condition(self)`` holds after some emit or link report; fail the test after ``within_s``."""

        try:
            async with asyncio.timeout(within_s):
                while not condition(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"condition not met within {within_s} s; last cycle: {self.cycles[-1:]}, links: {self.links}"
            ) from None


def all_good(recorder: Recorder) -> bool:
    return bool(recorder.cycles) and all(reading.quality == "good" for reading in recorder.cycles[-1])


def all_status(status: str) -> Callable[[Recorder], bool]:
    def check(recorder: Recorder) -> bool:
        return bool(recorder.cycles) and all(reading.status == status for reading in recorder.cycles[-1])

    return check


@dataclass
class HungServer:
    """A raw TCP server that accepts connections and reads every byte but never answers: a hung PLC whose
    TCP stack still works. Counts connections and received bytes so a test can see the client keep trying."""

    connections: int = 0
    received_bytes: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        self.connections += 1
        try:
            while data := await reader.read(4096):
                self.received_bytes += len(data)
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.handlers.discard(task)


@contextlib.asynccontextmanager
async def hung_tcp_server(port: int) -> AsyncIterator[HungServer]:
    hung = HungServer()
    server = await asyncio.start_server(hung.serve, "127.0.0.1", port)
    try:
        yield hung
    finally:
        server.close()
        for handler in list(hung.handlers):
            handler.cancel()
        await asyncio.gather(*hung.handlers, return_exceptions=True)
        await server.wait_closed()
