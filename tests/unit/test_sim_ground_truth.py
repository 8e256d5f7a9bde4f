"""The simulators' ground truth for end-to-end tests: every record a FIFO takes, logged when it takes it; and a
formation rack pushes one record per cell that ended, whatever the step length."""

from __future__ import annotations

import json
import random
from pathlib import Path

from simulators.ground_truth import record_results
from simulators.machines.formation import FormationConfig, FormationProtocol, FormationRack
from simulators.machines.stacker import Stacker, StackerConfig


def test_record_results_logs_every_record_pushed_until_closed(tmp_path: Path) -> None:
    stacker = Stacker(rng=random.Random(1), config=StackerConfig())
    log = tmp_path / "truth.jsonl"
    with record_results({"stacker-01": stacker, "not-a-machine": object()}, log):
        for _ in range(40):
            stacker.step(10.0)
        pushed = list(stacker.results.pending)
    assert len(pushed) >= 3
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [(line["machine"], line["record_id"]) for line in lines] == [("stacker-01", r.record_id) for r in pushed]
    assert lines[0]["fields"] == dict(pushed[0].fields)
    assert 0.0 < lines[0]["time_s"] <= 400.0
    stacker.step(200.0)  # after the context: nothing more is written
    assert len(log.read_text(encoding="utf-8").splitlines()) == len(lines)
    assert stacker.results.on_push is None


def test_a_long_rack_step_records_every_cell_by_its_own_id() -> None:
    """Every cell faults at its contact check: one step of an hour loads and rejects several cells in turn; each
    gets its own record under its own id (a step that diffed the channel before and after named them wrongly)."""
    protocol = FormationProtocol.formation_and_grading(contact_fault_probability=1.0, exchange_s=60.0)
    rack = FormationRack(rng=random.Random(3), config=FormationConfig(
        channels=1, protocol=protocol, extended_points=True, noise=False, stagger=False))
    cells = iter(f"CELL-S1-{n:08d}" for n in range(1, 100))
    rack.set_cell_source(lambda: next(cells))
    first = rack.channels[0].cell_id
    rack.step(3600.0)
    ids = [record.fields["Result.CellId"] for record in rack.results.pending]
    assert len(ids) >= 3
    assert ids == [first, *(f"CELL-S1-{n:08d}" for n in range(1, len(ids)))]
    assert {record.fields["Result.Grade"] for record in rack.results.pending} == {4}
