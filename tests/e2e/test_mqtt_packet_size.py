"""``cellgate run`` against an MQTT 3.1.1 Mosquitto whose ``max_packet_size`` is smaller than a device's
retained ``_meta`` (issue 10 item 7 recipe, the MQTT client part)."""

from __future__ import annotations

import uuid
from pathlib import Path

import orjson

from tests.support.gateway import GatewayProcess, retarget_demo_config
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run, free_tcp_port
from tests.support.waiting import wait_until

BROKER_MAX_PACKET = 1024  # the smallest mqtt.max_packet_size; a rack's _meta is several kB


def rack_data(subscriber: Subscriber) -> int:
    """Data messages of the formation racks received so far (not _status / _meta)."""
    return sum("/formation/" in m.topic and "/_" not in m.topic for m in subscriber.messages)


def test_an_oversize_meta_is_refused_and_data_flows_on_one_connection(tmp_path: Path) -> None:
    """Issue 10 item 7 recipe: MQTT 3.1.1 and a broker ``max_packet_size`` smaller than the retained
    ``_meta``: the gateway reconnected about once a second forever and published nothing. With
    ``mqtt.max_packet_size`` set to the broker's limit the catalogue is split into ``_meta`` parts that each
    fit, nothing is refused, the gateway stays on one connection and the racks' data flows. (A message that
    still does not fit is refused and kept: tests/integration/test_mqtt_refusals.py.)"""
    enterprise = f"mps{uuid.uuid4().hex[:8]}"
    prefix = f"{enterprise}/dunkirk"
    modbus_port = free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET)
    config = retarget_demo_config(
        opcua_port=free_tcp_port(), modbus_port=modbus_port, destination=tmp_path / "tagmap.yaml"
    )  # no OPC UA server: only the Modbus machines publish
    with (
        SimulatorProcess(only="modbus", modbus_port=modbus_port) as sim,
        Mosquitto(extra_config=[f"max_packet_size {BROKER_MAX_PACKET}"]) as broker,
        Subscriber(broker.host, broker.port, f"{prefix}/#") as subscriber,
    ):
        assert sim.modbus_port == modbus_port
        gateway = GatewayProcess(
            config=config,
            env={
                "CELLGATE_MQTT__URL": broker.url,
                "CELLGATE_MQTT__PROTOCOL": "3.1.1",
                "CELLGATE_MQTT__MAX_PACKET_SIZE": str(BROKER_MAX_PACKET),
                "CELLGATE_GATEWAY__ENTERPRISE": enterprise,
            },
            state_dir=tmp_path / "state",
        )
        gateway.start()
        try:
            wait_until(lambda: rack_data(subscriber), 30, "rack data at the subscriber")
            count = rack_data(subscriber)
            wait_until(lambda: rack_data(subscriber) > count + 10, 10, "more rack data")
            events = [event.get("event") for event in gateway.events()]
        finally:
            assert gateway.stop() == 0
            gateway.close()
        gateway_connections = [
            line for line in broker.log_text().splitlines() if "New client connected" in line and "cellgate-" in line
        ]
    assert "mqtt_message_refused" not in events
    assert events.count("mqtt_connected") == 1
    assert len(gateway_connections) == 1
    rack_meta = [m for m in subscriber.messages if "/formation/" in m.topic and "/_meta" in m.topic]
    parts = {m.topic: orjson.loads(m.payload) for m in rack_meta}
    assert any(topic.endswith("/_meta/2") for topic in parts), "a rack catalogue should need several parts here"
    for message in rack_meta:  # each PUBLISH (fixed header + topic + payload) fit the broker's limit
        assert len(message.topic.encode()) + len(message.payload) + 5 <= BROKER_MAX_PACKET
    for topic, body in parts.items():
        if topic.endswith("/_meta"):
            assert {f"{topic}/{k}" for k in range(2, body["parts"] + 1)} <= set(parts)
