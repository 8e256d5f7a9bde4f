"""gateway.backoff: the one schedule behind MQTT reconnects, source connects and the source supervisor."""

from __future__ import annotations

import pytest

from gateway.backoff import Backoff
from gateway.mqtt.connection import backoff_delay_s
from gateway.sources.reconnect import ReconnectPolicy

SCHEDULE = Backoff(min_s=0.5, max_s=30.0, jitter=0.2)


@pytest.mark.parametrize(
    ("failures", "draw", "expected_s"),
    [
        (0, 0.5, 0.0),
        (1, 0.0, 0.5),
        (2, 0.0, 1.0),
        (7, 0.0, 30.0),
        (10_000, 0.0, 30.0),
        (1, 0.999_999, 0.4),
        (3, 2.0, 2.0 * 0.8),  # a draw out of range is clamped, never lengthens or negates the wait
        (3, -1.0, 2.0),
    ],
)
def test_waits_double_from_min_to_max_and_jitter_only_shortens(failures: int, draw: float, expected_s: float) -> None:
    assert SCHEDULE.delay_s(failures, draw) == pytest.approx(expected_s, rel=1e-5)


@pytest.mark.parametrize("kwargs", [{"min_s": 0.0}, {"min_s": 2.0, "max_s": 1.0}, {"jitter": 1.0}, {"jitter": -0.1}])
def test_a_schedule_that_makes_no_sense_is_refused(kwargs: dict[str, float]) -> None:
    settings = {"min_s": 0.5, "max_s": 30.0, "jitter": 0.2} | kwargs
    with pytest.raises(ValueError):
        Backoff(**settings)


def test_source_reconnects_use_the_shared_schedule() -> None:
    policy = ReconnectPolicy(min_s=0.5, max_s=30.0, jitter=0.2)
    for failures in range(12):
        for draw in (0.0, 0.3, 0.999):
            assert policy.delay_s(failures, draw) == SCHEDULE.delay_s(failures, draw)


def test_mqtt_waits_from_the_upper_half_of_a_ceiling_that_doubles_per_failure() -> None:
    """MQTT waits after a loss too (failures 0): 1 s ceiling for min 0.5 s, doubling up to max_s."""
    assert [backoff_delay_s(n, min_s=0.5, max_s=10.0, jitter=0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_delay_s(3, min_s=0.5, max_s=10.0, jitter=0.999_999) == pytest.approx(8.0, rel=1e-5)
