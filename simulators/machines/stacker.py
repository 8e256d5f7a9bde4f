"""Z-fold / lamination cell stacker: a pure, seeded, event-per-sheet model (equipment notes §4).

* The header speed is the sheet rate (sheets/min, design 150 = 0.4 s/sheet). While PackML produces, sheets are
  placed at that rate; after the last sheet of a cell the stack is complete (counted at once) and the machine
  spends ``handling_s`` on transfer and hot press before the first sheet of the next cell. So at any moment
  ``cells completed = sheets stacked // sheets per cell``.
* Every placed sheet is one event: vision offsets X / Y (mm) and theta (deg). X / Y are white noise
  (sigma ``alignment_sigma_mm``) plus a slow drift (an AR(1) walk per sheet, stationary sigma
  ``walk_step_mm / sqrt(1 - walk_decay²)``) that resets at every gripper/vision recalibration; theta is white noise.
  With the defaults the total X / Y spread is sqrt(0.06² + 0.035²) ≈ 0.07 mm (notes: sigma 0.05-0.08 mm).
* Separator tension wanders around its set point; a tension error widens the alignment spread (EST: +50 % per
  1 N of error).
* A cell is NG if any of its sheets was placed outside ±``alignment_limit_mm`` (or theta outside ±0.5 deg), or if
  it fails the particle check or the hi-pot test (seeded, small probabilities). Values of the last sheet / cell
  stay on the points until the next event.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from simulators.machines.header import (
    DEFAULT_STOP_CAUSES,
    HeaderConfig,
    MachineHeader,
    StopCategory,
    StopCause,
    header_points,
)
from simulators.machines.packml import PackMLCommand, PackMLState, PackMLTiming
from simulators.machines.points import DataType, PointSpec, Value, check_dt, clamp
from simulators.machines.results import ResultFifo

D = DataType


class SheetType(IntEnum):
    ANODE = 0
    CATHODE = 1
    SEPARATOR_FOLD = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class StackerConfig:
    design_speed_sheets_min: float = 150.0
    speed_sp_sheets_min: float = 150.0
    ramp_sheets_min_per_s: float = 10.0
    sheets_per_cell: int = 81  # 41 anodes + 40 cathodes
    handling_s: float = 6.0
    alignment_sigma_mm: float = 0.06
    theta_sigma_deg: float = 0.03
    walk_step_mm: float = 0.005
    walk_decay: float = 0.99
    recalibration_cells: int = 10
    alignment_limit_mm: float = 0.3
    theta_limit_deg: float = 0.5
    separator_tension_sp_n: float = 1.5
    separator_tension_sigma_n: float = 0.1
    separator_per_sheet_m: float = 0.105  # one Z-fold layer: electrode width + margin
    particle_ng_probability: float = 0.003
    hipot_ng_probability: float = 0.002
    cell_id_prefix: str = "CELL-S1-"  # + 8 digits: 16 characters, what a rack channel's CellId holds
    # Rolls in use at start (ids as the electrode lines print them); the line model replaces them as they run out.
    anode_roll_id: str = "CL02-R000001"
    cathode_roll_id: str = "CL01-R000001"
    separator_roll_id: str = "SEP-R000001"
    cells_per_roll: int = 100  # electrode rolls change every so many cells (~1 h at design speed)
    cells_per_separator_roll: int = 200
    noise: bool = True
    packml: PackMLTiming = field(default_factory=lambda: PackMLTiming(
        mean_s_between_holds=1800.0, mean_s_between_suspends=600.0, mean_s_between_stops=4 * 3600.0,
        mean_s_between_aborts=6 * 3600.0, mean_s_between_completes=3600.0))
    initial_state: PackMLState = PackMLState.EXECUTE

    def __post_init__(self) -> None:
        if not 0.0 < self.speed_sp_sheets_min <= self.design_speed_sheets_min:
            raise ValueError("speed_sp_sheets_min must be within (0, design_speed_sheets_min]")
        if not 1 <= self.sheets_per_cell <= 1000:
            raise ValueError("sheets_per_cell must be 1..1000")
        if not 0.0 <= self.walk_decay < 1.0:
            raise ValueError("walk_decay must be within [0, 1)")
        for name in ("handling_s", "alignment_sigma_mm", "theta_sigma_deg", "alignment_limit_mm",
                     "theta_limit_deg", "separator_tension_sp_n"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0")
        if self.cells_per_roll < 1 or self.cells_per_separator_roll < 1:
            raise ValueError("cells_per_roll and cells_per_separator_roll must be >= 1")
        if self.walk_step_mm < 0.0 or self.recalibration_cells < 1:
            raise ValueError("walk_step_mm must be >= 0 and recalibration_cells >= 1")

    @property
    def xy_sigma_mm(self) -> float:
        """Documented total spread of the X / Y offsets at nominal tension (white noise + stationary drift)."""
        drift = self.walk_step_mm / math.sqrt(1.0 - self.walk_decay**2)
        return math.hypot(self.alignment_sigma_mm, drift)

    def header_config(self) -> HeaderConfig:
        return HeaderConfig(
            manufacturer="Cellgate Simulators", model="ZFold-Stacker S2", serial_number="SIM-ST-0001",
            speed_unit="{sheet}/min", count_unit="{sheet}", design_speed=self.design_speed_sheets_min,
            speed_sp=self.speed_sp_sheets_min, ramp_per_s=self.ramp_sheets_min_per_s,
            abort_ramp_per_s=self.design_speed_sheets_min, acc_count_offset=(1.0e6, 1.0e7),
            recipe_product_id="POUCH-100AH", recipe_name=f"Pouch 100 Ah, {self.sheets_per_cell} sheets",
            recipe_version="5", input_lot_prefix="CL01-R", output_lot_prefix="ST01-B",
            stop_causes=STACKER_STOP_CAUSES, packml=self.packml, initial_state=self.initial_state,
        )


STACKER_STOP_CAUSES: tuple[StopCause, ...] = (
    *(c for c in DEFAULT_STOP_CAUSES if c.command not in (PackMLCommand.ABORT, PackMLCommand.SUSPEND)),
    StopCause(id=211, message="Magazine empty", category=StopCategory.STARVED, command=PackMLCommand.SUSPEND),
    StopCause(id=212, message="Separator roll change", category=StopCategory.STARVED,
              command=PackMLCommand.SUSPEND),
    StopCause(id=213, message="Outfeed conveyor full", category=StopCategory.BLOCKED,
              command=PackMLCommand.SUSPEND),
    StopCause(id=421, message="Double pick", category=StopCategory.FAULT, command=PackMLCommand.ABORT),
    StopCause(id=422, message="Separator break", category=StopCategory.FAULT, command=PackMLCommand.ABORT),
    StopCause(id=423, message="Vacuum loss", category=StopCategory.FAULT, command=PackMLCommand.ABORT),
)


def next_roll_id(roll_id: str) -> str:
    """The id after ``roll_id``: its trailing number + 1, same width (``CL02-R000041`` -> ``CL02-R000042``)."""
    digits = len(roll_id) - len(roll_id.rstrip("0123456789"))
    if digits == 0:
        return f"{roll_id}-2"
    number = int(roll_id[-digits:]) + 1
    return f"{roll_id[:-digits]}{number:0{digits}d}"


class Reject(IntEnum):
    OK = 0
    ALIGNMENT = 1
    PARTICLE = 2
    HIPOT = 3


def stacker_result_fields() -> tuple[PointSpec, ...]:
    """Fields of the per-cell record: every sheet of the cell counts in its alignment statistics."""
    p = PointSpec
    big = 2**32 - 1
    out: list[PointSpec] = [
        p(name="Result.CellId", data_type=D.STRING, unit=None, description="Id (DMC) of the stacked cell."),
        p(name="Result.AnodeRollId", data_type=D.STRING, unit=None,
          description="Anode roll the cell's anodes came from."),
        p(name="Result.CathodeRollId", data_type=D.STRING, unit=None,
          description="Cathode roll the cell's cathodes came from."),
        p(name="Result.SeparatorRollId", data_type=D.STRING, unit=None, description="Separator roll used."),
        p(name="Result.Sheets", data_type=D.UINT32, unit=None, min=0, max=big, description="Sheets inspected."),
    ]
    for axis in ("X", "Y"):
        out += [
            p(name=f"Result.Offset{axis}Mean", data_type=D.DOUBLE, unit="mm", min=-1, max=1,
              description=f"Mean placement offset along {axis} over every sheet of the cell."),
            p(name=f"Result.Offset{axis}Std", data_type=D.DOUBLE, unit="mm", min=0, max=1,
              description=f"Standard deviation of the {axis} offsets over every sheet of the cell."),
            p(name=f"Result.Offset{axis}MaxAbs", data_type=D.DOUBLE, unit="mm", min=0, max=2,
              description=f"Largest |{axis} offset| over every sheet of the cell."),
        ]
    out += [
        p(name="Result.ThetaMaxAbs", data_type=D.DOUBLE, unit="deg", min=0, max=2,
          description="Largest |rotation| over every sheet of the cell."),
        p(name="Result.SheetsOutOfLimit", data_type=D.UINT32, unit=None, min=0, max=big,
          description="Sheets placed outside the alignment or rotation limit."),
        p(name="Result.Reject", data_type=D.UINT32, unit=None, min=0, max=3,
          description="0 OK, 1 alignment, 2 particle, 3 hi-pot."),
        p(name="Result.InsulationResistance", data_type=D.DOUBLE, unit="MOhm", min=0, max=10000,
          description="Hi-pot insulation resistance of the cell."),
        p(name="Result.StackThickness", data_type=D.DOUBLE, unit="mm", min=0, max=20,
          description="Stack thickness after the hot press."),
    ]
    return tuple(out)


def stacker_points(config: StackerConfig | None = None) -> tuple[PointSpec, ...]:
    cfg = config if config is not None else StackerConfig()
    p = PointSpec
    big = 2**32 - 1
    process = (
        p(name="Cycle.SheetCycleTime", data_type=D.DOUBLE, unit="s", min=0, max=2,
          description="Time taken by the last sheet (pick, place, fold)."),
        p(name="Cycle.CellCycleTime", data_type=D.DOUBLE, unit="s", min=0, max=600,
          description="Time taken by the last completed cell, handling included."),
        p(name="Stack.SheetIndex", data_type=D.UINT32, unit=None, min=0, max=cfg.sheets_per_cell,
          description="Sheets on the current stack (resets at each cell)."),
        p(name="Stack.SheetsPerCell", data_type=D.UINT32, unit=None, min=1, max=1000,
          description="Sheets per cell (recipe)."),
        p(name="Stack.LastSheetType", data_type=D.UINT32, unit=None, min=0, max=2,
          description="Type of the last sheet: 0 Anode, 1 Cathode, 2 Separator fold."),
        p(name="Stack.Thickness", data_type=D.DOUBLE, unit="mm", min=0, max=20,
          description="Thickness of the last completed stack after the hot press."),
        p(name="Vision.OffsetX", data_type=D.DOUBLE, unit="mm", min=-1, max=1,
          description="Placement offset of the last sheet along X (CCD after placement)."),
        p(name="Vision.OffsetY", data_type=D.DOUBLE, unit="mm", min=-1, max=1,
          description="Placement offset of the last sheet along Y."),
        p(name="Vision.OffsetTheta", data_type=D.DOUBLE, unit="deg", min=-0.5, max=0.5,
          description="Placement rotation of the last sheet."),
        p(name="Separator.TensionSP", data_type=D.DOUBLE, unit="N", min=0.2, max=10,
          description="Separator web tension set point."),
        p(name="Separator.Tension", data_type=D.DOUBLE, unit="N", min=0, max=10,
          description="Separator web tension."),
        p(name="Separator.ConsumedLength", data_type=D.DOUBLE, unit="m", min=0, max=None,
          description="Separator used since the simulator started; never decreases."),
        p(name="Gripper.Vacuum", data_type=D.DOUBLE, unit="kPa", min=-95, max=0,
          description="Gripper vacuum (pick failure above -40 kPa)."),
        p(name="HiPot.InsulationResistance", data_type=D.DOUBLE, unit="MOhm", min=0, max=10000,
          description="Insulation resistance of the last completed stack (NG below 20 MOhm)."),
        p(name="Cell.Id", data_type=D.STRING, unit=None,
          description="Id (DMC) of the cell being stacked; starts its genealogy."),
        p(name="Counters.SheetsStacked", data_type=D.UINT32, unit=None, min=0, max=big,
          description="Sheets placed since the simulator started."),
        p(name="Counters.CellsCompleted", data_type=D.UINT32, unit=None, min=0, max=big,
          description="Stacks completed (OK + NG) = sheets stacked // sheets per cell."),
        p(name="Counters.CellsOK", data_type=D.UINT32, unit=None, min=0, max=big,
          description="Stacks completed without a defect."),
        p(name="Counters.CellsNG", data_type=D.UINT32, unit=None, min=0, max=big,
          description="Stacks rejected (alignment, particle or hi-pot)."),
        p(name="Counters.NgAlignment", data_type=D.UINT32, unit=None, min=0, max=big,
          description="Stacks rejected because a sheet was placed outside the alignment limit."),
        p(name="Counters.NgParticle", data_type=D.UINT32, unit=None, min=0, max=big,
          description="Stacks rejected by the particle inspection."),
        p(name="Counters.NgHiPot", data_type=D.UINT32, unit=None, min=0, max=big,
          description="Stacks rejected by the hi-pot insulation test."),
        p(name="Alarms.VisionNgConsecutive", data_type=D.BOOLEAN, unit=None,
          description="Two or more consecutive stacks were rejected."),
        p(name="Alarms.SeparatorBreak", data_type=D.BOOLEAN, unit=None,
          description="The separator web broke (PackML abort with that cause)."),
    )
    fifo = ResultFifo(unit="cell", fields=stacker_result_fields())
    return (*header_points(cfg.header_config()), *process, *fifo.points)


class Stacker:
    """The stacker model. Construct with a seeded ``random.Random``; advance with ``step(dt_s)``."""

    def __init__(self, *, rng: random.Random, config: StackerConfig | None = None) -> None:
        self.config = cfg = config if config is not None else StackerConfig()
        self._rng = rng
        self.header = MachineHeader(rng=rng, config=cfg.header_config())
        self.packml = self.header.packml
        self._points = stacker_points(cfg)
        self.cell_serial = 1 + rng.randrange(10_000_000)
        self.sheet_index = 0
        self.sheet_phase = 0.0  # fraction of the next sheet done
        self.handling_left_s = 0.0
        self.sheets_stacked = 0
        self.cells_ok = 0
        self.ng_alignment = 0
        self.ng_particle = 0
        self.ng_hipot = 0
        self.consecutive_ng = 0
        self._cell_misaligned = False
        self._cell_started_s = 0.0
        self.cell_cycle_s = 0.0
        self.walk_x = 0.0
        self.walk_y = 0.0
        self.tension = cfg.separator_tension_sp_n
        self.offset_x = 0.0
        self.offset_y = 0.0
        self.offset_theta = 0.0
        self.last_sheet_cycle_s = 60.0 / cfg.speed_sp_sheets_min
        self.insulation_mohm = 500.0
        self.stack_thickness_mm = 0.0
        self.separator_m = 0.0
        self.anode_roll_id = cfg.anode_roll_id
        self.cathode_roll_id = cfg.cathode_roll_id
        self.separator_roll_id = cfg.separator_roll_id
        self.results = ResultFifo(unit="cell", fields=stacker_result_fields())
        self.completed_cell_ids: list[str] = []  # every good cell finished, in order, for the line model
        # Where the next cathode roll comes from (the line model: the calender's finished rolls; when it has none
        # the roll in use runs on); None: the next id of the own counter.
        self.cathode_source: Callable[[], str | None] | None = None
        self.header.input_lot_text = self.cathode_roll_id
        self._reset_cell_stats()
        self._values: dict[str, Value] = {}
        self._publish()

    @property
    def points(self) -> tuple[PointSpec, ...]:
        return self._points

    def values(self) -> Mapping[str, Value]:
        return self._values

    @property
    def cells_completed(self) -> int:
        return self.sheets_stacked // self.config.sheets_per_cell

    @property
    def cells_ng(self) -> int:
        return self.cells_completed - self.cells_ok

    @property
    def cell_id(self) -> str:
        return f"{self.config.cell_id_prefix}{self.cell_serial:08d}"

    def set_speed_sp(self, sheets_per_min: float) -> None:
        self.header.set_speed_sp(sheets_per_min)

    def load_rolls(self, *, anode: str | None = None, cathode: str | None = None, separator: str | None = None) -> None:
        """Mount new rolls (the line model does it when one runs out); later cells record them."""
        if anode is not None:
            self.anode_roll_id = anode
        if cathode is not None:
            self.cathode_roll_id = cathode
            self.header.input_lot_text = cathode
        if separator is not None:
            self.separator_roll_id = separator

    def ack_result(self, record_id: int) -> bool:
        acked = self.results.ack(record_id)
        self._publish()
        return acked

    @property
    def ack_seen(self) -> int:
        return self.results.last_ack

    def _reset_cell_stats(self) -> None:
        self._n = 0
        self._sum = [0.0, 0.0]
        self._sumsq = [0.0, 0.0]
        self._max_abs = [0.0, 0.0, 0.0]
        self._out_of_limit = 0

    # ------------------------------------------------------------------------------------------ dynamics

    def step(self, dt_s: float) -> Mapping[str, Value]:
        check_dt(dt_s)
        if dt_s == 0.0:
            return self._values
        cfg = self.config
        header = self.header
        rng = self._rng
        header.step(dt_s)
        if cfg.noise:
            # Separator tension: OU around the set point, tau 20 s.
            decay = math.exp(-dt_s / 20.0)
            self.tension = cfg.separator_tension_sp_n + (self.tension - cfg.separator_tension_sp_n) * decay \
                + rng.gauss(0.0, cfg.separator_tension_sigma_n * math.sqrt(1.0 - decay * decay))
        start_time = header.time_s - dt_s
        remaining = dt_s
        rate = header.speed / 60.0 if header.producing else 0.0  # sheets per second
        while remaining > 0.0:
            if self.handling_left_s > 0.0:
                used = min(remaining, self.handling_left_s)
                self.handling_left_s -= used
                remaining -= used
                if self.handling_left_s <= 0.0:
                    self._start_cell(start_time + dt_s - remaining)
                continue
            if rate <= 0.0:
                break
            to_next = (1.0 - self.sheet_phase) / rate
            if to_next > remaining:
                self.sheet_phase += rate * remaining
                break
            remaining -= to_next
            self.sheet_phase = 0.0
            self.last_sheet_cycle_s = 1.0 / rate
            self._place_sheet(start_time + dt_s - remaining)
        power = 8.0 + 0.12 * header.speed + (6.0 if self.handling_left_s > 0.0 else 0.0)  # servos, press, vacuum
        header.add_energy(power, dt_s)
        self._publish()
        return self._values

    def _place_sheet(self, now_s: float) -> None:
        cfg = self.config
        rng = self._rng
        self.sheet_index += 1
        self.sheets_stacked += 1
        self.separator_m += cfg.separator_per_sheet_m
        tension_error = abs(self.tension - cfg.separator_tension_sp_n)
        widen = 1.0 + 0.5 * tension_error
        sigma = cfg.alignment_sigma_mm * widen
        if cfg.walk_step_mm > 0.0:
            self.walk_x = self.walk_x * cfg.walk_decay + rng.gauss(0.0, cfg.walk_step_mm)
            self.walk_y = self.walk_y * cfg.walk_decay + rng.gauss(0.0, cfg.walk_step_mm)
        self.offset_x = self.walk_x + rng.gauss(0.0, sigma)
        self.offset_y = self.walk_y + rng.gauss(0.0, sigma)
        self.offset_theta = rng.gauss(0.0, cfg.theta_sigma_deg * widen)
        self._n += 1
        for i, offset in enumerate((self.offset_x, self.offset_y)):
            self._sum[i] += offset
            self._sumsq[i] += offset * offset
        for i, offset in enumerate((self.offset_x, self.offset_y, self.offset_theta)):
            self._max_abs[i] = max(self._max_abs[i], abs(offset))
        if (abs(self.offset_x) > cfg.alignment_limit_mm or abs(self.offset_y) > cfg.alignment_limit_mm
                or abs(self.offset_theta) > cfg.theta_limit_deg):
            self._cell_misaligned = True
            self._out_of_limit += 1
        self.header.count(processed=1.0)
        if self.sheet_index >= cfg.sheets_per_cell:
            self._complete_cell(now_s)

    def _complete_cell(self, now_s: float) -> None:
        cfg = self.config
        rng = self._rng
        particle = rng.random() < cfg.particle_ng_probability
        hipot = rng.random() < cfg.hipot_ng_probability
        self.insulation_mohm = rng.uniform(2.0, 15.0) if hipot else rng.lognormvariate(math.log(600.0), 0.4)
        self.stack_thickness_mm = rng.gauss(11.0, 0.05)
        if self._cell_misaligned:
            self.ng_alignment += 1
        elif particle:
            self.ng_particle += 1
        elif hipot:
            self.ng_hipot += 1
        else:
            self.cells_ok += 1
        ng = self._cell_misaligned or particle or hipot
        reject = (Reject.ALIGNMENT if self._cell_misaligned else Reject.PARTICLE if particle
                  else Reject.HIPOT if hipot else Reject.OK)
        self._push_record(reject)
        self.consecutive_ng = self.consecutive_ng + 1 if ng else 0
        if ng:
            self.header.count(processed=0.0, defective=float(cfg.sheets_per_cell))
        self.cell_cycle_s = now_s - self._cell_started_s + cfg.handling_s
        self.handling_left_s = cfg.handling_s
        if self.cells_completed % cfg.recalibration_cells == 0:
            self.walk_x = self.walk_y = 0.0  # gripper / vision recalibration

    def _push_record(self, reject: Reject) -> None:
        n = max(self._n, 1)
        record: dict[str, Value] = {
            "Result.CellId": self.cell_id,
            "Result.AnodeRollId": self.anode_roll_id,
            "Result.CathodeRollId": self.cathode_roll_id,
            "Result.SeparatorRollId": self.separator_roll_id,
            "Result.Sheets": self._n,
            "Result.ThetaMaxAbs": clamp(self._max_abs[2], 0.0, 2.0),
            "Result.SheetsOutOfLimit": self._out_of_limit,
            "Result.Reject": int(reject),
            "Result.InsulationResistance": clamp(self.insulation_mohm, 0.0, 10_000.0),
            "Result.StackThickness": clamp(self.stack_thickness_mm, 0.0, 20.0),
        }
        for i, axis in enumerate(("X", "Y")):
            mean = self._sum[i] / n
            variance = max(self._sumsq[i] / n - mean * mean, 0.0)
            record[f"Result.Offset{axis}Mean"] = clamp(mean, -1.0, 1.0)
            record[f"Result.Offset{axis}Std"] = clamp(math.sqrt(variance), 0.0, 1.0)
            record[f"Result.Offset{axis}MaxAbs"] = clamp(self._max_abs[i], 0.0, 2.0)
        self.results.push(record)
        if reject is Reject.OK:
            self.completed_cell_ids.append(self.cell_id)  # NG stacks are scrapped, not formed
        done = self.cells_completed
        if done % self.config.cells_per_roll == 0:
            source = self.cathode_source
            cathode = source() if source is not None else next_roll_id(self.cathode_roll_id)
            self.load_rolls(anode=next_roll_id(self.anode_roll_id), cathode=cathode)
        if done % self.config.cells_per_separator_roll == 0:
            self.load_rolls(separator=next_roll_id(self.separator_roll_id))

    def _start_cell(self, now_s: float) -> None:
        self.sheet_index = 0
        self._cell_misaligned = False
        self._reset_cell_stats()
        self.cell_serial += 1
        self._cell_started_s = now_s

    # ------------------------------------------------------------------------------------------ values

    def _noise(self, sigma: float) -> float:
        return self._rng.gauss(0.0, sigma) if self.config.noise else 0.0

    def _publish(self) -> None:
        cfg = self.config
        header = self.header
        n = self._noise
        running = header.speed > 0.0
        speed = max(0.0, header.speed + n(0.2)) if running else 0.0
        power = max(0.0, header.power_kw + n(0.01 * header.power_kw))
        values: dict[str, Value] = header.values(cur_speed=speed, power_kw=power)
        index = self.sheet_index
        last_type = SheetType.ANODE if index % 2 == 1 else SheetType.CATHODE
        wrap = 2**32
        values.update({
            "Cycle.SheetCycleTime": clamp(self.last_sheet_cycle_s + n(0.01), 0.0, 2.0),
            "Cycle.CellCycleTime": clamp(self.cell_cycle_s, 0.0, 600.0),
            "Stack.SheetIndex": index,
            "Stack.SheetsPerCell": cfg.sheets_per_cell,
            "Stack.LastSheetType": int(last_type),
            "Stack.Thickness": clamp(self.stack_thickness_mm, 0.0, 20.0),
            "Vision.OffsetX": clamp(self.offset_x, -1.0, 1.0),
            "Vision.OffsetY": clamp(self.offset_y, -1.0, 1.0),
            "Vision.OffsetTheta": clamp(self.offset_theta, -0.5, 0.5),
            "Separator.TensionSP": cfg.separator_tension_sp_n,
            "Separator.Tension": clamp(self.tension if not header.aborted else 0.0, 0.0, 10.0),
            "Separator.ConsumedLength": self.separator_m,
            "Gripper.Vacuum": clamp(-70.0 + n(1.0), -95.0, 0.0) if running else -5.0,
            "HiPot.InsulationResistance": clamp(self.insulation_mohm, 0.0, 10_000.0),
            "Cell.Id": self.cell_id,
            "Counters.SheetsStacked": self.sheets_stacked % wrap,
            "Counters.CellsCompleted": self.cells_completed % wrap,
            "Counters.CellsOK": self.cells_ok % wrap,
            "Counters.CellsNG": self.cells_ng % wrap,
            "Counters.NgAlignment": self.ng_alignment % wrap,
            "Counters.NgParticle": self.ng_particle % wrap,
            "Counters.NgHiPot": self.ng_hipot % wrap,
            "Alarms.VisionNgConsecutive": self.consecutive_ng >= 2,
            "Alarms.SeparatorBreak": header.aborted and header.stop_cause.id == 422,
        })
        values.update(self.results.values())
        self._values = values
