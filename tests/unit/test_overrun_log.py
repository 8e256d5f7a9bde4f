"""OverrunLog (gateway/sources/base.py): when a poll loop logs overload, and what an episode of it cost.

Issue 10, defect 2 (a hung broker stalls polling): racks were polled 29 and 34 of 60 cycles and about 23,000
samples were never read. ``poll_overrun`` was logged once with the numbers of the first late cycle and the rest of
the stall showed nowhere in the log; now its end is logged with the polls it cost (``poll_caught_up``).
"""

from __future__ import annotations

from gateway.sources.base import OverrunLine, OverrunLog, PollSchedule


def run(schedule: PollSchedule, log: OverrunLog, durations: list[float]) -> list[OverrunLine]:
    """Cycles of the given durations, each started when the schedule says (as the poll loops do)."""
    lines = []
    for duration in durations:
        end = schedule.deadline + duration
        line = log.after_cycle(schedule, overran=schedule.after_cycle(end), now=end)
        if line is not None:
            lines.append(line)
    return lines


def test_a_stall_shorter_than_a_minute_is_logged_when_it_starts_and_when_it_ends_with_what_it_cost() -> None:
    schedule = PollSchedule(interval_s=1.0, deadline=0.0)
    # On time, then one cycle held up 30 s (emit blocked behind a stuck sink), a late one, on time again.
    lines = run(schedule, OverrunLog(), [0.5, 0.5, 30.5, 1.2, 0.5, 0.5])
    assert lines == [
        OverrunLine(caught_up=False, overruns=1, skipped_cycles=29),  # 29.5 s late: 29 polls never happened
        OverrunLine(caught_up=True, overruns=2, skipped_cycles=29),  # the episode: both late cycles, 29.7 s in all
    ]
    assert (schedule.overruns, schedule.skipped_cycles) == (2, 29)


def test_at_most_two_lines_a_minute_however_the_overruns_come() -> None:
    schedule = PollSchedule(interval_s=1.0, deadline=0.0)
    log = OverrunLog()
    durations = [1.5 if cycle % 2 else 0.4 for cycle in range(600)]  # every other cycle 0.5 s late
    lines = run(schedule, log, durations)
    minutes = schedule.deadline / 60
    assert 2 <= len(lines) <= 2 * (minutes + 1)
    # Every overrun is in some caught-up line's count (or still in the running totals of the last poll_overrun).
    caught_up = [line for line in lines if line.caught_up]
    assert sum(line.overruns for line in caught_up) <= schedule.overruns
    assert caught_up and caught_up[-1].overruns >= 1


def test_no_line_while_the_schedule_keeps_time() -> None:
    schedule = PollSchedule(interval_s=0.1, deadline=0.0)
    assert run(schedule, OverrunLog(), [0.05] * 100) == []
