"""End to end on real parts: simulators (two processes) -> `cellgate run` (a process) -> Mosquitto -> subscriber."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import pytest
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from gateway.tagmap import Plant, load_plant
from tests.support.gateway import GatewayProcess, retarget_demo_config
from tests.support.mosquitto import Mosquitto, Received, Subscriber
from tests.support.sim import MODBUS_MACHINES_IN_DEFAULT_SET, SimulatorProcess, free_port_run

pytestmark = pytest.mark.e2e

TS_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@dataclass
class Pipeline:
    broker: Mosquitto
    opcua_sim: SimulatorProcess
    modbus_sim: SimulatorProcess
    modbus_port: int
    gateway: GatewayProcess
    subscriber: Subscriber
    plant: Plant
    prefix: str

    def topic(self, device: str, tag: str) -> str:
        found = next(d for d in self.plant.devices if d.name == device)
        return f"{self.prefix}/{found.area}/{found.line}/{device}/{tag}"

    def latest(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for message in self.subscriber.messages:
            if message.payload:
                out[message.topic] = orjson.loads(message.payload)
        return out


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    workdir = tmp_path_factory.mktemp("e2e")
    enterprise = f"e2e{uuid.uuid4().hex[:8]}"  # own topic prefix: no other test's messages
    modbus_port = free_port_run(MODBUS_MACHINES_IN_DEFAULT_SET)
    with Mosquitto() as broker:
        opcua_sim = SimulatorProcess(only="opcua", opcua_port=0)
        modbus_sim = SimulatorProcess(only="modbus", modbus_port=modbus_port)
        opcua_sim.start()
        modbus_sim.start()
        opcua_port = int(opcua_sim.opcua_endpoint.rstrip("/").rsplit(":", 1)[1])
        config = retarget_demo_config(
            opcua_port=opcua_port, modbus_port=modbus_port, destination=workdir / "tagmap.yaml"
        )
        env = {"CELLGATE_MQTT__URL": broker.url, "CELLGATE_GATEWAY__ENTERPRISE": enterprise}
        plant = load_plant(config, environ=env)
        prefix = f"{enterprise}/{plant.gateway.site}"
        subscriber = Subscriber(broker.host, broker.port, f"{prefix}/#")
        subscriber.start()
        gateway = GatewayProcess(config=config, env=env, state_dir=workdir / "state")
        gateway.start()
        running = Pipeline(broker, opcua_sim, modbus_sim, modbus_port, gateway, subscriber, plant, prefix)
        try:
            yield running
        finally:
            exit_status = gateway.stop()
            log = gateway.log_text()
            gateway.close()
            subscriber.stop()
            opcua_sim.close()
            running.modbus_sim.close()  # the kill test replaces it with a restarted one
            assert exit_status == 0, f"gateway exited with {exit_status}; log:\n{log[-4000:]}"


def all_tag_topics(pipeline: Pipeline) -> set[str]:
    return {pipeline.topic(device.name, tag.name) for device in pipeline.plant.devices for tag in device.tags}


def good_on_every_topic(pipeline: Pipeline, topics: set[str]) -> bool:
    latest = pipeline.latest()
    return all(topic in latest and latest[topic].get("quality") == "good" for topic in topics)


def test_every_demo_tag_arrives_good_with_the_schema_fields(pipeline: Pipeline) -> None:
    topics = all_tag_topics(pipeline)
    assert len(topics) == pipeline.plant.tag_count
    pipeline.subscriber.wait_for_blocking(lambda _: good_on_every_topic(pipeline, topics), timeout_s=30)
    latest = pipeline.latest()
    units = {
        pipeline.topic(device.name, tag.name): tag.unit for device in pipeline.plant.devices for tag in device.tags
    }
    for topic in topics:
        body = latest[topic]
        assert set(body) - {"ctx"} == {"value", "unit", "quality", "ts", "seq"}, (topic, body)  # ctx: test_context_e2e
        assert body["unit"] == units[topic]
        assert isinstance(body["seq"], int) and body["seq"] >= 1
        assert TS_FORMAT.match(str(body["ts"])), body
    # Retained metadata and status per equipment, and the gateway's own retained status.
    for device in pipeline.plant.devices:
        meta = latest[pipeline.topic(device.name, "_meta")]
        assert set(meta["tags"]) == {tag.name for tag in device.tags}  # type: ignore[arg-type]
        assert latest[pipeline.topic(device.name, "_status")]["connected"] is True
    assert latest[f"{pipeline.prefix}/_gateway/{pipeline.plant.gateway.id}/status"]["online"] is True


def test_seq_counts_up_by_one_per_topic(pipeline: Pipeline) -> None:
    topic = pipeline.topic("rack-01", "heartbeat")
    pipeline.subscriber.wait_for_blocking(lambda ms: sum(m.topic == topic for m in ms) >= 3, timeout_s=15)
    seqs = [orjson.loads(m.payload)["seq"] for m in pipeline.subscriber.on(topic)]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def read_modbus_holding(port: int, address: int, count: int) -> list[int]:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2)
    assert await client.connect()
    try:
        response = await client.read_holding_registers(address, count=count, device_id=1)
        assert not response.isError()
        return list(response.registers)
    finally:
        client.close()


def test_values_match_what_the_simulators_hold(pipeline: Pipeline) -> None:
    topics = all_tag_topics(pipeline)
    pipeline.subscriber.wait_for_blocking(lambda _: good_on_every_topic(pipeline, topics), timeout_s=30)

    # Modbus: read the rack registers independently and compare with the gateway's latest messages.
    registers = asyncio.run(read_modbus_holding(pipeline.modbus_port, 0, 27))
    latest = pipeline.latest()
    assert latest[pipeline.topic("rack-01", "channel_count")]["value"] == registers[1] == 16
    ambient = AsyncModbusTcpClient.convert_from_registers(registers[20:22], AsyncModbusTcpClient.DATATYPE.FLOAT32)
    published_ambient = latest[pipeline.topic("rack-01", "ambient/temperature")]["value"]
    assert isinstance(published_ambient, float)
    assert abs(published_ambient - float(ambient)) < 1.0  # ambient drifts slowly; 1 Cel covers a poll interval

    # OPC UA: read the coater independently.
    async def read_coater() -> tuple[str, float]:
        async with Client(pipeline.opcua_sim.opcua_endpoint, timeout=4) as client:
            ns = await client.get_namespace_index("urn:cellgate:simulators")
            manufacturer = await client.get_node(f"ns={ns};s=Coater01.Identification.Manufacturer").read_value()
            design = await client.get_node(f"ns={ns};s=Coater01.PackML.MachDesignSpeed").read_value()
            return str(manufacturer), float(design)

    manufacturer, design_speed = asyncio.run(read_coater())
    latest = pipeline.latest()
    assert latest[pipeline.topic("coater-01", "identification/manufacturer")]["value"] == manufacturer
    assert latest[pipeline.topic("coater-01", "packml/mach_design_speed")]["value"] == design_speed


def test_killed_modbus_simulator_goes_bad_and_recovers(pipeline: Pipeline) -> None:
    rack_tags = {pipeline.topic("rack-01", tag.name) for tag in pipeline.plant.device("rack-01").tags}
    status_topic = pipeline.topic("rack-01", "_status")
    coater_speed = pipeline.topic("coater-01", "diagnostics/heartbeat")
    pipeline.subscriber.wait_for_blocking(lambda _: good_on_every_topic(pipeline, rack_tags), timeout_s=30)

    killed = pipeline.modbus_sim
    assert killed.pid is not None
    os.kill(killed.pid, signal.SIGKILL)
    killed.close()

    def rack_down(_: list[Received]) -> bool:
        latest = pipeline.latest()
        return latest.get(status_topic, {}).get("connected") is False and all(
            latest[t].get("quality") == "bad" and latest[t].get("status") == "comm_failure" for t in rack_tags
        )

    pipeline.subscriber.wait_for_blocking(rack_down, timeout_s=30)
    assert pipeline.latest()[status_topic]["error"]
    # The coater keeps going while the rack is down.
    before = len(pipeline.subscriber.on(coater_speed))
    pipeline.subscriber.wait_for_blocking(lambda _: len(pipeline.subscriber.on(coater_speed)) > before + 1,
                                          timeout_s=15)

    pipeline.modbus_sim = SimulatorProcess(only="modbus", modbus_port=pipeline.modbus_port)
    pipeline.modbus_sim.start()
    pipeline.subscriber.wait_for_blocking(
        lambda _: pipeline.latest().get(status_topic, {}).get("connected") is True
        and good_on_every_topic(pipeline, rack_tags),
        timeout_s=45,
    )
