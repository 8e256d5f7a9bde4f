"""The `cellgate` command line as a user runs it: check, run with a broken file, and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from gateway.live_view import render_view
from tests.support.gateway import DEMO_CONFIG, REPO_ROOT

CLI = [sys.executable, "-m", "gateway.cli"]

BROKEN = """\
gateway: {id: edge-01, enterprise: acme, site: dunkirk}
mqtt: {url: "mqtt://127.0.0.1:1883"}
devices:
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    tags:
      - {name: voltage, address: 0, type: float33}
      - {name: "bad name", address: 2, type: float32}
"""


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def test_check_prints_devices_tags_and_read_plan() -> None:
    result = run_cli("check", "-c", str(DEMO_CONFIG))
    assert result.returncode == 0, result.stderr
    assert "tag map OK: 5 device(s), 1069 tag(s)" in result.stdout
    assert "acme/dunkirk/formation/hall-a/rack-01: modbus tcp 127.0.0.1:5020 unit 1" in result.stdout
    assert "read request(s) per cycle" in result.stdout


@pytest.mark.parametrize("command", ["check", "run"])
def test_broken_tag_map_gives_file_line_col_and_exit_2(tmp_path: Path, command: str) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(BROKEN, encoding="utf-8")
    result = run_cli(command, "-c", str(broken))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{broken}:10:") and "devices[0].tags[0].type" in line and "float32" in line
               for line in lines), result.stderr
    assert any(line.startswith(f"{broken}:11:") and "devices[0].tags[1].name" in line for line in lines), result.stderr


def test_render_view_shows_equipment_status_and_values() -> None:
    latest = {
        "acme/dunkirk/_gateway/gw/status": {"online": True},
        "acme/dunkirk/formation/hall-a/rack-01/_status": {"connected": False, "error": "timeout"},
        "acme/dunkirk/formation/hall-a/rack-01/ch001/voltage": {"value": 3.71234, "unit": "V", "quality": "good"},
        "acme/dunkirk/formation/hall-a/rack-01/ch001/current": {"value": None, "unit": "A", "quality": "bad",
                                                                 "status": "comm_failure"},
    }
    text = render_view(latest, prefix="acme/dunkirk", messages=4, rate=2.0)
    assert "gateway gw: online" in text
    assert "formation/hall-a/rack-01  [DISCONNECTED (timeout)]  2 tags seen" in text
    assert "ch001/voltage = 3.712 V" in text
    assert "(bad: comm_failure)" in text


def test_demo_runs_simulators_broker_and_gateway_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*CLI, "demo", "--no-view"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            deadline = time.monotonic() + 60
            connected: set[str] = set()
            expected = {"coater-01", "calender-01", "stacker-01", "rack-01", "rack-02"}
            while time.monotonic() < deadline and connected != expected:
                time.sleep(0.5)
                for line in log_path.read_text().splitlines():
                    if line.startswith("{"):
                        event = orjson.loads(line)
                        if event.get("event") == "device_link" and event.get("connected") is True:
                            connected.add(str(event["device"]))
            assert connected == expected, log_path.read_text()[-3000:]
            time.sleep(2)  # let a few cycles flow through the embedded broker
        finally:
            process.send_signal(signal.SIGINT)
            returncode = process.wait(timeout=30)
    text = log_path.read_text()
    assert returncode == 0, text[-3000:]
    assert '"event": "gateway_stopped"' in text
    assert "Traceback" not in text


def test_a_second_gateway_on_the_same_state_directory_is_refused(tmp_path: Path) -> None:
    """Two gateways must never share a spool: the second exits 1 and names the first one's pid."""
    config = tmp_path / "map.yaml"
    config.write_text(
        BROKEN.replace("float33", "float32").replace('"bad name"', "current"), encoding="utf-8"
    )
    state = tmp_path / "state"
    first = subprocess.Popen(
        [*CLI, "run", "-c", str(config), "--state-dir", str(state), "--log-format", "json"],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        lock = state / "cellgate.lock"
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert time.monotonic() < deadline, "the first gateway never took the lock"
            time.sleep(0.1)
        second = run_cli("run", "-c", str(config), "--state-dir", str(state))
        assert second.returncode == 1
        assert f"in use by cellgate pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
