"""Every example tag map under config/ is the reference: each must load, expand and plan cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.assembly import active_devices, describe_plant, modbus_plan
from gateway.tagmap import ModbusDevice, load_plant

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
EXAMPLES = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_examples() -> None:
    assert EXAMPLES, f"no tag maps under {CONFIG_DIR}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads_and_plans_without_problems(path: Path) -> None:
    plant = load_plant(path, environ={})
    assert plant.tag_count > 0
    for device in active_devices(plant):
        if isinstance(device, ModbusDevice):
            plan = modbus_plan(device)
            assert plan.problems == ()
            assert sum(len(request.slots) for request in plan.requests) == len(device.tags)
    assert "PROBLEM" not in describe_plant(plant)
