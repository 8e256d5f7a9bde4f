"""Issue 10, defect 5 on real processes: PLCs that accept every connection and close it at once.

Recipe: a Modbus server that accepts and closes at once caused 13,040 reconnects in 13 s, 93 % of a core and
26,094 log lines in `cellgate run`. Here `cellgate run` (its own process, real Mosquitto) polls a Modbus device and
subscribes an OPC UA device, both on loopback servers that accept and close every connection (plain sockets in a
thread of this test). Over 8 s the connection attempts follow the backoff (0.5, 1, 2, 4 s), the gateway's CPU time
(from /proc) stays small and its log holds a handful of lines, not thousands.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import Mosquitto
from tests.support.waiting import wait_until

WATCH_S = 8.0
MAX_ATTEMPTS = 12  # per device; the backoff allows 6 in 8 s, the storm made thousands
MAX_CPU_S = 1.0  # of the gateway over 8 s; the storm used 93 % of a core
MAX_LINES = 40  # the gateway's whole log over the 8 s, two devices; the storm logged 2,000 lines a second


class AcceptAndClose:
    """A loopback TCP server that accepts every connection and closes it at once, counting them."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"accept-and-close:{self.port}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()


def tagmap(modbus_port: int, opcua_port: int) -> str:
    return f"""\
gateway: {{id: gw, enterprise: storm{uuid.uuid4().hex[:8]}, site: dunkirk}}
mqtt: {{url: "mqtt://127.0.0.1"}}
devices:
  - name: rack-01
    area: formation
    line: a
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    interval_ms: 100
    tags: [{{name: voltage, address: 0, type: uint16}}]
  - name: coater-01
    area: electrode
    line: a
    protocol: opcua
    endpoint: 'opc.tcp://127.0.0.1:{opcua_port}'
    namespace: 'urn:cellgate:simulators'
    interval_ms: 250
    tags: [{{name: line/speed, node: s=Coater01.Line.Speed, type: float}}]
"""


def cpu_s(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def servers() -> Iterator[tuple[AcceptAndClose, AcceptAndClose]]:
    modbus, opcua = AcceptAndClose(), AcceptAndClose()
    try:
        yield modbus, opcua
    finally:
        modbus.close()
        opcua.close()


def test_plcs_that_accept_and_close_are_retried_at_the_backoff_pace(
    servers: tuple[AcceptAndClose, AcceptAndClose], tmp_path: Path
) -> None:
    modbus, opcua = servers
    config = tmp_path / "storm.yaml"
    config.write_text(tagmap(modbus.port, opcua.port), encoding="utf-8")
    with Mosquitto() as broker:
        gateway = GatewayProcess(config=config, env={"CELLGATE_MQTT__URL": broker.url}, state_dir=tmp_path / "state")
        gateway.start()
        try:
            wait_until(lambda: modbus.connections >= 1 and opcua.connections >= 1, 30, "the first connects")
            lines_before, cpu_before = len(gateway.log_text().splitlines()), cpu_s(gateway.pid)
            modbus_before, opcua_before = modbus.connections, opcua.connections
            time.sleep(WATCH_S)
            assert gateway.running
            cpu_used = cpu_s(gateway.pid) - cpu_before
            lines = gateway.log_text().splitlines()[lines_before:]
            modbus_attempts, opcua_attempts = modbus.connections - modbus_before, opcua.connections - opcua_before
            events = [event.get("event") for event in gateway.events()]
        finally:
            assert gateway.stop() == 0
            gateway.close()
    assert 1 <= modbus_attempts <= MAX_ATTEMPTS, modbus_attempts
    assert 1 <= opcua_attempts <= MAX_ATTEMPTS, opcua_attempts
    assert cpu_used < MAX_CPU_S, cpu_used
    assert len(lines) <= MAX_LINES, "\n".join(lines)
    assert events.count("modbus_connect_failed") == 1
    assert events.count("opcua_connect_failed") == 1
