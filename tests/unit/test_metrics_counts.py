"""The counters behind cellgate_samples_total and cellgate_device_reads_total: what each source and the outbound side
count, and how the collector turns them into bounded families."""

from __future__ import annotations

from dataclasses import replace

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import QUALITIES, READ_RESULTS, DeviceState, build_registry
from gateway.outbound import DeviceOutbound, PublishMode, SampleCounts, TagOutput
from gateway.schema import EquipmentTopics, Quality, TagMeta
from gateway.sources.base import RawReading
from gateway.sources.modbus import UnitStats
from gateway.sources.opcua import OpcUaSourceStats
from gateway.transform import TagRules
from tests.unit.test_operations import STATE, device


def outbound() -> DeviceOutbound:
    topics = EquipmentTopics.of(enterprise="e", site="s", area="a", line="l", equipment="rack")
    tags = [
        TagOutput(
            name="volts", unit="V", rules=TagRules(minimum=0, maximum=5), meta=TagMeta(tag="volts", type="float32")
        ),
        TagOutput(name="amps", unit="A", rules=TagRules(), meta=TagMeta(tag="amps", type="float32")),
        TagOutput(name="alarm", unit=None, rules=TagRules(), meta=TagMeta(tag="alarm", type="bool")),
    ]
    return DeviceOutbound(device="rack", protocol="modbus", topics=topics, mode=PublishMode.TAG, interval_ms=1000,
                          tags=tags)  # fmt: skip


def families(state_devices: tuple[DeviceState, ...]) -> dict[str, dict[tuple[str, ...], float]]:
    state = replace(STATE, devices=state_devices)
    text = generate_latest(build_registry(lambda: state)).decode()
    return {
        f.name: {tuple(s.labels.values()): s.value for s in f.samples}
        for f in text_string_to_metric_families(text)
        if f.name in ("cellgate_samples", "cellgate_device_reads")
    }


def test_published_samples_are_counted_by_quality_and_suppressed_ones_are_not() -> None:
    out = outbound()
    out.messages([RawReading("volts", 3.7, 1.0), RawReading("amps", 1.5, 1.0), RawReading("alarm", False, 1.0)], 1.0)
    # Out of range -> uncertain; NaN -> bad; a value nobody could read -> bad.
    out.messages([RawReading("volts", 9.0, 2.0), RawReading("amps", float("nan"), 2.0),
                  RawReading("alarm", None, 2.0, Quality.BAD, "comm_failure")], 2.0)  # fmt: skip
    # The same bad reading again is not republished (plain polling reports a repeated bad status once): not counted.
    out.messages([RawReading("alarm", None, 3.0, Quality.BAD, "comm_failure")], 3.0)
    assert out.sample_counts == SampleCounts(good=3, uncertain=1, bad=2)
    exported = families((replace(device("rack", connected=True), samples=out.sample_counts),))["cellgate_samples"]
    assert exported == {("rack", "good"): 3, ("rack", "uncertain"): 1, ("rack", "bad"): 2}


def test_every_device_reports_every_quality_from_zero() -> None:
    exported = families((replace(device("rack", connected=True), samples=SampleCounts()),))["cellgate_samples"]
    assert sorted(quality for _, quality in exported) == sorted(QUALITIES)
    assert set(exported.values()) == {0}


def test_reads_are_one_family_with_a_bounded_result_per_source() -> None:
    modbus = UnitStats(reads_ok=40, comm_failures=5, timeouts=2, exception_responses=3, request_errors=1)
    opcua = OpcUaSourceStats(reads_ok=7, fast_publish_responses=10, asyncua_publish_responses=2, read_timeouts=1,
                             read_errors=4, connect_failures=6)  # fmt: skip
    exported = families((
        replace(device("rack", connected=True), source_stats=modbus),
        replace(device("coater", connected=True), protocol="opcua", source_stats=opcua),
        device("no-stats-yet", connected=None),
    ))["cellgate_device_reads"]  # fmt: skip
    assert exported == {
        ("rack", "ok"): 40, ("rack", "timeout"): 2, ("rack", "connection_error"): 3, ("rack", "exception"): 3,
        ("rack", "decode_error"): 1,
        ("coater", "ok"): 19, ("coater", "timeout"): 1, ("coater", "error"): 4, ("coater", "connection_error"): 6,
    }  # fmt: skip
    assert {result for _, result in exported} <= set(READ_RESULTS)
