"""A running gateway (`cellgate run`) with two OPC UA devices on the simulator, one polled and one subscribed:
/metrics has the poll cycle histogram ``cellgate_device_poll_seconds`` for the polled one (as for Modbus units)
and none for the subscribed one (it has no cycles); the log names the subscription's publish path once."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import Mosquitto
from tests.support.sim import SimulatorProcess
from tests.support.waiting import wait_until

CONFIG = """
gateway: {{id: edge-poll, enterprise: {enterprise}, site: test}}
mqtt: {{url: 'mqtt://127.0.0.1:1', qos: 1}}
devices:
  - name: coater-poll
    area: electrode
    line: cathode-1
    protocol: opcua
    endpoint: '{endpoint}'
    namespace: 'urn:cellgate:simulators'
    mode: poll
    interval_ms: 200
    tags:
      - {{name: line/speed, node: s=Coater01.Line.Speed, type: float64}}
      - {{name: line/length, node: s=Coater01.Line.Length, type: float64}}
  - name: coater-sub
    area: electrode
    line: cathode-1
    protocol: opcua
    endpoint: '{endpoint}'
    namespace: 'urn:cellgate:simulators'
    mode: subscribe
    interval_ms: 200
    tags:
      - {{name: line/speed, node: s=Coater01.Line.Speed, type: float64}}
"""


def poll_histogram(base: str) -> dict[str, dict[str, float]]:
    """Per device, the samples of ``cellgate_device_poll_seconds`` by sample name (+ le for buckets)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "cellgate_device_poll_seconds":
            continue
        for sample in family.samples:
            key = sample.name + (f"[{sample.labels['le']}]" if "le" in sample.labels else "")
            out.setdefault(sample.labels["device"], {})[key] = sample.value
    return out


def test_opcua_poll_mode_has_the_poll_cycle_histogram(tmp_path: Path) -> None:
    with Mosquitto() as broker, SimulatorProcess(only="opcua") as sim:
        config = tmp_path / "map.yaml"
        config.write_text(CONFIG.format(enterprise=f"poll{uuid.uuid4().hex[:8]}", endpoint=sim.opcua_endpoint))
        gateway = GatewayProcess(
            config=config,
            env={"CELLGATE_MQTT__URL": broker.url},  # the listener on a port it binds itself, named in its log
            state_dir=tmp_path / "state",
        )
        gateway.start()
        try:
            base = f"http://{gateway.wait_for_event('http_listening', 60)['listen']}"
            histograms: dict[str, dict[str, float]] = {}

            def polled_a_few_times() -> bool:
                nonlocal histograms
                try:
                    histograms = poll_histogram(base)
                except OSError:
                    return False  # not listening yet
                return histograms.get("coater-poll", {}).get("cellgate_device_poll_seconds_count", 0) >= 3

            wait_until(polled_a_few_times, 120, "three OPC UA poll cycles in cellgate_device_poll_seconds")
        finally:
            assert gateway.stop() == 0
            log = gateway.log_text()
            gateway.close()
    polled = histograms["coater-poll"]
    count = polled["cellgate_device_poll_seconds_count"]
    assert polled["cellgate_device_poll_seconds_bucket[+Inf]"] == count
    assert polled["cellgate_device_poll_seconds_sum"] > 0
    assert "coater-sub" not in histograms  # a subscription has no poll cycles
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    paths = [(e.get("device"), e.get("path")) for e in events if e.get("event") == "opcua_publish_path"]
    assert paths == [("coater-sub", "fast")], paths
