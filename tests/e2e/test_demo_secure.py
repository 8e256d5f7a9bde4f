"""`cellgate demo --secure`: the whole demo over SignAndEncrypt with a user login, trust set up (and said) by the
demo itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_demo_secure_reads_the_opcua_machines_over_signandencrypt(tmp_path: Path) -> None:
    out_path, log_path = tmp_path / "demo.out", tmp_path / "demo.log"
    with out_path.open("w") as out, log_path.open("w") as log:
        process = subprocess.Popen(
            # --any-ports: test_cli.py's demo may run beside this one, on the tag map's ports
            [sys.executable, "-m", "gateway.cli", "demo", "--secure", "--no-view", "--any-ports"], cwd=REPO_ROOT,
            stdout=out, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            secure_up: dict[str, dict[str, object]] = {}
            events_up: set[str] = set()  # event links up (the OPC UA machines': own sessions, same channel)
            wanted = {"coater-01", "calender-01"}
            while time.monotonic() < deadline and (set(secure_up) != wanted or not events_up >= wanted):
                time.sleep(0.5)
                for line in log_path.read_text().splitlines():
                    if line.startswith("{"):
                        event = orjson.loads(line)
                        if event.get("event") == "opcua_link_up":
                            secure_up[str(event["device"])] = event
                        elif event.get("event") == "events_link_up":
                            events_up.add(str(event["device"]))
            assert set(secure_up) == wanted, log_path.read_text()[-3000:]
            assert events_up >= wanted, log_path.read_text()[-3000:]
        finally:
            process.send_signal(signal.SIGINT)
            returncode = process.wait(timeout=30)
    assert returncode == 0, log_path.read_text()[-3000:]
    for event in secure_up.values():
        assert (event["security_policy"], event["security_mode"]) == ("Aes256_Sha256_RsaPss", "SignAndEncrypt")
    announced = out_path.read_text()
    assert "trusted automatically" in announced and "demo only" in announced
    assert "Traceback" not in log_path.read_text()
