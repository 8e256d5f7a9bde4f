"""The benchmark harness runs end to end and writes sane JSON. Behaviour only: no speed is asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTERS = 100
INTERVAL_MS = 100


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    completed = subprocess.run(
        [
            sys.executable, "benchmarks/run.py", "--scenario", "modbus-1k", "--mode", "tag",
            "--size", str(REGISTERS), "--interval-ms", str(INTERVAL_MS),
            "--duration-s", "3", "--warmup-s", "0.5", "--out", str(out),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    document: dict[str, Any] = json.loads(out.read_text())
    return document, completed.stdout


def test_one_summary_line_per_run(bench: tuple[dict[str, Any], str]) -> None:
    _, stdout = bench
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("modbus-1k/tag: ")
    assert "values/s" in lines[0]
    assert "FAILED" not in stdout
    assert lines[-1].startswith("results: ")


def test_json_describes_the_run(bench: tuple[dict[str, Any], str]) -> None:
    document, _ = bench
    assert document["schema"] == 1
    [result] = document["results"]
    assert "error" not in result
    assert (result["scenario"], result["mode"], result["protocol"]) == ("modbus-1k", "tag", "modbus")
    config = result["config"]
    assert config["tags"] == REGISTERS
    assert config["interval_ms"] == INTERVAL_MS
    assert config["offered_values_per_s"] == pytest.approx(REGISTERS * 1000 / INTERVAL_MS)
    assert "arrival" in result["ts_meaning"]
    assert result["startup"]["complete"] is True


def test_every_tag_delivered_without_gaps(bench: tuple[dict[str, Any], str]) -> None:
    [result] = bench[0]["results"]
    delivered = result["delivered"]
    assert delivered["values"] > 0
    assert delivered["values_per_s"] > 0
    assert delivered["values"] == delivered["messages"]  # per-tag mode: one value per message
    assert delivered["tags_expected"] == REGISTERS
    assert delivered["tags_starved"] == 0
    assert delivered["unexpected_keys"] == 0
    assert delivered["seq_missing"] == 0
    assert delivered["seq_repeats"] == 0
    assert delivered["values_not_good"] == 0  # the bench server answers every read
    assert delivered["per_tag_values_per_s"]["min"] > 0


def test_age_cpu_and_memory_are_measured(bench: tuple[dict[str, Any], str]) -> None:
    [result] = bench[0]["results"]
    age = result["data_age_ms"]
    assert age["p50"] is not None
    assert age["p50"] <= age["p95"] <= age["p99"] <= age["max"] + 0.1  # histogram bins report their centre
    gateway = result["gateway"]
    assert gateway["alive_at_end"] is True
    assert gateway["cpu_s"] > 0
    assert gateway["cpu_us_per_value"] > 0
    assert gateway["rss_mb"] > 10
    assert gateway["peak_rss_mb"] >= gateway["rss_mb"]
    for part in ("broker", "servers", "subscriber"):
        assert result[part]["cpu_s"] >= 0
    assert "requests=" in result["servers"]["stats"]
    assert result["machine"]["cpus"] >= 1
    assert {check["name"] for check in result["targets"]} >= {"values_per_s", "gateway_us_per_value"}
    assert set(result["overload"]) == {"ratio_of_offered", "fell_behind", "gateway_warned", "silent"}


@pytest.fixture(scope="module")
def bench_both(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """A short batch run with both outputs: the subscriber decodes the Sparkplug B stream and counts it apart."""
    out = tmp_path_factory.mktemp("bench-both") / "results.json"
    completed = subprocess.run(
        [
            sys.executable, "benchmarks/run.py", "--scenario", "modbus-1k", "--mode", "batch", "--outputs", "both",
            "--size", str(REGISTERS), "--interval-ms", str(INTERVAL_MS),
            "--duration-s", "2", "--warmup-s", "0.5", "--out", str(out),
        ],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    document: dict[str, Any] = json.loads(out.read_text())
    return document, completed.stdout


def test_both_outputs_are_counted_each_on_its_own(bench_both: tuple[dict[str, Any], str]) -> None:
    document, stdout = bench_both
    [result] = document["results"]
    assert "error" not in result
    assert result["config"]["outputs"] == ["uns-json", "sparkplug"]
    assert result["startup"]["complete"] is True
    json_delivered = result["delivered"]
    sparkplug = result["sparkplug"]
    sp_delivered = sparkplug["delivered"]
    for delivered in (json_delivered, sp_delivered):
        assert delivered["values"] > 0
        assert delivered["tags_expected"] == REGISTERS
        assert delivered["tags_starved"] == 0
        assert delivered["unexpected_keys"] == 0
        assert delivered["unparsable"] == 0
        assert delivered["seq_missing"] == 0
        assert delivered["seq_repeats"] == 0
        assert delivered["values_not_good"] == 0
    # Batch mode: one JSON _batch and one DDATA per poll of the device, each holding every register.
    assert sp_delivered["values"] == sp_delivered["messages"] * REGISTERS
    assert json_delivered["values"] == json_delivered["messages"] * REGISTERS
    age = sparkplug["data_age_ms"]
    assert age["p50"] is not None
    assert age["p50"] <= age["p95"] <= age["max"] + 0.1
    assert result["gateway"]["cpu_us_per_value"] > 0
    [line] = [line for line in stdout.splitlines() if line.startswith("modbus-1k/batch: ")]
    assert "[uns-json+sparkplug, " in line
    assert "; sparkplug: " in line


def test_the_qos1_floor_benchmark_measures_the_three_clients(tmp_path: Path) -> None:
    """benchmarks/qos1_floor.py: a minimal publisher's QoS 0 and QoS 1 (Receive Maximum 20) runs, with their system
    calls per message as its loop made them."""
    out = tmp_path / "floor.json"
    completed = subprocess.run(
        [sys.executable, "benchmarks/qos1_floor.py", "--rate", "2000", "--seconds", "0.5", "--rounds", "1",
         "--out", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"
    document = json.loads(out.read_text())
    assert document["receive_maximum"] == 20
    lines = {line["mode"]: line for line in document["lines"]}
    assert set(lines) == {"qos0", "qos1_each", "qos1_half"}
    for line in lines.values():
        assert line["msg_per_s"] > 0
        assert line["us_per_msg"] == pytest.approx(line["user_us_per_msg"] + line["system_us_per_msg"], abs=0.02)
    assert lines["qos0"]["writes_per_msg"] == pytest.approx(1 / 125, rel=0.05)
    assert lines["qos0"]["reads_per_msg"] == 0
    # One write per read of PUBACKs; a window of 20 takes at least a write per 20 messages.
    assert lines["qos1_each"]["writes_per_msg"] == pytest.approx(lines["qos1_each"]["reads_per_msg"], rel=0.05)
    assert lines["qos1_each"]["writes_per_msg"] >= 1 / 20 * 0.95
    assert "floor: " in completed.stdout
