"""``cellgate browse`` through a server that stops answering for a few seconds (busy, not gone).

A browse of a large address space keeps the server (and the client decoding the answers) busy; on a loaded machine
an answer can take seconds. The browse's requests wait up to ``--timeout``; the client's own health probe of the
server, which asyncua sends beside them, must get as long, or the session is dropped in the middle of the walk
(``ConnectionError: client is disconnected``) although every request would have been answered in time.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import yaml

from simulators.machines.coater import Coater
from simulators.servers.opcua_server import OpcUaSimulatorServer
from tests.support.flaky_links import stalling_proxy
from tests.support.sim import REPO_ROOT

STALL_S = 3.0  # longer than asyncua's default probe timeout (1 s), well within the browse's --timeout
TIMEOUT_S = 15.0


async def test_browse_waits_out_a_server_that_is_busy_for_a_few_seconds(tmp_path: Path) -> None:
    output = tmp_path / "coater.yaml"
    coater = Coater(rng=random.Random(3))
    async with OpcUaSimulatorServer(machines={"Coater01": coater}, port=0, autostep=False) as server:  # noqa: SIM117
        # 3 answers: CreateSession, ActivateSession and the browse's first request; the walk stalls after them.
        async with stalling_proxy(server.port, after_messages=3, stall_s=STALL_S) as proxy:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "browse", f"opc.tcp://127.0.0.1:{proxy.port}",
                "--timeout", str(TIMEOUT_S), "-o", str(output),
                cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    assert proxy.connections == 1  # one session, not a reconnect
    document = yaml.safe_load(output.read_text(encoding="utf-8"))
    [device] = document["devices"]
    assert device["namespace"] == "urn:cellgate:simulators"
