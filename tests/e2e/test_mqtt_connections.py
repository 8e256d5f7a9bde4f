"""``mqtt.connections: 3`` in a real gateway process, against a stock Mosquitto (its default window of 20).

A formation rack of the Modbus simulator, 200 of its channel registers as tags polled every 100 ms: the data
come over three connections with every topic's ``seq`` in order and without a hole, and a crash leaves one
will, the primary's, on the gateway's status topic.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import orjson

from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.outage import data_messages, holes
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run
from tests.support.waiting import wait_until

CONNECTIONS = 3

TAG_MAP = """\
gateway: {{id: gw-{run}, enterprise: mc{run}, site: dunkirk}}
mqtt: {{url: "{url}", connections: {connections}}}
http: {{listen: null}}
templates:
  register:
    - {{name: raw, address: 0, type: uint16}}
devices:
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    port: {port}
    interval_ms: 100
    tags:
      - {{name: heartbeat, address: 2, type: uint16}}
    repeat:
      - {{template: register, count: 200, start: 1000, stride: 1, name: 'r{{n:04d}}'}}
"""


def test_three_connections_keep_order_and_a_crash_leaves_one_will(tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    simulator = SimulatorProcess(only="modbus", modbus_port=free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET))
    broker = Mosquitto(extra_config=["max_inflight_messages 20"])  # Mosquitto's default, said out loud
    simulator.start()
    broker.start()
    subscriber = Subscriber(broker.host, broker.port, f"mc{run}/#")
    config = tmp_path / "map.yaml"
    config.write_text(
        TAG_MAP.format(run=run, url=broker.url, connections=CONNECTIONS, port=simulator.modbus_ports["rack-01"])
    )
    gateway = GatewayProcess(config=config, env={}, state_dir=tmp_path / "state")
    try:
        subscriber.start()
        gateway.start()
        heartbeat = f"mc{run}/dunkirk/formation/hall-a/rack-01/heartbeat"
        wait_until(lambda: len(subscriber.on(heartbeat)) >= 3, 40, "live data")
        log = broker.log_text()
        for suffix in ("", *(f"-{n}" for n in range(2, CONNECTIONS + 1))):
            assert f"as cellgate-gw-{run}{suffix} " in log, f"no connection cellgate-gw-{run}{suffix} at the broker"
        status_topic = f"mc{run}/dunkirk/_gateway/gw-{run}/status"

        gateway.send_signal(signal.SIGKILL)
        offline = [False]
        wait_until(lambda: [orjson.loads(m.payload)["online"] for m in subscriber.on(status_topic)][-1:] == offline, 30)
        time.sleep(1.0)  # time for a second will to arrive, had another connection one
        statuses = [orjson.loads(m.payload)["online"] for m in subscriber.on(status_topic)]
        assert statuses == [True, False], "one online at connect, one will: the other connections have none"
        per_topic = data_messages(subscriber.messages)
    finally:
        gateway.close()
        subscriber.stop()
        broker.close()
        simulator.close()
    assert len(per_topic) > 50
    assert not holes(per_topic)
    for topic, bodies in per_topic.items():
        seqs = [int(str(body["seq"])) for body in bodies]
        assert seqs == sorted(seqs), f"{topic}: out of order"
