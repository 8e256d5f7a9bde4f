"""Throughput and CPU per message of the MQTT sink alone: QoS1 per-tag messages into a local Mosquitto.

    .venv/bin/python benchmarks/mqtt_sink.py [--messages 100000] [--batch 100] [--payload-bytes 200]
        [--max-inflight 20] [--receive-maximum 20] [--protocol 5|3.1.1] [--connections N] [--sink-module PATH]
        [--event-loop asyncio|uvloop] [--profile FILE]

Starts Mosquitto on a free port (as benchmarks/procs.py: no persistence, large queues) with
``max_inflight_messages`` 20 -- Mosquitto's default, which it also announces to MQTT 5 clients as their
Receive Maximum -- or ``--receive-maximum``, and the benchmark subscriber (benchmarks/subscriber.py, its
own process, QoS1) on the topic tree. Then it pushes ``--messages`` payloads of ``--payload-bytes`` bytes
through ``MqttSink.offer_many`` in batches of ``--batch`` (what StoreAndForward.forward does), over 1000
per-tag topics, and waits for every PUBACK (``flush``) and for the subscriber to have them all.

Prints one JSON object: ``sink_msg_per_s`` (messages / time until the last PUBACK), ``end_to_end_msg_per_s``
(until the subscriber has them all), ``sink_cpu_us_per_msg`` (``time.process_time`` of this process -- the
sink and, for paho, its network thread -- per message, also split into user and system time; the broker
and the subscriber are other processes), and the subscriber's own count with ``seq`` gaps and repeats. A
warm-up of 5 % goes first, unmeasured. ``--sink-module`` loads another implementation of
gateway/mqtt/connection.py from a file, e.g. a copy of the paho-mqtt based one, to compare on the same machine.
``--connections N`` (N > 1) spreads the topics over N connections (``gateway.sinks.fanout.MqttFanOut``, what
``mqtt.connections`` builds), each with its own window.
``--event-loop`` runs it on the stock asyncio loop (default) or uvloop (``gateway.event_loop``); ``--profile FILE``
writes a cProfile of the measured part (``python -m pstats FILE``; the profiler's own cost inflates the CPU figures).
Set BENCH_NODELAY=1 to turn Nagle off in the broker (``set_tcp_nodelay``), for experiments.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import structlog
from procs import HOST, MOSQUITTO, Child, ChildError, free_port

from gateway.event_loop import choose_event_loop

BENCH_DIR = Path(__file__).resolve().parent
TOPIC_BASE = "acme/dunkirk/formation/hall-a"
TOPICS = 1000


class BenchBroker:
    """Mosquitto on a free port as in benchmarks/procs.py, with ``max_inflight_messages`` as given: that is
    also the Receive Maximum it announces to MQTT 5 clients (20 by default)."""

    def __init__(self, workdir: Path, receive_maximum: int) -> None:
        self.workdir = workdir
        self.receive_maximum = receive_maximum
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for _ in range(3):  # another process may take the free port before mosquitto binds it
            self.port = free_port()
            lines = [
                f"listener {self.port} {HOST}",
                "allow_anonymous true",
                "persistence false",
                "max_queued_messages 1000000",
                *(["set_tcp_nodelay true"] if os.environ.get("BENCH_NODELAY") else []),
                f"max_inflight_messages {self.receive_maximum}",
                "log_dest stderr",
                "log_type error",
                "log_type warning",
            ]
            if os.geteuid() == 0:
                lines.append("user root")
            config = self.workdir / "mosquitto.conf"
            config.write_text("\n".join(lines) + "\n")
            with (self.workdir / "mosquitto.log").open("ab") as log:
                self.process = subprocess.Popen([MOSQUITTO, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    with socket.create_connection((HOST, self.port), timeout=0.2):
                        return
                except OSError:
                    time.sleep(0.02)
            self.stop()
        raise ChildError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
        self.process = None


def load_sink_module(path: str | None) -> ModuleType:
    if path is None:
        import gateway.mqtt.connection as module

        return module
    spec = importlib.util.spec_from_file_location("bench_sink_under_test", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_messages(count: int, payload_bytes: int, first_seq: list[int]) -> list[tuple[str, bytes]]:
    """Per-tag JSON payloads padded to ``payload_bytes``; ``seq`` counts up per topic (gap check)."""
    messages = []
    for n in range(count):
        tag = n % TOPICS
        seq = first_seq[tag]
        first_seq[tag] += 1
        topic = f"{TOPIC_BASE}/rack-{tag // 100:02d}/ch{tag % 100:03d}/voltage"
        body = {"value": 3.5 + n % 1000 / 1000, "unit": "V", "quality": "good", "ts": "2026-11-26T04:43:00.123Z",
                "seq": seq, "pad": ""}
        raw = orjson.dumps(body)
        body["pad"] = "x" * max(0, payload_bytes - len(raw))
        messages.append((topic, orjson.dumps(body)))
    return messages


async def push(sink: Any, messages: list[tuple[str, bytes]], batch: int) -> int:
    """offer_many in batches; returns how many the sink refused (should be 0 while connected)."""
    refused = 0
    for start in range(0, len(messages), batch):
        chunk = messages[start : start + batch]
        taken = await sink.offer_many(chunk, wait_s=10.0)
        refused += len(chunk) - taken
    return refused


async def run(args: argparse.Namespace) -> dict[str, Any]:
    module = load_sink_module(args.sink_module)
    workdir = Path(tempfile.mkdtemp(prefix="cellgate-bench-mqtt-"))
    broker = BenchBroker(workdir, args.receive_maximum)
    broker.start()
    subscriber: Child | None = None
    try:
        subscriber = Child(
            "subscriber",
            [sys.executable, str(BENCH_DIR / "subscriber.py"), "--port", str(broker.port),
             "--filter", "acme/dunkirk/#", "--client", "raw"],
            log_path=workdir / "subscriber.log", stdin_pipe=True,
        )
        subscriber.wait_for_prefix("ready", 15)
        options = module.MqttOptions(
            host="127.0.0.1", port=broker.port, client_id="cellgate-bench-sink", protocol=args.protocol,
            will_topic="acme/dunkirk/_gateway/bench/status", will_payload=b'{"online":false}',
            online_payload=b'{"online":true}', max_inflight=args.max_inflight,
        )
        seqs = [0] * TOPICS
        warmup = make_messages(max(args.messages // 20, args.batch), args.payload_bytes, seqs)
        measured = make_messages(args.messages, args.payload_bytes, seqs)
        # The 100k prepared messages are the benchmark's, not the sink's: keep the garbage collector's
        # full collections from walking them (a gateway holds at most a window of messages).
        gc.collect()
        gc.freeze()
        if args.connections > 1:
            from gateway.sinks.fanout import MqttFanOut

            output: Any = MqttFanOut(options, connections=args.connections)
        else:
            output = module.MqttSink(options)
        async with output as sink:
            await sink.wait_connected(10)
            await push(sink, warmup, args.batch)
            assert await sink.flush(30), "warm-up not acknowledged"
            await asyncio.to_thread(subscriber.send, "start")
            await asyncio.to_thread(subscriber.wait_for_prefix, "started", 10)

            profiler = cProfile.Profile() if args.profile else None
            times_started = os.times()
            cpu_started = time.process_time()
            started = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            refused = await push(sink, measured, args.batch)
            drained = await sink.flush(120)
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(args.profile)
            acked_s = time.perf_counter() - started
            cpu_s = time.process_time() - cpu_started
            times_ended = os.times()

            expected = len(warmup) + len(measured) - refused
            received = 0
            deadline = time.monotonic() + 60
            while received < expected and time.monotonic() < deadline:
                await asyncio.to_thread(subscriber.send, "status")
                line = await asyncio.to_thread(subscriber.wait_for_prefix, "status ", 10)
                received = int(line.split("messages=")[1])
                if received < expected:
                    await asyncio.sleep(0.02)
            end_to_end_s = time.perf_counter() - started
            await asyncio.to_thread(subscriber.send, "stop")
            result_line = await asyncio.to_thread(subscriber.wait_for_prefix, "result ", 30)
            seen = json.loads(result_line.split(" ", 1)[1])
            delivered, failed = sink.delivered, sink.failed
        count = len(measured)
        return {
            "scenario": "mqtt-sink",
            "sink": args.sink_module or "gateway.mqtt.connection",
            "protocol": args.protocol,
            "event_loop": args.event_loop,
            "messages": count,
            "batch": args.batch,
            "payload_bytes": len(measured[0][1]),
            "max_inflight": args.max_inflight,
            "connections": args.connections,
            "broker_receive_maximum": args.receive_maximum,
            "refused": refused,
            "drained": drained,
            "sink_msg_per_s": round(count / acked_s),
            "end_to_end_msg_per_s": round(count / end_to_end_s),
            "sink_cpu_us_per_msg": round(cpu_s / count * 1e6, 2),
            "sink_cpu_share_of_one_core": round(cpu_s / acked_s, 2),
            "sink_user_us_per_msg": round((times_ended.user - times_started.user) / count * 1e6, 2),
            "sink_system_us_per_msg": round((times_ended.system - times_started.system) / count * 1e6, 2),
            "sink_delivered_total": delivered,
            "sink_failed_total": failed,
            "subscriber": {k: seen[k] for k in ("messages", "seq_missing", "seq_repeats", "unparsable")},
        }
    finally:
        if subscriber is not None:
            subscriber.stop()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--payload-bytes", type=int, default=200)
    parser.add_argument("--max-inflight", type=int, default=20, help="MqttOptions.max_inflight (the window)")
    parser.add_argument("--receive-maximum", type=int, default=20,
                        help="the broker's max_inflight_messages = the Receive Maximum it announces (default 20)")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    parser.add_argument("--connections", type=int, default=1, help="MQTT connections (mqtt.connections)")
    parser.add_argument("--sink-module", help="path of another gateway/mqtt/connection.py to measure instead")
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the event loop to run on (gateway.event_loop)")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile of the measured part to FILE")
    args = parser.parse_args()
    # The sink's log lines (connected, closed) go to stderr: stdout is the JSON result.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    choice = choose_event_loop(args.event_loop)
    with asyncio.Runner(loop_factory=choice.factory) as runner:
        print(json.dumps(runner.run(run(args))))


if __name__ == "__main__":
    main()
