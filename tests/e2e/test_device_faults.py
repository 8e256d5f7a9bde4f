"""PLC faults on real processes: a hung Modbus rack, an OPC UA server restarted with its namespaces reordered.

The simulators run with their fault control interface; faults are set over HTTP exactly as a person would.
The gateway (`cellgate run`), Mosquitto and a subscriber run as their own processes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from simulators.servers.control_http import request_control
from tests.support.gateway import GatewayProcess, retarget_demo_config
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run
from tests.support.waiting import wait_until


@dataclass
class Plant:
    opcua_sim: SimulatorProcess
    modbus_sim: SimulatorProcess
    subscriber: Subscriber
    gateway: GatewayProcess
    prefix: str

    def latest(self, topic: str) -> dict[str, object] | None:
        messages = self.subscriber.on(topic)
        return orjson.loads(messages[-1].payload) if messages and messages[-1].payload else None


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    workdir = tmp_path_factory.mktemp("faults")
    enterprise = f"flt{uuid.uuid4().hex[:8]}"
    modbus_port = free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET)
    opcua_sim = SimulatorProcess(only="opcua", opcua_port=0, control_port=0)
    modbus_sim = SimulatorProcess(only="modbus", modbus_port=modbus_port, control_port=0)
    with Mosquitto() as broker:
        opcua_sim.start()
        modbus_sim.start()
        try:
            opcua_port = int(opcua_sim.opcua_endpoint.rstrip("/").rsplit(":", 1)[1])
            config = retarget_demo_config(
                opcua_port=opcua_port, modbus_port=modbus_port, destination=workdir / "m.yaml"
            )
            prefix = f"{enterprise}/dunkirk"
            with Subscriber(broker.host, broker.port, f"{prefix}/#") as subscriber:
                gateway = GatewayProcess(
                    config=config,
                    env={"CELLGATE_MQTT__URL": broker.url, "CELLGATE_GATEWAY__ENTERPRISE": enterprise},
                    state_dir=workdir / "state",
                )
                gateway.start()
                try:
                    yield Plant(opcua_sim, modbus_sim, subscriber, gateway, prefix)
                finally:
                    assert gateway.stop() == 0
                    gateway.close()
        finally:
            opcua_sim.close()
            modbus_sim.close()


def status(plant: Plant, equipment: str) -> dict[str, object] | None:
    return plant.latest(f"{plant.prefix}/{equipment}/_status")


COATER = "electrode/cathode-1/coater-01"
RACK = "formation/hall-a/rack-01"


def test_a_hung_rack_goes_bad_and_back_while_the_coater_keeps_its_rate(plant: Plant) -> None:
    voltage = f"{plant.prefix}/{RACK}/ch001/voltage"
    wait_until(lambda: (plant.latest(voltage) or {}).get("quality") == "good", 40, "the rack reading good")
    wait_until(lambda: (status(plant, COATER) or {}).get("connected") is True, 40, "the coater connected")

    def coater_arrivals() -> list[float]:
        return [m.at for m in plant.subscriber.messages if f"/{COATER}/" in m.topic and "/_" not in m.topic]

    def coater_publishing_for(seconds: float) -> bool:
        arrivals = coater_arrivals()
        return bool(arrivals) and time.monotonic() - min(arrivals) >= seconds

    wait_until(lambda: coater_publishing_for(6), 30, "six seconds of coater data to compare with")

    hang = {"fault": "hang", "duration_s": 12}
    code, answer = request_control(plant.modbus_sim.control_port, "POST", "/faults/rack-01", hang)
    assert code == 200, answer
    hang_started = time.monotonic()
    # Modbus: 3 timed-out polls (1 s timeout each) and the unit is skipped; its tags go bad once.
    wait_until(lambda: (status(plant, RACK) or {}).get("connected") is False, 15, "the rack reported down")
    wait_until(lambda: (plant.latest(voltage) or {}).get("status") == "comm_failure", 15, "rack tags bad")

    # Meanwhile the coater publishes as before (its own task and client): its messages per second while the rack
    # hangs against before the hang, each over a window that has passed (the gateway may have started less than
    # 10 s before the hang).
    wait_until(lambda: time.monotonic() > hang_started + 10, 15, "the hang window")
    arrivals = coater_arrivals()
    first = min(arrivals)
    before_since = max(first + 1, hang_started - 10)
    before_rate = sum(1 for at in arrivals if before_since <= at < hang_started) / (hang_started - before_since)
    during_rate = sum(1 for at in arrivals if hang_started + 2 <= at < hang_started + 10) / 8
    assert during_rate >= 0.6 * before_rate, (before_rate, during_rate)

    # The hang ends after 12 s; the back-off (5 s, then 10 s, ...) probes and the rack is good again well
    # within the 60 s cap.
    wait_until(lambda: (plant.latest(voltage) or {}).get("quality") == "good", 60, "the rack good again")
    assert (status(plant, RACK) or {}).get("connected") is True
    assert time.monotonic() - hang_started < 12 + 60


def test_opcua_restart_with_reordered_namespaces_keeps_values_on_the_right_topics(plant: Plant) -> None:
    serial = f"{plant.prefix}/{COATER}/identification/serial_number"
    speed = f"{plant.prefix}/{COATER}/line/speed"
    wait_until(lambda: (plant.latest(speed) or {}).get("quality") == "good", 40, "the coater reading good")
    before = plant.latest(serial)
    assert before is not None and before["quality"] == "good"
    mark = len(plant.subscriber.messages)

    code, answer = request_control(
        plant.opcua_sim.control_port, "POST", "/faults/coater-01", {"fault": "restart", "extra_namespaces": 3}
    )
    assert code == 200, answer

    def statuses(start: int) -> list[tuple[int, dict[str, Any]]]:
        """The coater's _status messages from ``start`` on: (index, body)."""
        messages = plant.subscriber.messages
        return [(i, orjson.loads(messages[i].payload)) for i in range(start, len(messages))
                if messages[i].topic.endswith(f"{COATER}/_status")]

    # The link drops with the server, a fresh client resolves the namespace URI to its new index.
    wait_until(lambda: any(body["connected"] is False for _, body in statuses(mark)), 30, "the coater reported down")
    down = next(i for i, body in statuses(mark) if body["connected"] is False)

    def readings_since(up: int) -> list[tuple[str, dict[str, Any]]]:
        """Coater readings after the _status message at ``up`` (connected), less the bad ones stamped before that
        link came up. Those belong to the link before it: the _status goes out at once, the data through the
        device's queue, so on a loaded machine they can arrive after the status."""
        since = str(orjson.loads(plant.subscriber.messages[up].payload)["since"])
        return [
            (m.topic, body) for m in plant.subscriber.messages[up + 1:]
            if f"/{COATER}/" in m.topic and "/_" not in m.topic
            and not ((body := orjson.loads(m.payload))["quality"] != "good" and str(body["ts"]) < since)
        ]

    def settled() -> int | None:
        """The last coater _status if it says connected and a line speed stamped after it has arrived since.
        (While the old server stops it may still accept a connection that then goes down too: the last link up
        is the restarted server's.)"""
        last = statuses(down)[-1:]
        if not last or last[0][1]["connected"] is not True:
            return None
        up, body = last[0]
        fresh = any(topic == speed and str(reading["ts"]) > str(body["since"]) for topic, reading in readings_since(up))
        return up if fresh else None

    wait_until(lambda: settled() is not None, 90, "the coater back, with a line speed read from the restarted server")
    restarted = settled()
    assert restarted is not None
    after = readings_since(restarted)
    assert after
    assert all(body["quality"] == "good" for _, body in after), (
        [body for _, body in statuses(mark)], [(t, b) for t, b in after if b["quality"] != "good"][:5])
    # A constant identification string lands on its own topic again, unchanged.
    latest_serial = plant.latest(serial)
    assert latest_serial is not None and latest_serial["value"] == before["value"]
    speed_value = (plant.latest(speed) or {}).get("value")
    assert isinstance(speed_value, float) and 0 <= speed_value <= 84
