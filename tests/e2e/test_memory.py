"""Memory of a real ``cellgate run``: SIGHUP reloads give their memory back (issue 10, defect 10).

Real parts: Mosquitto, the raw Modbus bench server (``benchmarks/servers.py``, every address answers and every
value changes on every read) and the gateway as a child process; RSS read from ``/proc/<pid>/status``. The
assertions are about memory only, never time.
"""

from __future__ import annotations

import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import REPO_ROOT, GatewayProcess
from tests.support.mosquitto import Mosquitto

pytestmark = pytest.mark.e2e

RACKS = 10
CHANNELS = 128  # x 8 tags x 10 racks = 10,240 tags
RELOADS = 15
WARM_RELOADS = 3
"""Reloads before the baseline: the first ones grow the heap once (a second set of channels is built while the
first still runs, and the allocator keeps part of that space for the next reload); what follows must be flat."""
GROWTH_BOUND_MB = 12.0
"""Allowed RSS growth over the last 12 reloads. Without the fix each full reload of this map kept about 4 MB
(the replaced channels and cancelled sources stayed in reference cycles the frozen collector never visited):
about 50 MB over 12. With it the growth is within a few MB, allocator noise."""
RELEASE_WAIT_S = 2.0

TEMPLATE = """\
gateway: {{id: gw-memory, enterprise: memtest, site: s1, queue_size: 10000}}
mqtt: {{url: "{broker}", qos: 1}}
templates:
  channel:
    - {{name: voltage, address: 0, type: float32, unit: V}}
    - {{name: current, address: 2, type: float32, unit: A}}
    - {{name: capacity, address: 4, type: float32, unit: A.h}}
    - {{name: energy, address: 6, type: float32, unit: W.h}}
    - {{name: temperature, address: 8, type: int16, scale: 0.1, unit: Cel}}
    - {{name: step, address: 9, type: uint16}}
    - {{name: status, address: 10, type: uint16}}
    - {{name: cell_time, address: 11, type: uint32, unit: s}}
devices:
"""
RACK = """\
  - name: rack-{index:02d}
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    port: {port}
    interval_ms: {interval_ms}
    publish: batch
    repeat: {{template: channel, count: {channels}, start: 1000, stride: 16, name: 'ch{{n:03d}}'}}
"""


def hall_map(broker: str, ports: list[int], interval_ms: int) -> str:
    racks = "".join(
        RACK.format(index=index, port=port, interval_ms=interval_ms, channels=CHANNELS)
        for index, port in enumerate(ports, start=1)
    )
    return TEMPLATE.format(broker=broker) + racks


@pytest.fixture
def bench_modbus_ports(tmp_path: Path) -> Iterator[list[int]]:
    """One raw bench Modbus server process listening on ``RACKS`` free ports."""
    argv = [sys.executable, "benchmarks/servers.py", "modbus", "--ports", *["0"] * RACKS]
    with (tmp_path / "servers.log").open("wb") as log:
        server = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert server.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(server.stdout, selectors.EVENT_READ)
            assert selector.select(timeout=90), "the bench server printed no ready line"
        ready = server.stdout.readline().strip()
        assert ready.startswith("ready modbus="), ready
        yield [int(address.rsplit(":", 1)[1]) for address in ready.split("=", 1)[1].split(",")]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def count_events(gateway: GatewayProcess, event: str) -> int:
    return sum(1 for entry in gateway.events() if entry.get("event") == event)


def reload_and_settle(gateway: GatewayProcess, config: Path, text: str, number: int) -> float:
    """Write ``text``, SIGHUP, wait for reload ``number`` to be applied and its memory released; RSS in MiB."""
    config.write_text(text, encoding="utf-8")
    gateway.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while count_events(gateway, "reload_applied") < number:
        assert gateway.running, gateway.log_text()[-3000:]
        assert time.monotonic() < deadline, f"reload {number} not applied:\n{gateway.log_text()[-3000:]}"
        time.sleep(0.05)
    # memory_released follows reload_applied in the same event-loop step; one per reload plus one at start-up.
    deadline = time.monotonic() + RELEASE_WAIT_S
    while count_events(gateway, "memory_released") < number + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    return gateway.rss_kb() / 1024


def test_sighup_reloads_give_memory_back(tmp_path: Path, bench_modbus_ports: list[int]) -> None:
    """Issue 10 defect 10 recipe: "50 SIGHUP reloads in a row leave about 60 MB more RSS". Here 15 reloads of a
    10,240-tag hall map, each changing every rack's ``interval_ms`` so every channel and source is rebuilt; after
    the first few the resident size stays flat (``benchmarks/memory.py reload`` is the 50-reload version)."""
    config = tmp_path / "tagmap.yaml"
    with Mosquitto() as broker:
        config.write_text(hall_map(broker.url, bench_modbus_ports, 1000), encoding="utf-8")
        gateway = GatewayProcess(config=config, env={}, state_dir=tmp_path / "state")
        gateway.start()
        try:
            gateway.wait_for_event("gateway_running", 60)
            rss_mb: list[float] = []
            for number in range(1, RELOADS + 1):
                text = hall_map(broker.url, bench_modbus_ports, 1000 + (100 if number % 2 else 0))
                rss_mb.append(reload_and_settle(gateway, config, text, number))
            assert count_events(gateway, "reload_failed") == 0
            growth = rss_mb[-1] - rss_mb[WARM_RELOADS - 1]
            assert growth < GROWTH_BOUND_MB, f"RSS after each reload (MiB): {[round(m, 1) for m in rss_mb]}"
            released = [e for e in gateway.events() if e.get("event") == "memory_released"]
            assert [e["stage"] for e in released] == ["start"] + ["reload"] * RELOADS
            assert all(isinstance(e["rss_mb"], float) and e["rss_mb"] > 0 for e in released)
        finally:
            gateway.close()
