"""Cellgate benchmark harness: real processes, an independent subscriber, numbers from /proc.

    python benchmarks/run.py --scenario modbus-1k|hall|opcua-20k|opcua-20k-secure|load-50k|limit|reload-50|all \\
        --mode tag|batch|both [--qos 0|1] [--broker-inflight 20] [--mqtt-connections N] [--mqtt-protocol 3.1.1] \\
        [--duration-s 20] [--warmup-s 5] [--interval-ms MS] [--scale 1.0 | --size N] [--out results.json]
        [--outputs uns-json|sparkplug|both]

For each live scenario and mode it starts Mosquitto (free port, no persistence), the bench servers
(benchmarks/servers.py), the subscriber (benchmarks/subscriber.py, its own process) and ``cellgate run`` as a
real process with a fresh working directory; waits until every tag has been delivered at least once (start-up),
then ``--warmup-s``, then measures a fixed ``--duration-s`` window:

* values/s delivered, counted per tag at the subscriber (so a starved tag shows), seq gaps per topic;
* data age p50/p95/p99 = subscriber receive wall time - the sample's ``ts``;
* CPU seconds (utime + stime over the window) of the gateway, the broker, the servers and the subscriber, from
  /proc/<pid>/stat; gateway CPU microseconds per delivered value; gateway RSS (now and peak) from /proc/<pid>/status;
* how busy the whole machine was (it may be shared: read the numbers with that in mind);
* the gateway's own warnings/errors (overload must never be silent).

``--outputs`` sets the gateway's ``outputs`` (default ``uns-json``; ``sparkplug`` or ``both`` add a ``sparkplug``
section, group ``Bench``, the edge node being the gateway id): the subscriber then also decodes the Sparkplug B
stream and counts it on its own (values per device/metric, age from each metric's timestamp, seq per edge node).
``delivered`` and ``data_age_ms`` are the first output's (UNS JSON with ``both``), the gateway's CPU per value is per
sample; with ``both`` the Sparkplug counts are under ``sparkplug`` and in the summary line.

``load-50k`` runs benchmarks/load_plan.py (tag-map load + Modbus planning of ~51,200 tags) in its own process.
``limit`` and ``reload-50`` run benchmarks/memory.py: the gateway's peak RSS with MAX_TAGS_PER_PLANT tags over
start-up and 15 full reloads, and its RSS after start-up and after 50 full SIGHUP reloads of the 20,480-tag hall.

Sizes (``--scale`` multiplies all of them; ``--size`` sets the one of a single chosen scenario):
modbus-1k = holding registers on one device (1000 per-tag, 3000 batch), hall = channels per rack (256; 10 racks
x 8 tags, --racks), opcua-20k = variables (20000, in objects of 100), load-50k = channels per device (640; 10
devices x 8 tags). Default intervals: modbus-1k 20 ms per-tag (50,000 values/s offered) and 10 ms batch (the
tag-map minimum; 300,000 values/s offered), hall and opcua-20k 1000 ms. ``--interval-ms`` overrides them all.

``opcua-20k-secure`` is opcua-20k over Aes256_Sha256_RsaPss / SignAndEncrypt (the bench server offers nothing
else; the harness puts its certificate in the gateway's trusted/ as an operator would with `cellgate pki trust`).
When both run (``--scenario opcua-security`` runs just the two), one more line compares the gateway's CPU per
value with and without security.

``--peers node-red,modbus4mqtt`` runs those peer gateways after Cellgate on the same load, measured the same
way (benchmarks/peers.py): one more line and one more result each.

Prints one summary line per scenario/mode and writes everything as JSON (default benchmarks/results/<time>.json).
Exit status 0 when every run completed (whether or not it met its targets), 1 if a run failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import peers
import tagmaps
from procs import Broker, Child, ChildError, ProcSample, machine_busy_ticks, proc_sample
from servers import OPCUA_NAMESPACE

from gateway.tagmap import load_plant

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
LIVE_SCENARIOS = ("modbus-1k", "hall", "opcua-20k", "opcua-20k-secure")
MEMORY_SCENARIOS = ("limit", "reload-50")
SCENARIOS = (*LIVE_SCENARIOS, "load-50k", *MEMORY_SCENARIOS)
# Names for several scenarios run one after the other in one invocation (their numbers compared).
SCENARIO_GROUPS = {"opcua-security": ("opcua-20k", "opcua-20k-secure")}
RESULT_SCHEMA = 1
# Delivering less than this share of the offered values counts as falling behind.
OVERLOAD_RATIO = 0.95

TS_MEANING = {
    "modbus": "time the gateway received the Modbus read response (RawReading ts = arrival time): data age is "
    "gateway processing + MQTT transit, without the poll interval",
    "opcua": "OPC UA SourceTimestamp, stamped by the bench server when it wrote the value: data age includes the "
    "wait for the subscription's publishing interval",
}

# Offered values/s of the runs the data-age target applies to (p95 <= interval + 10 ms "at 20,000 values/s").
DATA_AGE_LOAD = (15_000, 25_000)

# Issue 5 targets (2-core box). Each: (name, metric path, comparison, target).
TARGETS: dict[tuple[str, str], list[tuple[str, str, str, float]]] = {
    ("modbus-1k", "tag"): [
        ("values_per_s", "delivered.values_per_s", ">=", 40_000),
        ("gateway_us_per_value", "gateway.cpu_us_per_value", "<=", 20),
        ("seq_missing", "delivered.seq_missing", "<=", 0),
        ("values_not_good", "delivered.values_not_good", "<=", 0),
        ("gateway_rss_mb", "gateway.rss_mb", "<=", 60),
    ],
    ("modbus-1k", "batch"): [
        ("values_per_s", "delivered.values_per_s", ">=", 250_000),
        ("gateway_us_per_value", "gateway.cpu_us_per_value", "<=", 4),
        ("seq_missing", "delivered.seq_missing", "<=", 0),
        ("gateway_rss_mb", "gateway.rss_mb", "<=", 60),
    ],
    ("opcua-20k", "tag"): [("gateway_us_per_value", "gateway.cpu_us_per_value", "<=", 20)],
    ("opcua-20k", "batch"): [("gateway_us_per_value", "gateway.cpu_us_per_value", "<=", 20)],
    ("load-50k", "n/a"): [
        ("total_s_median", "load.total_s_median", "<=", 2.0),
        ("max_rss_mb", "load.max_rss_mb", "<=", 150),
    ],
    # MemoryMax=512M with the 15 % margin of gateway/tagmap/limits.py: 512 / 1.15.
    ("limit", "n/a"): [("peak_rss_mb", "memory.peak_rss_mb", "<=", 445)],
    # Reloads give memory back: the first reload grows the heap once, fifty do not grow it further.
    ("reload-50", "n/a"): [("rss_growth_mb", "memory.rss_growth_mb", "<=", 30)],
}


@dataclass(kw_only=True)
class Plan:
    """One live run: what to start and what to expect."""

    scenario: str
    mode: str
    protocol: str
    interval_ms: int
    size: int
    tag_map: Callable[[str, list[str]], str]  # (broker url, server addresses) -> YAML text
    server_argv: list[str]
    server_ready_s: float
    startup_timeout_s: float
    devices: int
    details: dict[str, Any] = field(default_factory=dict)
    server_pki: Path | None = None  # a secure server's PKI folder: its certificate is trusted by the gateway


# ------------------------------------------------------------------------------------------- planning


def _scaled(base: int, args: argparse.Namespace, scenario: str, minimum: int = 1) -> int:
    size: int = args.size if args.size is not None and args.scenario == scenario else round(base * args.scale)
    return max(minimum, size)


def modbus_concurrent_requests(args: argparse.Namespace) -> int:
    """Requests in flight per Modbus connection: as asked, else the tag map's default (1)."""
    if args.modbus_concurrent_requests is not None:
        return int(args.modbus_concurrent_requests)
    return tagmaps.MODBUS_CONCURRENT_REQUESTS


def plan_live(scenario: str, mode: str, args: argparse.Namespace) -> Plan:
    python = sys.executable
    servers = str(BENCH_DIR / "servers.py")
    publish = mode
    concurrent = modbus_concurrent_requests(args)
    mqtt = {"qos": args.qos, "connections": args.mqtt_connections, "protocol": args.mqtt_protocol}
    if scenario == "modbus-1k":
        # Batch: 3,000 registers, because at the tag map's 10 ms minimum 1,000 would offer only 100,000 values/s,
        # too few to test the 250,000 target.
        registers = _scaled(1000 if mode == "tag" else 3000, args, scenario)
        # Per-tag at 20 ms: 50,000 values/s offered, above the 40,000 target (at 25 ms it could only be equalled).
        interval = args.interval_ms or (20 if mode == "tag" else 10)
        return Plan(
            scenario=scenario, mode=mode, protocol="modbus", interval_ms=interval, size=registers, devices=1,
            tag_map=lambda url, addresses: tagmaps.modbus_1k(
                broker_url=url, port=int(addresses[0].rsplit(":", 1)[1]), registers=registers,
                interval_ms=interval, publish=publish, max_concurrent_requests=concurrent, **mqtt,
            ),
            server_argv=[python, servers, "modbus", "--ports", "0", "--impl", args.modbus_impl],
            server_ready_s=20, startup_timeout_s=30,
            details={"registers": registers, "modbus_server": args.modbus_impl, "max_concurrent_requests": concurrent},
        )
    if scenario == "hall":
        channels = _scaled(256, args, scenario)
        racks = args.racks
        interval = args.interval_ms or 1000
        return Plan(
            scenario=scenario, mode=mode, protocol="modbus", interval_ms=interval, size=channels, devices=racks,
            tag_map=lambda url, addresses: tagmaps.hall(
                broker_url=url, ports=[int(a.rsplit(":", 1)[1]) for a in addresses], channels=channels,
                interval_ms=interval, publish=publish, max_concurrent_requests=concurrent, **mqtt,
            ),
            # One process serves all racks (one port each): far cheaper than ten simulator processes.
            server_argv=[python, servers, "modbus", "--ports", *["0"] * racks, "--impl", args.modbus_impl],
            server_ready_s=20, startup_timeout_s=60,
            details={"racks": racks, "channels_per_rack": channels, "tags_per_channel": tagmaps.HALL_TAGS_PER_CHANNEL,
                     "modbus_server": args.modbus_impl, "max_concurrent_requests": concurrent},
        )
    if scenario in ("opcua-20k", "opcua-20k-secure"):
        secure = scenario == "opcua-20k-secure"
        server_pki = Path(tempfile.mkdtemp(prefix="cellgate-bench-server-pki-")) if secure else None
        variables = _scaled(20_000, args, scenario)
        per_object = min(args.per_object, variables)
        objects = math.ceil(variables / per_object)
        variables = objects * per_object
        interval = args.interval_ms or 1000
        return Plan(
            scenario=scenario, mode=mode, protocol="opcua", interval_ms=interval, size=variables, devices=1,
            tag_map=lambda url, addresses: tagmaps.opcua_20k(
                broker_url=url, endpoint=addresses[0], namespace=OPCUA_NAMESPACE, objects=objects,
                per_object=per_object, interval_ms=interval, publish=publish, timeout_ms=args.opcua_timeout_ms,
                secure=secure, **mqtt,
            ),
            server_argv=[python, servers, "opcua", "--port", "0", "--variables", str(variables),
                         "--per-object", str(per_object), "--rate-hz", str(1000 / interval),
                         *(["--security", str(server_pki)] if server_pki else [])],
            server_pki=server_pki,
            server_ready_s=300, startup_timeout_s=300,
            details={"variables": variables, "variables_per_object": per_object,
                     "opcua_timeout_ms": args.opcua_timeout_ms,
                     "security": "Aes256_Sha256_RsaPss/SignAndEncrypt" if secure else "None"},
        )
    raise ValueError(f"not a live scenario: {scenario}")


# ------------------------------------------------------------------------------------------ measuring


def _gateway_argv(config: Path, state_dir: Path) -> list[str]:
    argv = [sys.executable, "-m", "gateway.cli", "run", "-c", str(config), "--log-format", "json",
            "--log-level", "INFO"]
    # `--state-dir` may or may not exist yet: use it when `cellgate run --help` offers it.
    help_text = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "--help"], capture_output=True, text=True, cwd=REPO_ROOT,
        check=False,
    ).stdout
    if "--state-dir" in help_text:
        argv += ["--state-dir", str(state_dir)]
    return argv


def _cpu_delta(before: ProcSample | None, after: ProcSample | None) -> float | None:
    if before is None or after is None:
        return None
    return round(after.cpu_s - before.cpu_s, 3)


def _log_summary(text: str) -> dict[str, Any]:
    """Count the gateway's JSON log lines by level, and its warning/error events by name."""
    levels: Counter[str] = Counter()
    events: Counter[str] = Counter()
    other_lines = 0
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            other_lines += 1 if line.strip() else 0
            continue
        if not isinstance(entry, dict):
            continue
        level = str(entry.get("level", "?")).lower()
        levels[level] += 1
        if level in ("warning", "error", "critical", "exception"):
            events[f"{level}:{entry.get('event', '?')}"] += 1
    return {"levels": dict(levels), "warning_events": dict(events.most_common(20)), "non_json_lines": other_lines}


def _per_key_stats(per_key: dict[str, int], expected: set[str], window_s: float) -> dict[str, Any]:
    rates = sorted(per_key.get(key, 0) / window_s for key in expected) if window_s > 0 else []
    starved = sorted(key for key in expected if per_key.get(key, 0) == 0)
    return {
        "tags_expected": len(expected),
        "tags_with_values": len(expected) - len(starved),
        "tags_starved": len(starved),
        "starved_examples": starved[:10],
        "unexpected_keys": len(set(per_key) - expected),
        "per_tag_values_per_s": {
            "min": round(rates[0], 2) if rates else None,
            "p50": round(statistics.median(rates), 2) if rates else None,
            "max": round(rates[-1], 2) if rates else None,
        },
    }


def _delivered(counted: dict[str, Any], expected: set[str], window_s: float) -> dict[str, Any]:
    """What the subscriber counted for one output encoding in the window."""
    return {
        "window_s": round(window_s, 3),
        "messages": counted["messages"],
        "values": counted["values"],
        "values_per_s": round(counted["values"] / window_s, 1),
        "messages_per_s": round(counted["messages"] / window_s, 1),
        "values_not_good": counted["values_not_good"],
        "values_null": counted["values_null"],
        "unparsable": counted["unparsable"],
        "historical_messages": counted["historical_messages"],
        "seq_missing": counted["seq_missing"],
        "seq_gap_events": counted["seq_gap_events"],
        "seq_repeats": counted["seq_repeats"],
        **_per_key_stats(counted["per_key"], expected, window_s),
    }


def _overload(
    *, values: int, window_s: float, offered_per_s: float, tags: int, counted: dict[str, Any], log: dict[str, Any]
) -> dict[str, Any]:
    """Did the gateway fall behind (or lose data), and did it say so in its log?

    Falling behind shows as fewer values than offered (the poll loop stretches its cycle when the queue is full)
    or as seq gaps; the issue asks that this is never silent, so ``silent`` is the finding to look at.
    One cycle of every tag is allowed as slack: a window of a few slow cycles may cut one in two.
    """
    expected = offered_per_s * window_s
    ratio = values / expected if expected else 0.0
    behind = values < OVERLOAD_RATIO * expected - tags or counted["seq_missing"] > 0
    warned = bool(log["warning_events"])
    return {"ratio_of_offered": round(ratio, 3), "fell_behind": behind, "gateway_warned": warned,
            "silent": behind and not warned}


def _server_written_per_s(output: str, window_start: float, window_end: float) -> float | None:
    """Values the OPC UA bench server wrote per second in the window, from its ``pass writes=N ended=T`` lines
    (passes that ended inside the window); None for servers that print none (Modbus answers reads)."""
    passes = [
        (int(fields["writes"]), float(fields["ended"]))
        for line in output.splitlines()
        if line.startswith("pass ")
        for fields in [dict(part.split("=", 1) for part in line.split()[1:])]
    ]
    if not passes or window_end <= window_start:
        return None
    written = sum(writes for writes, ended in passes if window_start < ended <= window_end)
    return written / (window_end - window_start)


def _util(cpu_s: float | None, window_s: float) -> float | None:
    return round(cpu_s / window_s, 3) if cpu_s is not None and window_s > 0 else None


def _trust_server(plant: Any, state_dir: Path, server_pki: Path) -> None:
    """What an operator does with `cellgate pki trust`: the bench server's certificate into trusted/."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from gateway.pki import Pki, application_uri, thumbprint

    pki = Pki(state_dir / "pki", uri=application_uri(plant.gateway.id))
    pki.ensure()
    cert = x509.load_der_x509_certificate((server_pki / "own" / "cert.der").read_bytes())
    (pki.folder("trusted") / f"{thumbprint(cert)}.der").write_bytes(cert.public_bytes(serialization.Encoding.DER))


def security_cost_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """For each mode run with and without security: the gateway's CPU per value, secure against None."""
    by_key = {(r["scenario"], r["mode"]): r for r in results if "error" not in r and "gateway" in r}
    lines = []
    for (scenario, mode), secure in by_key.items():
        plain = by_key.get(("opcua-20k", mode))
        if scenario != "opcua-20k-secure" or plain is None:
            continue
        us_secure, us_plain = secure["gateway"]["cpu_us_per_value"], plain["gateway"]["cpu_us_per_value"]
        if us_secure is None or not us_plain:
            continue
        lines.append(f"opcua-20k/{mode} security cost: {us_secure} us/value with SignAndEncrypt vs {us_plain} "
                     f"us/value with None ({us_secure / us_plain:.2f}x, same run)")
    return lines


SCRAPE_EVERY_S = 1.0
"""With --metrics on, /metrics is scraped this often during the window by default (Prometheus' default is 15 s)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


QUEUE_AGE_METRIC = "cellgate_queue_oldest_age_seconds "


def _scrape_for(
    port: int | None, duration_s: float, every_s: float = SCRAPE_EVERY_S, queue_ages_s: list[float] | None = None
) -> int:
    """Sleep ``duration_s``; with a metrics port and ``every_s`` > 0, GET /metrics every ``every_s`` meanwhile.
    Returns scrapes. The gateway's queue age at each scrape goes into ``queue_ages_s`` (when the gateway exports
    it)."""
    end = time.monotonic() + duration_s
    scrapes = 0
    scraping = port is not None and every_s > 0
    while (left := end - time.monotonic()) > 0:
        if scraping:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                text = answer.read().decode()
            scrapes += 1
            if queue_ages_s is not None:
                queue_ages_s += [float(line[len(QUEUE_AGE_METRIC):]) for line in text.splitlines()
                                 if line.startswith(QUEUE_AGE_METRIC)]
        time.sleep(min(every_s, max(0.0, end - time.monotonic())) if scraping else left)
    return scrapes


def _scrape_counts(port: int | None) -> dict[str, float]:
    """The gateway's ``cellgate_poll_cycles_total`` and ``cellgate_poll_skipped_total`` (summed over devices), by
    the names without prefix and suffix; empty without a metrics port."""
    if port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("poll_cycles", "poll_skipped"):
            if line.startswith(f"cellgate_{name}_total{{"):
                counts[name] = counts.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def run_live(plan: Plan, args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"cellgate-bench-{plan.scenario}-{plan.mode}-"))
    broker = Broker(workdir, max_inflight_messages=args.broker_inflight)
    children: list[Child] = []
    result: dict[str, Any] = {"scenario": plan.scenario, "mode": plan.mode, "workdir": str(workdir)}
    server_stats = ""
    server_output = ""
    gateway: Child | None = None
    try:
        broker.start()
        server = Child("servers", plan.server_argv, log_path=workdir / "servers.log")
        children.append(server)
        ready = server.wait_for_prefix("ready ", plan.server_ready_s)
        addresses = ready.split("=", 1)[1].split(",")
        config = workdir / "tagmap.yaml"
        metrics_port = _free_port() if args.metrics == "on" else None
        http = f'"127.0.0.1:{metrics_port}"' if metrics_port is not None else "null"
        tag_map = tagmaps.with_outputs(plan.tag_map(broker.url, addresses), args.outputs)
        if args.max_queue_age_ms is not None:
            tag_map = tagmaps.with_device_setting(tag_map, "max_queue_age_ms", args.max_queue_age_ms)
        config.write_text(tag_map + f"\nhttp:\n  listen: {http}\n", encoding="utf-8")
        plant = load_plant(config, environ={})
        outputs = tagmaps.OUTPUTS[args.outputs]
        expected_by_output = {
            "uns-json": {f"{tagmaps.ENTERPRISE}/{tagmaps.SITE}/{d.area}/{d.line}/{d.name}/{t.name}"
                         for d in plant.devices for t in d.tags},
            "sparkplug": {f"{d.name}/{t.name}" for d in plant.devices for t in d.tags},
        }
        expected = expected_by_output[outputs[0]]
        keys_wanted = sum(len(expected_by_output[output]) for output in outputs)
        subscribe = (["--filter", f"{tagmaps.ENTERPRISE}/{tagmaps.SITE}/#"] if "uns-json" in outputs else [])
        subscribe += (["--sparkplug-group", tagmaps.SPARKPLUG_GROUP] if "sparkplug" in outputs else [])
        subscriber = Child(
            "subscriber",
            [sys.executable, str(BENCH_DIR / "subscriber.py"), "--port", str(broker.port),
             *subscribe, "--client", args.client, "--qos", str(args.subscriber_qos)],
            log_path=workdir / "subscriber.log", stdin_pipe=True,
        )
        children.append(subscriber)
        subscriber.wait_for_prefix("ready", 15)
        state_dir = workdir / "state"
        state_dir.mkdir()
        if plan.server_pki is not None:
            _trust_server(plant, state_dir, plan.server_pki)
        gateway = Child("gateway", _gateway_argv(config, state_dir), log_path=workdir / "gateway.log",
                        cwd=workdir, stdout_to_log=True)
        children.append(gateway)
        started = time.monotonic()

        # Start-up: every tag delivered at least once (or give up waiting and say so).
        keys_seen = 0
        while time.monotonic() - started < plan.startup_timeout_s:
            if not gateway.running:
                raise ChildError(f"gateway exited with {gateway.process.returncode}; log:\n{gateway.log_tail()}")
            subscriber.send("status")
            keys_seen = int(subscriber.wait_for_prefix("status ", 30).split("keys=")[1].split()[0])
            if keys_seen >= keys_wanted:
                break
            time.sleep(0.25)
        startup_s = time.monotonic() - started
        time.sleep(args.warmup_s)

        pids = {"gateway": [gateway.pid], "broker": [broker.pid], "servers": [server.pid],
                "subscriber": [subscriber.pid]}
        before = {name: [proc_sample(pid) for pid in group] for name, group in pids.items()}
        busy_before = machine_busy_ticks()
        subscriber.send("start")
        subscriber.wait_for_prefix("started", 30)
        window_started = time.monotonic()
        window_wall = (time.time(), 0.0)
        counts_before = _scrape_counts(metrics_port)
        queue_ages_s: list[float] = []
        scrapes = _scrape_for(metrics_port, args.duration_s, args.scrape_every_s, queue_ages_s)
        counts_after = _scrape_counts(metrics_port)
        result["metrics"] = {"listener": args.metrics, "scrapes": scrapes, "scrape_every_s": args.scrape_every_s}
        window_wall = (window_wall[0], time.time())
        after = {name: [proc_sample(pid) for pid in group] for name, group in pids.items()}
        busy_after = machine_busy_ticks()
        window_s = time.monotonic() - window_started
        subscriber.send("stop")
        counted_all = orjson.loads(subscriber.wait_for_prefix("result ", 120)[len("result "):])
        by_output = {"uns-json": counted_all, "sparkplug": counted_all.get("sparkplug")}
        counted = by_output[outputs[0]]
        gateway_alive = gateway.running
    except (ChildError, OSError, ValueError) as exc:
        raise ChildError(f"{exc}\n(tag map and logs kept in {workdir})") from exc
    finally:
        for child in reversed(children):
            _, rest = child.stop()
            if child.name == "servers":
                server_output = rest
                server_stats = next((line for line in rest.splitlines() if line.startswith("stats ")), "")
        broker.stop()
        if plan.server_pki is not None:
            shutil.rmtree(plan.server_pki, ignore_errors=True)  # the bench server's key: never left behind

    assert gateway is not None
    cpu = {name: sum(d for d in (_cpu_delta(b, a) for b, a in zip(before[name], after[name], strict=True))
                     if d is not None) for name in pids}
    gw_after = after["gateway"][0]
    gw_before = before["gateway"][0]
    values = int(counted["values"])
    sub_window_s = float(counted["window_s"]) or window_s
    busy = busy_after[0] - busy_before[0]
    total = busy_after[1] - busy_before[1]
    tags = plant.tag_count
    log_summary = _log_summary(gateway.log_path.read_text(errors="replace"))
    offered_per_s = tags * 1000 / plan.interval_ms
    written_per_s = _server_written_per_s(server_output, *window_wall)
    # What the gateway could have delivered: the configured rate, unless the server wrote less (OPC UA).
    deliverable_per_s = min(offered_per_s, written_per_s) if written_per_s is not None else offered_per_s
    result.update(
        {
            "protocol": plan.protocol,
            "ts_meaning": TS_MEANING[plan.protocol],
            "config": {
                "tags": tags, "devices": plan.devices, "interval_ms": plan.interval_ms, "publish": plan.mode,
                "mqtt_qos": plant.mqtt.qos, "offered_values_per_s": round(tags * 1000 / plan.interval_ms, 1),
                "duration_s": args.duration_s, "warmup_s": args.warmup_s, "subscriber_client": args.client,
                "broker_max_inflight_messages": args.broker_inflight, "mqtt_connections": args.mqtt_connections,
                "subscriber_qos": args.subscriber_qos, "mqtt_protocol": args.mqtt_protocol,
                "outputs": list(outputs),
                **plan.details,
            },
            "startup": {"s": round(startup_s, 2), "tags_seen": keys_seen, "complete": keys_seen >= keys_wanted},
            "delivered": _delivered(counted, expected, sub_window_s),
            "data_age_ms": counted["age_ms"],
            # The second output of `--outputs both`, counted on its own: the same samples in the other encoding.
            **{output.replace("-", "_"): {
                "delivered": _delivered(by_output[output], expected_by_output[output], sub_window_s),
                "data_age_ms": by_output[output]["age_ms"],
            } for output in outputs[1:]},
            "overload": _overload(values=values, window_s=sub_window_s, offered_per_s=deliverable_per_s,
                                  tags=tags, counted=counted, log=log_summary),
            "gateway": {
                "pid": gateway.pid,
                "alive_at_end": gateway_alive,
                "cpu_s": round(cpu["gateway"], 3),
                "cpu_util": _util(cpu["gateway"], window_s),
                "cpu_us_per_value": round(cpu["gateway"] / values * 1e6, 2) if values else None,
                "rss_mb": round(gw_after.rss_mb, 1) if gw_after else None,
                "rss_mb_at_window_start": round(gw_before.rss_mb, 1) if gw_before else None,
                # Polls of the window, from /metrics (None without --metrics on): run, and skipped because the
                # data waiting for the broker was older than max_queue_age_ms.
                **{name: (counts_after[name] - counts_before[name]
                          if name in counts_after and name in counts_before else None)
                   for name in ("poll_cycles", "poll_skipped")},
                # The gateway's own part of the data age: the oldest message not yet handed to its MQTT sink, at
                # each scrape (the rest is the broker, the subscriber and the machine they share).
                "queue_age_ms_at_scrapes": {
                    "median": round(statistics.median(queue_ages_s) * 1000, 1) if queue_ages_s else None,
                    "max": round(max(queue_ages_s) * 1000, 1) if queue_ages_s else None,
                },
                "peak_rss_mb": round(gw_after.peak_rss_mb, 1) if gw_after else None,
                "threads": gw_after.threads if gw_after else None,
                "log": log_summary,
            },
            "broker": {"cpu_s": round(cpu["broker"], 3), "cpu_util": _util(cpu["broker"], window_s)},
            "servers": {"cpu_s": round(cpu["servers"], 3), "cpu_util": _util(cpu["servers"], window_s),
                        "stats": server_stats,
                        "written_values_per_s": round(written_per_s, 1) if written_per_s is not None else None},
            "subscriber": {"cpu_s": round(cpu["subscriber"], 3), "cpu_util": _util(cpu["subscriber"], window_s)},
            "machine": {"cpus": _cpu_count(), "busy_fraction": round(busy / total, 3) if total else None,
                        "loadavg": Path("/proc/loadavg").read_text().split()[:3]},
        }
    )
    return result


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def run_load(args: argparse.Namespace) -> dict[str, Any]:
    channels = _scaled(640, args, "load-50k")
    completed = subprocess.run(
        [sys.executable, str(BENCH_DIR / "load_plan.py"), "--devices", "10", "--channels", str(channels)],
        capture_output=True, text=True, cwd=REPO_ROOT, check=False,
    )
    if completed.returncode != 0:
        raise ChildError(f"load_plan.py failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    load = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"scenario": "load-50k", "mode": "n/a", "config": {"devices": 10, "channels_per_device": channels,
            "tags": load["tags"]}, "load": load}


def run_memory(scenario: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = ["limit", "--publish", "tag"] if scenario == "limit" else ["reload", "--reloads", "50"]
    completed = subprocess.run(
        [sys.executable, str(BENCH_DIR / "memory.py"), *argv], capture_output=True, text=True, cwd=REPO_ROOT,
        check=False,
    )
    if completed.returncode != 0:
        raise ChildError(f"memory.py failed ({completed.returncode}):\n{completed.stderr[-3000:]}")
    memory = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"scenario": scenario, "mode": "n/a", "config": {"tags": memory["tags"], "argv": argv}, "memory": memory}


# ------------------------------------------------------------------------------------------- reporting


def _lookup(result: dict[str, Any], path: str) -> Any:
    node: Any = result
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    key = (result["scenario"], result["mode"])
    specs = list(TARGETS.get(key, []))
    if result["scenario"] in LIVE_SCENARIOS and "data_age_ms" in result:
        interval = result["config"]["interval_ms"]
        offered = result["config"]["offered_values_per_s"]
        # The issue's data-age target holds "at 20,000 values/s": checked on runs offering about that much.
        if DATA_AGE_LOAD[0] <= offered <= DATA_AGE_LOAD[1]:
            specs.append(("data_age_p95_ms", "data_age_ms.p95", "<=", interval + 10))
    for name, path, op, target in specs:
        value = _lookup(result, path)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        checks.append({"name": name, "value": value, "op": op, "target": target, "met": met})
    return checks


def summary_line(result: dict[str, Any]) -> str:
    name = f"{result['scenario']}/{result['mode']}"
    if "error" in result:
        return f"{name}: FAILED: {result['error'].splitlines()[0]}"
    if result["scenario"] == "load-50k":
        load = result["load"]
        return (f"{name}: {load['tags']:,} tags, load {load['load_s_best']} s + plan {load['plan_s_best']} s "
                f"(median total {load['total_s_median']} s), rss {load['max_rss_mb']} MB")
    if result["scenario"] in MEMORY_SCENARIOS:
        memory = result["memory"]
        return (f"{name}: {memory['tags']:,} tags, rss after start {memory['rss_after_start_mb']} MB, after "
                f"{memory['reloads']} reloads {memory['rss_after_reloads_mb']} MB "
                f"(growth {memory['rss_growth_mb']} MB), peak {memory['peak_rss_mb']} MB")
    d, g, age = result["delivered"], result["gateway"], result["data_age_ms"]
    misses = [c["name"] for c in result.get("targets", []) if c["met"] is False]
    config = result["config"]
    return (
        f"{name}: [{'+'.join(config.get('outputs', ['uns-json']))}, "
        f"MQTT {config['mqtt_protocol']} qos {config['mqtt_qos']}, "
        f"broker max_inflight_messages {config['broker_max_inflight_messages']}, "
        f"{config['mqtt_connections']} connection(s)] {d['values_per_s']:,.0f} values/s of "
        f"{config['offered_values_per_s']:,.0f} offered "
        f"({d['messages_per_s']:,.0f} msg/s{', SILENT OVERLOAD' if result['overload']['silent'] else ''}), "
        f"age p50/p95/p99 {age['p50']}/{age['p95']}/{age['p99']} ms "
        f"(p95 {age['p95'] / result['config']['interval_ms']:.1f} intervals), "
        f"gw {g['cpu_us_per_value']} us/value {g['cpu_util']} cpu rss {g['rss_mb_at_window_start']}->{g['rss_mb']} MB, "
        + (f"polls {g['poll_cycles']:.0f} run / {g['poll_skipped']:.0f} skipped, "
           if g.get("poll_cycles") is not None and g.get("poll_skipped") is not None else "")
        + (f"queue age median/max {qa['median']}/{qa['max']} ms, "
           if (qa := g.get("queue_age_ms_at_scrapes")) and qa["max"] is not None else "")
        + f"broker {result['broker']['cpu_util']} cpu, servers {result['servers']['cpu_util']} cpu"
        + (f" (wrote {written:,.0f} values/s)" if (written := result["servers"].get("written_values_per_s")) else "")
        + ", "
        f"gaps {d['seq_missing']}, starved {d['tags_starved']}/{d['tags_expected']}, "
        f"not-good {d['values_not_good']}, machine busy {result['machine']['busy_fraction']}"
        + "".join(
            f"; {output}: {o['delivered']['values_per_s']:,.0f} values/s "
            f"({o['delivered']['messages_per_s']:,.0f} msg/s), "
            f"age p50/p95/p99 {o['data_age_ms']['p50']}/{o['data_age_ms']['p95']}/{o['data_age_ms']['p99']} ms, "
            f"gaps {o['delivered']['seq_missing']}, repeats {o['delivered']['seq_repeats']}, "
            f"starved {o['delivered']['tags_starved']}/{o['delivered']['tags_expected']}"
            for output in ("sparkplug",) if (o := result.get(output))
        )
        + (f", MISSED: {', '.join(misses)}" if misses else "")
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=(*SCENARIOS, *SCENARIO_GROUPS, "all"), default="all")
    parser.add_argument("--mode", choices=("tag", "batch", "both"), default="both")
    parser.add_argument("--metrics", choices=("on", "off"), default="on",
                        help="the gateway's HTTP listener (/metrics scraped during the window) or none")
    parser.add_argument("--scrape-every-s", type=float, default=SCRAPE_EVERY_S,
                        help="with --metrics on: seconds between scrapes of /metrics (default 1; 0: listener on, "
                        "never scraped, to tell the listener's cost from the scrapes')")
    parser.add_argument("--duration-s", type=float, default=20.0, help="measured window (default 20)")
    parser.add_argument("--warmup-s", type=float, default=5.0, help="excluded after start-up (default 5)")
    parser.add_argument("--interval-ms", type=int, default=None, help="poll/publishing interval for every scenario")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every scenario's size (default 1.0)")
    parser.add_argument("--max-queue-age-ms", type=int, default=None,
                        help="every device's max_queue_age_ms (default: the tag map's, one interval; 0: never skip)")
    parser.add_argument("--size", type=int, default=None, help="the size of the one chosen scenario (see above)")
    parser.add_argument("--racks", type=int, default=10, help="hall: number of racks (default 10)")
    parser.add_argument("--per-object", type=int, default=100, help="opcua-20k: variables per object (default 100)")
    parser.add_argument("--opcua-timeout-ms", type=int, default=30_000,
                        help="opcua-20k: device timeout_ms; one CreateMonitoredItems call for every item must fit")
    parser.add_argument("--modbus-impl", choices=("raw", "pymodbus"), default="raw", help="bench Modbus server")
    parser.add_argument("--modbus-concurrent-requests", type=int, default=None, choices=range(1, 17),
                        metavar="N", help="the devices' max_concurrent_requests (default 1, as in a tag map; "
                        "more than 1 needs --modbus-impl raw: pymodbus's server loses pipelined requests)")
    parser.add_argument("--client", choices=("raw", "paho"), default="raw", help="subscriber MQTT client")
    parser.add_argument(
        "--broker-inflight", type=int, default=1000,
        help="Mosquitto max_inflight_messages, announced as Receive Maximum (Mosquitto's own default is 20)",
    )
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="the gateway's mqtt.qos (default 1)")
    parser.add_argument("--outputs", choices=tuple(tagmaps.OUTPUTS), default="uns-json",
                        help="the gateway's outputs: UNS JSON (default), Sparkplug B, or both, each counted")
    parser.add_argument("--mqtt-connections", type=int, default=1, metavar="N",
                        help="the gateway's mqtt.connections: data spread over N connections (default 1)")
    parser.add_argument("--mqtt-protocol", choices=("5", "3.1.1"), default="5",
                        help="the gateway's mqtt.protocol (a stock Mosquitto caps only MQTT 5 clients at its window)")
    parser.add_argument("--subscriber-qos", type=int, choices=(0, 1), default=1,
                        help="the counting subscriber's QoS (1: the broker's window also limits it)")
    parser.add_argument("--peers", type=peers.parse_peers, default=[], metavar="node-red,modbus4mqtt",
                        help="after each live run, run these peer gateways on the same load (benchmarks/peers.py)")
    parser.add_argument("--keep-workdir", action="store_true",
                        help="keep each run's temp dir (tag map, logs); a failed run's is always kept")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default benchmarks/results/<time>.json)")
    args = parser.parse_args(argv)
    if args.size is not None and args.scenario == "all":
        parser.error("--size needs one --scenario; use --scale for all")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = SCENARIOS if args.scenario == "all" else SCENARIO_GROUPS.get(args.scenario, (args.scenario,))
    modes = ("tag", "batch") if args.mode == "both" else (args.mode,)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: list[dict[str, Any]] = []
    failed = False
    for scenario in scenarios:
        for mode in modes if scenario in LIVE_SCENARIOS else ("n/a",):
            try:
                if scenario == "load-50k":
                    result = run_load(args)
                elif scenario in MEMORY_SCENARIOS:
                    result = run_memory(scenario, args)
                else:
                    result = run_live(plan_live(scenario, mode, args), args)
                result["targets"] = evaluate_targets(result)
                if "workdir" in result and not args.keep_workdir:
                    shutil.rmtree(result.pop("workdir"), ignore_errors=True)
            except (ChildError, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
                result = {"scenario": scenario, "mode": mode, "error": str(exc)}
                failed = True
            results.append(result)
            print(summary_line(result), flush=True)
            if args.peers and scenario in LIVE_SCENARIOS:
                qos = int(_lookup(result, "config.mqtt_qos") or 1)
                ran = peers.run_peers(args.peers, scenario, mode, lambda s=scenario, m=mode: plan_live(s, m, args),
                                      args, qos)
                results += ran
                failed = failed or any("error" in r for r in ran)
    for line in security_cost_lines([r for r in results if "system" not in r]):  # Cellgate's runs, not peers'
        print(line, flush=True)
    out = args.out or BENCH_DIR / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": RESULT_SCHEMA,
        "started": started,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "cpus": _cpu_count(),
        "results": results,
    }
    out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
