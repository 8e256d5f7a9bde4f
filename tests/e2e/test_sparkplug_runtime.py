"""Sparkplug B 3.0 end to end: a real ``cellgate run`` on the Modbus simulator, a real Mosquitto, and every message
decoded by Eclipse Tahu's sparkplug-payload (npm) and read as a host reads it (tests/interop/sparkplug_tahu.py).

Edge-node statements of Sparkplug 3.0 checked on the wire (besides those HostView checks on every message):
- tck-id-payloads-ndeath-will-message, -will-message-qos, -will-message-retain: the NDEATH is the MQTT will, QoS 1,
  not retained; the broker delivers it when the gateway is killed (kill -9).
- tck-id-topics-nbirth-bdseq-matching / tck-id-payloads-ndeath-bdseq: the NBIRTH's bdSeq is that of the will of the
  same CONNECT; bdSeq + 1 per CONNECT, across a broker restart and across restarts of the gateway (state dir).
- tck-id-payloads-nbirth-seq, tck-id-payloads-sequence-num-incrementing: NBIRTH seq 0, then +1 per message in the
  order the broker delivers them, replays included; a Rebirth starts a new run at 0.
- tck-id-payloads-dbirth-order / tck-id-principles-birth-certificates-order: NBIRTH, then the DBIRTHs, before any
  DDATA on every connection (first connect, after a broker restart, after a Rebirth).
- tck-id-payloads-nbirth-retain, -dbirth-retain: no Sparkplug message is retained.
- tck-id-operational-behavior-data-commands-rebirth-action: an NCMD ``Node Control/Rebirth`` = true brings NBIRTH and
  every DBIRTH again; tck-id-edge-subscribe-ncmd / -dcmd: both are subscribed, a DCMD write is refused (read-only).
- tck-id-operational-behavior-device-ddeath: DDEATH when the device's PLC stops answering, no DDATA until the DBIRTH
  that follows its return.
- tck-id-payloads-metric-historical: data spooled during a broker outage arrives after the new births with
  is_historical on every metric, numbered in the new seq run.
- tck-id-message-flow-edge-node-birth-publish-subscribe: with a primary host, no NBIRTH (and no data) before its
  STATE says online; the data of the wait is spooled and replayed as historical after the births.
- With both outputs: one connection, every sample in both encodings, the NDEATH is the will and the UNS JSON status
  says offline at a clean stop.
- A SIGHUP reload (tck-id-operational-behavior-device-ddeath, tck-id-payloads-dbirth-order,
  tck-id-payloads-alias-uniqueness): a removed device gets its DDEATH, an added one its DBIRTH, a device whose tags
  changed a DDEATH and then a DBIRTH with the new metric set (kept tags keep their alias and last value, new tags
  get aliases no metric of the node had), all in one seq run without an NBIRTH.
- The metrics endpoint (checked by promtool) counts the Rebirth and the refused write, and shows the bdSeq.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
import pytest

from tests.interop.sparkplug_tahu import TAHU_AVAILABLE, TAHU_MISSING, HostView, decode_stream, encode_command
from tests.support.gateway import GatewayProcess
from tests.support.mosquitto import Mosquitto, Received, Subscriber
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run

pytestmark = pytest.mark.skipif(not TAHU_AVAILABLE, reason=TAHU_MISSING)

GROUP = "Cells"
EDGE = "edge-sp-01"
DEVICES = ("stacker-01", "stacker-02")
DEADLINE_S = 30.0  # generous: other tests share the machine
PROMTOOL = shutil.which("promtool")
TAGS = """
      - {name: diagnostics/heartbeat, table: input, address: 600, type: uint32, description: PLC watchdog counter.}
      - {name: packml/state_current, table: input, address: 100, type: int32, min: 0, max: 17}
      - {name: packml/blocked, table: discrete, address: 0, type: bool}
      - {name: energy/active_energy, table: input, address: 302, type: float32, unit: kW.h, min: 0}
      - {name: recipe/name, table: input, address: 420, type: string, length: 20}
"""
CHANGED_TAGS = """
      - {name: diagnostics/heartbeat, table: input, address: 600, type: uint32, description: PLC watchdog counter.}
      - {name: packml/state_current, table: input, address: 100, type: int32, min: 0, max: 17}
      - {name: packml/blocked, table: discrete, address: 0, type: bool}
      - {name: energy/active_energy, table: input, address: 302, type: float32, unit: kW.h, min: 0}
      - {name: diagnostics/heartbeat_again, table: input, address: 600, type: uint32}
"""


def tag_map(
    path: Path,
    *,
    stacker_port: int,
    outputs: str,
    primary_host: str | None,
    devices_tags: dict[str, str] | None = None,
) -> Path:
    """Two devices on the stacker simulator (one Modbus connection), a few tags that change every second.
    ``devices_tags``: other devices (name -> tag list), on the same simulator."""
    devices = "".join(
        f"""
  - name: {name}
    area: cell-assembly
    line: line-1
    protocol: modbus
    host: 127.0.0.1
    port: {stacker_port}
    unit_id: 1
    interval_ms: 500
    timeout_ms: 500
    tags:{tags}"""
        for name, tags in (devices_tags or dict.fromkeys(DEVICES, TAGS)).items()
    )
    path.write_text(
        f"""gateway:
  id: {EDGE}
  enterprise: acme
  site: dunkirk
  outputs: {outputs}
  sparkplug: {{group_id: {GROUP}{f", primary_host: {primary_host}" if primary_host else ""}}}
mqtt:
  url: mqtt://127.0.0.1:1883
  qos: 1
  keepalive_s: 5
  reconnect_max_s: 1
devices:{devices}
""",
        encoding="utf-8",
    )
    return path


@dataclass
class Rig:
    broker: Mosquitto
    sparkplug: Subscriber
    sim: SimulatorProcess
    modbus_port: int
    config: Path
    tmp_path: Path

    http_port: int = 0  # the port the last gateway's listener bound (it picks a free one itself: no race)

    def gateway(self) -> GatewayProcess:
        gateway = GatewayProcess(
            config=self.config,
            env={"CELLGATE_MQTT__URL": self.broker.url, "CELLGATE_HTTP__LISTEN": "127.0.0.1:0"},
            state_dir=self.tmp_path / "state",
        )
        gateway.start()
        self.http_port = int(str(gateway.wait_for_event("http_listening", 60)["listen"]).rsplit(":", 1)[1])
        return gateway

    def scrape(self) -> str:
        """/metrics, checked by promtool."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as answer:
            body: bytes = answer.read()
        assert PROMTOOL is not None
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        return body.decode()

    def view(self) -> HostView:
        """The stream so far as a host reads it (asserting every rule on the way)."""
        return read_stream(self.sparkplug.messages)

    def wait(self, what: str, **at_least: int) -> HostView:
        """Wait until the stream has at least so many messages of each kind (``NBIRTH=2``, ``DDATA=4`` per device,
        counted by topic), then read it all as a host (Tahu decodes: once, not at every poll)."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            counts = kinds(self.sparkplug.messages)
            if all(counts.get(kind, 0) >= least for kind, least in at_least.items()):
                return self.view()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {counts}")
            time.sleep(0.1)

    def wait_historical(self, at_least: int) -> HostView:
        """Wait for replayed (historical) DDATA: they come after the births and the live data that is ready first."""
        deadline = time.monotonic() + DEADLINE_S
        while True:
            view = self.view()
            if view.historical >= at_least:
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {at_least} historical DDATA: {view}")
            time.sleep(0.5)

    def count(self, kind: str) -> int:
        return kinds(self.sparkplug.messages).get(kind, 0)


    def command(self, topic: str, metrics: list[dict[str, object]]) -> None:
        mqtt_publish.single(topic, encode_command(metrics), qos=1, hostname=self.broker.host, port=self.broker.port)


def kinds(messages: list[Received]) -> dict[str, int]:
    """Messages per kind: NBIRTH, NDEATH, and DBIRTH/DDATA/DDEATH per device (``DDATA:stacker-01``, the fewest
    of any device under ``DDATA``)."""
    counts: dict[str, int] = {}
    for message in messages:
        parts = message.topic.split("/")
        if len(parts) < 4 or parts[0] != "spBv1.0":
            continue
        key = parts[2] if len(parts) == 4 else f"{parts[2]}:{parts[4]}"
        counts[key] = counts.get(key, 0) + 1
    for kind in ("DBIRTH", "DDATA", "DDEATH"):
        counts[kind] = min(counts.get(f"{kind}:{device}", 0) for device in DEVICES)
    return counts


def read_stream(messages: list[Received]) -> HostView:
    """The host's view; a QoS 1 message the broker delivers twice (its persistent session across a broker restart)
    is read once: byte for byte the same, while two messages of the node always differ (seq, timestamps)."""
    seen: set[tuple[str, bytes]] = set()
    spb: list[Received] = []
    for m in messages:
        if m.topic.startswith(f"spBv1.0/{GROUP}/") and (m.topic, m.payload) not in seen:
            seen.add((m.topic, m.payload))
            spb.append(m)
    assert not [m.topic for m in spb if m.retain], "a Sparkplug message was retained"
    assert all(m.qos == 1 for m in spb if "/NDEATH/" in m.topic), "an NDEATH (the will) not at QoS 1"
    view = HostView(node_topic=f"spBv1.0/{GROUP}/{{}}/{EDGE}")
    decoded = decode_stream((m.topic, m.payload) for m in spb)
    for index, (topic, payload) in enumerate(decoded):
        if "/NCMD/" in topic or "/DCMD/" in topic:
            continue  # the test's own commands
        try:
            view.read(topic, payload)
        except AssertionError as error:
            context = [(t.split("/", 2)[2], p.get("seq")) for t, p in decoded[max(0, index - 8) : index + 3]]
            raise AssertionError(f"{error}; around it: {context}") from None
    return view


@contextlib.contextmanager
def rig(
    tmp_path: Path, *, outputs: str = "[sparkplug]", persistent: bool = False, primary_host: str | None = None
) -> Iterator[Rig]:
    modbus_port = free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET)
    sim = SimulatorProcess(only="modbus", modbus_port=modbus_port)
    sim.start()
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(persistence=persistent, workdir=tmp_path / "broker")
    line: Rig | None = None
    try:
        broker.start()
        # A persistent session: what the gateway publishes while the subscriber is away (broker restart) waits for it.
        sparkplug = Subscriber(broker.host, broker.port, "spBv1.0/#", client_id=f"host-{os.getpid()}", session=True)
        sparkplug.start()
        if persistent:
            time.sleep(1.5)  # autosave_interval 1: the session is on disk before the broker restarts
        config = tag_map(
            tmp_path / "map.yaml", stacker_port=modbus_port + 2, outputs=outputs, primary_host=primary_host
        )
        line = Rig(broker, sparkplug, sim, modbus_port, config, tmp_path)
        yield line
        sparkplug.stop()
    finally:
        broker.close()
        sim.close()
        if line is not None:
            line.sim.close()  # a test may have replaced it with a restarted simulator


def test_both_outputs_births_rebirth_refused_writes_a_device_dying_and_the_clean_stop(tmp_path: Path) -> None:
    with rig(tmp_path, outputs="[uns-json, sparkplug]") as line:
        uns = Subscriber(line.broker.host, line.broker.port, "acme/dunkirk/#")
        uns.start()
        gateway = line.gateway()
        try:
            view = line.wait("births and data", NBIRTH=1, DBIRTH=1, DDATA=1)
            assert view.nbirths == [0]  # a fresh state dir: the first CONNECT is bdSeq 0
            assert set(view.dbirths) == set(DEVICES)

            # Both encodings on one connection: every sample in each (the UNS JSON heartbeats are DDATA values too).
            heartbeat_topic = "acme/dunkirk/cell-assembly/line-1/stacker-01/diagnostics/heartbeat"
            uns.wait_for_blocking(lambda ms: len([m for m in ms if m.topic == heartbeat_topic]) >= 2, DEADLINE_S)
            status_topic = f"acme/dunkirk/_gateway/{EDGE}/status"
            assert json.loads(uns.on(status_topic)[-1].payload)["online"] is True
            view = line.view()
            uns_values = {float(json.loads(m.payload)["value"]) for m in uns.on(heartbeat_topic)}
            assert uns_values & {float(v) for v in view.values["stacker-01/diagnostics/heartbeat"]}
            assert len([e for e in gateway.events() if e.get("event") == "mqtt_connected"]) == 1
            data = line.count("DDATA")

            # A host asks for a Rebirth (Tahu encodes the NCMD) and tries to write (refused: read-only).
            rebirth = {"name": "Node Control/Rebirth", "type": "Boolean", "value": True}
            write = {"name": "recipe/name", "type": "String", "value": "X"}
            line.command(f"spBv1.0/{GROUP}/NCMD/{EDGE}", [rebirth])
            line.command(f"spBv1.0/{GROUP}/DCMD/{EDGE}/stacker-01", [write])
            view = line.wait("the rebirth", NBIRTH=2, DBIRTH=2, DDATA=data + 1)
            assert view.nbirths == [0, 0]  # same connection, same bdSeq
            refused = gateway.wait_for_event("sparkplug_command_refused", DEADLINE_S)
            assert refused["metrics"] == ["recipe/name"] and refused["reason"] == "read_only"
            gateway.wait_for_event("sparkplug_rebirth", DEADLINE_S)
            with urllib.request.urlopen(f"http://127.0.0.1:{line.http_port}/", timeout=5) as answer:
                page = answer.read().decode()  # the status page says it too
            assert '<dd id="sparkplug">bdSeq 0, 1 rebirths, 1 writes refused, 0 malformed commands</dd>' in page
            if PROMTOOL is not None:  # the counts reach the metrics endpoint
                text = line.scrape()
                assert 'cellgate_sparkplug_commands_total{result="refused"} 1.0' in text
                assert 'cellgate_sparkplug_commands_total{result="rebirth"} 1.0' in text
                assert 'cellgate_sparkplug_commands_total{result="malformed"} 0.0' in text
                assert "cellgate_sparkplug_rebirths_total 1.0" in text
                assert 'cellgate_sparkplug_dropped_total{reason="ddeath_not_born"} 0.0' in text
                assert "cellgate_sparkplug_bdseq 0.0" in text

            # The PLC stops answering: DDEATH, and no DDATA of a dead device (HostView fails on one).
            line.sim.stop()
            view = line.wait("DDEATH", DDEATH=1)
            assert not view.born
            line.sim = SimulatorProcess(only="modbus", modbus_port=line.modbus_port)
            line.sim.start()
            data = line.count("DDATA")
            view = line.wait("DBIRTH after the PLC came back", DBIRTH=3, DDATA=data + 1)
            assert view.born == set(DEVICES)

            # A clean stop publishes the NDEATH of the connection's bdSeq (the will) and the UNS JSON offline status.
            gateway.stop()
            assert gateway.returncode == 0
            assert line.wait("the NDEATH of the clean stop", NDEATH=1).ndeaths == [0]
            uns.wait_for_blocking(
                lambda ms: any(m.topic == status_topic and not json.loads(m.payload)["online"] for m in ms), DEADLINE_S
            )
        finally:
            gateway.close()
            uns.stop()


def test_primary_host_broker_restart_replays_historical_data_and_bdseq_counts_on_across_runs_and_kill(
    tmp_path: Path,
) -> None:
    with rig(tmp_path, persistent=True, primary_host="scada") as line:
        gateway = line.gateway()
        try:
            # A primary host is configured: connected, the gateway publishes nothing until its STATE says online
            # (tck-id-message-flow-edge-node-birth-publish-subscribe); meanwhile the data goes to the spool.
            gateway.wait_for_event("mqtt_connected", DEADLINE_S)
            time.sleep(1.5)
            assert line.count("NBIRTH") == 0 and line.count("DDATA") == 0
            state = json.dumps({"online": True, "timestamp": int(time.time() * 1000)})
            mqtt_publish.single(
                "spBv1.0/STATE/scada", state, qos=1, retain=True, hostname=line.broker.host, port=line.broker.port
            )
            line.wait("births and data", NBIRTH=1, DBIRTH=1, DDATA=1)
            view = line.wait_historical(1)  # what waited in the spool, after the births
            assert view.nbirths == [0]
            data = line.count("DDATA")
            # The broker goes away for a while: the gateway spools, reconnects with the next bdSeq, births first,
            # then the spooled data as historical, numbered in the new run.
            line.broker.restart(down_s=1.5)
            line.wait("births after the restart", NBIRTH=2, DBIRTH=2, DDATA=data + 2)
            view = line.wait_historical(view.historical + 1)
            assert view.nbirths[:2] == [0, 1]
            bd_seq_file = tmp_path / "state" / "sparkplug-bdseq"
            assert bd_seq_file.read_text().strip() == "1"
            deaths = line.count("NDEATH")  # the broker may send the will when it stops
            gateway.stop()
            view = line.wait("the NDEATH of the clean stop", NDEATH=deaths + 1)
            assert view.ndeaths[-1:] == [1]
        finally:
            gateway.close()

        # A new run continues the count from the state dir; killed, the broker sends its will.
        gateway = line.gateway()
        try:
            view = line.wait("births of the second run", NBIRTH=3)
            assert view.nbirths[-1] == 2
            os.kill(gateway.pid, signal.SIGKILL)
            view = line.wait("the will", NDEATH=deaths + 2)
            assert view.ndeaths[-2:] == [1, 2]
            assert view.born == set()
        finally:
            gateway.close()


def test_a_reload_kills_removed_and_changed_devices_and_births_added_and_changed_ones(tmp_path: Path) -> None:
    with rig(tmp_path) as line:
        gateway = line.gateway()
        try:
            view = line.wait("births and data", NBIRTH=1, DBIRTH=1, DDATA=1)
            aliases_before = {name: alias for alias, name in view.aliases.items()}
            # stacker-01 loses recipe/name and gains a tag, stacker-02 goes, stacker-03 comes.
            tag_map(
                line.config,
                stacker_port=line.modbus_port + 2,
                outputs="[sparkplug]",
                primary_host=None,
                devices_tags={"stacker-01": CHANGED_TAGS, "stacker-03": TAGS},
            )
            gateway.send_signal(signal.SIGHUP)
            applied = gateway.wait_for_event("reload_applied", DEADLINE_S)
            assert (applied["added"], applied["removed"], applied["changed"]) == (
                ["stacker-03"], ["stacker-02"], ["stacker-01"],
            )
            counts = kinds(line.sparkplug.messages)
            data_01 = counts["DDATA:stacker-01"]
            deadline = time.monotonic() + DEADLINE_S
            while True:
                counts = kinds(line.sparkplug.messages)
                if (
                    counts.get("DBIRTH:stacker-03", 0) >= 1
                    and counts.get("DBIRTH:stacker-01", 0) >= 2
                    and counts.get("DDATA:stacker-01", 0) > data_01 + 1
                    and counts.get("DDATA:stacker-03", 0) >= 1
                ):
                    break
                assert time.monotonic() < deadline, f"timed out waiting for the births after the reload: {counts}"
                time.sleep(0.1)
            view = line.view()  # every rule on the whole stream, aliases unique per edge node included
            assert view.nbirths == [0]  # no NBIRTH: device births and deaths only
            # stacker-01 is dead while its source restarts (once, unless a slow machine made its PLC link drop too).
            assert view.ddeaths["stacker-02"] == 1 and view.ddeaths["stacker-01"] >= 1
            assert view.born == {"stacker-01", "stacker-03"}
            names = {name: alias for alias, name in view.aliases.items()}
            assert "stacker-01/diagnostics/heartbeat_again" in names
            # Kept tags keep their alias; the new tag and the new device's tags have aliases nobody had.
            assert names["stacker-01/diagnostics/heartbeat"] == aliases_before["stacker-01/diagnostics/heartbeat"]
            new_aliases = {
                alias for name, alias in names.items()
                if name.startswith("stacker-03/") or name == "stacker-01/diagnostics/heartbeat_again"
            }
            assert not new_aliases & set(aliases_before.values())
            birth_topic = f"spBv1.0/{GROUP}/DBIRTH/{EDGE}/stacker-01"
            decoded = decode_stream((m.topic, m.payload) for m in line.sparkplug.messages if m.topic == birth_topic)
            first, second = decoded[0][1], decoded[-1][1]
            assert "recipe/name" in {m["name"] for m in first["metrics"]}
            assert {m["name"] for m in second["metrics"]} == {
                "diagnostics/heartbeat", "packml/state_current", "packml/blocked", "energy/active_energy",
                "diagnostics/heartbeat_again",
            }
            gateway.stop()
            assert gateway.returncode == 0
        finally:
            gateway.close()
