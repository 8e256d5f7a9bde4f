"""``cellgate scan``: which addresses of a Modbus table answer, and which give exceptions (reads only).

Modbus has no browse. To check a register map against a device, ``scan`` reads the table from the first to the
last address of ``--range`` and reports the answering ranges and the exception ranges (with their code).

``ScanCursor`` (pure) decides every request: it reads blocks of ``max_count`` addresses while they answer; a
block that gives an exception is halved until the failing address is found, then the failing area is walked one
address at a time, and the block grows again (doubling) as soon as addresses answer. A fully answering range
costs one request per block, a fully failing one one request per address, each boundary about log2(block).
A request that gets no answer within the timeout marks its block ``no answer`` (not split: a device that does
not answer a block rarely answers its halves); after ``MAX_SILENT_REQUESTS`` of those in a row the scan stops.

The I/O shell (``run_scan``) sends one request at a time, at most ``rate`` per second, and at most
``max_requests`` in all; what is left is reported ``not scanned``. Only read functions (1-4) are ever sent.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import Final, TextIO
from urllib.parse import urlsplit

from gateway.sources.modbus_tcp import (
    ExceptionResponse,
    ModbusConnectionError,
    ModbusTcpClient,
    ModbusTcpError,
    ModbusTimeoutError,
    ReadFunction,
)
from gateway.tagmap.limits import MAX_ADDRESS

MAX_SILENT_REQUESTS: Final = 3
ANSWERS: Final = "answers"
NO_ANSWER: Final = "no answer"
NOT_SCANNED: Final = "not scanned"
EXCEPTION_NAMES: Final = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
    6: "server device busy", 10: "gateway path unavailable", 11: "gateway target failed to respond",
}
TABLE_FUNCTIONS: Final = {
    "holding": ReadFunction.READ_HOLDING_REGISTERS, "input": ReadFunction.READ_INPUT_REGISTERS,
    "coil": ReadFunction.READ_COILS, "discrete": ReadFunction.READ_DISCRETE_INPUTS,
}


@dataclass(frozen=True, slots=True)
class Span:
    first: int
    last: int
    outcome: str
    """``answers``, ``exception N (name)``, ``no answer`` or ``not scanned``."""

    @property
    def count(self) -> int:
        return self.last - self.first + 1


def exception_outcome(code: int) -> str:
    return f"exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"


class ScanCursor:
    """Pure scan state: ``next_request()``, then one of ``answered()`` / ``exception(code)`` / ``no_answer()``."""

    def __init__(self, first: int, last: int, *, max_count: int) -> None:
        if not 0 <= first <= last <= MAX_ADDRESS:
            raise ValueError(f"range {first}-{last} is not within 0-{MAX_ADDRESS} (first <= last)")
        if max_count < 1:
            raise ValueError("max_count must be >= 1")
        self._position = first
        self._last = last
        self._max = max_count
        self._size = max_count
        self._silent = 0
        self._spans: list[Span] = []
        self.requests = 0

    def _count(self) -> int:
        return min(self._size, self._last - self._position + 1)

    @property
    def done(self) -> bool:
        return self._position > self._last or self._silent >= MAX_SILENT_REQUESTS

    def next_request(self) -> tuple[int, int] | None:
        """(start, count) of the next read, or None when the scan is over."""
        if self.done:
            return None
        return self._position, self._count()

    def _mark(self, count: int, outcome: str) -> None:
        first, last = self._position, self._position + count - 1
        if self._spans and self._spans[-1].outcome == outcome and self._spans[-1].last == first - 1:
            first = self._spans.pop().first
        self._spans.append(Span(first, last, outcome))
        self._position += count

    def answered(self) -> None:
        self.requests += 1
        self._silent = 0
        self._mark(self._count(), ANSWERS)
        self._size = min(self._max, self._size * 2)

    def exception(self, code: int) -> None:
        self.requests += 1
        self._silent = 0
        if self._size > 1 and self._count() > 1:
            self._size = max(1, self._count() // 2)
            return
        self._mark(1, exception_outcome(code))

    def no_answer(self) -> None:
        self.requests += 1
        self._silent += 1
        self._mark(self._count(), NO_ANSWER)

    def spans(self) -> list[Span]:
        """What was found, in address order; the rest of the range (if the scan stopped early) ``not scanned``."""
        out = list(self._spans)
        if self._position <= self._last:
            out.append(Span(self._position, self._last, NOT_SCANNED))
        return out


def parse_modbus_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "modbus" or not parts.hostname:
        raise ValueError(f"{url!r}: expected modbus://HOST[:PORT]")
    return parts.hostname, parts.port or 502


def parse_range(text: str) -> tuple[int, int]:
    first_text, _, last_text = text.partition("-")
    try:
        first, last = int(first_text), int(last_text or first_text)
    except ValueError:
        raise ValueError(f"range {text!r}: expected FIRST-LAST, e.g. 0-9999") from None
    if not 0 <= first <= last <= MAX_ADDRESS:
        raise ValueError(f"range {text!r}: expected 0 <= FIRST <= LAST <= {MAX_ADDRESS}")
    return first, last


async def scan(
    host: str, port: int, *, unit_id: int, function: ReadFunction, first: int, last: int, rate: float,
    timeout_s: float, max_requests: int, block: int | None = None,
) -> ScanCursor:
    """Scan one table; at most ``rate`` requests per second and ``max_requests`` in all."""
    cursor = ScanCursor(first, last, max_count=min(block or function.max_count, function.max_count))
    interval = 1.0 / rate
    loop = asyncio.get_running_loop()
    async with ModbusTcpClient(host, port) as client:
        next_at = loop.time()
        while cursor.requests < max_requests:
            request = cursor.next_request()
            if request is None:
                break
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = loop.time() + interval
            start, count = request
            try:
                answer = await client.read(function, unit_id=unit_id, start=start, count=count, timeout_s=timeout_s)
            except ModbusTimeoutError:
                cursor.no_answer()
                continue
            except ModbusConnectionError:
                # Some devices close the connection on a request they dislike: count it as no answer, reconnect.
                cursor.no_answer()
                await client.connect()
                continue
            if isinstance(answer, ExceptionResponse):
                cursor.exception(answer.code)
            else:
                cursor.answered()
    return cursor


def report(spans: list[Span], *, table: str, unit_id: int, target: str) -> str:
    word = "bits" if table in ("coil", "discrete") else "registers"
    lines = [f"{target} unit {unit_id} {table}:"]
    width = max((len(f"{s.first}-{s.last}") for s in spans), default=0)
    for span in spans:
        lines.append(f"  {f'{span.first}-{span.last}':<{width}}  {span.outcome} ({span.count} {word})")
    return "\n".join(lines)


def run_scan(
    *, url: str, unit_id: int, table: str, address_range: str, rate: float, timeout_s: float, max_requests: int,
    block: int | None, stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr,
) -> int:
    """The ``cellgate scan`` command: returns the exit status (2 for bad arguments, 1 if the device is unreachable)."""
    try:
        host, port = parse_modbus_url(url)
        first, last = parse_range(address_range)
        function = TABLE_FUNCTIONS[table]
        if rate <= 0 or max_requests < 1 or timeout_s <= 0:
            raise ValueError("--rate, --timeout and --max-requests must be > 0")
        if not 0 <= unit_id <= 255:
            raise ValueError(f"--unit {unit_id}: expected 0..255")
        if block is not None and block < 1:
            raise ValueError(f"--block {block}: expected at least 1")
    except (ValueError, KeyError) as exc:
        print(f"cellgate scan: {exc}", file=stderr)
        return 2
    started = time.monotonic()
    try:
        cursor = asyncio.run(scan(host, port, unit_id=unit_id, function=function, first=first, last=last,
                                  rate=rate, timeout_s=timeout_s, max_requests=max_requests, block=block))
    except ModbusTcpError as exc:
        print(f"cellgate scan: {url}: {exc}", file=stderr)
        return 1
    print(report(cursor.spans(), table=table, unit_id=unit_id, target=f"{host}:{port}"), file=stdout)
    stopped = ""
    if not cursor.done:
        stopped = f"; stopped at --max-requests {max_requests}"
    elif cursor.next_request() is None and any(s.outcome == NOT_SCANNED for s in cursor.spans()):
        stopped = f"; stopped after {MAX_SILENT_REQUESTS} requests in a row got no answer"
    print(f"{cursor.requests} read request(s) in {time.monotonic() - started:.1f} s{stopped}", file=stderr)
    return 0
