"""Benchmark `load-50k`: load, validate, expand and plan a large tag map; prints one JSON object.

    .venv/bin/python benchmarks/load_plan.py [--devices 10] [--channels 640] [--repeat 3]

Ten Modbus racks x 640 channels x 8 tags = 51,200 tags by default. Reports the best and median wall time of
load (YAML + validation + expansion) and of planning every device's Modbus reads, plus the process's peak RSS
(one map at a time).
Target (issue "Performance"): a 50,000-tag map loads and plans in < 2 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

from gateway.assembly import modbus_plan
from gateway.tagmap import ModbusDevice, load_plant

TEMPLATE = """\
templates:
  channel:
    - {name: voltage, address: 0, type: float32, unit: V, min: 0, max: 5}
    - {name: current, address: 2, type: float32, unit: A}
    - {name: capacity, address: 4, type: float32, unit: A.h}
    - {name: energy, address: 6, type: float32, unit: W.h}
    - {name: temperature, address: 8, type: int16, scale: 0.1, unit: Cel}
    - {name: step, address: 9, type: uint16}
    - {name: status, address: 10, type: uint16}
    - {name: cell_time, address: 11, type: uint32, unit: s}
"""


def tag_map_text(devices: int, channels: int) -> str:
    lines = [
        "gateway: {id: bench, enterprise: acme, site: dunkirk}",
        'mqtt: {url: "mqtt://127.0.0.1:1883"}',
        TEMPLATE,
        "devices:",
    ]
    for index in range(devices):
        lines += [
            f"  - name: rack-{index + 1:02d}",
            "    area: formation",
            "    line: hall-a",
            "    protocol: modbus",
            "    host: 127.0.0.1",
            f"    port: {5020 + index}",
            f"    repeat: {{template: channel, count: {channels}, start: 0, stride: 16, name: 'ch{{n:03d}}'}}",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--channels", type=int, default=640)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.yaml"
        path.write_text(tag_map_text(args.devices, args.channels), encoding="utf-8")
        load_s: list[float] = []
        plan_s: list[float] = []
        tags = requests = 0
        for _ in range(args.repeat):
            started = time.perf_counter()
            plant = load_plant(path, environ={})
            loaded = time.perf_counter()
            plans = [modbus_plan(device) for device in plant.devices if isinstance(device, ModbusDevice)]
            planned = time.perf_counter()
            load_s.append(loaded - started)
            plan_s.append(planned - loaded)
            tags = plant.tag_count
            requests = sum(len(plan.requests) for plan in plans)
            # Let this round's models and plans go before the next load, or the peak RSS below would be that of
            # two tag maps at once, not what a gateway loading one map reaches.
            del plant, plans
            gc.collect()
    total = [a + b for a, b in zip(load_s, plan_s, strict=True)]
    print(
        json.dumps(
            {
                "scenario": "load-50k",
                "tags": tags,
                "devices": args.devices,
                "read_requests_per_cycle": requests,
                "load_s_best": round(min(load_s), 3),
                "plan_s_best": round(min(plan_s), 3),
                "total_s_median": round(statistics.median(total), 3),
                "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "target_total_s": 2.0,
            }
        )
    )


if __name__ == "__main__":
    main()
