"""CPU per value of the gateway's pure hot path: raw readings -> transform -> topic + JSON payload.

No sockets: this isolates what Cellgate itself spends per value (the MQTT client and the sources are
measured by benchmarks/run.py). Prints one JSON object with microseconds per value for per-tag and batch
messages, for changing values (every reading published) and for unchanged ones (deadband suppresses them).
Run: ``.venv/bin/python benchmarks/hot_path.py [--tags 1000] [--cycles 200]``.
"""

from __future__ import annotations

import argparse
import json
import time

from gateway.outbound import DeviceOutbound, PublishMode, TagOutput
from gateway.schema import EquipmentTopics, TagMeta
from gateway.sources.base import RawReading
from gateway.transform import TagRules


def outbound(tags: int, mode: PublishMode, *, deadband: float | None) -> DeviceOutbound:
    outputs = [
        TagOutput(
            name=f"ch{n:03d}/voltage",
            unit="V",
            rules=TagRules(minimum=0.0, maximum=5.0, deadband=deadband),
            meta=TagMeta(tag=f"ch{n:03d}/voltage", type="float32", unit="V"),
        )
        for n in range(tags)
    ]
    topics = EquipmentTopics.of(enterprise="acme", site="dunkirk", area="formation", line="hall-a", equipment="rack-01")
    return DeviceOutbound(device="rack-01", protocol="modbus", topics=topics, mode=mode, interval_ms=1000, tags=outputs)


def measure(tags: int, cycles: int, mode: PublishMode, *, changing: bool, repeats: int = 5) -> float:
    """The best of ``repeats`` runs: the least disturbed by whatever else the machine is doing."""
    return min(_measure_once(tags, cycles, mode, changing=changing) for _ in range(repeats))


def _measure_once(tags: int, cycles: int, mode: PublishMode, *, changing: bool) -> float:
    device = outbound(tags, mode, deadband=0.001)
    names = device.tag_names
    now = time.time()
    step = 0.01 if changing else 0.0
    batches = [
        [RawReading(name, 3.0 + cycle * step + n * 1e-6, now + cycle) for n, name in enumerate(names)]
        for cycle in range(cycles)
    ]
    device.messages(batches[0], now)  # first publish of every tag
    started = time.process_time()
    for cycle, readings in enumerate(batches[1:], start=1):
        device.messages(readings, now + cycle)
    return (time.process_time() - started) / ((cycles - 1) * tags) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=200)
    args = parser.parse_args()
    result = {
        "scenario": "hot-path",
        "tags": args.tags,
        "us_per_value": {
            "tag_changing": round(measure(args.tags, args.cycles, PublishMode.TAG, changing=True), 3),
            "tag_unchanged": round(measure(args.tags, args.cycles, PublishMode.TAG, changing=False), 3),
            "batch_changing": round(measure(args.tags, args.cycles, PublishMode.BATCH, changing=True), 3),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
