"""The back-off decision for Modbus units that keep timing out (gateway.sources.modbus_skip), table-driven."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.sources.modbus_skip import SKIP_AFTER_TIMEOUTS, SKIP_MAX_S, SKIP_MIN_S, SkipPolicy, UnitSkip

NO_JITTER = SkipPolicy(after_timeouts=3, min_s=5.0, max_s=60.0, jitter=0.0)


@dataclass(frozen=True)
class Step:
    """One event at time ``at``: "timeout" / "success" (with the expected outcome), or "ask" (should_poll)."""

    at: float
    event: str
    expect: object  # timeout: nominal back-off (or None); success: recovered?; ask: should_poll


@pytest.mark.parametrize(
    ("steps", "case"),
    [
        (
            [Step(0, "timeout", None), Step(1, "timeout", None), Step(2, "ask", True), Step(2, "timeout", 5.0)],
            "third timeout in a row starts the back-off",
        ),
        (
            [
                Step(0, "timeout", None),
                Step(1, "timeout", None),
                Step(2, "success", False),  # an answer in between: not a recovery, but the count starts over
                Step(3, "timeout", None),
                Step(4, "timeout", None),
                Step(5, "timeout", 5.0),
            ],
            "an answer resets the count",
        ),
        (
            [
                *(Step(t, "timeout", None) for t in (0, 1)),
                Step(2, "timeout", 5.0),
                Step(2.1, "ask", False),
                Step(6.99, "ask", False),
                Step(7, "ask", True),  # the probe
                Step(7, "timeout", 10.0),  # failed probe: doubled
                Step(16.99, "ask", False),
                Step(17, "ask", True),
                Step(17, "timeout", 20.0),
                Step(37, "timeout", 40.0),
                Step(77, "timeout", 60.0),  # capped
                Step(137, "timeout", 60.0),
                Step(196.9, "ask", False),
                Step(197, "ask", True),
            ],
            "failed probes double the period up to the cap",
        ),
        (
            [
                *(Step(t, "timeout", None) for t in (0, 1)),
                Step(2, "timeout", 5.0),
                Step(7, "ask", True),
                Step(7, "success", True),  # recovered
                Step(7.1, "ask", True),
                Step(8, "timeout", None),  # it must time out three times in a row again before a skip
                Step(9, "timeout", None),
                Step(10, "timeout", 5.0),  # and starts from the shortest period again
            ],
            "an answer to the probe ends the back-off and resets the period",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_unit_skip_follows_the_table(steps: list[Step], case: str) -> None:
    skip = UnitSkip(NO_JITTER)
    for step in steps:
        if step.event == "timeout":
            result = skip.on_timeout(step.at, draw=0.5)
            got: object = None if result is None else result.nominal_s
            if result is not None:
                assert result.resume_at == step.at + result.period_s
                assert skip.backing_off
        elif step.event == "success":
            got = skip.on_success()
            assert not skip.backing_off
        else:
            got = skip.should_poll(step.at)
        assert got == step.expect, f"{case}: {step}"


@pytest.mark.parametrize(
    ("draw", "expected_s"),
    [(0.0, 10.0), (0.5, 9.0), (0.999, 8.002), (1.0, 8.0), (-3.0, 10.0), (7.0, 8.0)],  # out-of-range draws clamp
)
def test_jitter_only_shortens_the_period(draw: float, expected_s: float) -> None:
    skip = UnitSkip(SkipPolicy(after_timeouts=1, min_s=10.0, max_s=10.0, jitter=0.2))
    result = skip.on_timeout(100.0, draw=draw)
    assert result is not None
    assert result.nominal_s == 10.0
    assert result.period_s == pytest.approx(expected_s)
    assert result.resume_at == pytest.approx(100.0 + expected_s)


@pytest.mark.parametrize(
    ("level", "expected_s"), [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 60.0), (6, 60.0), (10_000, 60.0)]
)
def test_nominal_period_doubles_and_is_capped(level: int, expected_s: float) -> None:
    assert SkipPolicy().nominal_s(level) == expected_s


def test_defaults_are_the_named_constants() -> None:
    policy = SkipPolicy()
    assert (policy.after_timeouts, policy.min_s, policy.max_s) == (SKIP_AFTER_TIMEOUTS, SKIP_MIN_S, SKIP_MAX_S)
    assert (SKIP_AFTER_TIMEOUTS, SKIP_MIN_S, SKIP_MAX_S) == (3, 5.0, 60.0)


def test_one_timeout_threshold_skips_at_once() -> None:
    skip = UnitSkip(SkipPolicy(after_timeouts=1, min_s=1.0, max_s=1.0, jitter=0.0))
    assert skip.should_poll(0.0)
    result = skip.on_timeout(0.0, draw=0.0)
    assert result is not None and (result.level, result.period_s) == (1, 1.0)
    assert not skip.should_poll(0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"after_timeouts": 0},
        {"min_s": 0.0},
        {"min_s": 10.0, "max_s": 5.0},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SkipPolicy(**kwargs)  # type: ignore[arg-type]
