"""`cellgate run` refuses, before it starts anything, the tag maps that used to pass `check` and then crash `run`
(issue 10 defect 9): exit 2, FILE:LINE:COL, no traceback, short lines. Real processes: the CLI against Mosquitto."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import REPO_ROOT
from tests.support.mosquitto import Mosquitto

pytestmark = pytest.mark.e2e

# Before the fix the 1 MB tag name started and ran on (every message refused); past this the test fails.
RUN_TIMEOUT_S = 20
LONGEST_LINE = 600


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as running:
        yield running


def tag_map(url: str, *, mqtt_extra: str = "", spool: str = "", tag_name: str = "voltage") -> str:
    enterprise = f"e2e{uuid.uuid4().hex[:8]}"
    return f"""\
gateway: {{id: gw1, enterprise: {enterprise}, site: dunkirk}}
mqtt:
  url: "{url}"{mqtt_extra}
{spool}devices:
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    port: 1
    tags:
      - {{name: {tag_name}, address: 0, type: float32, unit: V}}
"""


def run_gateway(config: Path, state_dir: Path, env: dict[str, str]) -> tuple[int, str]:
    """``cellgate run -c config``: (exit code, stderr + stdout); fails the test if it is still running after
    RUN_TIMEOUT_S (a bad map must be refused at once, not run)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith("CELLGATE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(config), "--state-dir", str(state_dir)],
        cwd=REPO_ROOT, env={**clean, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"`cellgate run` started on a map it should have refused (still running after {RUN_TIMEOUT_S} s)")
    return process.returncode, err + out


@pytest.mark.parametrize(
    ("recipe", "line_col", "field"),
    [
        ("password in the file, no username", "3:3", "mqtt.username"),
        ("password in CELLGATE_MQTT__PASSWORD, no username", "3:3", "mqtt.username"),
        ("tiny spool.max_mb", "5:11", "spool.max_mb"),
        ("1 MB tag name", "12:16", "devices[0].tags[0].name"),
    ],
)
def test_run_refuses_a_map_that_check_used_to_pass(
    broker: Mosquitto, tmp_path: Path, recipe: str, line_col: str, field: str
) -> None:
    """Issue 10 defect 9 recipes: a password without a user name (in the file, or from the environment as systemd's
    EnvironmentFile gives it), a tiny `spool.max_mb`, a 1 MB tag name. Each used to exit 1 with a traceback at `run`
    (so systemd restarted it forever) or to start and have every message refused."""
    env: dict[str, str] = {}
    text = {
        "password in the file, no username": tag_map(broker.url, mqtt_extra="\n  password: not-shown"),
        "password in CELLGATE_MQTT__PASSWORD, no username": tag_map(broker.url),
        "tiny spool.max_mb": tag_map(broker.url, spool="spool:\n  max_mb: 0.0000001\n"),
        "1 MB tag name": tag_map(broker.url, tag_name="v" * 1_048_576),
    }[recipe]
    if recipe.startswith("password in CELLGATE"):
        env["CELLGATE_MQTT__PASSWORD"] = "not-shown"
    config = tmp_path / "tagmap.yaml"
    config.write_text(text, encoding="utf-8")

    code, output = run_gateway(config, tmp_path / "state", env)

    assert code == 2, output[-2000:]
    assert "Traceback" not in output
    lines = output.splitlines()
    assert lines[0].startswith(f"{config}:{line_col}: {field}: "), lines[0][:LONGEST_LINE]
    assert lines[-1] == f"{config}: 1 problem(s); nothing started"
    assert all(len(line) <= LONGEST_LINE for line in lines)
    assert "not-shown" not in output
    assert not (tmp_path / "state" / "spool.db").exists()  # refused before anything was started
