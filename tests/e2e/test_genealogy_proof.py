"""The proof: every cell the simulated line finished is traced from the MQTT stream alone to its rolls.

The whole line runs in one simulator process (coater and calender over OPC UA, stacker and two formation racks
over Modbus TCP, connected by id: ``simulators.machines.line``), sped up so that some twenty model hours pass:
cells assembled from rolls that were coated and calendered during the run come out of formation (about 14 model
hours). A real ``cellgate run`` reads the machines' result FIFOs with the events of ``config/demo.yaml`` (ready /
ack handshake) and publishes them to Mosquitto (with persistence); an independent persistent-session subscriber
records the stream. In the middle the broker goes away for a while and the gateway is killed and started again.

Ground truth is what the simulators themselves finished: ``--record-results`` makes the simulator process log
every record a FIFO takes, at the moment it takes it (``simulators.ground_truth``), not through the gateway.
``gateway.genealogy`` rebuilds the cells from the MQTT messages; for every finished cell of the ground truth the
test checks that it is there exactly once, with its formation record, its stacker record (three roll ids), the
calendered roll and the coated roll it was made from, every field equal to what the simulators pushed.

Formation capacity: two racks of 800 channels, so that cells are loaded about as fast as the stacker makes them
(the default 2 x 16 channels would take the oldest cells of an ever longer queue, and a cell made from rolls of
this run would reach formation only days later). Seed 13 finishes a coated roll, calenders it and mounts it on the
stacker within the first model hours.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.genealogy import CellGenealogy, Genealogy, RollGenealogy, TraceRecord
from tests.support.gateway import DEMO_CONFIG, GatewayProcess
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.sim import SimulatorProcess
from tests.support.waiting import wait_until, wait_while_progressing

SEED = 13
SPEEDUP = 1800.0
"""Model seconds per wall second: one model hour every two seconds."""
RACK_STEP_HZ = 1.0
"""Formation racks step every 1800 model seconds (the model is exact for any step: it steps event to event, and
records every cell that ends within a step); their full register image costs tens of ms per step."""
CHANNELS = 800
MIN_FULL_CHAINS = 20
"""Finished cells whose cathode roll's whole chain (calendered roll, coated roll) was made during the run."""
RUN_DEADLINE_S = 150.0

FINISHER_PREFIX = "rack-"
STACKER = "stacker-01"
ROLL_MACHINES = ("coater-01", "calender-01")
ROLES = {"anode": "anode_roll_id", "cathode": "cathode_roll_id", "separator": "separator_roll_id"}


def field_name(point: str) -> str:
    """``Result.CoatWeightMean`` -> ``coat_weight_mean``: the demo map's ``result/coat_weight_mean`` field."""
    name = point.removeprefix("Result.")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass(frozen=True)
class TruthRecord:
    machine: str
    record_id: int
    time_s: float
    fields: dict[str, Any]


@dataclass
class Truth:
    """The simulators' own log of finished units, indexed the way the line connects them."""

    records: list[TruthRecord] = field(default_factory=list)
    finished: dict[tuple[str, str], TruthRecord] = field(default_factory=dict)  # (rack, cell id) -> its record
    stacked: dict[str, TruthRecord] = field(default_factory=dict)  # cell id -> stacker record
    rolls: dict[str, TruthRecord] = field(default_factory=dict)  # roll id -> coater / calender record

    @classmethod
    def read(cls, path: Path) -> Truth:
        truth = cls()
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        for line in lines:
            if not line.endswith("}"):
                continue  # a line still being written
            raw = json.loads(line)
            record = TruthRecord(raw["machine"], raw["record_id"], raw["time_s"] or 0.0,
                                 {field_name(k): v for k, v in raw["fields"].items()})
            truth.records.append(record)
            if record.machine.startswith(FINISHER_PREFIX):
                key = (record.machine, record.fields["cell_id"])
                assert key not in truth.finished, f"the simulators graded {record} twice"
                truth.finished[key] = record
            elif record.machine == STACKER:
                truth.stacked[record.fields["cell_id"]] = record
            elif record.machine in ROLL_MACHINES:
                truth.rolls[record.fields["roll_id"]] = record
        return truth

    def roll_chain(self, roll_id: str) -> list[tuple[str, TruthRecord | None]]:
        """The roll and the rolls it was made from: (roll id, its record or None)."""
        chain: list[tuple[str, TruthRecord | None]] = []
        current: str | None = roll_id
        while current is not None and len(chain) < 8:
            record = self.rolls.get(current)
            chain.append((current, record))
            current = record.fields.get("input_roll_id") if record is not None else None
        return chain

    def full_chain(self, cell_id: str) -> bool:
        """The cell was stacked in the run from a cathode roll calendered in the run from a roll coated in it."""
        stacked = self.stacked.get(cell_id)
        if stacked is None:
            return False
        chain = self.roll_chain(stacked.fields["cathode_roll_id"])
        return len(chain) == 2 and all(record is not None for _, record in chain)

    def full_chains(self) -> int:
        return sum(1 for _, cell in self.finished if self.full_chain(cell))

    def hours(self) -> float:
        return max((r.time_s for r in self.records), default=0.0) / 3600.0


def proof_map(destination: Path, *, opcua_port: int, modbus_ports: Mapping[str, int]) -> Path:
    """config/demo.yaml with its events as they are, each device reduced to its result FIFO tags (the records'
    tags, trigger and ack), on the test's simulator ports."""
    demo = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    devices = []
    for device in demo["devices"]:
        assert device.get("events"), f"{device['name']} has no events in config/demo.yaml"
        device["tags"] = [tag for tag in device.get("tags", []) if tag["name"].startswith("result/")]
        for key in ("repeat", "context", "repeat_context"):
            device.pop(key, None)
        device["interval_ms"] = 500
        if device["protocol"] == "modbus":
            device["port"] = modbus_ports[device["name"]]
            # One simulator process serves the whole line on a shared machine: a rack step can hold its event
            # loop for a while, which is not what this test is about.
            device["timeout_ms"] = 5000
        else:
            device["endpoint"] = re.sub(r":\d+", f":{opcua_port}", device["endpoint"], count=1)
        devices.append(device)
    demo["devices"] = devices
    demo.pop("templates", None)
    destination.write_text(yaml.safe_dump(demo, sort_keys=False), encoding="utf-8")
    return destination


@dataclass
class Proof:
    broker: Mosquitto
    subscriber: Subscriber
    config: Path
    env: dict[str, str]
    truth_file: Path
    workdir: Path
    genealogy: Genealogy = field(default_factory=Genealogy)
    fed: int = 0

    def gateway(self) -> GatewayProcess:
        return GatewayProcess(config=self.config, env=self.env, state_dir=self.workdir / "state")

    def stream(self) -> Genealogy:
        """The genealogy of every message received so far (fed incrementally)."""
        messages = self.subscriber.messages
        for message in messages[self.fed:]:
            self.genealogy.add(message.topic, message.payload)
        self.fed = len(messages)
        return self.genealogy

    def received(self) -> set[tuple[str, int]]:
        return {(r.equipment, int(str(r.record_id))) for r in self.stream().records()}


@pytest.fixture
def proof(tmp_path: Path) -> Iterator[Proof]:
    enterprise = f"gen{uuid.uuid4().hex[:8]}"
    truth_file = tmp_path / "truth.jsonl"
    sim = SimulatorProcess(
        seed=SEED, speedup=SPEEDUP, channels=CHANNELS,
        extra_args=["--racks", "2", "--rack-step-hz", str(RACK_STEP_HZ), "--record-results", str(truth_file)],
    )
    sim.start()
    (tmp_path / "broker").mkdir()
    broker = Mosquitto(persistence=True, workdir=tmp_path / "broker")
    try:
        broker.start()
        opcua_port = int(sim.opcua_endpoint.rstrip("/").rsplit(":", 1)[1])
        config = proof_map(tmp_path / "map.yaml", opcua_port=opcua_port, modbus_ports=sim.modbus_ports)
        subscriber = Subscriber(broker.host, broker.port, f"{enterprise}/+/+/+/+/_events/+",
                                client_id=f"sub-{enterprise}", session=True)
        subscriber.start()
        time.sleep(1.5)  # autosave_interval 1: the persistent session is on disk before the broker restarts
        env = {"CELLGATE_MQTT__URL": broker.url, "CELLGATE_GATEWAY__ENTERPRISE": enterprise}
        yield Proof(broker, subscriber, config, env, truth_file, tmp_path)
        subscriber.stop()
    finally:
        broker.close()
        sim.close()


def same(published: object, pushed: object) -> bool:
    """A published field equals the simulator's value (Modbus float32 registers round doubles)."""
    if isinstance(pushed, float) and isinstance(published, int | float) and not isinstance(published, bool):
        return math.isclose(published, pushed, rel_tol=1e-6, abs_tol=1e-6)
    return published == pushed


def assert_record(record: TraceRecord | None, truth: TruthRecord, what: str) -> None:
    assert record is not None, f"{what}: {truth.machine} record {truth.record_id} is not in the stream"
    assert (record.equipment, record.record_id) == (truth.machine, truth.record_id), what
    assert record.quality == "good", f"{what}: {record}"
    pushed = {**truth.fields, "record_id": truth.record_id}
    wrong = {name: (value, pushed.get(name)) for name, value in record.fields.items()
             if name not in pushed or not same(value, pushed[name])}
    assert not wrong, f"{what}: published != pushed: {wrong}"


def assert_roll(roll: RollGenealogy, chain: list[tuple[str, TruthRecord | None]], what: str) -> None:
    got = roll.chain()
    assert [r.roll_id for r in got] == [roll_id for roll_id, _ in chain], what
    for link, (roll_id, record) in zip(got, chain, strict=True):
        if record is None:
            assert link.record is None, f"{what}: {roll_id} has a record the simulators never pushed"
        else:
            assert_record(link.record, record, f"{what} {roll_id}")


def key(cell: CellGenealogy) -> tuple[str, str]:
    """(rack, cell id): the cells the racks hold when the simulation starts are named by channel, the same on
    every rack (CELL-001000001 on rack-01 and rack-02); the stacker's cell ids are unique on the line."""
    assert cell.finished is not None
    return cell.finished.equipment, cell.cell_id


def assert_cell(cell: CellGenealogy, truth: Truth) -> None:
    what = f"cell {cell.cell_id}"
    assert_record(cell.finished, truth.finished[key(cell)], f"{what} formation")
    stacked = truth.stacked.get(cell.cell_id)
    if stacked is None:  # a cell the racks held when the simulation started
        assert cell.stacked is None and not cell.rolls, what
        return
    assert_record(cell.stacked, stacked, f"{what} stacker")
    assert set(cell.rolls) == set(ROLES), what
    for role, name in ROLES.items():
        assert_roll(cell.rolls[role], truth.roll_chain(stacked.fields[name]), f"{what} {role} roll")


def test_every_finished_cell_is_traced_to_its_rolls_from_the_mqtt_stream(proof: Proof) -> None:
    started = time.monotonic()

    def progress(what: str) -> None:
        truth = Truth.read(proof.truth_file)
        print(f"{time.monotonic() - started:5.1f} s {what}: stream {len(proof.stream())} records, truth "
              f"{len(truth.records)} records, {truth.hours():.1f} h, {truth.full_chains()} full")

    gateway = proof.gateway()
    gateway.start()
    try:
        wait_until(lambda: len(proof.stream()) >= 100, 60, "the first hundred records")
        progress("outage")
        # The broker goes away: no PUBACK, no ack to the PLCs; their FIFOs hold what is finished meanwhile.
        before = {(r.machine, r.record_id) for r in Truth.read(proof.truth_file).records}
        proof.broker.stop()
        time.sleep(3.0)
        during = {(r.machine, r.record_id) for r in Truth.read(proof.truth_file).records} - before
        proof.broker.start()
        received = len(proof.stream())
        wait_until(lambda: len(proof.stream()) >= received + 100, 60, "records after the outage")
        progress("kill")
        # The gateway is killed and started again: the records it had not acknowledged are published again.
        gateway.send_signal(signal.SIGKILL)
        gateway.stop()
        gateway = proof.gateway()
        gateway.start()
        wait_until(lambda: Truth.read(proof.truth_file).full_chains() >= MIN_FULL_CHAINS, RUN_DEADLINE_S,
                   f"{MIN_FULL_CHAINS} finished cells made from rolls coated and calendered in the run")
        progress("snapshot")
        truth = Truth.read(proof.truth_file)
        wanted = {(r.machine, r.record_id) for r in truth.records}
        try:
            # The restarted gateway drains the FIFOs' backlog (thousands of records) at the speed the machine allows:
            # wait as long as records keep arriving, fail once none has arrived for a while.
            wait_while_progressing(lambda: wanted <= proof.received(), lambda: len(wanted & proof.received()),
                                   stall_s=30, cap_s=300, what="every record the simulators had finished")
        except AssertionError as exc:
            missing = sorted(wanted - proof.received())
            raise AssertionError(f"{exc}: {len(missing)} missing, first {missing[:10]}") from None
    finally:
        status = gateway.stop()
        log = gateway.log_text()
    assert status == 0, log[-3000:]
    assert during, "the line finished nothing while the broker was away"
    assert during <= proof.received(), "records finished during the outage are missing"
    stream = proof.stream()
    cells = stream.finished_cells()
    counts = Counter(key(cell) for cell in cells)
    assert not [cell for cell, n in counts.items() if n > 1], "a cell appears more than once"
    assert set(truth.finished) <= set(counts), "finished cells missing"
    final = Truth.read(proof.truth_file)
    assert set(counts) <= set(final.finished), "a cell the simulators never finished"
    stacked_ids = Counter(cell.cell_id for cell in cells if cell.stacked is not None)
    assert not [cell for cell, n in stacked_ids.items() if n > 1], "a stacked cell finished twice"
    checked = [cell for cell in cells if key(cell) in truth.finished]
    for cell in checked:
        assert_cell(cell, truth)
    full = [cell for cell in checked if truth.full_chain(cell.cell_id)]
    assert len(full) >= MIN_FULL_CHAINS
    # The whole chain of those is in the stream: formation -> stacker -> calendered roll -> coated roll.
    for cell in full:
        cathode = cell.rolls["cathode"].chain()
        assert [r.record.equipment if r.record else None for r in cathode] == ["calender-01", "coater-01"]
        assert cathode[-1].record is not None and "coat_weight_mean" in cathode[-1].record.fields
    duplicates = stream.counts.duplicate_record + stream.counts.duplicate_seq
    print(f"\ngenealogy proof: {truth.hours():.1f} model hours, {len(truth.finished)} finished cells "
          f"({len(full)} with the whole chain, {sum(1 for c in checked if c.stacked)} with a stacker record), "
          f"{len(truth.records)} records, {duplicates} duplicates dropped, "
          f"{time.monotonic() - started:.0f} s")
