"""A broker that accepts and closes at once (or CONNACKs and then closes at once) meets a growing
backoff and a handful of log lines, not a reconnect storm (issue 10 item 5, the MQTT part)."""

from __future__ import annotations

import asyncio

import pytest
import structlog

from gateway.backoff import MqttBackoff, Streak
from gateway.mqtt.connection import MqttSink
from tests.support.mqtt_broker import ScriptedBroker, options

MIN_S = 0.1
MAX_S = 0.8
WATCH_S = 3.0


def most_attempts(watch_s: float) -> int:
    """Connection attempts the backoff schedule allows in ``watch_s`` when every attempt fails at once:
    the first right away, then each after the shortest wait the schedule can draw (jitter 0)."""
    schedule = MqttBackoff(min_s=MIN_S, max_s=MAX_S, streak=Streak())
    attempts, elapsed, failures = 1, 0.0, 1
    while True:
        elapsed += schedule.delay_s(failures, 1.0)
        if elapsed > watch_s:
            return attempts
        attempts += 1
        failures += 1


@pytest.mark.parametrize("closes", ["at_accept", "after_connack"])
async def test_a_broker_that_closes_at_once_gets_a_growing_backoff_and_few_log_lines(closes: str) -> None:
    """Issue 10 item 5 recipe (for MQTT): a server that accepts and closes at once caused 13,040
    reconnects in 13 s and 26,094 log lines. A connection that dies right after connecting now counts
    as a failed attempt, so the backoff keeps growing; the lines are logged once per change, then
    summed up every ``repeat_log_s``."""
    with structlog.testing.capture_logs() as logs:
        async with ScriptedBroker(
            close_at_accept=closes == "at_accept", close_after_connack=closes == "after_connack"
        ) as broker:
            async with MqttSink(options(broker, reconnect_min_s=MIN_S, reconnect_max_s=MAX_S, repeat_log_s=1.0)):
                await asyncio.sleep(WATCH_S)
            attempts = len(broker.accepted_at)
    # Without the fix, "after_connack" reconnects every 0.1..0.2 s: at least 15 attempts in 3 s.
    assert 3 <= attempts <= most_attempts(WATCH_S) + 1 < 15
    gaps = [b - a for a, b in zip(broker.accepted_at, broker.accepted_at[1:], strict=False)]
    assert gaps[-1] >= MAX_S / 2 - 0.05  # the backoff grew to its ceiling

    events = [entry["event"] for entry in logs]
    if closes == "at_accept":
        assert events.count("mqtt_connect_failed") == 1
        assert events.count("mqtt_connect_failing") >= 1  # the periodic summary, with counts
        summary = next(entry for entry in logs if entry["event"] == "mqtt_connect_failing")
        assert summary["attempts"] >= 1
    else:
        assert events.count("mqtt_connected") <= 2
        assert events.count("mqtt_disconnected") <= 2  # the first loss, and "closed" at the end
        assert events.count("mqtt_link_flapping") >= 1
        summary = next(entry for entry in logs if entry["event"] == "mqtt_link_flapping")
        assert summary["short_connections"] >= 1
    assert len(logs) < 15
