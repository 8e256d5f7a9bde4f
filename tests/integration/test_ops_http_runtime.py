"""The runtime's operations listener in-process with Mosquitto: a token file guards it, /readyz says 503 while no
device is up, and an unreadable token file means no listener at all (fail closed) while the gateway runs on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path

from gateway.runtime import Gateway
from gateway.tagmap import load_plant_from_text
from tests.support.modbus import free_tcp_port
from tests.support.mosquitto import Mosquitto
from tests.support.waiting import wait_until_async

TAGMAP = """
gateway: {{id: gw-ops, enterprise: {enterprise}, site: s1}}
mqtt: {{url: "mqtt://127.0.0.1:{broker_port}"}}
http: {{listen: "127.0.0.1:{http_port}", token_file: "{token_file}"}}
devices:
  - name: rack
    area: formation
    line: l1
    protocol: modbus
    host: 127.0.0.1
    port: {modbus_port}
    unit_id: 1
    interval_ms: 100
    tags:
      - {{name: voltage, address: 0, type: float32, unit: V}}
"""


async def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\n{auth}\r\n".encode())
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def run_gateway(
    tmp_path: Path, token_file: Path, http_port: int, broker_port: int
) -> tuple[Gateway, asyncio.Event, asyncio.Task[None]]:
    plant = load_plant_from_text(
        TAGMAP.format(
            enterprise=f"ops{uuid.uuid4().hex[:8]}", broker_port=broker_port, http_port=http_port,
            token_file=token_file, modbus_port=free_tcp_port(),  # nothing listens there: the rack stays down
        ),
        filename="ops.yaml",
        environ={},
    )  # fmt: skip
    gateway = Gateway(plant, state_dir=tmp_path / "state")
    stop = asyncio.Event()
    return gateway, stop, asyncio.create_task(gateway.run(stop))


async def answers(port: int) -> bool:
    with contextlib.suppress(OSError):
        await get(port, "/healthz")
        return True
    return False


async def test_token_guards_the_listener_and_readyz_is_503_without_a_device_up(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t0ken-for-tests\n")
    http_port = free_tcp_port()
    with Mosquitto() as broker:
        _, stop, task = await run_gateway(tmp_path, token_file, http_port, broker.port)
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while not await answers(http_port):
                assert asyncio.get_running_loop().time() < deadline, "the listener never answered"
                await asyncio.sleep(0.05)
            assert (await get(http_port, "/healthz"))[0] == 401
            assert (await get(http_port, "/metrics", "wrong"))[0] == 401
            assert (await get(http_port, "/healthz", "t0ken-for-tests"))[0] == 200
            code, body = await get(http_port, "/readyz", "t0ken-for-tests")
            answer = json.loads(body)
            assert (code, answer["status"], answer["checks"]["device_up"]) == (503, "not ready", False)
            assert answer["checks"]["map_loaded"] is True
        finally:
            stop.set()
            await task


async def test_an_unreadable_token_file_means_no_listener_and_the_gateway_runs_on(tmp_path: Path) -> None:
    http_port = free_tcp_port()
    with Mosquitto() as broker:
        gateway, stop, task = await run_gateway(tmp_path, tmp_path / "missing-token", http_port, broker.port)
        try:
            await wait_until_async(lambda: gateway.counters.messages_queued > 0, 20, "the gateway publishing")
            assert not task.done()
            assert not await answers(http_port)
        finally:
            stop.set()
            await task
