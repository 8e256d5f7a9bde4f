"""``cellgate run`` speaks sd_notify to a NOTIFY_SOCKET: READY, WATCHDOG, STATUS, RELOADING, STOPPING."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.support.gateway import GatewayProcess
from tests.support.modbus import free_tcp_port
from tests.support.mosquitto import Mosquitto
from tests.support.systemd import NotifyListener

TAGMAP = """
gateway: {{id: gw-notify, enterprise: notify, site: s1}}
mqtt: {{url: "{broker_url}"}}
devices:
  - name: rack
    area: formation
    line: l1
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    interval_ms: 200
    tags: [{{name: voltage, address: 0, type: float32, unit: V}}]
"""


def collect(listener: NotifyListener, until: float) -> list[bytes]:
    out: list[bytes] = []
    while time.monotonic() < until:
        out += listener.pending()
        time.sleep(0.1)
    return out + listener.pending()


def test_ready_watchdog_reload_and_stopping(tmp_path: Path) -> None:
    config = tmp_path / "map.yaml"
    with Mosquitto() as broker, NotifyListener() as listener:
        # No PLC at that port: the rack stays bad, but the gateway itself is healthy and publishing.
        config.write_text(TAGMAP.format(broker_url=broker.url, modbus_port=free_tcp_port()), encoding="utf-8")
        gateway = GatewayProcess(
            config=config,
            env={**listener.environ, "WATCHDOG_USEC": "2000000"},  # systemd's WatchdogSec=2: ping every 1 s
            state_dir=tmp_path / "state",
        )
        gateway.start()
        try:
            first = listener.receive()
            assert first.startswith(b"READY=1"), first
            assert b"STATUS=devices 0/1 connected, broker connected" in first
            received = collect(listener, time.monotonic() + 3.5)
            pings = [m for m in received if m == b"WATCHDOG=1"]
            assert 2 <= len(pings) <= 6, received  # about one per second
            assert any(m.startswith(b"STATUS=") for m in received)

            gateway.send_signal(signal.SIGHUP)
            received = collect(listener, time.monotonic() + 3)
            reloading = [m for m in received if m.startswith(b"RELOADING=1")]
            assert reloading and b"\nMONOTONIC_USEC=" in reloading[0], received
            after = received[received.index(reloading[0]) + 1 :]
            assert any(m.startswith(b"READY=1") for m in after), received

            gateway.send_signal(signal.SIGTERM)
            received = collect(listener, time.monotonic() + 2)
            assert any(m.startswith(b"STOPPING=1") for m in received), received
            assert gateway.stop() == 0
        finally:
            gateway.close()
