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

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sim import child_simulator_pids

TESTS = Path(__file__).resolve().parent
# The files that took longest in a parallel run (pytest --durations), longest first; then whole directories,
# longest first; what is named nowhere comes last.
LONGEST_FILES = (
    "package/test_deb.py",
    "e2e/test_genealogy_proof.py",
    "fuzz/test_fuzz_tagmap.py",
    "e2e/test_spool_faults.py",
    "e2e/test_store_and_forward.py",
    "integration/test_opcua_security.py",
    "package/test_dists.py",
    "integration/test_reconnect_storm.py",
    "integration/test_opcua_source.py",
    "e2e/test_opcua_arrays_structures.py",
    "fuzz/test_fuzz_modbus_decode.py",
)
DIRECTORY_ORDER = ("package", "e2e", "interop", "integration", "fuzz", "unit")


def _rank(item: pytest.Item) -> tuple[int, int]:
    try:
        relative = item.path.resolve().relative_to(TESTS)
    except ValueError:
        return (len(LONGEST_FILES), len(DIRECTORY_ORDER))
    name, top = relative.as_posix(), relative.parts[0]
    file_rank = LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)
    return (file_rank, DIRECTORY_ORDER.index(top) if top in DIRECTORY_ORDER else len(DIRECTORY_ORDER))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: the order inside each file and directory stays as collected


@pytest.fixture(autouse=True, scope="module")
def no_simulator_left_running() -> Iterator[None]:
    """After the last test of a module (its own module fixtures end first), no simulator process it started may still
    run: a leaked one keeps serving its ports and burning CPU beside every later test, and outlives the run."""
    yield
    left = child_simulator_pids()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"simulator processes this module started are still running (killed now): {left}"
