"""``gateway.event_loop`` in a real gateway process: ``auto`` runs on uvloop (installed with the gateway),
``asyncio`` on the stock loop; on either the Modbus data reach a stock Mosquitto at QoS 1, SIGHUP reloads and
SIGTERM stops cleanly with the offline status. (The other gateway-process tests run on the default, uvloop.)
"""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import orjson
import pytest

from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run
from tests.support.waiting import wait_until

TAG_MAP = """\
gateway: {{id: gw-{run}, enterprise: el{run}, site: dunkirk{event_loop}}}
mqtt: {{url: "{url}"}}
http: {{listen: null}}
devices:
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    port: {port}
    interval_ms: {interval_ms}
    tags:
      - {{name: heartbeat, address: 2, type: uint16}}
"""


@pytest.mark.parametrize(("setting", "expected"), [(None, "uvloop"), ("asyncio", "asyncio")])
def test_the_gateway_runs_reloads_and_stops_on_the_chosen_loop(
    tmp_path: Path, setting: str | None, expected: str
) -> None:
    run = uuid.uuid4().hex[:8]
    simulator = SimulatorProcess(only="modbus", modbus_port=free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET))
    broker = Mosquitto(extra_config=["max_inflight_messages 20"])
    simulator.start()
    broker.start()
    subscriber = Subscriber(broker.host, broker.port, f"el{run}/#")
    config = tmp_path / "map.yaml"

    def write_map(interval_ms: int) -> None:
        config.write_text(
            TAG_MAP.format(
                run=run, url=broker.url, port=simulator.modbus_ports["rack-01"], interval_ms=interval_ms,
                event_loop=f", event_loop: {setting}" if setting else "",
            )
        )  # fmt: skip

    write_map(100)
    gateway = GatewayProcess(config=config, env={}, state_dir=tmp_path / "state")
    try:
        subscriber.start()
        gateway.start()
        assert gateway.wait_for_event("gateway_starting", 60)["event_loop"] == expected
        heartbeat = f"el{run}/dunkirk/formation/hall-a/rack-01/heartbeat"
        wait_until(lambda: len(subscriber.on(heartbeat)) >= 3, 40, "live data")

        write_map(200)
        seen = len(gateway.events())
        gateway.send_signal(signal.SIGHUP)
        gateway.wait_for_event("reload_applied", 30, after=seen)
        count = len(subscriber.on(heartbeat))
        wait_until(lambda: len(subscriber.on(heartbeat)) >= count + 3, 40, "live data after the reload")

        assert gateway.stop(30) == 0
        status = f"el{run}/dunkirk/_gateway/gw-{run}/status"
        wait_until(lambda: [orjson.loads(m.payload)["online"] for m in subscriber.on(status)][-1:] == [False], 30)
    finally:
        gateway.close()
        subscriber.stop()
        broker.close()
        simulator.close()
