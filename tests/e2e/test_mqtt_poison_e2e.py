"""``cellgate run`` against an MQTT 3.1.1 Mosquitto whose ``max_packet_size`` is smaller than the devices' retained
``_meta``, with a tag map that does NOT set ``mqtt.max_packet_size`` (issue 10 item 7 recipe, the poison part)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from tests.support.gateway import REPO_ROOT, GatewayProcess, retarget_demo_config
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.outage import data_messages, holes
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run, free_tcp_port
from tests.support.waiting import wait_until

BROKER_MAX_PACKET = 1024  # a rack's _meta is several kB; its data messages are far smaller


def rack_data(subscriber: Subscriber) -> int:
    """Data messages of the formation racks received so far (not _status / _meta)."""
    return sum("/formation/" in m.topic and "/_" not in m.topic for m in subscriber.messages)


def test_oversize_meta_without_max_packet_size_is_dead_lettered_and_data_flows(tmp_path: Path) -> None:
    """Issue 10 item 7 recipe: MQTT 3.1.1, a broker ``max_packet_size`` smaller than the retained ``_meta`` and no
    ``mqtt.max_packet_size``: the gateway reconnected about once a second forever and published nothing (34
    connects in 12 s, 0 data). Now the client finds the ``_meta`` the broker hangs up on (three closes for the
    first, one for each further oversize one), refuses it as ``broker_closed_connection``, the spool keeps it as a
    dead letter (``cellgate spool dead-letters``), it is logged once and counted in ``gateway_stopped``, and the
    racks' data reaches an independent subscriber without a ``seq`` hole."""
    enterprise = f"psn{uuid.uuid4().hex[:8]}"
    prefix = f"{enterprise}/dunkirk"
    modbus_port = free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET)
    config = retarget_demo_config(
        opcua_port=free_tcp_port(), modbus_port=modbus_port, destination=tmp_path / "tagmap.yaml"
    )  # no OPC UA server: only the Modbus machines publish
    state_dir = tmp_path / "state"
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
                "CELLGATE_MQTT__RECONNECT_MAX_S": "2",
                "CELLGATE_GATEWAY__ENTERPRISE": enterprise,
            },
            state_dir=state_dir,
        )
        gateway.start()
        try:
            wait_until(lambda: rack_data(subscriber) > 0, 40, "rack data at the subscriber")
            count = rack_data(subscriber)
            wait_until(lambda: rack_data(subscriber) > count + 20, 15, "more rack data")
            wait_until(lambda: not holes(data_messages(subscriber.messages)), 15, "every seq")
            assert gateway.stop() == 0
            events = gateway.events()
        finally:
            gateway.close()
    refused_lines = [e for e in events if e.get("event") == "mqtt_message_refused"]
    assert [e["reason"] for e in refused_lines] == ["broker_closed_connection"]  # once for the reason
    assert "/_meta" in str(refused_lines[0]["topic"])
    assert refused_lines[0]["dead_letter"] is True
    stopped = next(e for e in events if e.get("event") == "gateway_stopped")
    refused_count = dict(stopped["refused_by_broker"])  # type: ignore[call-overload]
    assert set(refused_count) == {"broker_closed_connection"}
    assert refused_count["broker_closed_connection"] >= 1
    assert not [m for m in subscriber.messages if m.topic.endswith("/_meta") and "/formation/" in m.topic]
    listing = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "spool", "dead-letters", "--state-dir", str(state_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"broker_closed_connection\t{refused_count['broker_closed_connection']}" in listing
