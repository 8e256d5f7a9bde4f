"""The live view's genealogy block, rendered from event records recorded from a real run of the proof
(tests/e2e/test_genealogy_proof.py: the simulated line, ``cellgate run``, Mosquitto), in the order they arrived."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.live_view import GREEN, RED, RESET, LiveView, render_cells, render_view

RECORDED = Path(__file__).resolve().parents[1] / "cases" / "genealogy" / "recorded_stream.jsonl"
PREFIX = "acme/dunkirk"


def recorded() -> list[tuple[str, dict[str, Any]]]:
    lines = RECORDED.read_text(encoding="utf-8").splitlines()
    return [(item["topic"], item["payload"]) for item in map(json.loads, lines)]


def fed_view(*, twice: bool = False) -> LiveView:
    view = LiveView(topic_filter=f"{PREFIX}/#")
    for topic, body in recorded():
        for _ in range(2 if twice else 1):  # QoS 1 redelivery: the same message again
            view.record(topic, json.dumps(body).encode())
    return view


def fields_of(equipment: str, cell_id: str) -> dict[str, Any]:
    return next(body["fields"] for topic, body in recorded()
                if topic.split("/")[-3] == equipment and body["fields"].get("cell_id") == cell_id)


def roll_fields(roll_id: str) -> dict[str, Any]:
    return next(body["fields"] for _, body in recorded() if body["fields"].get("roll_id") == roll_id)


def test_the_view_ends_with_the_last_finished_cells_and_their_genealogy() -> None:
    view = fed_view(twice=True)
    latest, messages, _ = view.snapshot()
    text = render_view(latest, prefix=PREFIX, messages=messages, rate=0.0, finished_cells=view.last_cells())
    lines = text.splitlines()
    start = lines.index("cells  (newest first; ? = no record of that roll seen)")
    block = lines[start + 1:]
    # Four finished cells in the recording, newest first, each shown once although every message came twice.
    finished = [line.split()[0] for line in block if not line.startswith("      ")]
    assert finished == ["CELL-S1-02452921", "CELL-S1-02452512", "CELL-S1-02452208", "CELL-92000001"]

    newest = fields_of("rack-01", "CELL-S1-02452921")
    stacked = fields_of("stacker-01", "CELL-S1-02452921")
    calendered = roll_fields(stacked["cathode_roll_id"])
    coated = roll_fields(calendered["input_roll_id"])
    assert block[0] == f"  CELL-S1-02452921  rack-01 grade NG  {newest['discharge_capacity']:.1f} A.h"
    assert block[1] == (
        f"      anode {stacked['anode_roll_id']}? | cathode {stacked['cathode_roll_id']} <- {coated['roll_id']} "
        f"coat {coated['coat_weight_mean']:.1f}±{coated['coat_weight_std']:.1f} g/m2 | "
        f"separator {stacked['separator_roll_id']}?"
    )
    # A cell whose cathode roll was calendered before the run: its id, no record, no coat weight.
    index = block.index("  CELL-S1-02452208  rack-01 grade NG  0.0 A.h")
    cathode = fields_of("stacker-01", "CELL-S1-02452208")["cathode_roll_id"]
    assert f"cathode {cathode}? |" in block[index + 1] and "coat" not in block[index + 1]
    # A cell the rack held when the run started: graded, without a stacker record.
    graded = fields_of("rack-01", "CELL-92000001")
    assert block[-2:] == [f"  CELL-92000001  rack-01 grade A  {graded['discharge_capacity']:.1f} A.h",
                          "      no stacker record (made before the gateway ran)"]
    # Event topics are not shown as tags of their equipment.
    assert "_events" not in text


def test_cells_not_graded_yet_fill_the_block_and_grades_are_coloured() -> None:
    view = LiveView(topic_filter=f"{PREFIX}/#")
    for topic, body in recorded():
        if topic.endswith("/_events/cell") or "CELL-92000001" in json.dumps(body):
            view.record(topic, json.dumps(body).encode())
    cells = view.last_cells(3)
    lines = render_cells(cells)
    capacity = fields_of("rack-01", "CELL-92000001")["discharge_capacity"]
    assert lines[1] == f"  CELL-92000001  rack-01 grade A  {capacity:.1f} A.h"
    assert [line.split()[0] for line in lines[3::2]] == ["CELL-S1-02452921", "CELL-S1-02452512"]
    assert all(line.endswith("stacked, not graded yet") for line in lines[3::2])
    coloured = render_cells(cells, colour=True)
    assert f"grade {GREEN}A{RESET}" in coloured[1]
    ng = render_cells(fed_view().last_cells(1), colour=True)
    assert f"grade {RED}NG{RESET}" in ng[1]


def test_no_block_without_records() -> None:
    view = LiveView(topic_filter=f"{PREFIX}/#")
    view.record(f"{PREFIX}/formation/hall-a/rack-01/ch001/voltage", b'{"value": 3.7, "quality": "good"}')
    latest, messages, _ = view.snapshot()
    text = render_view(latest, prefix=PREFIX, messages=messages, rate=0.0, finished_cells=view.last_cells())
    assert view.last_cells() == [] and "cells" not in text
