"""Calender model: compaction relation, thickness in / out, density vs line load, gap and force control."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from simulators.machines.calender import (
    Calender,
    CalenderConfig,
    PressControlMode,
    line_load_for_porosity,
    porosity_at_line_load,
)
from simulators.machines.packml import PackMLCommand
from simulators.machines.points import Value
from tests.support.machines import STEADY, check_values_match_points
from tests.support.sim import num


def quiet() -> Calender:
    return Calender(rng=random.Random(1), config=CalenderConfig(noise=False, packml=STEADY))


def settle(calender: Calender, seconds: float = 30.0) -> dict[str, Value]:
    values: dict[str, Value] = {}
    for _ in range(int(seconds)):
        values = dict(calender.step(1.0))
    return values


def test_meyer_relation_and_its_inverse() -> None:
    eps = porosity_at_line_load(1500.0, eps_0=0.45, eps_min=0.18, gamma_n_mm=900.0)
    assert eps == pytest.approx(0.18 + 0.27 * math.exp(-1500.0 / 900.0))  # 0.231, notes §3.3
    assert line_load_for_porosity(eps, eps_0=0.45, eps_min=0.18, gamma_n_mm=900.0) == pytest.approx(1500.0)


def test_thickness_out_is_below_thickness_in_and_density_rises_with_line_load() -> None:
    calender = quiet()
    densities, outs = [], []
    for load in (300.0, 800.0, 1500.0, 2200.0):
        calender.set_line_load_sp(load)
        values = settle(calender)
        h_in, h_out = num(values["Thickness.In"]), num(values["Thickness.Out"])
        assert h_out < h_in
        densities.append(num(values["Density.Calculated"]))
        outs.append(h_out)
        assert num(values["Press.LineLoad"]) == pytest.approx(load, rel=1e-3)
    assert all(b > a for a, b in itertools.pairwise(densities))
    assert all(b < a for a, b in itertools.pairwise(outs))


def test_nominal_point_matches_the_notes() -> None:
    values = settle(quiet())
    eps = porosity_at_line_load(1500.0, eps_0=0.45, eps_min=0.18, gamma_n_mm=900.0)
    assert num(values["Porosity.Calculated"]) == pytest.approx(100.0 * eps)
    assert num(values["Density.Calculated"]) == pytest.approx(4.5 * (1.0 - eps))  # ≈ 3.46 g/cm³
    coat = 220.0 / (4.5 * (1.0 - eps))
    assert num(values["Thickness.Out"]) == pytest.approx(2.0 * coat + 12.0 + 4.0)
    assert num(values["Thickness.In"]) == pytest.approx(2.0 * 220.0 / (4.5 * 0.55) + 12.0)
    # 1.8 MN shared by two Ø320 mm cylinders: ≈ 112 bar each side.
    area = math.pi * 0.16**2
    assert num(values["Hydraulics.PressureOS"]) == pytest.approx(900e3 / area / 1e5, rel=1e-6)
    assert num(values["Hydraulics.PressureDS"]) == pytest.approx(num(values["Hydraulics.PressureOS"]))
    assert 50.0 <= num(values["Energy.ActivePower"]) <= 250.0


def test_gap_control_sets_the_thickness_and_derives_the_load() -> None:
    calender = quiet()
    calender.set_control_mode(PressControlMode.GAP)
    calender.set_gap_sp(135.0)
    values = settle(calender, 40.0)
    deflection = 3.0 * num(values["Press.LineLoad"]) * 1200.0 / 1e6
    assert num(values["Thickness.Out"]) == pytest.approx(135.0 + 4.0 + deflection, abs=0.05)
    calender.set_gap_sp(125.0)  # a narrower gap needs more force and gives a denser coating
    tighter = settle(calender, 40.0)
    assert num(tighter["Press.LineLoad"]) > num(values["Press.LineLoad"])
    assert num(tighter["Density.Calculated"]) > num(values["Density.Calculated"])


def test_abort_is_a_quick_open() -> None:
    calender = quiet()
    settle(calender, 5.0)
    calender.header.command(PackMLCommand.ABORT)
    values = calender.step(0.5)
    assert values["Alarms.QuickOpen"] is True
    assert values["Press.LineLoad"] == 0.0
    assert values["Thickness.Out"] == values["Thickness.In"]


def test_long_noisy_run_stays_within_the_declared_points() -> None:
    calender = Calender(rng=random.Random(3))
    states = set()
    for i in range(5_000):
        values = calender.step(3.0)
        states.add(values["PackML.StateCurrent"])
        if i % 500 == 0:
            check_values_match_points(calender.points, values)
    check_values_match_points(calender.points, calender.values())
    assert len(states) >= 6
