"""Flash wear of the seq state: bytes written per hour at the tag limit (100,000 topics, per-tag, 1 s interval).

Drives ``gateway.seq_reservation.SeqReservations`` as the runtime does (a checkpoint every
``SEQ_CHECKPOINT_S``, each device's budget charged once per cycle before numbering), with simulated clocks
and a store that counts what would be written instead of writing it, so an hour takes seconds to a minute.
Prints one JSON object: bytes and slot writes per hour, by file.

``--module PATH`` loads another implementation of the module instead (the same driver works for any version
with ``SeqReservations``/``budget``/``checkpoint``/``stop``), e.g. the one before the reservation/snapshot
split: ``git show 2b75ba7:gateway/seq_reservation.py > /tmp/old_seq.py`` then ``--module /tmp/old_seq.py``.
Run: ``.venv/bin/python benchmarks/seq_wear.py [--devices 100] [--tags 1000] [--minutes 60]``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

from gateway import seq_reservation
from gateway.runtime import SEQ_CHECKPOINT_S

FIELDS = ("voltage", "current", "capacity", "energy", "temperature", "step", "status", "cell_time")


class CountingStore:
    """Takes every slot write of any version of the module and counts it; reads find nothing (a first start)."""

    def __init__(self) -> None:
        self.bytes: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()

    def read(self, *name: object) -> Any:
        return None if name else [None, None]

    def write(self, slot: object, data: bytes) -> None:
        key = str(slot)
        self.bytes[key] += len(data)
        self.writes[key] += 1

    def set_aside(self, name: str, problem: str) -> None:
        raise AssertionError("nothing is read back here")


def load_module(path: str | None) -> ModuleType:
    if path is None:
        return seq_reservation
    spec = importlib.util.spec_from_file_location("seq_reservation_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


async def measure(module: ModuleType, *, devices: int, tags: int, minutes: float, first_seq: int) -> dict[str, Any]:
    names = [f"rack-{d:03d}" for d in range(1, devices + 1)]
    topics = {
        name: [f"acme/dunkirk/formation/hall-a/{name}/ch{t // len(FIELDS):03d}/{FIELDS[t % len(FIELDS)]}"
               for t in range(tags)]
        for name in names
    }
    now = [1_765_000_000.0]
    started = now[0]

    def snapshot() -> dict[str, dict[str, int]]:
        # Every topic has had one message per simulated second (per-tag, 1 s interval, changing values).
        seq = first_seq + int(now[0] - started)
        return {name: dict.fromkeys(device_topics, seq) for name, device_topics in topics.items()}

    async def run_io(call: Callable[[], None]) -> None:
        call()

    store = CountingStore()
    reservations = module.SeqReservations(
        store, snapshot=snapshot, period_s=SEQ_CHECKPOINT_S, clock=lambda: now[0], monotonic=lambda: now[0],
        run_io=run_io,
    )
    await reservations.start(used_before=False)
    for name in names:
        reservations.claim(topics[name])
    budgets = [reservations.budget(name) for name in names]
    seconds = int(minutes * 60)
    wall = time.perf_counter()
    for second in range(1, seconds + 1):
        now[0] = started + second
        for budget in budgets:
            await budget.take(tags)  # one poll cycle: a message per tag
        if second % int(SEQ_CHECKPOINT_S) == 0:
            await reservations.checkpoint()
    await reservations.stop()
    hours = seconds / 3600
    return {
        "module": module.__file__,
        "topics": devices * tags,
        "devices": devices,
        "simulated_minutes": minutes,
        "bytes_per_hour": round(sum(store.bytes.values()) / hours),
        "slot_writes_per_hour": round(sum(store.writes.values()) / hours),
        "bytes_per_hour_by_file": {key: round(count / hours) for key, count in sorted(store.bytes.items())},
        "writes_per_hour_by_file": {key: round(count / hours) for key, count in sorted(store.writes.items())},
        "run_s": round(time.perf_counter() - wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--tags", type=int, default=1000, help="tags per device (per-tag topics)")
    parser.add_argument("--minutes", type=float, default=60.0, help="simulated time")
    parser.add_argument("--first-seq", type=int, default=1_000_000, help="seq at the start (a gateway up for days)")
    parser.add_argument("--module", help="path of another gateway/seq_reservation.py to measure")
    args = parser.parse_args()
    result = asyncio.run(
        measure(load_module(args.module), devices=args.devices, tags=args.tags, minutes=args.minutes,
                first_seq=args.first_seq)
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
