"""Shared pieces of the fuzz tests (tests/fuzz): Hypothesis settings and the checks every loader outcome must pass."""

from __future__ import annotations

import os
import re

from hypothesis import HealthCheck, settings

from gateway.errors import ConfigError

# YAML counts \r\n, \r, \n, NEL, LS and PS as line breaks; one more line than breaks (\r\n counted twice is fine:
# this is an upper bound).
_LINE_BREAK = re.compile("[\r\n\x85\u2028\u2029]")


def fuzz_settings(max_examples: int) -> settings:
    """No example database (nothing written into the repository), no per-example deadline (the box is shared and
    loaded), and no complaint about slow data generation: the point is the number of inputs tried.

    ``FUZZ_SCALE=20 pytest tests/fuzz`` multiplies every ``max_examples`` for a longer, deeper run.
    """
    scale = float(os.environ.get("FUZZ_SCALE", "1"))
    return settings(
        max_examples=max(1, round(max_examples * scale)),
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def max_line(text: str) -> int:
    """The highest line number a problem in ``text`` may point at."""
    return len(_LINE_BREAK.findall(text)) + 1


def assert_clear_config_error(err: ConfigError, *, text: str, filename: str) -> None:
    """A ConfigError an integrator can act on: at least one problem, each with a message, in ``filename``, at a
    line that exists (0 = no position), and no message that is much longer than the input that caused it."""
    assert err.problems, "ConfigError without problems"
    last_line = max_line(text)
    for problem in err.problems:
        assert problem.message.strip(), f"empty message: {problem!r}"
        assert problem.file == filename, f"problem names {problem.file!r}, not {filename!r}: {problem}"
        assert 0 <= problem.line <= last_line, f"line {problem.line} outside 1..{last_line}: {problem}"
        assert problem.line == 0 or problem.column >= 1, f"line without a column: {problem!r}"
        assert len(str(problem)) <= 1000 + 10 * len(text), f"message out of proportion to the input: {problem!s:.300}"
        assert "Traceback" not in problem.message
