"""cProfile of the gateway process of a benchmark run, for finding where its CPU goes.

Put this directory on ``PYTHONPATH`` (an absolute path: the benchmark starts the gateway in its work directory)
and name an output prefix in ``PROFILE_GATEWAY_TO`` (not a ``CELLGATE_`` name: those override the tag map);
every ``python -m gateway.cli run ...`` started with that environment (``benchmarks/run.py`` passes its own on to
the gateway) profiles itself from start-up and writes ``{prefix}.{pid}`` at exit (on the stop the benchmark
sends it)::

    PYTHONPATH=$PWD/benchmarks/profile_gateway PROFILE_GATEWAY_TO=/tmp/gw .venv/bin/python benchmarks/run.py \\
        --scenario modbus-1k --mode tag --interval-ms 30 --qos 0 --broker-inflight 20 --subscriber-qos 0
    .venv/bin/python -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('tottime').print_stats(30)" \\
        /tmp/gw.<pid>

Call counts are exact whatever the machine's load; the times are wall-clock and include the profiler's own
cost per Python call, so compare shares within one profile, not seconds between machines. Other processes
started with the same environment (bench servers, subscriber) are left alone: at start-up a ``-m`` process's
``sys.argv`` is ``["-m", *arguments]`` and only ``run`` with a tag map (``-c``) qualifies.
"""

from __future__ import annotations

import atexit
import cProfile
import os
import sys


def _start(prefix: str) -> None:
    profile = cProfile.Profile()

    def dump() -> None:
        profile.disable()
        profile.dump_stats(f"{prefix}.{os.getpid()}")

    atexit.register(dump)
    profile.enable()


_PREFIX = os.environ.get("PROFILE_GATEWAY_TO")
if _PREFIX and sys.argv[:1] == ["-m"] and "run" in sys.argv and "-c" in sys.argv:
    _start(_PREFIX)
