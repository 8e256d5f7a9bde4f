"""Coater additions: pump-step transport delay, solvent load vs the LEL relation, gap ratio, profile lanes."""

from __future__ import annotations

import dataclasses
import random
import statistics

import pytest

from simulators.machines.coater import Coater, CoaterConfig
from tests.support.machines import STEADY
from tests.support.sim import num

QUIET = CoaterConfig(noise=False, packml=STEADY, extended_points=True)


def quiet(config: CoaterConfig = QUIET) -> Coater:
    return Coater(rng=random.Random(1), config=config)


def test_coat_weight_follows_a_pump_step_only_after_the_transport_delay() -> None:
    coater = quiet()
    coater.step(1.0)
    coater.set_pump_ratio(1.05)  # +5 % flow at constant line speed
    cfg = coater.config
    expected = 220.0 * 1.05  # m = w_s·rho·Q / (v·W) scales with Q
    delay_s = cfg.web_path_die_to_gauge_m / (cfg.speed_sp_m_min / 60.0)  # 80 m at 50 m/min = 96 s
    gauge, die_wet = [], []
    for _ in range(int(3 * delay_s)):
        values = coater.step(1.0)
        gauge.append(num(values["Gauge.CoatWeight"]))
        die_wet.append(num(values["CoatingHead.WetFilm"]))
    assert die_wet[10] == pytest.approx(expected / (0.70 * 2.2), rel=1e-3)  # the die sees it within the pump lag
    first_change = next(i for i, g in enumerate(gauge) if g > 220.0 * 1.001)
    assert first_change + 1 == pytest.approx(delay_s, abs=2.0)  # the gauge only after the web has travelled
    assert all(g == pytest.approx(220.0) for g in gauge[: int(delay_s) - 2])
    assert gauge[-1] == pytest.approx(expected, rel=1e-4)  # and settles where the mass balance says


def test_exhaust_solvent_concentration_follows_the_lel_relation() -> None:
    coater = quiet()
    for _ in range(600):
        values = coater.step(1.0)
    # ṁ = m_wet·(1 − w_s)·W·v = 314·0.30·1.2·0.833 g/s ≈ 94 g/s; C = ṁ / Q; %LEL = 100·C / 54.
    solvent_g_s = 220.0 / 0.70 * 0.30 * 1.2 * 50.0 / 60.0
    assert num(values["Dryer.Exhaust.SolventLoad"]) == pytest.approx(solvent_g_s * 3.6, rel=1e-3)
    flow_m3_s = num(values["Dryer.Exhaust.Flow"]) / 3600.0  # the fan follows the solvent load
    assert num(values["Dryer.Exhaust.SolventConc"]) == pytest.approx(100.0 * solvent_g_s / flow_m3_s / 54.0, rel=1e-3)
    assert values["Alarms.SolventLelHigh"] is False
    assert num(values["CoatingHead.GapToWetFilmRatio"]) == pytest.approx(200.0 / (220.0 / (0.70 * 2.2)))
    assert values["CoatingHead.CoatingDefectRisk"] is False


def test_a_too_wide_gap_raises_the_coating_defect_risk() -> None:
    values = quiet(dataclasses.replace(QUIET, die_gap_sp_um=480.0)).step(1.0)  # 480 / 143 µm = 3.4 > 3
    assert values["CoatingHead.CoatingDefectRisk"] is True


def test_profile_lanes_average_to_the_gauge_mean_with_heavy_edges() -> None:
    coater = quiet(dataclasses.replace(QUIET, profile_lanes=20))
    values = coater.step(1.0)
    lanes = [num(values[f"Gauge.Profile.Lane{n:02d}"]) for n in range(1, 21)]
    assert statistics.fmean(lanes) == pytest.approx(num(values["Gauge.CoatWeight"]), rel=1e-9)
    assert lanes[0] > lanes[10] and lanes[-1] > lanes[10]  # edge bead
    assert num(values["Gauge.ProfileMax"]) == max(lanes)


def test_roll_id_changes_at_the_end_of_a_roll() -> None:
    coater = Coater(rng=random.Random(8), config=CoaterConfig(extended_points=True))
    ids = {coater.values()["Lot.OutputLotId"]}
    for _ in range(12 * 3600 // 5):
        ids.add(coater.step(5.0)["Lot.OutputLotId"])
    assert len(ids) >= 3  # ends of roll every ~2 h
