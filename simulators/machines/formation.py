"""Formation rack (cycler) with N channels: a pure, seeded process model.

Each channel drives one cell through a simplified formation protocol (equipment notes §5.2, §5.6)::

    step 0  Rest          initial_rest_s        (contact check; a seeded contact fault -> Protection)
    step 1  CC-CV charge  CC at cc_current_a until V reaches v_max, then CV at v_max until I <= cutoff_current_a
    step 2  Rest          final_rest_s
            Finished      exchange_s            (operator unloads the cell), then a fresh cell starts at step 0

The cell is an OCV curve (NMC811/graphite table of §5.6) plus one series resistance: ``V = OCV(SOC) + I·R``,
``dSOC/dt = eta·I / (3600·Q)``. With a piecewise-linear OCV the CV phase has an exact solution: inside one OCV
segment of slope k the current decays as ``I(t) = I0·exp(-t/tau)`` with ``tau = 3600·Q·R / (eta·k)``. The model
steps from event to event (CC->CV switch, OCV breakpoints, cut-off, end of rest), so any ``dt`` is exact: a caller
accelerates time simply by passing a larger ``dt``. In consequence the CV current never rises, the voltage never
exceeds ``v_max``, and the capacity is exactly the integral of the current.

Rack level: PackML state (channels pause while the rack is not in Execute), ambient temperature (slow random walk),
fixture clamp pressure (kPa) and plate temperature, DC bus voltage, grid power and energy, channel counts and alarms.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from simulators.machines.packml import PackMLMachine, PackMLState, PackMLTiming
from simulators.machines.points import DataType, PointSpec, Value, check_dt

D = DataType

# OCV of an NMC811/graphite cell at 25 Cel (equipment notes §5.6, EST).
OCV_SOC: tuple[float, ...] = (0.0, 0.05, 0.10, 0.20, 0.30, 0.50, 0.70, 0.80, 0.90, 1.00)
OCV_V: tuple[float, ...] = (3.00, 3.40, 3.50, 3.58, 3.63, 3.70, 3.85, 3.95, 4.07, 4.20)
_LAST_SEGMENT = len(OCV_SOC) - 2


def _segment(soc: float) -> int:
    """Index j of the OCV segment [OCV_SOC[j], OCV_SOC[j+1]) holding ``soc`` (the end segments extrapolate)."""
    return min(max(bisect_right(OCV_SOC, soc) - 1, 0), _LAST_SEGMENT)


def _slope(segment: int) -> float:
    return (OCV_V[segment + 1] - OCV_V[segment]) / (OCV_SOC[segment + 1] - OCV_SOC[segment])


def ocv(soc: float) -> float:
    """Open-circuit voltage (V) at state of charge ``soc`` (0..1; extrapolated linearly outside)."""
    j = _segment(soc)
    return OCV_V[j] + _slope(j) * (soc - OCV_SOC[j])


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


class _Phase(Enum):
    INITIAL_REST = "initial_rest"
    CC = "cc"
    CV = "cv"
    FINAL_REST = "final_rest"
    FAULT = "fault"
    EXCHANGE = "exchange"


# (status, step index, step type) reported in each phase.
_PHASE_REPORT: dict[_Phase, tuple[ChannelStatus, int, StepType]] = {
    _Phase.INITIAL_REST: (ChannelStatus.REST, 0, StepType.REST),
    _Phase.CC: (ChannelStatus.CC_CHARGE, 1, StepType.CCCV_CHARGE),
    _Phase.CV: (ChannelStatus.CV_CHARGE, 1, StepType.CCCV_CHARGE),
    _Phase.FINAL_REST: (ChannelStatus.REST, 2, StepType.REST),
    _Phase.FAULT: (ChannelStatus.PROTECTION, 0, StepType.REST),
    _Phase.EXCHANGE: (ChannelStatus.FINISHED, 2, StepType.REST),
}
ACTIVE_STATUSES = frozenset({ChannelStatus.REST, ChannelStatus.CC_CHARGE, ChannelStatus.CV_CHARGE})


@dataclass(frozen=True, slots=True, kw_only=True)
class CellSpec:
    """Nominal cell (100 Ah NMC811/graphite pouch, EST). Each loaded cell varies around it (seeded)."""

    capacity_ah: float = 100.0
    capacity_spread: float = 0.02  # relative, uniform +-
    # Effective series resistance of a fresh cell in formation, including polarisation (gives a CV tail of
    # tens of minutes, as real formation data show).
    resistance_ohm: float = 0.003
    resistance_spread: float = 0.10
    coulombic_efficiency: float = 0.90  # first charge: ~10 % of the charge goes into SEI formation
    heat_capacity_j_per_k: float = 1500.0
    heat_transfer_w_per_k: float = 1.0
    initial_soc: tuple[float, float] = (0.02, 0.06)

    def __post_init__(self) -> None:
        for name in ("capacity_ah", "resistance_ohm", "coulombic_efficiency", "heat_capacity_j_per_k",
                     "heat_transfer_w_per_k"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0")
        low, high = self.initial_soc
        if not 0.0 <= low <= high < 0.5:
            raise ValueError("initial_soc must satisfy 0 <= low <= high < 0.5")


@dataclass(frozen=True, slots=True, kw_only=True)
class FormationProtocol:
    """The per-cell protocol. Currents in A (+ = charge), voltages in V, times in s."""

    initial_rest_s: float = 60.0
    cc_current_a: float = 30.0  # 0.3C
    v_max: float = 4.20
    cutoff_current_a: float = 5.0  # 0.05C
    final_rest_s: float = 600.0
    exchange_s: float = 60.0
    fault_hold_s: float = 900.0  # how long a faulted channel waits for the operator
    contact_fault_probability: float = 0.005  # per loaded cell (notes §5.6: ~0.1 %/step)

    def __post_init__(self) -> None:
        if not 0.0 < self.cutoff_current_a < self.cc_current_a:
            raise ValueError("need 0 < cutoff_current_a < cc_current_a")
        if not OCV_V[0] < self.v_max <= OCV_V[-1]:
            raise ValueError(f"v_max must be within ({OCV_V[0]}, {OCV_V[-1]}] V")
        for name in ("initial_rest_s", "final_rest_s", "exchange_s", "fault_hold_s"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0")
        if not 0.0 <= self.contact_fault_probability <= 1.0:
            raise ValueError("contact_fault_probability must be within 0..1")


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
    channels: int = 16
    cell: CellSpec = field(default_factory=CellSpec)
    protocol: FormationProtocol = field(default_factory=FormationProtocol)
    clamp_pressure_sp_kpa: float = 300.0
    plate_temp_sp_cel: float = 45.0
    ambient_mean_cel: float = 27.0
    ambient_high_cel: float = 40.0
    dc_bus_voltage_v: float = 380.0
    aux_power_kw: float = 1.5
    converter_efficiency: float = 0.92
    noise: bool = True
    stagger: bool = True  # start each channel at a random point of its protocol (a rack that has been running)
    packml: PackMLTiming = field(default_factory=_rack_timing)
    initial_state: PackMLState = PackMLState.EXECUTE

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= 1024:
            raise ValueError("channels must be 1..1024")


class FormationChannel:
    """One power channel and the cell in it."""

    __slots__ = (
        "_cell",
        "_fault_pending",
        "_left_s",
        "_noise",
        "_phase",
        "_protocol",
        "_rng",
        "capacity_ah",
        "cell_capacity_ah",
        "cell_time_s",
        "cells_completed",
        "current",
        "end_reason",
        "energy_wh",
        "paused",
        "protection_flags",
        "resistance_ohm",
        "soc",
        "step_time_s",
        "temperature",
    )

    def __init__(
        self,
        *,
        rng: random.Random,
        cell: CellSpec | None = None,
        protocol: FormationProtocol | None = None,
        plate_temp_cel: float = 45.0,
        noise: bool = True,
    ) -> None:
        self._rng = rng
        self._cell = cell if cell is not None else CellSpec()
        self._protocol = protocol if protocol is not None else FormationProtocol()
        self._noise = noise
        self.temperature = plate_temp_cel
        self.cells_completed = 0
        self.end_reason = EndReason.NONE
        self.paused = False
        self._load_cell()

    # ------------------------------------------------------------------------------------------ state

    @property
    def phase_name(self) -> str:
        return self._phase.value

    @property
    def status(self) -> ChannelStatus:
        return ChannelStatus.PAUSE if self.paused else _PHASE_REPORT[self._phase][0]

    @property
    def step_index(self) -> int:
        return _PHASE_REPORT[self._phase][1]

    @property
    def step_type(self) -> StepType:
        return _PHASE_REPORT[self._phase][2]

    @property
    def voltage(self) -> float:
        """Terminal voltage (V) right now, without measurement noise."""
        v = ocv(self.soc) + self.current * self.resistance_ohm
        return min(v, self._protocol.v_max) if self.current > 0.0 else v

    def _load_cell(self) -> None:
        rng, cell = self._rng, self._cell
        self.cell_capacity_ah = cell.capacity_ah * (1.0 + rng.uniform(-cell.capacity_spread, cell.capacity_spread))
        self.resistance_ohm = cell.resistance_ohm * (1.0 + rng.uniform(-cell.resistance_spread,
                                                                        cell.resistance_spread))
        self.soc = rng.uniform(*cell.initial_soc)
        self._fault_pending = rng.random() < self._protocol.contact_fault_probability
        self.capacity_ah = 0.0
        self.energy_wh = 0.0
        self.current = 0.0
        self.cell_time_s = 0.0
        self.protection_flags = 0
        self._enter(_Phase.INITIAL_REST, self._protocol.initial_rest_s)

    def _enter(self, phase: _Phase, duration_s: float = math.inf) -> None:
        if phase is not _Phase.CV:  # CC -> CV is one CC-CV step; every other phase change starts a new step
            self.step_time_s = 0.0
        self._phase = phase
        self._left_s = duration_s

    def _elapse(self, dt_s: float) -> None:
        """Count time in the current step and cell (before any phase change the same handler makes)."""
        self.step_time_s += dt_s
        self.cell_time_s += dt_s

    # ------------------------------------------------------------------------------------------ dynamics

    def step(self, dt_s: float, *, plate_temp_cel: float, paused: bool = False) -> None:
        """Advance ``dt_s`` seconds. While ``paused`` the protocol does not progress and no current flows."""
        check_dt(dt_s)
        self.paused = paused
        if paused:
            self.current = 0.0
            self._heat(dt_s, 0.0, plate_temp_cel)
            return
        remaining = dt_s
        # Each handler consumes time up to its next event; a phase change may consume none. The loop ends because
        # every phase either consumes time or moves on to one that does (rests and faults have durations > 0).
        while remaining > 0.0:
            remaining -= self._advance(remaining, plate_temp_cel)

    def _advance(self, remaining: float, plate: float) -> float:
        phase = self._phase
        if phase is _Phase.CC:
            return self._advance_cc(remaining, plate)
        if phase is _Phase.CV:
            return self._advance_cv(remaining, plate)
        # Rest-like phases: no current, wait out the duration.
        self.current = 0.0
        used = min(remaining, self._left_s)
        self._left_s -= used
        self._heat(used, 0.0, plate)
        self._elapse(used)
        if self._left_s <= 0.0:
            self._end_timed_phase()
        return used

    def _end_timed_phase(self) -> None:
        protocol = self._protocol
        phase = self._phase
        if phase is _Phase.INITIAL_REST:
            if self._fault_pending:
                self.protection_flags = 1 << ProtectionFlag.CONTACT_FAULT
                self.end_reason = EndReason.PROTECTION
                self._enter(_Phase.FAULT, protocol.fault_hold_s)
            else:
                self.end_reason = EndReason.TIME
                self._enter(_Phase.CC)
        elif phase is _Phase.FINAL_REST:
            self.end_reason = EndReason.TIME
            self.cells_completed += 1
            self._enter(_Phase.EXCHANGE, protocol.exchange_s)
        else:  # EXCHANGE or FAULT: the operator puts a fresh cell in
            self._load_cell()

    def _advance_cc(self, remaining: float, plate: float) -> float:
        cell, protocol = self._cell, self._protocol
        current = protocol.cc_current_a
        soc_switch = soc_at_ocv(protocol.v_max - current * self.resistance_ohm)
        if self.soc >= soc_switch:
            self._enter(_Phase.CV)
            return 0.0
        charge_per_s = cell.coulombic_efficiency * current / (3600.0 * self.cell_capacity_ah)
        to_switch = (soc_switch - self.soc) / charge_per_s
        used = min(remaining, to_switch)
        self.current = current
        v_start = self.voltage
        self.soc = soc_switch if used == to_switch else self.soc + charge_per_s * used
        v_end = self.voltage
        self.capacity_ah += current * used / 3600.0
        self.energy_wh += current * (v_start + v_end) / 2.0 * used / 3600.0  # trapezoid: OCV is linear in time
        self._heat(used, current, plate)
        self._elapse(used)
        if used == to_switch:
            self._enter(_Phase.CV)
        return used

    def _advance_cv(self, remaining: float, plate: float) -> float:
        cell, protocol = self._cell, self._protocol
        r = self.resistance_ohm
        current = (protocol.v_max - ocv(self.soc)) / r
        if current <= protocol.cutoff_current_a:
            self.current = max(current, 0.0)
            self.end_reason = EndReason.I_CUTOFF
            self._enter(_Phase.FINAL_REST, protocol.final_rest_s)
            return 0.0
        j = _segment(self.soc)
        tau = 3600.0 * self.cell_capacity_ah * r / (cell.coulombic_efficiency * _slope(j))
        to_cutoff = tau * math.log(current / protocol.cutoff_current_a)
        boundary_current = (protocol.v_max - OCV_V[j + 1]) / r if j < _LAST_SEGMENT else 0.0
        to_boundary = tau * math.log(current / boundary_current) if boundary_current > 0.0 else math.inf
        used = min(remaining, to_cutoff, to_boundary)
        decay = math.exp(-used / tau)
        charge_ah = current * tau * (1.0 - decay) / 3600.0
        if used == to_boundary:
            self.soc = OCV_SOC[j + 1]  # land exactly on the breakpoint so the next segment starts cleanly
        else:
            self.soc += cell.coulombic_efficiency * charge_ah / self.cell_capacity_ah
        self.current = current * decay
        self.capacity_ah += charge_ah
        self.energy_wh += protocol.v_max * charge_ah
        self._heat(used, charge_ah * 3600.0 / used if used > 0.0 else current, plate)
        self._elapse(used)
        if used == to_cutoff:
            self.end_reason = EndReason.I_CUTOFF
            self._enter(_Phase.FINAL_REST, protocol.final_rest_s)
        return used

    def _heat(self, dt_s: float, current: float, plate: float) -> None:
        """Cell temperature: exact first-order response to the plate plus I²R self-heating."""
        if dt_s <= 0.0:
            return
        cell = self._cell
        equilibrium = plate + current * current * self.resistance_ohm / cell.heat_transfer_w_per_k
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
            # The channel regulates on its own measurement, so what it reports never exceeds the limit.
            v = min(v, self._protocol.v_max)
        return v, i, t


def channel_name(n: int, channels: int) -> str:
    """``Ch001`` .. ``Ch256`` (at least three digits)."""
    return f"Ch{n:0{max(3, len(str(channels)))}d}"


def formation_rack_points(channels: int) -> tuple[PointSpec, ...]:
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
            p(name=f"{c}.Capacity", data_type=D.DOUBLE, unit="A.h", min=0, max=150,
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
    return (*rack, *per_channel)


# Fixtures are clamped (and the door closed) in these rack states; they open for tray handling otherwise.
_CLAMPED_STATES = frozenset({
    PackMLState.STARTING, PackMLState.EXECUTE, PackMLState.SUSPENDING, PackMLState.SUSPENDED,
    PackMLState.UNSUSPENDING, PackMLState.UNHOLDING, PackMLState.HOLDING, PackMLState.COMPLETING,
})


class FormationRack:
    """A rack of ``config.channels`` formation channels. Construct with a seeded ``random.Random``."""

    def __init__(self, *, rng: random.Random, config: FormationConfig | None = None) -> None:
        self.config = cfg = config if config is not None else FormationConfig()
        self._rng = rng
        self.packml = PackMLMachine(rng=rng, timing=cfg.packml, initial=cfg.initial_state)
        self._points = formation_rack_points(cfg.channels)
        self._names = [channel_name(n, cfg.channels) for n in range(1, cfg.channels + 1)]
        self.time_s = 0.0
        self.ambient = cfg.ambient_mean_cel
        self.plate_temp = cfg.plate_temp_sp_cel
        clamped = self.packml.state in _CLAMPED_STATES
        self.clamp_pressure = cfg.clamp_pressure_sp_kpa if clamped else 0.0
        self.energy_kwh = 0.0
        self.channels: list[FormationChannel] = []
        protocol = cfg.protocol
        # Rough length of one cell's protocol: rests + CC from ~5 % to ~95 % SOC + a CV tail of about 40 min.
        cycle_s = (protocol.initial_rest_s + protocol.final_rest_s + protocol.exchange_s + 2400.0
                   + 0.9 * cfg.cell.capacity_ah / (cfg.cell.coulombic_efficiency * protocol.cc_current_a) * 3600.0)
        for _ in range(cfg.channels):
            channel = FormationChannel(rng=rng, cell=cfg.cell, protocol=protocol, plate_temp_cel=self.plate_temp,
                                       noise=cfg.noise)
            if cfg.stagger:
                # A rack that has been running: each channel somewhere in its protocol. One exact step does it.
                channel.step(rng.uniform(0.0, cycle_s), plate_temp_cel=self.plate_temp)
                channel.cells_completed = 0
            self.channels.append(channel)
        self._values: dict[str, Value] = {}
        self._publish()

    @property
    def points(self) -> tuple[PointSpec, ...]:
        return self._points

    def values(self) -> Mapping[str, Value]:
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
        for channel in self.channels:
            channel.step(dt_s, plate_temp_cel=self.plate_temp, paused=paused)
        self.energy_kwh += max(self._grid_power_kw(), 0.0) * dt_s / 3600.0
        self._publish()
        return self._values

    def _grid_power_kw(self) -> float:
        cfg = self.config
        dc_kw = sum(channel.voltage * channel.current for channel in self.channels) / 1000.0
        return dc_kw / cfg.converter_efficiency + cfg.aux_power_kw

    def _publish(self) -> None:
        cfg = self.config
        rng = self._rng
        noise = cfg.noise
        values: dict[str, Value] = {}
        active = faulted = completed = 0
        for name, channel in zip(self._names, self.channels, strict=True):
            status = channel.status
            active += status in ACTIVE_STATUSES
            faulted += status is ChannelStatus.PROTECTION
            completed += channel.cells_completed
            voltage, current, temperature = channel.readings()
            values[f"{name}.Status"] = int(status)
            values[f"{name}.StepIndex"] = channel.step_index
            values[f"{name}.StepType"] = int(channel.step_type)
            values[f"{name}.ProtectionFlags"] = channel.protection_flags
            values[f"{name}.Voltage"] = voltage
            values[f"{name}.Current"] = current
            values[f"{name}.Capacity"] = channel.capacity_ah
            values[f"{name}.Energy"] = channel.energy_wh
            values[f"{name}.Temperature"] = temperature
            values[f"{name}.EndReason"] = int(channel.end_reason)
            values[f"{name}.StepTime"] = int(channel.step_time_s)
            values[f"{name}.CellTime"] = int(channel.cell_time_s)
            values[f"{name}.CellsCompleted"] = channel.cells_completed
            values[f"{name}.ProtectionAlarm"] = status is ChannelStatus.PROTECTION
        state = self.packml.state
        ambient_high = self.ambient > cfg.ambient_high_cel
        pressure_low = state is PackMLState.EXECUTE and self.clamp_pressure < 0.8 * cfg.clamp_pressure_sp_kpa
        channel_fault = faulted > 0
        power = self._grid_power_kw()
        rack: dict[str, Value] = {
            "Rack.StateCurrent": int(state),
            "Rack.ChannelCount": cfg.channels,
            "Rack.Heartbeat": int(self.time_s) % 65536,
            "Rack.AlarmWord": int(ambient_high) | int(pressure_low) << 1 | int(channel_fault) << 2,
            "Rack.ChannelsActive": active,
            "Rack.ChannelsFaulted": faulted,
            "Rack.CellsCompleted": completed,
            "Rack.DcBusVoltage": cfg.dc_bus_voltage_v + (rng.gauss(0.0, 0.3) if noise else 0.0),
            "Rack.GridPower": power + (rng.gauss(0.0, 0.01 * abs(power)) if noise else 0.0),
            "Rack.ActiveEnergy": self.energy_kwh,
            "Rack.AmbientTemp": self.ambient + (rng.gauss(0.0, 0.05) if noise else 0.0),
            "Rack.ClampPressure": max(0.0, self.clamp_pressure + (rng.gauss(0.0, 1.0) if noise else 0.0))
            if self.clamp_pressure > 1.0 else 0.0,
            "Rack.ClampPressureSP": cfg.clamp_pressure_sp_kpa,
            "Rack.PlateTemp": self.plate_temp + (rng.gauss(0.0, 0.05) if noise else 0.0),
            "Rack.Uptime": int(self.time_s),
            "Rack.AirflowOk": not ambient_high,
            "Rack.DoorClosed": state in _CLAMPED_STATES,
            "Alarms.AmbientHigh": ambient_high,
            "Alarms.ClampPressureLow": pressure_low,
            "Alarms.ChannelFault": channel_fault,
        }
        rack.update(values)
        self._values = rack
