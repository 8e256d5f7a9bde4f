"""Formation rack (cycler) with N channels: a pure, seeded process model.

Each channel drives one cell through a protocol: a list of steps (equipment notes §5.2, §5.6). Step kinds are
Rest (time), CC charge (to a voltage, or time / capacity), CC-CV charge (CC to ``v_max``, then CV until the current
falls to the cut-off, or time) and CC discharge (to a voltage, or time). Two protocols are built in:

* ``FormationProtocol()`` — the short v1 protocol: rest, CC-CV charge, rest (what ``config/demo.yaml`` maps);
* ``FormationProtocol.formation_and_grading()`` — the reference protocol of notes §5.2: contact check, pre-charge,
  CC charge, CC-CV charge to 4.2 V, rest, CC discharge for grading, rest, CC-CV to storage voltage. At its end the
  cell gets a grade from its discharge capacity and coulombic efficiency.

When the protocol ends the channel shows Finished for ``exchange_s`` (the operator unloads it), then a fresh cell
(new id, seeded capacity / resistance spread) starts at step 0: unformed (0.5-1 V open-circuit) and at
``CellSpec.load_temp_cel``. With a ``cell_source`` (the line model) the new cell's id is the next one the source
gives, and the channel stays Finished while the source has none. With the extended points the rack keeps a result
FIFO (``simulators.machines.results``): one record per graded cell, and per cell rejected on a contact fault.
A seeded contact fault puts the channel in Protection after step 0 until the cell is replaced.

Cell model: ``V = OCV(SOC) + I·R0 + V1`` with one RC pair ``dV1/dt = I/C1 − V1/(R1·C1)`` and
``dSOC/dt = eta·I / (3600·Q)`` (eta < 1 while charging before the first discharge: first-charge losses to SEI;
eta = 1 otherwise).
With a piecewise-linear OCV every step kind has a closed-form solution inside one OCV segment (CV: a 2x2 linear
system, solved with its eigenvalues), so the channel steps from event to event (limits, OCV breakpoints, cut-off,
end of step) and any ``dt`` gives the same state as many small ones: a caller accelerates time simply by passing
a larger ``dt``. In consequence the CV current never rises, the voltage never exceeds the CV limit and the
capacity is exactly the integral of the current. Temperature: first-order towards the plate plus I²·R heating.

The per-channel step is plain float arithmetic on slotted attributes: no allocation per channel per step.

Rack level: PackML state (channels pause while the rack is not in Execute), ambient temperature (slow random walk),
fixture clamp pressure (kPa) and plate temperature, DC bus voltage, grid power and energy, channel counts and alarms.
With ``FormationConfig(extended_points=True)`` per-step capacity / energy, power, grading results, grade and cell id
per channel and grade counters per rack are exposed as well (the default keeps the v1 point list).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from simulators.machines.packml import PackMLMachine, PackMLState, PackMLTiming
from simulators.machines.points import DataType, PointSpec, Value, check_dt
from simulators.machines.results import ResultFifo

D = DataType

# OCV of an NMC811/graphite cell at 25 Cel (equipment notes §5.6, EST). SOC below 0 is the unformed cell: fresh
# from electrolyte filling it sits near 0.5-1 V (graphite not yet lithiated) and the first ~1 % of charge of the
# pre-charge lifts it to 3 V. A formed cell never goes back there (discharges end at 3 V = SOC 0).
OCV_SOC: tuple[float, ...] = (-0.01, -0.005, 0.0, 0.05, 0.10, 0.20, 0.30, 0.50, 0.70, 0.80, 0.90, 1.00)
OCV_V: tuple[float, ...] = (0.50, 1.50, 3.00, 3.40, 3.50, 3.58, 3.63, 3.70, 3.85, 3.95, 4.07, 4.20)
CELL_ID_CHARACTERS = 16  # a channel's CellId point: 8 registers of the Modbus map, the same string in OPC UA
MIN_STEP_VOLTAGE_V = 3.00  # lowest end / CV voltage a protocol step may ask for (a formed cell's empty voltage)
_LAST_SEGMENT = len(OCV_SOC) - 2


def _segment(soc: float) -> int:
    """Index j of the OCV segment [OCV_SOC[j], OCV_SOC[j+1]) holding ``soc`` (the end segments extrapolate)."""
    return min(max(bisect_right(OCV_SOC, soc) - 1, 0), _LAST_SEGMENT)


def _slope(segment: int) -> float:
    return (OCV_V[segment + 1] - OCV_V[segment]) / (OCV_SOC[segment + 1] - OCV_SOC[segment])


_SLOPES: tuple[float, ...] = tuple(_slope(j) for j in range(_LAST_SEGMENT + 1))
# Breakpoints inside the table: a SOC left of _INNER[0] is segment 0, right of _INNER[-1] the last segment.
_INNER: tuple[float, ...] = OCV_SOC[1:-1]


def ocv(soc: float) -> float:
    """Open-circuit voltage (V) at state of charge ``soc`` (0..1; extrapolated linearly outside)."""
    j = bisect_right(_INNER, soc)  # == _segment(soc), inlined: this runs several times per channel and step
    return OCV_V[j] + _SLOPES[j] * (soc - OCV_SOC[j])


def soc_at_ocv(voltage: float) -> float:
    """Inverse of ``ocv`` (the table is strictly increasing)."""
    j = min(max(bisect_right(OCV_V, voltage) - 1, 0), _LAST_SEGMENT)
    return OCV_SOC[j] + (voltage - OCV_V[j]) / _slope(j)


class ChannelStatus(IntEnum):
    """Channel status enum of equipment notes §5.5 (Agilent + Neware semantics)."""

    IDLE = 0
    REST = 1
    CC_CHARGE = 2
    CV_CHARGE = 3
    CC_DISCHARGE = 4
    CV_DISCHARGE = 5
    PAUSE = 6
    FINISHED = 7
    PROTECTION = 8
    OFFLINE = 9
    WAITING = 10
    PULSE = 11


class StepType(IntEnum):
    REST = 0
    CC_CHARGE = 1
    CCCV_CHARGE = 2
    CC_DISCHARGE = 3
    CCCV_DISCHARGE = 4
    DCIR = 5
    OCV = 6
    WAIT = 7


class EndReason(IntEnum):
    """Why the last step ended."""

    NONE = 0
    V_LIMIT = 1
    I_CUTOFF = 2
    TIME = 3
    CAPACITY = 4
    DV_DT = 5
    USER_STOP = 6
    PROTECTION = 7
    COMM = 8


class ProtectionFlag(IntEnum):
    """Bit numbers of the channel protection word."""

    OVER_VOLTAGE = 0
    UNDER_VOLTAGE = 1
    OVER_CURRENT = 2
    OVER_TEMPERATURE = 3
    REVERSE_POLARITY = 4
    CONTACT_FAULT = 5
    CURRENT_OUT_OF_TOLERANCE = 6
    VOLTAGE_JUMP = 7


class Grade(IntEnum):
    """Grade of a formed cell (0 until a protocol with a discharge step has ended)."""

    NONE = 0
    A = 1
    B = 2
    C = 3
    NG = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolStep:
    """One protocol step. Currents are magnitudes in A (the kind gives the sign); voltages in V; times in s.

    ``voltage_v`` is the end voltage of CC steps and the CV voltage of CC-CV steps. ``max_time_s`` and
    ``max_capacity_ah`` (charge moved in this step) are optional extra end conditions; a Rest needs ``max_time_s``.
    """

    kind: StepType
    current_a: float = 0.0
    voltage_v: float = 0.0
    cutoff_current_a: float = 0.0
    max_time_s: float = math.inf
    max_capacity_ah: float = math.inf

    def __post_init__(self) -> None:
        kind = self.kind
        if kind not in _SUPPORTED_STEPS:
            raise ValueError(f"step kind {kind.name} is not simulated")
        if not self.max_time_s > 0.0 or not self.max_capacity_ah > 0.0:
            raise ValueError("max_time_s and max_capacity_ah must be > 0")
        if kind is StepType.REST:
            if not math.isfinite(self.max_time_s):
                raise ValueError("a Rest step needs a finite max_time_s")
            return
        if not self.current_a > 0.0:
            raise ValueError("current_a must be > 0 (the step kind gives the sign)")
        if not MIN_STEP_VOLTAGE_V <= self.voltage_v <= OCV_V[-1]:
            raise ValueError(f"voltage_v must be within [{MIN_STEP_VOLTAGE_V}, {OCV_V[-1]}] V")
        if kind is StepType.CCCV_CHARGE and not 0.0 < self.cutoff_current_a < self.current_a:
            raise ValueError("a CC-CV step needs 0 < cutoff_current_a < current_a")


_SUPPORTED_STEPS = frozenset({StepType.REST, StepType.CC_CHARGE, StepType.CCCV_CHARGE, StepType.CC_DISCHARGE})


@dataclass(frozen=True, slots=True, kw_only=True)
class CellSpec:
    """Nominal cell (100 Ah NMC811/graphite pouch, EST). Each loaded cell varies around it (seeded).

    The effective DC resistance of a fresh cell in formation, polarisation included, is R0 + R1 = 3 mOhm: that
    gives the CV tail of tens of minutes real formation data show.
    """

    capacity_ah: float = 100.0
    capacity_spread: float = 0.02  # relative, uniform +-
    resistance_ohm: float = 0.0015  # R0, ohmic
    rc_resistance_ohm: float = 0.0015  # R1 of the RC pair (0 = no RC pair)
    rc_time_constant_s: float = 60.0  # R1·C1
    resistance_spread: float = 0.10
    coulombic_efficiency: float = 0.90  # first charge only: ~10 % of it goes into SEI formation
    load_temp_cel: float = 25.0  # a fresh cell arrives from the (ambient) wetting store, not at plate temperature
    heat_capacity_j_per_k: float = 1500.0
    heat_transfer_w_per_k: float = 1.0
    initial_soc: tuple[float, float] = (-0.01, -0.0075)  # unformed: 0.5-1.0 V open-circuit (OCV table)

    def __post_init__(self) -> None:
        for name in ("capacity_ah", "resistance_ohm", "coulombic_efficiency", "heat_capacity_j_per_k",
                     "heat_transfer_w_per_k", "rc_time_constant_s"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0")
        if self.rc_resistance_ohm < 0.0:
            raise ValueError("rc_resistance_ohm must be >= 0")
        low, high = self.initial_soc
        if not OCV_SOC[0] <= low <= high < 0.5:
            raise ValueError(f"initial_soc must satisfy {OCV_SOC[0]} <= low <= high < 0.5")


@dataclass(frozen=True, slots=True, kw_only=True)
class FormationProtocol:
    """The per-cell protocol. Without ``steps`` it is the v1 protocol built from the scalar fields:
    Rest ``initial_rest_s``, CC-CV (``cc_current_a`` to ``v_max``, cut-off ``cutoff_current_a``), Rest
    ``final_rest_s``. Grades: discharge capacity / nominal >= ``grade_a_fraction`` is A, >= ``grade_b_fraction``
    is B, else (or coulombic efficiency < ``min_coulombic_efficiency``) C."""

    initial_rest_s: float = 60.0
    cc_current_a: float = 30.0  # 0.3C
    v_max: float = 4.20
    cutoff_current_a: float = 5.0  # 0.05C
    final_rest_s: float = 600.0
    steps: tuple[ProtocolStep, ...] = ()
    exchange_s: float = 60.0
    fault_hold_s: float = 900.0  # how long a faulted channel waits for the operator
    contact_fault_probability: float = 0.005  # per loaded cell (notes §5.6: ~0.1 %/step)
    grade_a_fraction: float = 0.96
    grade_b_fraction: float = 0.95
    min_coulombic_efficiency: float = 0.80

    def __post_init__(self) -> None:
        if not 0.0 < self.cutoff_current_a < self.cc_current_a:
            raise ValueError("need 0 < cutoff_current_a < cc_current_a")
        if not MIN_STEP_VOLTAGE_V < self.v_max <= OCV_V[-1]:
            raise ValueError(f"v_max must be within ({MIN_STEP_VOLTAGE_V}, {OCV_V[-1]}] V")
        for name in ("initial_rest_s", "final_rest_s", "exchange_s", "fault_hold_s"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0")
        if not 0.0 <= self.contact_fault_probability <= 1.0:
            raise ValueError("contact_fault_probability must be within 0..1")
        if len(self.steps) > 255:
            raise ValueError("a protocol has at most 255 steps")

    def step_list(self) -> tuple[ProtocolStep, ...]:
        if self.steps:
            return self.steps
        return (
            ProtocolStep(kind=StepType.REST, max_time_s=self.initial_rest_s),
            ProtocolStep(kind=StepType.CCCV_CHARGE, current_a=self.cc_current_a, voltage_v=self.v_max,
                         cutoff_current_a=self.cutoff_current_a),
            ProtocolStep(kind=StepType.REST, max_time_s=self.final_rest_s),
        )

    @classmethod
    def formation_and_grading(
        cls, *, capacity_ah: float = 100.0, contact_fault_probability: float = 0.005, exchange_s: float = 60.0
    ) -> FormationProtocol:
        """The reference formation + grading protocol of equipment notes §5.2 for a cell of ``capacity_ah``
        (about 14 h for a 100 Ah cell)."""
        c = capacity_ah
        steps = (
            ProtocolStep(kind=StepType.REST, max_time_s=60.0),  # contact check
            ProtocolStep(kind=StepType.CC_CHARGE, current_a=0.03 * c, voltage_v=3.40, max_time_s=3 * 3600.0),
            ProtocolStep(kind=StepType.CC_CHARGE, current_a=0.10 * c, voltage_v=3.90, max_capacity_ah=0.40 * c),
            ProtocolStep(kind=StepType.CCCV_CHARGE, current_a=0.30 * c, voltage_v=4.20, cutoff_current_a=0.05 * c,
                         max_time_s=4 * 3600.0),
            ProtocolStep(kind=StepType.REST, max_time_s=1800.0),
            ProtocolStep(kind=StepType.CC_DISCHARGE, current_a=0.30 * c, voltage_v=3.00, max_time_s=5 * 3600.0),
            ProtocolStep(kind=StepType.REST, max_time_s=1800.0),
            # Storage charge: CC to 3.7 V takes ~50 min from empty, the CV tail to 0.05C ~1.5 h more.
            ProtocolStep(kind=StepType.CCCV_CHARGE, current_a=0.30 * c, voltage_v=3.70, cutoff_current_a=0.05 * c,
                         max_time_s=4 * 3600.0),
        )
        return cls(steps=steps, cc_current_a=0.30 * c, cutoff_current_a=0.05 * c,
                   contact_fault_probability=contact_fault_probability, exchange_s=exchange_s)

    @property
    def grades_cells(self) -> bool:
        return any(step.kind is StepType.CC_DISCHARGE for step in self.step_list())


# Internal phases of a channel (beyond "running step k").
_RUN, _FAULT, _EXCHANGE = 0, 1, 2
_STATUS_OF_KIND = {
    StepType.REST: ChannelStatus.REST,
    StepType.CC_CHARGE: ChannelStatus.CC_CHARGE,
    StepType.CCCV_CHARGE: ChannelStatus.CC_CHARGE,
    StepType.CC_DISCHARGE: ChannelStatus.CC_DISCHARGE,
}
ACTIVE_STATUSES = frozenset({ChannelStatus.REST, ChannelStatus.CC_CHARGE, ChannelStatus.CV_CHARGE,
                             ChannelStatus.CC_DISCHARGE})
_BISECTIONS = 64  # enough to pin an event time to the last bit of a double


class FormationChannel:
    """One power channel and the cell in it."""

    __slots__ = (
        "_cell",
        "_cell_id_prefix",
        "_cell_id_text",
        "_charge_before_grading",
        "_charge_eta",
        "_cv",
        "_fault_pending",
        "_noise",
        "_phase",
        "_protocol",
        "_rc_r",
        "_rc_tau",
        "_rng",
        "_steps",
        "capacity_ah",
        "cell_capacity_ah",
        "cell_serial",
        "cell_source",
        "cell_time_s",
        "cells_completed",
        "current",
        "discharge_ah",
        "end_reason",
        "energy_wh",
        "finished",
        "grade",
        "grades",
        "paused",
        "protection_flags",
        "resistance_ohm",
        "result_charge_ah",
        "result_discharge_ah",
        "soc",
        "step_capacity_ah",
        "step_energy_wh",
        "step_pos",
        "step_time_s",
        "temperature",
        "v1",
    )

    def __init__(
        self,
        *,
        rng: random.Random,
        cell: CellSpec | None = None,
        protocol: FormationProtocol | None = None,
        plate_temp_cel: float = 45.0,
        noise: bool = True,
        cell_serial: int = 0,
        cell_id_prefix: str = "CELL-",
    ) -> None:
        self._rng = rng
        self._cell_id_prefix = cell_id_prefix
        self._cell = cell if cell is not None else CellSpec()
        self._protocol = protocol if protocol is not None else FormationProtocol()
        self._steps = self._protocol.step_list()
        self._noise = noise
        self.temperature = plate_temp_cel
        self.cells_completed = 0
        self.grades = [0, 0, 0, 0, 0]  # cells per Grade value since the rack started
        self.end_reason = EndReason.NONE
        self.paused = False
        self.grade = Grade.NONE
        self.result_charge_ah = 0.0
        self.result_discharge_ah = 0.0
        # Every cell that ended since the owner last cleared it, at the moment it ended (a step longer than a
        # protocol's last minutes may grade one cell, load the next and reject that one on a contact fault):
        # (cell id, first charge A.h, discharge A.h, grade).
        self.finished: list[tuple[str, float, float, Grade]] = []
        self.cell_serial = cell_serial
        # Where the next cell comes from (the line model: the stacker's finished cells); None: a seeded own id.
        # A source that has no cell keeps the channel Finished (starved) until it has one.
        self.cell_source: Callable[[], str | None] | None = None
        self._cell_id_text = ""
        self._load_cell()

    # ------------------------------------------------------------------------------------------ state

    @property
    def phase_name(self) -> str:
        if self._phase == _FAULT:
            return "fault"
        if self._phase == _EXCHANGE:
            return "exchange"
        return f"step{self.step_pos}" + ("_cv" if self._cv else "")

    @property
    def status(self) -> ChannelStatus:
        if self.paused:
            return ChannelStatus.PAUSE
        if self._phase == _FAULT:
            return ChannelStatus.PROTECTION
        if self._phase == _EXCHANGE:
            return ChannelStatus.FINISHED
        return ChannelStatus.CV_CHARGE if self._cv else _STATUS_OF_KIND[self._steps[self.step_pos].kind]

    @property
    def step_index(self) -> int:
        return self.step_pos

    @property
    def step_type(self) -> StepType:
        return self._steps[self.step_pos].kind

    @property
    def rc_resistance_ohm(self) -> float:
        """R1 of the RC pair of the cell in the channel (after the seeded spread)."""
        return self._rc_r

    @property
    def charge_limit_v(self) -> float:
        """Upper voltage limit of the running step if it charges, else +inf."""
        if self._phase == _RUN and self._steps[self.step_pos].kind is not StepType.CC_DISCHARGE:
            return self._steps[self.step_pos].voltage_v or math.inf
        return math.inf

    @property
    def cell_id(self) -> str:
        return self._cell_id_text

    @property
    def voltage(self) -> float:
        """Terminal voltage (V) right now, without measurement noise."""
        v = ocv(self.soc) + self.current * self.resistance_ohm + self.v1
        if self._cv:
            return self._steps[self.step_pos].voltage_v  # held by the channel (equal up to rounding)
        return v

    def _load_cell(self, cell_id: str | None = None) -> None:
        rng, cell = self._rng, self._cell
        self.cell_capacity_ah = cell.capacity_ah * (1.0 + rng.uniform(-cell.capacity_spread, cell.capacity_spread))
        spread = 1.0 + rng.uniform(-cell.resistance_spread, cell.resistance_spread)
        self.resistance_ohm = cell.resistance_ohm * spread
        self._rc_r = cell.rc_resistance_ohm * spread
        self._rc_tau = cell.rc_time_constant_s
        self.soc = rng.uniform(*cell.initial_soc)
        self._fault_pending = rng.random() < self._protocol.contact_fault_probability
        self.capacity_ah = 0.0
        self.energy_wh = 0.0
        self.discharge_ah = 0.0
        self.current = 0.0
        self.v1 = 0.0
        self.cell_time_s = 0.0
        self.protection_flags = 0
        self._charge_before_grading = 0.0
        self._charge_eta = cell.coulombic_efficiency  # until the first discharge: SEI formation takes its share
        self.temperature = cell.load_temp_cel
        self.cell_serial += 1
        self._cell_id_text = cell_id if cell_id is not None else f"{self._cell_id_prefix}{self.cell_serial:08d}"
        self._phase = _RUN
        self._enter_step(0)

    def _enter_step(self, pos: int) -> None:
        self.step_pos = pos
        self.step_time_s = 0.0
        self.step_capacity_ah = 0.0
        self.step_energy_wh = 0.0
        self._cv = False
        if self._steps[pos].kind is StepType.CC_DISCHARGE and self._charge_before_grading == 0.0:
            self._charge_before_grading = self.capacity_ah  # charge put in before grading (first charge)
            self._charge_eta = 1.0  # the SEI is formed: later charges store all their charge

    def _end_step(self, reason: EndReason) -> None:
        self.end_reason = reason
        if self.step_pos == 0 and self._fault_pending:
            self.protection_flags = 1 << ProtectionFlag.CONTACT_FAULT
            self.end_reason = EndReason.PROTECTION
            self.current = 0.0
            self._phase = _FAULT
            self.step_time_s = 0.0
            self.grade = Grade.NG
            self.grades[Grade.NG] += 1
            self.finished.append((self._cell_id_text, 0.0, 0.0, Grade.NG))
            return
        if self.step_pos + 1 < len(self._steps):
            self._enter_step(self.step_pos + 1)
            return
        # Protocol complete: grade the cell, then wait for the operator to exchange it.
        self.cells_completed += 1
        self.result_charge_ah = self._charge_before_grading or self.capacity_ah
        self.result_discharge_ah = self.discharge_ah
        if self._protocol.grades_cells:
            self.grade = self._grade()
            self.grades[self.grade] += 1
            self.finished.append((self._cell_id_text, self.result_charge_ah, self.result_discharge_ah, self.grade))
        self._phase = _EXCHANGE
        self.step_time_s = 0.0
        self.current = 0.0

    def _grade(self) -> Grade:
        protocol = self._protocol
        nominal = self._cell.capacity_ah
        efficiency = self.discharge_ah / self.result_charge_ah if self.result_charge_ah > 0.0 else 0.0
        if efficiency < protocol.min_coulombic_efficiency:
            return Grade.C
        if self.discharge_ah >= protocol.grade_a_fraction * nominal:
            return Grade.A
        if self.discharge_ah >= protocol.grade_b_fraction * nominal:
            return Grade.B
        return Grade.C

    # ------------------------------------------------------------------------------------------ dynamics

    def step(self, dt_s: float, *, plate_temp_cel: float, paused: bool = False) -> None:
        """Advance ``dt_s`` seconds. While ``paused`` the protocol does not progress and no current flows."""
        check_dt(dt_s)
        self.paused = paused
        if paused:
            self.current = 0.0
            self._relax(dt_s)
            self._heat(dt_s, 0.0, plate_temp_cel)
            return
        remaining = dt_s
        # Each handler consumes time up to its next event; an event may consume none. The loop ends because
        # every step either consumes time or ends (and rests, faults and the exchange have durations > 0).
        guard = 4 * len(self._steps) + 64
        while remaining > 0.0:
            used = self._advance(remaining, plate_temp_cel)
            remaining -= used
            if used == 0.0:
                guard -= 1
                if guard < 0:  # pragma: no cover - a protocol whose steps all end at once (e.g. CC to a V passed)
                    raise RuntimeError("formation channel made no progress")

    def _advance(self, remaining: float, plate: float) -> float:
        phase = self._phase
        if phase != _RUN:
            hold = self._protocol.fault_hold_s if phase == _FAULT else self._protocol.exchange_s
            used = min(remaining, hold - self.step_time_s)
            self.current = 0.0
            self._relax(used)
            self._heat(used, 0.0, plate)
            self.step_time_s += used
            self.cell_time_s += used
            if self.step_time_s >= hold:
                if self.cell_source is None:
                    self._load_cell()
                else:
                    cell_id = self.cell_source()
                    if cell_id is None:
                        self.step_time_s = hold  # no cell to load: wait, Finished, until the line brings one
                        return remaining
                    self._load_cell(cell_id)
            return used
        step = self._steps[self.step_pos]
        kind = step.kind
        time_left = step.max_time_s - self.step_time_s
        if time_left <= 0.0:
            self._end_step(EndReason.TIME)
            return 0.0
        if kind is StepType.REST:
            used = min(remaining, time_left)
            self.current = 0.0
            self._relax(used)
            self._heat(used, 0.0, plate)
            self._elapse(used, 0.0, 0.0)
            if used == time_left:
                self._end_step(EndReason.TIME)
            return used
        if self._cv:
            return self._advance_cv(step, min(remaining, time_left), time_left, plate)
        return self._advance_cc(step, min(remaining, time_left), time_left, plate)

    def _elapse(self, used: float, charge_ah: float, energy_wh: float) -> None:
        """Count time, charge (signed Ah) and energy (signed Wh) of the current step and cell."""
        self.step_time_s += used
        self.cell_time_s += used
        if charge_ah >= 0.0:
            self.capacity_ah += charge_ah
            self.energy_wh += energy_wh
        else:
            self.discharge_ah -= charge_ah
        self.step_capacity_ah += abs(charge_ah)
        self.step_energy_wh += abs(energy_wh)

    def _relax(self, dt_s: float) -> None:
        """RC-pair voltage with no current: exact exponential decay."""
        if self.v1 != 0.0 and dt_s > 0.0:
            self.v1 *= math.exp(-dt_s / self._rc_tau)

    def _cc_state(self, current: float, soc_rate: float, t: float) -> tuple[float, float, float]:
        """(soc, v1, terminal V) after ``t`` s at constant ``current``, from the present state."""
        soc = self.soc + soc_rate * t
        target = current * self._rc_r
        v1 = target + (self.v1 - target) * math.exp(-t / self._rc_tau)
        return soc, v1, ocv(soc) + current * self.resistance_ohm + v1

    def _advance_cc(self, step: ProtocolStep, span: float, time_left: float, plate: float) -> float:
        charging = step.kind is not StepType.CC_DISCHARGE
        current = step.current_a if charging else -step.current_a
        limit = step.voltage_v
        efficiency = self._charge_eta if charging else 1.0
        soc_rate = efficiency * current / (3600.0 * self.cell_capacity_ah)
        v_start = ocv(self.soc) + current * self.resistance_ohm + self.v1
        if (v_start >= limit) if charging else (v_start <= limit):
            return self._cc_limit_reached(step)
        capacity_left = step.max_capacity_ah - self.step_capacity_ah
        to_capacity = capacity_left * 3600.0 / step.current_a
        used = min(span, to_capacity)
        soc, v1, v_end = self._cc_state(current, soc_rate, used)
        event = EndReason.NONE
        if (v_end >= limit) if charging else (v_end <= limit):
            # The voltage limit comes first: find the moment it is reached (V is monotonic within a CC step).
            low, high = 0.0, used
            for _ in range(_BISECTIONS):
                mid = (low + high) / 2.0
                _, _, v_mid = self._cc_state(current, soc_rate, mid)
                if (v_mid >= limit) if charging else (v_mid <= limit):
                    high = mid
                else:
                    low = mid
                if high - low <= 1e-9 * max(high, 1.0):
                    break
            used = high
            soc, v1, v_end = self._cc_state(current, soc_rate, used)
            event = EndReason.V_LIMIT
        elif used == to_capacity:
            event = EndReason.CAPACITY
        elif used == time_left:
            event = EndReason.TIME
        _, _, v_mid = self._cc_state(current, soc_rate, used / 2.0)
        charge_ah = current * used / 3600.0
        energy_wh = charge_ah * (v_start + 4.0 * v_mid + v_end) / 6.0  # Simpson
        self.soc, self.v1, self.current = soc, v1, current
        self._heat(used, current, plate)
        self._elapse(used, charge_ah, energy_wh)
        if event is EndReason.V_LIMIT:
            self._cc_limit_reached(step)
        elif event is not EndReason.NONE:
            self._end_step(event)
        return used

    def _cc_limit_reached(self, step: ProtocolStep) -> float:
        if step.kind is StepType.CCCV_CHARGE:
            self._cv = True  # CC -> CV inside the same step
        else:
            self._end_step(EndReason.V_LIMIT)
        return 0.0

    def _cv_modes(self, v_cv: float) -> tuple[float, float, float, float, float, float]:
        """Exact CV solution inside the present OCV segment: I(t) = a1·e^{l1 t} + a2·e^{l2 t} and
        V1(t) = b1·e^{l1 t} + b2·e^{l2 t}; returns (l1, l2, a1, a2, b1, b2)."""
        r0 = self.resistance_ohm
        g = self._charge_eta / (3600.0 * self.cell_capacity_ah)
        k = _slope(_segment(self.soc))
        i0 = (v_cv - ocv(self.soc) - self.v1) / r0
        y0 = self.v1
        if self._rc_r <= 0.0:
            rate = -k * g / r0
            return rate, rate, i0, 0.0, 0.0, 0.0
        tau1 = self._rc_tau
        inv_c1 = self._rc_r / tau1
        # d[I, V1]/dt = M [I, V1]: from V = OCV(SOC) + I·R0 + V1 held constant.
        m11 = -(k * g + inv_c1) / r0
        m12 = 1.0 / (tau1 * r0)
        m21 = inv_c1
        m22 = -1.0 / tau1
        half_trace = (m11 + m22) / 2.0
        root = math.sqrt(max(half_trace * half_trace - (m11 * m22 - m12 * m21), 0.0))
        l1, l2 = half_trace + root, half_trace - root  # l2 < l1 < 0; l1 is the slow (CV tail) mode
        span = l1 - l2
        a1 = ((m11 - l2) * i0 + m12 * y0) / span
        a2 = -((m11 - l1) * i0 + m12 * y0) / span
        b1 = (m21 * i0 + (m22 - l2) * y0) / span
        b2 = -(m21 * i0 + (m22 - l1) * y0) / span
        return l1, l2, a1, a2, b1, b2

    @staticmethod
    def _cv_at(modes: tuple[float, float, float, float, float, float], t: float) -> tuple[float, float, float]:
        """(current, V1, charge in A·s) at time ``t`` of the CV solution ``modes``."""
        l1, l2, a1, a2, b1, b2 = modes
        e1, e2 = math.exp(l1 * t), math.exp(l2 * t)
        charge = a1 * math.expm1(l1 * t) / l1 + (a2 * math.expm1(l2 * t) / l2 if a2 != 0.0 else 0.0)
        return a1 * e1 + a2 * e2, b1 * e1 + b2 * e2, charge

    def _advance_cv(self, step: ProtocolStep, span: float, time_left: float, plate: float) -> float:
        v_cv = step.voltage_v
        cutoff = step.cutoff_current_a
        current_now = (v_cv - ocv(self.soc) - self.v1) / self.resistance_ohm
        if current_now <= cutoff:
            self.current = max(current_now, 0.0)
            self._end_step(EndReason.I_CUTOFF)
            return 0.0
        g = self._charge_eta / (3600.0 * self.cell_capacity_ah)
        j = _segment(self.soc)
        boundary = OCV_SOC[j + 1] if j < _LAST_SEGMENT else math.inf
        modes = self._cv_modes(v_cv)
        used = span
        current, v1, charge = self._cv_at(modes, used)
        event = EndReason.TIME if used == time_left else EndReason.NONE
        crossed = self.soc + g * charge >= boundary
        if current <= cutoff or crossed:
            # Find the first of: cut-off reached, OCV breakpoint reached (both are monotonic in t).
            low, high = 0.0, used
            for _ in range(_BISECTIONS):
                mid = (low + high) / 2.0
                i_mid, _, q_mid = self._cv_at(modes, mid)
                if i_mid <= cutoff or self.soc + g * q_mid >= boundary:
                    high = mid
                else:
                    low = mid
                if high - low <= 1e-9 * max(high, 1.0):
                    break
            used = high
            current, v1, charge = self._cv_at(modes, used)
            if current <= cutoff:
                event = EndReason.I_CUTOFF
            else:
                event = EndReason.NONE
                crossed = True
        soc = self.soc + g * charge
        if crossed and event is EndReason.NONE:
            soc = boundary  # land exactly on the breakpoint so the next segment starts cleanly
        self.soc, self.v1, self.current = soc, v1, max(current, 0.0)
        charge_ah = charge / 3600.0
        self._heat(used, charge / used if used > 0.0 else current, plate)
        self._elapse(used, charge_ah, v_cv * charge_ah)
        if event is not EndReason.NONE:
            self._end_step(event)
        return used

    def _heat(self, dt_s: float, current: float, plate: float) -> None:
        """Cell temperature: exact first-order response to the plate plus I²R self-heating."""
        if dt_s <= 0.0:
            return
        cell = self._cell
        resistance = self.resistance_ohm + self._rc_r
        equilibrium = plate + current * current * resistance / cell.heat_transfer_w_per_k
        tau = cell.heat_capacity_j_per_k / cell.heat_transfer_w_per_k
        self.temperature += (equilibrium - self.temperature) * (1.0 - math.exp(-dt_s / tau))

    # ------------------------------------------------------------------------------------------ values

    def readings(self) -> tuple[float, float, float]:
        """(voltage V, current A, temperature Cel) as the channel measures them (with noise if enabled)."""
        v, i, t = self.voltage, self.current, self.temperature
        if self._noise:
            v += self._rng.gauss(0.0, 0.0002)
            if i != 0.0:
                i += self._rng.gauss(0.0, 0.005)
            t += self._rng.gauss(0.0, 0.03)
        if self.current > 0.0:
            # The channel regulates on its own measurement, so what it reports never exceeds a charge limit.
            v = min(v, self.charge_limit_v)
        return v, i, t


def _rack_timing() -> PackMLTiming:
    # A formation rack runs for days: rare holds (tray handling), no routine stops or end-of-lot completes.
    return PackMLTiming(
        mean_s_between_holds=6 * 3600.0,
        mean_s_between_suspends=4 * 3600.0,
        mean_s_between_stops=None,
        mean_s_between_aborts=48 * 3600.0,
        mean_s_between_completes=None,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FormationConfig:
    """Rack parameters. ``FormationConfig.full()`` is the complete rack of the issue (formation + grading
    protocol, extended points); the plain default keeps the v1 protocol and point list."""

    channels: int = 64
    cell: CellSpec = field(default_factory=CellSpec)
    protocol: FormationProtocol = field(default_factory=FormationProtocol)
    clamp_pressure_sp_kpa: float = 300.0
    plate_temp_sp_cel: float = 45.0
    ambient_mean_cel: float = 27.0
    ambient_high_cel: float = 40.0
    dc_bus_voltage_v: float = 380.0
    aux_power_kw: float = 1.5
    converter_efficiency: float = 0.92
    extended_points: bool = False
    noise: bool = True
    stagger: bool = True  # start each channel at a random point of its protocol (a rack that has been running)
    packml: PackMLTiming = field(default_factory=_rack_timing)
    initial_state: PackMLState = PackMLState.EXECUTE
    # A channel's own cell ids (without a line model feeding it): prefix + 8-digit serial, where channel n counts
    # from n x stride. The simulators give each rack its own prefix, so no two racks name a cell alike.
    cell_id_prefix: str = "CELL-"
    cell_serial_stride: int = 1_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= 1024:
            raise ValueError("channels must be 1..1024")
        longest = len(self.cell_id_prefix) + len(f"{(self.channels + 1) * self.cell_serial_stride:08d}")
        if self.cell_serial_stride < 1 or longest > CELL_ID_CHARACTERS:
            raise ValueError(f"cell ids must fit the {CELL_ID_CHARACTERS}-character CellId: prefix "
                             f"{self.cell_id_prefix!r} with stride {self.cell_serial_stride} gives {longest}")

    @classmethod
    def full(cls, *, channels: int = 64, noise: bool = True, cell_id_prefix: str = "CELL-",
             cell_serial_stride: int = 1_000_000) -> FormationConfig:
        cell = CellSpec()
        return cls(channels=channels, cell=cell,
                   protocol=FormationProtocol.formation_and_grading(capacity_ah=cell.capacity_ah),
                   extended_points=True, noise=noise, cell_id_prefix=cell_id_prefix,
                   cell_serial_stride=cell_serial_stride)


def channel_name(n: int, channels: int) -> str:
    """``Ch001`` .. ``Ch256`` (at least three digits)."""
    return f"Ch{n:0{max(3, len(str(channels)))}d}"


def formation_rack_points(channels: int, *, extended: bool = False) -> tuple[PointSpec, ...]:
    """The rack's points: v1 list (what ``config/demo.yaml`` and the Modbus map cover), plus with ``extended``
    the grade counters per rack and ``CHANNEL_EXTRA_SUFFIXES`` per channel after each channel's v1 points."""
    p = PointSpec
    rack = (
        p(name="Rack.StateCurrent", data_type=D.INT32, unit=None, min=0, max=17,
          description="Rack PackML state number per OPC 30050 Annex B (6 = Execute)."),
        p(name="Rack.ChannelCount", data_type=D.UINT32, unit=None, min=1, max=1024,
          description="Number of channels in the rack."),
        p(name="Rack.Heartbeat", data_type=D.UINT32, unit=None, min=0, max=65535,
          description="Controller watchdog counter: +1 per second, wraps from 65535 to 0."),
        p(name="Rack.AlarmWord", data_type=D.UINT32, unit=None, min=0, max=65535,
          description="Rack alarms as bits: b0 ambient high, b1 clamp pressure low, b2 a channel is in protection."),
        p(name="Rack.ChannelsActive", data_type=D.UINT32, unit=None, min=0, max=channels,
          description="Channels resting or charging a cell."),
        p(name="Rack.ChannelsFaulted", data_type=D.UINT32, unit=None, min=0, max=channels,
          description="Channels in protection."),
        p(name="Rack.CellsCompleted", data_type=D.UINT32, unit=None, min=0, max=4294967295,
          description="Cells that finished the protocol since the rack started."),
        p(name="Rack.DcBusVoltage", data_type=D.DOUBLE, unit="V", min=0, max=800,
          description="Voltage of the shared DC bus that feeds the channels."),
        p(name="Rack.GridPower", data_type=D.DOUBLE, unit="kW", min=-100, max=150,
          description="Active power drawn from the grid (negative when recovered energy is fed back)."),
        p(name="Rack.ActiveEnergy", data_type=D.DOUBLE, unit="kW.h", min=0, max=None,
          description="Energy drawn from the grid since the rack started; never decreases."),
        p(name="Rack.AmbientTemp", data_type=D.DOUBLE, unit="Cel", min=-10, max=60,
          description="Air temperature around the rack."),
        p(name="Rack.ClampPressure", data_type=D.DOUBLE, unit="kPa", min=0, max=1500,
          description="Pouch fixture clamp pressure; 0 while the fixtures are open."),
        p(name="Rack.ClampPressureSP", data_type=D.DOUBLE, unit="kPa", min=0, max=1500,
          description="Pouch fixture clamp pressure set point."),
        p(name="Rack.PlateTemp", data_type=D.DOUBLE, unit="Cel", min=0, max=100,
          description="Temperature of the heated fixture plates."),
        p(name="Rack.Uptime", data_type=D.UINT32, unit="s", min=0, max=4294967295,
          description="Seconds since the rack controller started."),
        p(name="Rack.AirflowOk", data_type=D.BOOLEAN, unit=None,
          description="Cabinet ventilation works (false when the ambient temperature is too high)."),
        p(name="Rack.DoorClosed", data_type=D.BOOLEAN, unit=None,
          description="The rack door is closed (it is open while trays are handled)."),
        p(name="Alarms.AmbientHigh", data_type=D.BOOLEAN, unit=None,
          description="Ambient temperature above the alarm limit."),
        p(name="Alarms.ClampPressureLow", data_type=D.BOOLEAN, unit=None,
          description="Clamp pressure below 80 % of its set point while forming."),
        p(name="Alarms.ChannelFault", data_type=D.BOOLEAN, unit=None,
          description="At least one channel is in protection."),
    )
    per_channel: list[PointSpec] = []
    for n in range(1, channels + 1):
        c = channel_name(n, channels)
        per_channel += [
            p(name=f"{c}.Status", data_type=D.UINT32, unit=None, min=0, max=11,
              description=f"Channel {n} status (0 Idle, 1 Rest, 2 CC charge, 3 CV charge, 6 Pause, 7 Finished, "
                          "8 Protection)."),
            p(name=f"{c}.StepIndex", data_type=D.UINT32, unit=None, min=0, max=255,
              description=f"Channel {n} protocol step index."),
            p(name=f"{c}.StepType", data_type=D.UINT32, unit=None, min=0, max=7,
              description=f"Channel {n} step type (0 Rest, 2 CC-CV charge)."),
            p(name=f"{c}.ProtectionFlags", data_type=D.UINT32, unit=None, min=0, max=65535,
              description=f"Channel {n} protection bits (b0 OV, b1 UV, b2 OC, b3 OT, b5 contact fault)."),
            p(name=f"{c}.Voltage", data_type=D.DOUBLE, unit="V", min=0, max=5,
              description=f"Channel {n} cell voltage."),
            p(name=f"{c}.Current", data_type=D.DOUBLE, unit="A", min=-120, max=120,
              description=f"Channel {n} cell current (positive = charge)."),
            p(name=f"{c}.Capacity", data_type=D.DOUBLE, unit="A.h", min=0, max=200,
              description=f"Channel {n} charge put into the current cell (integral of the current)."),
            p(name=f"{c}.Energy", data_type=D.DOUBLE, unit="W.h", min=0, max=700,
              description=f"Channel {n} energy put into the current cell."),
            p(name=f"{c}.Temperature", data_type=D.DOUBLE, unit="Cel", min=-20, max=80,
              description=f"Channel {n} cell temperature."),
            p(name=f"{c}.EndReason", data_type=D.UINT32, unit=None, min=0, max=8,
              description=f"Channel {n} reason the last step ended (2 current cut-off, 3 time, 7 protection)."),
            p(name=f"{c}.StepTime", data_type=D.UINT32, unit="s", min=0, max=4294967295,
              description=f"Channel {n} time in the current step."),
            p(name=f"{c}.CellTime", data_type=D.UINT32, unit="s", min=0, max=4294967295,
              description=f"Channel {n} time since the current cell was loaded."),
            p(name=f"{c}.CellsCompleted", data_type=D.UINT32, unit=None, min=0, max=4294967295,
              description=f"Channel {n} cells that finished the protocol since the rack started."),
            p(name=f"{c}.ProtectionAlarm", data_type=D.BOOLEAN, unit=None,
              description=f"Channel {n} is in protection."),
        ]
    if not extended:
        return (*rack, *per_channel)
    rack_extra = tuple(
        p(name=f"Rack.Cells{grade.name.title() if grade is not Grade.NG else 'NG'}", data_type=D.UINT32, unit=None,
          min=0, max=4294967295, description=f"Cells graded {grade.name} since the rack started.")
        for grade in (Grade.A, Grade.B, Grade.C, Grade.NG)
    )
    extra: list[PointSpec] = []
    for n in range(1, channels + 1):
        c = channel_name(n, channels)
        extra += [
            p(name=f"{c}.StepCapacity", data_type=D.DOUBLE, unit="A.h", min=0, max=150,
              description=f"Channel {n} charge moved in the current step (integral of |current|)."),
            p(name=f"{c}.StepEnergy", data_type=D.DOUBLE, unit="W.h", min=0, max=700,
              description=f"Channel {n} energy moved in the current step."),
            p(name=f"{c}.Power", data_type=D.DOUBLE, unit="W", min=-600, max=600,
              description=f"Channel {n} power V x I (positive = charge)."),
            p(name=f"{c}.DischargeCapacity", data_type=D.DOUBLE, unit="A.h", min=0, max=150,
              description=f"Channel {n} charge taken out of the current cell."),
            p(name=f"{c}.ResultChargeCapacity", data_type=D.DOUBLE, unit="A.h", min=0, max=150,
              description=f"Channel {n} first-charge capacity of the last finished cell."),
            p(name=f"{c}.ResultDischargeCapacity", data_type=D.DOUBLE, unit="A.h", min=0, max=150,
              description=f"Channel {n} graded discharge capacity of the last finished cell."),
            p(name=f"{c}.ResultCoulombicEfficiency", data_type=D.DOUBLE, unit="%", min=0, max=100,
              description=f"Channel {n} discharge / first charge of the last finished cell."),
            p(name=f"{c}.Grade", data_type=D.UINT32, unit=None, min=0, max=4,
              description=f"Channel {n} grade of the last finished cell (0 none, 1 A, 2 B, 3 C, 4 NG)."),
            p(name=f"{c}.CellId", data_type=D.STRING, unit=None,
              description=f"Channel {n} id of the cell in the channel."),
        ]
    results = ResultFifo(unit="cell", fields=formation_result_fields()).points if extended else ()
    return (*rack, *rack_extra, *per_channel, *extra, *results)


def formation_result_fields() -> tuple[PointSpec, ...]:
    """Fields of the per-cell record the rack keeps for every graded cell (extended points only)."""
    p = PointSpec
    return (
        p(name="Result.CellId", data_type=D.STRING, unit=None, description="Id of the graded cell."),
        p(name="Result.Channel", data_type=D.UINT32, unit=None, min=0, max=1024,
          description="Channel (1-based) that formed the cell; 0 while no record is presented."),
        p(name="Result.FirstChargeCapacity", data_type=D.DOUBLE, unit="A.h", min=0, max=150,
          description="Charge put in before grading (first charge, SEI losses included)."),
        p(name="Result.DischargeCapacity", data_type=D.DOUBLE, unit="A.h", min=0, max=150,
          description="Graded discharge capacity."),
        p(name="Result.CoulombicEfficiency", data_type=D.DOUBLE, unit="%", min=0, max=100,
          description="Discharge / first charge."),
        p(name="Result.Grade", data_type=D.UINT32, unit=None, min=0, max=4,
          description="Grade (1 A, 2 B, 3 C, 4 NG: contact fault, no capacity measured)."),
    )


CHANNEL_EXTRA_SUFFIXES = ("StepCapacity", "StepEnergy", "Power", "DischargeCapacity", "ResultChargeCapacity",
                          "ResultDischargeCapacity", "ResultCoulombicEfficiency", "Grade", "CellId")




# Fixtures are clamped (and the door closed) in these rack states; they open for tray handling otherwise.
_CLAMPED_STATES = frozenset({
    PackMLState.STARTING, PackMLState.EXECUTE, PackMLState.SUSPENDING, PackMLState.SUSPENDED,
    PackMLState.UNSUSPENDING, PackMLState.UNHOLDING, PackMLState.HOLDING, PackMLState.COMPLETING,
})
_PROTECTION = ChannelStatus.PROTECTION


class FormationRack:
    """A rack of ``config.channels`` formation channels. Construct with a seeded ``random.Random``."""

    def __init__(self, *, rng: random.Random, config: FormationConfig | None = None) -> None:
        self.config = cfg = config if config is not None else FormationConfig()
        self._rng = rng
        self.packml = PackMLMachine(rng=rng, timing=cfg.packml, initial=cfg.initial_state)
        self._points = formation_rack_points(cfg.channels, extended=cfg.extended_points)
        names = [channel_name(n, cfg.channels) for n in range(1, cfg.channels + 1)]
        self._names = names
        # Point names per channel, built once: the publish loop must not format strings.
        self._keys = [tuple(f"{name}.{suffix}" for suffix in _CHANNEL_SUFFIXES) for name in names]
        self._extra_keys = [tuple(f"{name}.{suffix}" for suffix in CHANNEL_EXTRA_SUFFIXES) for name in names]
        self.time_s = 0.0
        self.ambient = cfg.ambient_mean_cel
        self.plate_temp = cfg.plate_temp_sp_cel
        clamped = self.packml.state in _CLAMPED_STATES
        self.clamp_pressure = cfg.clamp_pressure_sp_kpa if clamped else 0.0
        self.energy_kwh = 0.0
        self.channels: list[FormationChannel] = []
        self.results = ResultFifo(unit="cell", fields=formation_result_fields())
        protocol = cfg.protocol
        cycle_s = _protocol_duration_estimate(protocol, cfg.cell)
        for n in range(1, cfg.channels + 1):
            channel = FormationChannel(rng=rng, cell=cfg.cell, protocol=protocol, plate_temp_cel=self.plate_temp,
                                       noise=cfg.noise, cell_serial=n * cfg.cell_serial_stride,
                                       cell_id_prefix=cfg.cell_id_prefix)
            if cfg.stagger:
                # A rack that has been running: each channel somewhere in its protocol. One exact step does it.
                channel.step(rng.uniform(0.0, cycle_s), plate_temp_cel=self.plate_temp)
                channel.cells_completed = 0
                channel.grades = [0, 0, 0, 0, 0]
                channel.finished.clear()
            self.channels.append(channel)
        self._values: dict[str, Value] = dict.fromkeys((p.name for p in self._points), 0)
        self._publish()

    @property
    def points(self) -> tuple[PointSpec, ...]:
        return self._points

    def values(self) -> Mapping[str, Value]:
        """Current values. The mapping is updated in place by ``step``: copy it to keep a snapshot."""
        return self._values

    def step(self, dt_s: float) -> Mapping[str, Value]:
        check_dt(dt_s)
        if dt_s == 0.0:
            return self._values
        cfg = self.config
        rng = self._rng
        self.packml.step(dt_s)
        self.time_s += dt_s
        if cfg.noise:
            # Hall air: random walk around the mean, tau 30 min, stationary sigma 1 K.
            decay = math.exp(-dt_s / 1800.0)
            self.ambient = cfg.ambient_mean_cel + (self.ambient - cfg.ambient_mean_cel) * decay + rng.gauss(
                0.0, math.sqrt(1.0 - decay * decay))
        self.plate_temp += (cfg.plate_temp_sp_cel - self.plate_temp) * (1.0 - math.exp(-dt_s / 600.0))
        target = cfg.clamp_pressure_sp_kpa if self.packml.state in _CLAMPED_STATES else 0.0
        self.clamp_pressure += (target - self.clamp_pressure) * (1.0 - math.exp(-dt_s / 5.0))
        paused = self.packml.state is not PackMLState.EXECUTE
        plate = self.plate_temp
        extended = cfg.extended_points
        for n, channel in enumerate(self.channels, start=1):
            channel.step(dt_s, plate_temp_cel=plate, paused=paused)
            if channel.finished:
                if extended:
                    self._record_finished(n, channel)
                channel.finished.clear()
        self._publish(dt_s)
        return self._values

    def set_cell_source(self, source: Callable[[], str | None] | None) -> None:
        """Load every next cell from ``source`` (the line model); None: seeded own ids."""
        for channel in self.channels:
            channel.cell_source = source

    def ack_result(self, record_id: int) -> bool:
        acked = self.results.ack(record_id)
        if self.config.extended_points:
            self._values.update(self.results.values())
        return acked

    @property
    def ack_seen(self) -> int:
        return self.results.last_ack

    def _record_finished(self, n: int, channel: FormationChannel) -> None:
        """Push a record per cell the channel graded (or rejected on a contact fault) in this step, in order."""
        for cell_id, charge, discharge, grade in channel.finished:
            self.results.push({
                "Result.CellId": cell_id, "Result.Channel": n,
                "Result.FirstChargeCapacity": min(charge, 150.0), "Result.DischargeCapacity": min(discharge, 150.0),
                "Result.CoulombicEfficiency": min(100.0 * discharge / charge, 100.0) if charge > 0.0 else 0.0,
                "Result.Grade": int(grade),
            })

    def _publish(self, dt_s: float = 0.0) -> None:
        """Write every value into the values mapping (in place: it is the live view, copy it to keep a snapshot)
        and integrate the grid energy over ``dt_s``."""
        cfg = self.config
        rng = self._rng
        noise = cfg.noise
        gauss = rng.gauss
        values = self._values
        active = faulted = completed = 0
        dc_w = 0.0
        extended = cfg.extended_points
        grades = [0, 0, 0, 0, 0]
        for keys, extra_keys, channel in zip(self._keys, self._extra_keys, self.channels, strict=True):
            status = channel.status
            active += status in ACTIVE_STATUSES
            is_fault = status is _PROTECTION
            faulted += is_fault
            completed += channel.cells_completed
            voltage = channel.voltage
            current = channel.current
            dc_w += voltage * current
            temperature = channel.temperature
            if noise:  # same measurement model as FormationChannel.readings(), inlined for speed
                voltage += gauss(0.0, 0.0002)
                if current != 0.0:
                    current += gauss(0.0, 0.005)
                temperature += gauss(0.0, 0.03)
                if channel.current > 0.0:
                    voltage = min(voltage, channel.charge_limit_v)
            (k_status, k_index, k_type, k_flags, k_voltage, k_current, k_capacity, k_energy, k_temp, k_end,
             k_step_time, k_cell_time, k_completed, k_alarm) = keys
            values[k_status] = int(status)
            values[k_index] = channel.step_pos
            values[k_type] = int(channel.step_type)
            values[k_flags] = channel.protection_flags
            values[k_voltage] = voltage
            values[k_current] = current
            values[k_capacity] = min(channel.capacity_ah, 150.0)
            values[k_energy] = min(channel.energy_wh, 700.0)
            values[k_temp] = temperature
            values[k_end] = int(channel.end_reason)
            values[k_step_time] = int(channel.step_time_s)
            values[k_cell_time] = int(channel.cell_time_s)
            values[k_completed] = channel.cells_completed
            values[k_alarm] = is_fault
            if extended:
                for grade, count in enumerate(channel.grades):
                    grades[grade] += count
                charge, discharge = channel.result_charge_ah, channel.result_discharge_ah
                (k_step_cap, k_step_energy, k_power, k_discharge, k_res_charge, k_res_discharge, k_efficiency,
                 k_grade, k_cell_id) = extra_keys
                values[k_step_cap] = min(channel.step_capacity_ah, 150.0)
                values[k_step_energy] = min(channel.step_energy_wh, 700.0)
                values[k_power] = max(-600.0, min(voltage * current, 600.0))
                values[k_discharge] = min(channel.discharge_ah, 150.0)
                values[k_res_charge] = min(charge, 150.0)
                values[k_res_discharge] = min(discharge, 150.0)
                values[k_efficiency] = min(100.0 * discharge / charge, 100.0) if charge > 0.0 else 0.0
                values[k_grade] = int(channel.grade)
                values[k_cell_id] = channel.cell_id
        # Discharging channels feed the DC bus (energy recovery); only the net flows through the grid converter.
        dc_kw = dc_w / 1000.0
        power = (dc_kw / cfg.converter_efficiency if dc_kw >= 0.0 else dc_kw * cfg.converter_efficiency) \
            + cfg.aux_power_kw
        self.energy_kwh += max(power, 0.0) * dt_s / 3600.0
        state = self.packml.state
        ambient_high = self.ambient > cfg.ambient_high_cel
        pressure_low = state is PackMLState.EXECUTE and self.clamp_pressure < 0.8 * cfg.clamp_pressure_sp_kpa
        channel_fault = faulted > 0
        values.update({
            "Rack.StateCurrent": int(state),
            "Rack.ChannelCount": cfg.channels,
            "Rack.Heartbeat": int(self.time_s) % 65536,
            "Rack.AlarmWord": int(ambient_high) | int(pressure_low) << 1 | int(channel_fault) << 2,
            "Rack.ChannelsActive": active,
            "Rack.ChannelsFaulted": faulted,
            "Rack.CellsCompleted": completed,
            "Rack.DcBusVoltage": cfg.dc_bus_voltage_v + (gauss(0.0, 0.3) if noise else 0.0),
            "Rack.GridPower": power + (gauss(0.0, 0.01 * abs(power)) if noise else 0.0),
            "Rack.ActiveEnergy": self.energy_kwh,
            "Rack.AmbientTemp": self.ambient + (gauss(0.0, 0.05) if noise else 0.0),
            "Rack.ClampPressure": max(0.0, self.clamp_pressure + (gauss(0.0, 1.0) if noise else 0.0))
            if self.clamp_pressure > 1.0 else 0.0,
            "Rack.ClampPressureSP": cfg.clamp_pressure_sp_kpa,
            "Rack.PlateTemp": self.plate_temp + (gauss(0.0, 0.05) if noise else 0.0),
            "Rack.Uptime": int(self.time_s),
            "Rack.AirflowOk": not ambient_high,
            "Rack.DoorClosed": state in _CLAMPED_STATES,
            "Alarms.AmbientHigh": ambient_high,
            "Alarms.ClampPressureLow": pressure_low,
            "Alarms.ChannelFault": channel_fault,
        })
        if extended:
            values["Rack.CellsA"] = grades[Grade.A]
            values["Rack.CellsB"] = grades[Grade.B]
            values["Rack.CellsC"] = grades[Grade.C]
            values["Rack.CellsNG"] = grades[Grade.NG]
            values.update(self.results.values())


_CHANNEL_SUFFIXES = ("Status", "StepIndex", "StepType", "ProtectionFlags", "Voltage", "Current", "Capacity", "Energy",
                     "Temperature", "EndReason", "StepTime", "CellTime", "CellsCompleted", "ProtectionAlarm")


def _protocol_duration_estimate(protocol: FormationProtocol, cell: CellSpec) -> float:
    """Rough length (s) of one cell's protocol, for staggering the channels of a fresh rack."""
    total = protocol.exchange_s
    for step in protocol.step_list():
        if step.kind is StepType.REST:
            total += step.max_time_s
        else:
            # CC from the typical start to the end voltage, plus a CV tail of about 40 min; capped by time limits.
            efficiency = cell.coulombic_efficiency if step.kind is not StepType.CC_DISCHARGE else 1.0
            span = 0.9 * cell.capacity_ah / (efficiency * step.current_a) * 3600.0
            if step.kind is StepType.CCCV_CHARGE:
                span += 2400.0
            total += min(span, step.max_time_s)
    return total
