"""CPU per value of the gateway's pure hot path: raw readings -> transform -> topic + JSON payload.

No sockets: this isolates what Cellgate itself spends per value (the MQTT client and the sources are
measured by benchmarks/run.py). Prints one JSON object with microseconds per value for per-tag and batch
messages (and Sparkplug B DDATA beside the batch), for changing values (every reading published) and for
unchanged ones (deadband suppresses them), for changing values on a device with context (``ctx`` on every
sample, from two of its tags that change every cycle: the worst case, as context normally changes rarely),
and for batches that start from Modbus register bytes (decode + transform + encode, as a poll does): the
``modbus-1k`` layout (one uint16 per register, plain polling) and the ``hall`` one (8 tags of float32, scaled
int16, uint16 and uint32 in each 16-register channel); and ``modbus-1k`` per tag from the register bytes, what
``benchmarks/run.py --scenario modbus-1k --mode tag`` has the gateway do before its MQTT client, in total and
by stage (decode, transform, encode, hand-over to the sink).
``--gc gateway`` (the default) sets the garbage collector as ``cellgate run`` does after start-up
(``settle_garbage_collector``: the inputs frozen, a young threshold of 50,000); ``--gc default`` keeps Python's
(threshold 700), under which collections over the prepared inputs take much of the time measured.
Run: ``.venv/bin/python benchmarks/hot_path.py [--tags 1000] [--cycles 200] [--gc gateway|default]``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import struct
import time
from collections.abc import Callable, Iterator

from gateway.encoders.sparkplug import SparkplugDeviceEncoder, SparkplugEdgeNode
from gateway.outbound import ContextPlan, DeviceOutbound, PublishMode, TagOutput, sink_pairs
from gateway.process_tuning import settle_garbage_collector
from gateway.schema import EquipmentTopics, TagMeta
from gateway.sources.base import RawReading
from gateway.sources.modbus_plan import ModbusField, ReadPlan, ValueType, plan_reads
from gateway.transform import TagRules

TOPICS = EquipmentTopics.of(enterprise="acme", site="dunkirk", area="formation", line="hall-a", equipment="rack-01")
# One hall channel (benchmarks/tagmaps.py HALL_CHANNEL): (name, register offset, type, scale, unit).
HALL_CHANNEL: tuple[tuple[str, int, ValueType, float, str | None], ...] = (
    ("voltage", 0, "float32", 1.0, "V"),
    ("current", 2, "float32", 1.0, "A"),
    ("capacity", 4, "float32", 1.0, "A.h"),
    ("energy", 6, "float32", 1.0, "W.h"),
    ("temperature", 8, "int16", 0.1, "Cel"),
    ("step", 9, "uint16", 1.0, None),
    ("status", 10, "uint16", 1.0, None),
    ("cell_time", 11, "uint32", 1.0, "s"),
)


def outbound(
    tags: int, mode: PublishMode, *, deadband: float | None, sparkplug: bool = False, context: bool = False
) -> DeviceOutbound:
    """``sparkplug``: the device's DDATA (one per call, by alias) instead of UNS JSON. ``context``: every sample
    carries ``ctx`` with the device's lot and recipe (the first two of the ``tags`` values are those tags)."""
    outputs = [
        TagOutput(
            name=f"ch{n:03d}/voltage",
            unit="V",
            rules=TagRules(minimum=0.0, maximum=5.0, deadband=deadband),
            meta=TagMeta(tag=f"ch{n:03d}/voltage", type="float32", unit="V"),
        )
        for n in range(tags)
    ]
    plan = ContextPlan(device={"lot": "ch000/voltage", "recipe": "ch001/voltage"}) if context else None
    encoder = None
    if sparkplug:
        node = SparkplugEdgeNode(group_id="dunkirk", edge_node_id="gw-01")
        encoder = SparkplugDeviceEncoder(node=node, device="rack-01", catalogue=[o.meta for o in outputs], alias_base=1)
        encoder.birth(0.0)  # a device publishes DDATA only once born
    return DeviceOutbound(
        device="rack-01", protocol="modbus", topics=TOPICS, mode=mode, interval_ms=1000, tags=outputs, encoder=encoder,
        context=plan,
    )


def measure(
    tags: int,
    cycles: int,
    mode: PublishMode,
    *,
    changing: bool,
    repeats: int = 5,
    sparkplug: bool = False,
    context: bool = False,
    gateway_gc: bool = True,
) -> float:
    """The best of ``repeats`` runs: the least disturbed by whatever else the machine is doing."""
    return min(
        _measure_once(
            tags, cycles, mode, changing=changing, sparkplug=sparkplug, context=context, gateway_gc=gateway_gc
        )
        for _ in range(repeats)
    )


def _measure_once(
    tags: int, cycles: int, mode: PublishMode, *, changing: bool, sparkplug: bool, context: bool, gateway_gc: bool
) -> float:
    device = outbound(tags, mode, deadband=0.001, sparkplug=sparkplug, context=context)
    names = device.tag_names
    now = time.time()
    step = 0.01 if changing else 0.0
    batches = [
        [RawReading(name, 3.0 + cycle * step + n * 1e-6, now + cycle) for n, name in enumerate(names)]
        for cycle in range(cycles)
    ]
    device.messages(batches[0], now)  # first publish of every tag
    with _collector(gateway_gc):
        started = time.process_time()
        for cycle, readings in enumerate(batches[1:], start=1):
            device.messages(readings, now + cycle)
        return (time.process_time() - started) / ((cycles - 1) * tags) * 1e6


def modbus_1k_device(tags: int, mode: PublishMode = PublishMode.BATCH) -> tuple[ReadPlan, DeviceOutbound]:
    """``tags`` uint16 holding registers at 0.., published in batches (or per tag), every reading (no deadband)."""
    names = [f"hr{n:05d}/value" for n in range(tags)]
    plan = plan_reads(
        [ModbusField(key=name, table="holding", address=n, type="uint16") for n, name in enumerate(names)], unit_id=1
    )
    outputs = [
        TagOutput(name=name, unit=None, rules=TagRules(), meta=TagMeta(tag=name, type="uint16")) for name in names
    ]
    device = DeviceOutbound(device="plc-01", protocol="modbus", topics=TOPICS, mode=mode, interval_ms=10, tags=outputs)
    return plan, device


def modbus_1k_tag_device(tags: int) -> tuple[ReadPlan, DeviceOutbound]:
    """``modbus_1k_device`` published per tag: the ``modbus-1k --mode tag`` benchmark's device."""
    return modbus_1k_device(tags, PublishMode.TAG)


def hall_device(tags: int) -> tuple[ReadPlan, DeviceOutbound]:
    """``tags // 8`` hall channels from register 1000 on, 16 registers apart, published in batches."""
    fields: list[ModbusField] = []
    outputs: list[TagOutput] = []
    for channel in range(tags // len(HALL_CHANNEL)):
        for name, offset, value_type, scale, unit in HALL_CHANNEL:
            tag = f"ch{channel + 1:03d}/{name}"
            fields.append(ModbusField(key=tag, table="holding", address=1000 + 16 * channel + offset, type=value_type))
            outputs.append(
                TagOutput(name=tag, unit=unit, rules=TagRules(scale=scale), meta=TagMeta(tag=tag, type=value_type))
            )
    device = DeviceOutbound(
        device="rack-01", protocol="modbus", topics=TOPICS, mode=PublishMode.BATCH, interval_ms=1000, tags=outputs
    )
    return plan_reads(fields, unit_id=1), device


def measure_from_registers(
    build: Callable[[int], tuple[ReadPlan, DeviceOutbound]],
    tags: int,
    cycles: int,
    *,
    repeats: int = 5,
    gateway_gc: bool = True,
) -> float:
    """Register bytes of every read -> ``decode_block`` -> messages, as one poll cycle; the best of ``repeats``."""
    return min(_measure_from_registers_once(build, tags, cycles, gateway_gc) for _ in range(repeats))


def _measure_from_registers_once(
    build: Callable[[int], tuple[ReadPlan, DeviceOutbound]], tags: int, cycles: int, gateway_gc: bool
) -> float:
    plan, device = build(tags)
    values = len(plan.keys)
    now = time.time()
    # Every register changes every cycle (as the bench servers do); 0x4040 + n keeps float32s finite.
    responses = [
        [(request, struct.pack(f">{request.count}H", *_registers(request.count, cycle))) for request in plan.requests]
        for cycle in range(cycles)
    ]

    def poll(cycle: int) -> None:
        ts = now + cycle
        readings: list[RawReading] = []
        for request, block in responses[cycle]:
            readings += request.decode_block(block, ts=ts)
        device.messages(readings, ts)

    poll(0)  # first publish of every tag
    with _collector(gateway_gc):
        started = time.process_time()
        for cycle in range(1, cycles):
            poll(cycle)
        return (time.process_time() - started) / ((cycles - 1) * values) * 1e6


def measure_stages(tags: int, cycles: int, *, repeats: int = 5, gateway_gc: bool = True) -> dict[str, float]:
    """``tag_from_registers_modbus_1k`` split by stage, each the best of ``repeats``: ``decode`` (register bytes ->
    RawReadings), ``transform`` (-> Samples, ``DeviceOutbound.samples``), ``encode`` (the sample counts and the
    encoder: -> Messages) and ``hand_over`` (-> the sink's (topic, payload) pairs, ``sink_pairs``)."""
    runs = [_measure_stages_once(tags, cycles, gateway_gc) for _ in range(repeats)]
    return {stage: round(min(run[stage] for run in runs), 3) for stage in runs[0]}


def _measure_stages_once(tags: int, cycles: int, gateway_gc: bool) -> dict[str, float]:
    plan, device = modbus_1k_tag_device(tags)
    values = len(plan.keys)
    now = time.time()
    responses = [
        [(request, struct.pack(f">{request.count}H", *_registers(request.count, cycle))) for request in plan.requests]
        for cycle in range(cycles)
    ]
    spent = dict.fromkeys(("decode", "transform", "encode", "hand_over"), 0.0)
    clock = time.process_time
    with _collector(gateway_gc):
        for cycle in range(cycles):
            ts = now + cycle
            started = clock()
            readings: list[RawReading] = []
            for request, block in responses[cycle]:
                readings += request.decode_block(block, ts=ts)
            decoded = clock()
            samples = device.samples(readings, ts)
            transformed = clock()
            device.sample_counts.add(samples)
            messages = device.encoder.encode(samples, ts)
            encoded = clock()
            sink_pairs(messages)
            handed = clock()
            if cycle:  # the first publish of every tag is not measured
                spent["decode"] += decoded - started
                spent["transform"] += transformed - decoded
                spent["encode"] += encoded - transformed
                spent["hand_over"] += handed - encoded
    return {stage: seconds / ((cycles - 1) * values) * 1e6 for stage, seconds in spent.items()}


@contextlib.contextmanager
def _collector(gateway_gc: bool) -> Iterator[None]:
    """With ``gateway_gc``: the collector as the gateway runs it (what was built so far frozen, young threshold
    50,000) while measuring, then as it was (unfrozen, so each measurement's inputs can be freed)."""
    if not gateway_gc:
        yield
        return
    threshold = gc.get_threshold()
    settle_garbage_collector()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def _registers(count: int, cycle: int) -> list[int]:
    return [(0x4040 + cycle + n) % 0x10000 for n in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--gc", choices=("gateway", "default"), default="gateway",
                        help="the garbage collector as cellgate run sets it (default), or Python's default")
    args = parser.parse_args()
    gateway_gc = args.gc == "gateway"
    tags, cycles = args.tags, args.cycles

    def of(mode: PublishMode, **options: bool) -> float:
        return round(measure(tags, cycles, mode, gateway_gc=gateway_gc, **options), 3)

    def registers(build: Callable[[int], tuple[ReadPlan, DeviceOutbound]]) -> float:
        return round(measure_from_registers(build, tags, cycles, gateway_gc=gateway_gc), 3)

    result = {
        "scenario": "hot-path",
        "tags": tags,
        "gc": args.gc,
        "us_per_value": {
            "tag_changing": of(PublishMode.TAG, changing=True),
            "tag_unchanged": of(PublishMode.TAG, changing=False),
            "batch_changing": of(PublishMode.BATCH, changing=True),
            "tag_changing_context": of(PublishMode.TAG, changing=True, context=True),
            "batch_changing_context": of(PublishMode.BATCH, changing=True, context=True),
            "sparkplug_ddata_changing": of(PublishMode.BATCH, changing=True, sparkplug=True),
            "batch_from_registers_modbus_1k": registers(modbus_1k_device),
            "batch_from_registers_hall": registers(hall_device),
            "tag_from_registers_modbus_1k": registers(modbus_1k_tag_device),
        },
        "tag_from_registers_modbus_1k_stages": measure_stages(tags, cycles, gateway_gc=gateway_gc),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
