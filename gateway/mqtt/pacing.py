"""How many QoS 1 data messages to keep in flight: the window, sized by how long PUBACKs take (pure, no I/O).

The broker's Receive Maximum (or ``mqtt.max_inflight``) says how many unacknowledged messages the broker takes;
it does not say how many it can process soon. While the broker (or the link) is slower than the data, a large
window fills with messages that wait in socket buffers and in the broker, and that wait is invisible to the
gateway's own queue: with W in flight and a broker that passes R messages/s, every value arrives W / R seconds
older than it left the queue, and the source's ``max_queue_age_ms`` never sees it. So the window follows the delay,
as a delay-based TCP congestion control does (TCP Vegas, LEDBAT, RFC 6817):

* The sink times one message per round trip, a probe: from its write to its PUBACK. ``base`` is the smallest delay
  of the last ``_BASE_EPOCH_S`` to ``2 * _BASE_EPOCH_S`` seconds (the round trip with nothing queued: the link, the
  broker's own work, the gateway's loop), seeded with the connection's CONNECT to CONNACK time, so a connection
  that is flooded from its first message (a spool replay) still knows its uncongested round trip; what a probe
  takes beyond the base is queueing.
* When every probe answered over the last ``standing_s`` (and at least ``_DECREASE_PROBES`` since the last change)
  queued longer than ``target_s``, the queue stands: the broker is slower than the data, not busy with one poll's
  burst (a poll of 1,000 tags queues for a few ms, then the queue is gone) or one slow probe (a long turn of the
  gateway's own loop, a scheduler hiccup). The window then shrinks to what would queue ``target_s`` at the rate the
  broker passes now (``size * (base + target_s) / quickest delay``), by at least a quarter and not below ``floor``.
  Only probes written after the last change count: an older one says nothing about the new size.
* When a probe queued less than half ``target_s`` while publishers waited for a slot (a batch parked, or a spool
  replay found none free), the window grows by an eighth (at least 1), up to ``limit``.

With no queue (the usual case: a broker that keeps up) the window stays at ``limit``, so throughput is as before.
With a ``limit`` at or below ``floor`` (a stock Mosquitto's Receive Maximum of 20) nothing changes: the window is
``limit``. A new connection starts again at ``limit`` with no history (it may be another broker).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

# Below this many messages in flight a round trip carries too little: the window never shrinks under it.
DEFAULT_FLOOR = 50
# Queueing beyond the base round trip that the window tolerates before it shrinks ...
DEFAULT_TARGET_S = 0.005
# ... for this long: a queue that stands, not a poll's burst.
DEFAULT_STANDING_S = 0.1
# The base delay is the minimum over the current and the previous epoch: it follows a link that got slower
# within two epochs, and one quick probe does not set it for longer.
_BASE_EPOCH_S = 30.0
_DECREASE_PROBES = 3


@dataclass
class DelayWindow:
    """The window size for one connection. ``size`` is what the sink's window should be now."""

    limit: int
    floor: int = DEFAULT_FLOOR
    target_s: float = DEFAULT_TARGET_S
    standing_s: float = DEFAULT_STANDING_S
    size: int = field(init=False)
    changed_at: float = field(init=False, default=float("-inf"))  # when ``size`` last changed (the probes' clock)
    _epoch_start: float | None = field(init=False, default=None)
    _epoch_min: float = field(init=False, default=float("inf"))
    _previous_min: float = field(init=False, default=float("inf"))
    # (answered at, delay) of the probes since the last change, newest last, back to the first one answered at
    # least ``standing_s`` ago
    _recent: collections.deque[tuple[float, float]] = field(init=False, default_factory=collections.deque)
    _probes_since_change: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.size = self.limit

    @property
    def adapts(self) -> bool:
        """False when the limit is already at or below the floor: the window is then always the limit."""
        return self.limit > self.floor

    @property
    def base_s(self) -> float:
        return min(self._epoch_min, self._previous_min)

    def reset(self, limit: int, *, connect_s: float, now: float) -> None:
        """A new connection (another broker, maybe another Receive Maximum): full window, no history but its
        CONNECT to CONNACK time ``connect_s``, the first base."""
        self.limit = limit
        self.size = limit
        self.changed_at = float("-inf")
        self._epoch_start = now
        self._epoch_min = connect_s
        self._previous_min = float("inf")
        self._recent.clear()
        self._probes_since_change = 0

    def probe(self, sent_at: float, now: float, *, publishers_waiting: bool) -> bool:
        """A probe written at ``sent_at`` was acknowledged at ``now``. True when ``size`` changed."""
        if not self.adapts:
            return False
        delay = now - sent_at
        self._note_base(delay, now)
        if sent_at < self.changed_at:
            return False  # it was on its way before the last change: no news about the new size
        recent = self._recent
        recent.append((now, delay))
        self._probes_since_change += 1
        since = now - self.standing_s
        while len(recent) > 1 and recent[1][0] <= since:
            recent.popleft()
        base = self.base_s
        quickest = min(d for _, d in recent)
        standing = self._probes_since_change >= _DECREASE_PROBES and recent[0][0] <= since
        if standing and quickest - base > self.target_s:
            # The window that queues ``target_s`` at the rate the broker passes now (size / quickest), and at
            # least a quarter less.
            fitting = round(self.size * (base + self.target_s) / quickest)
            new_size = max(self.floor, min(self.size * 3 // 4, fitting))
        elif publishers_waiting and delay - base < self.target_s / 2:
            new_size = min(self.limit, self.size + max(1, self.size // 8))
        else:
            return False
        if new_size == self.size:
            return False
        self.size = new_size
        self.changed_at = now
        recent.clear()
        self._probes_since_change = 0
        return True

    def _note_base(self, delay: float, now: float) -> None:
        if self._epoch_start is None:
            self._epoch_start = now
        elif now - self._epoch_start >= _BASE_EPOCH_S:
            self._previous_min = self._epoch_min
            self._epoch_min = float("inf")
            self._epoch_start = now
        if delay < self._epoch_min:
            self._epoch_min = delay
