"""The one backoff schedule for every retry loop: MQTT reconnects, source connects and the source supervisor.

Pure: the caller passes the count of failed attempts in a row and a uniform random draw in [0, 1), so a test
can give both. The wait starts at ``min_s``, doubles per failure up to ``max_s``, and jitter shortens it by up
to ``jitter`` of itself, so links that failed together do not retry in step::

    failures   1      2     3     4     5     6      7+
    wait (s)   min    2min  4min  8min  ...          max   (each shortened by up to ``jitter`` x itself)

No failure (0) waits 0: a good link that is lost is retried at once. Deciding *when* an attempt counts as
failed (e.g. a link that died young) is the caller's job.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DOUBLINGS = 64
"""Doublings are capped here so that ``2 ** failures`` never overflows however long a link fails."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential backoff with jitter (seconds; ``jitter`` a fraction in [0, 1))."""

    min_s: float
    max_s: float
    jitter: float

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"need 0 < min_s <= max_s, not min_s={self.min_s}, max_s={self.max_s}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {self.jitter}")

    def delay_s(self, failures: int, draw: float) -> float:
        """Wait before the next attempt after ``failures`` failed attempts in a row (0: none, wait 0)."""
        if failures <= 0:
            return 0.0
        nominal = min(self.max_s, self.min_s * 2.0 ** min(failures - 1, MAX_DOUBLINGS))
        return nominal * (1.0 - self.jitter * min(max(draw, 0.0), 1.0))
