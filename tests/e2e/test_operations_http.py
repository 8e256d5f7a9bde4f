"""The operations listener of a running gateway (`cellgate run`) on the Modbus simulators and Mosquitto:
/metrics checked by Prometheus' own promtool, /healthz, /readyz, and the status page in headless Chromium.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.supervisor import SUPERVISOR_BACKOFF
from simulators.servers.control_http import request_control
from tests.support.gateway import GatewayProcess, retarget_demo_config
from tests.support.mosquitto import Mosquitto
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run
from tests.support.waiting import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMTOOL = shutil.which("promtool")


@dataclass
class Running:
    base: str
    modbus_sim: SimulatorProcess
    gateway: GatewayProcess
    workdir: Path


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("ops")
    modbus_port = free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET)
    # Modbus only: the coater's OPC UA endpoint stays down, which the page must show too. Its port is held bound
    # (never listening) for the whole module, so no other test's server or client can take it meanwhile.
    coater_port = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    coater_port.bind(("127.0.0.1", 0))
    modbus_sim = SimulatorProcess(only="modbus", modbus_port=modbus_port, control_port=0)
    with coater_port, Mosquitto() as broker:
        modbus_sim.start()
        try:
            config = retarget_demo_config(
                opcua_port=coater_port.getsockname()[1], modbus_port=modbus_port, destination=workdir / "m.yaml"
            )
            # The operations listener on a port the system picks (GatewayProcess's default), read from the log:
            # a port chosen beforehand can be taken by any other test's connection before the gateway binds it.
            gateway = GatewayProcess(
                config=config,
                env={"CELLGATE_MQTT__URL": broker.url, "CELLGATE_GATEWAY__ENTERPRISE": f"ops{uuid.uuid4().hex[:8]}"},
                state_dir=workdir / "state",
            )
            gateway.start()
            try:
                base = f"http://{gateway.wait_for_event('http_listening', 60)['listen']}"
                try:
                    wait_until(lambda: _ready(base), 60, "/readyz answering 200")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; gateway log tail:\n{gateway.log_text()[-3000:]}") from None
                yield Running(base, modbus_sim, gateway, workdir)
            finally:
                assert gateway.stop() == 0
                gateway.close()
        finally:
            modbus_sim.close()


def _ready(base: str) -> bool:
    try:
        return get(f"{base}/readyz")[0] == 200
    except OSError:
        return False


def test_healthz_and_readyz_answer_json(running: Running) -> None:
    code, body = get(f"{running.base}/healthz")
    assert (code, json.loads(body)) == (200, {"status": "alive"})
    code, body = get(f"{running.base}/readyz")
    answer = json.loads(body)
    assert code == 200
    assert answer["status"] == "ready"
    assert answer["checks"] == {"map_loaded": True, "output": True, "not_stalled": True, "device_up": True}
    assert get(f"{running.base}/nowhere")[0] == 404


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
def test_a_real_scrape_passes_promtool_and_carries_the_gateway_metrics(running: Running) -> None:
    assert PROMTOOL is not None

    def published_total(text: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith("cellgate_messages_published_total "))
        return float(line.split()[1])

    def rack_counter(text: str, name: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(f'{name}{{device="rack-01"}}'))
        return float(line.split()[-1])

    def scrape_after_a_poll() -> bool:
        # ready means a device is up; its first messages may still be on their way to the broker, and a poll's
        # values go out request by request, before the poll (and its counters) ends
        text = get(f"{running.base}/metrics")[1].decode()
        return (published_total(text) > 0 and rack_counter(text, "cellgate_poll_cycles_total") > 0
                and rack_counter(text, "cellgate_device_poll_seconds_count") > 0)

    wait_until(scrape_after_a_poll, 30, "a message published and a poll of rack-01 counted")
    code, body = get(f"{running.base}/metrics")
    assert code == 200
    text = body.decode()
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    assert 'cellgate_device_up{device="rack-01"} 1.0' in text
    assert 'cellgate_device_up{device="coater-01"} 0.0' in text
    assert "cellgate_build_info{" in text
    assert "cellgate_mqtt_connected 1.0" in text
    assert "process_cpu_seconds_total" in text
    assert published_total(text) > 0
    # The Modbus source's own counters, kept by its poll loop, reach the registry.
    assert rack_counter(text, "cellgate_poll_cycles_total") > 0
    assert 'cellgate_poll_overruns_total{device="rack-01"}' in text
    assert rack_counter(text, "cellgate_device_poll_seconds_count") > 0
    assert 'cellgate_device_reads_total{device="rack-01",result="timeout"}' in text
    assert 'cellgate_samples_total{device="rack-01",quality="bad"}' in text
    # Labels stay bounded: no per-tag series.
    assert "ch001" not in text


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}",
    ]  # fmt: skip
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=60, check=False)


def _rack_link(dom: str) -> str | None:
    marker = 'id="device-rack-01" data-link="'
    at = dom.find(marker)
    return dom[at + len(marker) :].split('"', 1)[0] if at >= 0 else None


@pytest.mark.skipif(CHROMIUM is None, reason="chromium (Debian package chromium) is not installed")
def test_status_page_in_chromium_shows_a_dropped_plc_down(running: Running, tmp_path: Path) -> None:
    profile = tmp_path / "chromium-profile"
    dom = _chromium("--dump-dom", f"{running.base}/", profile=profile).stdout
    assert _rack_link(dom) == "up", dom[:2000]
    assert 'id="device-coater-01" data-link="down"' in dom
    assert 'id="broker" class="up"' in dom
    assert '<meta http-equiv="refresh"' in dom
    assert "<script" not in dom

    code, answer = request_control(
        running.modbus_sim.control_port, "POST", "/faults/rack-01", {"fault": "drop", "duration_s": 30}
    )
    assert code == 200, answer
    seen: list[str | None] = []

    def rack_down() -> bool:
        seen.append(_rack_link(_chromium("--dump-dom", f"{running.base}/", profile=profile).stdout))
        return seen[-1] == "down"

    wait_until(rack_down, SUPERVISOR_BACKOFF.max_s, "rack-01 shown down on the status page")
    screenshot = tmp_path / "status-page.png"
    shot = _chromium("--window-size=412,915", f"--screenshot={screenshot}", f"{running.base}/", profile=profile)
    assert screenshot.exists() and screenshot.stat().st_size > 1000, shot.stderr


def _series(text: str) -> dict[str, float]:
    """Every sample line of a scrape: ``name{labels}`` -> value."""
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _scrape(base: str) -> dict[str, float]:
    code, body = get(f"{base}/metrics")
    assert code == 200
    return _series(body.decode())


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) is not installed")
def test_a_plc_that_stops_answering_shows_in_reads_and_samples(running: Running) -> None:
    """rack-02 hangs (connection open, no answers): its reads time out and its tags go out bad, in the counters."""
    assert PROMTOOL is not None
    up = 'cellgate_device_up{device="rack-02"}'
    timeouts = 'cellgate_device_reads_total{device="rack-02",result="timeout"}'
    ok = 'cellgate_device_reads_total{device="rack-02",result="ok"}'
    bad = 'cellgate_samples_total{device="rack-02",quality="bad"}'
    good = 'cellgate_samples_total{device="rack-02",quality="good"}'
    wait_until(lambda: _scrape(running.base).get(up) == 1, 60, "rack-02 up")
    before = _scrape(running.base)
    assert before[ok] > 0 and before[good] > 0
    code, answer = request_control(
        running.modbus_sim.control_port, "POST", "/faults/rack-02", {"fault": "hang", "duration_s": 3}
    )
    assert code == 200, answer
    seen: list[dict[str, float]] = []

    def counted_the_hang() -> bool:
        seen.append(_scrape(running.base))
        return seen[-1][timeouts] > before[timeouts] and seen[-1][bad] > before[bad]

    wait_until(counted_the_hang, 30, "a timeout and bad samples of rack-02 in /metrics")
    code, body = get(f"{running.base}/metrics")
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    # Reads come back once the hang is over (reconnect included); the other PLC on the simulator (on its own port)
    # kept reading meanwhile. (rack-01 is left alone: the status page test drops it.)
    during = seen[-1]
    wait_until(lambda: _scrape(running.base)[ok] > during[ok], 60, "rack-02 read ok again")
    stacker_ok = 'cellgate_device_reads_total{device="stacker-01",result="ok"}'
    wait_until(lambda: _scrape(running.base)[stacker_ok] > before[stacker_ok], 30, "stacker-01 reading on")
