"""``cellgate scan`` as a real process against the Modbus rack simulator (pymodbus): the answering range of each
table is exactly the register map the simulator serves, and everything after it is exception 2."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from simulators.describe import SimulatorOptions, plan_simulators
from simulators.servers.address_map import Table, table_sizes
from tests.support.sim import REPO_ROOT, SimulatorProcess


@pytest.fixture(scope="module")
def rack() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(only="modbus", extra_args=["--racks", "1", "--stackers", "0"]) as sims:
        yield sims


def served_sizes() -> dict[Table, int]:
    plan = plan_simulators(SimulatorOptions(racks=1, stackers=0, coaters=0, calenders=0))
    register_map = plan.machine("rack-01").register_map
    assert register_map is not None
    return table_sizes(register_map)


def scan(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", f"modbus://127.0.0.1:{port}", "--rate", "1000", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.parametrize(("table", "word"), [("holding", "registers"), ("coil", "bits")])
def test_scan_finds_the_served_table(rack: SimulatorProcess, table: str, word: str) -> None:
    size = served_sizes()[Table(table)]
    if word == "bits":
        # pymodbus keeps bits in 16-bit words, so a bit table answers up to the end of its last word.
        size = -(-size // 16) * 16
    first, last = max(0, size - 300), size + 99
    result = scan(rack.modbus_port, "--table", table, "--range", f"{first}-{last}")
    lines = result.stdout.splitlines()
    assert lines[0] == f"127.0.0.1:{rack.modbus_port} unit 1 {table}:"
    assert [line.split() for line in lines[1:]] == [
        [f"{first}-{size - 1}", "answers", f"({size - first}", f"{word})"],
        [f"{size}-{last}", "exception", "2", "(illegal", "data", "address)", "(100", f"{word})"],
    ]
    requests = int(result.stderr.split(" read request")[0])
    assert requests < 100 + 40  # one per failing address, a few blocks and one bisection


def test_scan_stops_at_max_requests(rack: SimulatorProcess) -> None:
    result = scan(rack.modbus_port, "--range", "0-9999", "--block", "10", "--max-requests", "5")
    lines = result.stdout.splitlines()
    assert lines[1].split()[:2] == ["0-49", "answers"]
    assert lines[2].split()[:3] == ["50-9999", "not", "scanned"]
    assert "stopped at --max-requests 5" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--range", "10-2"], "range '10-2'"), (["--unit", "300"], "--unit 300"), (["--block", "0"], "--block 0"),
     (["--rate", "0"], "--rate")],
)
def test_bad_arguments_exit_2_without_a_request(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", "modbus://127.0.0.1:1", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_unreachable_device_exits_1() -> None:
    from tests.support.sim import free_tcp_port

    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", f"modbus://127.0.0.1:{free_tcp_port()}", "--range", "0-9"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 1 and "cellgate scan: modbus://127.0.0.1:" in result.stderr, result.stderr
