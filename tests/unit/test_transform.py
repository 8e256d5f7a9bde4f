from __future__ import annotations

import math

import pytest

from gateway.schema import Quality, Value
from gateway.sources.base import RawReading
from gateway.transform import TagRules, TagTransform, normalise_value


def reading(value: Value | None, *, quality: Quality = Quality.GOOD, status: str | None = None) -> RawReading:
    return RawReading(tag="t", value=value, ts=100.0, quality=quality, status=status)


@pytest.mark.parametrize(
    ("raw", "rules", "expected"),
    [
        (reading(215), TagRules(scale=0.1), (pytest.approx(21.5), Quality.GOOD, None)),
        (reading(-5), TagRules(scale=2.0, offset=1.0), (-9.0, Quality.GOOD, None)),
        (reading(7), TagRules(), (7, Quality.GOOD, None)),
        (reading(True), TagRules(), (True, Quality.GOOD, None)),
        (reading("CELL-0042"), TagRules(), ("CELL-0042", Quality.GOOD, None)),
        (reading(float("nan")), TagRules(), (None, Quality.BAD, "not_a_number")),
        (reading(float("inf")), TagRules(), (None, Quality.BAD, "not_a_number")),
        (reading(1e308), TagRules(scale=1e10), (None, Quality.BAD, "not_a_number")),
        (reading(12.0), TagRules(minimum=0.0, maximum=10.0), (12.0, Quality.UNCERTAIN, "out_of_range")),
        (reading(-0.5), TagRules(minimum=0.0), (-0.5, Quality.UNCERTAIN, "out_of_range")),
        (reading(10.0), TagRules(minimum=0.0, maximum=10.0), (10.0, Quality.GOOD, None)),
        (
            reading(None, quality=Quality.BAD, status="comm_failure"),
            TagRules(scale=3.0),
            (None, Quality.BAD, "comm_failure"),
        ),
        (
            reading(1.0, quality=Quality.UNCERTAIN, status="UncertainLastUsableValue"),
            TagRules(),
            (1.0, Quality.UNCERTAIN, "UncertainLastUsableValue"),
        ),
    ],
)
def test_normalise_value(raw: RawReading, rules: TagRules, expected: tuple[object, Quality, str | None]) -> None:
    assert normalise_value(raw, rules) == expected


def published_values(rules: TagRules, steps: list[tuple[float, Value | None, Quality]]) -> list[object]:
    transform = TagTransform(device="d", tag="t", rules=rules)
    out: list[object] = []
    for now, value, quality in steps:
        sample = transform.apply(
            RawReading(tag="t", value=value, ts=now, quality=quality,
                       status=None if quality is Quality.GOOD else "comm_failure"),
            now,
        )
        out.append(None if sample is None else (sample.value, sample.quality.value))
    return out


def test_plain_polling_publishes_every_good_reading() -> None:
    steps = [(float(t), 1.0, Quality.GOOD) for t in range(3)]
    assert published_values(TagRules(), steps) == [(1.0, "good")] * 3


def test_deadband_suppresses_small_changes_against_last_published_value() -> None:
    steps = [
        (0.0, 10.0, Quality.GOOD),
        (1.0, 10.15, Quality.GOOD),  # within 0.2 of 10.0: suppressed
        (2.0, 10.3, Quality.GOOD),  # 0.3 from the last *published* 10.0: published
        (3.0, 10.45, Quality.GOOD),  # 0.15 from 10.3: suppressed
        (4.0, 10.0, Quality.GOOD),  # 0.3 back: published
    ]
    assert published_values(TagRules(deadband=0.2), steps) == [
        (10.0, "good"), None, (10.3, "good"), None, (10.0, "good"),
    ]


def test_heartbeat_republishes_unchanged_value() -> None:
    steps = [(float(t), 5.0, Quality.GOOD) for t in range(0, 25, 5)]
    result = published_values(TagRules(deadband=1.0, heartbeat_s=10.0), steps)
    assert result == [(5.0, "good"), None, (5.0, "good"), None, (5.0, "good")]


def test_quality_change_always_published_and_repeated_bad_reported_once() -> None:
    steps = [
        (0.0, 1.0, Quality.GOOD),
        (1.0, None, Quality.BAD),
        (2.0, None, Quality.BAD),
        (3.0, None, Quality.BAD),
        (4.0, 1.0, Quality.GOOD),
    ]
    assert published_values(TagRules(), steps) == [
        (1.0, "good"), (None, "bad"), None, None, (1.0, "good"),
    ]


def test_bad_sample_carries_status_and_source_timestamp() -> None:
    transform = TagTransform(device="rack-01", tag="ch001/voltage", rules=TagRules())
    sample = transform.apply(reading(float("nan")), now=123.0)
    assert sample is not None
    assert (sample.device, sample.tag, sample.quality, sample.status, sample.ts) == (
        "rack-01", "ch001/voltage", Quality.BAD, "not_a_number", 100.0,
    )
    assert sample.value is None or math.isnan(float(sample.value))
