"""The reconnect backoff shared by the Modbus and OPC UA sources (gateway/sources/reconnect.py), table-driven.

Issue 10, defect 5 (reconnect storm): a server that accepts and closes at once made every connect "succeed", the
backoff reset on each one, and the source reconnected 13,040 times in 13 s with two log lines each. Here a link
lost before it answered and lived ``stable_s`` is a failed attempt, so the wait keeps growing.
"""

from __future__ import annotations

import pytest

from gateway.sources.reconnect import LogLine, Reconnect, ReconnectPolicy

POLICY = ReconnectPolicy(min_s=0.5, max_s=30.0, jitter=0.2, stable_s=5.0, summary_every_s=60.0)


@pytest.mark.parametrize(
    ("failures", "draw", "expected_s"),
    [
        (0, 0.0, 0.0),  # a good link that is lost: reconnect at once
        (1, 0.0, 0.5),
        (2, 0.0, 1.0),
        (3, 0.0, 2.0),
        (6, 0.0, 16.0),
        (7, 0.0, 30.0),  # capped
        (10_000, 0.0, 30.0),  # no overflow however long it fails
        (1, 0.999999, 0.5 * 0.8),  # jitter only shortens, by at most 20 %
        (10_000, 0.5, 30.0 * 0.9),
    ],
)
def test_delay_doubles_from_min_to_max_and_jitter_shortens_it(failures: int, draw: float, expected_s: float) -> None:
    assert POLICY.delay_s(failures, draw) == pytest.approx(expected_s, rel=1e-5)


def test_accept_and_close_grows_the_backoff_and_logs_once_then_a_summary_a_minute() -> None:
    """Recipe of defect 5: every connect succeeds and the link is gone at once. Each loss is a failure, the wait
    grows to the cap, and over ten minutes the log gets one FAILING line and one SUMMARY per minute."""
    reconnect = Reconnect(POLICY)
    now = 0.0
    steps = []
    assert reconnect.connected(now).log is LogLine.UP  # nothing failed before: the first connect is logged
    while now < 600.0:
        step = reconnect.lost(now + 0.001, "connection closed by the server", 0.0)
        steps.append(step)
        now += 0.001 + step.delay_s
        assert reconnect.connected(now).log is None  # connects during a failing streak are not logged
    delays = [step.delay_s for step in steps]
    assert delays[:7] == pytest.approx([0.5, 1, 2, 4, 8, 16, 30])
    assert len(steps) < 30  # about 20 attempts in ten minutes, not hundreds of thousands
    lines = [step.log for step in steps if step.log is not None]
    assert lines[0] is LogLine.FAILING
    assert set(lines[1:]) == {LogLine.SUMMARY}
    assert 8 <= len(lines) <= 11  # one a minute
    last = steps[-1]
    assert last.failures == last.attempts == len(steps)
    assert last.error == "connection closed by the server" and last.lived_s == pytest.approx(0.001)


def test_a_link_that_answered_but_died_young_still_counts_as_a_failure() -> None:
    reconnect = Reconnect(POLICY)
    reconnect.connected(0.0)
    assert reconnect.answered(0.1) is None  # answered, not yet stable
    step = reconnect.lost(2.0, "reset", 0.0)
    assert (step.log, step.failures, step.delay_s) == (LogLine.FAILING, 1, 0.5)


def test_a_stable_link_lost_reconnects_at_once_and_the_streak_starts_again() -> None:
    reconnect = Reconnect(POLICY)
    reconnect.connect_failed(0.0, "refused", 0.0)
    reconnect.connect_failed(0.5, "refused", 0.0)
    assert reconnect.failing
    assert reconnect.connected(1.5).log is None
    assert reconnect.answered(1.6) is None
    up = reconnect.answered(6.5)  # answered and lived stable_s: good again, logged now
    assert up is not None and up.log is LogLine.UP
    assert (up.attempts, up.failing_s) == (3, 6.5)
    assert not reconnect.failing and reconnect.stable
    assert reconnect.answered(7.0) is None  # once
    lost = reconnect.lost(100.0, "reset by peer", 0.0)
    assert (lost.log, lost.delay_s, lost.failures) == (LogLine.LOST, 0.0, 0)
    again = reconnect.connect_failed(100.1, "refused", 0.0)
    assert (again.log, again.failures, again.delay_s) == (LogLine.FAILING, 1, 0.5)


def test_a_link_that_lived_long_but_never_answered_is_a_failure() -> None:
    """A hung PLC: TCP up for a long time, no answer, closed after unanswered requests."""
    reconnect = Reconnect(POLICY)
    reconnect.connected(0.0)
    assert reconnect.lost(60.0, "3 requests in a row unanswered", 0.0).failures == 1


def test_a_long_lived_answered_link_is_good_even_if_nobody_asked_in_between() -> None:
    reconnect = Reconnect(POLICY)
    reconnect.connect_failed(0.0, "refused", 0.0)
    reconnect.connected(1.0)
    reconnect.answered(1.1)
    step = reconnect.lost(30.0, "reset", 0.0)
    assert (step.log, step.delay_s) == (LogLine.LOST, 0.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"min_s": 0.0}, {"min_s": 2.0, "max_s": 1.0}, {"jitter": 1.0}, {"stable_s": -1.0}, {"summary_every_s": 0.0}],
)
def test_policy_is_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ReconnectPolicy(**kwargs)
