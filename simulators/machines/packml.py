"""PackML base state machine (OPC 30050 / ISA-TR88.00.02) with seeded, plausible stops.

State numbers are the ones of OPC 30050 Annex B, Table B.1 (equipment notes §1.1), which is what a PLC puts on the
wire as ``PackML/Status/StateCurrent``. Do not confuse them with OPC 30060 (TMC), which renumbers the same states.

The machine only ever takes legal transitions:

* an *acting* state (Starting, Holding, ...) ends by itself after a dwell drawn from the seed (state complete);
* a *wait* state (Idle, Held, ...) ends when the simulated operator or the plant issues a command, also after a
  dwell drawn from the seed;
* in Execute, disturbances (hold, suspend on blocked/starved, stop, abort, end of roll) arrive as independent
  Poisson processes; the first one wins.

Every dwell is drawn when a state is entered, so the sequence of states depends only on the seed, never on how
finely the caller slices time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Literal


class PackMLState(IntEnum):
    """PackML state numbers per OPC 30050 Annex B (0 Undefined is the TR88 convention only)."""

    UNDEFINED = 0
    CLEARING = 1
    STOPPED = 2
    STARTING = 3
    IDLE = 4
    SUSPENDED = 5
    EXECUTE = 6
    STOPPING = 7
    ABORTING = 8
    ABORTED = 9
    HOLDING = 10
    HELD = 11
    UNHOLDING = 12
    SUSPENDING = 13
    UNSUSPENDING = 14
    RESETTING = 15
    COMPLETING = 16
    COMPLETE = 17


class PackMLCommand(StrEnum):
    """Commands (OPC 30050 §6.7 methods) plus STATE_COMPLETE, the internal 'acting state finished' event."""

    RESET = "Reset"
    START = "Start"
    STOP = "Stop"
    HOLD = "Hold"
    UNHOLD = "Unhold"
    SUSPEND = "Suspend"
    UNSUSPEND = "Unsuspend"
    ABORT = "Abort"
    CLEAR = "Clear"
    TO_COMPLETE = "ToComplete"
    STATE_COMPLETE = "StateComplete"


S = PackMLState
C = PackMLCommand

# Where each acting state goes when its action is done ("SC" in the TR88 diagram).
_STATE_COMPLETE: dict[PackMLState, PackMLState] = {
    S.CLEARING: S.STOPPED,
    S.STARTING: S.EXECUTE,
    S.STOPPING: S.STOPPED,
    S.ABORTING: S.ABORTED,
    S.HOLDING: S.HELD,
    S.UNHOLDING: S.EXECUTE,
    S.SUSPENDING: S.SUSPENDED,
    S.UNSUSPENDING: S.EXECUTE,
    S.RESETTING: S.IDLE,
    S.COMPLETING: S.COMPLETE,
}

_COMMANDED: dict[tuple[PackMLState, PackMLCommand], PackMLState] = {
    (S.STOPPED, C.RESET): S.RESETTING,
    (S.COMPLETE, C.RESET): S.RESETTING,
    (S.IDLE, C.START): S.STARTING,
    (S.EXECUTE, C.HOLD): S.HOLDING,
    (S.HELD, C.UNHOLD): S.UNHOLDING,
    (S.EXECUTE, C.SUSPEND): S.SUSPENDING,
    (S.SUSPENDED, C.UNSUSPEND): S.UNSUSPENDING,
    (S.EXECUTE, C.TO_COMPLETE): S.COMPLETING,
    (S.ABORTED, C.CLEAR): S.CLEARING,
}

# Stop is accepted in every state of the "Cleared" super-state; Abort everywhere except while aborting/aborted.
_NOT_STOPPABLE = frozenset({S.UNDEFINED, S.STOPPED, S.STOPPING, S.ABORTING, S.ABORTED, S.CLEARING})
_NOT_ABORTABLE = frozenset({S.UNDEFINED, S.ABORTING, S.ABORTED})

ACTING_STATES = frozenset(_STATE_COMPLETE)
WAIT_STATES = frozenset({S.STOPPED, S.IDLE, S.SUSPENDED, S.ABORTED, S.HELD, S.COMPLETE})


def next_state(state: PackMLState, command: PackMLCommand) -> PackMLState | None:
    """The state ``command`` leads to from ``state``, or None if the command is not allowed there."""
    if command is C.STATE_COMPLETE:
        return _STATE_COMPLETE.get(state)
    if command is C.STOP:
        return None if state in _NOT_STOPPABLE else S.STOPPING
    if command is C.ABORT:
        return None if state in _NOT_ABORTABLE else S.ABORTING
    return _COMMANDED.get((state, command))


def _all_transitions() -> frozenset[tuple[PackMLState, PackMLState]]:
    pairs = set()
    for state in PackMLState:
        for command in PackMLCommand:
            target = next_state(state, command)
            if target is not None:
                pairs.add((state, target))
    return frozenset(pairs)


LEGAL_TRANSITIONS: frozenset[tuple[PackMLState, PackMLState]] = _all_transitions()


Interlock = Literal["blocked", "starved"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """One state change, for logs and tests."""

    source: PackMLState
    target: PackMLState
    command: PackMLCommand
    at_s: float  # model time (seconds since the machine was created) when it happened


@dataclass(frozen=True, slots=True, kw_only=True)
class PackMLTiming:
    """How long states last (seconds of model time). Defaults follow equipment notes §1.1 for a web machine.

    ``*_dwell_s`` are (min, max) of a uniform draw. ``mean_s_between_*`` are the means of exponential draws for
    disturbances in Execute; None means the disturbance never happens (useful in tests).
    """

    acting_dwell_s: tuple[tuple[PackMLState, float, float], ...] = (
        (S.CLEARING, 2.0, 10.0),
        (S.STARTING, 20.0, 40.0),
        (S.STOPPING, 5.0, 30.0),
        (S.ABORTING, 0.5, 2.0),
        (S.HOLDING, 2.0, 10.0),
        (S.UNHOLDING, 2.0, 10.0),
        (S.SUSPENDING, 1.0, 5.0),
        (S.UNSUSPENDING, 1.0, 5.0),
        (S.RESETTING, 5.0, 30.0),
        (S.COMPLETING, 5.0, 20.0),
    )
    # How long the operator (or the upstream/downstream machine) takes to move a wait state on.
    wait_dwell_s: tuple[tuple[PackMLState, float, float], ...] = (
        (S.STOPPED, 30.0, 300.0),
        (S.IDLE, 10.0, 120.0),
        (S.HELD, 60.0, 600.0),
        (S.SUSPENDED, 5.0, 120.0),
        (S.ABORTED, 60.0, 900.0),
        (S.COMPLETE, 30.0, 180.0),
    )
    mean_s_between_holds: float | None = 3600.0
    mean_s_between_suspends: float | None = 900.0
    mean_s_between_stops: float | None = 4 * 3600.0
    mean_s_between_aborts: float | None = 8 * 3600.0
    mean_s_between_completes: float | None = 2 * 3600.0  # end of roll / lot

    def __post_init__(self) -> None:
        for state, low, high in (*self.acting_dwell_s, *self.wait_dwell_s):
            if not 0.0 < low <= high:
                raise ValueError(f"dwell of {state.name} must satisfy 0 < min <= max, got ({low}, {high})")
        acting = {state for state, _, _ in self.acting_dwell_s}
        waiting = {state for state, _, _ in self.wait_dwell_s}
        if acting != ACTING_STATES or waiting != WAIT_STATES:
            raise ValueError("PackMLTiming needs a dwell for every acting and every wait state")


NEVER = float("inf")

# The command the simulated operator gives to leave each wait state (other than Execute).
_OPERATOR_COMMAND: dict[PackMLState, PackMLCommand] = {
    S.STOPPED: C.RESET,
    S.IDLE: C.START,
    S.HELD: C.UNHOLD,
    S.SUSPENDED: C.UNSUSPEND,
    S.ABORTED: C.CLEAR,
    S.COMPLETE: C.RESET,
}


class PackMLMachine:
    """A PackML state machine advanced by an explicit clock. Pure: no I/O, randomness only from ``rng``."""

    __slots__ = (
        "_command",
        "_dwell",
        "_interlock",
        "_left_s",
        "_rng",
        "_state",
        "_timing",
        "_total_s",
        "time_in_state_s",
    )

    def __init__(
        self,
        *,
        rng: random.Random,
        timing: PackMLTiming | None = None,
        initial: PackMLState = PackMLState.EXECUTE,
    ) -> None:
        if initial is S.UNDEFINED:
            raise ValueError("a machine cannot start in Undefined")
        self._rng = rng
        self._timing = timing if timing is not None else PackMLTiming()
        self._dwell = {state: (low, high) for state, low, high in self._timing.acting_dwell_s}
        self._dwell.update({state: (low, high) for state, low, high in self._timing.wait_dwell_s})
        self._total_s = 0.0
        self._interlock: Interlock | None = None
        self._state: PackMLState = initial
        self.time_in_state_s = 0.0
        self._left_s = NEVER
        self._command = C.STATE_COMPLETE
        self._schedule()

    @property
    def state(self) -> PackMLState:
        return self._state

    @property
    def interlock(self) -> Interlock | None:
        """Why the machine is suspended (blocked downstream / starved upstream), else None."""
        return self._interlock

    @property
    def producing(self) -> bool:
        """True in the states where the machine runs at (or ramps towards) its set speed."""
        return self._state in (S.STARTING, S.EXECUTE, S.UNHOLDING, S.UNSUSPENDING)

    def step(self, dt_s: float) -> tuple[Transition, ...]:
        """Advance ``dt_s`` seconds; return every transition taken, in order (several if ``dt_s`` is large)."""
        transitions: list[Transition] = []
        remaining = dt_s
        while self._left_s <= remaining:
            remaining -= self._left_s
            self._total_s += self._left_s
            transitions.append(self._apply(self._command))
        self._left_s -= remaining
        self._total_s += remaining
        self.time_in_state_s += remaining
        return tuple(transitions)

    def command(self, command: PackMLCommand) -> Transition | None:
        """Apply an external command now (fault injection, tests). Returns None if it is not allowed here."""
        if command is C.STATE_COMPLETE or next_state(self._state, command) is None:
            return None
        return self._apply(command)

    def _apply(self, command: PackMLCommand) -> Transition:
        target = next_state(self._state, command)
        if target is None:  # pragma: no cover - _schedule only picks allowed commands
            raise AssertionError(f"illegal command {command} in {self._state.name}")
        transition = Transition(source=self._state, target=target, command=command, at_s=self._total_s)
        if target is S.SUSPENDING:
            self._interlock = "blocked" if self._rng.random() < 0.5 else "starved"
        elif target in (S.UNSUSPENDING, S.STOPPING, S.ABORTING):
            self._interlock = None
        self._state = target
        self.time_in_state_s = 0.0
        self._schedule()
        return transition

    def _schedule(self) -> None:
        """Draw when and how the current state will be left."""
        state = self._state
        if state is S.EXECUTE:
            timing = self._timing
            candidates = (
                (timing.mean_s_between_holds, C.HOLD),
                (timing.mean_s_between_suspends, C.SUSPEND),
                (timing.mean_s_between_stops, C.STOP),
                (timing.mean_s_between_aborts, C.ABORT),
                (timing.mean_s_between_completes, C.TO_COMPLETE),
            )
            self._left_s, self._command = NEVER, C.STATE_COMPLETE
            for mean, command in candidates:
                # Always draw, even for disabled disturbances, so enabling one does not shift the others.
                draw = self._rng.expovariate(1.0)
                wait = NEVER if mean is None else draw * mean
                if wait < self._left_s:
                    self._left_s, self._command = wait, command
            return
        low, high = self._dwell[state]
        self._left_s = self._rng.uniform(low, high)
        self._command = C.STATE_COMPLETE if state in ACTING_STATES else _OPERATOR_COMMAND[state]
