"""Gateway.reload in-process on real parts: added, removed and unchanged devices (pymodbus -> Mosquitto)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import orjson

from gateway.runtime import Gateway
from gateway.tagmap import Plant, load_plant_from_text
from tests.support.modbus import free_tcp_port, sim_device, tcp_server
from tests.support.mosquitto import Mosquitto, Subscriber, retained_snapshot
from tests.support.waiting import wait_until_async

HEAD = """
gateway: {{id: gw-reload, enterprise: {enterprise}, site: s1}}
mqtt: {{url: "mqtt://127.0.0.1:{broker_port}"}}
devices:
"""
DEVICE = """
  - name: {name}
    area: a
    line: l
    protocol: modbus
    host: 127.0.0.1
    port: {port}
    unit_id: {unit_id}
    interval_ms: 100
    tags: [{{name: v, address: 0, type: uint16}}]
"""


async def test_reload_adds_and_removes_devices_and_keeps_the_others_running(tmp_path: Path) -> None:
    enterprise = f"rl{uuid.uuid4().hex[:8]}"
    port_a, port_b = free_tcp_port(), free_tcp_port()

    def plant(*devices: tuple[str, int, int]) -> Plant:
        text = HEAD.format(enterprise=enterprise, broker_port=broker.port) + "".join(
            DEVICE.format(name=name, port=port, unit_id=unit_id) for name, port, unit_id in devices
        )
        return load_plant_from_text(text, environ={})

    prefix = f"{enterprise}/s1/a/l"
    with Mosquitto() as broker, Subscriber(broker.host, broker.port, f"{enterprise}/#") as subscriber:
        async with tcp_server([sim_device(1)], port_a), tcp_server([sim_device(1), sim_device(2)], port_b):
            first = plant(("keep", port_a, 1), ("gone", port_b, 1))
            gateway = Gateway(first, state_dir=tmp_path)
            stop = asyncio.Event()
            running = asyncio.create_task(gateway.run(stop))
            try:
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/gone/v")) >= 2, 15)
                kept_task = next(task for name, task in gateway.source_tasks.items() if str(port_a) in name)

                gateway.reload(plant(("keep", port_a, 1), ("new", port_b, 2)))
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/new/v")) >= 2, 15)
                await wait_until_async(lambda: gateway.counters.reloads == 1, 5)
                # The unchanged device's task was not touched; the removed one's retained topics are gone.
                assert not kept_task.done()
                assert next(task for name, task in gateway.source_tasks.items() if str(port_a) in name) is kept_task
                gone_status = f"{prefix}/gone/_status"
                await wait_until_async(lambda: any(m.payload == b"" for m in subscriber.on(gone_status)), 5)
                retained = await retained_snapshot(broker.host, broker.port, f"{enterprise}/#")
                assert f"{prefix}/gone/_status" not in retained
                assert f"{prefix}/gone/_meta" not in retained
                assert orjson.loads(retained[f"{prefix}/new/_status"])["connected"] is True
                count = len(subscriber.on(f"{prefix}/keep/v"))
                await wait_until_async(lambda: len(subscriber.on(f"{prefix}/keep/v")) > count, 5)
            finally:
                stop.set()
                await asyncio.wait_for(running, 20)
