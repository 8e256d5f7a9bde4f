"""The benchmark subscriber's Sparkplug B counting, fed real payloads from the gateway's own encoder.

The encoder makes the births and DDATA and stamps ``seq`` as the MQTT connection does; the subscriber's tally must
learn the aliases from the births, count values per device/metric, age them from each metric's timestamp and find
gaps and repeats in ``seq``. The whole harness with ``--outputs both`` runs in tests/e2e/test_bench_smoke.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from gateway.encoders.base import Message
from gateway.encoders.sparkplug import SparkplugDeviceEncoder, SparkplugEdgeNode
from gateway.schema import Quality, Sample, TagMeta
from gateway.tagmap import load_plant

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
T0 = 1_800_000_000.0  # epoch seconds, a whole millisecond


@pytest.fixture
def subscriber(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # The benchmarks are scripts that import their siblings by plain name (run as `python benchmarks/run.py`).
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module("subscriber")


@pytest.fixture
def tagmaps(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    return importlib.import_module("tagmaps")


class Wire:
    """The edge node's messages as a subscriber receives them: each stamped with its ``seq`` when handed over."""

    def __init__(self, tally: Any) -> None:  # subscriber.SparkplugTally or .Tallies
        self.node = SparkplugEdgeNode(group_id="Bench", edge_node_id="gw-01", clock=lambda: T0)
        catalogue = [TagMeta(tag=f"hr{n}", type="float32") for n in range(3)]
        self.plc = SparkplugDeviceEncoder(node=self.node, device="plc-01", catalogue=catalogue)
        self.tally = tally

    def send(self, message: Message, received: float) -> None:
        self.tally.on_message(message.topic, self.node.stamp(message.topic, message.payload), received)

    def stamp_only(self, message: Message) -> None:
        """A message that got its ``seq`` but never reached the subscriber (a gap)."""
        self.node.stamp(message.topic, message.payload)

    def births(self) -> None:
        self.send(self.node.birth(T0), T0)
        self.send(self.plc.birth(T0), T0)

    def poll(self, ts: float, value: float = 1.5, quality: Quality = Quality.GOOD) -> Message:
        samples = [Sample("plc-01", f"hr{n}", value, quality, ts) for n in range(3)]
        [message] = self.plc.encode(samples, ts)
        return message


def test_births_teach_the_aliases_and_ddata_is_counted_per_device_metric_with_its_age(subscriber: ModuleType) -> None:
    tally = subscriber.SparkplugTally()
    wire = Wire(tally)
    wire.births()
    tally.start()
    wire.send(wire.poll(T0 + 1.0), received=T0 + 1.004)
    wire.send(wire.poll(T0 + 2.0), received=T0 + 2.004)
    tally.stop()
    result = tally.result()
    assert result["messages"] == 2
    assert result["values"] == 6
    assert result["per_key"] == {"plc-01/hr0": 2, "plc-01/hr1": 2, "plc-01/hr2": 2}
    assert result["unparsable"] == 0
    assert result["values_not_good"] == 0
    assert (result["seq_missing"], result["seq_repeats"]) == (0, 0)
    # receive time - the metric's timestamp (ms): 4 ms, reported at the centre of its 0.1 ms bin
    assert result["age_ms"]["p50"] == pytest.approx(4.0, abs=0.11)
    assert result["age_ms"]["max"] == pytest.approx(4.0, abs=0.01)


def test_seq_gaps_and_repeats_are_found_and_a_new_nbirth_or_the_wrap_is_neither(subscriber: ModuleType) -> None:
    tally = subscriber.SparkplugTally()
    wire = Wire(tally)
    wire.births()
    tally.start()
    wire.stamp_only(wire.poll(T0 + 1))  # lost: one number missing
    wire.stamp_only(wire.poll(T0 + 2))  # and another: still one gap event
    wire.send(wire.poll(T0 + 3), received=T0 + 3)
    assert (tally.seq_missing, tally.seq_gap_events, tally.seq_repeats) == (2, 1, 0)
    # The same message twice (a duplicate) is a repeat.
    message = wire.poll(T0 + 4)
    stamped = wire.node.stamp(message.topic, message.payload)
    tally.on_message(message.topic, stamped, T0 + 4)
    tally.on_message(message.topic, stamped, T0 + 4)
    assert tally.seq_repeats == 1
    # 255 -> 0 is the next number, not a gap; an NBIRTH starts a new run at 0.
    for n in range(300):
        wire.send(wire.poll(T0 + 5 + n), received=T0 + 5 + n)
    wire.births()
    wire.send(wire.poll(T0 + 400), received=T0 + 400)
    assert (tally.seq_missing, tally.seq_gap_events, tally.seq_repeats) == (2, 1, 1)
    assert tally.result()["values"] == 3 * (1 + 2 + 300 + 1)


def test_unknown_aliases_bad_quality_and_replays_are_told_apart(subscriber: ModuleType) -> None:
    tally = subscriber.SparkplugTally()
    wire = Wire(tally)
    wire.send(wire.node.birth(T0), T0)  # the DBIRTH never arrives: DDATA aliases mean nothing
    wire.plc.birth(T0)  # (the device is alive at the encoder)
    tally.start()
    wire.send(wire.poll(T0 + 1), received=T0 + 1)
    assert (tally.values, tally.unparsable) == (0, 3)
    wire.send(wire.plc.birth(T0 + 2), T0 + 2)
    wire.send(wire.poll(T0 + 3, value=2.5, quality=Quality.UNCERTAIN), received=T0 + 3)
    assert (tally.values, tally.not_good) == (3, 3)
    replay = wire.poll(T0 + 4)
    historical = wire.node.historical(replay.topic, replay.payload)
    assert historical is not None
    wire.send(Message(replay.topic, historical), received=T0 + 5)
    assert (tally.values, tally.historical) == (3, 1)
    tally.on_message(replay.topic, b"\xff\xff\xff", T0 + 6)
    assert tally.unparsable == 4


def test_both_encodings_are_counted_on_their_own(subscriber: ModuleType) -> None:
    tallies = subscriber.Tallies(sparkplug=True)
    wire = Wire(tallies)
    wire.births()
    tallies.start()
    wire.send(wire.poll(T0 + 1), received=T0 + 1.002)
    row = b'{"seq": 7, "value": 1.5, "quality": "good", "ts": "2027-01-15T08:00:01.000Z"}'
    tallies.on_message("bench/lab/bench/line-1/plc-01/hr0", row, T0 + 1.003)
    tallies.stop()
    result = tallies.result()
    assert (result["values"], result["per_key"]) == (1, {"bench/lab/bench/line-1/plc-01/hr0": 1})
    assert result["sparkplug"]["values"] == 3
    assert "bench/lab/bench/line-1/plc-01/hr0" not in result["sparkplug"]["per_key"]
    assert tallies.status_line() == "status keys=4 messages=2"


def test_subscribe_packet_carries_every_filter(subscriber: ModuleType) -> None:
    packet = subscriber.subscribe_packet(["bench/lab/#", "spBv1.0/Bench/#"], 1)
    assert packet[0] == 0x82
    assert packet[2:].endswith(b"\x00\x0bbench/lab/#\x01\x00\x0fspBv1.0/Bench/#\x01")


@pytest.mark.parametrize(("outputs", "listed"), [("sparkplug", ["sparkplug"]), ("both", ["uns-json", "sparkplug"])])
def test_the_generated_tag_map_sets_the_outputs_and_loads(
    tagmaps: ModuleType, tmp_path: Path, outputs: str, listed: list[str]
) -> None:
    text = tagmaps.with_outputs(tagmaps.modbus_1k(broker_url="mqtt://127.0.0.1:1883", port=15020, registers=4,
                                                  interval_ms=100, publish="batch"), outputs)
    assert yaml.safe_load(text)["gateway"]["outputs"] == listed
    path = tmp_path / "tagmap.yaml"
    path.write_text(text, encoding="utf-8")
    gateway = load_plant(path, environ={}).gateway
    assert [str(output) for output in gateway.outputs] == listed
    assert gateway.sparkplug is not None
    assert (gateway.sparkplug.group_id, gateway.sparkplug_edge_node_id) == (tagmaps.SPARKPLUG_GROUP, "bench-modbus")


def test_uns_json_leaves_the_tag_map_as_it_was(tagmaps: ModuleType) -> None:
    text = tagmaps.modbus_1k(broker_url="mqtt://127.0.0.1:1883", port=15020, registers=4, interval_ms=100,
                             publish="tag")
    assert tagmaps.with_outputs(text, "uns-json") == text
