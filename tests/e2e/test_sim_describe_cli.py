"""``python -m simulators --describe`` / ``cellgate sim --describe`` as a user runs them: the printed address map is
a valid tag-map fragment that reads every point of the set the same options would serve."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gateway.tagmap import ModbusDevice, load_plant_from_text
from simulators.describe import SimulatorOptions, plan_simulators
from simulators.servers.address_map import NumberFormat, WordOrder
from tests.support.gateway import REPO_ROOT

WRAPPER = "gateway: {id: describe, enterprise: acme, site: dunkirk}\nmqtt: {url: 'mqtt://127.0.0.1:1883'}\n"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          check=False)


@pytest.mark.parametrize(
    ("command", "options", "expected"),
    [
        (["-m", "simulators", "--describe"], [], SimulatorOptions()),
        (["-m", "gateway.cli", "sim", "--describe"],
         ["--racks", "3", "--channels", "256", "--encoding", "scaled", "--word-order", "CDAB", "--modbus-port", "6000"],
         SimulatorOptions(racks=3, channels=256, number_format=NumberFormat.SCALED, word_order=WordOrder.CDAB,
                          modbus_port=6000)),
    ],
    ids=["default", "cellgate-sim-hall"],
)
def test_describe_prints_a_tag_map_fragment_for_the_same_options(
    command: list[str], options: list[str], expected: SimulatorOptions
) -> None:
    result = run(*command, *options)
    assert result.returncode == 0, result.stderr
    plant = load_plant_from_text(WRAPPER + result.stdout, filename="<describe>", environ={})
    plan = plan_simulators(expected)
    assert [d.name for d in plant.devices] == [m.device for m in plan.machines]
    for machine in plan.machines:
        device = plant.device(machine.device)
        assert len(device.tags) == len(machine.points), machine.device
        if isinstance(device, ModbusDevice):
            assert device.port == machine.port
            assert device.order.value == expected.word_order.value


def test_describe_refuses_bad_options_with_exit_2() -> None:
    result = run("-m", "simulators", "--describe", "--channels", "0")
    assert result.returncode == 2
    assert "channels" in result.stderr
    assert "Traceback" not in result.stderr
