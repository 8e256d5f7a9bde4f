"""Test helpers for the simulators: an independent register decoder, block reads, and ``python -m simulators``.

* ``decode_register_point(point, words)`` decodes with ``struct`` only, so it checks the server's encoder instead
  of repeating it.
* ``read_register_points(client, register_map)`` reads every point of a map with real Modbus requests
  (contiguous blocks of at most 125 registers / 2000 bits).
* ``SimulatorProcess`` starts ``python -m simulators`` on free ports, waits for its ready line, and stops it with
  SIGTERM. Use it as a context manager (``with SimulatorProcess() as sims: sims.modbus_port``); from async
  tests call ``await asyncio.to_thread(sims.start)`` so the event loop is not blocked for the ~1 s start-up.
  ``SimulatorProcess(control_port=0)`` also starts the fault control interface (``sims.control_port``).
  ``sims.modbus_port`` is the first rack's port, ``sims.modbus_ports`` every Modbus machine's (device -> port);
  ``extra_args`` passes more options (``["--racks", "1"]``).
* ``parse_ready_line(line)`` reads the ready line (None if it is not one).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NoReturn

from simulators.machines.points import Value
from simulators.servers.modbus_server import Encoding, RegisterMap, RegisterPoint, Table, WordOrder

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_LINE = re.compile(
    r"^simulators ready opcua=(?P<opcua>opc\.tcp://[^ ]+|off) modbus=(?:(?P<host>[0-9.]+):(?P<port>\d+)|off)"
    r"(?: modbus_ports=(?P<ports>[a-z0-9-]+:\d+(?:,[a-z0-9-]+:\d+)*))?(?: control=(?P<control>\d+))?$"
)
MAX_REGISTERS_PER_READ = 125
MAX_BITS_PER_READ = 2000


def num(value: Value) -> float:
    """A model or wire value that must be a number, as a float (fails on str and bool)."""
    assert isinstance(value, int | float) and not isinstance(value, bool), f"not a number: {value!r}"
    return float(value)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_run(count: int, *, attempts: int = 50) -> int:
    """A port P such that P .. P+count-1 are all free now (the default simulator set numbers its Modbus
    machines from one base port: rack-01, rack-02, stacker-01)."""
    for _ in range(attempts):
        base = free_tcp_port()
        if base + count > 65535:
            continue
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no run of {count} free ports found")


MODBUS_MACHINES_IN_DEFAULT_SET = 3  # rack-01, rack-02, stacker-01


@dataclass(frozen=True, slots=True)
class ReadyLine:
    opcua_endpoint: str  # "" when OPC UA is off
    modbus_host: str
    modbus_port: int  # the first rack's port, 0 when Modbus is off
    modbus_ports: dict[str, int]  # device -> port of every Modbus machine
    control_port: int  # 0 when the control interface is off


def parse_ready_line(line: str) -> ReadyLine | None:
    match = READY_LINE.match(line.strip())
    if match is None:
        return None
    ports = {}
    for item in (match["ports"] or "").split(","):
        if item:
            device, _, port = item.partition(":")
            ports[device] = int(port)
    return ReadyLine(
        opcua_endpoint=match["opcua"] if match["opcua"] != "off" else "",
        modbus_host=match["host"] or "",
        modbus_port=int(match["port"]) if match["port"] else 0,
        modbus_ports=ports,
        control_port=int(match["control"]) if match["control"] else 0,
    )


def decode_register_point(
    point: RegisterPoint, words: Sequence[int], word_order: WordOrder = WordOrder.ABCD
) -> float | int | str:
    """Engineering value of ``point`` from its raw register words (``word_order`` for 32-bit values)."""
    if point.encoding is Encoding.STRING:
        return b"".join(struct.pack(">H", w) for w in words[: point.width]).rstrip(b"\x00").decode("utf-8")
    ordered = list(words[: point.width])
    if word_order is WordOrder.CDAB and point.width == 2:
        ordered.reverse()
    raw = b"".join(struct.pack(">H", w) for w in ordered)
    match point.encoding:
        case Encoding.UINT16:
            number: float | int = struct.unpack(">H", raw)[0]
        case Encoding.INT16:
            number = struct.unpack(">h", raw)[0]
        case Encoding.UINT32:
            number = struct.unpack(">I", raw)[0]
        case Encoding.INT32:
            number = struct.unpack(">i", raw)[0]
        case Encoding.FLOAT32:
            number = struct.unpack(">f", raw)[0]
        case _:
            raise ValueError(f"{point.point}: {point.encoding} is not a register type")
    return number * point.scale if point.scale != 1.0 else number


def _blocks(points: Sequence[RegisterPoint], limit: int) -> list[tuple[int, int]]:
    """(start, count) reads that cover ``points`` (sorted by address), each at most ``limit`` long."""
    blocks: list[tuple[int, int]] = []
    for point in sorted(points, key=lambda p: p.address):
        end = point.address + point.width
        if blocks and end - blocks[-1][0] <= limit:
            start, _ = blocks[-1]
            blocks[-1] = (start, max(blocks[-1][1], end - start))
        else:
            blocks.append((point.address, point.width))
    return blocks


async def read_register_points(
    client: Any, register_map: RegisterMap, *, device_id: int = 1, word_order: WordOrder = WordOrder.ABCD
) -> dict[str, Value]:
    """Read every point of ``register_map`` from a connected ``AsyncModbusTcpClient``; decode independently."""
    values: dict[str, Value] = {}
    for table in Table:
        points = [p for p in register_map if p.table is table]
        if not points:
            continue
        bits = table in (Table.COIL, Table.DISCRETE)
        read = {
            Table.COIL: client.read_coils,
            Table.DISCRETE: client.read_discrete_inputs,
            Table.HOLDING: client.read_holding_registers,
            Table.INPUT: client.read_input_registers,
        }[table]
        data: dict[int, int | bool] = {}
        for start, count in _blocks(points, MAX_BITS_PER_READ if bits else MAX_REGISTERS_PER_READ):
            response = await read(start, count=count, device_id=device_id)
            if response.isError():
                raise AssertionError(f"{table} read at {start} x {count} failed: {response}")
            items = response.bits[:count] if bits else response.registers
            data.update(zip(range(start, start + count), items, strict=True))
        for point in points:
            if bits:
                values[point.point] = bool(data[point.address])
            else:
                words = [int(data[a]) for a in range(point.address, point.address + point.width)]
                values[point.point] = decode_register_point(point, words, word_order)
    return values


def child_simulator_pids() -> list[int]:
    """Live ``python -m simulators`` processes that are children of this process (not yet exited: zombies, exited
    and not reaped yet, do not count): what a test left running when every test of its module has ended."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == me and state != "Z" and b"\0-m\0simulators\0" in cmdline:
            found.append(int(entry.name))
    return found


class SimulatorProcess:
    """``python -m simulators`` as a child process on free ports (or the ports given)."""

    def __init__(
        self,
        *,
        opcua_port: int = 0,
        modbus_port: int = 0,
        channels: int = 16,
        seed: int = 1,
        speedup: float = 1.0,
        start_timeout_s: float = 90.0,
        only: str | None = None,
        control_port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._args = [
            "--opcua-port", str(opcua_port), "--modbus-port", str(modbus_port),
            "--channels", str(channels), "--seed", str(seed), "--speedup", str(speedup),
            *(["--only", only] if only else []),
            *(["--control-port", str(control_port)] if control_port is not None else []),
            *extra_args,
        ]
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self.opcua_endpoint = ""
        self.modbus_host = ""
        self.modbus_port = 0
        self.modbus_ports: dict[str, int] = {}
        self.control_port = 0  # 0 when the control interface is off
        self.returncode: int | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read()

    def start(self) -> None:
        """Start the process and block until it prints its ready line (or fail with its stderr)."""
        self._stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "simulators", *self._args],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=self._stderr, text=True,
        )
        assert self._process.stdout is not None
        deadline = time.monotonic() + self._start_timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(timeout=left):
                    self._fail(TimeoutError, "simulators did not get ready")
                line = self._process.stdout.readline()
                if not line:
                    self._fail(RuntimeError, "simulators exited before getting ready")
                ready = parse_ready_line(line)
                if ready is not None:
                    break
        self.opcua_endpoint = ready.opcua_endpoint
        self.modbus_host = ready.modbus_host
        self.modbus_port = ready.modbus_port
        self.modbus_ports = ready.modbus_ports
        self.control_port = ready.control_port

    def _fail(self, error: type[Exception], message: str) -> NoReturn:
        self.stop()
        stderr = self.stderr_text()
        self.close()
        raise error(f"{message} (exit status {self.returncode}); stderr:\n{stderr}")

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait (SIGKILL after ``timeout_s``); returns the exit status."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None:
            self.returncode = process.returncode
            if process.stdout is not None:
                process.stdout.close()
        return self.returncode

    def close(self) -> None:
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> SimulatorProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
