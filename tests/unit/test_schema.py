from __future__ import annotations

import orjson
import pytest

from gateway.schema import (
    BatchEncoder,
    EquipmentTopics,
    Quality,
    Sample,
    encode_batch_payload,
    encode_equipment_status,
    encode_tag_payload,
    format_ts,
    gateway_status_topic,
    topic_path_problem,
    topic_segment_problem,
)


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1795668180.123, "2026-11-26T04:43:00.123Z"),
        (1795668180.9996, "2026-11-26T04:43:01.000Z"),
    ],
)
def test_format_ts(ts: float, text: str) -> None:
    assert format_ts(ts) == text


@pytest.mark.parametrize(
    ("segment", "problem"),
    [
        ("coater-01", None),
        ("zone_03", None),
        ("", "empty topic segment"),
        ("a b", "contains a space"),
        ("a+b", "contains '+'"),
        ("#", "contains '#'"),
        ("a/b", "contains '/'"),
        ("$SYS", "starts with '$'"),
    ],
)
def test_topic_segment_problem(segment: str, problem: str | None) -> None:
    found = topic_segment_problem(segment)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_topic_path_checks_every_segment() -> None:
    assert topic_path_problem("dryer/zone03/air_temperature") is None
    assert topic_path_problem("dryer//air") == "empty topic segment"
    assert topic_path_problem("dryer/zone 3") is not None


def test_topics_follow_isa95_order() -> None:
    topics = EquipmentTopics.of(enterprise="acme", site="dunkirk", area="formation", line="hall-a", equipment="rack-01")
    assert topics.tag("ch001/voltage") == "acme/dunkirk/formation/hall-a/rack-01/ch001/voltage"
    assert topics.status == "acme/dunkirk/formation/hall-a/rack-01/_status"
    assert topics.meta == "acme/dunkirk/formation/hall-a/rack-01/_meta"
    assert topics.batch == "acme/dunkirk/formation/hall-a/rack-01/_batch"
    status = gateway_status_topic(enterprise="acme", site="dunkirk", gateway_id="gw1")
    assert status == "acme/dunkirk/_gateway/gw1/status"


def test_tag_payload_good_has_no_status() -> None:
    sample = Sample(device="d", tag="v", value=3.712, quality=Quality.GOOD, ts=1795668180.123)
    body = orjson.loads(encode_tag_payload(sample, unit="V", seq=41))
    assert body == {"value": 3.712, "unit": "V", "quality": "good", "ts": "2026-11-26T04:43:00.123Z", "seq": 41}


def test_tag_payload_bad_nan_is_null_with_status_and_historical_flag() -> None:
    sample = Sample(device="d", tag="v", value=float("nan"), quality=Quality.BAD, ts=0.0, status="not_a_number")
    body = orjson.loads(encode_tag_payload(sample, unit=None, seq=1, historical=True))
    assert body["value"] is None
    assert body["status"] == "not_a_number"
    assert body["historical"] is True


def test_batch_payload_rows() -> None:
    samples = [
        Sample(device="d", tag="a", value=1, quality=Quality.GOOD, ts=0.0),
        Sample(device="d", tag="b", value=None, quality=Quality.BAD, ts=0.0, status="comm_failure"),
    ]
    body = orjson.loads(encode_batch_payload(samples, units={"a": "V", "b": None}, ts=1.0, seq=7))
    assert body["seq"] == 7
    assert body["samples"] == [
        {"tag": "a", "value": 1, "unit": "V", "quality": "good", "ts": "1970-01-01T00:00:00.000Z"},
        {"tag": "b", "value": None, "unit": None, "quality": "bad", "ts": "1970-01-01T00:00:00.000Z",
         "status": "comm_failure"},
    ]


def test_equipment_status_payload() -> None:
    body = orjson.loads(encode_equipment_status(connected=False, since=0.0, error="timeout"))
    assert body == {"connected": False, "since": "1970-01-01T00:00:00.000Z", "error": "timeout"}
    with_gateway = orjson.loads(encode_equipment_status(connected=True, since=0.0, error=None, gateway="edge-01"))
    assert with_gateway == {"connected": True, "since": "1970-01-01T00:00:00.000Z", "error": None, "gateway": "edge-01"}


@pytest.mark.parametrize(
    "samples",
    [
        # the fast path: good samples of known tags, two read times
        [Sample("d", "a", 1.5, Quality.GOOD, 10.0), Sample("d", "b", 7, Quality.GOOD, 10.25)],
        # not good: encoded by encode_batch_payload
        [Sample("d", "a", 1.5, Quality.GOOD, 10.0), Sample("d", "b", None, Quality.BAD, 10.0, "comm_failure")],
        # a string holding a comma, and one that does not
        [Sample("d", "a", "x,y", Quality.GOOD, 10.0), Sample("d", "b", "xy", Quality.GOOD, 10.0)],
        # a tag the encoder was not given (its unit is null)
        [Sample("d", "zz", 2.0, Quality.GOOD, 10.0)],
        # non-finite floats are null; booleans
        [Sample("d", "a", float("inf"), Quality.GOOD, 10.0), Sample("d", "b", True, Quality.GOOD, 10.0)],
        [],
    ],
)
def test_batch_encoder_writes_what_encode_batch_payload_writes(samples: list[Sample]) -> None:
    units = {"a": "V", "b": None}
    for historical in (False, True):
        expected = encode_batch_payload(samples, units=units, ts=11.0, seq=3, historical=historical)
        assert BatchEncoder(units).encode(samples, ts=11.0, seq=3, historical=historical) == expected
