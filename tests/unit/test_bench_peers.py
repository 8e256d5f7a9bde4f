"""The peer benchmark's pure parts (benchmarks/peers.py): the Node-RED flows and modbus4mqtt's YAML it generates
cover exactly the registers/variables asked, at the interval and QoS asked, and its results are shaped like
Cellgate's. Nothing here installs or runs Node-RED or modbus4mqtt."""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The benchmarks are scripts that import their siblings by plain name (run as `python benchmarks/run.py`).
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module("peers")


def _nodes(flow: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [node for node in flow if node["type"] == kind]


def _covered(reads: list[dict[str, Any]]) -> list[int]:
    return sorted(a for r in reads for a in range(int(r["adr"]), int(r["adr"]) + int(r["quantity"])))


def test_node_red_modbus_flow_reads_exactly_the_registers_in_full_modbus_reads(peers: ModuleType) -> None:
    flow = peers.node_red_modbus_flow(host="127.0.0.1", port=15020, registers=1000, interval_ms=20, qos=1,
                                      broker_port=18830)
    json.dumps(flow)  # what flows.json gets
    reads = _nodes(flow, "modbus-read")
    assert _covered(reads) == list(range(1000))  # every register once, none twice
    assert len(reads) == 8  # 1,000 / 125: as few requests as Modbus allows
    assert all(int(r["quantity"]) <= 125 for r in reads)
    assert {(r["rate"], r["rateUnit"], r["dataType"]) for r in reads} == {("20", "ms", "HoldingRegister")}
    # Each read numbers its registers from its start address, which rides as msg.topic.
    assert all(r["topic"] == r["adr"] for r in reads)
    (client,) = _nodes(flow, "modbus-client")
    assert (client["tcpHost"], client["tcpPort"]) == ("127.0.0.1", "15020")
    assert all(r["server"] == client["id"] for r in reads)
    (out,) = _nodes(flow, "mqtt out")
    (broker,) = _nodes(flow, "mqtt-broker")
    assert (out["qos"], out["retain"], out["broker"]) == ("1", "false", broker["id"])
    assert (broker["broker"], broker["port"]) == ("127.0.0.1", "18830")
    (split,) = _nodes(flow, "function")
    assert all(r["wires"][0] == [split["id"]] for r in reads)
    assert split["wires"] == [[out["id"]]]
    assert '"bench/lab/peers/node-red"' in split["func"]


def test_node_red_modbus_flow_splits_a_short_last_block_and_keeps_the_qos(peers: ModuleType) -> None:
    flow = peers.node_red_modbus_flow(host="::1", port=502, registers=260, interval_ms=30, qos=0, broker_port=1)
    reads = _nodes(flow, "modbus-read")
    assert [(int(r["adr"]), int(r["quantity"])) for r in reads] == [(0, 125), (125, 125), (250, 10)]
    assert _nodes(flow, "mqtt out")[0]["qos"] == "0"


def test_node_red_opcua_flow_subscribes_every_variable_once_at_the_interval(peers: ModuleType) -> None:
    names = peers.opcua_node_names(10, 100)
    flow = peers.node_red_opcua_flow(endpoint="opc.tcp://127.0.0.1:4841/", namespace_index=2, names=names,
                                     interval_ms=1000, qos=1, broker_port=1883)
    (client,) = _nodes(flow, "OpcUa-Client")
    assert (client["action"], client["time"], client["timeUnit"]) == ("subscribe", "1000", "ms")
    (feed,) = [n for n in _nodes(flow, "function") if n["wires"] == [[client["id"]]]]
    match = re.search(r"payload: (\[.*\])\}", feed["func"])
    assert match is not None
    ids = [item["nodeId"] for item in json.loads(match.group(1))]
    assert len(ids) == 1000 == len(set(ids))
    assert ids[0] == "ns=2;s=B000.V000" and ids[-1] == "ns=2;s=B009.V099"
    assert "topic: 'multiple'" in feed["func"]
    assert _nodes(flow, "mqtt out")[0]["qos"] == "1"
    (endpoint,) = _nodes(flow, "OpcUa-Endpoint")
    assert endpoint["endpoint"] == "opc.tcp://127.0.0.1:4841/"


def test_modbus4mqtt_config_maps_each_register_to_its_own_json_topic(peers: ModuleType) -> None:
    config = yaml.safe_load(peers.modbus4mqtt_config(host="127.0.0.1", port=15020, registers=1000, interval_ms=20))
    assert (config["ip"], config["port"], config["update_rate"]) == ("127.0.0.1", 15020, 0.02)
    assert config["scan_batching"] == 100  # modbus4mqtt's largest read
    registers = config["registers"]
    assert sorted(r["address"] for r in registers) == list(range(1000))
    assert len({r["pub_topic"] for r in registers}) == 1000
    assert all(r["table"] == "holding" and r["type"] == "uint16" for r in registers)
    # One JSON object per register (the subscriber counts JSON), published on every poll (no report-by-exception).
    assert all(r["json_key"] == "value" and r["pub_only_on_change"] is False for r in registers)
    assert {f"{peers.topic_root('modbus4mqtt')}/{r['pub_topic']}" for r in registers} == \
        peers.modbus_expected_topics("modbus4mqtt", 1000)


def test_parse_peers_refuses_unknown_names(peers: ModuleType) -> None:
    assert peers.parse_peers("node-red, modbus4mqtt,node-red") == ["node-red", "modbus4mqtt"]
    with pytest.raises(argparse.ArgumentTypeError, match="telegraf"):
        peers.parse_peers("node-red,telegraf")


def test_not_run_reasons(peers: ModuleType) -> None:
    assert peers.not_run_reason("node-red", "modbus-1k", "tag") is None
    assert peers.not_run_reason("node-red", "opcua-20k", "tag") is None
    assert "tag only" in peers.not_run_reason("node-red", "modbus-1k", "batch")
    assert "no setup" in peers.not_run_reason("modbus4mqtt", "opcua-20k", "tag")


def _measured(peers: ModuleType, *, per_key: dict[str, int], has_timestamp: bool) -> Any:
    counted = {"window_s": 10.0, "messages": sum(per_key.values()), "values": sum(per_key.values()),
               "values_not_good": sum(per_key.values()), "values_null": 0, "unparsable": 0, "seq_missing": 0,
               "age_ms": {"p50": 3.0, "p95": 9.0, "p99": 12.0, "min": 1.0, "max": 20.0}, "per_key": per_key}
    return peers.Measured(
        counted=counted, expected=peers.modbus_expected_topics("node-red", 4), window_s=10.2,
        cpu_s={"peer": 2.0, "broker": 1.0, "servers": 0.5, "subscriber": 0.25}, rss_mb=80.0, peak_rss_mb=90.0,
        processes=1, busy_fraction=0.5, has_timestamp=has_timestamp,
    )


def test_peer_result_counts_per_tag_and_shows_starved_tags(peers: ModuleType) -> None:
    topics = sorted(peers.modbus_expected_topics("node-red", 4))
    per_key = {topics[0]: 500, topics[1]: 500, topics[2]: 1000}  # topics[3] starved
    result = peers.peer_result(
        peer="node-red", scenario="modbus-1k", mode="tag", protocol="modbus", interval_ms=20, qos=1,
        broker_inflight=20, measured=_measured(peers, per_key=per_key, has_timestamp=True), details={},
    )
    delivered = result["delivered"]
    assert delivered["values_per_s"] == 200.0  # 2,000 values over the subscriber's 10 s window
    assert (delivered["tags_starved"], delivered["starved_examples"]) == (1, [topics[3]])
    assert delivered["per_tag_values_per_s"] == {"min": 0.0, "p50": 50.0, "max": 100.0}
    assert delivered["values_not_good"] is None  # no quality in a peer's payload: not counted as bad
    assert result["gateway"]["cpu_us_per_value"] == 1000.0  # 2 s of the peer's CPU / 2,000 values
    assert result["config"]["offered_values_per_s"] == 200.0
    assert (result["config"]["mqtt_qos"], result["config"]["broker_max_inflight_messages"]) == (1, 20)
    assert result["data_age_ms"]["p95"] == 9.0
    line = peers.summary_line(result)
    assert "QoS 1, Receive Maximum 20" in line and "starved 1/4" in line and "1000.0 us/value" in line


def test_peer_result_without_a_timestamp_has_no_data_age(peers: ModuleType) -> None:
    per_key = dict.fromkeys(peers.modbus_expected_topics("node-red", 4), 10)
    result = peers.peer_result(
        peer="modbus4mqtt", scenario="modbus-1k", mode="tag", protocol="modbus", interval_ms=20, qos=0,
        broker_inflight=1000, measured=_measured(peers, per_key=per_key, has_timestamp=False), details={},
    )
    assert set(result["data_age_ms"].values()) == {None}
    assert "age p50/p95/p99 n/a/n/a/n/a ms" in peers.summary_line(result)
    assert "QoS 0, Receive Maximum 1000" in peers.summary_line(result)


def test_server_written_per_s_counts_the_passes_that_ended_in_the_window(peers: ModuleType) -> None:
    output = "ready opcua=opc.tcp://127.0.0.1:1/\npass writes=1000 ended=99.5\npass writes=1000 ended=100.5\n" \
             "pass writes=1000 ended=101.5\npass writes=1000 ended=102.5\nstats variables=1000\n"
    assert peers.server_written_per_s(output, 100.0, 102.0) == 1000.0
    assert peers.server_written_per_s("ready modbus=127.0.0.1:1\nstats requests=5\n", 100.0, 102.0) is None
