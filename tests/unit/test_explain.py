"""`cellgate check --explain`: the frame-time arithmetic, gappy reads, size limits and per-device load, as tables."""

from __future__ import annotations

import pytest

from gateway.cli import main
from gateway.explain import (
    BROKER_TOPIC_LIMIT_BYTES,
    explain_plant,
    gappy_reads,
    render_explain,
    round_trip_cycle_seconds,
    rtu_cycle_seconds,
    rtu_response_bytes,
    rtu_transaction_seconds,
    size_problems,
    unused_in_plan,
    unused_in_read,
)
from gateway.schema import PUBLISH_OVERHEAD_BYTES
from gateway.sources.modbus_plan import ModbusField, ReadLimits, plan_reads
from gateway.tagmap import Plant
from gateway.tagmap.loader import load_plant, load_plant_from_text
from gateway.vocabulary import DataType, Table
from tests.support.gateway import DEMO_CONFIG


@pytest.mark.parametrize(
    ("count", "bits", "expected"),
    [
        (1, False, 7),  # unit, function, byte count, 2 data bytes, CRC (2)
        (10, False, 25),
        (125, False, 255),
        (1, True, 6),
        (8, True, 6),
        (9, True, 7),
        (2000, True, 255),
    ],
)
def test_rtu_response_bytes(count: int, bits: bool, expected: int) -> None:
    assert rtu_response_bytes(count, bits=bits) == expected


@pytest.mark.parametrize(
    ("baud", "count", "bits", "characters"),
    [
        # request 8 + response (5 + 2n) + two silences of 3.5 characters, 11 bits each
        (9600, 10, False, 8 + 25 + 7),
        (19200, 125, False, 8 + 255 + 7),
        (115200, 1, False, 8 + 7 + 7),
        (9600, 16, True, 8 + 7 + 7),
    ],
)
def test_rtu_transaction_time(baud: int, count: int, bits: bool, characters: float) -> None:
    assert rtu_transaction_seconds(baud, count, bits=bits) == pytest.approx(characters * 11 / baud)


def test_rtu_cycle_adds_up_its_reads() -> None:
    assert rtu_cycle_seconds(9600, [(10, False), (125, False), (16, True)]) == pytest.approx(
        (40 + 270 + 22) * 11 / 9600
    )
    assert rtu_cycle_seconds(9600, []) == 0


@pytest.mark.parametrize(
    ("requests", "concurrency", "rtt_s", "expected"),
    [(12, 1, 0.005, 0.060), (12, 4, 0.005, 0.015), (13, 4, 0.005, 0.020), (0, 1, 0.005, 0.0), (1, 16, 0.05, 0.05)],
)
def test_round_trip_cycle(requests: int, concurrency: int, rtt_s: float, expected: float) -> None:
    assert round_trip_cycle_seconds(requests, concurrency=concurrency, rtt_s=rtt_s) == pytest.approx(expected)


def _field(key: str, address: int, type_: DataType = DataType.INT16, table: Table = Table.HOLDING,
           bit: int | None = None) -> ModbusField:
    return ModbusField(key=key, table=table, address=address, type=type_, bit=bit)


@pytest.mark.parametrize(
    ("fields", "unused", "gappy"),
    [
        # float32 at 0..1, int16 at 10: one read of 11 registers, 8 of them for no tag
        ([_field("a", 0, DataType.FLOAT32), _field("b", 10)], [8], ["holding 0..10: 8 of 11 registers unused"]),
        # two bits of one status word and the same register as a whole: nothing unused
        ([_field("s0", 5, DataType.BOOL, bit=0), _field("s1", 5, DataType.BOOL, bit=1), _field("w", 5)], [0], []),
        # coils 0 and 5: 6 bits read, 4 unused
        ([_field("c0", 0, DataType.BOOL, Table.COIL), _field("c5", 5, DataType.BOOL, Table.COIL)], [4],
         ["coil 0..5: 4 of 6 bits unused"]),
        # 3 of 12 unused is 25 %: reported in the totals, not warned about
        ([_field("a", 0, DataType.UINT64), _field("b", 4, DataType.UINT64), _field("c", 11)], [3], []),
        # holes wider than max_gap split the reads: nothing read in vain
        ([_field("a", 0), _field("b", 100)], [0, 0], []),
    ],
)
def test_unused_registers_and_gappy_reads(fields: list[ModbusField], unused: list[int], gappy: list[str]) -> None:
    plan = plan_reads(fields, unit_id=1, limits=ReadLimits(max_gap=10))
    assert [unused_in_read(request) for request in plan.requests] == unused
    assert gappy_reads(plan) == gappy
    assert unused_in_plan(plan) == (sum(r.count for r in plan.requests), sum(unused))


@pytest.mark.parametrize(
    ("topic_bytes", "payload_bytes", "limit", "expected"),
    [
        (20, 100, 1024, []),
        (BROKER_TOPIC_LIMIT_BYTES + 1, 10, 10**6, ["over the 65535 brokers take"]),
        (20, 1024 - 20 - PUBLISH_OVERHEAD_BYTES, 1024, []),
        (20, 1024 - 20 - PUBLISH_OVERHEAD_BYTES + 1, 1024, ["1025-byte message, over the broker packet limit"]),
    ],
)
def test_size_problems(topic_bytes: int, payload_bytes: int, limit: int, expected: list[str]) -> None:
    problems = size_problems("t" * topic_bytes, b"x" * payload_bytes, packet_limit=limit)
    assert len(problems) == len(expected)
    for problem, text in zip(problems, expected, strict=True):
        assert text in problem


HEAD = """\
gateway: {id: edge-01, enterprise: acme, site: dunkirk}
mqtt: {url: "mqtt://127.0.0.1:1883"%s}
devices:
"""


def _rtu(name: str, *, tags: int, interval_ms: int, baud: int = 9600, port: str = "/dev/ttyUSB0") -> str:
    # max_gap 0 and every other register: one read per tag
    tag_lines = "".join(f"      - {{name: t{n}, address: {2 * n}, type: int16}}\n" for n in range(tags))
    return (
        f"  - name: {name}\n    area: formation\n    line: hall-a\n    protocol: modbus\n    transport: rtu\n"
        f"    unit_id: 1\n    max_gap: 0\n    interval_ms: {interval_ms}\n"
        f"    serial: {{port: {port}, baudrate: {baud}}}\n    tags:\n{tag_lines}"
    )


def _tcp(name: str, *, tags: int, interval_ms: int, concurrency: int = 1, publish: str = "tag") -> str:
    tag_lines = "".join(f"      - {{name: t{n}, address: {3 * n}, type: float32}}\n" for n in range(tags))
    return (
        f"  - name: {name}\n    area: formation\n    line: hall-a\n    protocol: modbus\n    host: 127.0.0.1\n"
        f"    max_gap: 0\n    interval_ms: {interval_ms}\n    max_concurrent_requests: {concurrency}\n"
        f"    publish: {publish}\n    tags:\n{tag_lines}"
    )


def _plant(*devices: str, mqtt: str = "") -> Plant:
    return load_plant_from_text(HEAD % mqtt + "".join(devices))


def test_rtu_device_slower_than_its_interval_is_warned_about() -> None:
    # 30 reads of one register: 30 * 22 characters * 11 bits / 9600 baud = 756 ms > 500 ms
    load = explain_plant(_plant(_rtu("slow", tags=30, interval_ms=500), _rtu("fast", tags=2, interval_ms=1000,
                                                                                 port="/dev/ttyUSB1")))
    slow, fast = load.devices
    assert slow.requests == 30 and slow.cycle_s == pytest.approx(30 * 22 * 11 / 9600)
    assert any("takes about 756 ms at that baud rate, longer than its interval of 500 ms" in w for w in slow.warnings)
    assert fast.warnings == ()
    assert load.warnings == ()


def test_rtu_devices_sharing_a_line_add_up() -> None:
    # each alone needs 60 % of the line (20 reads * 25.2 ms = 504 ms of 840 ms): together 120 %
    load = explain_plant(_plant(_rtu("a", tags=20, interval_ms=840), _rtu("b", tags=20, interval_ms=840)))
    assert all(device.warnings == () for device in load.devices)
    assert load.warnings == ("serial line /dev/ttyUSB0 (a, b) is needed 120% of the time: the devices cannot keep up",)


def test_tcp_devices_sharing_a_connection_add_up() -> None:
    # two units behind one host:port, 12 round trips of 25 ms = 300 ms each every 500 ms: 120 % together
    load = explain_plant(_plant(_tcp("a", tags=12, interval_ms=500), _tcp("b", tags=12, interval_ms=500)), rtt_ms=25)
    assert all(device.warnings == () for device in load.devices)
    assert load.warnings == (
        "connection 127.0.0.1:502 (a, b) is needed 120% of the time: the devices cannot keep up",
    )
    alone = explain_plant(_plant(_tcp("a", tags=12, interval_ms=500)), rtt_ms=25)
    assert alone.warnings == ()


@pytest.mark.parametrize(
    ("concurrency", "rtt_ms", "warned"),
    [(1, 5.0, False), (1, 50.0, True), (4, 50.0, False)],
)
def test_tcp_cycle_from_concurrency_and_round_trip(concurrency: int, rtt_ms: float, warned: bool) -> None:
    # 12 reads of one float32 each every 500 ms: 12 round trips at one request at a time, 3 at four
    load = explain_plant(_plant(_tcp("rack", tags=12, interval_ms=500, concurrency=concurrency)), rtt_ms=rtt_ms)
    (device,) = load.devices
    assert device.cycle_s == pytest.approx(-(-12 // concurrency) * rtt_ms / 1000)
    assert any("longer than its interval of 500 ms" in warning for warning in device.warnings) is warned


def test_rates_per_device_and_in_total() -> None:
    load = explain_plant(_plant(_tcp("per-tag", tags=12, interval_ms=500), _tcp("batch", tags=10, interval_ms=250,
                                                                                  publish="batch")))
    per_tag, batch = load.devices
    assert (per_tag.per_second(per_tag.requests), per_tag.per_second(per_tag.values)) == (24, 24)
    assert per_tag.per_second(per_tag.messages) == 24  # one message per value
    assert batch.per_second(batch.messages) == 4  # one batch per cycle
    assert batch.per_second(batch.values) == 40
    assert per_tag.bytes > 12 * len("acme/dunkirk/formation/hall-a/per-tag/t0")
    assert load.total("values") == 64
    assert load.total("messages") == 28
    assert load.total("bytes") == per_tag.per_second(per_tag.bytes) + batch.per_second(batch.bytes)
    text = render_explain(load, rtt_ms=5)
    assert "  total: 64 requests/s, 64 values/s, 28 messages/s" in text
    assert "no warnings" in text


def test_a_batch_over_the_packet_limit_is_warned_about() -> None:
    load = explain_plant(_plant(_tcp("big", tags=100, interval_ms=1000, publish="batch"),
                                mqtt=", max_packet_size: 2048"))
    (device,) = load.devices
    assert any(
        "acme/dunkirk/formation/hall-a/big/_batch: a" in w and "over the broker packet limit of 2048 bytes" in w
        for w in device.warnings
    ), device.warnings


def test_check_explain_on_the_demo_map(capsys: pytest.CaptureFixture[str]) -> None:
    plant = load_plant(DEMO_CONFIG)
    assert main(["check", "-c", str(DEMO_CONFIG), "--offline", "--explain", "--assume-rtt-ms", "5"]) == 0
    out = capsys.readouterr().out
    values = sum(len(device.tags) * 1000 / device.interval_ms for device in plant.devices if device.enabled)
    assert f", {values:,.0f} values/s," in out.split("  total: ")[1]
    for device in plant.devices:
        assert f"acme/dunkirk/{device.area}/{device.line}/{device.name}: {device.protocol}" in out
    assert "round trip assumed 5 ms" in out
    assert "registers/bits read per cycle" in out
    # with a slow network the Modbus racks cannot keep up
    assert main(["check", "-c", str(DEMO_CONFIG), "--offline", "--explain", "--assume-rtt-ms", "200"]) == 0
    slow = capsys.readouterr().out
    assert "WARNING rack-01: one cycle of 12 request(s) takes about 2400 ms with a 200 ms round trip" in slow


def test_events_add_their_trigger_reads_and_say_what_a_record_costs() -> None:
    # t0..t3 at 0, 3, 6, 9 (max_gap 0: four poll reads); the record spans registers 0..10 and 300: two reads
    device = _tcp("stacker", tags=4, interval_ms=500) + (
        "      - {name: rec_id, address: 300, type: uint16}\n"
        "      - {name: ack, address: 400, type: uint16}\n"
        "    events:\n"
        "      cell:\n"
        "        trigger: {tag: rec_id, on: change}\n"
        "        record: [rec_id, t0, t3]\n"
        "        ack: {tag: ack, value: rec_id}\n"
        "      alarm:\n"
        "        trigger: {tag: t1, on: rise}\n"
        "        record: [t1]\n"
    )
    (load,) = explain_plant(_plant(device)).devices
    assert load.requests == 6 + 2  # six poll reads, plus one trigger read per event per cycle
    assert load.events == ("events on a second connection: 2 trigger read(s) per cycle (in the requests above); "
                           "per record: cell 2 read(s) + 1 ack write, alarm 1 read(s)")
    assert f"    {load.events}" in render_explain(explain_plant(_plant(device)), rtt_ms=5)
    (without,) = explain_plant(_plant(_tcp("stacker", tags=4, interval_ms=500))).devices
    assert without.events is None and without.requests == 4


def test_a_sparkplug_gateway_is_sized_by_its_ddata_and_a_dbirth_over_the_packet_limit_is_warned_about() -> None:
    sparkplug = ("gateway: {id: edge-01, enterprise: acme, site: dunkirk, outputs: [sparkplug], "
                 "sparkplug: {group_id: G}}\n")
    text = HEAD.replace(HEAD.splitlines()[0] + "\n", sparkplug) % ", max_packet_size: 3000" + _tcp(
        "rack", tags=200, interval_ms=500)
    (device,) = explain_plant(load_plant_from_text(text)).devices
    assert device.per_second(device.messages) == 2  # one DDATA per cycle, not a message per value
    assert device.per_second(device.values) == 400
    dbirth = [w for w in device.warnings if "spBv1.0/G/DBIRTH/edge-01/rack: a" in w]
    assert len(dbirth) == 1 and "a Sparkplug DBIRTH cannot be split" in dbirth[0], device.warnings
    both = text.replace("outputs: [sparkplug]", "outputs: [uns-json, sparkplug]")
    (joint,) = explain_plant(load_plant_from_text(both)).devices
    assert joint.per_second(joint.messages) == 200 * 2 + 2  # a message per value and a DDATA per cycle
