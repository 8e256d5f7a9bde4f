"""The simulated line: what one machine produces is what the next one loads, by id (pure: no I/O).

    coater  --finished roll ids-->  calender (input roll at each end of roll)
    calender --finished roll ids--> stacker (cathode roll every ``cells_per_roll`` cells)
    stacker --good cell ids------>  formation racks (in trays of ``tray_cells``; a free channel loads the next
                                    cell of its rack's tray)

Each link is a queue of ids the upstream machine appended (its ``finished_rolls`` / ``completed_cell_ids``) that the
downstream machine takes from, oldest first, when it needs material. A machine that finds its queue empty keeps
what it has (calender, stacker: the roll in use runs on) or waits (a formation channel stays Finished until a
cell comes). At start every machine holds material made before the simulation: the calender the coater's
previous roll, the stacker the calender's previous roll, the racks cells with their own ids. Anode and separator
rolls come from lines that are not simulated; their ids count up. Everything is driven by the machines' own
steps, so with the same seed and the same step sequence the ids are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from simulators.machines.calender import Calender
from simulators.machines.coater import Coater
from simulators.machines.formation import FormationRack
from simulators.machines.stacker import Stacker


class IdQueue:
    """Takes ids, oldest first, from a list an upstream machine appends to (consumed ids are dropped)."""

    def __init__(self, produced: list[str]) -> None:
        self._produced = produced

    def take(self) -> str | None:
        if not self._produced:
            return None
        return self._produced.pop(0)

    def __len__(self) -> int:
        return len(self._produced)


class TrayQueue:
    """Cells reach a rack tray by tray: a tray of ``size`` ids leaves the store only once it is full."""

    def __init__(self, store: IdQueue, size: int) -> None:
        if size < 1:
            raise ValueError("a tray holds at least one cell")
        self._store = store
        self._size = size
        self.tray: list[str] = []
        self.trays = 0

    def take(self) -> str | None:
        if not self.tray:
            if len(self._store) < self._size:
                return None
            self.tray = [cell for cell in (self._store.take() for _ in range(self._size)) if cell is not None]
            self.trays += 1
        return self.tray.pop(0)


def previous_lot_id(machine_output_lot: int, prefix: str) -> str:
    """Id of the roll the upstream machine finished just before the simulation started."""
    return f"{prefix}{max(machine_output_lot - 1, 0):06d}"


class Line:
    """Connects the machines of one line. Any of them may be missing (a partial plan): links skip it."""

    def __init__(
        self,
        *,
        coater: Coater | None = None,
        calender: Calender | None = None,
        stacker: Stacker | None = None,
        racks: Sequence[FormationRack] = (),
        tray_cells: int = 8,
    ) -> None:
        self.queues: dict[str, IdQueue] = {}
        self.trays: list[TrayQueue] = []
        if coater is not None and calender is not None:
            header = coater.header
            calender.header.input_lot_text = previous_lot_id(header.output_lot, header.config.output_lot_prefix)
            queue = self.queues["coated_rolls"] = IdQueue(coater.finished_rolls)
            calender.roll_source = queue.take
        if calender is not None and stacker is not None:
            header = calender.header
            stacker.load_rolls(cathode=previous_lot_id(header.output_lot, header.config.output_lot_prefix))
            queue = self.queues["calendered_rolls"] = IdQueue(calender.finished_rolls)
            stacker.cathode_source = queue.take
        if stacker is not None and racks:
            queue = self.queues["stacked_cells"] = IdQueue(stacker.completed_cell_ids)
            for rack in racks:
                tray = TrayQueue(queue, tray_cells)
                self.trays.append(tray)
                source: Callable[[], str | None] = tray.take
                rack.set_cell_source(source)


def connect(models: Sequence[object]) -> Line:
    """Wire the first coater, calender and stacker and every rack among ``models`` (plan order) into one line."""
    coater = next((m for m in models if isinstance(m, Coater)), None)
    calender = next((m for m in models if isinstance(m, Calender)), None)
    stacker = next((m for m in models if isinstance(m, Stacker)), None)
    racks = [m for m in models if isinstance(m, FormationRack)]
    return Line(coater=coater, calender=calender, stacker=stacker, racks=racks)
