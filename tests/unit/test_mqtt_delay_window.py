"""The in-flight window sized by the PUBACK delay (gateway/mqtt/pacing.py): the rule, probe by probe."""

from __future__ import annotations

import pytest

from gateway.mqtt.pacing import DEFAULT_FLOOR, DEFAULT_STANDING_S, DEFAULT_TARGET_S, DelayWindow

BASE_S = 0.001  # the connection's CONNECT to CONNACK time in these tests


def window(limit: int = 1000) -> DelayWindow:
    w = DelayWindow(limit)
    w.reset(limit, connect_s=BASE_S, now=0.0)
    return w


def feed(w: DelayWindow, delays: list[float], *, start: float = 1.0, waiting: bool = True) -> list[int]:
    """One probe after another, each written when the one before was answered; the sizes after each."""
    now = start
    sizes = []
    for delay in delays:
        sent = now
        now = sent + delay
        w.probe(sent, now, publishers_waiting=waiting)
        sizes.append(w.size)
    return sizes


def test_the_window_starts_at_its_limit_and_stays_there_while_pubacks_are_quick() -> None:
    w = window()
    assert w.size == 1000
    assert feed(w, [BASE_S + 0.001] * 20) == [1000] * 20


def test_a_queue_standing_for_standing_s_shrinks_the_window_by_at_least_a_quarter_down_to_the_floor() -> None:
    w = window()
    queued = BASE_S + DEFAULT_TARGET_S + 0.001  # 7 ms, just over the target: a quarter at a time
    sizes = feed(w, [queued] * 400)
    # The 16th probe is the first whose history goes back DEFAULT_STANDING_S (100 ms): 15 probes of 7 ms do not.
    assert DEFAULT_STANDING_S == 0.1
    assert sizes[:17] == [1000] * 15 + [750, 750]
    assert sizes[30:32] == [750, 562]
    assert sizes[-1] == DEFAULT_FLOOR
    assert min(sizes) == DEFAULT_FLOOR


def test_a_poll_burst_queueing_for_less_than_standing_s_changes_nothing() -> None:
    """A poll of 1,000 tags: its messages queue at the broker for a few ms, then the queue is gone."""
    w = window()
    burst = [BASE_S + 0.008] * 5 + [BASE_S] * 10  # 40 ms queued, 10 ms clear: every 50 ms
    assert feed(w, burst * 20, waiting=False) == [1000] * 300


def test_a_long_queue_shrinks_the_window_at_once_to_what_queues_the_target() -> None:
    """1000 in flight taking 30 ms: the broker passes 33 per ms, so 6 ms (base + target) is 200 in flight."""
    w = window()
    assert feed(w, [0.030] * 5) == [1000] * 4 + [200]
    # Probes slower than standing_s: three since the change are enough.
    assert feed(w, [0.200] * 3, start=10.0) == [200, 200, DEFAULT_FLOOR]


def test_one_slow_probe_among_quick_ones_changes_nothing() -> None:
    w = window()
    slow = BASE_S + DEFAULT_TARGET_S + 0.050  # a long turn of the gateway's own loop
    quick = BASE_S
    assert feed(w, [slow, quick, slow, slow, quick, slow] * 5, waiting=False) == [1000] * 30


def test_quick_probes_while_publishers_wait_grow_the_window_back_to_its_limit() -> None:
    w = window()
    feed(w, [BASE_S + 0.050] * 60)
    assert w.size == DEFAULT_FLOOR
    sizes = feed(w, [BASE_S] * 60, start=100.0)
    assert sizes[0] == DEFAULT_FLOOR + DEFAULT_FLOOR // 8
    assert sizes == sorted(sizes)
    assert sizes[-1] == 1000


def test_quick_probes_without_waiting_publishers_do_not_grow_it() -> None:
    w = window()
    feed(w, [BASE_S + 0.050] * 60)
    assert feed(w, [BASE_S] * 10, start=100.0, waiting=False) == [DEFAULT_FLOOR] * 10


def test_a_probe_written_before_the_last_change_says_nothing_about_the_new_size() -> None:
    w = window()
    feed(w, [0.030] * 5)
    assert w.size == 200
    changed_at = w.changed_at
    for n in range(5):  # written just before the change, answered after it
        assert not w.probe(changed_at - 0.001, changed_at + 0.200 * (n + 1), publishers_waiting=True)
    assert w.size == 200


@pytest.mark.parametrize("limit", [1, 20, DEFAULT_FLOOR])
def test_a_window_at_or_below_the_floor_never_changes(limit: int) -> None:
    """A stock Mosquitto's Receive Maximum of 20: the window is the Receive Maximum, whatever the delay."""
    w = window(limit)
    assert not w.adapts
    assert feed(w, [1.0] * 10) == [limit] * 10


def test_the_connect_time_is_the_first_base_so_a_connection_flooded_from_the_start_still_shrinks() -> None:
    w = window()
    assert w.base_s == BASE_S
    feed(w, [0.020] * 9)  # every probe queued: its own minimum would say 20 ms is the base
    assert w.size < 1000


def test_the_base_follows_a_link_that_got_slower_within_two_epochs() -> None:
    w = window()
    slower = 0.030  # a new route: 30 ms is the round trip now, nothing queued
    now = 1.0
    for _ in range(80):  # 2 s apart: the base catches up within two 30 s epochs, the window then grows back
        w.probe(now, now + slower, publishers_waiting=True)
        now += 2.0
    assert w.base_s == pytest.approx(slower)
    assert w.size == 1000  # shrunk while the base lagged, grown back since


def test_a_new_connection_starts_at_its_limit_with_no_history() -> None:
    w = window()
    feed(w, [0.050] * 60)
    assert w.size == DEFAULT_FLOOR
    w.reset(400, connect_s=0.002, now=500.0)
    assert (w.size, w.limit, w.base_s) == (400, 400, 0.002)
    assert feed(w, [0.002] * 3, start=501.0) == [400] * 3
