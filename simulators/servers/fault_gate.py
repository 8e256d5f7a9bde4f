"""The live fault state of one simulator server, and the waits it implies (the thin clock shell over ``FaultState``).

Both servers own one ``FaultGate``; their connection and request hooks ask it whether to refuse a connection,
how long to delay a request, whether to swallow or hold it, and which exception to answer with. See
``simulators.faults`` for the faults and their observable behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Protocol

from simulators.faults import BadValue, Fault, FaultKind, FaultState, Freeze


class FaultGate:
    """Current faults of one server, on the event loop's monotonic clock."""

    def __init__(self) -> None:
        self._state = FaultState()
        # Set (and replaced) on every change, so waiting requests re-check at once when a fault is cleared.
        self._changed = asyncio.Event()

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    @property
    def state(self) -> FaultState:
        """The active faults (expired ones removed)."""
        self._state = self._state.pruned(self.now())
        return self._state

    def set(self, fault: Fault, *, duration_s: float | None = None) -> None:
        self._state = self._state.with_fault(fault, now=self.now(), duration_s=duration_s)
        self._notify()

    def clear(self, kind: FaultKind | None = None, *, machine: str | None = None) -> None:
        self._state = self._state.without(kind, machine=machine)
        self._notify()

    def refuses_connections(self) -> bool:
        return self._state.refuses_connections(self.now())

    def is_hung(self) -> bool:
        return self._state.hang_until(self.now()) is not None

    def exception_code(self, *, table: str, start: int, count: int) -> int | None:
        return self._state.exception_code(table=table, start=start, count=count, now=self.now())

    async def delay(self) -> None:
        """Sleep for the active latency fault, if any, counted from now.

        The latency is re-read on every change, so clearing (or shortening) it releases waiting requests at
        once; otherwise a cleared fault would still slow the requests queued behind one that is waiting.
        """
        arrived = self.now()
        while (left := arrived + self._state.latency_s(self.now()) - self.now()) > 0.0:
            await self._until_change(left)

    async def wait_while_hung(self) -> None:
        """Return once no hang is active (at once if none is)."""
        while (until := self._state.hang_until(self.now())) is not None:
            await self._until_change(None if math.isinf(until) else max(until - self.now(), 0.0))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _until_change(self, timeout_s: float | None) -> None:
        """Wait for the next change of faults, or ``timeout_s`` seconds (None: no limit)."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await changed.wait()


class ConnectionCloser(Protocol):
    def drop_connections(self) -> int: ...


class FaultControlledServer:
    """What both simulator servers do with a fault once they have checked it makes sense for them.

    Subclasses set ``_gate``, keep their listening server (or None while stopped) in ``_server`` and write their
    values in ``publish()``.
    """

    _gate: FaultGate
    _server: ConnectionCloser | None

    async def publish(self) -> None:
        raise NotImplementedError

    @property
    def faults(self) -> FaultState:
        """The active faults (expired ones removed)."""
        return self._gate.state

    async def _start_fault(self, fault: Fault, *, duration_s: float | None) -> None:
        self._gate.set(fault, duration_s=duration_s)
        if fault.kind is FaultKind.DROP and self._server is not None:
            self._server.drop_connections()
        if isinstance(fault, BadValue | Freeze) and self._server is not None:
            await self.publish()  # bad and frozen points show at once, not at the next model step

    async def clear_faults(self, kind: FaultKind | None = None, *, machine: str | None = None) -> None:
        """End the faults of ``kind`` (None: all; with ``machine``, only point faults aimed at it or all);
        values are republished at once."""
        self._gate.clear(kind, machine=machine)
        if self._server is not None:
            await self.publish()

    async def drop_connections(self) -> int:
        """Close every client connection now (new ones are accepted); returns how many were open."""
        self._gate.clear(FaultKind.DROP)
        return 0 if self._server is None else self._server.drop_connections()
