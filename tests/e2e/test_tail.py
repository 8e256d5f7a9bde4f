"""`cellgate tail` as a user runs it, against a real Mosquitto holding retained fixture messages in the UNS layout."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.cli import main
from tests.support.gateway import REPO_ROOT, GatewayProcess
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.sim import SimulatorProcess

CLI = [sys.executable, "-m", "gateway.cli", "tail"]
ESC = "\x1b["

FIXTURES = {
    "acme/dunkirk/_gateway/edge-01/status": {"online": True},
    "acme/dunkirk/formation/hall-a/rack-01/_status": {"connected": False, "error": "timeout"},
    "acme/dunkirk/formation/hall-a/rack-01/ch001/voltage": {"value": 3.71234, "unit": "V", "quality": "good"},
    "acme/dunkirk/formation/hall-a/rack-01/ch001/current": {
        "value": None, "unit": "A", "quality": "bad", "status": "comm_failure",
    },
    "acme/dunkirk/electrode/coating/coater-01/_status": {"connected": True, "error": None},
    "acme/dunkirk/electrode/coating/coater-01/web_speed": {
        "value": 12.5, "unit": "m/min", "quality": "uncertain", "status": "out_of_range",
    },
    "acme/dunkirk/electrode/coating/coater-01/_meta": {"tags": []},
    "globex/lyon/_gateway/edge-09/status": {"online": False},
    "globex/lyon/assembly/line-1/stacker-01/_status": {"connected": True, "error": None},
}


@pytest.fixture(scope="module")
def broker() -> Iterator[Mosquitto]:
    with Mosquitto() as server:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="tail-fixtures")
        client.connect(server.host, server.port)
        client.loop_start()
        try:
            infos = [client.publish(topic, orjson.dumps(body), qos=1, retain=True) for topic, body in FIXTURES.items()]
            for info in infos:
                info.wait_for_publish(timeout=5)
        finally:
            client.loop_stop()
            client.disconnect()
        yield server


def _tag_map(tmp_path: Path, broker: Mosquitto) -> Path:
    path = tmp_path / "tagmap.yaml"
    path.write_text(
        "gateway: {id: edge-01, enterprise: acme, site: dunkirk}\n"
        f'mqtt: {{url: "mqtt://127.0.0.1:{broker.port}", protocol: "3.1.1"}}\n'
        "devices:\n"
        "  - {name: rack-01, area: formation, line: hall-a, protocol: modbus, host: 127.0.0.1,\n"
        "     tags: [{name: ch001/voltage, address: 0, type: float32}]}\n"
    )
    return path


def _read_until(process: subprocess.Popen[bytes], fd: int, wanted: list[str], timeout_s: float = 15.0) -> str:
    """Output of ``fd`` until every string of ``wanted`` has appeared in it (or the time is up)."""
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # a pty's master reports EIO once the child has closed it
                break
            chunks.append(data)
            if all(item in b"".join(chunks).decode(errors="replace") for item in wanted):
                break
    return b"".join(chunks).decode(errors="replace")


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_tail_broker_into_a_pipe_shows_every_site_without_colour(broker: Mosquitto) -> None:
    process = subprocess.Popen(
        [*CLI, "--broker", broker.url, "--interval", "0.2"], cwd=REPO_ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    wanted = [
        "broker: connected",
        "gateway acme/dunkirk/edge-01: online",
        "gateway globex/lyon/edge-09: OFFLINE",
        "acme/dunkirk/formation/hall-a/rack-01  [DISCONNECTED (timeout)]  2 tags seen",
        "ch001/voltage = 3.712 V",
        "(bad: comm_failure)",
        "acme/dunkirk/electrode/coating/coater-01  [connected]  1 tags seen",
        "(uncertain: out_of_range)",
        "globex/lyon/assembly/line-1/stacker-01  [connected]  0 tags seen",
    ]
    try:
        out = _read_until(process, process.stdout.fileno(), wanted)
    finally:
        code = _stop(process)
    for item in wanted:
        assert item in out, out
    assert ESC not in out  # not a terminal: no colour, no screen clearing
    assert "_meta" not in out
    assert code == 0
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read().decode()


def test_tail_on_a_terminal_colours_by_quality(broker: Mosquitto, tmp_path: Path) -> None:
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [*CLI, "-c", str(_tag_map(tmp_path, broker)), "--interval", "0.2"], cwd=REPO_ROOT,
        stdout=slave, stderr=subprocess.PIPE,
    )
    os.close(slave)
    green_value = "\x1b[32m3.712 V\x1b[0m"
    red_value = "\x1b[31mNone A (bad: comm_failure)\x1b[0m"
    yellow_value = "\x1b[33m12.5 m/min (uncertain: out_of_range)\x1b[0m"
    try:
        out = _read_until(process, master, [green_value, red_value, yellow_value])
    finally:
        code = _stop(process)
        os.close(master)
    assert "\x1b[H\x1b[2J" in out  # the screen is redrawn in place
    assert green_value in out and red_value in out and yellow_value in out, out
    assert "\x1b[31mDISCONNECTED (timeout)\x1b[0m" in out
    # -c: the tag map's site only, its enterprise/site left out of the names
    assert "formation/hall-a/rack-01" in out and "acme/dunkirk/formation" not in out
    assert "globex" not in out
    assert code == 0


def test_tail_on_a_running_gateway(broker: Mosquitto, tmp_path: Path) -> None:
    """A real gateway reading the rack simulator and a PLC nobody answers for: tail shows both as the gateway
    publishes them (its own status and payloads, not fixtures)."""
    config = tmp_path / "tagmap.yaml"
    with SimulatorProcess(only="modbus", extra_args=["--racks", "1", "--stackers", "0"]) as sims:
        config.write_text(
            "gateway: {id: edge-tail, enterprise: initech, site: plant-7}\n"
            f'mqtt: {{url: "mqtt://127.0.0.1:{broker.port}"}}\n'
            "devices:\n"
            f"  - {{name: rack-01, area: formation, line: hall-a, protocol: modbus, host: 127.0.0.1,\n"
            f"     port: {sims.modbus_ports['rack-01']}, interval_ms: 200,\n"
            # 16 channels: above a max of 4, so published as uncertain / out_of_range
            "     tags: [{name: channel_count, address: 1, type: uint16, max: 4}]}\n"
            f"  - {{name: plc-gone, area: formation, line: hall-a, protocol: modbus, host: 127.0.0.1,\n"
            f"     port: {free_port()}, tags: [{{name: x, address: 0, type: uint16}}]}}\n"
        )
        gateway = GatewayProcess(config=config, env={}, state_dir=tmp_path / "state")
        gateway.start()
        process = subprocess.Popen(
            [*CLI, "-c", str(config), "--interval", "0.2"], cwd=REPO_ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        wanted = [
            "broker: connected  gateway edge-tail: online",
            "formation/hall-a/rack-01  [connected]  1 tags seen",
            "channel_count = 16 (uncertain: out_of_range)",
            "formation/hall-a/plc-gone  [DISCONNECTED (",
        ]
        try:
            out = _read_until(process, process.stdout.fileno(), wanted, timeout_s=30)
        finally:
            code = _stop(process)
            gateway.stop()
            gateway.close()
    for item in wanted:
        assert item in out, out
    assert "acme" not in out  # the map's site only
    assert ESC not in out
    assert code == 0


def test_tail_says_so_while_the_broker_cannot_be_reached() -> None:
    url = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens there
    process = subprocess.Popen(
        [*CLI, "--broker", url, "--interval", "0.2"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        out = _read_until(process, process.stdout.fileno(), ["broker: NOT CONNECTED (retrying)"])
    finally:
        code = _stop(process)
    assert "broker: NOT CONNECTED (retrying)  gateway: unknown  0 messages" in out, out
    assert code == 0
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read().decode()


def test_tail_without_paho_names_the_extra_and_exits_2(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked" / "paho"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('paho-mqtt is not installed here')\n")
    result = subprocess.run(
        [*CLI, "--broker", "mqtt://127.0.0.1:1"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": f"{blocked.parent}{os.pathsep}{REPO_ROOT}"},
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "cellgate tail: paho-mqtt missing; install the demo extra: pip install 'cellgate[demo]'"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--broker", "http://127.0.0.1:1883"], "expected mqtt://HOST[:PORT]"),
        (["--broker", "mqtt://127.0.0.1:1883", "acme/#/x"], "'#' must be a whole level and the last one"),
        (["--broker", "mqtt://127.0.0.1:1883", "acme/ab+"], "'+' must be a whole level"),
    ],
)
def test_tail_refuses_bad_arguments(arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_tail_reports_a_broken_tag_map(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "tagmap.yaml"
    path.write_text("gateway: {id: edge-01, enterprise: acme, site: dunkirk}\nmqtt: {url: 'ftp://x'}\ndevices: []\n")
    assert main(["tail", "-c", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_tail_refuses_both_a_map_and_a_broker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["tail", "-c", "x.yaml", "--broker", "mqtt://127.0.0.1:1883"])
    assert stopped.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


