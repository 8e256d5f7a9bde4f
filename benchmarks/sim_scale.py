"""How much CPU the Modbus simulators take at hall scale: ``python -m simulators --only modbus --racks 10
--channels 256`` (10 racks x 256 channels, full points, each rack on its own port, stepped and written at 1 Hz;
plus the stacker of the default set at 5 Hz).

Starts the simulators as a child process on free ports, checks that every rack answers and keeps updating
(``Rack.Uptime`` of the first and the last rack grows), and measures the child's CPU time (user + system, from
``/proc/<pid>/stat``) over ``--duration-s`` seconds. Prints one JSON object; ``cpu_percent_of_one_core`` is the
number to watch (100 = one core busy). Linux only.

Run: ``.venv/bin/python benchmarks/sim_scale.py [--racks 10] [--channels 256] [--duration-s 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

REPO_ROOT = Path(__file__).resolve().parents[1]
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
READY = re.compile(r"^simulators ready .* modbus_ports=(?P<ports>\S+)")
UPTIME_INPUT_REGISTER = 0  # Rack.Uptime, uint32 ABCD in input registers 0-1 (simulators.servers.address_map)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (fields 14 and 15 of /proc/<pid>/stat, after the command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def uptime(port: int) -> int:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
    if not await client.connect():
        raise RuntimeError(f"rack on port {port} does not answer")
    try:
        response = await client.read_input_registers(UPTIME_INPUT_REGISTER, count=2, device_id=1)
        if response.isError():
            raise RuntimeError(f"rack on port {port}: {response}")
        return int((response.registers[0] << 16) | response.registers[1])
    finally:
        client.close()


async def uptimes(ports: list[int]) -> list[int]:
    return [await uptime(port) for port in ports]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--racks", type=int, default=10)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--encoding", choices=("float32", "scaled"), default="float32")
    args = parser.parse_args()

    argv = [sys.executable, "-m", "simulators", "--only", "modbus", "--racks", str(args.racks),
            "--channels", str(args.channels), "--modbus-port", "0",
            "--encoding", args.encoding]
    started = time.monotonic()
    process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = READY.match(line.strip())
        if match is None:
            raise RuntimeError(f"no ready line: {line!r}; stderr: {process.stderr.read() if process.stderr else ''}")
        ready_s = time.monotonic() - started
        ports = {device: int(port) for device, _, port in (p.partition(":") for p in match["ports"].split(","))}
        racks = [port for device, port in ports.items() if device.startswith("rack-")]
        time.sleep(args.warmup_s)
        probe = [racks[0], racks[-1]]
        first = asyncio.run(uptimes(probe))
        cpu_before, wall_before = cpu_seconds(process.pid), time.monotonic()
        time.sleep(args.duration_s)
        cpu_after, wall_after = cpu_seconds(process.pid), time.monotonic()
        last = asyncio.run(uptimes(probe))
        result = {
            "command": " ".join(argv[1:]),
            "racks": len(racks),
            "channels_per_rack": args.channels,
            "points_served": None,
            "ready_s": round(ready_s, 2),
            "measured_s": round(wall_after - wall_before, 2),
            "cpu_s": round(cpu_after - cpu_before, 3),
            "cpu_percent_of_one_core": round(100.0 * (cpu_after - cpu_before) / (wall_after - wall_before), 1),
            "rss_mb": round(rss_mb(process.pid), 1),
            "uptime_first_rack_s": [first[0], last[0]],
            "uptime_last_rack_s": [first[1], last[1]],
            "updating": all(b > a for a, b in zip(first, last, strict=True)),
            "cpu_count": os.cpu_count(),
        }
        from simulators.describe import SimulatorOptions, plan_simulators

        plan = plan_simulators(SimulatorOptions(racks=args.racks, channels=args.channels))
        result["points_served"] = sum(len(m.points) for m in plan.machines if m.register_map is not None)
        print(json.dumps(result, indent=2))
        return 0 if result["updating"] else 1
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    sys.exit(main())
