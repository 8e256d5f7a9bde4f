"""Peer gateways on the benchmark's load: Node-RED (+ node-red-contrib-modbus / -opcua) and modbus4mqtt.

    python benchmarks/run.py --scenario modbus-1k --mode tag --peers node-red,modbus4mqtt
    python benchmarks/run.py --scenario opcua-20k --mode tag --size 1000 --peers node-red

After Cellgate's run of a scenario, each peer runs on the same load: a fresh Mosquitto with the same
configuration (``--broker-inflight`` = its Receive Maximum), the same bench server (``servers.py``, same
arguments), the same independent subscriber (``subscriber.py``, subscribed to the peer's topics at QoS 1) and the
same window, warm-up and /proc measurements. A peer publishes one MQTT message per value, at the QoS of
Cellgate's tag map when it can choose (modbus4mqtt 0.7.1 always publishes QoS 0: its row says so).

* **Node-RED** (npm: node-red, node-red-contrib-modbus, node-red-contrib-opcua at the versions of
  ``benchmarks/peers/package.json``), headless (``benchmarks/peers/settings.js``: no editor; only the node
  module of the scenario's protocol is loaded), running a flow generated here. Modbus: one ``modbus-read`` node
  per 125-register block (the Modbus maximum: as few requests as the protocol allows) on one ``modbus-client``
  (TCP, one request at a time, as Cellgate's default), every node polling at the scenario's interval; a function
  node turns each answer into one message per register, ``{"value": v, "ts": <time the answer reached the
  flow>}`` (the meaning of Cellgate's Modbus ``ts``), to an ``mqtt out`` node (MQTT 5, the same QoS). OPC UA:
  one ``OpcUa-Client`` node with action ``subscribe``, given every variable at start-up as one monitored-item
  group (topic ``multiple``), sampling/publishing interval = the scenario's interval; each data change becomes
  ``{"value": v, "ts": <SourceTimestamp>}``.
* **modbus4mqtt** (PyPI, in its own venv: it pins pymodbus 2.x and paho-mqtt 1.x), with a YAML config generated
  for the same registers: ``scan_batching: 100`` (its maximum), ``update_rate`` = the interval, one ``pub_topic``
  per register with ``json_key: value`` so the payload is the JSON object ``{"value": v}`` the subscriber counts.
  Its loop sleeps 50 ms after every read (``DEFAULT_READ_SLEEP_S``) and ``update_rate`` after every cycle, so it
  cannot reach short intervals; that is what it does, measured. Its payload has no timestamp: data age is n/a.

Installed on first use into ``~/.cache/cellgate-bench`` (``$CELLGATE_BENCH_CACHE``): npm into ``node-red/``,
pip into the venv ``modbus4mqtt-venv/`` (made with the system ``python3``). Never by ``make test``.

CPU, RSS: the peer's process and its descendants, from /proc, over the window (RSS summed at the end).
Results have run.py's schema plus ``"system"`` (the peer); ``"gateway"`` holds the peer's process figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import tagmaps
from procs import Broker, Child, ChildError, ProcSample, free_port, machine_busy_ticks, proc_sample

BENCH_DIR = Path(__file__).resolve().parent
TEMPLATES = BENCH_DIR / "peers"
PEERS = ("node-red", "modbus4mqtt")
MODBUS4MQTT_VERSION = "0.7.1"
# The Modbus maximum of one read (holding registers) and modbus4mqtt's own maximum (MAX_SCAN_BATCHING).
MODBUS_MAX_REGISTERS = 125
MODBUS4MQTT_MAX_BATCH = 100
# servers.py registers its namespace first: index 2 after OPC UA's own and the server's (asyncua).
BENCH_OPCUA_NAMESPACE_INDEX = 2
# What each peer can be run against (scenario -> peers); others get a "not run" line saying why.
SUPPORTED = {"modbus-1k": ("node-red", "modbus4mqtt"), "opcua-20k": ("node-red",)}
TS_MEANING = {
    ("node-red", "modbus"): "Date.now() in the flow's function node when the read answer reached it (the meaning "
    "of Cellgate's Modbus ts: the answer's arrival time)",
    ("node-red", "opcua"): "the OPC UA SourceTimestamp of the data change, as Cellgate's",
    ("modbus4mqtt", "modbus"): "none: modbus4mqtt's payload carries no timestamp, so data age is n/a",
}


def cache_dir() -> Path:
    return Path(os.environ.get("CELLGATE_BENCH_CACHE", Path.home() / ".cache" / "cellgate-bench"))


def topic_root(peer: str) -> str:
    return f"{tagmaps.ENTERPRISE}/{tagmaps.SITE}/peers/{peer}"


def parse_peers(text: str) -> list[str]:
    """``node-red,modbus4mqtt`` -> the names, in order, checked against PEERS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    return list(dict.fromkeys(names))


# ------------------------------------------------------------------------------------------ pure: configs


def register_topic(peer: str, address: int) -> str:
    return f"{topic_root(peer)}/hr{address:05d}"


def opcua_topic(peer: str, name: str) -> str:
    return f"{topic_root(peer)}/{name}"


def modbus_blocks(registers: int, max_per_read: int) -> list[tuple[int, int]]:
    """(start, count) reads that cover holding registers 0..registers-1 in as few requests as allowed."""
    return [(start, min(max_per_read, registers - start)) for start in range(0, registers, max_per_read)]


def modbus_expected_topics(peer: str, registers: int) -> set[str]:
    return {register_topic(peer, address) for address in range(registers)}


def opcua_node_names(objects: int, per_object: int) -> list[str]:
    """The bench OPC UA server's variable names (``servers.py``): ``B{object:03d}.V{index:03d}``."""
    return [f"B{obj:03d}.V{index:03d}" for obj in range(objects) for index in range(per_object)]


# Function node: one message per register of a read answer, {"value", "ts"} with ts = arrival in the flow.
_MODBUS_FUNCTION = """\
const base = Number(msg.topic);
const ts = new Date().toISOString();
const values = msg.payload;
const out = new Array(values.length);
for (let i = 0; i < values.length; i++) {
    const address = base + i;
    out[i] = {topic: ROOT + "/hr" + String(address).padStart(5, "0"),
              payload: '{"value":' + values[i] + ',"ts":"' + ts + '"}'};
}
return [out];
"""

# Function node: a data change of the monitored-item group (msg.topic = node id, msg.payload = the DataValue)
# -> {"value", "ts": SourceTimestamp}, topic = the variable's name.
_OPCUA_FUNCTION = """\
const id = String(msg.topic);
const name = id.slice(id.lastIndexOf("=") + 1);
const data = msg.payload;
const source = data.sourceTimestamp || data.serverTimestamp;
const ts = (source ? new Date(source) : new Date()).toISOString();
return {topic: ROOT + "/" + name, payload: '{"value":' + JSON.stringify(data.value.value) + ',"ts":"' + ts + '"}'};
"""


def _mqtt_nodes(*, broker_port: int, qos: int, client_id: str, tab: str) -> tuple[dict[str, Any], dict[str, Any]]:
    broker = {
        "id": "bench-broker", "type": "mqtt-broker", "name": "bench mosquitto", "broker": "127.0.0.1",
        "port": str(broker_port), "clientid": client_id, "autoConnect": True, "usetls": False,
        "protocolVersion": "5", "keepalive": "60", "cleansession": True, "autoUnsubscribe": True,
        "birthTopic": "", "closeTopic": "", "willTopic": "", "sessionExpiry": "",
    }
    out = {
        "id": "bench-mqtt-out", "type": "mqtt out", "z": tab, "name": "one message per value", "topic": "",
        "qos": str(qos), "retain": "false", "respTopic": "", "contentType": "", "userProps": "", "correl": "",
        "expiry": "", "broker": "bench-broker", "x": 700, "y": 100, "wires": [],
    }
    return broker, out


def _function_node(node_id: str, tab: str, name: str, body: str, root: str) -> dict[str, Any]:
    return {
        "id": node_id, "type": "function", "z": tab, "name": name,
        "func": f"const ROOT = {json.dumps(root)};\n{body}", "outputs": 1, "timeout": 0, "noerr": 0,
        "initialize": "", "finalize": "", "libs": [], "x": 450, "y": 100, "wires": [["bench-mqtt-out"]],
    }


def node_red_modbus_flow(
    *, host: str, port: int, registers: int, interval_ms: int, qos: int, broker_port: int, unit_id: int = 1
) -> list[dict[str, Any]]:
    """The Node-RED flow (flows.json) that reads holding registers 0..registers-1 every ``interval_ms`` in
    125-register reads and publishes one message per register at ``qos``."""
    tab = "bench-tab"
    root = topic_root("node-red")
    broker, out = _mqtt_nodes(broker_port=broker_port, qos=qos, client_id="bench-node-red", tab=tab)
    client = {
        "id": "bench-modbus-client", "type": "modbus-client", "name": "bench plc", "clienttype": "tcp",
        "bufferCommands": True, "stateLogEnabled": False, "queueLogEnabled": False, "failureLogEnabled": True,
        "tcpHost": host, "tcpPort": str(port), "tcpType": "DEFAULT", "serialPort": "/dev/ttyUSB",
        "serialType": "RTU-BUFFERD", "serialBaudrate": "9600", "serialDatabits": "8", "serialStopbits": "1",
        "serialParity": "none", "serialConnectionDelay": "100", "serialAsciiResponseStartDelimiter": "0x3A",
        "unit_id": str(unit_id), "commandDelay": "1", "clientTimeout": "1000", "reconnectOnTimeout": True,
        "reconnectTimeout": "2000", "parallelUnitIdsAllowed": True, "showErrors": True, "showWarnings": True,
        "showLogs": False,
    }
    flow: list[dict[str, Any]] = [
        {"id": tab, "type": "tab", "label": "cellgate bench", "disabled": False, "info": ""},
        broker, client, out,
        _function_node("bench-split", tab, "one message per register", _MODBUS_FUNCTION, root),
    ]
    for index, (start, count) in enumerate(modbus_blocks(registers, MODBUS_MAX_REGISTERS)):
        flow.append({
            "id": f"bench-read-{index:03d}", "type": "modbus-read", "z": tab, "name": f"hr {start}+{count}",
            # The read's start address rides as msg.topic: the function node numbers the registers from it.
            "topic": str(start), "showStatusActivities": False, "logIOActivities": False, "showErrors": True,
            "showWarnings": True, "unitid": str(unit_id), "dataType": "HoldingRegister", "adr": str(start),
            "quantity": str(count), "rate": str(interval_ms), "rateUnit": "ms", "delayOnStart": False,
            "startDelayTime": "", "server": "bench-modbus-client", "useIOFile": False, "ioFile": "",
            "useIOForPayload": False, "emptyMsgOnFail": False, "x": 150, "y": 100 + 40 * index,
            "wires": [["bench-split"], []],
        })
    return flow


def node_red_opcua_flow(
    *, endpoint: str, namespace_index: int, names: Sequence[str], interval_ms: int, qos: int, broker_port: int,
    start_delay_s: float = 3.0,
) -> list[dict[str, Any]]:
    """The Node-RED flow that subscribes to every named variable (one monitored item each, all created by one
    ``subscribe`` of topic ``multiple``: node-red-contrib-opcua's monitored-item group, one CreateMonitoredItems
    call) at ``interval_ms`` and publishes one message per data change at ``qos``. node-red-contrib-opcua takes
    node ids with a namespace index (``ns=``), not a namespace URI."""
    tab = "bench-tab"
    root = topic_root("node-red")
    broker, out = _mqtt_nodes(broker_port=broker_port, qos=qos, client_id="bench-node-red", tab=tab)
    items = [{"nodeId": f"ns={namespace_index};s={name}"} for name in names]
    feed = f"return {{topic: 'multiple', interval: {interval_ms}, payload: {json.dumps(items)}}};\n"
    return [
        {"id": tab, "type": "tab", "label": "cellgate bench", "disabled": False, "info": ""},
        broker, out,
        {"id": "bench-endpoint", "type": "OpcUa-Endpoint", "endpoint": endpoint, "secpol": "None",
         "secmode": "None", "none": True, "login": False, "usercert": False, "usercertificate": "",
         "userprivatekey": ""},
        {"id": "bench-start", "type": "inject", "z": tab, "name": "start", "props": [], "repeat": "",
         "crontab": "", "once": True, "onceDelay": str(start_delay_s), "topic": "", "x": 100, "y": 100,
         "wires": [["bench-items"]]},
        {"id": "bench-items", "type": "function", "z": tab, "name": "the monitored items", "func": feed,
         "outputs": 1, "timeout": 0, "noerr": 0, "initialize": "", "finalize": "", "libs": [], "x": 250,
         "y": 100, "wires": [["bench-opcua"]]},
        {"id": "bench-opcua", "type": "OpcUa-Client", "z": tab, "endpoint": "bench-endpoint", "action": "subscribe",
         "deadbandtype": "a", "deadbandvalue": 0, "time": str(interval_ms), "timeUnit": "ms", "certificate": "n",
         "localfile": "", "localkeyfile": "", "securitymode": "None", "securitypolicy": "None",
         "useTransport": False, "maxChunkCount": 1, "maxMessageSize": 8192, "receiveBufferSize": 8192,
         "sendBufferSize": 8192, "name": "bench opcua", "x": 400, "y": 100, "wires": [["bench-change"], [], []]},
        _function_node("bench-change", tab, "value + SourceTimestamp", _OPCUA_FUNCTION, root),
    ]


def modbus4mqtt_config(*, host: str, port: int, registers: int, interval_ms: int, unit_id: int = 1) -> str:
    """modbus4mqtt's YAML for holding registers 0..registers-1, one topic each, polled every ``interval_ms``."""
    lines = [
        f"ip: {host}",
        f"port: {port}",
        f"device_address: {unit_id}",
        f"update_rate: {interval_ms / 1000:g}",
        "address_offset: 0",
        "variant: tcp",
        f"scan_batching: {MODBUS4MQTT_MAX_BATCH}",
        "word_order: highlow",
        "registers:",
    ]
    for address in range(registers):
        lines += [
            f"  - pub_topic: hr{address:05d}",
            "    table: holding",
            f"    address: {address}",
            "    type: uint16",
            "    json_key: value",
            "    pub_only_on_change: false",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ pure: results


def per_tag_stats(per_key: dict[str, int], expected: set[str], window_s: float) -> dict[str, Any]:
    """Delivered values/s per expected topic (min/p50/max) and the starved ones (nothing in the window)."""
    rates = sorted(per_key.get(key, 0) / window_s for key in expected) if window_s > 0 else []
    starved = sorted(key for key in expected if per_key.get(key, 0) == 0)
    middle = len(rates) // 2
    median = (rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2) if rates else None
    return {
        "tags_expected": len(expected),
        "tags_with_values": len(expected) - len(starved),
        "tags_starved": len(starved),
        "starved_examples": starved[:10],
        "unexpected_keys": len(set(per_key) - expected),
        "per_tag_values_per_s": {
            "min": round(rates[0], 2) if rates else None,
            "p50": round(median, 2) if median is not None else None,
            "max": round(rates[-1], 2) if rates else None,
        },
    }


def server_written_per_s(output: str, window_start: float, window_end: float) -> float | None:
    """Values the OPC UA bench server wrote per second in the window (wall clock), from its
    ``pass writes=N ended=T`` lines; None without such lines (the Modbus server answers reads instead)."""
    passes = [
        (int(fields["writes"]), float(fields["ended"]))
        for line in output.splitlines()
        if line.startswith("pass ")
        for fields in [dict(part.split("=", 1) for part in line.split()[1:])]
    ]
    if not passes or window_end <= window_start:
        return None
    return sum(writes for writes, ended in passes if window_start < ended <= window_end) / (window_end - window_start)


@dataclass(frozen=True, slots=True, kw_only=True)
class Measured:
    """What one peer run measured, before it is shaped like run.py's result."""

    counted: dict[str, Any]  # subscriber.py's ``result`` document
    expected: set[str]
    window_s: float
    cpu_s: dict[str, float]  # peer, broker, servers, subscriber
    rss_mb: float | None
    peak_rss_mb: float | None
    processes: int
    busy_fraction: float | None
    has_timestamp: bool
    written_per_s: float | None = None  # what an OPC UA bench server really wrote in the window


def peer_result(
    *, peer: str, scenario: str, mode: str, protocol: str, interval_ms: int, qos: int, broker_inflight: int,
    measured: Measured, details: dict[str, Any],
) -> dict[str, Any]:
    """run.py's result schema for a peer run (``system`` names who was measured; ``gateway`` is the peer)."""
    counted = measured.counted
    window_s = float(counted.get("window_s") or measured.window_s)
    values = int(counted["values"])
    tags = len(measured.expected)
    offered = tags * 1000 / interval_ms
    per_tag = per_tag_stats(counted.get("per_key", {}), measured.expected, window_s)
    age = counted.get("age_ms", {}) if measured.has_timestamp else {}
    peer_cpu = measured.cpu_s["peer"]
    ratio = values / (offered * window_s) if offered and window_s else 0.0
    result = {
        "scenario": scenario,
        "mode": mode,
        "system": peer,
        "protocol": protocol,
        "ts_meaning": TS_MEANING.get((peer, protocol), "n/a"),
        "config": {
            "tags": tags, "devices": 1, "interval_ms": interval_ms, "publish": mode, "mqtt_qos": qos,
            "offered_values_per_s": round(offered, 1), "broker_max_inflight_messages": broker_inflight,
            **details,
        },
        "delivered": {
            "window_s": round(window_s, 3),
            "messages": counted["messages"],
            "values": values,
            "values_per_s": round(values / window_s, 1) if window_s else 0.0,
            "messages_per_s": round(counted["messages"] / window_s, 1) if window_s else 0.0,
            "unparsable": counted["unparsable"],
            # No quality and no seq in a peer's payload: those columns do not apply.
            "values_not_good": None, "values_null": counted.get("values_null"), "seq_missing": None,
            **per_tag,
        },
        "data_age_ms": {key: age.get(key) for key in ("p50", "p95", "p99", "min", "max")},
        "overload": {"ratio_of_offered": round(ratio, 3), "fell_behind": ratio < 0.95, "gateway_warned": None,
                     "silent": None},
        "gateway": {
            "processes": measured.processes,
            "cpu_s": round(peer_cpu, 3),
            "cpu_util": round(peer_cpu / window_s, 3) if window_s else None,
            "cpu_us_per_value": round(peer_cpu / values * 1e6, 2) if values else None,
            "rss_mb": round(measured.rss_mb, 1) if measured.rss_mb is not None else None,
            "peak_rss_mb": round(measured.peak_rss_mb, 1) if measured.peak_rss_mb is not None else None,
        },
        **{name: {"cpu_s": round(measured.cpu_s[name], 3),
                  "cpu_util": round(measured.cpu_s[name] / window_s, 3) if window_s else None}
           for name in ("broker", "servers", "subscriber")},
        "machine": {"busy_fraction": measured.busy_fraction},
    }
    written = measured.written_per_s
    result["servers"]["written_values_per_s"] = round(written, 1) if written is not None else None
    return result


def _fmt(value: Any, spec: str = "") -> str:
    return "n/a" if value is None else format(value, spec)


def summary_line(result: dict[str, Any]) -> str:
    """One line per peer run, the columns of Cellgate's line plus QoS and the broker's Receive Maximum."""
    name = f"{result['scenario']}/{result['mode']} {result.get('system', '?')}"
    if "error" in result:
        return f"{name}: FAILED: {result['error'].splitlines()[0]}"
    if "not_run" in result:
        return f"{name}: not run: {result['not_run']}"
    config, d, g, age = result["config"], result["delivered"], result["gateway"], result["data_age_ms"]
    per_tag = d["per_tag_values_per_s"]
    return (
        f"{name}: {d['values_per_s']:,.0f} values/s of {config['offered_values_per_s']:,.0f} offered "
        + (f"(server wrote {written:,.0f}) " if (written := result["servers"].get("written_values_per_s")) else "")
        + f"(QoS {config['mqtt_qos']}, Receive Maximum {config['broker_max_inflight_messages']}), "
        f"per tag min/p50/max {_fmt(per_tag['min'])}/{_fmt(per_tag['p50'])}/{_fmt(per_tag['max'])} values/s, "
        f"starved {d['tags_starved']}/{d['tags_expected']}, "
        f"age p50/p95/p99 {_fmt(age['p50'])}/{_fmt(age['p95'])}/{_fmt(age['p99'])} ms, "
        f"{result['system']} {_fmt(g['cpu_us_per_value'])} us/value {_fmt(g['cpu_util'])} cpu "
        f"rss {_fmt(g['rss_mb'])} MB, broker {_fmt(result['broker']['cpu_util'])} cpu, "
        f"machine busy {_fmt(result['machine']['busy_fraction'])}"
    )


# ------------------------------------------------------------------------------------------ installing


def _run(argv: Sequence[str], *, cwd: Path, what: str) -> None:
    completed = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise ChildError(f"{what} failed ({completed.returncode}):\n{(completed.stdout + completed.stderr)[-3000:]}")


def ensure_node_red(cache: Path) -> Path:
    """npm-install the pinned Node-RED packages into ``cache/node-red`` (again when package.json changed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        # As `make bench` does for Mosquitto: Debian's packages, when root (else it says what to install).
        _run([str(BENCH_DIR.parent / ".ci" / "ensure-system-packages"), "nodejs", "npm"], cwd=cache,
             what="installing nodejs and npm")
    target = cache / "node-red"
    target.mkdir(parents=True, exist_ok=True)
    wanted = (TEMPLATES / "package.json").read_bytes()
    stamp = target / ".installed"
    digest = hashlib.sha256(wanted).hexdigest()
    if not (stamp.exists() and stamp.read_text() == digest and (target / "node_modules" / "node-red").is_dir()):
        (target / "package.json").write_bytes(wanted)
        print(f"peers: installing Node-RED into {target} (npm) ...", flush=True)
        _run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=target, what="npm install")
        stamp.write_text(digest)
    return target


def ensure_modbus4mqtt(cache: Path) -> Path:
    """pip-install modbus4mqtt into its own venv under ``cache`` (it pins an old pymodbus); its console script."""
    venv = cache / "modbus4mqtt-venv"
    script = venv / "bin" / "modbus4mqtt"
    stamp = venv / ".installed"
    if not (script.exists() and stamp.exists() and stamp.read_text() == MODBUS4MQTT_VERSION):
        # The system Python: modbus4mqtt's pymodbus 2.5 predates the newest Pythons a project venv may have.
        python = shutil.which("python3") or sys.executable
        print(f"peers: installing modbus4mqtt {MODBUS4MQTT_VERSION} into {venv} (pip) ...", flush=True)
        _run([python, "-m", "venv", "--clear", str(venv)], cwd=cache, what="python3 -m venv")
        _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", f"modbus4mqtt=={MODBUS4MQTT_VERSION}"],
             cwd=cache, what="pip install modbus4mqtt")
        stamp.write_text(MODBUS4MQTT_VERSION)
    return script


def _installed_version(node_red_dir: Path, package: str) -> str | None:
    try:
        return str(json.loads((node_red_dir / "node_modules" / package / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


# ------------------------------------------------------------------------------------------ measuring


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/*/stat's parent pid)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def _cpu(samples: Sequence[ProcSample | None]) -> float:
    return sum(sample.cpu_s for sample in samples if sample is not None)


@dataclass(kw_only=True)
class PeerLaunch:
    """How to start one peer on one scenario: files to write into the run's folder and the command."""

    argv: list[str]
    files: dict[str, str]
    env: dict[str, str]
    expected: set[str]
    has_timestamp: bool
    details: dict[str, Any]


def _launch(peer: str, plan: Any, address: str, broker_port: int, qos: int, workdir: Path) -> PeerLaunch:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    if peer == "modbus4mqtt":
        host, port = address.rsplit(":", 1)
        script = ensure_modbus4mqtt(cache)
        config = modbus4mqtt_config(host=host, port=int(port), registers=plan.size, interval_ms=plan.interval_ms)
        return PeerLaunch(
            argv=[str(script), "--hostname", "127.0.0.1", "--port", str(broker_port), "--config",
                  str(workdir / "modbus4mqtt.yaml"), "--mqtt_topic_prefix", topic_root(peer)],
            files={"modbus4mqtt.yaml": config}, env={}, expected=modbus_expected_topics(peer, plan.size),
            has_timestamp=False,
            details={"peer_version": MODBUS4MQTT_VERSION, "peer_qos": 0, "scan_batching": MODBUS4MQTT_MAX_BATCH,
                     "note": "modbus4mqtt 0.7.1 publishes QoS 0 only (paho publish() without qos)"},
        )
    node_red_dir = ensure_node_red(cache)
    user_dir = workdir / "node-red"
    user_dir.mkdir()
    (user_dir / "node_modules").symlink_to(node_red_dir / "node_modules")
    shutil.copy(node_red_dir / "package.json", user_dir / "package.json")
    versions = {package: _installed_version(node_red_dir, package)
                for package in ("node-red", "node-red-contrib-modbus", "node-red-contrib-opcua")}
    if plan.protocol == "modbus":
        host, port = address.rsplit(":", 1)
        flow = node_red_modbus_flow(host=host, port=int(port), registers=plan.size, interval_ms=plan.interval_ms,
                                    qos=qos, broker_port=broker_port)
        expected = modbus_expected_topics(peer, plan.size)
    else:
        per_object = int(plan.details["variables_per_object"])
        names = opcua_node_names(plan.size // per_object, per_object)
        flow = node_red_opcua_flow(endpoint=address, namespace_index=BENCH_OPCUA_NAMESPACE_INDEX, names=names,
                                   interval_ms=plan.interval_ms, qos=qos, broker_port=broker_port)
        expected = {opcua_topic(peer, name) for name in names}
    flows = user_dir / "flows.json"
    return PeerLaunch(
        argv=["node", str(node_red_dir / "node_modules" / "node-red" / "red.js"), "--settings",
              str(TEMPLATES / "settings.js"), "--userDir", str(user_dir)],
        files={str(flows.relative_to(workdir)): json.dumps(flow, indent=1)},
        env={"CELLGATE_BENCH_FLOW_FILE": str(flows), "CELLGATE_BENCH_NODE_RED_PORT": str(free_port()),
             # The other protocol's node module stays unloaded (node-opcua alone is ~100 MB of RSS).
             "CELLGATE_BENCH_NODE_RED_EXCLUDE": "node-red-contrib-opcua" if plan.protocol == "modbus"
             else "node-red-contrib-modbus"},
        expected=expected, has_timestamp=True,
        details={"peer_versions": versions, "peer_qos": qos, "mqtt_protocol": "5",
                 "modbus_reads_per_cycle": len(modbus_blocks(plan.size, MODBUS_MAX_REGISTERS))
                 if plan.protocol == "modbus" else None},
    )


def not_run_reason(peer: str, scenario: str, mode: str) -> str | None:
    if mode != "tag":
        return "peers publish one message per value: compared in --mode tag only"
    if peer not in SUPPORTED.get(scenario, ()):
        return f"{peer} has no setup for {scenario} (supported: " + ", ".join(
            f"{s}: {'/'.join(p)}" for s, p in SUPPORTED.items()) + ")"
    return None


def run_peer(peer: str, plan: Any, args: argparse.Namespace, qos: int) -> dict[str, Any]:
    """One peer on ``plan``'s load (run.py's Plan), measured like Cellgate; run.py's result schema."""
    workdir = Path(tempfile.mkdtemp(prefix=f"cellgate-bench-{plan.scenario}-{peer}-"))
    broker = Broker(workdir, max_inflight_messages=args.broker_inflight)
    children: list[Child] = []
    try:
        broker.start()
        server = Child("servers", plan.server_argv, log_path=workdir / "servers.log")
        children.append(server)
        address = server.wait_for_prefix("ready ", plan.server_ready_s).split("=", 1)[1].split(",")[0]
        launch = _launch(peer, plan, address, broker.port, qos, workdir)
        for name, text in launch.files.items():
            (workdir / name).write_text(text, encoding="utf-8")
        subscriber = Child(
            "subscriber",
            [sys.executable, str(BENCH_DIR / "subscriber.py"), "--port", str(broker.port),
             "--filter", f"{topic_root(peer)}/#", "--client", args.client],
            log_path=workdir / "subscriber.log", stdin_pipe=True,
        )
        children.append(subscriber)
        subscriber.wait_for_prefix("ready", 15)
        process = Child(peer, launch.argv, log_path=workdir / f"{peer}.log", cwd=workdir, env=launch.env,
                        stdout_to_log=True)
        children.append(process)
        started = time.monotonic()
        keys_seen = 0
        while time.monotonic() - started < plan.startup_timeout_s:
            if not process.running:
                raise ChildError(f"{peer} exited with {process.process.returncode}; log:\n{process.log_tail()}")
            subscriber.send("status")
            keys_seen = int(subscriber.wait_for_prefix("status ", 30).split("keys=")[1].split()[0])
            if keys_seen >= len(launch.expected):
                break
            time.sleep(0.25)
        startup_s = time.monotonic() - started
        time.sleep(args.warmup_s)
        peer_pids = process_tree(process.pid)
        pids = {"peer": peer_pids, "broker": [broker.pid], "servers": [server.pid], "subscriber": [subscriber.pid]}
        before = {name: [proc_sample(pid) for pid in group] for name, group in pids.items()}
        busy_before = machine_busy_ticks()
        subscriber.send("start")
        subscriber.wait_for_prefix("started", 30)
        window_started = time.monotonic()
        window_wall = time.time()
        time.sleep(args.duration_s)
        window_wall_end = time.time()
        after = {name: [proc_sample(pid) for pid in group] for name, group in pids.items()}
        busy_after = machine_busy_ticks()
        window_s = time.monotonic() - window_started
        subscriber.send("stop")
        counted = orjson.loads(subscriber.wait_for_prefix("result ", 120)[len("result "):])
        alive = process.running
    except (ChildError, OSError, ValueError) as exc:
        raise ChildError(f"{exc}\n(files and logs kept in {workdir})") from exc
    finally:
        server_output = ""
        for child in reversed(children):
            _, rest = child.stop()
            if child.name == "servers":
                server_output = rest
        broker.stop()
    total = busy_after[1] - busy_before[1]
    peer_after = [sample for sample in after["peer"] if sample is not None]
    measured = Measured(
        counted=counted, expected=launch.expected, window_s=window_s,
        cpu_s={name: max(0.0, _cpu(after[name]) - _cpu(before[name])) for name in pids},
        rss_mb=sum(s.rss_mb for s in peer_after) if peer_after else None,
        peak_rss_mb=sum(s.peak_rss_mb for s in peer_after) if peer_after else None,
        processes=len(peer_pids),
        busy_fraction=round((busy_after[0] - busy_before[0]) / total, 3) if total else None,
        has_timestamp=launch.has_timestamp,
        written_per_s=server_written_per_s(server_output, window_wall, window_wall_end),
    )
    result = peer_result(
        peer=peer, scenario=plan.scenario, mode=plan.mode, protocol=plan.protocol, interval_ms=plan.interval_ms,
        qos=int(launch.details.get("peer_qos", qos)), broker_inflight=args.broker_inflight, measured=measured,
        details={**plan.details, **launch.details},
    )
    result["startup"] = {"s": round(startup_s, 2), "tags_seen": keys_seen,
                         "complete": keys_seen >= len(launch.expected)}
    result["gateway"]["alive_at_end"] = alive
    if not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        result["workdir"] = str(workdir)
    return result


def run_peers(
    peers: Sequence[str], scenario: str, mode: str, make_plan: Callable[[], Any], args: argparse.Namespace, qos: int
) -> list[dict[str, Any]]:
    """Every asked peer on the load of run.py's ``make_plan()`` (the Plan Cellgate ran), one after the other;
    prints one line each. A failure is that peer's result (``error``), the others still run."""
    results = []
    for peer in peers:
        reason = not_run_reason(peer, scenario, mode)
        try:
            if reason is not None:
                result = {"scenario": scenario, "mode": mode, "system": peer, "not_run": reason}
            else:
                result = run_peer(peer, make_plan(), args, qos)
        except (ChildError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            result = {"scenario": scenario, "mode": mode, "system": peer, "error": str(exc)}
        results.append(result)
        print(summary_line(result), flush=True)
    return results
