from __future__ import annotations

import orjson

from gateway.encoders.uns_json import encode_batch_payload
from gateway.outbound import DeviceOutbound, Message, PublishMode, TagOutput, sink_pairs
from gateway.schema import PUBLISH_OVERHEAD_BYTES, EquipmentTopics, Quality, TagMeta
from gateway.sources.base import RawReading
from gateway.transform import TagRules

TOPICS = EquipmentTopics.of(enterprise="e", site="s", area="a", line="l", equipment="rack")


def outbound(mode: PublishMode) -> DeviceOutbound:
    tags = [
        TagOutput(name="ch001/voltage", unit="V", rules=TagRules(), meta=TagMeta(tag="ch001/voltage", type="float32")),
        TagOutput(name="ch001/temp", unit="Cel", rules=TagRules(scale=0.1, deadband=0.5),
                  meta=TagMeta(tag="ch001/temp", type="int16", unit="Cel")),
    ]
    return DeviceOutbound(device="rack", protocol="modbus", topics=TOPICS, mode=mode, interval_ms=1000, tags=tags)


def cycle(volts: float, temp_raw: int, ts: float) -> list[RawReading]:
    return [RawReading(tag="ch001/voltage", value=volts, ts=ts), RawReading(tag="ch001/temp", value=temp_raw, ts=ts)]


def test_tag_mode_seq_counts_per_topic_and_deadband_skips() -> None:
    out = outbound(PublishMode.TAG)
    first = out.messages(cycle(3.7, 250, 1.0), now=1.0)
    second = out.messages(cycle(3.8, 252, 2.0), now=2.0)  # 25.2 vs 25.0: inside the 0.5 deadband
    assert [m.topic for m in first] == ["e/s/a/l/rack/ch001/voltage", "e/s/a/l/rack/ch001/temp"]
    assert [m.topic for m in second] == ["e/s/a/l/rack/ch001/voltage"]
    assert [orjson.loads(m.payload)["seq"] for m in first + second] == [1, 1, 2]
    assert orjson.loads(first[1].payload)["value"] == 25.0


def test_batch_mode_one_message_per_cycle() -> None:
    out = outbound(PublishMode.BATCH)
    msgs = out.messages(cycle(3.7, 250, 1.0), now=1.0) + out.messages(cycle(3.7, 300, 2.0), now=2.0)
    assert [m.topic for m in msgs] == ["e/s/a/l/rack/_batch"] * 2
    bodies = [orjson.loads(m.payload) for m in msgs]
    assert [b["seq"] for b in bodies] == [1, 2]
    assert [row["tag"] for row in bodies[0]["samples"]] == ["ch001/voltage", "ch001/temp"]


def test_link_lost_marks_every_tag_bad_once() -> None:
    out = outbound(PublishMode.TAG)
    out.messages(cycle(3.7, 250, 1.0), now=1.0)
    lost = out.messages(out.link_lost_readings(now=2.0), now=2.0)
    again = out.messages(out.link_lost_readings(now=3.0), now=3.0)
    assert len(lost) == 2
    assert {orjson.loads(m.payload)["quality"] for m in lost} == {"bad"}
    assert {orjson.loads(m.payload)["status"] for m in lost} == {"comm_failure"}
    assert again == []


def test_unknown_tag_is_counted_not_raised() -> None:
    out = outbound(PublishMode.TAG)
    assert out.messages([RawReading(tag="nope", value=1, ts=0.0, quality=Quality.GOOD)], now=0.0) == []
    assert out.unknown_tags == 1


def test_status_and_meta_are_retained() -> None:
    out = outbound(PublishMode.TAG)
    status = out.status_message(connected=True, since=0.0, error=None)
    (meta,) = out.meta_messages()
    assert status.retain and meta.retain
    assert orjson.loads(meta.payload)["tags"]["ch001/temp"]["unit"] == "Cel"


def test_batch_payload_is_the_schema_encoding_of_the_samples() -> None:
    out = outbound(PublishMode.BATCH)
    reference = outbound(PublishMode.BATCH)
    for now, readings in [(1.0, cycle(3.7, 250, 1.0)), (2.0, cycle(3.75, 251, 1.5)), (3.0, cycle(1e9, 252, 2.5))]:
        (message,) = out.messages(readings, now=now)
        samples = reference.samples(readings, now)
        seq = orjson.loads(message.payload)["seq"]
        assert message == Message(
            "e/s/a/l/rack/_batch",
            encode_batch_payload(samples, units={"ch001/voltage": "V", "ch001/temp": "Cel"}, ts=now, seq=seq),
        )
    assert out.seq_topics == ["e/s/a/l/rack/_batch"]


def test_messages_keep_their_fields_by_name() -> None:
    (message,) = outbound(PublishMode.TAG).messages(cycle(3.7, 250, 1.0)[:1], now=1.0)
    assert (message.topic, message.retain) == ("e/s/a/l/rack/ch001/voltage", False)
    assert orjson.loads(message.payload)["value"] == 3.7


def large_outbound(count: int, max_packet_bytes: int) -> DeviceOutbound:
    tags = [
        TagOutput(name=f"ch{n:05d}/voltage", unit="V", rules=TagRules(),
                  meta=TagMeta(tag=f"ch{n:05d}/voltage", type="float32", unit="V", source=f"holding:{n}"))
        for n in range(count)
    ]
    return DeviceOutbound(device="rack", protocol="modbus", topics=TOPICS, mode=PublishMode.TAG, interval_ms=1000,
                          tags=tags, max_packet_bytes=max_packet_bytes)


def test_meta_messages_split_a_large_catalogue_into_packets_under_the_limit() -> None:
    """Issue 10 defect 7: with a broker max_packet_size smaller than the retained `_meta`, the catalogue is published
    in parts (`_meta`, `_meta/2`, ...) each of which fits, topic and packet header included."""
    limit = 64 * 1024
    messages = large_outbound(20_000, limit).meta_messages()
    assert len(messages) > 1
    assert [m.topic for m in messages] == ["e/s/a/l/rack/_meta"] + [f"e/s/a/l/rack/_meta/{n}"
                                                                    for n in range(2, len(messages) + 1)]
    assert all(m.retain for m in messages)
    assert all(len(m.payload) + len(m.topic) + PUBLISH_OVERHEAD_BYTES <= limit for m in messages)
    tags = [tag for m in messages for tag in orjson.loads(m.payload)["tags"]]
    assert tags == [f"ch{n:05d}/voltage" for n in range(20_000)]


def test_a_small_catalogue_is_one_meta_message() -> None:
    out = outbound(PublishMode.TAG)
    (meta,) = out.meta_messages()
    assert meta.topic == out.topics.meta
    assert "parts" not in orjson.loads(meta.payload)


def test_a_shrunken_catalogue_has_fewer_meta_topics_to_keep() -> None:
    """What a reload clears: the part topics of the old outbound that the new one no longer has."""
    before = {m.topic for m in large_outbound(20_000, 64 * 1024).meta_messages()}
    after = {m.topic for m in large_outbound(2_000, 64 * 1024).meta_messages()}
    assert after < before
    assert "e/s/a/l/rack/_meta" in after


def test_seq_need_bounds_the_numbers_one_call_hands_out() -> None:
    """What a device's seq budget is charged before numbering (issue 10 defect 3: reservations)."""
    readings = cycle(3.7, 250, 1.0) + cycle(3.8, 260, 1.1)  # one tag twice, as OPC UA with queue_size > 1 sends
    for mode in PublishMode:
        out = outbound(mode)
        need = out.seq_need(readings)
        before = out.seq_snapshot()
        sent = out.messages(readings, now=1.0)
        advance = {topic: seq - before.get(topic, 0) for topic, seq in out.seq_snapshot().items()}
        assert len(sent) <= need
        assert max(advance.values()) <= need
    assert outbound(PublishMode.TAG).seq_need(readings) == 4
    assert outbound(PublishMode.BATCH).seq_need(readings) == 1


def test_sink_pairs_are_topic_and_payload_of_each_message_in_order() -> None:
    out = outbound(PublishMode.TAG)
    messages = [*out.messages(cycle(3.7, 250, 1.0), now=1.0), Message("e/s/a/l/rack/_status", b"{}", retain=True)]
    assert sink_pairs(messages) == [(m.topic, m.payload) for m in messages]
    assert all(type(pair) is tuple and len(pair) == 2 for pair in sink_pairs(messages))
