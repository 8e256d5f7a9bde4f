"""Sparkplug DDATA of a device that cannot be born is kept as a dead letter, never sent and never lost, against a real
Mosquitto, every message the host gets decoded by Eclipse Tahu and read as a host does (tests/interop/sparkplug_tahu.py
HostView), the dead letters decoded by Tahu too.

A device whose DBIRTH is over the maximum packet size cannot be born on the wire: its DBIRTH is refused (a dead
letter, ``packet_too_large``), and its DDATA, live or replayed from the spool, is refused with reason
``sparkplug_not_born`` (tck-id-payloads-dbirth-order: a host never sees DDATA of a device not born): into the spool's
dead-letter table with its values, historical and without ``seq``, counted by reason (the counts behind
``cellgate_messages_failed_total{reason}``), logged once per device and episode, its window slot freed at once, no
``seq`` taken (tck-id-payloads-sequence-num-incrementing), while the other device's data flows on. The same through
a real ``cellgate run`` on the Modbus simulator: the metrics endpoint, ``cellgate spool dead-letters`` and the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from gateway.schema import TagMeta
from gateway.sparkplug_session import NOT_BORN
from tests.interop.sparkplug_tahu import TAHU_AVAILABLE, TAHU_MISSING, HostView, decode_stream
from tests.support.gateway import REPO_ROOT, GatewayProcess
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run
from tests.support.sparkplug_edge import edge_node

pytestmark = pytest.mark.skipif(not TAHU_AVAILABLE, reason=TAHU_MISSING)

DEADLINE_S = 20.0  # generous: other tests share the machine
MAX_PACKET_SIZE = 1000
TAG = "temperature_zone_000"


def zones(tags: int) -> list[TagMeta]:
    """A catalogue of float tags: the DBIRTH grows with them, a DDATA of the first does not."""
    return [TagMeta(tag=f"temperature_zone_{i:03d}", type="float32") for i in range(tags)]


def dead_letters(path: Path) -> list[tuple[str, bytes, str]]:
    """The dead-letter table (``cellgate spool dead-letters`` counts it), read as another process would."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT topic, payload, reason FROM dead_letter ORDER BY id")
        return [(topic, bytes(payload), reason) for topic, payload, reason in rows]


async def test_ddata_of_a_device_whose_dbirth_is_too_large_is_kept_as_a_dead_letter_and_never_reaches_the_host(
    tmp_path: Path,
) -> None:
    with Mosquitto() as broker, structlog.testing.capture_logs() as logs:
        host = Subscriber(broker.host, broker.port, "spBv1.0/#")
        host.start()
        try:
            catalogues = {"small": zones(1), "big": zones(80)}
            async with edge_node(broker, tmp_path, catalogues=catalogues, max_packet_size=MAX_PACKET_SIZE) as edge:
                assert len(edge.devices["big"].birth(time.time()).payload) > MAX_PACKET_SIZE
                await edge.sink.wait_connected(10)
                # Live data of both: big's is refused at its hand-over, small's goes on (the window is not blocked).
                for value in (1.0, 2.0):
                    await edge.forwarder.forward(edge.ddata("big", value) + edge.ddata("small", value))
                # A replay from the spool: its row moves to the dead letters, not acknowledged away.
                await edge.forwarder.store(edge.ddata("big", 3.0))
                deadline = time.monotonic() + DEADLINE_S
                while edge.spool.count:
                    assert time.monotonic() < deadline, edge.spool.count
                    await asyncio.sleep(0.05)
                await edge.forwarder.forward(edge.ddata("small", 3.0))
                messages = await host.wait_for(lambda ms: sum("/DDATA/" in m.topic for m in ms) == 3, DEADLINE_S)
                while edge.spool.dead_letter_counts() != {"packet_too_large": 1, NOT_BORN: 3}:  # at the next flush
                    assert time.monotonic() < deadline, edge.spool.dead_letter_counts()
                    await asyncio.sleep(0.1)
                assert edge.forwarder.refused_by_reason == {"packet_too_large": 1, NOT_BORN: 3}
                assert edge.sink.refused_by_reason == {"packet_too_large": 1, NOT_BORN: 3}
                assert edge.session.ddata_refused == 3
                assert edge.session.replay_births == 0  # the DBIRTH that cannot go is not tried for each DDATA
                assert edge.session.dropped == {"ddeath_not_born": 0}
                # The host may see the last DDATA before its PUBACK reaches the sink: wait for the PUBACKs.
                assert await edge.sink.flush(DEADLINE_S)
                assert edge.sink.unacked() == []
                await asyncio.sleep(0.3)  # anything wrongly sent after the last DDATA would show now
                messages = host.messages
        finally:
            host.stop()
        letters = dead_letters(tmp_path / "spool.db")

    # (2) The host never saw the device: no DBIRTH, no DDATA; (3) the other device's data flowed, seq +1 throughout
    # (the refused DDATA took no number).
    assert not [m.topic for m in messages if m.topic.endswith("/big")]
    view = HostView(node_topic="spBv1.0/G/{}/edge-1")
    decoded = decode_stream((m.topic, m.payload) for m in messages)
    for topic, payload in decoded:
        view.read(topic, payload)
    assert [topic.split("/", 2)[2] for topic, _ in decoded] == [
        "NBIRTH/edge-1", "DBIRTH/edge-1/small", "DDATA/edge-1/small", "DDATA/edge-1/small", "DDATA/edge-1/small"
    ]
    assert [payload["seq"] for _, payload in decoded] == [0, 1, 2, 3, 4]
    assert view.values[f"small/{TAG}"] == [1.0, 2.0, 3.0]

    # (1) Kept: the refused DBIRTH, then every DDATA of big with reason sparkplug_not_born and its value, historical
    # and without seq, as `cellgate spool requeue` would replay it once the device can be born.
    assert [(topic.split("/", 2)[2], reason) for topic, _, reason in letters] == [
        ("DBIRTH/edge-1/big", "packet_too_large"), *[("DDATA/edge-1/big", NOT_BORN)] * 3
    ]
    kept = decode_stream((topic, payload) for topic, payload, _ in letters)  # the DBIRTH teaches Tahu the aliases
    aliases = {metric["alias"]: metric["name"] for metric in kept[0][1]["metrics"]}
    data: list[dict[str, Any]] = [payload for _, payload in kept[1:]]
    assert [[(aliases[m["alias"]], m["value"], m.get("isHistorical")) for m in p["metrics"]] for p in data] == [
        [(TAG, 1.0, True)], [(TAG, 2.0, True)], [(TAG, 3.0, True)]
    ]
    assert all(p.get("seq") is None for p in data)

    # (4) Logged once for the device in this session (not per message), and the refusal once per reason.
    refused_logs = [e for e in logs if e["event"] == "sparkplug_ddata_refused"]
    assert [(e["device"], e["reason"], e["cause"]) for e in refused_logs] == [("big", NOT_BORN, "dbirth_not_sent")]
    mqtt_logs = [(e["reason"], e["dead_letter"]) for e in logs if e["event"] == "mqtt_message_refused"]
    assert mqtt_logs == [("packet_too_large", True), (NOT_BORN, True)]


def runtime_tag_map(path: Path, *, stacker_port: int) -> Path:
    """Two devices on the stacker simulator: ``small`` (the heartbeat), and ``big``, the heartbeat 40 times with long
    names and descriptions, so its DBIRTH is over ``mqtt.max_packet_size`` while its DDATA (aliases only) is not."""
    copies = "".join(
        f"""
      - {{name: diagnostics/heartbeat_copy_{i:02d}_of_the_plc_watchdog, table: input, address: 600, type: uint32,
         description: A copy of the PLC watchdog counter that makes the DBIRTH larger than the broker takes.}}"""
        for i in range(40)
    )
    device = """
  - name: {name}
    area: cell-assembly
    line: line-1
    protocol: modbus
    host: 127.0.0.1
    port: {port}
    unit_id: 1
    interval_ms: 300
    timeout_ms: 3000
    tags:{tags}"""
    heartbeat = "\n      - {name: diagnostics/heartbeat, table: input, address: 600, type: uint32}"
    devices = device.format(name="small", port=stacker_port, tags=heartbeat)
    devices += device.format(name="big", port=stacker_port, tags=copies)
    path.write_text(
        f"""gateway:
  id: edge-unborn
  enterprise: acme
  site: dunkirk
  outputs: [sparkplug]
  sparkplug: {{group_id: Cells}}
mqtt:
  url: mqtt://127.0.0.1:1883
  qos: 1
  max_packet_size: 2048
devices:{devices}
""",
        encoding="utf-8",
    )
    return path


def test_cellgate_run_keeps_ddata_of_a_device_that_cannot_be_born_counts_it_and_logs_it_once(tmp_path: Path) -> None:
    modbus_port = free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET)
    config = runtime_tag_map(tmp_path / "map.yaml", stacker_port=modbus_port + 2)
    with SimulatorProcess(only="modbus", modbus_port=modbus_port), Mosquitto() as broker:
        host = Subscriber(broker.host, broker.port, "spBv1.0/#")
        host.start()
        state_dir = tmp_path / "state"
        gateway = GatewayProcess(config=config, env={"CELLGATE_MQTT__URL": broker.url}, state_dir=state_dir)
        gateway.start()
        try:
            http_port = int(str(gateway.wait_for_event("http_listening", 60)["listen"]).rsplit(":", 1)[1])
            host.wait_for_blocking(  # what the end asserts: four DDATA of small (its births come on top)
                lambda ms: sum("/DDATA/" in m.topic and m.topic.endswith("/small") for m in ms) >= 4, DEADLINE_S
            )
            deadline = time.monotonic() + DEADLINE_S
            while True:  # the refusals reach the spool at its next acknowledgement flush
                listing = subprocess.run(
                    [sys.executable, "-m", "gateway.cli", "spool", "dead-letters", "--state-dir", str(state_dir)],
                    cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
                ).stdout  # fmt: skip
                counts = dict(line.split("\t") for line in listing.splitlines() if "\t" in line)
                if int(counts.get(NOT_BORN, 0)) >= 2:
                    break
                assert time.monotonic() < deadline, listing
                time.sleep(0.2)
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as answer:
                metrics = answer.read().decode()
            events = gateway.events()
            messages = host.messages
        finally:
            gateway.stop()
            gateway.close()
            host.stop()

    # big's DBIRTH, once per occasion to be born (the first poll, a link back up, a reconnect or a Rebirth; on a
    # loaded machine a poll can time out), not tried again for each of its DDATA
    births = 1 + sum(
        1 for e in events
        if (e.get("event") == "modbus_link_up" and e.get("device") == "big" and "down_s" in e)
        or e.get("event") == "sparkplug_rebirth"
    ) + sum(1 for e in events if e.get("event") == "mqtt_connected") - 1  # fmt: skip
    assert counts["packet_too_large"] == str(births), (births, events)
    failed = [line for line in metrics.splitlines() if line.startswith("cellgate_messages_failed_total{")]
    not_born = [float(line.rsplit(" ", 1)[1]) for line in failed if f'reason="{NOT_BORN}"' in line]
    assert not_born and not_born[0] >= 2, failed
    assert not [line for line in metrics.splitlines() if "ddata_not_born" in line]
    refused = [e for e in events if e.get("event") == "sparkplug_ddata_refused"]
    # once per episode (at most one per DBIRTH tried), not per poll
    assert {(e["device"], e["cause"]) for e in refused} == {("big", "dbirth_not_sent")}
    assert len(refused) <= births
    # The host: births and data of small only, seq +1 throughout.
    assert not [m.topic for m in messages if m.topic.endswith("/big")]
    view = HostView(node_topic="spBv1.0/Cells/{}/edge-unborn")
    for topic, payload in decode_stream((m.topic, m.payload) for m in messages):
        view.read(topic, payload)
    assert view.born == {"small"}
    assert view.ddata["small"] >= 4
