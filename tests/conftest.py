"""Suite-wide test ordering for parallel runs (``make test``: pytest-xdist, ``--dist loadfile
--no-loadscope-reorder``).

xdist hands whole files to its workers in collection order (without ``--no-loadscope-reorder`` it would hand
out the files with the most tests first, which leaves the few long end-to-end tests for the end). A long file
handed out last keeps one worker busy while the others sit idle, so the directories whose files take longest
(a Debian package build, end-to-end runs of real processes) are collected first and the many short unit files
fill the gaps at the end. The order within a directory is unchanged, and no test depends on the order (each
brings its own brokers, ports and temporary directories).
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
# Longest files first (by the suite's durations report); directories not named here come after these.
DIRECTORY_ORDER = ("package", "e2e", "interop", "integration", "fuzz", "unit")


def _rank(item: pytest.Item) -> int:
    try:
        top = item.path.resolve().relative_to(TESTS).parts[0]
    except ValueError:
        return len(DIRECTORY_ORDER)
    return DIRECTORY_ORDER.index(top) if top in DIRECTORY_ORDER else len(DIRECTORY_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the order inside each directory stays as collected
