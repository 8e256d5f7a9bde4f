"""Calender (roll press) for coated electrode: a pure, seeded process model (equipment notes §3).

Physics (cathode defaults of notes §3.3, EST):

* Compaction follows the exponential line-load model of Meyer et al.:
  ``eps(q) = eps_min + (eps_0 - eps_min) · exp(-q / gamma_c)`` (porosity ``eps`` vs line load ``q`` in N/mm),
  plus a small speed term (shorter dwell at higher speed compacts a little less: +0.0002 per m/min above the
  reference speed).
* Coating thickness per side ``h = m_dry / (rho_true · (1 - eps))`` (µm with g/m² and g/cm³); the electrode is
  ``2·h + foil`` thick before the nip (porosity ``eps_0``) and ``2·h + foil + springback`` after it. Density is
  ``m_dry / h = rho_true · (1 - eps)`` and porosity ``eps``. So thickness out < thickness in and density rises
  with the line load.
* Force control: the line load follows its set point with a first-order lag. Gap control: the gap set point fixes
  the thickness out (gap + springback + roll deflection, deflection proportional to the total force); the line
  load is what the web's compaction needs to reach it (the model inverted). The nip opens (load 0) when the
  machine is not running or held, and opens fast on Abort (QuickOpen).
* Forces per side (operator / drive) split the total ``q · W`` with a slowly wandering tilt; the hydraulic
  pressure of each side is ``F / (n_cyl · A_cyl)``; the tilt makes a cross-web thickness wedge (OS/Centre/DS).
* Roll surface temperatures follow their set points first-order (tau ~15 min).
* The incoming coat weight wanders ±1 % (the coater's tolerance), which shows up in both thicknesses.
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
from simulators.machines.results import ResultFifo, RunningStats

D = DataType
S = PackMLState

MOVING_M_MIN = 0.1


class PressControlMode(IntEnum):
    OPEN = 0
    GAP = 1
    FORCE = 2


def porosity_at_line_load(line_load_n_mm: float, *, eps_0: float, eps_min: float, gamma_n_mm: float) -> float:
    """Porosity (0..1) after the nip at line load ``q`` (Meyer et al. exponential model)."""
    return eps_min + (eps_0 - eps_min) * math.exp(-max(line_load_n_mm, 0.0) / gamma_n_mm)


def line_load_for_porosity(porosity: float, *, eps_0: float, eps_min: float, gamma_n_mm: float) -> float:
    """Inverse of ``porosity_at_line_load``: the line load (N/mm) that compacts to ``porosity`` (0 if >= eps_0)."""
    if porosity >= eps_0:
        return 0.0
    ratio = max((porosity - eps_min) / (eps_0 - eps_min), 1e-9)
    return -gamma_n_mm * math.log(ratio)


def coating_thickness_um(coat_weight_g_m2: float, *, true_density_g_cm3: float, porosity: float) -> float:
    """Thickness (µm) of one coated side: m / (rho_true · (1 - eps)); g/m² over g/cm³ is µm."""
    return coat_weight_g_m2 / (true_density_g_cm3 * (1.0 - porosity))


@dataclass(frozen=True, slots=True, kw_only=True)
class CalenderConfig:
    """Machine and recipe parameters; defaults are the notes' cathode (NMC811) recipe."""

    design_speed_m_min: float = 100.0
    speed_sp_m_min: float = 60.0
    ramp_m_min_per_s: float = 2.0
    abort_ramp_m_min_per_s: float = 25.0
    coated_width_mm: float = 1200.0
    coat_weight_g_m2: float = 220.0  # dry, per side (from the coater)
    foil_um: float = 12.0
    true_density_g_cm3: float = 4.5
    eps_0: float = 0.45
    eps_min: float = 0.18
    gamma_n_mm: float = 900.0
    reference_speed_m_min: float = 60.0
    porosity_per_m_min: float = 0.0002
    springback_um: float = 4.0
    deflection_um_per_mn: float = 3.0
    control_mode: PressControlMode = PressControlMode.FORCE
    line_load_sp_n_mm: float = 1500.0
    line_load_max_n_mm: float = 2500.0
    line_load_lag_s: float = 2.0
    gap_sp_um: float = 130.0
    cylinders_per_side: int = 1
    cylinder_bore_mm: float = 320.0
    roll_temp_sp_cel: float = 80.0
    roll_temp_tau_s: float = 900.0
    thickness_tolerance_pct: float = 2.0
    tension_sp_n: float = 200.0
    base_power_kw: float = 40.0
    noise: bool = True
    packml: PackMLTiming = field(default_factory=PackMLTiming)
    initial_state: PackMLState = PackMLState.EXECUTE

    def __post_init__(self) -> None:
        if not 0.0 < self.eps_min < self.eps_0 < 1.0:
            raise ValueError("need 0 < eps_min < eps_0 < 1")
        if not 0.0 <= self.line_load_sp_n_mm <= self.line_load_max_n_mm:
            raise ValueError("line_load_sp_n_mm must be within 0..line_load_max_n_mm")
        for name in ("coated_width_mm", "coat_weight_g_m2", "true_density_g_cm3", "gamma_n_mm", "line_load_lag_s",
                     "cylinder_bore_mm", "roll_temp_tau_s", "gap_sp_um"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0")
        if self.cylinders_per_side < 1:
            raise ValueError("cylinders_per_side must be >= 1")

    def header_config(self) -> HeaderConfig:
        return HeaderConfig(
            manufacturer="Cellgate Simulators", model="RollPress-800 / 1600", serial_number="SIM-CL-0001",
            speed_unit="m/min", count_unit="m", design_speed=self.design_speed_m_min, speed_sp=self.speed_sp_m_min,
            ramp_per_s=self.ramp_m_min_per_s, abort_ramp_per_s=self.abort_ramp_m_min_per_s,
            recipe_product_id="NMC811-CATHODE", recipe_name="Cathode NMC811 calendering 3.5 g/cm3",
            recipe_version="2", input_lot_prefix="CT01-R", output_lot_prefix="CL01-R",
            stop_causes=CALENDER_STOP_CAUSES, packml=self.packml, initial_state=self.initial_state,
        )

    @property
    def cylinder_area_m2(self) -> float:
        return self.cylinders_per_side * math.pi * (self.cylinder_bore_mm / 2000.0) ** 2


CALENDER_STOP_CAUSES: tuple[StopCause, ...] = (
    *(c for c in DEFAULT_STOP_CAUSES if c.command is not PackMLCommand.ABORT),
    StopCause(id=411, message="Quick open (emergency roll release)", category=StopCategory.FAULT,
              command=PackMLCommand.ABORT),
    StopCause(id=412, message="Web break", category=StopCategory.FAULT, command=PackMLCommand.ABORT),
)

# The nip is closed (loaded) in these states; it opens for stops, resets and faults.
_NIP_CLOSED = frozenset({S.STARTING, S.EXECUTE, S.UNHOLDING, S.UNSUSPENDING, S.SUSPENDING, S.SUSPENDED,
                         S.HOLDING, S.COMPLETING})


def calender_points(config: CalenderConfig | None = None) -> tuple[PointSpec, ...]:
    cfg = config if config is not None else CalenderConfig()
    p = PointSpec
    process = (
        p(name="Line.SpeedSP", data_type=D.DOUBLE, unit="m/min", min=0, max=cfg.design_speed_m_min,
          description="Web speed set point."),
        p(name="Line.Speed", data_type=D.DOUBLE, unit="m/min", min=0, max=cfg.design_speed_m_min * 1.05,
          description="Actual web speed."),
        p(name="Line.Length", data_type=D.DOUBLE, unit="m", min=0, max=None,
          description="Calendered length since the simulator started; never decreases."),
        p(name="Press.ControlMode", data_type=D.UINT32, unit=None, min=0, max=2,
          description="Press control mode: 0 Open, 1 Gap control, 2 Force (line-load) control."),
        p(name="Press.LineLoadSP", data_type=D.DOUBLE, unit="N/mm", min=0, max=cfg.line_load_max_n_mm,
          description="Line load set point (force control)."),
        p(name="Press.LineLoad", data_type=D.DOUBLE, unit="N/mm", min=0, max=cfg.line_load_max_n_mm,
          description="Line load: total roll force over the coated width."),
        p(name="Press.ForceOS", data_type=D.DOUBLE, unit="kN", min=0, max=2500,
          description="Roll force on the operator side."),
        p(name="Press.ForceDS", data_type=D.DOUBLE, unit="kN", min=0, max=2500,
          description="Roll force on the drive side."),
        p(name="Hydraulics.PressureOS", data_type=D.DOUBLE, unit="bar", min=0, max=250,
          description="Hydraulic cylinder pressure, operator side: F / (n_cyl · A_cyl)."),
        p(name="Hydraulics.PressureDS", data_type=D.DOUBLE, unit="bar", min=0, max=250,
          description="Hydraulic cylinder pressure, drive side."),
        p(name="Press.GapSP", data_type=D.DOUBLE, unit="um", min=-50, max=500,
          description="Roll gap set point (gap control)."),
        p(name="Press.GapOS", data_type=D.DOUBLE, unit="um", min=-50, max=500,
          description="Roll gap, operator side."),
        p(name="Press.GapDS", data_type=D.DOUBLE, unit="um", min=-50, max=500,
          description="Roll gap, drive side."),
        p(name="RollUpper.SurfaceTempSP", data_type=D.DOUBLE, unit="Cel", min=20, max=120,
          description="Upper roll surface temperature set point."),
        p(name="RollUpper.SurfaceTemp", data_type=D.DOUBLE, unit="Cel", min=0, max=150,
          description="Upper roll surface temperature."),
        p(name="RollLower.SurfaceTempSP", data_type=D.DOUBLE, unit="Cel", min=20, max=120,
          description="Lower roll surface temperature set point."),
        p(name="RollLower.SurfaceTemp", data_type=D.DOUBLE, unit="Cel", min=0, max=150,
          description="Lower roll surface temperature."),
        p(name="Thickness.In", data_type=D.DOUBLE, unit="um", min=0, max=400,
          description="Electrode thickness before the nip (laser caliper)."),
        p(name="Thickness.Out", data_type=D.DOUBLE, unit="um", min=0, max=400,
          description="Electrode thickness after the nip, mean across the web."),
        p(name="Thickness.OutOS", data_type=D.DOUBLE, unit="um", min=0, max=400,
          description="Thickness after the nip, operator side."),
        p(name="Thickness.OutCentre", data_type=D.DOUBLE, unit="um", min=0, max=400,
          description="Thickness after the nip, centre."),
        p(name="Thickness.OutDS", data_type=D.DOUBLE, unit="um", min=0, max=400,
          description="Thickness after the nip, drive side."),
        p(name="Thickness.OutTarget", data_type=D.DOUBLE, unit="um", min=0, max=400,
          description="Target thickness after the nip (recipe line load)."),
        p(name="Density.Calculated", data_type=D.DOUBLE, unit="g/cm3", min=1, max=4.5,
          description="Coating density m_dry / h_coat = rho_true · (1 - porosity)."),
        p(name="Porosity.Calculated", data_type=D.DOUBLE, unit="%", min=0, max=100,
          description="Coating porosity after the nip."),
        p(name="Web.Elongation", data_type=D.DOUBLE, unit="%", min=0, max=3,
          description="Web elongation v_out / v_in - 1 (Al foil ~1 %)."),
        p(name="Unwind.Tension", data_type=D.DOUBLE, unit="N", min=0, max=600,
          description="Unwind web tension."),
        p(name="Rewind.Tension", data_type=D.DOUBLE, unit="N", min=0, max=600,
          description="Rewind web tension."),
        p(name="Alarms.QuickOpen", data_type=D.BOOLEAN, unit=None,
          description="Emergency roll release: the press opened on a fault (PackML Aborting/Aborted)."),
        p(name="Alarms.ThicknessOutOfTolerance", data_type=D.BOOLEAN, unit=None,
          description="Thickness after the nip is outside its tolerance band."),
        p(name="Alarms.ParticleCrackingRisk", data_type=D.BOOLEAN, unit=None,
          description="Porosity within 0.02 of the compaction limit: over-calendering."),
        p(name="Alarms.HydraulicOverPressure", data_type=D.BOOLEAN, unit=None,
          description="A hydraulic pressure is above 230 bar."),
    )
    results = ResultFifo(unit="roll", fields=calender_result_fields()).points
    return (*header_points(cfg.header_config()), *process, *results)


def calender_result_fields() -> tuple[PointSpec, ...]:
    """Fields of the per-roll record, statistics weighted by calendered length."""
    p = PointSpec
    return (
        p(name="Result.RollId", data_type=D.STRING, unit=None, description="Id of the calendered roll."),
        p(name="Result.InputRollId", data_type=D.STRING, unit=None,
          description="Coated roll it was made from (the coater's roll id)."),
        p(name="Result.RecipeVersion", data_type=D.STRING, unit=None, description="Recipe version used."),
        p(name="Result.Length", data_type=D.DOUBLE, unit="m", min=0, max=100000, description="Calendered length."),
        p(name="Result.CoatWeightMean", data_type=D.DOUBLE, unit="g/m2", min=0, max=500,
          description="Mean incoming dry coat weight per side."),
        p(name="Result.CoatWeightStd", data_type=D.DOUBLE, unit="g/m2", min=0, max=500,
          description="Standard deviation of the incoming coat weight."),
        p(name="Result.ThicknessMean", data_type=D.DOUBLE, unit="um", min=0, max=400,
          description="Mean electrode thickness after the nip."),
        p(name="Result.ThicknessStd", data_type=D.DOUBLE, unit="um", min=0, max=400,
          description="Standard deviation of the thickness after the nip."),
        p(name="Result.DensityMean", data_type=D.DOUBLE, unit="g/cm3", min=0, max=4.5,
          description="Mean coating density."),
        p(name="Result.DefectiveLength", data_type=D.DOUBLE, unit="m", min=0, max=100000,
          description="Length out of thickness tolerance."),
    )


class Calender:
    """The calender model. Construct with a seeded ``random.Random``; advance with ``step(dt_s)``."""

    def __init__(self, *, rng: random.Random, config: CalenderConfig | None = None) -> None:
        self.config = cfg = config if config is not None else CalenderConfig()
        self._rng = rng
        self.header = MachineHeader(rng=rng, config=cfg.header_config())
        self.packml = self.header.packml
        self._points = calender_points(cfg)
        self.control_mode = cfg.control_mode
        self.line_load_sp = cfg.line_load_sp_n_mm
        self.gap_sp = cfg.gap_sp_um
        self.roll_temp_sp = [cfg.roll_temp_sp_cel, cfg.roll_temp_sp_cel]
        self.roll_temp = list(self.roll_temp_sp)
        self.weight_factor = 1.0  # incoming coat weight / recipe
        self.tilt = 0.0  # (F_OS - F_DS) / F_total
        self.line_load = 0.0  # gap control iterates from the present load
        self.line_load = self._line_load_target() if self._nip_closed() else 0.0
        self.tension = cfg.tension_sp_n if self.header.producing else 0.0
        self.results = ResultFifo(unit="roll", fields=calender_result_fields())
        self.finished_rolls: list[str] = []  # ids of finished rolls, in order (the line model takes them)
        # Where the next input roll comes from (the line model: the coater's finished rolls); None: own counter.
        self.roll_source: Callable[[], str | None] | None = None
        self._reset_roll()
        self._values: dict[str, Value] = {}
        self._publish()

    @property
    def points(self) -> tuple[PointSpec, ...]:
        return self._points

    def values(self) -> Mapping[str, Value]:
        return self._values

    # ------------------------------------------------------------------------------------------ commands

    def set_speed_sp(self, speed_m_min: float) -> None:
        self.header.set_speed_sp(speed_m_min)

    def set_line_load_sp(self, line_load_n_mm: float) -> None:
        self.line_load_sp = clamp(line_load_n_mm, 0.0, self.config.line_load_max_n_mm)

    def set_gap_sp(self, gap_um: float) -> None:
        self.gap_sp = clamp(gap_um, -50.0, 500.0)

    def set_control_mode(self, mode: PressControlMode) -> None:
        self.control_mode = mode

    def set_roll_temp_sp(self, temp_cel: float) -> None:
        self.roll_temp_sp = [clamp(temp_cel, 20.0, 120.0)] * 2

    # ------------------------------------------------------------------------------------------ physics

    def porosity(self, line_load_n_mm: float) -> float:
        """Porosity after the nip at ``line_load_n_mm`` and the current speed."""
        cfg = self.config
        eps = porosity_at_line_load(line_load_n_mm, eps_0=cfg.eps_0, eps_min=cfg.eps_min, gamma_n_mm=cfg.gamma_n_mm)
        if line_load_n_mm > 0.0:
            eps += cfg.porosity_per_m_min * (self.header.speed - cfg.reference_speed_m_min)
        return clamp(eps, cfg.eps_min, cfg.eps_0)

    def _coat_um(self, porosity: float) -> float:
        cfg = self.config
        return coating_thickness_um(cfg.coat_weight_g_m2 * self.weight_factor,
                                    true_density_g_cm3=cfg.true_density_g_cm3, porosity=porosity)

    def thickness_in_um(self) -> float:
        return 2.0 * self._coat_um(self.config.eps_0) + self.config.foil_um

    def thickness_out_um(self, line_load_n_mm: float) -> float:
        if line_load_n_mm <= 0.0:
            return self.thickness_in_um()
        return 2.0 * self._coat_um(self.porosity(line_load_n_mm)) + self.config.foil_um + self.config.springback_um

    def _deflection_um(self, line_load_n_mm: float) -> float:
        total_mn = line_load_n_mm * self.config.coated_width_mm / 1e6
        return self.config.deflection_um_per_mn * total_mn

    def _gap_line_load(self) -> float:
        """Line load that makes the web as thin as the gap allows (gap control), found by fixed-point iteration."""
        cfg = self.config
        q = self.line_load
        for _ in range(4):
            h_out = self.gap_sp + cfg.springback_um + self._deflection_um(q)
            coat = (h_out - cfg.foil_um - cfg.springback_um) / 2.0
            if coat <= 0.0:
                return cfg.line_load_max_n_mm
            porosity = 1.0 - cfg.coat_weight_g_m2 * self.weight_factor / (cfg.true_density_g_cm3 * coat)
            porosity -= cfg.porosity_per_m_min * (self.header.speed - cfg.reference_speed_m_min)
            # Clamped inside the loop: a gap the press cannot reach simply saturates at the maximum load.
            q = clamp(line_load_for_porosity(porosity, eps_0=cfg.eps_0, eps_min=cfg.eps_min,
                                             gamma_n_mm=cfg.gamma_n_mm), 0.0, cfg.line_load_max_n_mm)
        return q

    def _line_load_target(self) -> float:
        if self.control_mode is PressControlMode.FORCE:
            return self.line_load_sp
        if self.control_mode is PressControlMode.GAP:
            return self._gap_line_load()
        return 0.0

    def target_out_um(self) -> float:
        """Thickness the recipe asks for: at the line-load set point (force control), at the gap set point (gap
        control, through the load that gap needs), the incoming thickness with the press open."""
        if self.control_mode is PressControlMode.OPEN:
            return self.thickness_in_um()
        return self.thickness_out_um(self._line_load_target())

    def _nip_closed(self) -> bool:
        return self.header.state in _NIP_CLOSED

    # ------------------------------------------------------------------------------------------ dynamics

    def step(self, dt_s: float) -> Mapping[str, Value]:
        check_dt(dt_s)
        if dt_s == 0.0:
            return self._values
        cfg = self.config
        header = self.header
        rng = self._rng
        old_speed = header.speed
        roll_id, recipe, lots = header.output_lot_id, header.recipe_version, header.lots_completed
        header.step(dt_s)
        if header.lots_completed != lots:
            self._finish_roll(roll_id, recipe)
        advanced_m = (old_speed + header.speed) / 2.0 / 60.0 * dt_s

        if cfg.noise:
            decay = math.exp(-dt_s / 600.0)
            spread = math.sqrt(1.0 - decay * decay)
            self.weight_factor = 1.0 + (self.weight_factor - 1.0) * decay + rng.gauss(0.0, 0.005 * spread)
            self.tilt = self.tilt * decay + rng.gauss(0.0, 0.01 * spread)

        if header.aborted:
            self.line_load = 0.0  # quick open: the rolls part at once
        else:
            target = self._line_load_target() if self._nip_closed() else 0.0
            self.line_load += (target - self.line_load) * (1.0 - math.exp(-dt_s / cfg.line_load_lag_s))

        alpha = 1.0 - math.exp(-dt_s / cfg.roll_temp_tau_s)
        for i, sp in enumerate(self.roll_temp_sp):
            self.roll_temp[i] += (sp - self.roll_temp[i]) * alpha
        tension_target = 0.0 if header.aborted else cfg.tension_sp_n if header.speed >= MOVING_M_MIN else 50.0
        self.tension += (tension_target - self.tension) * (1.0 - math.exp(-dt_s / 0.5))

        if advanced_m > 0.0:
            target_out = self.target_out_um()
            deviation = abs(self.thickness_out_um(self.line_load) - target_out) / target_out * 100.0
            defective = advanced_m if deviation > cfg.thickness_tolerance_pct else 0.0
            header.count(processed=advanced_m, defective=defective)
            nip = self.line_load > 1.0
            porosity = self.porosity(self.line_load) if nip else cfg.eps_0
            self._roll_weight.add(cfg.coat_weight_g_m2 * self.weight_factor, advanced_m)
            self._roll_thickness.add(self.thickness_out_um(self.line_load) if nip else self.thickness_in_um(),
                                     advanced_m)
            self._roll_density.add(cfg.true_density_g_cm3 * (1.0 - porosity), advanced_m)
            self._roll_defective_m += defective
        # Drive power grows with the rolling torque (line load) and the speed (EST: 50-250 kW in production).
        power = cfg.base_power_kw + 1.2 * header.speed + 0.001 * self.line_load * header.speed
        power += 0.3 * sum(max(0.0, t - 25.0) for t in self.roll_temp_sp)  # roll heating
        header.add_energy(power, dt_s)
        self._publish()
        return self._values

    def _reset_roll(self) -> None:
        self._roll_weight = RunningStats()
        self._roll_thickness = RunningStats()
        self._roll_density = RunningStats()
        self._roll_defective_m = 0.0

    def _finish_roll(self, roll_id: str, recipe_version: str) -> None:
        """End of roll (PackML Complete): record it, then mount the next coated roll if the line has one."""
        thickness = self._roll_thickness
        self.results.push({
            "Result.RollId": roll_id, "Result.InputRollId": self.header.input_lot_id,
            "Result.RecipeVersion": recipe_version, "Result.Length": min(thickness.weight, 100_000.0),
            "Result.CoatWeightMean": clamp(self._roll_weight.mean, 0.0, 500.0),
            "Result.CoatWeightStd": min(self._roll_weight.std, 500.0),
            "Result.ThicknessMean": clamp(thickness.mean, 0.0, 400.0), "Result.ThicknessStd": min(thickness.std, 400.0),
            "Result.DensityMean": clamp(self._roll_density.mean, 0.0, 4.5),
            "Result.DefectiveLength": min(self._roll_defective_m, 100_000.0),
        })
        self.finished_rolls.append(roll_id)
        self._reset_roll()
        if self.roll_source is not None:
            next_roll = self.roll_source()
            if next_roll is not None:
                self.header.input_lot_text = next_roll

    def ack_result(self, record_id: int) -> bool:
        acked = self.results.ack(record_id)
        self._values.update(self.results.values())
        return acked

    @property
    def ack_seen(self) -> int:
        return self.results.last_ack

    # ------------------------------------------------------------------------------------------ values

    def _noise(self, sigma: float) -> float:
        return self._rng.gauss(0.0, sigma) if self.config.noise else 0.0

    def _publish(self) -> None:
        cfg = self.config
        header = self.header
        n = self._noise
        q = self.line_load
        total_kn = q * cfg.coated_width_mm / 1000.0
        force_os = total_kn * (1.0 + self.tilt) / 2.0
        force_ds = total_kn * (1.0 - self.tilt) / 2.0
        area = cfg.cylinder_area_m2
        pressure_os = force_os * 1000.0 / area / 1e5  # kN -> N, Pa -> bar
        pressure_ds = force_ds * 1000.0 / area / 1e5
        nip = q > 1.0
        porosity = self.porosity(q) if nip else cfg.eps_0
        h_in = self.thickness_in_um()
        h_out = self.thickness_out_um(q) if nip else h_in
        wedge = 20.0 * self.tilt  # µm of OS/DS difference per unit tilt (EST)
        gap = h_out - cfg.springback_um - self._deflection_um(q) if nip else min(h_in + 50.0, 500.0)
        density = cfg.true_density_g_cm3 * (1.0 - porosity)
        target_out = self.target_out_um()
        moving = header.speed >= MOVING_M_MIN
        speed = max(0.0, header.speed + n(0.03)) if moving else 0.0
        thickness_out = h_out + n(0.3)
        power = max(0.0, header.power_kw + n(0.01 * header.power_kw))
        values: dict[str, Value] = header.values(cur_speed=speed, power_kw=power)
        values.update({
            "Line.SpeedSP": header.speed_sp,
            "Line.Speed": speed,
            "Line.Length": header.processed,
            "Press.ControlMode": int(self.control_mode),
            "Press.LineLoadSP": self.line_load_sp,
            "Press.LineLoad": clamp(q + n(2.0), 0.0, cfg.line_load_max_n_mm) if nip else 0.0,
            "Press.ForceOS": clamp(force_os + n(0.5), 0.0, 2500.0) if nip else 0.0,
            "Press.ForceDS": clamp(force_ds + n(0.5), 0.0, 2500.0) if nip else 0.0,
            "Hydraulics.PressureOS": clamp(pressure_os + n(0.1), 0.0, 250.0) if nip else 0.0,
            "Hydraulics.PressureDS": clamp(pressure_ds + n(0.1), 0.0, 250.0) if nip else 0.0,
            "Press.GapSP": self.gap_sp,
            "Press.GapOS": clamp(gap + wedge / 2.0 + n(0.2), -50.0, 500.0),
            "Press.GapDS": clamp(gap - wedge / 2.0 + n(0.2), -50.0, 500.0),
            "RollUpper.SurfaceTempSP": self.roll_temp_sp[0],
            "RollUpper.SurfaceTemp": self.roll_temp[0] + n(0.1),
            "RollLower.SurfaceTempSP": self.roll_temp_sp[1],
            "RollLower.SurfaceTemp": self.roll_temp[1] + n(0.1),
            "Thickness.In": clamp(h_in + n(0.5), 0.0, 400.0),
            "Thickness.Out": clamp(thickness_out, 0.0, 400.0),
            "Thickness.OutOS": clamp(h_out - wedge / 2.0 + n(0.4), 0.0, 400.0),
            "Thickness.OutCentre": clamp(h_out + n(0.4), 0.0, 400.0),
            "Thickness.OutDS": clamp(h_out + wedge / 2.0 + n(0.4), 0.0, 400.0),
            "Thickness.OutTarget": target_out,
            "Density.Calculated": density,
            "Porosity.Calculated": porosity * 100.0,
            "Web.Elongation": clamp(4.5 * (cfg.eps_0 - porosity), 0.0, 3.0) if nip else 0.0,
            "Unwind.Tension": max(0.0, self.tension + n(2.0)),
            "Rewind.Tension": max(0.0, self.tension * 1.05 + n(2.0)),
            "Alarms.QuickOpen": header.aborted,
            "Alarms.ThicknessOutOfTolerance": nip and moving
            and abs(h_out - target_out) / target_out * 100.0 > cfg.thickness_tolerance_pct,
            "Alarms.ParticleCrackingRisk": nip and porosity < cfg.eps_min + 0.02,
            "Alarms.HydraulicOverPressure": max(pressure_os, pressure_ds) > 230.0,
        })
        values.update(self.results.values())
        self._values = values
