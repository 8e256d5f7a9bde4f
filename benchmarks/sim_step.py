"""How much CPU the formation model costs at hall scale: 10 racks x 256 channels stepped once per second.

Prints one JSON object: milliseconds of CPU per simulated second for the whole hall (the 1 Hz budget is
1000 ms on one core), for the default protocol and for the full formation-and-grading protocol.
Run: ``.venv/bin/python benchmarks/sim_step.py [--racks 10] [--channels 256] [--steps 20]``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

from simulators.machines.formation import FormationConfig, FormationRack


def measure(*, racks: int, channels: int, steps: int, full: bool) -> dict[str, float]:
    def config(n: int) -> FormationConfig:
        return FormationConfig.full(channels=channels) if full else FormationConfig(channels=channels)

    hall = [FormationRack(rng=random.Random(n), config=config(n)) for n in range(racks)]
    for rack in hall:
        rack.step(1.0)  # warm-up: first-step allocations
    per_step: list[float] = []
    for _ in range(steps):
        started = time.process_time()
        for rack in hall:
            rack.step(1.0)
        per_step.append((time.process_time() - started) * 1000)
    return {
        "cpu_ms_per_step_median": round(statistics.median(per_step), 2),
        "cpu_ms_per_step_max": round(max(per_step), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--racks", type=int, default=10)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    result = {
        "scenario": "sim-step",
        "racks": args.racks,
        "channels": args.channels,
        "default_protocol": measure(racks=args.racks, channels=args.channels, steps=args.steps, full=False),
        "full_protocol": measure(racks=args.racks, channels=args.channels, steps=args.steps, full=True),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
