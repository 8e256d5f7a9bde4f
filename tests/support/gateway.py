"""``cellgate run`` as a real child process, and a tag map retargeted at test ports."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO_ROOT / "config" / "demo.yaml"


# The Modbus devices of config/demo.yaml and their offset from the first rack's port, as the simulators assign
# them (``python -m simulators --modbus-port P``: rack-01 P, rack-02 P+1, stacker-01 P+2).
DEMO_MODBUS_OFFSETS = {"rack-01": 0, "rack-02": 1, "stacker-01": 2}


def retarget_demo_config(
    *, opcua_port: int, modbus_port: int, destination: Path, modbus_ports: Mapping[str, int] | None = None
) -> Path:
    """config/demo.yaml with the simulator ports replaced (the broker comes from CELLGATE_MQTT__URL).

    Every Modbus device gets ``modbus_port`` + its offset in ``DEMO_MODBUS_OFFSETS`` (what a simulator started with
    ``--modbus-port modbus_port`` listens on), unless ``modbus_ports`` (device -> port) names it.
    """
    ports = {device: modbus_port + offset for device, offset in DEMO_MODBUS_OFFSETS.items()}
    ports.update(modbus_ports or {})
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text, opcua_hits = re.subn(r"opc\.tcp://127\.0\.0\.1:4840", f"opc.tcp://127.0.0.1:{opcua_port}", text)
    assert opcua_hits >= 1, "config/demo.yaml no longer has the OPC UA endpoint this helper rewrites"
    lines = text.splitlines(keepends=True)
    device: str | None = None
    rewritten: set[str] = set()
    for index, line in enumerate(lines):
        named = re.match(r"^  - name:\s*([a-z0-9-]+)\s*$", line)
        if named:
            device = named[1]
            continue
        port = re.match(r"^(    port:\s*)\d+(\s*(?:#.*)?)$", line.rstrip("\n"))
        if port and device in ports:
            lines[index] = f"{port[1]}{ports[device]}{port[2]}\n"
            rewritten.add(device)
    missing = sorted(set(DEMO_MODBUS_OFFSETS) - rewritten)
    assert not missing, f"config/demo.yaml no longer has a port line for {missing}"
    destination.write_text("".join(lines), encoding="utf-8")
    return destination


class GatewayProcess:
    """``python -m gateway.cli run -c CONFIG`` with extra environment; JSON logs kept in a temp file."""

    def __init__(self, *, config: Path, env: dict[str, str], state_dir: Path) -> None:
        self._config = config
        self.state_dir = state_dir
        # The operations listener on a port the system picks, unless the test names one: never the default 9108.
        self._env = {**os.environ, "CELLGATE_HTTP__LISTEN": "127.0.0.1:0", **env, "PYTHONUNBUFFERED": "1"}
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[str] | None = None
        self.returncode: int | None = None

    def start(self) -> None:
        self._log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in close()
        self._process = subprocess.Popen(
            [
                sys.executable, "-m", "gateway.cli", "run", "-c", str(self._config),
                "--state-dir", str(self.state_dir), "--log-format", "json",
            ],
            cwd=REPO_ROOT, env=self._env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def send_signal(self, signum: int) -> None:
        assert self._process is not None, "not started"
        self._process.send_signal(signum)

    def events(self) -> list[dict[str, object]]:
        """The JSON log lines written so far, parsed (lines that are not JSON are skipped)."""
        out: list[dict[str, object]] = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_for_event(self, event: str, timeout_s: float, *, after: int = 0) -> dict[str, object]:
        """The first log event named ``event`` among the lines after the first ``after`` events."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [e for e in self.events()[after:] if e.get("event") == event]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {event!r} in the gateway log; tail:\n{self.log_text()[-3000:]}")
            if not self.running:
                raise AssertionError(f"gateway exited ({self._process and self._process.poll()}) before {event!r}")
            time.sleep(0.1)

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    def stop(self, timeout_s: float = 15.0) -> int | None:
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None:
            self.returncode = process.returncode
        return self.returncode

    def close(self) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()
            self._log = None
