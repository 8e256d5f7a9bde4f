"""The common header every simulated machine exposes (equipment notes §1): PackML, speed, counters, energy, ids.

``MachineHeader`` owns the PackML state machine and everything that follows from it alone:

* unit mode and PackML state (OPC 30050 Annex B numbers), the derived OPC 40001-1 MachineryItemState and
  MachineryOperationMode (notes §1.2);
* the speed set point (``PackML.MachSpeed``) and the actual speed (``PackML.CurMachSpeed``), which ramps towards
  the set point at a fixed rate while PackML says the machine produces and towards 0 otherwise (fast on Abort);
* produced / defective counters: ``Count`` since the simulator started (the last counter reset) and ``AccCount``
  over the machine's life (a seeded offset: the machine has run before). Both only ever grow (and wrap at 2^32
  as PLC counters do);
* the first-out stop reason, drawn from the machine's own list of causes whenever PackML leaves Execute;
* heartbeat (+1 per second of model time, wraps at 65536), time in state, time since reset;
* active power (given by the machine each step) and the energy integral;
* recipe ids and input / output lot ids (the output lot advances at every end of lot, i.e. Complete; the recipe
  version every ``lots_per_recipe`` lots; the input lot is what the line model mounted, if anything).

The header draws from the machine's ``random.Random`` only in a fixed order, so the run depends on the seed alone.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

from simulators.machines.packml import PackMLCommand, PackMLMachine, PackMLState, PackMLTiming, Transition
from simulators.machines.points import DataType, PointSpec, Value, check_dt, clamp

D = DataType
S = PackMLState
C = PackMLCommand

HEARTBEAT_MODULO = 65536
COUNTER_MODULO = 2**32


class UnitMode(IntEnum):
    """PackML unit modes (ISA-TR88 numbering; user modes start at 4)."""

    PRODUCTION = 1
    MAINTENANCE = 2
    MANUAL = 3


class MachineryItemState(IntEnum):
    """OPC 40001-1 MachineryItemState StateNumber."""

    NOT_AVAILABLE = 0
    OUT_OF_SERVICE = 1
    NOT_EXECUTING = 2
    EXECUTING = 3


class MachineryOperationMode(IntEnum):
    """OPC 40001-1 MachineryOperationMode StateNumber."""

    NONE = 0
    MAINTENANCE = 1
    SETUP = 2
    PROCESSING = 3


class StopCategory(StrEnum):
    OPERATOR = "Operator"
    BLOCKED = "Blocked"
    STARVED = "Starved"
    FAULT = "Fault"
    END_OF_LOT = "EndOfLot"


@dataclass(frozen=True, slots=True, kw_only=True)
class StopCause:
    """One possible reason for leaving Execute. ``command`` is the PackML command it comes with; for Suspend,
    ``category`` BLOCKED or STARVED must match the interlock PackML reports."""

    id: int
    message: str
    category: StopCategory
    command: PackMLCommand


# Generic causes; machines pass their own (e.g. the coater's abort is a web break).
DEFAULT_STOP_CAUSES: tuple[StopCause, ...] = (
    StopCause(id=101, message="Operator hold", category=StopCategory.OPERATOR, command=C.HOLD),
    StopCause(id=201, message="Downstream blocked", category=StopCategory.BLOCKED, command=C.SUSPEND),
    StopCause(id=202, message="Upstream starved", category=StopCategory.STARVED, command=C.SUSPEND),
    StopCause(id=301, message="Operator stop", category=StopCategory.OPERATOR, command=C.STOP),
    StopCause(id=401, message="Emergency stop", category=StopCategory.FAULT, command=C.ABORT),
    StopCause(id=501, message="End of lot", category=StopCategory.END_OF_LOT, command=C.TO_COMPLETE),
)

_EXECUTING = frozenset({S.EXECUTE, S.STARTING, S.UNHOLDING, S.UNSUSPENDING, S.COMPLETING})
_OUT_OF_SERVICE = frozenset({S.ABORTING, S.ABORTED})
_LEAVES_EXECUTE = frozenset({C.HOLD, C.SUSPEND, C.STOP, C.ABORT, C.TO_COMPLETE})


def machinery_item_state(state: PackMLState) -> MachineryItemState:
    """PackML state -> OPC 40001-1 MachineryItemState (equipment notes §1.2)."""
    if state in _EXECUTING:
        return MachineryItemState.EXECUTING
    if state in _OUT_OF_SERVICE:
        return MachineryItemState.OUT_OF_SERVICE
    if state is S.UNDEFINED:
        return MachineryItemState.NOT_AVAILABLE
    return MachineryItemState.NOT_EXECUTING


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderConfig:
    """Identity, speed and recipe of one machine. Speeds are in ``speed_unit`` (m/min, {sheet}/min, ...)."""

    manufacturer: str = "Cellgate Simulators"
    model: str = "Generic"
    serial_number: str = "SIM-0001"
    speed_unit: str = "m/min"
    count_unit: str = "m"
    design_speed: float = 100.0
    speed_sp: float = 60.0
    ramp_per_s: float = 2.0  # ~2 %/s of design speed (notes §1: 1-5 %/s)
    abort_ramp_per_s: float = 20.0
    unit_mode: UnitMode = UnitMode.PRODUCTION
    recipe_product_id: str = "NMC811-CATHODE"
    recipe_name: str = "Cathode NMC811 220 g/m2"
    recipe_version: str = "3"
    input_lot_prefix: str = "IN"
    output_lot_prefix: str = "OUT"
    lots_per_recipe: int = 5  # the recipe version moves on (a process change) every so many lots; 0 = never
    acc_count_offset: tuple[float, float] = (1.0e5, 1.0e6)  # lifetime count before the simulation started
    stop_causes: tuple[StopCause, ...] = DEFAULT_STOP_CAUSES
    packml: PackMLTiming = field(default_factory=PackMLTiming)
    initial_state: PackMLState = PackMLState.EXECUTE

    def __post_init__(self) -> None:
        if not self.design_speed > 0.0:
            raise ValueError("design_speed must be > 0")
        if not 0.0 <= self.speed_sp <= self.design_speed:
            raise ValueError("speed_sp must be within 0..design_speed")
        if not (self.ramp_per_s > 0.0 and self.abort_ramp_per_s > 0.0):
            raise ValueError("ramps must be > 0")
        if self.lots_per_recipe < 0:
            raise ValueError("lots_per_recipe must be >= 0")
        low, high = self.acc_count_offset
        if not 0.0 <= low <= high:
            raise ValueError("acc_count_offset must satisfy 0 <= low <= high")
        for command in _LEAVES_EXECUTE:
            if not any(c.command is command for c in self.stop_causes):
                raise ValueError(f"stop_causes needs at least one cause for {command}")
        for category in (StopCategory.BLOCKED, StopCategory.STARVED):
            if not any(c.command is C.SUSPEND and c.category is category for c in self.stop_causes):
                raise ValueError(f"stop_causes needs a Suspend cause of category {category}")


def header_points(config: HeaderConfig) -> tuple[PointSpec, ...]:
    """The common header points (names are the same on every machine; units follow the config)."""
    p = PointSpec
    su, cu = config.speed_unit, config.count_unit
    big = COUNTER_MODULO - 1
    return (
        p(name="Identification.Manufacturer", data_type=D.STRING, unit=None, description="Machine manufacturer."),
        p(name="Identification.Model", data_type=D.STRING, unit=None, description="Machine model."),
        p(name="Identification.SerialNumber", data_type=D.STRING, unit=None, description="Machine serial number."),
        p(name="PackML.StateCurrent", data_type=D.INT32, unit=None, min=0, max=17,
          description="PackML state number per OPC 30050 Annex B (6 = Execute)."),
        p(name="PackML.UnitModeCurrent", data_type=D.INT32, unit=None, min=1, max=3,
          description="PackML unit mode (1 Production, 2 Maintenance, 3 Manual)."),
        p(name="PackML.MachSpeed", data_type=D.DOUBLE, unit=su, min=0, max=config.design_speed,
          description="Machine speed set point."),
        p(name="PackML.CurMachSpeed", data_type=D.DOUBLE, unit=su, min=0, max=config.design_speed * 1.05,
          description="Actual machine speed; ramps towards the set point on start and to 0 on stop."),
        p(name="PackML.MachDesignSpeed", data_type=D.DOUBLE, unit=su, min=0, max=config.design_speed,
          description="Design speed, the denominator of the OEE performance term."),
        p(name="PackML.Blocked", data_type=D.BOOLEAN, unit=None,
          description="Suspended because the downstream machine cannot take more material."),
        p(name="PackML.Starved", data_type=D.BOOLEAN, unit=None,
          description="Suspended because the upstream supply ran out."),
        p(name="PackML.ProdProcessedCount", data_type=D.UINT32, unit=cu, min=0, max=big,
          description="Produced quantity since the counters were reset (simulator start); wraps at 2^32."),
        p(name="PackML.ProdProcessedAccCount", data_type=D.UINT32, unit=cu, min=0, max=big,
          description="Produced quantity over the machine's life; wraps at 2^32."),
        p(name="PackML.ProdDefectiveCount", data_type=D.UINT32, unit=cu, min=0, max=big,
          description="Defective (scrap, NG) quantity since the counters were reset; wraps at 2^32."),
        p(name="PackML.ProdDefectiveAccCount", data_type=D.UINT32, unit=cu, min=0, max=big,
          description="Defective quantity over the machine's life; wraps at 2^32."),
        p(name="PackML.StopReasonId", data_type=D.INT32, unit=None, min=0, max=None,
          description="First-out cause of the last stop, hold or suspension (0 = none yet)."),
        p(name="PackML.StopReasonMessage", data_type=D.STRING, unit=None,
          description="Text of the last stop reason."),
        p(name="PackML.StopReasonCategory", data_type=D.STRING, unit=None,
          description="Category of the last stop reason (Operator, Blocked, Starved, Fault, EndOfLot)."),
        p(name="PackML.StateCurrentTime", data_type=D.DOUBLE, unit="s", min=0, max=None,
          description="Time spent in the current PackML state."),
        p(name="PackML.AccTimeSinceReset", data_type=D.UINT32, unit="s", min=0, max=big,
          description="Seconds since the counters were reset (simulator start)."),
        p(name="Machinery.MachineryItemState", data_type=D.UINT32, unit=None, min=0, max=3,
          description="OPC 40001-1 state: 0 NotAvailable, 1 OutOfService, 2 NotExecuting, 3 Executing."),
        p(name="Machinery.MachineryOperationMode", data_type=D.UINT32, unit=None, min=0, max=3,
          description="OPC 40001-1 operation mode: 0 None, 1 Maintenance, 2 Setup, 3 Processing."),
        p(name="Energy.ActivePower", data_type=D.DOUBLE, unit="kW", min=0, max=1500,
          description="Active electrical power of the machine."),
        p(name="Energy.ActiveEnergy", data_type=D.DOUBLE, unit="kW.h", min=0, max=None,
          description="Active energy since the simulator started; never decreases."),
        p(name="Recipe.ProductId", data_type=D.STRING, unit=None, description="Product of the running recipe."),
        p(name="Recipe.Name", data_type=D.STRING, unit=None, description="Name of the running recipe."),
        p(name="Recipe.Version", data_type=D.STRING, unit=None, description="Version of the running recipe."),
        p(name="Lot.InputLotId", data_type=D.STRING, unit=None,
          description="Lot (roll, batch) of the main input material, for genealogy."),
        p(name="Lot.OutputLotId", data_type=D.STRING, unit=None,
          description="Lot (roll, cell) being produced; changes at every end of lot."),
        p(name="Diagnostics.Heartbeat", data_type=D.UINT32, unit=None, min=0, max=HEARTBEAT_MODULO - 1,
          description="PLC watchdog counter: +1 per second, wraps from 65535 to 0."),
    )


def next_version(version: str) -> str:
    """``"3"`` -> ``"4"``; a version that is not a number gets ``.1`` appended."""
    return str(int(version) + 1) if version.isdigit() else f"{version}.1"


_NO_CAUSE = StopCause(id=0, message="", category=StopCategory.OPERATOR, command=C.STOP)


class MachineHeader:
    """State of the common header. The machine calls ``step`` first, then ``count``/``set_power`` with its
    process results, then ``values`` when it publishes."""

    def __init__(self, *, rng: random.Random, config: HeaderConfig) -> None:
        self.config = config
        self._rng = rng
        self.packml = PackMLMachine(rng=rng, timing=config.packml, initial=config.initial_state)
        self.time_s = 0.0
        self.speed_sp = config.speed_sp
        self.speed = config.speed_sp if self.packml.producing else 0.0
        self.acceleration = 0.0  # speed units per s, of the last step
        self.unit_mode = config.unit_mode
        self.processed = 0.0
        self.defective = 0.0
        low, high = config.acc_count_offset
        self._acc_offset = float(int(rng.uniform(low, high)))
        self._acc_defective_offset = float(int(self._acc_offset * rng.uniform(0.005, 0.02)))
        self.power_kw = 0.0
        self.energy_kwh = 0.0
        self.stop_cause = _NO_CAUSE
        self.input_lot = 1 + rng.randrange(1000)
        self.output_lot = 1 + rng.randrange(100_000)
        self.lots_completed = 0
        self.recipe_version = config.recipe_version
        self.input_lot_text: str | None = None  # set by the line model: the id of the upstream roll / lot in use

    # ------------------------------------------------------------------------------------------ commands

    def set_speed_sp(self, speed: float) -> None:
        self.speed_sp = clamp(speed, 0.0, self.config.design_speed)

    @property
    def state(self) -> PackMLState:
        return self.packml.state

    @property
    def producing(self) -> bool:
        return self.packml.producing

    @property
    def aborted(self) -> bool:
        return self.packml.state in _OUT_OF_SERVICE

    @property
    def output_lot_id(self) -> str:
        return f"{self.config.output_lot_prefix}{self.output_lot:06d}"

    @property
    def input_lot_id(self) -> str:
        """The input lot: what the line model mounted (``input_lot_text``), else the seeded own counter, in the same
        format as the output lot ids (prefix + 6 digits) so an upstream machine's output id can be the input id."""
        if self.input_lot_text is not None:
            return self.input_lot_text
        return f"{self.config.input_lot_prefix}{self.input_lot:06d}"

    # ------------------------------------------------------------------------------------------ dynamics

    def step(self, dt_s: float) -> tuple[Transition, ...]:
        """Advance PackML and the speed ramp by ``dt_s``; return the PackML transitions taken."""
        check_dt(dt_s)
        transitions = self.packml.step(dt_s)
        for transition in transitions:
            self._on_transition(transition)
        self.time_s += dt_s
        target = self.speed_sp if self.packml.producing else 0.0
        rate = self.config.abort_ramp_per_s if self.aborted else self.config.ramp_per_s
        old = self.speed
        self.speed = old + clamp(target - old, -rate * dt_s, rate * dt_s)
        self.acceleration = (self.speed - old) / dt_s if dt_s > 0.0 else 0.0
        return transitions

    def command(self, command: PackMLCommand) -> Transition | None:
        """External PackML command (fault injection, tests); records the stop reason like a seeded one."""
        transition = self.packml.command(command)
        if transition is not None:
            self._on_transition(transition)
        return transition

    def _on_transition(self, transition: Transition) -> None:
        command = transition.command
        if command in _LEAVES_EXECUTE:
            self.stop_cause = self._draw_cause(command)
        if transition.target is S.COMPLETE:
            # End of lot: the next roll / lot starts; every few lots the input material changes too.
            self.output_lot += 1
            self.lots_completed += 1
            every = self.config.lots_per_recipe
            if every and self.lots_completed % every == 0:
                self.recipe_version = next_version(self.recipe_version)
            if self._rng.random() < 0.3:
                self.input_lot += 1

    def _draw_cause(self, command: PackMLCommand) -> StopCause:
        causes: Sequence[StopCause] = [c for c in self.config.stop_causes if c.command is command]
        if command is C.SUSPEND:
            wanted = StopCategory.BLOCKED if self.packml.interlock == "blocked" else StopCategory.STARVED
            causes = [c for c in causes if c.category is wanted]
        return causes[0] if len(causes) == 1 else self._rng.choice(causes)

    def count(self, *, processed: float, defective: float = 0.0) -> None:
        """Add produced and defective quantities (count units, >= 0)."""
        if processed < 0.0 or defective < 0.0:
            raise ValueError("counts only grow")
        self.processed += processed
        self.defective += defective

    def add_energy(self, power_kw: float, dt_s: float) -> None:
        """Record the power of the step just taken and integrate it."""
        self.power_kw = max(0.0, power_kw)
        self.energy_kwh += self.power_kw * dt_s / 3600.0

    # ------------------------------------------------------------------------------------------ values

    def values(self, *, cur_speed: float | None = None, power_kw: float | None = None) -> dict[str, Value]:
        """Header values; ``cur_speed`` / ``power_kw`` override the noiseless ones (the machine adds noise)."""
        cfg = self.config
        state = self.packml.state
        interlock = self.packml.interlock
        cause = self.stop_cause
        return {
            "Identification.Manufacturer": cfg.manufacturer,
            "Identification.Model": cfg.model,
            "Identification.SerialNumber": cfg.serial_number,
            "PackML.StateCurrent": int(state),
            "PackML.UnitModeCurrent": int(self.unit_mode),
            "PackML.MachSpeed": self.speed_sp,
            "PackML.CurMachSpeed": self.speed if cur_speed is None else cur_speed,
            "PackML.MachDesignSpeed": cfg.design_speed,
            "PackML.Blocked": interlock == "blocked",
            "PackML.Starved": interlock == "starved",
            "PackML.ProdProcessedCount": int(self.processed) % COUNTER_MODULO,
            "PackML.ProdProcessedAccCount": int(self._acc_offset + self.processed) % COUNTER_MODULO,
            "PackML.ProdDefectiveCount": int(self.defective) % COUNTER_MODULO,
            "PackML.ProdDefectiveAccCount": int(self._acc_defective_offset + self.defective) % COUNTER_MODULO,
            "PackML.StopReasonId": cause.id,
            "PackML.StopReasonMessage": cause.message,
            "PackML.StopReasonCategory": str(cause.category) if cause.id else "",
            "PackML.StateCurrentTime": self.packml.time_in_state_s,
            "PackML.AccTimeSinceReset": int(self.time_s) % COUNTER_MODULO,
            "Machinery.MachineryItemState": int(machinery_item_state(state)),
            "Machinery.MachineryOperationMode": int(
                MachineryOperationMode.PROCESSING if self.unit_mode is UnitMode.PRODUCTION
                else MachineryOperationMode.MAINTENANCE),
            "Energy.ActivePower": self.power_kw if power_kw is None else power_kw,
            "Energy.ActiveEnergy": self.energy_kwh,
            "Recipe.ProductId": cfg.recipe_product_id,
            "Recipe.Name": cfg.recipe_name,
            "Recipe.Version": self.recipe_version,
            "Lot.InputLotId": self.input_lot_id,
            "Lot.OutputLotId": self.output_lot_id,
            "Diagnostics.Heartbeat": int(self.time_s) % HEARTBEAT_MODULO,
        }
