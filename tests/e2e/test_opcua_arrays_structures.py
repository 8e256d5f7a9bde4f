"""Arrays and structures from the coater simulator, through a real gateway process and Mosquitto.

The simulator runs in this process with its clock stopped (``autostep=False``), so the values it serves are the
values it has; the gateway (``cellgate run``) reads them, once subscribed and once polled, and the test compares
what reaches the broker with what the server serves: the cross-web profile as a JSON array of 120 numbers, the
PackMLStatus structure as an object with its field names (a nested structure inside), the dryer zones as an
array of objects. A device that does not load the server's DataTypeDefinitions publishes the structure bad,
``unsupported_type:<type name>`` (read from the server at connect), and the array still good. A map written by
``cellgate browse`` runs as is and publishes the structure and the array it found.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from simulators.machines.coater import PROFILE_ARRAY_LANES, Coater
from simulators.servers.opcua_server import OpcUaSimulatorServer
from tests.support.gateway import REPO_ROOT, GatewayProcess
from tests.support.mosquitto import Mosquitto, Received, Subscriber

pytestmark = pytest.mark.e2e

NSU = "nsu=urn:cellgate:simulators;s=Coater01"
TAGS = (
    f"      - {{name: gauge/profile, node: '{NSU}.Gauge.ProfileArray', unit: g/m2}}\n"
    f"      - {{name: packml/status, node: '{NSU}.PackML.Status'}}\n"
    f"      - {{name: dryer/zones, node: '{NSU}.DryerZoneStatus'}}\n"
    f"      - {{name: gauge/coat_weight, node: '{NSU}.Gauge.CoatWeight', unit: g/m2}}\n"
    f"      - {{name: gauge/lane006, node: '{NSU}.Gauge.ProfileArray', index: 5, unit: g/m2}}\n"
    f"      - {{name: gauge/lanes011_020, node: '{NSU}.Gauge.ProfileArray', index: '10:19', unit: g/m2}}\n"
    f"      - {{name: dryer/zone03, node: '{NSU}.DryerZoneStatus', index: 2}}\n"
    f"      - {{name: gauge/lane999, node: '{NSU}.Gauge.ProfileArray', index: 999}}\n"
    f"      - {{name: gauge/profile_shaped, node: '{NSU}.Gauge.ProfileArray', shape: [{PROFILE_ARRAY_LANES}]}}\n"
    f"      - {{name: gauge/profile_short, node: '{NSU}.Gauge.ProfileArray', shape: [7]}}\n"
    f"      - {{name: gauge/lanes001_010, node: '{NSU}.Gauge.ProfileArray', index: '0:9', shape: [10]}}\n"
    f"      - {{name: packml/status_other, node: '{NSU}.PackML.Status', fields: [StateCurrent, Speed]}}\n"
)


def tag_map(endpoint: str, broker_url: str, enterprise: str) -> str:
    devices = ""
    for name, mode, structures in (("coater-sub", "subscribe", "true"), ("coater-poll", "poll", "true"),
                                   ("coater-plain", "subscribe", "false")):
        devices += (
            f"  - name: {name}\n    area: electrode\n    line: l1\n    protocol: opcua\n"
            f"    endpoint: '{endpoint}'\n    mode: {mode}\n    interval_ms: 200\n    structures: {structures}\n"
            f"    tags:\n{TAGS}"
        )
    return (f"gateway: {{id: gw, enterprise: {enterprise}, site: s1}}\nmqtt: {{url: '{broker_url}'}}\n"
            f"devices:\n{devices}")


@dataclass
class Running:
    coater: Coater
    subscriber: Subscriber
    prefix: str


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    coater = Coater(rng=random.Random(7))
    enterprise = f"arr{uuid.uuid4().hex[:8]}"
    async with OpcUaSimulatorServer(machines={"Coater01": coater}, port=0, autostep=False) as server:
        for _ in range(40):  # up to speed and coating, so the profile and the counts are not all zero
            await server.step(5.0)
        with Mosquitto() as broker:
            config = tmp_path / "arrays.yaml"
            config.write_text(tag_map(server.endpoint, broker.url, enterprise), encoding="utf-8")
            subscriber = Subscriber(broker.host, broker.port, f"{enterprise}/#")
            subscriber.start()
            gateway = GatewayProcess(config=config, env={}, state_dir=tmp_path / "state")
            gateway.start()
            try:
                yield Running(coater, subscriber, f"{enterprise}/s1/electrode/l1")
            finally:
                gateway.stop()
                gateway.close()
                subscriber.stop()


def latest(messages: list[Received], topic: str) -> dict[str, Any] | None:
    found = [m for m in messages if m.topic == topic and m.payload]
    return orjson.loads(found[-1].payload) if found else None


async def test_arrays_and_structures_arrive_as_served(running: Running) -> None:
    coater = running.coater
    values = coater.values()
    profile = coater.cross_web_profile()
    assert len(profile) == PROFILE_ARRAY_LANES and min(profile) > 0
    status = {
        "StateCurrent": values["PackML.StateCurrent"], "UnitModeCurrent": values["PackML.UnitModeCurrent"],
        "CurMachSpeed": values["Line.Speed"], "Blocked": values["PackML.Blocked"], "Starved": values["PackML.Starved"],
        "Counts": {"ProdProcessedCount": values["PackML.ProdProcessedCount"],
                   "ProdDefectiveCount": values["PackML.ProdDefectiveCount"]},
    }
    zones = [{"AirTempSP": values[f"Dryer.Zone{n:02d}.AirTempSP"], "AirTemp": values[f"Dryer.Zone{n:02d}.AirTemp"],
              "HeaterOutput": values[f"Dryer.Zone{n:02d}.HeaterOutput"]} for n in range(1, 11)]
    assert status["Counts"]["ProdProcessedCount"] > 0

    topics = [f"{running.prefix}/{device}/{tag}" for device in ("coater-sub", "coater-poll", "coater-plain")
              for tag in ("gauge/profile", "packml/status", "dryer/zones")]
    messages = await running.subscriber.wait_for(
        lambda received: all(latest(received, topic) is not None for topic in topics), timeout_s=30.0)

    for device in ("coater-sub", "coater-poll"):
        got_profile = latest(messages, f"{running.prefix}/{device}/gauge/profile")
        assert got_profile is not None
        assert (got_profile["quality"], got_profile["unit"], got_profile["value"]) == ("good", "g/m2", profile)
        got_status = latest(messages, f"{running.prefix}/{device}/packml/status")
        assert got_status is not None
        assert (got_status["quality"], got_status["value"]) == ("good", status)
        got_zones = latest(messages, f"{running.prefix}/{device}/dryer/zones")
        assert got_zones is not None
        assert (got_zones["quality"], got_zones["value"]) == ("good", zones)

    # index: one element, a range, one structure of an array; an index past the end is bad.
    indexed = [f"{running.prefix}/coater-sub/{tag}" for tag in
               ("gauge/lane006", "gauge/lanes011_020", "dryer/zone03", "gauge/lane999")]
    messages = await running.subscriber.wait_for(
        lambda received: all(latest(received, topic) is not None for topic in indexed), timeout_s=10.0)
    lane, lanes, zone, past = (latest(messages, topic) for topic in indexed)
    assert lane is not None and (lane["quality"], lane["value"]) == ("good", profile[5])
    assert lanes is not None and (lanes["quality"], lanes["value"]) == ("good", profile[10:20])
    assert zone is not None and (zone["quality"], zone["value"]) == ("good", zones[2])
    assert past is not None and (past["quality"], past["value"], past["status"]) == ("bad", None, "index_out_of_range")

    # shape / fields declared in the map: published in _meta; a value that does not fit them is bad.
    declared = [f"{running.prefix}/coater-sub/{tag}" for tag in
                ("gauge/profile_shaped", "gauge/profile_short", "gauge/lanes001_010", "packml/status_other", "_meta")]
    messages = await running.subscriber.wait_for(
        lambda received: all(latest(received, topic) is not None for topic in declared), timeout_s=10.0)
    shaped, short, ranged, other, meta = (latest(messages, topic) for topic in declared)
    assert shaped is not None and (shaped["quality"], shaped["value"]) == ("good", profile)
    assert ranged is not None and (ranged["quality"], ranged["value"]) == ("good", profile[:10])
    for wrong in (short, other):
        assert wrong is not None and (wrong["quality"], wrong["value"], wrong["status"]) == ("bad", None,
                                                                                            "shape_mismatch")
    assert meta is not None
    assert meta["tags"]["gauge/profile_shaped"]["shape"] == [PROFILE_ARRAY_LANES]
    assert meta["tags"]["packml/status_other"]["fields"] == ["StateCurrent", "Speed"]
    assert "shape" not in meta["tags"]["gauge/coat_weight"] and "fields" not in meta["tags"]["gauge/coat_weight"]

    plain_status = latest(messages, f"{running.prefix}/coater-plain/packml/status")
    assert plain_status is not None
    assert (plain_status["quality"], plain_status["value"]) == ("bad", None)
    assert plain_status["status"] == "unsupported_type:PackMLStatus"
    plain_zones = latest(messages, f"{running.prefix}/coater-plain/dryer/zones")
    assert plain_zones is not None and plain_zones["quality"] == "bad"
    assert plain_zones["status"] == "unsupported_type:Array[DryerZoneStatus]"
    plain_profile = latest(messages, f"{running.prefix}/coater-plain/gauge/profile")
    assert plain_profile is not None and plain_profile["value"] == profile


async def test_a_browsed_map_runs_and_publishes_structures(tmp_path: Path) -> None:
    """``cellgate browse`` -> ``cellgate run`` unchanged (broker and enterprise from the environment): the structure
    and the array the browse found are published as served."""
    coater = Coater(rng=random.Random(3))
    enterprise = f"brw{uuid.uuid4().hex[:8]}"
    async with OpcUaSimulatorServer(machines={"Coater01": coater}, port=0, autostep=False) as server:
        for _ in range(40):
            await server.step(5.0)
        config = tmp_path / "browsed.yaml"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "browse", server.endpoint, "--include", "Coater01/PackML/Status",
            "--include", "Coater01/Gauge/ProfileArray", "--include", "Coater01/DryerZoneStatus", "-o", str(config),
            cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
        with Mosquitto() as broker:
            env = {"CELLGATE_MQTT__URL": broker.url, "CELLGATE_GATEWAY__ENTERPRISE": enterprise}
            with Subscriber(broker.host, broker.port, f"{enterprise}/#") as subscriber:
                gateway = GatewayProcess(config=config, env=env, state_dir=tmp_path / "state")
                gateway.start()
                try:
                    base = f"{enterprise}/site/area/line/coater01"
                    topics = (f"{base}/pack_ml/status", f"{base}/gauge/profile_array", f"{base}/dryer_zone_status")
                    wanted = (*topics, f"{base}/_meta")
                    messages = await subscriber.wait_for(
                        lambda received: all(latest(received, topic) is not None for topic in wanted), timeout_s=30.0)
                finally:
                    gateway.stop()
                    gateway.close()
    status, profile, zones = (latest(messages, topic) for topic in topics)
    assert status is not None and status["quality"] == "good"
    assert status["value"]["StateCurrent"] == coater.values()["PackML.StateCurrent"]
    assert status["value"]["Counts"]["ProdProcessedCount"] == coater.values()["PackML.ProdProcessedCount"]
    assert profile is not None and (profile["quality"], profile["value"]) == ("good", coater.cross_web_profile())
    assert zones is not None and zones["quality"] == "good" and len(zones["value"]) == 10
    # The browse declared the array's dimensions and the structure's fields, the nested structure (Counts) and
    # the array of structures (the dryer zones) described to their depth; the gateway published them in _meta
    # and the values fit them (else they would be bad, shape_mismatch).
    status_fields = described_fields(status["value"])
    assert {"Counts": {"fields": ["ProdProcessedCount", "ProdDefectiveCount"]}} in status_fields
    written = yaml.safe_load(config.read_text(encoding="utf-8"))
    tags = {tag["name"]: tag for tag in written["devices"][0]["tags"]}
    assert tags["gauge/profile_array"]["shape"] == [PROFILE_ARRAY_LANES]
    assert tags["pack_ml/status"]["fields"] == status_fields
    assert tags["dryer_zone_status"]["shape"] == [10]
    assert tags["dryer_zone_status"]["fields"] == described_fields(zones["value"][0])
    meta = latest(messages, f"{base}/_meta")
    assert meta is not None
    assert meta["tags"]["gauge/profile_array"]["shape"] == [PROFILE_ARRAY_LANES]
    assert meta["tags"]["pack_ml/status"]["fields"] == status_fields
    assert (meta["tags"]["dryer_zone_status"]["shape"], meta["tags"]["dryer_zone_status"]["fields"]) == (
        [10], ["AirTempSP", "AirTemp", "HeaterOutput"])


def described_fields(value: dict[str, Any]) -> list[Any]:
    """The ``fields`` that describe a structure value as published (nested structures as one-key mappings)."""
    return [{key: {"fields": described_fields(item)}} if isinstance(item, dict) else key for key, item in value.items()]
