from __future__ import annotations

import orjson
import pytest

from gateway.encoders.uns_json import (
    BatchEncoder,
    encode_batch_payload,
    encode_equipment_status,
    encode_meta,
    encode_meta_parts,
    encode_tag_payload,
    format_ts,
)
from gateway.schema import (
    MAX_TOPIC_BYTES,
    SHOWN_TEXT_CHARS,
    EquipmentTopics,
    Quality,
    Sample,
    TagMeta,
    gateway_status_topic,
    quoted,
    topic_length_problem,
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


# ------------------------------------------------------------------------ topic limits and shown values


def test_quoted_cuts_a_long_value_and_gives_its_size() -> None:
    assert quoted("rack-01") == "'rack-01'"
    shown = quoted("v" * 1_048_576)
    assert shown == repr("v" * SHOWN_TEXT_CHARS) + "... (1048576 bytes)"


def test_topic_length_problem_counts_utf8_bytes() -> None:
    assert topic_length_problem("a" * MAX_TOPIC_BYTES) is None
    assert topic_length_problem("a" * (MAX_TOPIC_BYTES + 1)) is not None
    # 'é' is two bytes: 32,768 of them are 65,536 bytes although only 32,768 characters.
    problem = topic_length_problem("é" * 32_768)
    assert problem is not None and "(65536 bytes)" in problem and len(problem) < 200


def test_a_lone_surrogate_is_not_a_topic_segment() -> None:
    problem = topic_segment_problem("hall-\ud800")
    assert problem is not None and "not UTF-8" in problem


def test_meta_part_topics() -> None:
    topics = EquipmentTopics.of(enterprise="acme", site="dunkirk", area="formation", line="hall-a", equipment="rack-01")
    assert topics.meta_part(1) == topics.meta
    assert topics.meta_part(2) == "acme/dunkirk/formation/hall-a/rack-01/_meta/2"


# ------------------------------------------------------------------------------------ _meta in parts


def catalogue(count: int) -> list[TagMeta]:
    return [
        TagMeta(tag=f"ch{n:05d}/voltage", type="float32", unit="V", min=0.0, max=5.0, description=f"cell {n}",
                source=f"holding:{n}")
        for n in range(count)
    ]


def parts_of(tags: list[TagMeta], max_payload_bytes: int) -> list[bytes]:
    return encode_meta_parts(
        device="rack-01", protocol="modbus", tags=tags, publish_mode="tag", interval_ms=1000,
        max_payload_bytes=max_payload_bytes,
    )


def test_a_catalogue_that_fits_is_one_part_exactly_as_before() -> None:
    tags = catalogue(10)
    whole = encode_meta(device="rack-01", protocol="modbus", tags=tags, publish_mode="tag", interval_ms=1000)
    assert parts_of(tags, len(whole)) == [whole]


def test_a_large_catalogue_is_split_into_parts_under_the_limit_whose_union_is_the_catalogue() -> None:
    """Issue 10 defect 7: `_meta` of a large device is split so it fits the broker's packet size
    (20,000 tags, 64 KiB parts)."""
    tags = catalogue(20_000)
    limit = 64 * 1024
    whole = orjson.loads(encode_meta(device="rack-01", protocol="modbus", tags=tags, publish_mode="tag",
                                     interval_ms=1000))
    parts = parts_of(tags, limit)
    assert len(parts) > 1
    assert all(len(part) <= limit for part in parts)
    bodies = [orjson.loads(part) for part in parts]  # each part is valid JSON on its own
    header = {key: value for key, value in whole.items() if key != "tags"}
    digest = bodies[0]["digest"]
    for number, body in enumerate(bodies, start=1):
        fields = {key: value for key, value in body.items() if key != "tags"}
        assert fields == {**header, "part": number, "parts": len(parts), "digest": digest}
    merged: dict[str, object] = {}
    for body in bodies:
        assert not set(body["tags"]) & set(merged)  # each tag in exactly one part
        merged.update(body["tags"])
    assert list(merged) == list(whole["tags"])  # catalogue order kept
    assert merged == whole["tags"]


def test_parts_are_filled_not_one_tag_each() -> None:
    parts = parts_of(catalogue(20_000), 64 * 1024)
    assert all(len(part) > 60 * 1024 for part in parts[:-1])


def test_a_tag_entry_larger_than_the_limit_gets_a_part_of_its_own() -> None:
    tags = catalogue(3)
    tags[1] = TagMeta(tag="big", type="string", description="d" * 5000)
    parts = parts_of(tags, 2000)
    assert [list(orjson.loads(part)["tags"]) for part in parts] == [["ch00000/voltage"], ["big"], ["ch00002/voltage"]]
    assert [len(part) <= 2000 for part in parts] == [True, False, True]


def test_the_digest_changes_with_the_catalogue() -> None:
    first = orjson.loads(parts_of(catalogue(2000), 16 * 1024)[0])["digest"]
    second = orjson.loads(parts_of(catalogue(2001), 16 * 1024)[0])["digest"]
    assert first != second
