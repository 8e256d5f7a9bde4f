"""Ground truth for end-to-end tests: every record a machine's result FIFO takes, as JSON lines in a file.

``python -m simulators --record-results FILE`` (off by default) appends one line per record, at the moment the
machine pushes it (what the simulated PLC finished, before any client has read it)::

    {"machine": "stacker-01", "record_id": 17, "time_s": 812.4, "fields": {"Result.CellId": "CELL-S1-...", ...}}

``machine`` is the device name of the simulator plan, ``time_s`` the machine's model time, ``fields`` the record's
points by name. Each line is flushed as it is written, so a test can read the file while the simulators run;
nothing is written for a record the FIFO refuses (counted in ``Result.Lost``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TextIO

from simulators.machines.results import Record, ResultFifo


def _model_time_s(model: object) -> float | None:
    """The machine's model time: its header's clock (coater, calender, stacker) or its own (formation)."""
    for owner in (getattr(model, "header", None), model):
        value = getattr(owner, "time_s", None)
        if isinstance(value, float):
            return value
    return None


def _writer(out: TextIO, machine: str, model: object) -> Callable[[Record], None]:
    def write(record: Record) -> None:
        line = {"machine": machine, "record_id": record.record_id, "time_s": _model_time_s(model),
                "fields": dict(record.fields)}
        out.write(json.dumps(line, allow_nan=False) + "\n")
        out.flush()

    return write


@contextlib.contextmanager
def record_results(models: Mapping[str, object], path: Path) -> Iterator[None]:
    """Log every record pushed by the result FIFOs of ``models`` (device name -> model) to ``path`` (appended)
    while the context is open."""
    fifos: dict[str, ResultFifo] = {}
    for name, model in models.items():
        fifo = getattr(model, "results", None)
        if isinstance(fifo, ResultFifo):
            fifos[name] = fifo
    with path.open("a", encoding="utf-8") as out:
        for name, fifo in fifos.items():
            fifo.on_push = _writer(out, name, models[name])
        try:
            yield
        finally:
            for fifo in fifos.values():
                fifo.on_push = None
