"""Memory benchmarks on a real ``cellgate run``: peak RSS at the tag limit, and RSS across SIGHUP reloads.

    .venv/bin/python benchmarks/memory.py limit [--publish batch|tag] [--reloads 15] [--channels N]
    .venv/bin/python benchmarks/memory.py reload [--reloads 50] [--change all|one|none] [--channels 256]

Both start Mosquitto, the raw Modbus bench servers (``servers.py``, one port per rack) and the gateway on a
``hall`` map (10 racks x channels x 8 tags), and read the gateway's VmRSS/VmHWM from ``/proc/<pid>/status``.

``limit`` (scenario ``limit``): a map of ``MAX_TAGS_PER_PLANT`` tags (``gateway/tagmap/limits.py``), start-up
(load + validate + expand + plan), ``--settle-s`` of running, then ``--reloads`` SIGHUPs that rebuild every
device (a reload holds the running channels and the new map's at once: the highest peak). Prints the
high-water mark (VmHWM), which ``MemoryMax`` in ``systemd/cellgate.service`` must hold with a margin; that number
is ``MEASURED_PEAK_MB_AT_LIMIT`` in limits.py.

``reload`` (scenario ``reload-50``): after start-up, ``--reloads`` SIGHUPs in a row, each waiting for
``reload_applied`` and ``memory_released``. ``--change all`` rewrites every rack's ``interval_ms`` each time
(every device and source is rebuilt), ``one`` only rack-01's, ``none`` reloads the same file. Prints RSS after
start, after each reload and after the last, and the growth.

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tagmaps
from procs import Broker, Child, ChildError, proc_sample

from gateway.tagmap.limits import MAX_TAGS_PER_PLANT

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RELEASE_WAIT_S = 1.0
RACKS = 10
# The loader's count includes the template's own 8 tags: the most channels per rack that stay within the limit.
LIMIT_CHANNELS = (MAX_TAGS_PER_PLANT - tagmaps.HALL_TAGS_PER_CHANNEL) // (RACKS * tagmaps.HALL_TAGS_PER_CHANNEL)


def _events(log_path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                out.append(entry)
    return out


def _count(log_path: Path, event: str) -> int:
    return sum(1 for entry in _events(log_path) if entry.get("event") == event)


class Sampler:
    """Polls one process's RSS while waiting, so the peak is known even where VmHWM is not reset."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.max_rss_mb = 0.0

    def rss_mb(self) -> float:
        sample = proc_sample(self.child.pid)
        if sample is None:
            raise ChildError(f"gateway exited; log:\n{self.child.log_tail()}")
        self.max_rss_mb = max(self.max_rss_mb, sample.rss_mb)
        return sample.rss_mb

    def peak_mb(self) -> float:
        sample = proc_sample(self.child.pid)
        return sample.peak_rss_mb if sample is not None else self.max_rss_mb

    def wait_for(self, event: str, count: int, timeout_s: float, *, required: bool = True) -> None:
        """Until the gateway's log holds ``count`` events named ``event`` (or ``timeout_s``, if not required)."""
        deadline = time.monotonic() + timeout_s
        while _count(self.child.log_path, event) < count:
            if not self.child.running:
                raise ChildError(f"gateway exited before {event}; log:\n{self.child.log_tail()}")
            if time.monotonic() > deadline:
                if not required:
                    return
                raise ChildError(f"no {event} #{count} within {timeout_s:.0f} s; log:\n{self.child.log_tail()}")
            self.rss_mb()
            time.sleep(0.05)

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.rss_mb()
            time.sleep(0.05)


def _tag_map(args: argparse.Namespace, broker_url: str, ports: list[int], interval_ms: int) -> str:
    return tagmaps.hall(broker_url=broker_url, ports=ports, channels=args.channels, interval_ms=interval_ms,
                        publish=args.publish)


def _changed(text: str, change: str, round_index: int, base_interval_ms: int) -> str:
    """The tag map of reload ``round_index``: interval_ms of every rack (``all``) or rack-01 (``one``) alternates."""
    if change == "none":
        return text
    new_interval = base_interval_ms + (100 if round_index % 2 == 0 else 0)
    lines = text.splitlines()
    rack = 0
    for index, line in enumerate(lines):
        if line.startswith("  - name: rack-"):
            rack += 1
        if line.startswith("    interval_ms: ") and (change == "all" or rack == 1):
            lines[index] = f"    interval_ms: {new_interval}"
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"cellgate-bench-memory-{args.command}-"))
    broker = Broker(workdir, max_inflight_messages=1000)
    children: list[Child] = []
    try:
        broker.start()
        servers = Child("servers", [sys.executable, str(BENCH_DIR / "servers.py"), "modbus", "--ports",
                                    *["0"] * args.racks], log_path=workdir / "servers.log")
        children.append(servers)
        ready = servers.wait_for_prefix("ready ", 20)
        ports = [int(address.rsplit(":", 1)[1]) for address in ready.split("=", 1)[1].split(",")]
        config = workdir / "tagmap.yaml"
        base_text = _tag_map(args, broker.url, ports, args.interval_ms)
        config.write_text(base_text, encoding="utf-8")
        state_dir = workdir / "state"
        gateway = Child(
            "gateway",
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(config), "--state-dir", str(state_dir),
             "--log-format", "json", "--log-level", "INFO"],
            log_path=workdir / "gateway.log", cwd=REPO_ROOT, stdout_to_log=True,
        )
        children.append(gateway)
        sampler = Sampler(gateway)
        started = time.monotonic()
        sampler.wait_for("gateway_running", 1, args.startup_timeout_s)
        running_s = time.monotonic() - started
        sampler.sleep(args.settle_s)
        result: dict[str, Any] = {
            "tags": args.racks * args.channels * tagmaps.HALL_TAGS_PER_CHANNEL,
            "racks": args.racks,
            "channels_per_rack": args.channels,
            "interval_ms": args.interval_ms,
            "publish": args.publish,
            "startup_s": round(running_s, 2),
            "rss_after_start_mb": round(sampler.rss_mb(), 1),
        }
        peak_before = sampler.peak_mb()
        after_each: list[float] = []
        for index in range(args.reloads):
            config.write_text(_changed(base_text, args.change, index, args.interval_ms), encoding="utf-8")
            gateway.process.send_signal(signal.SIGHUP)
            sampler.wait_for("reload_applied", index + 1, args.reload_timeout_s)
            # The gateway logs memory_released once it has collected and trimmed after the reload (start-up
            # counts as one). A gateway that does not log it is sampled a second after the reload instead.
            sampler.wait_for("memory_released", index + 2, RELEASE_WAIT_S, required=False)
            after_each.append(round(sampler.rss_mb(), 1))
        sampler.sleep(args.settle_s)
        rss_after = sampler.rss_mb()
        failed = _count(gateway.log_path, "reload_failed")
        result.update(
            {
                "scenario": "limit" if args.command == "limit" else f"reload-{args.reloads}",
                "max_tags_per_plant": MAX_TAGS_PER_PLANT,
                "change": args.change,
                "reloads": args.reloads,
                "reloads_failed": failed,
                "rss_after_reloads_mb": round(rss_after, 1),
                "rss_growth_mb": round(rss_after - result["rss_after_start_mb"], 1),
                "rss_after_each_reload_mb": after_each,
                "peak_rss_before_reloads_mb": round(peak_before, 1),
                "peak_rss_mb": round(sampler.peak_mb(), 1),
            }
        )
    except (ChildError, OSError, ValueError) as exc:
        raise ChildError(f"{exc}\n(tag map and logs kept in {workdir})") from exc
    finally:
        for child in reversed(children):
            child.stop(timeout_s=30)
        broker.stop()
    if not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    limit = sub.add_parser("limit", help="peak RSS at MAX_TAGS_PER_PLANT, start-up and reloads")
    limit.add_argument("--channels", type=int, default=LIMIT_CHANNELS,
                       help=f"channels per rack (default {LIMIT_CHANNELS}: MAX_TAGS_PER_PLANT tags)")
    limit.add_argument("--interval-ms", type=int, default=5000)
    limit.add_argument("--reloads", type=int, default=15)
    limit.add_argument("--settle-s", type=float, default=15.0, help="running time before and after (default 15)")
    reload = sub.add_parser("reload", help="RSS across SIGHUP reloads (reload-50)")
    reload.add_argument("--channels", type=int, default=256, help="channels per rack (default 256: 20,480 tags)")
    reload.add_argument("--interval-ms", type=int, default=1000)
    reload.add_argument("--reloads", type=int, default=50)
    reload.add_argument("--settle-s", type=float, default=5.0, help="running time before and after (default 5)")
    for command in (limit, reload):
        command.add_argument("--change", choices=("all", "one", "none"), default="all")
        command.add_argument("--reload-timeout-s", type=float, default=120.0)
        command.add_argument("--racks", type=int, default=RACKS)
        command.add_argument("--publish", choices=("tag", "batch"), default="batch")
        command.add_argument("--startup-timeout-s", type=float, default=300.0)
        command.add_argument("--keep-workdir", action="store_true", help="keep the tag map and logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
