"""gateway.genealogy: event records in, cells with their chain of rolls out; de-duplication by seq and record_id."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
import pytest

from gateway.genealogy import Added, Genealogy, parse_record

BASE = "acme/dunkirk"
COATER = f"{BASE}/electrode/cathode-1/coater-01/_events/roll"
CALENDER = f"{BASE}/electrode/cathode-1/calender-01/_events/roll"
STACKER = f"{BASE}/cell-assembly/line-1/stacker-01/_events/cell"
RACK = f"{BASE}/formation/hall-a/rack-01/_events/graded_cell"


def payload(event: str, seq: int, record_id: int, fields: Mapping[str, object], **extra: object) -> bytes:
    body = {"event": event, "ts": "2026-12-07T12:00:00.000Z", "seq": seq, "record_id": record_id,
            "fields": {"record_id": record_id, **fields}, "quality": "good", **extra}
    return orjson.dumps(body)


def coated(seq: int, roll: str, weight: float = 220.5) -> tuple[str, bytes]:
    return COATER, payload("roll", seq, seq, {"roll_id": roll, "coat_weight_mean": weight, "coat_weight_std": 1.5})


def calendered(seq: int, roll: str, source: str) -> tuple[str, bytes]:
    return CALENDER, payload("roll", seq, seq, {"roll_id": roll, "input_roll_id": source, "thickness_mean": 140.0})


def stacked(seq: int, cell: str, cathode: str) -> tuple[str, bytes]:
    fields = {"cell_id": cell, "anode_roll_id": "CL02-R000001", "cathode_roll_id": cathode,
              "separator_roll_id": "SEP-R000001"}
    return STACKER, payload("cell", seq, seq, fields)


def graded(seq: int, cell: str, grade: int = 1, *, record_id: int | None = None) -> tuple[str, bytes]:
    fields = {"cell_id": cell, "grade": grade, "discharge_capacity": 98.5}
    return RACK, payload("graded_cell", seq, seq if record_id is None else record_id, fields)


def test_a_finished_cell_is_traced_to_the_coated_roll_of_its_cathode() -> None:
    genealogy = Genealogy()
    for message in (coated(1, "CT01-R000101"), calendered(1, "CL01-R000201", "CT01-R000101"),
                    stacked(1, "CELL-S1-00000001", "CL01-R000201"), graded(1, "CELL-S1-00000001")):
        assert genealogy.add(*message) is Added.NEW
    [cell] = genealogy.finished_cells()
    assert genealogy.cell("CELL-S1-00000001") == cell
    assert cell.cell_id == "CELL-S1-00000001"
    assert cell.finished is not None and cell.finished.fields["grade"] == 1
    assert cell.stacked is not None and cell.stacked.equipment == "stacker-01"
    cathode = cell.rolls["cathode"]
    assert [roll.roll_id for roll in cathode.chain()] == ["CL01-R000201", "CT01-R000101"]
    assert cathode.record is not None and cathode.record.equipment == "calender-01"
    origin = cathode.origin
    assert origin.record is not None and origin.record.equipment == "coater-01"
    assert origin.record.fields["coat_weight_mean"] == 220.5
    # Anode and separator rolls come from lines the gateway does not read: ids without records.
    assert cell.rolls["anode"].record is None and cell.rolls["anode"].chain() == [cell.rolls["anode"]]
    assert cell.rolls["separator"].roll_id == "SEP-R000001"


def test_records_in_any_order_make_the_same_chain() -> None:
    messages = [coated(1, "CT01-R000101"), calendered(1, "CL01-R000201", "CT01-R000101"),
                stacked(1, "CELL-S1-00000001", "CL01-R000201"), graded(1, "CELL-S1-00000001")]
    forward, backward = Genealogy(), Genealogy()
    for message in messages:
        forward.add(*message)
    for message in reversed(messages):
        backward.add(*message)
    assert forward.finished_cells() == backward.finished_cells()


def test_a_link_whose_record_was_not_seen_ends_the_chain() -> None:
    genealogy = Genealogy()
    genealogy.add(*calendered(1, "CL01-R000201", "CT01-R000100"))  # coated before the gateway ran
    genealogy.add(*graded(1, "CELL-00001001"))  # a cell the rack held before the line delivered any
    genealogy.add(*stacked(1, "CELL-S1-00000001", "CL01-R000201"))
    [held] = genealogy.finished_cells()
    assert held.stacked is None and held.rolls == {}
    cell = genealogy.cell("CELL-S1-00000001")
    assert cell.finished is None
    chain = cell.rolls["cathode"].chain()
    assert [roll.roll_id for roll in chain] == ["CL01-R000201", "CT01-R000100"]
    assert chain[0].record is not None and chain[1].record is None


def test_duplicates_by_seq_and_republished_records_by_record_id() -> None:
    genealogy = Genealogy()
    topic, first = graded(7, "CELL-S1-00000007")
    assert genealogy.add(topic, first) is Added.NEW
    # QoS 1 redelivery or a replayed spool: the same seq.
    assert genealogy.add(topic, first) is Added.DUPLICATE_SEQ
    # A gateway killed after the PUBACK and before its ack to the PLC publishes the record again with a new seq.
    _, again = graded(12, "CELL-S1-00000007", record_id=7)
    assert genealogy.add(topic, again) is Added.DUPLICATE_RECORD
    assert len(genealogy.finished_cells()) == 1
    assert (genealogy.counts.new, genealogy.counts.duplicate_seq, genealogy.counts.duplicate_record) == (1, 1, 1)


def test_a_known_record_id_with_other_fields_is_a_new_record() -> None:
    """A PLC that numbers its records from 1 again after a restart: the ids repeat, the records do not."""
    genealogy = Genealogy()
    genealogy.add(*graded(1, "CELL-S1-00000001", record_id=1))
    assert genealogy.add(*graded(2, "CELL-S1-00000002", record_id=1)) is Added.NEW
    assert [cell.cell_id for cell in genealogy.finished_cells()] == ["CELL-S1-00000001", "CELL-S1-00000002"]


def test_the_same_seq_on_another_topic_is_another_record() -> None:
    genealogy = Genealogy()
    assert genealogy.add(*coated(1, "CT01-R000101")) is Added.NEW
    assert genealogy.add(*calendered(1, "CL01-R000201", "CT01-R000101")) is Added.NEW


@pytest.mark.parametrize(
    ("topic", "body"),
    [
        (f"{BASE}/formation/hall-a/rack-01/ch001/voltage", b'{"value": 3.7, "seq": 1}'),
        (f"{BASE}/formation/hall-a/rack-01/_status", b'{"connected": true}'),
        (RACK, b""),
        (RACK, b"not json"),
        (RACK, b'{"event": "graded_cell", "seq": 1}'),  # no fields
        (RACK, b"[1, 2]"),
    ],
)
def test_other_messages_are_not_records(topic: str, body: bytes) -> None:
    genealogy = Genealogy()
    assert genealogy.add(topic, body) is Added.NOT_A_RECORD
    assert len(genealogy) == 0


def test_parse_record_reads_the_payload_of_the_events_section() -> None:
    topic, body = graded(3, "CELL-S1-00000003")
    record = parse_record(topic, body.replace(b'"quality":"good"', b'"quality":"good","historical":true'))
    assert record is not None
    assert (record.equipment, record.event, record.seq, record.record_id) == ("rack-01", "graded_cell", 3, 3)
    assert record.historical and record.quality == "good" and record.text("cell_id") == "CELL-S1-00000003"


def test_last_cells_shows_finished_cells_first_then_cells_still_in_formation() -> None:
    genealogy = Genealogy()
    for n in range(1, 6):
        genealogy.add(*stacked(n, f"CELL-S1-{n:08d}", "CL01-R000201"))
    genealogy.add(*graded(1, "CELL-S1-00000001"))
    genealogy.add(*graded(2, "CELL-S1-00000002"))
    shown = genealogy.last_cells(4)
    assert [cell.cell_id for cell in shown] == ["CELL-S1-00000002", "CELL-S1-00000001", "CELL-S1-00000005",
                                                "CELL-S1-00000004"]
    assert [cell.finished is not None for cell in shown] == [True, True, False, False]
    assert [cell.cell_id for cell in genealogy.last_cells(1)] == ["CELL-S1-00000002"]


def test_max_records_keeps_the_recent_past() -> None:
    genealogy = Genealogy(max_records=3)
    genealogy.add(*coated(1, "CT01-R000101"))
    genealogy.add(*calendered(1, "CL01-R000201", "CT01-R000101"))
    genealogy.add(*stacked(1, "CELL-S1-00000001", "CL01-R000201"))
    genealogy.add(*graded(1, "CELL-S1-00000001"))  # the coated roll's record goes
    assert len(genealogy) == 3 and genealogy.counts.evicted == 1
    [cell] = genealogy.finished_cells()
    chain = cell.rolls["cathode"].chain()
    assert chain[0].record is not None and chain[1].record is None
    with pytest.raises(ValueError, match="max_records"):
        Genealogy(max_records=0)


def test_a_loop_of_roll_ids_ends() -> None:
    genealogy = Genealogy()
    genealogy.add(*calendered(1, "R-A", "R-B"))
    genealogy.add(*calendered(2, "R-B", "R-A"))
    assert 2 <= len(genealogy.roll("R-A").chain()) <= 17
