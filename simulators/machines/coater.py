"""Electrode coater (slot die) with a 10-zone convection dryer: a pure, seeded process model.

Physics (equipment notes §2.3, cathode NMC811/NMP reference recipe §2.1):

* The line speed ramps towards its set point while PackML says the machine produces, and to 0 otherwise
  (fast, on Abort). The produced length is the integral of the speed, so it never goes backwards.
* The metering pump set point ratio-tracks the actual line speed (the PLC's feed-forward), and the pump follows
  its set point with a first-order lag. That lag gives realistic coat-weight transients on every ramp.
* Dry coat weight at the die: ``m = w_s · rho · Q / (v · W)``; wet film ``h_wet = m / (w_s · rho)`` (µm).
  The gauge sits after the dryer, so it sees the weight that was coated ``web_path_die_to_gauge_m`` metres ago:
  the model keeps a position-indexed record of the web, which is a transport delay of ``L / v`` seconds.
* Dryer zone air temperatures follow their set points with a first-order lag (exact discretisation, so they
  approach a new set point monotonically for any step size); the heater output is a P controller around a
  load-dependent base.
* Web tensions follow their set points, plus a term proportional to acceleration; they fall to a standby value
  when the line is stopped and to 0 on Abort (the simulated cause of an abort is a web break).

* The common header (PackML, speed ramp, counters, stop reason, energy, recipe and lot ids) is a
  ``MachineHeader``; the speed of the header is the line speed. The output lot id is the roll id: it changes at
  every end of roll (PackML Complete).

With ``CoaterConfig(extended_points=True)`` the coater also exposes the full common header, the slot-die gap and
coating-defect risk, zoned web tensions (infeed, dryer, outfeed), the exhaust solvent load and concentration
(%LEL; the exhaust fan follows the load to hold ``exhaust_lel_target_pct`` within its flow range), a cross-web
coat-weight profile (one point per lane) and a result FIFO with one record per finished roll
(``simulators.machines.results``). The default (False) keeps the v1 point list.

Noise is added to what is reported, never to the state, so the state stays smooth and tests can switch it off.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from simulators.machines.header import (
    DEFAULT_STOP_CAUSES,
    HEARTBEAT_MODULO,
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


@dataclass(frozen=True, slots=True, kw_only=True)
class CoaterConfig:
    """Machine and recipe parameters. Units are in the names; defaults are the notes' cathode recipe."""

    design_speed_m_min: float = 80.0
    speed_sp_m_min: float = 50.0
    ramp_m_min_per_s: float = 2.0  # ~2.5 %/s of design speed
    abort_ramp_m_min_per_s: float = 20.0
    coated_width_m: float = 1.2
    solids_fraction: float = 0.70
    slurry_density_g_cm3: float = 2.2
    pump_displacement_cm3_rev: float = 45.0
    pump_volumetric_efficiency: float = 0.97
    pump_lag_s: float = 1.5
    coat_weight_target_g_m2: float = 220.0
    coat_weight_tolerance_pct: float = 2.0
    web_path_die_to_gauge_m: float = 80.0
    zone_setpoints_cel: tuple[float, ...] = (90.0, 110.0, 125.0, 135.0, 140.0, 140.0, 135.0, 130.0, 120.0, 100.0)
    zone_time_constant_s: float = 240.0
    zone_heater_max_kw: float = 80.0
    unwind_tension_sp_n: float = 150.0
    rewind_tension_sp_n: float = 140.0
    standby_tension_n: float = 40.0
    tension_lag_s: float = 0.5
    base_power_kw: float = 120.0  # fans, exhaust, NMP recovery, auxiliaries
    drive_power_kw_per_m_min: float = 1.2
    # Slot die: gap set point; the gap / wet film ratio must stay within the stable window (notes §2.3).
    die_gap_sp_um: float = 200.0
    stable_gap_ratio: tuple[float, float] = (1.0, 3.0)
    # Zoned tensions between unwind and rewind (N).
    infeed_tension_sp_n: float = 150.0
    dryer_tension_sp_n: float = 130.0
    outfeed_tension_sp_n: float = 135.0
    # Exhaust: solvent load ṁ = m_wet·(1 − w_s)·W·v, concentration = ṁ / Q; NMP LEL ≈ 54 g/m³ (notes §2.3).
    # The exhaust fan follows the load: it keeps the concentration at ``exhaust_lel_target_pct`` within its
    # minimum (``exhaust_flow_nm3_h``) and maximum flow, with a first-order lag (damper / fan ramp).
    exhaust_flow_nm3_h: float = 30_000.0
    exhaust_flow_max_nm3_h: float = 60_000.0
    exhaust_lel_target_pct: float = 20.0
    exhaust_lag_s: float = 20.0
    solvent_lel_g_m3: float = 54.0
    dryer_residence_s: float = 60.0  # lag between coating and evaporation
    profile_lanes: int = 12
    extended_points: bool = False
    noise: bool = True
    packml: PackMLTiming = field(default_factory=PackMLTiming)
    initial_state: PackMLState = PackMLState.EXECUTE

    def __post_init__(self) -> None:
        if self.exhaust_flow_max_nm3_h < self.exhaust_flow_nm3_h:
            raise ValueError("exhaust_flow_max_nm3_h must be >= exhaust_flow_nm3_h")
        if not 2 <= self.profile_lanes <= 500:
            raise ValueError("profile_lanes must be 2..500")
        if not 1 <= len(self.zone_setpoints_cel) <= 99:
            raise ValueError("a dryer has 1..99 zones")
        if not 0.0 <= self.speed_sp_m_min <= self.design_speed_m_min:
            raise ValueError("speed_sp_m_min must be within 0..design_speed_m_min")
        for name in ("ramp_m_min_per_s", "abort_ramp_m_min_per_s", "coated_width_m", "solids_fraction",
                     "slurry_density_g_cm3", "pump_displacement_cm3_rev", "pump_volumetric_efficiency",
                     "pump_lag_s", "web_path_die_to_gauge_m", "zone_time_constant_s", "tension_lag_s",
                     "die_gap_sp_um", "exhaust_flow_nm3_h", "solvent_lel_g_m3", "dryer_residence_s",
                     "exhaust_lel_target_pct", "exhaust_lag_s"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"{name} must be > 0")

    @property
    def pump_rpm_per_m_min(self) -> float:
        """Pump speed per unit line speed that gives the target coat weight (rearranged mass balance)."""
        return (
            self.coat_weight_target_g_m2
            * self.coated_width_m
            / (self.solids_fraction * self.slurry_density_g_cm3 * self.pump_displacement_cm3_rev
               * self.pump_volumetric_efficiency)
        )


    def header_config(self) -> HeaderConfig:
        """The common-header part of this configuration (speed = line speed in m/min, counts in m)."""
        return HeaderConfig(
            manufacturer=MANUFACTURER, model=MODEL, serial_number=SERIAL_NUMBER,
            speed_unit="m/min", count_unit="m", design_speed=self.design_speed_m_min, speed_sp=self.speed_sp_m_min,
            ramp_per_s=self.ramp_m_min_per_s, abort_ramp_per_s=self.abort_ramp_m_min_per_s,
            recipe_product_id="NMC811-CATHODE", recipe_name=f"Cathode NMC811 {self.coat_weight_target_g_m2:g} g/m2",
            recipe_version="3", input_lot_prefix="SLURRY-", output_lot_prefix="CT01-R",
            stop_causes=COATER_STOP_CAUSES, packml=self.packml, initial_state=self.initial_state,
        )


# The coater's abort is always a web break (that is what Alarms.WebBreak reports).
COATER_STOP_CAUSES: tuple[StopCause, ...] = (
    *(c for c in DEFAULT_STOP_CAUSES if c.command not in (PackMLCommand.ABORT, PackMLCommand.HOLD)),
    StopCause(id=102, message="Splice", category=StopCategory.OPERATOR, command=PackMLCommand.HOLD),
    StopCause(id=103, message="Gauge standardisation", category=StopCategory.OPERATOR, command=PackMLCommand.HOLD),
    StopCause(id=104, message="Die lip cleaning", category=StopCategory.OPERATOR, command=PackMLCommand.HOLD),
    StopCause(id=402, message="Web break", category=StopCategory.FAULT, command=PackMLCommand.ABORT),
)

MANUFACTURER = "Cellgate Simulators"
MODEL = "SlotDie-1300 / 10-zone dryer"
SERIAL_NUMBER = "SIM-CT-0001"
DESIGN_SPEED_MAX_M_MIN = 80.0
MOVING_M_MIN = 0.1  # below this the web is considered at standstill (nothing coated, gauge parked)
_WEB_RECORD_RESOLUTION_M = 0.1  # the position record keeps one entry per 0.1 m of web at most


def zone_name(zone: int) -> str:
    return f"Zone{zone:02d}"


def lane_name(lane: int) -> str:
    return f"Lane{lane:02d}" if lane < 100 else f"Lane{lane}"


def coater_points(zone_count: int = 10, *, config: CoaterConfig | None = None) -> tuple[PointSpec, ...]:
    """The coater's points. Names are dotted paths below the machine object (OPC UA hierarchy).

    Without ``config`` (or with ``extended_points=False``) this is the v1 list that ``config/demo.yaml`` reads;
    with ``extended_points=True`` the extra points of ``coater_extra_points`` follow it.
    """
    p = PointSpec
    head: list[PointSpec] = [
        p(name="Identification.Manufacturer", data_type=D.STRING, unit=None, description="Machine manufacturer."),
        p(name="Identification.Model", data_type=D.STRING, unit=None, description="Machine model."),
        p(name="Identification.SerialNumber", data_type=D.STRING, unit=None, description="Machine serial number."),
        p(name="PackML.StateCurrent", data_type=D.INT32, unit=None, min=0, max=17,
          description="PackML state number per OPC 30050 Annex B (6 = Execute)."),
        p(name="PackML.UnitModeCurrent", data_type=D.INT32, unit=None, min=1, max=3,
          description="PackML unit mode (1 Production, 2 Maintenance, 3 Manual)."),
        p(name="PackML.MachDesignSpeed", data_type=D.DOUBLE, unit="m/min", min=0, max=DESIGN_SPEED_MAX_M_MIN,
          description="Design line speed, the denominator of the OEE performance term."),
        p(name="PackML.Blocked", data_type=D.BOOLEAN, unit=None,
          description="Suspended because the downstream machine cannot take more material."),
        p(name="PackML.Starved", data_type=D.BOOLEAN, unit=None,
          description="Suspended because the upstream supply (slurry, foil) ran out."),
        p(name="PackML.ProdProcessedCount", data_type=D.UINT32, unit="m", min=0, max=4294967295,
          description="Coated length since the machine started, whole metres."),
        p(name="PackML.ProdDefectiveCount", data_type=D.UINT32, unit="m", min=0, max=4294967295,
          description="Coated length whose coat weight was out of tolerance at the gauge, whole metres."),
        p(name="Line.SpeedSP", data_type=D.DOUBLE, unit="m/min", min=0, max=DESIGN_SPEED_MAX_M_MIN,
          description="Line speed set point."),
        p(name="Line.Speed", data_type=D.DOUBLE, unit="m/min", min=0, max=DESIGN_SPEED_MAX_M_MIN * 1.05,
          description="Actual line speed."),
        p(name="Line.Length", data_type=D.DOUBLE, unit="m", min=0, max=None,
          description="Produced web length, the integral of the line speed; never decreases."),
        p(name="Unwind.TensionSP", data_type=D.DOUBLE, unit="N", min=0, max=400,
          description="Unwind web tension set point."),
        p(name="Unwind.Tension", data_type=D.DOUBLE, unit="N", min=0, max=400,
          description="Unwind web tension (load cell)."),
        p(name="Rewind.TensionSP", data_type=D.DOUBLE, unit="N", min=0, max=400,
          description="Rewind web tension set point."),
        p(name="Rewind.Tension", data_type=D.DOUBLE, unit="N", min=0, max=400,
          description="Rewind web tension (dancer)."),
        p(name="CoatingHead.PumpSpeedSP", data_type=D.DOUBLE, unit="{rev}/min", min=0, max=400,
          description="Metering pump speed set point; ratio-tracks the actual line speed."),
        p(name="CoatingHead.PumpSpeed", data_type=D.DOUBLE, unit="{rev}/min", min=0, max=400,
          description="Actual metering pump speed."),
        p(name="CoatingHead.Flow", data_type=D.DOUBLE, unit="L/min", min=0, max=20,
          description="Slurry flow to the slot die (displacement x speed x volumetric efficiency)."),
        p(name="CoatingHead.DiePressure", data_type=D.DOUBLE, unit="bar", min=0, max=10,
          description="Slot die inlet pressure; rises with flow."),
        p(name="CoatingHead.WetFilm", data_type=D.DOUBLE, unit="um", min=0, max=500,
          description="Wet film thickness leaving the die."),
        p(name="CoatingHead.CoatWeightSP", data_type=D.DOUBLE, unit="g/m2", min=0, max=500,
          description="Target dry coat weight (areal loading) per side."),
        p(name="Gauge.CoatWeight", data_type=D.DOUBLE, unit="g/m2", min=0, max=500,
          description="Dry coat weight measured after the dryer, delayed by the web transport time."),
        p(name="Gauge.CoatWeightDeviation", data_type=D.DOUBLE, unit="%", min=-100, max=100,
          description="Deviation of the measured coat weight from its target."),
    ]
    zones: list[PointSpec] = []
    for zone in range(1, zone_count + 1):
        z = f"Dryer.{zone_name(zone)}"
        zones += [
            p(name=f"{z}.AirTempSP", data_type=D.DOUBLE, unit="Cel", min=20, max=180,
              description=f"Supply air temperature set point of dryer zone {zone}."),
            p(name=f"{z}.AirTemp", data_type=D.DOUBLE, unit="Cel", min=0, max=200,
              description=f"Supply air temperature of dryer zone {zone}."),
            p(name=f"{z}.HeaterOutput", data_type=D.DOUBLE, unit="%", min=0, max=100,
              description=f"Heater output of dryer zone {zone}."),
        ]
    tail = [
        p(name="Energy.ActivePower", data_type=D.DOUBLE, unit="kW", min=0, max=1500,
          description="Active electrical power of the whole line."),
        p(name="Energy.ActiveEnergy", data_type=D.DOUBLE, unit="kW.h", min=0, max=None,
          description="Active energy since the machine started; never decreases."),
        p(name="Alarms.WebBreak", data_type=D.BOOLEAN, unit=None,
          description="The web broke; the machine aborts until the web is re-threaded."),
        p(name="Alarms.GaugeOutOfTolerance", data_type=D.BOOLEAN, unit=None,
          description="The measured coat weight is outside its tolerance band."),
        p(name="Diagnostics.Heartbeat", data_type=D.UINT32, unit=None, min=0, max=HEARTBEAT_MODULO - 1,
          description="PLC watchdog counter: +1 per second, wraps from 65535 to 0."),
    ]
    if config is None or not config.extended_points:
        return (*head, *zones, *tail)
    known = {point.name for point in (*head, *zones, *tail)}
    return (*head, *zones, *tail, *coater_extra_points(config, known))


def coater_extra_points(config: CoaterConfig, known: set[str]) -> tuple[PointSpec, ...]:
    """Points of the extended coater: the full common header (minus what v1 has) and the process extras."""
    p = PointSpec
    header = tuple(point for point in header_points(config.header_config()) if point.name not in known)
    process = [
        p(name="CoatingHead.GapSP", data_type=D.DOUBLE, unit="um", min=50, max=500,
          description="Slot die coating gap set point."),
        p(name="CoatingHead.Gap", data_type=D.DOUBLE, unit="um", min=50, max=500,
          description="Slot die coating gap (die lip to foil); drifts with die temperature."),
        p(name="CoatingHead.GapToWetFilmRatio", data_type=D.DOUBLE, unit=None, min=0, max=20,
          description="Gap / wet film thickness; slot-die coating is stable within about 1..3."),
        p(name="CoatingHead.CoatingDefectRisk", data_type=D.BOOLEAN, unit=None,
          description="The gap / wet film ratio is outside the stable window (ribbing, air entrainment)."),
        p(name="Infeed.Tension", data_type=D.DOUBLE, unit="N", min=0, max=400,
          description="Infeed zone web tension (before the die)."),
        p(name="Dryer.Tension", data_type=D.DOUBLE, unit="N", min=0, max=400,
          description="Dryer zone web tension."),
        p(name="Outfeed.Tension", data_type=D.DOUBLE, unit="N", min=0, max=400,
          description="Outfeed zone web tension (after the chill rolls)."),
        p(name="Dryer.Exhaust.Flow", data_type=D.DOUBLE, unit="m3/h", min=0, max=60000,
          description="Dryer exhaust air flow (normal cubic metres per hour)."),
        p(name="Dryer.Exhaust.SolventLoad", data_type=D.DOUBLE, unit="kg/h", min=0, max=1000,
          description="Solvent evaporated in the dryer (wet weight x solvent fraction x width x speed, lagged)."),
        p(name="Dryer.Exhaust.SolventConc", data_type=D.DOUBLE, unit="%", min=0, max=100,
          description="Solvent concentration in the exhaust as % of the lower explosive limit."),
        p(name="Alarms.SolventLelHigh", data_type=D.BOOLEAN, unit=None,
          description="Exhaust solvent concentration above 25 %LEL."),
        p(name="Gauge.ProfileMin", data_type=D.DOUBLE, unit="g/m2", min=0, max=500,
          description="Lowest lane of the last cross-web coat-weight profile."),
        p(name="Gauge.ProfileMax", data_type=D.DOUBLE, unit="g/m2", min=0, max=500,
          description="Highest lane of the last cross-web coat-weight profile."),
    ]
    lanes = [
        p(name=f"Gauge.Profile.{lane_name(n)}", data_type=D.DOUBLE, unit="g/m2", min=0, max=500,
          description=f"Cross-web coat-weight profile, lane {n} of {config.profile_lanes} (operator side first).")
        for n in range(1, config.profile_lanes + 1)
    ]
    results = ResultFifo(unit="roll", fields=coater_result_fields()).points
    return (*header, *process, *lanes, *results)


def coater_result_fields() -> tuple[PointSpec, ...]:
    """Fields of the per-roll record (extended points only), statistics weighted by coated length."""
    p = PointSpec
    return (
        p(name="Result.RollId", data_type=D.STRING, unit=None, description="Id of the finished (rewound) roll."),
        p(name="Result.SlurryLotId", data_type=D.STRING, unit=None, description="Slurry batch coated on it."),
        p(name="Result.RecipeVersion", data_type=D.STRING, unit=None, description="Recipe version it was coated with."),
        p(name="Result.Length", data_type=D.DOUBLE, unit="m", min=0, max=100000, description="Coated length."),
        p(name="Result.CoatWeightMean", data_type=D.DOUBLE, unit="g/m2", min=0, max=500,
          description="Mean dry coat weight at the gauge over the roll."),
        p(name="Result.CoatWeightStd", data_type=D.DOUBLE, unit="g/m2", min=0, max=500,
          description="Standard deviation of the gauge coat weight over the roll."),
        p(name="Result.DefectiveLength", data_type=D.DOUBLE, unit="m", min=0, max=100000,
          description="Length out of coat-weight tolerance."),
    )


def profile_shape(lanes: int) -> tuple[float, ...]:
    """Relative cross-web deviation per lane, mean 0: heavy edges (edge bead) and a slight smile."""
    raw = []
    for n in range(lanes):
        x = (n + 0.5) / lanes * 2.0 - 1.0  # -1 .. 1 across the web
        edge = 0.015 if n in (0, lanes - 1) else 0.0
        raw.append(edge + 0.004 * x * x)
    mean = sum(raw) / lanes
    return tuple(r - mean for r in raw)


PROFILE_ARRAY_LANES = 120
"""Lanes of the gauge's full-resolution cross-web profile (served over OPC UA as one Double array)."""


class Coater:
    """The coater model. Construct with a seeded ``random.Random``; advance with ``step(dt_s)``."""

    def __init__(self, *, rng: random.Random, config: CoaterConfig | None = None) -> None:
        self.config = cfg = config if config is not None else CoaterConfig()
        self._rng = rng
        self.header = MachineHeader(rng=rng, config=cfg.header_config())
        self.packml = self.header.packml
        self._points = coater_points(len(cfg.zone_setpoints_cel), config=cfg)
        self._pump_ratio_factor = 1.0
        self.pump_speed = cfg.pump_rpm_per_m_min * self.speed
        self.defective_m = 0.0
        self.zone_sp = list(cfg.zone_setpoints_cel)
        self.zone_temp = list(cfg.zone_setpoints_cel)
        self.unwind_tension = self._tension_target(cfg.unwind_tension_sp_n)
        self.rewind_tension = self._tension_target(cfg.rewind_tension_sp_n)
        self.zone_tensions = [self._tension_target(sp) for sp in self._zone_tension_sps()]
        # Slurry density drifts slowly batch to batch (Ornstein-Uhlenbeck around the recipe value).
        self.density_factor = 1.0
        self.die_weight = cfg.coat_weight_target_g_m2
        # Position-indexed record of the web between die and gauge: (position at the die in m, dry weight).
        # Pre-filled with the target: the web already on the line was coated before the simulation started.
        self._web: deque[tuple[float, float]] = deque([(-cfg.web_path_die_to_gauge_m, self.die_weight)])
        self.gauge_weight = self.die_weight
        self.gap_um = cfg.die_gap_sp_um
        self.solvent_load_g_s = self._solvent_at_die_g_s()
        self.exhaust_flow_nm3_h = self._exhaust_demand_nm3_h()
        self._shape = profile_shape(cfg.profile_lanes)
        self._lane_walk = [0.0] * cfg.profile_lanes
        self.results = ResultFifo(unit="roll", fields=coater_result_fields())
        self.finished_rolls: list[str] = []  # ids of finished rolls, in order (the line model takes them)
        self._roll_weight = RunningStats()
        self._roll_defective_m = 0.0
        self._values: dict[str, Value] = {}
        self._publish()

    @property
    def points(self) -> tuple[PointSpec, ...]:
        return self._points

    def values(self) -> Mapping[str, Value]:
        return self._values

    @property
    def time_s(self) -> float:
        return self.header.time_s

    @property
    def speed(self) -> float:
        """Actual line speed (m/min)."""
        return self.header.speed

    @property
    def speed_sp(self) -> float:
        return self.header.speed_sp

    @property
    def acceleration(self) -> float:
        """Line acceleration of the last step (m/min per s)."""
        return self.header.acceleration

    @property
    def length_m(self) -> float:
        return self.header.processed

    @property
    def energy_kwh(self) -> float:
        return self.header.energy_kwh

    def set_speed_sp(self, speed_m_min: float) -> None:
        self.header.set_speed_sp(speed_m_min)

    def set_zone_setpoint(self, zone: int, temp_cel: float) -> None:
        """Change the air temperature set point of dryer zone ``zone`` (1-based)."""
        if not 1 <= zone <= len(self.zone_sp):
            raise ValueError(f"zone must be 1..{len(self.zone_sp)}, got {zone}")
        self.zone_sp[zone - 1] = clamp(temp_cel, 20.0, 180.0)

    def set_pump_ratio(self, factor: float) -> None:
        """Scale the pump-to-line-speed ratio (a coat-weight correction by the operator or the gauge loop)."""
        if not 0.0 < factor <= 3.0:
            raise ValueError("factor must be within (0, 3]")
        self._pump_ratio_factor = factor

    # ------------------------------------------------------------------------------------------ dynamics

    def step(self, dt_s: float) -> Mapping[str, Value]:
        check_dt(dt_s)
        if dt_s == 0.0:
            return self._values
        cfg = self.config
        header = self.header
        old_speed = header.speed
        roll_id, recipe, lots = header.output_lot_id, header.recipe_version, header.lots_completed
        header.step(dt_s)
        if header.lots_completed != lots:
            self._finish_roll(roll_id, recipe)
        advanced_m = (old_speed + header.speed) / 2.0 / 60.0 * dt_s
        header.count(processed=advanced_m)

        # Pump: set point ratio-tracks the actual speed; the drive follows with a first-order lag.
        pump_sp = self._pump_sp()
        self.pump_speed += (pump_sp - self.pump_speed) * (1.0 - math.exp(-dt_s / cfg.pump_lag_s))

        if cfg.noise:
            # Density drift: tau 30 min, stationary sigma 0.5 %.
            decay = math.exp(-dt_s / 1800.0)
            self.density_factor = 1.0 + (self.density_factor - 1.0) * decay + self._rng.gauss(
                0.0, 0.005 * math.sqrt(1.0 - decay * decay))
            # Die gap: thermal drift around the set point, tau 10 min, sigma 2 um.
            decay = math.exp(-dt_s / 600.0)
            self.gap_um = cfg.die_gap_sp_um + (self.gap_um - cfg.die_gap_sp_um) * decay + self._rng.gauss(
                0.0, 2.0 * math.sqrt(1.0 - decay * decay))
            # Cross-web profile: each lane wanders a little (tau 5 min, sigma 0.3 %).
            decay = math.exp(-dt_s / 300.0)
            sigma = 0.003 * math.sqrt(1.0 - decay * decay)
            self._lane_walk = [w * decay + self._rng.gauss(0.0, sigma) for w in self._lane_walk]

        if header.speed >= MOVING_M_MIN:
            self.die_weight = clamp(self._coat_weight(self.pump_speed, header.speed), 0.0, 500.0)
        self._record_web(advanced_m)
        self._update_gauge(advanced_m)

        # Evaporation follows what the die puts on the web, lagged by the dryer residence time.
        lag = 1.0 - math.exp(-dt_s / cfg.dryer_residence_s)
        self.solvent_load_g_s += (self._solvent_at_die_g_s() - self.solvent_load_g_s) * lag
        fan = 1.0 - math.exp(-dt_s / cfg.exhaust_lag_s)
        self.exhaust_flow_nm3_h += (self._exhaust_demand_nm3_h() - self.exhaust_flow_nm3_h) * fan

        # Dryer zones: exact first-order response to each set point.
        alpha = 1.0 - math.exp(-dt_s / cfg.zone_time_constant_s)
        for i, sp in enumerate(self.zone_sp):
            self.zone_temp[i] += (sp - self.zone_temp[i]) * alpha

        beta = 1.0 - math.exp(-dt_s / cfg.tension_lag_s)
        self.unwind_tension += (self._tension_target(cfg.unwind_tension_sp_n) - self.unwind_tension) * beta
        self.rewind_tension += (self._tension_target(cfg.rewind_tension_sp_n) - self.rewind_tension) * beta
        for i, sp in enumerate(self._zone_tension_sps()):
            self.zone_tensions[i] += (self._tension_target(sp) - self.zone_tensions[i]) * beta

        header.add_energy(self._active_power(), dt_s)
        self._publish()
        return self._values

    def cross_web_profile(self) -> list[float]:
        """The gauge's cross-web coat-weight profile in g/m2, PROFILE_ARRAY_LANES lanes from the operator side:
        the measured coat weight with the edge-bead/smile shape and the slow lane drift (each of the
        ``profile_lanes`` drift values covers a band of neighbouring lanes); all 0 while nothing is coated."""
        gauge = self.values()["Gauge.CoatWeight"]
        assert isinstance(gauge, float | int)
        if gauge <= 0.0:
            return [0.0] * PROFILE_ARRAY_LANES
        walk = self._lane_walk
        return [clamp(gauge * (1.0 + shape + walk[lane * len(walk) // PROFILE_ARRAY_LANES]), 0.0, 500.0)
                for lane, shape in enumerate(profile_shape(PROFILE_ARRAY_LANES))]

    def _pump_sp(self) -> float:
        return self.config.pump_rpm_per_m_min * self._pump_ratio_factor * self.header.speed

    def _zone_tension_sps(self) -> tuple[float, float, float]:
        cfg = self.config
        return cfg.infeed_tension_sp_n, cfg.dryer_tension_sp_n, cfg.outfeed_tension_sp_n

    def _coat_weight(self, pump_rpm: float, speed_m_min: float) -> float:
        """Dry coat weight (g/m2) from the mass balance m = w_s · rho · Q / (v · W)."""
        cfg = self.config
        flow_cm3_s = cfg.pump_displacement_cm3_rev * cfg.pump_volumetric_efficiency * pump_rpm / 60.0
        rho = cfg.slurry_density_g_cm3 * self.density_factor
        return cfg.solids_fraction * rho * flow_cm3_s / (speed_m_min / 60.0 * cfg.coated_width_m)

    def _solvent_at_die_g_s(self) -> float:
        """Solvent leaving the die on the web (g/s): m_wet · (1 − w_s) · W · v, with m_wet = m_dry / w_s."""
        cfg = self.config
        if self.header.speed < MOVING_M_MIN:
            return 0.0
        wet = self.die_weight / cfg.solids_fraction
        return wet * (1.0 - cfg.solids_fraction) * cfg.coated_width_m * self.header.speed / 60.0

    def _record_web(self, advanced_m: float) -> None:
        if advanced_m <= 0.0:
            return
        last_position, _ = self._web[-1]
        if self.length_m - last_position >= _WEB_RECORD_RESOLUTION_M:
            self._web.append((self.length_m, self.die_weight))

    def _update_gauge(self, advanced_m: float) -> None:
        """The gauge reads the weight coated where the web now under the gauge passed the die."""
        at_gauge = self.length_m - self.config.web_path_die_to_gauge_m
        while len(self._web) > 1 and self._web[1][0] <= at_gauge:
            self._web.popleft()
        self.gauge_weight = self._web[0][1]
        self._roll_weight.add(self.gauge_weight, advanced_m)
        if advanced_m > 0.0 and abs(self._deviation_pct()) > self.config.coat_weight_tolerance_pct:
            self._roll_defective_m += advanced_m
            self.defective_m += advanced_m
            self.header.count(processed=0.0, defective=advanced_m)

    def _finish_roll(self, roll_id: str, recipe_version: str) -> None:
        stats = self._roll_weight
        if self.config.extended_points:
            self.results.push({
                "Result.RollId": roll_id, "Result.SlurryLotId": self.header.input_lot_id,
                "Result.RecipeVersion": recipe_version, "Result.Length": min(stats.weight, 100_000.0),
                "Result.CoatWeightMean": clamp(stats.mean, 0.0, 500.0), "Result.CoatWeightStd": min(stats.std, 500.0),
                "Result.DefectiveLength": min(self._roll_defective_m, 100_000.0),
            })
        self.finished_rolls.append(roll_id)
        self._roll_weight = RunningStats()
        self._roll_defective_m = 0.0

    def ack_result(self, record_id: int) -> bool:
        acked = self.results.ack(record_id)
        if self.config.extended_points:
            self._values.update(self.results.values())
        return acked

    @property
    def ack_seen(self) -> int:
        return self.results.last_ack

    def _deviation_pct(self) -> float:
        target = self.config.coat_weight_target_g_m2
        return (self.gauge_weight - target) / target * 100.0

    def _tension_target(self, sp: float) -> float:
        if self.header.aborted:
            return 0.0  # web break: no tension until re-threaded
        if self.header.speed < MOVING_M_MIN and not self.header.producing:
            return self.config.standby_tension_n
        return sp + 2.0 * self.header.acceleration  # acceleration torque shows up as tension

    def _heater_output(self, zone_index: int) -> float:
        sp = self.zone_sp[zone_index]
        base = (sp - 20.0) / 160.0 * 45.0 + (10.0 if self.speed >= MOVING_M_MIN else 0.0)  # solvent load
        return clamp(base + 8.0 * (sp - self.zone_temp[zone_index]), 0.0, 100.0)

    def _active_power(self) -> float:
        cfg = self.config
        heat = sum(self._heater_output(i) for i in range(len(self.zone_sp))) / 100.0 * cfg.zone_heater_max_kw
        return cfg.base_power_kw + cfg.drive_power_kw_per_m_min * self.speed + heat

    # ------------------------------------------------------------------------------------------ values

    def _noise(self, sigma: float) -> float:
        return self._rng.gauss(0.0, sigma) if self.config.noise and sigma > 0.0 else 0.0

    def _exhaust_demand_nm3_h(self) -> float:
        """Exhaust flow that holds the solvent at its %LEL target, within the fan's range."""
        cfg = self.config
        needed_m3_s = self.solvent_load_g_s / (cfg.solvent_lel_g_m3 * cfg.exhaust_lel_target_pct / 100.0)
        return clamp(needed_m3_s * 3600.0, cfg.exhaust_flow_nm3_h, cfg.exhaust_flow_max_nm3_h)

    @property
    def solvent_lel_pct(self) -> float:
        """Exhaust solvent concentration as % of the lower explosive limit (noiseless)."""
        exhaust_m3_s = self.exhaust_flow_nm3_h / 3600.0
        return clamp(100.0 * self.solvent_load_g_s / exhaust_m3_s / self.config.solvent_lel_g_m3, 0.0, 100.0)

    def _publish(self) -> None:
        cfg = self.config
        header = self.header
        moving = self.speed >= MOVING_M_MIN
        flow_l_min = cfg.pump_displacement_cm3_rev * cfg.pump_volumetric_efficiency * self.pump_speed / 1000.0
        rho = cfg.slurry_density_g_cm3 * self.density_factor
        wet_film_um = self.die_weight / (cfg.solids_fraction * rho) if moving else 0.0
        # Die pressure rises with flow and with a narrower gap (slot flow ~ gap^-2 at a given flow, EST).
        die_pressure = 0.3 + 0.25 * flow_l_min * (cfg.die_gap_sp_um / self.gap_um) ** 2 if flow_l_min > 0.01 \
            else 0.0
        n = self._noise
        gauge = max(0.0, self.gauge_weight + n(0.004 * self.gauge_weight))
        deviation = (gauge - cfg.coat_weight_target_g_m2) / cfg.coat_weight_target_g_m2 * 100.0
        line_speed = max(0.0, self.speed + n(0.03)) if moving else 0.0
        values: dict[str, Value] = {
            "Identification.Manufacturer": MANUFACTURER,
            "Identification.Model": MODEL,
            "Identification.SerialNumber": SERIAL_NUMBER,
            "PackML.StateCurrent": int(header.state),
            "PackML.UnitModeCurrent": int(header.unit_mode),
            "PackML.MachDesignSpeed": cfg.design_speed_m_min,
            "PackML.Blocked": self.packml.interlock == "blocked",
            "PackML.Starved": self.packml.interlock == "starved",
            "PackML.ProdProcessedCount": int(header.processed) % 2**32,
            "PackML.ProdDefectiveCount": int(header.defective) % 2**32,
            "Line.SpeedSP": self.speed_sp,
            "Line.Speed": line_speed,
            "Line.Length": self.length_m,
            "Unwind.TensionSP": cfg.unwind_tension_sp_n,
            "Unwind.Tension": max(0.0, self.unwind_tension + n(0.015 * self.unwind_tension)),
            "Rewind.TensionSP": cfg.rewind_tension_sp_n,
            "Rewind.Tension": max(0.0, self.rewind_tension + n(0.015 * self.rewind_tension)),
            "CoatingHead.PumpSpeedSP": self._pump_sp(),
            "CoatingHead.PumpSpeed": max(0.0, self.pump_speed + n(0.3)) if self.pump_speed > 0.05 else 0.0,
            "CoatingHead.Flow": max(0.0, flow_l_min + n(0.01)) if flow_l_min > 0.01 else 0.0,
            "CoatingHead.DiePressure": clamp(die_pressure + n(0.02), 0.0, 10.0) if die_pressure > 0.0 else 0.0,
            "CoatingHead.WetFilm": max(0.0, wet_film_um + n(0.5)) if moving else 0.0,
            "CoatingHead.CoatWeightSP": cfg.coat_weight_target_g_m2,
            "Gauge.CoatWeight": gauge,
            "Gauge.CoatWeightDeviation": deviation,
        }
        for i in range(len(self.zone_sp)):
            z = f"Dryer.{zone_name(i + 1)}"
            values[f"{z}.AirTempSP"] = self.zone_sp[i]
            values[f"{z}.AirTemp"] = self.zone_temp[i] + n(0.2)
            values[f"{z}.HeaterOutput"] = clamp(self._heater_output(i) + n(0.5), 0.0, 100.0)
        power = header.power_kw if header.time_s > 0.0 else self._active_power()
        power = max(0.0, power + n(0.01 * power))
        values["Energy.ActivePower"] = power
        values["Energy.ActiveEnergy"] = self.energy_kwh
        values["Alarms.WebBreak"] = header.aborted
        values["Alarms.GaugeOutOfTolerance"] = moving and abs(deviation) > cfg.coat_weight_tolerance_pct
        values["Diagnostics.Heartbeat"] = int(self.time_s) % HEARTBEAT_MODULO
        if cfg.extended_points:
            self._publish_extended(values, line_speed=line_speed, power=power, wet_film_um=wet_film_um, gauge=gauge)
            values.update(self.results.values())
        self._values = values

    def _publish_extended(
        self, values: dict[str, Value], *, line_speed: float, power: float, wet_film_um: float, gauge: float
    ) -> None:
        cfg = self.config
        n = self._noise
        for name, value in self.header.values(cur_speed=line_speed, power_kw=power).items():
            values.setdefault(name, value)
        gap = clamp(self.gap_um, 50.0, 500.0)
        ratio = gap / wet_film_um if wet_film_um > 0.0 else 0.0
        low, high = cfg.stable_gap_ratio
        values["CoatingHead.GapSP"] = cfg.die_gap_sp_um
        values["CoatingHead.Gap"] = gap
        values["CoatingHead.GapToWetFilmRatio"] = min(ratio, 20.0)
        values["CoatingHead.CoatingDefectRisk"] = wet_film_um > 0.0 and not low <= ratio <= high
        for name, tension in zip(("Infeed.Tension", "Dryer.Tension", "Outfeed.Tension"), self.zone_tensions,
                                 strict=True):
            values[name] = clamp(tension + n(0.015 * tension), 0.0, 400.0)
        lel_pct = self.solvent_lel_pct
        values["Dryer.Exhaust.Flow"] = clamp(self.exhaust_flow_nm3_h + n(100.0), 0.0, 60_000.0)
        values["Dryer.Exhaust.SolventLoad"] = min(self.solvent_load_g_s * 3.6, 1000.0)
        values["Dryer.Exhaust.SolventConc"] = clamp(lel_pct + n(0.1), 0.0, 100.0) if lel_pct > 0.0 else 0.0
        values["Alarms.SolventLelHigh"] = lel_pct > 25.0
        lanes = [clamp(gauge * (1.0 + shape + walk), 0.0, 500.0) if gauge > 0.0 else 0.0
                 for shape, walk in zip(self._shape, self._lane_walk, strict=True)]
        for lane, value in enumerate(lanes, start=1):
            values[f"Gauge.Profile.{lane_name(lane)}"] = value
        values["Gauge.ProfileMin"] = min(lanes)
        values["Gauge.ProfileMax"] = max(lanes)
