"""PollSchedule: fixed rate while cycles fit, the next poll at once after an overrun, lost polls counted."""

from __future__ import annotations

import pytest

from gateway.sources.base import PollSchedule


def test_cycles_within_their_slot_keep_the_fixed_rate() -> None:
    schedule = PollSchedule(interval_s=1.0, deadline=10.0)
    assert schedule.after_cycle(10.3) is False
    assert schedule.deadline == 11.0  # previous deadline + interval, not now + interval: no drift
    assert schedule.after_cycle(11.0) is False  # ending exactly on the deadline is on time
    assert schedule.deadline == 12.0
    assert (schedule.overruns, schedule.skipped_cycles) == (0, 0)


def test_an_overrun_starts_the_next_poll_at_once_and_the_schedule_runs_on_from_there() -> None:
    schedule = PollSchedule(interval_s=1.0, deadline=10.0)
    assert schedule.after_cycle(11.2) is True
    assert schedule.deadline == 11.2  # due now: no idle wait for the slot at 12.0, no burst either
    assert schedule.after_cycle(11.5) is False
    assert schedule.deadline == 12.2
    assert schedule.overruns == 1
    assert schedule.late_s == pytest.approx(0.2)
    assert schedule.skipped_cycles == 0  # 0.2 s behind the fixed rate: no whole poll lost yet


@pytest.mark.parametrize(
    ("cycle_s", "cycles", "skipped"),
    [
        (1.5, 4, 2),  # 0.5 s late per cycle: 2 s = 2 polls lost after 4 cycles
        (3.0, 3, 6),  # 2 s late per cycle
        (1.25, 8, 2),  # fractions add up: 8 x 0.25 s
    ],
)
def test_skipped_cycles_are_the_polls_the_fixed_rate_lost(cycle_s: float, cycles: int, skipped: int) -> None:
    schedule = PollSchedule(interval_s=1.0, deadline=0.0)
    now = 0.0
    for _ in range(cycles):
        now = schedule.deadline + cycle_s  # each poll starts when due and takes cycle_s
        assert schedule.after_cycle(now) is True
    assert schedule.overruns == cycles
    assert schedule.skipped_cycles == skipped
    # Polls done + polls lost = what the fixed rate would have done in the same time.
    assert cycles + schedule.skipped_cycles == int(now // 1.0)
