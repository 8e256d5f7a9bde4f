"""Modbus TCP / RTU source: one client per connection, polling the read plans of its units.

A ``ModbusConnection`` owns one TCP host:port or one serial port. Several Modbus units (device ids) behind it,
e.g. the drives of an RS-485 line or the slots of a gateway, share the client; each unit is one Cellgate device
with its own plan, poll interval, ``emit`` and ``report_link``. Everything protocol-specific (which registers,
how to decode them) was decided by ``modbus_plan``; this module only carries out the reads.

TCP uses our own client (``modbus_tcp``), RTU pymodbus. pymodbus's TCP client serialises transactions with a lock,
so a poll cycle of 24 reads waited for 24 round trips in a row and the gateway sat idle most of the cycle (issue
"Performance": batch mode reached ~110,000 of 300,000 values/s at 70 % CPU). Our client matches answers to
requests by transaction id, so several requests can be on the wire at once. How many is the device setting
``max_concurrent_requests``, 1 by default, because PLCs differ: many Modbus TCP servers work on several
transactions at once, some accept them but queue them (no faster, but no harm), and some only handle one at a
time and drop or refuse the rest. With 1 the behaviour is the old one: one request on the wire at a time per
connection. With N > 1 the reads of one unit's poll cycle go out together, at most N in flight on the connection
(shared by all its units), and their answers are still processed in plan order. A serial line always carries one
request at a time (Modbus RTU has no transaction id).

Reconnecting is ours: pymodbus's background reconnect never starts when the *first* connect fails and has no
jitter, so its client is built with ``reconnect_delay=0``, and our TCP client never reconnects on its own. One
supervisor task connects at start and again whenever the link drops, paced by ``reconnect`` (exponential backoff
with jitter, capped): a connection lost before it answered and lived ``stable_link_s`` is a failed attempt, so
a server that accepts and closes at once (a PLC at its connection limit) is retried at the backoff's pace, and
logged once per state change plus one ``device_reconnect_failing`` summary a minute.
As pymodbus did on TCP, ``MAX_UNANSWERED_IN_A_ROW`` unanswered requests in a row (no answer of any unit in between)
close the connection, which then goes through the same reconnect path: a PLC whose TCP stack still
accepts but whose application hangs often needs a fresh connection.

Every pymodbus call (RTU) is awaited through ``await_within``: bounded by our own deadline, and never able to
swallow the cancellation that stops the connection (see there). Our TCP client needs no such guard: each request
has its own deadline on a future of its own, and cancelling the caller cancels the request.

A unit that keeps timing out while the connection is up (a dead slave on the line or behind a gateway) is skipped
for a growing back-off period, so it cannot stall the other units of its connection (``modbus_skip``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Final, Protocol, Self, TypeAlias, TypeVar

import structlog
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from gateway.backoff import paced
from gateway.errors import SourceError
from gateway.schema import STATUS_COMM_FAILURE, STATUS_DECODE_ERROR, Quality, device_exception_status
from gateway.sources.base import (
    Backlog,
    CycleTimes,
    Emit,
    HoldBack,
    OverrunLine,
    OverrunLog,
    PollSchedule,
    RawReading,
    ReportLink,
)
from gateway.sources.modbus_plan import ReadPlan, ReadRequest, failed_readings
from gateway.sources.modbus_skip import Skip, SkipPolicy, UnitSkip
from gateway.sources.modbus_tcp import (
    ExceptionResponse,
    ModbusConnectionError,
    ModbusResponseError,
    ModbusTcpClient,
    ModbusTimeoutError,
    ReadAnswer,
    ReadFunction,
    TcpClientStats,
    abandon,
)
from gateway.sources.reconnect import AGAIN, STABLE_LINK_S, LogLine, Reconnect, ReconnectPolicy, Step
from gateway.vocabulary import Parity, Table

# Added to pymodbus's own timeout (RTU) so the library, not our guard, normally reports the timeout.
_GUARD_MARGIN_S = 0.5

MAX_UNANSWERED_IN_A_ROW: Final = 3
"""TCP: requests in a row without an answer (from any unit of the connection) after which the connection is closed
and reopened, as pymodbus did. A cycle that times out counts once, however many of its reads were in flight."""

MAX_CONCURRENT_REQUESTS: Final = 16
"""Most requests one TCP connection may have on the wire at once (the tag map allows 1..16)."""

_TABLE_FUNCTIONS: Final = MappingProxyType(
    {
        Table.HOLDING: ReadFunction.READ_HOLDING_REGISTERS,
        Table.INPUT: ReadFunction.READ_INPUT_REGISTERS,
        Table.COIL: ReadFunction.READ_COILS,
        Table.DISCRETE: ReadFunction.READ_DISCRETE_INPUTS,
    }
)

_T = TypeVar("_T")


async def await_within(call: Awaitable[_T], timeout_s: float) -> _T:
    """Result of ``call``, or ``TimeoutError`` after ``timeout_s``; cancelling the caller always cancels it.

    pymodbus waits for answers and connects with ``asyncio.wait_for``, which on Python 3.11 swallows a
    cancellation that arrives in the loop iteration in which the awaited result lands (CPython gh-86296, fixed
    by the 3.12 rewrite): the cancelled task just gets the answer and carries on. A poll task that lost its
    cancel polls forever, so ``run()``'s TaskGroup, and whoever stops the connection, waited forever. Here the
    call runs in a task of its own that we watch through ``asyncio.shield``: our cancel and our deadline cancel
    the shield's outer future, which no library code can intercept. The call is then cancelled and left to
    finish on its own (the shield consumes its outcome).
    """
    call_task = asyncio.ensure_future(call)
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(call_task)
    finally:
        call_task.cancel()  # no-op once it is done


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpEndpoint:
    """Modbus TCP server (a PLC, or a gateway in front of serial devices)."""

    host: str
    port: int = 502

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialEndpoint:
    """Modbus RTU line on a serial port (RS-485/RS-232 adapter)."""

    port: str
    baudrate: int = 19200
    parity: Parity = "N"
    stopbits: int = 1
    bytesize: int = 8

    def __str__(self) -> str:
        return f"{self.port}@{self.baudrate}/{self.bytesize}{self.parity}{self.stopbits}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusUnit:
    """One Cellgate device behind a connection: a Modbus unit id (inside ``plan``) polled every ``interval_ms``.

    ``name`` is the device name, used in logs, task names and ``ModbusConnection.stats``. When ``backlog`` is
    given and ``max_queue_age_ms`` > 0, a poll whose time comes while the data already waiting for the sink is
    that old waits until it is younger (the polls whose time passes meanwhile are skipped and counted in
    ``UnitStats.backlog_skipped``), so an overloaded sink gets fresh data late rather than old data on time. With
    ``paced_reads`` as well (the device's messages may be handed over in parts), while the sink is busy each
    request's readings are handed over as they are decoded and the next request waits until the sink has room (see
    ``base.HoldBack``): a value then waits behind about two requests' worth of messages, not behind its poll.
    """

    name: str
    plan: ReadPlan
    interval_ms: int
    emit: Emit
    report_link: ReportLink
    backlog: Backlog | None = None
    max_queue_age_ms: int = 0
    paced_reads: bool = False


@dataclass(slots=True)
class UnitStats:
    """Counters of one unit's poll loop (read by metrics; never reset)."""

    cycles: int = 0
    # Cycles whose reads and emit ended after the next deadline (see base.PollSchedule).
    overruns: int = 0
    # Polls skipped because the data already waiting for the sink was older than max_queue_age_ms (the poll waited
    # for the backlog), or while paced reads waited for the sink (see ModbusUnit).
    backlog_skipped: int = 0
    # Polls the fixed rate asked for that did not happen: the time overruns pushed the schedule back, in intervals
    # (after an overrun the next poll starts at once, never in a burst to catch up).
    skipped_cycles: int = 0
    # Read requests answered with data (the other results: ``reads_by_result``).
    reads_ok: int = 0
    comm_failures: int = 0
    exception_responses: int = 0
    request_errors: int = 0
    # Requests without an answer within the timeout while the connection was up (a subset of comm_failures).
    timeouts: int = 0
    # Times the unit was put into back-off after timeouts (the first skip and every failed probe).
    backoffs: int = 0
    # Poll deadlines passed over while the unit was in back-off.
    backoff_skipped_polls: int = 0
    # Durations of the polled cycles (reads and the hand-over to the queue).
    cycle_times: CycleTimes = field(default_factory=CycleTimes)

    @property
    def missed_cycles(self) -> int:
        """Poll deadlines at which nothing could be read: failed cycles (link down, timeout) and polls skipped in
        back-off. Logged per outage as ``missed_cycles`` of ``modbus_link_up``."""
        return self.comm_failures + self.backoff_skipped_polls

    def reads_by_result(self) -> dict[str, int]:
        """Read requests by result (``cellgate_device_reads_total``): ``connection_error`` is a cycle that found no
        connection or lost it (the rest of that cycle is not read), ``decode_error`` an answer the library refused
        or could not parse, ``exception`` a Modbus exception response."""
        return {
            "ok": self.reads_ok,
            "timeout": self.timeouts,
            "connection_error": self.comm_failures - self.timeouts,
            "exception": self.exception_responses,
            "decode_error": self.request_errors,
        }


class _ReadResponse(Protocol):
    registers: list[int]
    bits: list[bool]

    def isError(self) -> bool: ...  # noqa: N802  (pymodbus's name)


_Reader = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class _CommFailure:
    """No usable answer: timeout or connection problem. Marks the whole unit bad.

    ``timed_out``: the request went out on a live connection and nothing (usable) came back, which is the
    unit's problem and counts towards skipping it; otherwise the connection itself failed.
    """

    reason: str
    timed_out: bool = False


@dataclass(frozen=True, slots=True)
class _RequestFailure:
    """The library refused or mangled one request (e.g. a count check, a malformed answer); only that request's
    tags are bad."""

    reason: str


# What one read came to: the answer (register bytes from our TCP client, register values from pymodbus, bits), an
# exception response, or a failure.
_Outcome: TypeAlias = bytes | list[int] | list[bool] | ExceptionResponse | _CommFailure | _RequestFailure


class _LinkState:
    """Calls ``report_link`` once per change of a unit's link state (not on every poll), and once per change of
    its back-off period. Counts the poll deadlines at which nothing could be read while the link was down (failed
    cycles and polls skipped in back-off), and says how many when the link is up again (``missed_cycles``)."""

    __slots__ = ("_connected", "_down_since", "_log", "_missed", "_report", "_skip_reason")

    def __init__(self, report: ReportLink, log: Any) -> None:
        self._report = report
        self._log = log
        self._connected: bool | None = None  # unknown until the first poll, which always reports
        self._skip_reason: str | None = None
        self._down_since: float | None = None
        self._missed = 0

    def up(self, now: float) -> None:
        self._skip_reason = None
        if self._connected is not True:
            self._connected = True
            if self._down_since is None:
                self._log.info("modbus_link_up")
            else:
                self._log.info("modbus_link_up", missed_cycles=self._missed, down_s=round(now - self._down_since, 1))
            self._down_since = None
            self._missed = 0
            self._report(True, None)

    def down(self, reason: str, now: float) -> None:
        """A poll deadline at which nothing was read (reported once per change of state)."""
        self._went_down(now)
        self._missed += 1
        if self._connected is not False:
            self._connected = False
            self._log.warning("modbus_link_down", error=reason)
            self._report(False, reason)

    def passed_over(self, now: float) -> None:
        """A poll deadline passed over in back-off: nothing read."""
        self._went_down(now)
        self._missed += 1

    def _went_down(self, now: float) -> None:
        if self._down_since is None:
            self._down_since = now

    def skipped(self, skip: Skip, timeouts: int) -> None:
        """The unit is (again) in back-off. The reason names the nominal period, which stops changing at the cap,
        so a unit that stays dead is reported a handful of times (5, 10, 20, 40, 60 s), not once per probe."""
        reason = f"timeout: skipped for {skip.nominal_s:g} s"
        self._connected = False
        if reason != self._skip_reason:
            self._skip_reason = reason
            self._log.warning("modbus_unit_skipped", error=reason, level=skip.level,
                              skip_s=round(skip.period_s, 3), consecutive_timeouts=timeouts)  # fmt: skip
            self._report(False, reason)


class ModbusConnection:
    """Poller of one Modbus TCP connection or serial line, serving one or more units.

    Use ``await connection.run()`` (runs until cancelled) or ``async with connection:`` (runs in a background
    task owned by the context). Per unit, every ``interval_ms`` (fixed rate: next deadline = previous deadline +
    interval), each request of its plan is read and the readings are emitted in one batch:

    * answer -> decoded raw readings (``ts`` = arrival time);
    * exception response -> that request's tags bad, status ``device_exception:N``, the others unaffected;
    * timeout / connection error -> every tag of the unit bad, status ``comm_failure``, the rest of the cycle
      skipped, and ``report_link(False, reason)`` once; the next answer reports ``report_link(True, None)``.

    A unit that times out ``skip.after_timeouts`` polls in a row while the connection is up is skipped for a
    back-off period (``skip.min_s`` doubling per failed probe up to ``skip.max_s``, with jitter; see
    ``modbus_skip``): ``report_link(False, "timeout: skipped for N s")`` once per period change, nothing emitted
    while skipped (its tags are already bad / ``comm_failure``), then one probe poll; an answer ends the back-off
    and reports ``report_link(True, None)``. Connection errors keep the reconnect path and do not count.

    ``timeout_ms`` is the client's per-request timeout (one client serves every unit, so the glue passes the
    largest ``timeout_ms`` of the units). ``retries`` is the resend count on no answer; 0 keeps the timing simple:
    the next poll is the retry. ``max_concurrent_requests`` (TCP only, 1..16; a serial line is always 1) is how
    many requests may be on the wire at once; see the module docstring. ``reconnect_min_s`` / ``reconnect_max_s``
    shape the reconnect backoff; a connection lost before it answered and lived ``stable_link_s`` counts as a failed
    attempt (see ``reconnect``).
    """

    def __init__(
        self,
        *,
        endpoint: TcpEndpoint | SerialEndpoint,
        units: Sequence[ModbusUnit],
        timeout_ms: int = 1000,
        retries: int = 0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        stable_link_s: float = STABLE_LINK_S,
        skip: SkipPolicy | None = None,
        clock: Callable[[], float] = time.time,
        max_concurrent_requests: int = 1,
    ) -> None:
        names = [unit.name for unit in units]
        if len(set(names)) != len(names):
            raise ValueError(f"unit names must be unique on one connection: {names}")
        if timeout_ms < 1:
            raise ValueError(f"timeout_ms must be >= 1, not {timeout_ms}")
        for unit in units:
            if unit.interval_ms < 1:
                raise ValueError(f"{unit.name}: interval_ms must be >= 1, not {unit.interval_ms}")
        if not 1 <= max_concurrent_requests <= MAX_CONCURRENT_REQUESTS:
            raise ValueError(
                f"max_concurrent_requests must be 1..{MAX_CONCURRENT_REQUESTS}, not {max_concurrent_requests}"
            )
        if isinstance(endpoint, SerialEndpoint) and max_concurrent_requests != 1:
            raise ValueError("a serial line carries one request at a time: max_concurrent_requests must be 1")
        self.endpoint = endpoint
        self.units = tuple(units)
        self.stats: dict[str, UnitStats] = {unit.name: UnitStats() for unit in units}
        self._timeout_s = timeout_ms / 1000
        self._retries = retries
        self._guard_s = self._timeout_s * (retries + 1) + _GUARD_MARGIN_S
        self._reconnect = Reconnect(
            ReconnectPolicy(min_s=reconnect_min_s, max_s=reconnect_max_s, stable_s=stable_link_s)
        )
        self._skip_policy = skip if skip is not None else SkipPolicy()
        self._clock = clock
        self.max_concurrent_requests = max_concurrent_requests
        # Counters of the TCP client, kept across reconnects (each run() builds a fresh client).
        self.tcp_stats = TcpClientStats()
        self._unanswered_in_row = 0
        self._client: ModbusTcpClient | AsyncModbusSerialClient | None = None
        self._readers: dict[Table, _Reader] = {}
        # RTU: one request on the wire at a time (the Modbus spec allows no more on a serial line); taken outside
        # the timeout so queueing behind another unit is not a timeout. Our TCP client limits itself the same way.
        self._request_lock = asyncio.Lock()
        self._link_lost = asyncio.Event()
        self._lost_reason: str | None = None
        # Polls start once the first connect attempt is over, so a healthy start never reports a link down.
        self._first_attempt_done = asyncio.Event()
        self._last_connect_error: str | None = None
        self._runner: asyncio.Task[None] | None = None
        self._log = structlog.get_logger(__name__).bind(endpoint=str(endpoint))
        # pymodbus logs every failed request with a frame dump; we log one event per state change instead.
        logging.getLogger("pymodbus").setLevel(logging.WARNING)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    # ------------------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self.run(), name=f"modbus[{self.endpoint}]")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    async def run(self) -> None:
        """Connect (retrying forever with backoff) and poll every unit until cancelled."""
        client = self._build_client()
        self._client = client
        self._unanswered_in_row = 0
        if isinstance(client, AsyncModbusSerialClient):
            self._readers = {
                Table.HOLDING: client.read_holding_registers,
                Table.INPUT: client.read_input_registers,
                Table.COIL: client.read_coils,
                Table.DISCRETE: client.read_discrete_inputs,
            }
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._keep_connected(client), name=f"modbus[{self.endpoint}].connect")
                for unit in self.units:
                    tasks.create_task(self._poll_unit(client, unit), name=f"device[{unit.name}].poll")
        finally:
            client.close()
            self._client = None

    def _build_client(self) -> ModbusTcpClient | AsyncModbusSerialClient:
        endpoint = self.endpoint
        if isinstance(endpoint, TcpEndpoint):
            return ModbusTcpClient(
                endpoint.host,
                endpoint.port,
                connect_timeout_s=self._timeout_s,
                max_in_flight=self.max_concurrent_requests,
                on_connection_lost=self._on_tcp_connection_lost,
                stats=self.tcp_stats,
            )
        return AsyncModbusSerialClient(
            endpoint.port,
            framer=FramerType.RTU,
            baudrate=endpoint.baudrate,
            parity=endpoint.parity,
            stopbits=endpoint.stopbits,
            bytesize=endpoint.bytesize,
            timeout=self._timeout_s,
            retries=self._retries,
            reconnect_delay=0,
            trace_connect=self._on_link_change,
        )

    def _on_link_change(self, up: bool) -> None:
        if not up:
            self._lost("serial link closed")

    def _on_tcp_connection_lost(self, reason: str) -> None:
        # Once per lost connection; logged by the supervisor (once per state change, see ``reconnect``), and the
        # units report their link down (once each) at their next poll.
        self._lost(reason)

    def _lost(self, reason: str) -> None:
        if not self._link_lost.is_set():
            self._lost_reason = reason
            self._link_lost.set()

    # ------------------------------------------------------------------------------------------ connecting

    async def _keep_connected(self, client: ModbusTcpClient | AsyncModbusSerialClient) -> None:
        """Connect, wait for the loss, wait as ``reconnect`` says, again: a tenacity run (``gateway.backoff.paced``).
        A connection that is lost before it has answered and lived ``stable_link_s`` counts as a failed attempt, so a
        server that accepts and closes at once is retried at the growing backoff, not in a loop."""
        await paced()(self._connection, client)

    async def _connection(self, client: ModbusTcpClient | AsyncModbusSerialClient) -> Step:
        """One attempt: connect (unless still connected) and wait for the loss; the step says how long to wait."""
        loop = asyncio.get_running_loop()
        reconnect = self._reconnect
        # Cleared before connecting, so a drop right after the connect is not missed.
        self._link_lost.clear()
        self._lost_reason = None
        if not client.connected:
            try:
                await self._connect_once(client)
            except SourceError as exc:
                step = reconnect.connect_failed(loop.time(), self._last_connect_error or str(exc), random.random())
                self._log_reconnect(step)
                return step
            self._last_connect_error = None
            self._log_reconnect(reconnect.connected(loop.time()))
        await self._link_lost.wait()
        if client.connected:
            return AGAIN  # a request failed on a link that is still open: not a loss
        step = reconnect.lost(loop.time(), self._lost_reason or "connection lost", random.random())
        self._log_reconnect(step)
        if step.delay_s > 0:
            # The units report this in their own words at their next poll; meanwhile polls fail at once.
            self._last_connect_error = f"connection to {self.endpoint} lost: {step.error}"
        return step

    async def _connect_once(self, client: ModbusTcpClient | AsyncModbusSerialClient) -> None:
        if isinstance(client, ModbusTcpClient):
            try:
                await client.connect()  # closes a half-dead connection first; bounded by the timeout
            except ModbusConnectionError as exc:
                self._last_connect_error = f"cannot connect to {self.endpoint}: {exc}"
                raise SourceError(self._last_connect_error) from exc
            finally:
                self._first_attempt_done.set()
            self._unanswered_in_row = 0
            return
        client.close()  # drop a half-dead transport before opening a new one
        try:
            # pymodbus bounds the connect by its timeout; ours is the backstop (and keeps cancelling reliable).
            ok = await await_within(client.connect(), self._timeout_s + _GUARD_MARGIN_S)
        except Exception as exc:  # serial open errors, our deadline and the like: retried like a refused connect
            self._last_connect_error = f"cannot connect to {self.endpoint}: {_reason(exc)}"
            raise SourceError(self._last_connect_error) from exc
        finally:
            self._first_attempt_done.set()
        if not ok:  # pymodbus returns False instead of raising (refused, unreachable, timeout)
            self._last_connect_error = f"cannot connect to {self.endpoint}"
            raise SourceError(self._last_connect_error)

    def _log_reconnect(self, step: Step) -> None:
        """One line per state change of the connection, and while attempts keep failing one summary a minute."""
        log = self._log
        retry_in_s = round(step.delay_s, 3)
        match step.log:
            case LogLine.UP:
                log.info("modbus_connected", attempts=step.attempts, failing_s=round(step.failing_s, 1))
            case LogLine.LOST:
                log.warning("modbus_connection_lost", error=step.error, lived_s=_round(step.lived_s))
            case LogLine.FAILING:
                log.warning("modbus_connect_failed", error=step.error, attempt=step.attempts, retry_in_s=retry_in_s,
                            lived_s=_round(step.lived_s))  # fmt: skip
            case LogLine.SUMMARY:
                log.warning("device_reconnect_failing", devices=[unit.name for unit in self.units],
                            attempts=step.attempts, failures=step.failures, failing_s=round(step.failing_s, 1),
                            error=step.error, retry_in_s=retry_in_s)  # fmt: skip
            case None:
                pass

    def _answered(self) -> None:
        """Any answer on the connection: the reconnect backoff learns the link works (cheap once it is stable)."""
        if self._reconnect.stable:
            return
        step = self._reconnect.answered(asyncio.get_running_loop().time())
        if step is not None:
            self._log_reconnect(step)

    # ------------------------------------------------------------------------------------------- polling

    async def _poll_unit(self, client: ModbusTcpClient | AsyncModbusSerialClient, unit: ModbusUnit) -> None:
        loop = asyncio.get_running_loop()
        interval = unit.interval_ms / 1000
        stats = self.stats[unit.name]
        log = self._log.bind(device=unit.name, unit_id=unit.plan.unit_id)
        if not unit.plan.requests:
            log.warning("modbus_unit_has_nothing_to_read", problems=[str(p) for p in unit.plan.problems])
            return
        link = _LinkState(unit.report_link, log)
        skip = UnitSkip(self._skip_policy)
        await self._first_attempt_done.wait()
        schedule = PollSchedule(interval_s=interval, deadline=loop.time())
        overrun_log = OverrunLog()
        hold_back = HoldBack(unit.backlog, unit.max_queue_age_ms, unit.interval_ms, log, unit.paced_reads)
        while True:
            await hold_back.before_poll(schedule, loop.time)  # skips polls while the queued data is too old
            stats.backlog_skipped = schedule.held_polls
            cycle_started = loop.time()
            polled = skip.should_poll(cycle_started)
            if polled:
                readings = await self._poll_once(client, unit, link, skip, stats, log, hold_back)
                await hold_back.finish(readings, unit.emit, loop.time)
                stats.cycles += 1
            else:
                stats.backoff_skipped_polls += 1
                link.passed_over(cycle_started)
            now = loop.time()
            if polled:
                stats.cycle_times.observe(now - cycle_started)
            overran = hold_back.after_cycle(schedule, now)  # the time paced reads waited for the sink is held
            stats.backlog_skipped = schedule.held_polls
            if overran:
                stats.overruns = schedule.overruns
                stats.skipped_cycles = schedule.skipped_cycles
            # Overload is never silent, but it is logged once a minute, not every cycle, and once when it is over.
            # The cycle includes the hand-over to the queue, so a sink that cannot keep up shows here too.
            line = overrun_log.after_cycle(schedule, overran=overran, now=now)
            if line is not None:
                _log_overrun(log, line, interval_ms=unit.interval_ms, cycle_s=now - cycle_started, cycles=stats.cycles)
            await asyncio.sleep(schedule.deadline - now)

    async def _poll_once(
        self,
        client: ModbusTcpClient | AsyncModbusSerialClient,
        unit: ModbusUnit,
        link: _LinkState,
        skip: UnitSkip,
        stats: UnitStats,
        log: Any,
        hold_back: HoldBack,
    ) -> list[RawReading]:
        if not client.connected:
            reason = self._last_connect_error or f"not connected to {self.endpoint}"
            return self._unit_failed(unit, link, stats, reason)
        readings: list[RawReading] = []
        reads: _CycleReads
        if isinstance(client, ModbusTcpClient):
            reads = _TcpCycleReads(
                client,
                unit_id=unit.plan.unit_id,
                requests=unit.plan.requests,
                window=self.max_concurrent_requests,
                timeout_s=self._timeout_s,
                retries=self._retries,
                pace=hold_back.pace,
            )
        else:
            reads = _SerialCycleReads(self._execute, unit_id=unit.plan.unit_id, requests=unit.plan.requests)
        try:
            while (step := await reads.next()) is not None:
                request, outcome = step
                ts = self._clock()
                if isinstance(outcome, _CommFailure):
                    # The rest of the cycle is skipped (and what is in flight given up): one timeout per cycle is
                    # all a dead unit may cost the others.
                    failed = self._unit_failed(unit, link, stats, outcome.reason)
                    if outcome.timed_out:
                        stats.timeouts += 1
                        backoff = skip.on_timeout(asyncio.get_running_loop().time(), random.random())
                        if backoff is not None:
                            stats.backoffs += 1
                            link.skipped(backoff, skip.consecutive_timeouts)
                        self._count_unanswered(client)
                    return failed
                self._unanswered_in_row = 0  # any answer, even a refusal, shows the server is there
                if isinstance(outcome, _RequestFailure):
                    stats.request_errors += 1
                    log.warning("modbus_request_error", table=request.table, start=request.start,
                                count=request.count, error=outcome.reason)  # fmt: skip
                    readings += failed_readings(request, ts=ts, status=STATUS_DECODE_ERROR)
                elif isinstance(outcome, ExceptionResponse):
                    # The device answered, so the link is fine; only this block is refused (e.g. code 2, bad address).
                    stats.exception_responses += 1
                    readings += failed_readings(request, ts=ts, status=device_exception_status(outcome.code))
                elif isinstance(outcome, bytes):
                    stats.reads_ok += 1
                    readings += request.decode_block(outcome, ts=ts)
                else:
                    stats.reads_ok += 1
                    readings += request.decode(outcome, ts=ts)
                if (pace := hold_back.pace) is not None and pace.busy and readings:
                    reads.hold()  # a read in flight would answer while the sink drains: its ts would hide the wait
                    await hold_back.hand_over(readings, unit.emit, asyncio.get_running_loop().time)
                    readings = []
        finally:
            reads.abandon()
        # Any answer, exception responses included, proves the unit (and the connection) is there.
        self._answered()
        if skip.on_success():
            log.info("modbus_unit_recovered")
        link.up(asyncio.get_running_loop().time())
        return readings

    def _count_unanswered(self, client: ModbusTcpClient | AsyncModbusSerialClient) -> None:
        """TCP: close the connection after ``MAX_UNANSWERED_IN_A_ROW`` timed-out cycles with no answer between
        them (pymodbus does this itself, and never on a serial line)."""
        if not isinstance(client, ModbusTcpClient):
            return
        self._unanswered_in_row += 1
        if self._unanswered_in_row >= MAX_UNANSWERED_IN_A_ROW and client.connected:
            self._unanswered_in_row = 0
            reason = f"{MAX_UNANSWERED_IN_A_ROW} requests in a row unanswered: connection closed"
            self._log.warning("modbus_connection_closed", error=reason)
            client.close(reason)
            self._lost(reason)  # the supervisor reconnects

    def _unit_failed(self, unit: ModbusUnit, link: _LinkState, stats: UnitStats, reason: str) -> list[RawReading]:
        stats.comm_failures += 1
        link.down(reason, asyncio.get_running_loop().time())
        ts = self._clock()
        return [
            RawReading(tag=key, value=None, ts=ts, quality=Quality.BAD, status=STATUS_COMM_FAILURE)
            for key in unit.plan.keys
        ]

    async def _execute(self, unit_id: int, request: ReadRequest) -> _Outcome:
        """One read through pymodbus (RTU)."""
        read = self._readers[request.table]
        try:
            async with self._request_lock:
                response: _ReadResponse = await await_within(
                    read(request.start, count=request.count, device_id=unit_id), self._guard_s
                )
        except ConnectionException as exc:  # not connected: the connection's problem, not the unit's
            if not self.connected:
                self._lost(_reason(exc))
            return _CommFailure(_reason(exc))
        except ModbusIOException as exc:
            # pymodbus: no (matching) answer within its timeout. After retries + 3 unanswered requests in a row on
            # TCP it also closes the connection ("CLOSING CONNECTION"); the reconnect path takes over from there.
            if not self.connected:
                self._lost(_reason(exc))
            return _CommFailure(_reason(exc), timed_out=True)
        except TimeoutError:
            return _CommFailure(f"no answer within {self._guard_s:.1f} s", timed_out=True)
        except OSError as exc:
            self._lost(_reason(exc))
            return _CommFailure(_reason(exc))
        except (ValueError, ModbusException) as exc:  # client-side count checks, malformed frames
            return _RequestFailure(_reason(exc))
        except Exception as exc:  # never let one odd response kill the poller
            return _RequestFailure(f"{type(exc).__name__}: {exc}")
        if response is None or not hasattr(response, "isError"):
            return _RequestFailure(f"unexpected response {response!r}")
        if response.isError():
            code = getattr(response, "exception_code", 0)
            return ExceptionResponse(function=int(_TABLE_FUNCTIONS[request.table]), code=code)
        return response.bits if request.reads_bits else response.registers


class _CycleReads(Protocol):
    """The reads of one unit's poll cycle: ``next()`` gives (request, outcome) in plan order, None at the end;
    ``abandon()`` gives up whatever is still in flight (the cycle ended early, or was cancelled)."""

    async def next(self) -> tuple[ReadRequest, _Outcome] | None: ...

    def hold(self) -> None:
        """Give up the reads sent ahead; the next ``next()`` sends them again (the cycle waits for the sink)."""
        ...

    def abandon(self) -> None: ...


class _SerialCycleReads:
    """One read at a time through pymodbus."""

    __slots__ = ("_execute", "_next", "_requests", "_unit_id")

    def __init__(
        self,
        execute: Callable[[int, ReadRequest], Awaitable[_Outcome]],
        *,
        unit_id: int,
        requests: Sequence[ReadRequest],
    ) -> None:
        self._execute = execute
        self._unit_id = unit_id
        self._requests = requests
        self._next = 0

    async def next(self) -> tuple[ReadRequest, _Outcome] | None:
        if self._next >= len(self._requests):
            return None
        request = self._requests[self._next]
        self._next += 1
        return request, await self._execute(self._unit_id, request)

    def hold(self) -> None:
        pass  # nothing is sent ahead

    def abandon(self) -> None:
        pass  # nothing runs between two next() calls


class _TcpCycleReads:
    """Up to ``window`` reads of the cycle on the wire (our TCP client), outcomes handed out in plan order.

    No task per request: the futures of the sent reads wait in a queue; the first is awaited, and as each answer
    arrives the window is topped up again, before the answer is handed out for decoding. With ``window`` 1 it is
    one request at a time, like pymodbus. The client's own limit (``max_in_flight``) is shared by every unit of
    the connection, so several units never put more than that on the wire together; waiting for a slot does not
    count towards a request's timeout.
    """

    __slots__ = ("_client", "_next", "_pace", "_requests", "_retries", "_sent", "_timeout_s", "_unit_id", "_window")

    def __init__(
        self,
        client: ModbusTcpClient,
        *,
        unit_id: int,
        requests: Sequence[ReadRequest],
        window: int,
        timeout_s: float,
        retries: int,
        pace: Backlog | None = None,
    ) -> None:
        self._client = client
        self._pace = pace  # while it is busy, nothing is sent ahead: the loop may wait for the sink (see hold)
        self._unit_id = unit_id
        self._requests = requests
        self._window = window
        self._timeout_s = timeout_s
        self._retries = retries
        self._next = 0
        self._sent: deque[tuple[ReadRequest, asyncio.Future[ReadAnswer] | _Outcome]] = deque()

    async def next(self) -> tuple[ReadRequest, _Outcome] | None:
        await self._fill()
        if not self._sent:
            return None
        request, sent = self._sent.popleft()
        retries_left = self._retries
        while isinstance(sent, asyncio.Future):
            try:
                answer = await sent
            except ModbusTimeoutError as exc:
                if retries_left <= 0:
                    return request, _CommFailure(str(exc), timed_out=True)
                retries_left -= 1
                sent = await self._send(request)
                continue
            except ModbusConnectionError as exc:
                return request, _CommFailure(str(exc))
            except ModbusResponseError as exc:
                return request, _RequestFailure(str(exc))
            # The next read goes out before this answer is decoded, so even one request at a time overlaps the
            # round trip with the decoding; not while paced reads may wait for the sink after this one.
            if (pace := self._pace) is None or not pace.busy:
                await self._fill()
            return request, answer
        return request, sent

    async def _fill(self) -> None:
        """Send the next reads of the cycle until ``window`` of them are on the wire (or none are left); one while
        paced reads may wait for the sink (see ``hold``)."""
        requests = self._requests
        window = 1 if (pace := self._pace) is not None and pace.busy else self._window
        while len(self._sent) < window and self._next < len(requests):
            request = requests[self._next]
            self._next += 1
            self._sent.append((request, await self._send(request)))

    async def _send(self, request: ReadRequest) -> asyncio.Future[ReadAnswer] | _Outcome:
        try:
            return await self._client.send_read(
                _TABLE_FUNCTIONS[request.table],
                unit_id=self._unit_id,
                start=request.start,
                count=request.count,
                timeout_s=self._timeout_s,
            )
        except ModbusConnectionError as exc:
            return _CommFailure(str(exc))
        except ValueError as exc:  # a request the protocol cannot carry (the planner never makes one)
            return _RequestFailure(str(exc))

    def hold(self) -> None:
        self._next -= len(self._sent)  # the reads on the wire are the ones just before _next, in order
        self.abandon()

    def abandon(self) -> None:
        while self._sent:
            _, sent = self._sent.popleft()
            if isinstance(sent, asyncio.Future):
                abandon(sent)


def _log_overrun(log: Any, line: OverrunLine, *, interval_ms: int, cycle_s: float, cycles: int) -> None:
    if line.caught_up:
        log.warning("poll_caught_up", interval_ms=interval_ms, overruns=line.overruns,
                    skipped_cycles=line.skipped_cycles)  # fmt: skip
    else:
        log.warning("poll_overrun", interval_ms=interval_ms, cycle_ms=round(cycle_s * 1000, 1),
                    overruns=line.overruns, skipped_cycles=line.skipped_cycles, cycles=cycles)  # fmt: skip


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__
