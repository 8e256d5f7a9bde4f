"""Result FIFOs (ready / record id / ack) and the line model that makes roll and cell ids connect."""

from __future__ import annotations

import random

import pytest

from simulators.machines.calender import Calender, CalenderConfig
from simulators.machines.coater import Coater, CoaterConfig
from simulators.machines.formation import FormationConfig, FormationProtocol, FormationRack
from simulators.machines.header import MachineHeader
from simulators.machines.line import Line
from simulators.machines.packml import PackMLTiming
from simulators.machines.points import DataType, PointSpec
from simulators.machines.results import ResultFifo
from simulators.machines.stacker import Stacker, StackerConfig, next_roll_id
from tests.support.machines import STEADY, check_values_match_points
from tests.support.sim import num

FIELD = PointSpec(name="Result.Value", data_type=DataType.DOUBLE, unit=None, description="x")
# End of roll about every 20 min, nothing else.
ROLLS = PackMLTiming(mean_s_between_holds=None, mean_s_between_suspends=None, mean_s_between_stops=None,
                     mean_s_between_aborts=None, mean_s_between_completes=1200.0)


def test_fifo_presents_the_oldest_record_until_its_id_is_acknowledged() -> None:
    fifo = ResultFifo(unit="cell", fields=[FIELD])
    assert fifo.values()["Result.Ready"] is False and fifo.values()["Result.RecordId"] == 0
    ids = [fifo.push({"Result.Value": float(n)}) for n in range(3)]
    assert ids == [1, 2, 3]
    values = fifo.values()
    assert (values["Result.Ready"], values["Result.RecordId"], values["Result.Value"], values["Result.Pending"]) == (
        True, 1, 0.0, 3)
    assert fifo.ack(2) is False  # not the presented one: nothing happens
    assert fifo.ack(0) is False
    assert fifo.values()["Result.RecordId"] == 1
    assert fifo.ack(1) is True
    assert fifo.ack(1) is False  # a repeated acknowledgement is harmless
    values = fifo.values()
    assert (values["Result.RecordId"], values["Result.Value"], values["Result.Ack"]) == (2, 1.0, 1)
    assert fifo.ack(2) and fifo.ack(3)
    assert fifo.values()["Result.Ready"] is False and fifo.values()["Result.Pending"] == 0


def test_a_full_fifo_keeps_what_it_holds_and_counts_the_refused() -> None:
    fifo = ResultFifo(unit="roll", fields=[FIELD], capacity=2)
    assert fifo.push({"Result.Value": 1.0}) == 1
    assert fifo.push({"Result.Value": 2.0}) == 2
    assert fifo.push({"Result.Value": 3.0}) is None
    assert fifo.values()["Result.Lost"] == 1 and fifo.values()["Result.RecordId"] == 1
    with pytest.raises(ValueError, match="lacks"):
        fifo.push({})


def test_stacker_records_every_cell_once_with_its_rolls() -> None:
    stacker = Stacker(rng=random.Random(2), config=StackerConfig(packml=STEADY, cells_per_roll=3))
    for _ in range(int(10 * 40 / 0.5)):
        stacker.step(0.5)
    check_values_match_points(stacker.points, stacker.values())
    records = stacker.results.pending
    assert len(records) == stacker.cells_completed >= 8
    assert [r.fields["Result.CellId"] for r in records] == [
        f"CELL-S1-{stacker.cell_serial - stacker.cells_completed + i:08d}" for i in range(len(records))]
    cathodes = [r.fields["Result.CathodeRollId"] for r in records]
    assert cathodes[:3] == ["CL01-R000001"] * 3 and cathodes[3:6] == ["CL01-R000002"] * 3
    assert all(r.fields["Result.Sheets"] == 81 for r in records)


def test_formation_rack_records_every_graded_cell() -> None:
    protocol = FormationProtocol.formation_and_grading(contact_fault_probability=0.0, exchange_s=60.0)
    config = FormationConfig(channels=2, protocol=protocol, extended_points=True, stagger=False, noise=False,
                             packml=STEADY)
    rack = FormationRack(rng=random.Random(4), config=config)
    cells = [channel.cell_id for channel in rack.channels]
    for _ in range(20 * 6):
        rack.step(600.0)
    check_values_match_points(rack.points, rack.values())
    records = rack.results.pending
    assert len(records) == sum(channel.cells_completed for channel in rack.channels) >= 2
    assert {r.fields["Result.CellId"] for r in records[:2]} == set(cells)
    for record in records:
        charge = num(record.fields["Result.FirstChargeCapacity"])
        discharge = num(record.fields["Result.DischargeCapacity"])
        assert num(record.fields["Result.CoulombicEfficiency"]) == pytest.approx(100.0 * discharge / charge)
        assert record.fields["Result.Grade"] in (1, 2, 3)


def test_the_line_passes_roll_ids_from_coater_to_calender_to_stacker_and_cells_to_formation() -> None:
    coater = Coater(rng=random.Random(1), config=CoaterConfig(extended_points=True, packml=ROLLS, noise=False))
    calender = Calender(rng=random.Random(2), config=CalenderConfig(packml=ROLLS, noise=False))
    stacker = Stacker(rng=random.Random(3), config=StackerConfig(packml=STEADY, cells_per_roll=20))
    protocol = FormationProtocol.formation_and_grading(contact_fault_probability=0.0, exchange_s=60.0)
    racks = [FormationRack(rng=random.Random(5), config=FormationConfig(
        channels=4, protocol=protocol, extended_points=True, noise=False, packml=STEADY))]
    Line(coater=coater, calender=calender, stacker=stacker, racks=racks)
    assert len(coater.values()["Lot.OutputLotId"]) == len(calender.values()["Lot.InputLotId"])  # same format
    for _ in range(int(6 * 3600 / 2.0)):
        for machine in (coater, calender, stacker, *racks):
            machine.step(2.0)
    for _ in range(int(24 * 3600 / 600.0)):  # a formation takes ~14 h: the racks go on with the cells in store
        for rack in racks:
            rack.step(600.0)
    coated = {r.fields["Result.RollId"]: r for r in coater.results.pending}
    calendered = {r.fields["Result.RollId"]: r for r in calender.results.pending}
    assert len(coated) >= 3 and len(calendered) >= 3
    # Every calendered roll after the first came from a roll the coater recorded.
    inputs = [r.fields["Result.InputRollId"] for r in calender.results.pending]
    assert all(roll in coated for roll in inputs[1:])
    assert inputs[0] == f"CT01-R{coater.header.output_lot - len(coated) - 1:06d}"  # made before the start
    # The stacker's cathodes after its first roll are calendered rolls.
    cathodes = {r.fields["Result.CathodeRollId"] for r in stacker.results.pending}
    assert len(cathodes) >= 2
    assert cathodes - {stacker.config.cathode_roll_id} <= set(calendered) | {
        f"CL01-R{calender.header.output_lot - len(calendered) - 1:06d}"}
    # Formation graded cells the stacker made (the racks' first cells were loaded before the start).
    stacked = {r.fields["Result.CellId"] for r in stacker.results.pending}
    formed = [r.fields["Result.CellId"] for rack in racks for r in rack.results.pending]
    from_line = [c for c in formed if str(c).startswith("CELL-S1-")]
    assert from_line and set(from_line) <= stacked
    assert len(set(formed)) == len(formed)


def test_the_line_is_deterministic_with_the_seed() -> None:
    def run() -> list[object]:
        stacker = Stacker(rng=random.Random(3), config=StackerConfig(packml=STEADY, cells_per_roll=5))
        calender = Calender(rng=random.Random(2), config=CalenderConfig(packml=ROLLS))
        Line(calender=calender, stacker=stacker)
        for _ in range(3000):
            calender.step(1.0)
            stacker.step(1.0)
        return [dict(r.fields) for r in stacker.results.pending]

    assert run() == run()


def test_roll_ids_count_up_in_their_own_format() -> None:
    assert next_roll_id("CL02-R000041") == "CL02-R000042"
    assert next_roll_id("SEP-R999999") == "SEP-R1000000"
    header = MachineHeader(rng=random.Random(1), config=CalenderConfig().header_config())
    assert len(header.input_lot_id) == len("CT01-R") + 6


def test_describe_documents_the_handshake_and_puts_every_ack_where_a_client_can_write() -> None:
    from simulators.describe import describe_yaml, plan_simulators

    text = describe_yaml(plan_simulators())
    assert "write that record_id to result/ack" in text
    acks = [line for line in text.splitlines() if "{name: result/ack," in line]
    assert len(acks) == 5  # coater, calender, stacker, two racks
    assert all("table: input" not in line and "table: coil" not in line for line in acks)


def test_a_stacker_cell_id_fits_a_rack_channels_cell_id_registers_whole() -> None:
    from simulators.servers.address_map import CELL_ID_REGISTERS

    stacker = Stacker(rng=random.Random(1))
    assert len(stacker.cell_id.encode()) <= 2 * CELL_ID_REGISTERS


def test_recipe_version_and_lots_change_over_time() -> None:
    coater = Coater(rng=random.Random(1), config=CoaterConfig(extended_points=True, packml=ROLLS, noise=False))
    seen: set[tuple[object, object]] = set()
    for _ in range(int(4 * 3600 / 5.0)):
        values = coater.step(5.0)
        seen.add((values["Recipe.Version"], values["Lot.OutputLotId"]))
    versions = {version for version, _ in seen}
    assert len(versions) >= 2 and len({lot for _, lot in seen}) >= 6
    records = [r.fields for r in coater.results.pending]
    recorded = {r["Result.RecipeVersion"] for r in records}
    assert recorded <= versions and len(recorded) >= 2  # each roll carries the version it was coated with


def test_cells_reach_a_rack_tray_by_tray() -> None:
    stacker = Stacker(rng=random.Random(3), config=StackerConfig(packml=STEADY))
    protocol = FormationProtocol(exchange_s=30.0, contact_fault_probability=0.0)  # the short v1 protocol
    rack = FormationRack(rng=random.Random(5), config=FormationConfig(
        channels=4, protocol=protocol, stagger=False, noise=False, packml=STEADY))
    line = Line(stacker=stacker, racks=[rack], tray_cells=3)
    tray = line.trays[0]
    store = line.queues["stacked_cells"]
    for _ in range(int(10 * 3600 / 30.0)):  # a v1 cell takes ~3 h
        stacker.step(30.0)
        before = (tray.trays, len(store), list(tray.tray))
        rack.step(30.0)
        if tray.trays != before[0]:
            # A whole tray left the store (the stacker did not step in between), and the rack had emptied its
            # previous one: cells never dribble in one by one.
            assert before[2] == [] and tray.trays == before[0] + 1 and len(store) == before[1] - 3
        else:
            assert len(store) == before[1]
    loaded = [c.cell_id for c in rack.channels if c.cell_id.startswith("CELL-S1-")]
    assert tray.trays >= 2 and loaded
    taken = 3 * tray.trays - len(tray.tray)
    assert taken >= len(loaded)


def test_a_stacker_whose_line_has_no_finished_roll_runs_on_with_the_roll_it_has() -> None:
    stacker = Stacker(rng=random.Random(2), config=StackerConfig(packml=STEADY, cells_per_roll=2))
    calender = Calender(rng=random.Random(2), config=CalenderConfig(packml=STEADY))  # never ends a roll
    Line(calender=calender, stacker=stacker)
    mounted = stacker.cathode_roll_id
    for _ in range(int(8 * 40 / 0.5)):
        stacker.step(0.5)
    assert stacker.cells_completed >= 6
    assert {r.fields["Result.CathodeRollId"] for r in stacker.results.pending} == {mounted}
    assert len({r.fields["Result.AnodeRollId"] for r in stacker.results.pending}) >= 3
