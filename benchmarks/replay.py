"""Spool replay under live load: how fast an outage's spool drains while live data keeps flowing.

    python benchmarks/replay.py [--outage-s 60] [--registers 1000] [--interval-ms 100] [--replay-per-s N] \\
        [--live-s 10] [--out results.json]

Real processes, as in run.py: Mosquitto (no persistence), the raw Modbus bench server, ``cellgate run`` (its
``modbus-1k`` tag map, per-tag, ``--registers`` tags every ``--interval-ms``: 10,000 messages/s by default, the
load of the issue) and the independent subscriber. Steps:

1. live: ``--live-s`` of normal running; the live rate and data age are the baseline;
2. outage: Mosquitto stopped for ``--outage-s`` (a scaled-down version of a 10-minute outage), the gateway
   spools everything it reads;
3. replay: Mosquitto started again on the same port, a fresh subscriber; ``/metrics`` is read every
   ``SAMPLE_S`` until the spool is empty.

Drain rate = messages replayed (``cellgate_replayed_total``) / time from the gateway's reconnect to its empty
spool (``cellgate_spool_messages`` 0); live rate during the replay = published minus replayed;
live data age during the replay = the subscriber's receive time - ``ts`` of the live (not ``historical``) messages.
Target (issue 17): drain >= 3x the live rate. The spool's ``replay_per_s`` caps the drain (the tag map's default
unless ``--replay-per-s`` sets it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import tagmaps
from procs import Broker, Child, ChildError, proc_sample

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SAMPLE_S = 0.5
"""How often /metrics is read during the replay."""
TARGET_RATIO = 3.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """The gateway's unlabelled metrics (and per-device counters summed), by name without the ``cellgate_``
    prefix."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("cellgate_"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0][len("cellgate_"):]
        values[name] = values.get(name, 0.0) + float(value)
    return values


def _subscriber(workdir: Path, broker: Broker, name: str) -> Child:
    child = Child(
        name,
        [sys.executable, str(BENCH_DIR / "subscriber.py"), "--port", str(broker.port),
         "--filter", f"{tagmaps.ENTERPRISE}/{tagmaps.SITE}/#"],
        log_path=workdir / f"{name}.log", stdin_pipe=True,
    )
    child.wait_for_prefix("ready", 15)
    return child


def _result(subscriber: Child) -> dict[str, Any]:
    subscriber.send("stop")
    result: dict[str, Any] = orjson.loads(subscriber.wait_for_prefix("result ", 120)[len("result "):])
    result.pop("per_key", None)
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="cellgate-bench-replay-"))
    broker = Broker(workdir, max_inflight_messages=args.broker_inflight)
    children: list[Child] = []
    try:
        broker.start()
        server = Child("servers", [sys.executable, str(BENCH_DIR / "servers.py"), "modbus", "--ports", "0",
                                   "--impl", "raw"], log_path=workdir / "servers.log")
        children.append(server)
        port = int(server.wait_for_prefix("ready ", 20).split("=", 1)[1].split(",")[0].rsplit(":", 1)[1])
        metrics_port = _free_port()
        tag_map = tagmaps.modbus_1k(broker_url=broker.url, port=port, registers=args.registers,
                                    interval_ms=args.interval_ms, publish="tag")
        spool = f"spool: {{replay_per_s: {args.replay_per_s}}}\n" if args.replay_per_s else ""
        config = workdir / "tagmap.yaml"
        config.write_text(tag_map + spool + f'http: {{listen: "127.0.0.1:{metrics_port}"}}\n', encoding="utf-8")
        subscriber = _subscriber(workdir, broker, "subscriber-live")
        children.append(subscriber)
        state_dir = workdir / "state"
        state_dir.mkdir()
        profile = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
        gateway = Child("gateway", [sys.executable, *profile, "-m", "gateway.cli", "run", "-c", str(config),
                                    "--state-dir", str(state_dir), "--log-format", "json"],
                        log_path=workdir / "gateway.log", cwd=REPO_ROOT, stdout_to_log=True)
        children.append(gateway)

        # 1. live
        deadline = time.monotonic() + 60
        while True:
            subscriber.send("status")
            keys = int(subscriber.wait_for_prefix("status ", 30).split("keys=")[1].split()[0])
            if keys >= args.registers:
                break
            if time.monotonic() > deadline or not gateway.running:
                raise ChildError(f"the gateway did not start; log:\n{gateway.log_tail()}")
            time.sleep(0.25)
        time.sleep(args.warmup_s)
        subscriber.send("start")
        subscriber.wait_for_prefix("started", 30)
        before, t0 = scrape(metrics_port), time.monotonic()
        time.sleep(args.live_s)
        after, t1 = scrape(metrics_port), time.monotonic()
        live = _result(subscriber)
        live_rate = (after["messages_published_total"] - before["messages_published_total"]) / (t1 - t0)
        subscriber.stop()
        children.remove(subscriber)

        # 2. outage
        broker.stop()
        outage_started = time.monotonic()
        time.sleep(args.outage_s)
        at_end_of_outage = scrape(metrics_port)
        spooled = at_end_of_outage["spool_messages"]
        rss_before_replay = proc_sample(gateway.pid)

        # 3. replay
        broker.start(same_port=True)
        outage_s = time.monotonic() - outage_started
        subscriber = _subscriber(workdir, broker, "subscriber-replay")
        children.append(subscriber)
        subscriber.send("start")
        subscriber.wait_for_prefix("started", 30)
        samples: list[tuple[float, dict[str, float]]] = []
        give_up = time.monotonic() + args.outage_s * 10 + 120
        while time.monotonic() < give_up:
            now = time.monotonic()
            values = scrape(metrics_port)
            samples.append((now, values))
            if values.get("mqtt_connected") and values["spool_messages"] == 0 and values["replayed_total"] > 0:
                break
            time.sleep(SAMPLE_S)
        replay = _result(subscriber)
        rss_after_replay = proc_sample(gateway.pid)
    finally:
        for child in reversed(children):
            child.stop()
        broker.stop()

    connected = next((i for i, (_, v) in enumerate(samples) if v.get("mqtt_connected")), None)
    drained = bool(samples) and samples[-1][1]["spool_messages"] == 0
    result: dict[str, Any] = {
        "scenario": "replay",
        "workdir": str(workdir),
        "config": {"registers": args.registers, "interval_ms": args.interval_ms, "publish": "tag", "qos": 1,
                   "offered_messages_per_s": args.registers * 1000 / args.interval_ms,
                   "replay_per_s": args.replay_per_s or "default",
                   "broker_max_inflight_messages": args.broker_inflight, "outage_s": round(outage_s, 1)},
        "live": {"messages_per_s": round(live_rate, 1), "data_age_ms": live["age_ms"],
                 "seq_missing": live["seq_missing"]},
        "spooled_messages": spooled,
        "drained": drained,
    }
    if connected is not None and drained:
        start_t, start_v = samples[connected]
        end_t, end_v = samples[-1]
        replay_s = end_t - start_t
        replayed = end_v["replayed_total"] - start_v["replayed_total"]
        published = end_v["messages_published_total"] - start_v["messages_published_total"]
        drain_rate = replayed / replay_s if replay_s > 0 else None
        result["replay"] = {
            "s": round(replay_s, 2),
            "drain_messages_per_s": round(drain_rate, 1) if drain_rate else None,
            "replayed_messages": replayed,
            "live_messages_per_s": round((published - replayed) / replay_s, 1) if replay_s > 0 else None,
            "drain_over_live": round(drain_rate / live_rate, 2) if drain_rate and live_rate else None,
            "target_ratio": TARGET_RATIO,
            "live_data_age_ms": replay["age_ms"],
            "historical_received": replay["historical_messages"],
            "live_seq_missing": replay["seq_missing"],
            # Drained to the resolution of the metrics sampling (SAMPLE_S).
            "sample_s": SAMPLE_S,
        }
    result["gateway"] = {
        "rss_mb_before_replay": round(rss_before_replay.rss_mb, 1) if rss_before_replay else None,
        "rss_mb_after_replay": round(rss_after_replay.rss_mb, 1) if rss_after_replay else None,
        "peak_rss_mb": round(rss_after_replay.peak_rss_mb, 1) if rss_after_replay else None,
    }
    if not args.keep_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
        result.pop("workdir")
    return result


def summary_line(result: dict[str, Any]) -> str:
    live, config = result["live"], result["config"]
    head = (f"replay: live {live['messages_per_s']:,.0f} msg/s (age p95 {live['data_age_ms']['p95']} ms), outage "
            f"{config['outage_s']} s spooled {result['spooled_messages']:,.0f}")
    replay = result.get("replay")
    if replay is None:
        return head + ", NOT DRAINED"
    return (head + f", drained in {replay['s']} s: {replay['drain_messages_per_s']:,.0f} msg/s = "
            f"{replay['drain_over_live']}x live (target {TARGET_RATIO}x), live during replay "
            f"{replay['live_messages_per_s']:,.0f} msg/s, live age p50/p95 {replay['live_data_age_ms']['p50']}/"
            f"{replay['live_data_age_ms']['p95']} ms, rss {result['gateway']['rss_mb_before_replay']}->"
            f"{result['gateway']['rss_mb_after_replay']} MB")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outage-s", type=float, default=60.0, help="broker down this long (default 60)")
    parser.add_argument("--registers", type=int, default=1000, help="tags of the one Modbus device (default 1000)")
    parser.add_argument("--interval-ms", type=int, default=100, help="poll interval (default 100)")
    parser.add_argument("--replay-per-s", type=int, default=None, help="spool.replay_per_s (default: the tag map's)")
    parser.add_argument("--live-s", type=float, default=10.0, help="live baseline window (default 10)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="after start-up, before the baseline")
    parser.add_argument("--broker-inflight", type=int, default=1000,
                        help="Mosquitto max_inflight_messages, its Receive Maximum (default 1000, as run.py)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="run the gateway under cProfile, its stats written here at the stop")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the tag map and logs")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/<time>.json)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except ChildError as exc:
        print(f"replay: FAILED: {exc}", file=sys.stderr)
        return 1
    print(summary_line(result))
    out = args.out or BENCH_DIR / "results" / time.strftime("replay-%Y%m%dT%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
