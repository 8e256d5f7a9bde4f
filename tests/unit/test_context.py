"""Context on samples (README "Traceability: context"): the tag map's ``context:`` keys, the latest good value of
each context tag on every sample (``ctx`` per tag, ``ctx`` + ``instance_ctx`` per batch), ``_meta`` listing the
keys, and a device without context publishing exactly what it did before.

Tag-map errors are in the corpus (tests/cases/tagmap_errors/context_*), run by test_tagmap_errors.py and
test_cli_check.py (FILE:LINE:COL, exit 2).
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.assembly import build_outbound, context_plan, modbus_plan
from gateway.encoders.sparkplug import SparkplugDeviceEncoder, SparkplugEdgeNode
from gateway.encoders.uns_json import UnsJsonDeviceEncoder, historical, tag_payload_dict
from gateway.outbound import ContextPlan, DeviceOutbound, Message, TagOutput
from gateway.schema import EquipmentTopics, Quality, Sample, SampleContext, TagMeta
from gateway.sources.base import RawReading
from gateway.tagmap import ModbusDevice, Plant, load_plant
from gateway.transform import TagRules
from gateway.vocabulary import PublishMode
from tests.support.gateway import DEMO_CONFIG
from tests.support.tagmap import HEADER, load

RACK = (
    HEADER
    + """\
templates:
  channel:
    - {name: voltage, address: 0, type: float32, unit: V}
    - {name: cell_id, address: 2, type: string, length: 8}
  alarm:
    - {name: protection_alarm, table: coil, address: 0, type: bool}
devices:
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    publish: PUBLISH
    context: {recipe: recipe/version}
    tags:
      - {name: recipe/version, address: 900, type: uint16}
      - {name: ambient, address: 910, type: float32, unit: Cel}
    repeat:
      - {template: channel, count: 2, start: 0, stride: 10, name: 'ch{n:03d}', context: {cell: cell_id}}
      - {template: alarm, count: 2, start: 100, stride: 1, name: 'ch{n:03d}', context: {cell: cell_id}}
"""
)


def rack(mode: str = "tag") -> tuple[Plant, DeviceOutbound]:
    plant = load(RACK.replace("PUBLISH", mode))
    return plant, build_outbound(plant, plant.devices[0])


def bodies(messages: list[Message]) -> dict[str, dict[str, Any]]:
    return {message.topic.rsplit("rack-01/", 1)[1]: orjson.loads(message.payload) for message in messages}


def reading(tag: str, value: object, quality: Quality = Quality.GOOD, status: str | None = None) -> RawReading:
    return RawReading(tag=tag, value=value, ts=1.0, quality=quality, status=status)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- tag map


def test_the_plant_keeps_device_and_repeat_context() -> None:
    plant, _ = rack()
    device = plant.devices[0]
    assert device.context == {"recipe": "recipe/version"}
    assert [(r.name, r.instances, r.tags, r.keys) for r in device.repeat_context] == [
        ("ch{n:03d}", ("ch001", "ch002"), ("voltage", "cell_id"), {"cell": "cell_id"}),
        ("ch{n:03d}", ("ch001", "ch002"), ("protection_alarm",), {"cell": "cell_id"}),
    ]
    plan = context_plan(device)
    assert plan is not None and plan.described == {"recipe": "recipe/version", "cell": "ch{n:03d}/cell_id"}
    # The alarm repeat's instances take their cell from the channel repeat's tag of the same instance.
    assert [(i.name, dict(i.keys), list(i.members)) for i in plan.instances][2] == (
        "ch001", {"cell": "ch001/cell_id"}, ["ch001/protection_alarm"]
    )


def test_a_device_without_context_has_no_plan() -> None:
    plant = load(RACK.replace("PUBLISH", "tag").replace("    context: {recipe: recipe/version}\n", "")
                 .replace(", context: {cell: cell_id}", ""))
    assert context_plan(plant.devices[0]) is None
    assert build_outbound(plant, plant.devices[0]).context is None


# ----------------------------------------------------------------------------------------- per tag


def test_every_sample_carries_its_device_and_instance_context() -> None:
    _, out = rack()
    got = bodies(out.messages([
        reading("ch001/voltage", 3.7),  # before its context tag in the same call: the call's values count
        reading("ch001/cell_id", "CELL-001"),
        reading("ch002/voltage", 3.6),
        reading("ch001/protection_alarm", False),
        reading("recipe/version", 3),
        reading("ambient", 21.5),
    ], now=2.0))
    assert got["ch001/voltage"]["ctx"] == {"recipe": 3, "cell": "CELL-001"}
    assert got["ch001/cell_id"]["ctx"] == {"recipe": 3, "cell": "CELL-001"}
    assert got["ch001/protection_alarm"]["ctx"] == {"recipe": 3, "cell": "CELL-001"}
    assert got["ch002/voltage"]["ctx"] == {"recipe": 3}  # ch002/cell_id not read yet: no key
    assert got["ambient"]["ctx"] == {"recipe": 3}
    assert got["ch001/voltage"]["value"] == 3.7 and got["ch001/voltage"]["seq"] == 1


def test_a_bad_context_tag_keeps_the_last_good_value_and_a_change_is_published() -> None:
    _, out = rack()
    out.messages([reading("ch001/cell_id", "CELL-001"), reading("recipe/version", 3)], now=1.0)
    lost = bodies(out.messages([reading("ch001/cell_id", None, Quality.BAD, "comm_failure"),
                                reading("ch001/voltage", 3.7)], now=2.0))
    assert lost["ch001/cell_id"]["quality"] == "bad"
    assert lost["ch001/cell_id"]["ctx"] == {"recipe": 3, "cell": "CELL-001"}
    assert lost["ch001/voltage"]["ctx"] == {"recipe": 3, "cell": "CELL-001"}
    changed = bodies(out.messages([reading("ch001/cell_id", "CELL-002"), reading("ch001/voltage", 3.8)], now=3.0))
    # The new cell id is itself a sample, and it is the context of the values read with it.
    assert changed["ch001/cell_id"]["value"] == "CELL-002"
    assert changed["ch001/voltage"]["ctx"] == {"recipe": 3, "cell": "CELL-002"}
    assert out.context is not None and out.context.of("ch001/voltage") == {"recipe": 3, "cell": "CELL-002"}


def test_no_ctx_member_until_a_key_has_a_value() -> None:
    _, out = rack()
    got = bodies(out.messages([reading("ambient", 21.5), reading("ch001/cell_id", "CELL-001")], now=1.0))
    assert "ctx" not in got["ambient"]  # recipe/version not read yet
    assert got["ch001/cell_id"]["ctx"] == {"cell": "CELL-001"}
    _, batch = rack("batch")
    (message,) = batch.messages([reading("ambient", 21.5)], now=1.0)
    assert set(orjson.loads(message.payload)) == {"ts", "seq", "samples"}


def test_an_uncertain_context_value_is_not_taken() -> None:
    _, out = rack()
    out.messages([reading("recipe/version", 3)], now=1.0)
    got = bodies(out.messages([reading("recipe/version", 4, Quality.UNCERTAIN, "out_of_range"),
                               reading("ambient", 20.0)], now=2.0))
    assert got["ambient"]["ctx"] == {"recipe": 3}


def test_a_replayed_payload_keeps_its_context() -> None:
    _, out = rack()
    message = out.messages([reading("recipe/version", 3)], now=1.0)[0]
    assert orjson.loads(historical(message.topic, message.payload)) == {
        **orjson.loads(message.payload), "historical": True
    }


# ------------------------------------------------------------------------------------------- batch


def test_a_batch_carries_the_context_once() -> None:
    _, out = rack("batch")
    (message,) = out.messages([
        reading("recipe/version", 3),
        reading("ch001/cell_id", "CELL-001"),
        reading("ch001/voltage", 3.7),
        reading("ch002/voltage", 3.6),
    ], now=2.0)
    body = orjson.loads(message.payload)
    assert body["ctx"] == {"recipe": 3}
    assert body["instance_ctx"] == {"ch001": {"cell": "CELL-001"}}  # ch002 has no cell id yet
    assert all(set(row) == {"tag", "value", "unit", "quality", "ts"} for row in body["samples"])
    assert body["seq"] == 1 and len(body["samples"]) == 4


# -------------------------------------------------------------------------------- _meta and no context


def test_meta_lists_the_context_keys() -> None:
    _, out = rack()
    meta = orjson.loads(out.meta_messages()[0].payload)
    assert meta["context"] == {"recipe": "recipe/version", "cell": "ch{n:03d}/cell_id"}


def test_a_device_without_context_publishes_what_it_did_before() -> None:
    plant = load(RACK.replace("PUBLISH", "tag").replace("    context: {recipe: recipe/version}\n", "")
                 .replace(", context: {cell: cell_id}", ""))
    out = build_outbound(plant, plant.devices[0])
    messages = out.messages([reading("recipe/version", 3), reading("ch001/voltage", 3.7)], now=2.0)
    expected = [
        tag_payload_dict(Sample("rack-01", "recipe/version", 3, Quality.GOOD, 1.0), unit=None, seq=1),
        tag_payload_dict(Sample("rack-01", "ch001/voltage", 3.7, Quality.GOOD, 1.0), unit="V", seq=1),
    ]
    assert [orjson.loads(m.payload) for m in messages] == expected
    assert "context" not in orjson.loads(out.meta_messages()[0].payload)


def test_an_encoder_without_context_publishes_the_context_tags_as_ordinary_tags() -> None:
    plant, _ = rack("batch")
    device = plant.devices[0]
    outputs = [
        TagOutput(name=tag.name, unit=tag.unit, rules=TagRules(), meta=TagMeta(tag=tag.name, type=str(tag.type)))
        for tag in device.tags
    ]
    topics = EquipmentTopics.of(enterprise="acme", site="dunkirk", area="formation", line="hall-a", equipment="rack")

    def sparkplug(context: ContextPlan | None) -> DeviceOutbound:
        node = SparkplugEdgeNode(group_id="dunkirk", edge_node_id="gw-01")
        encoder = SparkplugDeviceEncoder(
            node=node, device="rack-01", catalogue=[o.meta for o in outputs], alias_base=1
        )
        return DeviceOutbound(
            device="rack-01", protocol="modbus", topics=topics, mode=PublishMode.BATCH, interval_ms=1000,
            tags=outputs, encoder=encoder, context=context,
        )

    readings = [reading("recipe/version", 3), reading("ch001/cell_id", "CELL-001"), reading("ch001/voltage", 3.7)]
    with_context, without = sparkplug(context_plan(device)), sparkplug(None)
    sent = with_context.messages(readings, now=2.0)
    assert sent == without.messages(readings, now=2.0)  # the context tags are metrics like any other
    assert with_context.context is not None and with_context.context.of("ch001/voltage") == {
        "recipe": 3, "cell": "CELL-001"
    }


def test_with_both_outputs_the_json_messages_carry_the_context_and_sparkplug_its_metrics() -> None:
    plant = load(RACK.replace("PUBLISH", "tag").replace(
        "gateway: {id: gw1, enterprise: acme, site: dunkirk}",
        "gateway: {id: gw1, enterprise: acme, site: dunkirk, outputs: [uns-json, sparkplug],"
        " sparkplug: {group_id: dunkirk}}"))
    node = SparkplugEdgeNode(group_id="dunkirk", edge_node_id="gw1")
    both = build_outbound(plant, plant.devices[0], sparkplug=node)
    assert both.sparkplug is not None
    both.sparkplug.birth(1.0)  # a Sparkplug device publishes DDATA once born (after CONNACK)
    sent = both.messages([reading("recipe/version", 3), reading("ch001/cell_id", "CELL-001"),
                          reading("ch001/voltage", 3.7)], now=2.0)
    json_messages = [m for m in sent if not m.topic.startswith("spBv1.0/")]
    assert {m.topic.rsplit("rack-01/", 1)[1] for m in json_messages} == {"recipe/version", "ch001/cell_id",
                                                                        "ch001/voltage"}
    assert orjson.loads(next(m for m in json_messages if m.topic.endswith("ch001/voltage")).payload)["ctx"] == {
        "recipe": 3, "cell": "CELL-001"}
    assert any(m.topic.startswith("spBv1.0/dunkirk/DDATA/gw1/") for m in sent)


# ------------------------------------------------------------------------ payload = reference + ctx

_values = st.one_of(st.integers(-(2**31), 2**31), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12), st.booleans())
_contexts = st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True), _values, max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    value=st.one_of(_values, st.just(float("nan"))),
    quality=st.sampled_from(list(Quality)),
    device=_contexts,
    instance=_contexts,
    in_instance=st.booleans(),
    unit=st.one_of(st.none(), st.sampled_from(["V", "Cel", "A.h"])),
)
def test_a_tag_payload_in_context_is_the_plain_payload_plus_ctx(
    value: Any, quality: Quality, device: dict[str, Any], instance: dict[str, Any], in_instance: bool,
    unit: str | None,
) -> None:
    topics = EquipmentTopics.of(enterprise="e", site="s", area="a", line="l", equipment="d")
    encoder = UnsJsonDeviceEncoder(
        device="d", protocol="modbus", topics=topics, mode=PublishMode.TAG, interval_ms=1000,
        units={"t": unit}, catalogue=[TagMeta(tag="t", type="float32")], max_packet_bytes=1 << 20,
    )
    instance = {key: v for key, v in instance.items() if key not in device}
    context = SampleContext(device, (instance,), ("ch001",), {"t": 0} if in_instance else {})
    status = None if quality is Quality.GOOD else "comm_failure"
    sample = Sample("d", "t", value, quality, 1234.5, status)
    (message,) = encoder.encode_in_context([sample], context, now=1235.0)
    expected = tag_payload_dict(sample, unit=unit, seq=1)
    whole = {**device, **instance} if in_instance else device
    if whole:  # no key with a value yet: no ctx member
        expected["ctx"] = whole
    assert orjson.loads(message.payload) == orjson.loads(orjson.dumps(expected))


def test_the_demo_context_tags_are_read_with_the_values() -> None:
    """Every context tag of the demo map is a tag its device reads: in the Modbus read plan, one poll cycle with
    the values; for OPC UA among the device's monitored (or polled) tags."""
    plant = load_plant(DEMO_CONFIG)
    with_context = 0
    for device in plant.devices:
        plan = context_plan(device)
        if plan is None:
            continue
        with_context += 1
        named = set(plan.device.values()) | {tag for i in plan.instances for tag in i.keys.values()}
        read = set(modbus_plan(device).keys) if isinstance(device, ModbusDevice) else {t.name for t in device.tags}
        assert named and named <= read, (device.name, named - read)
    assert with_context == 5  # coater, calender, stacker and both racks
