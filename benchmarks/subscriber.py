"""The benchmark's independent subscriber: a separate process that counts what the gateway delivered.

    python benchmarks/subscriber.py --host 127.0.0.1 --port 1883 --filter 'acme/dunkirk/#' [--client raw|paho]
        [--sparkplug-group GROUP]

Protocol with the harness (one line each way, stdin -> stdout):

* prints ``ready`` once the broker acknowledged the subscription;
* ``status``  -> ``status keys=K messages=M`` (distinct tag keys seen so far, data messages so far);
* ``start``   -> ``started``: opens the measured window (everything before is warm-up);
* ``stop``    -> ``result {json}``: closes the window and reports it; ``quit`` exits.

What it counts, per *tag key* (the per-tag topic, or ``{equipment topic}/{tag}`` for a row of a ``_batch``
payload, so both modes give the same keys and a starved tag shows either way): values received inside the
window, values with quality other than good, and the data age = receive wall time - the sample's ``ts``
(ms; the ``ts`` of each row inside a batch). Per *topic* it checks ``seq``: a jump is a gap (missed messages,
counted in ``seq_missing``), a repeat or step back is counted in ``seq_repeats``; sequence tracking starts in
the warm-up so the window start never looks like a gap. Retained messages and ``_status``/``_meta``/gateway
status topics are ignored. Replayed messages (``"historical": true``) are only counted (``historical``), so values,
ages and seq are those of live data.

With ``--sparkplug-group GROUP`` it also subscribes ``spBv1.0/GROUP/#`` (``--filter`` may then be left out, and
may be given more than once) and counts Sparkplug B separately (the ``sparkplug`` member of the result, same
fields): NBIRTH/DBIRTH/DDATA are decoded with the gateway's compiled protobuf module, the births teach the aliases,
values are counted per ``{device}/{metric name}`` key, the data age is receive time - the metric's timestamp (ms),
and ``seq`` (0-255 per edge node, +1 per message, 0 again at an NBIRTH) is checked for gaps (a step of more than
one, modulo 256, counted in ``seq_missing``) and repeats (the same number again). A metric flagged
``is_historical`` (a replay) is only counted (``historical_messages``); a DDATA alias no birth named counts as
``unparsable``. ``status`` then reports the keys of both encodings together.

``--client raw`` (default) is a minimal MQTT 3.1.1 client on an asyncio socket that parses PUBLISH frames in
bulk and sends PUBACKs in batches: measured several times cheaper per message than paho-mqtt's loop thread,
which matters at 40,000+ messages/s on a 2-core box. ``--client paho`` is there to compare.
Subscriptions are QoS 1 by default so a slow subscriber is back-pressured by the broker's queue instead of
losing QoS 0 messages silently (the broker's own queue limit is then the only place left to lose them).
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import math
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
from google.protobuf.message import DecodeError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script: the gateway's compiled Sparkplug protobuf module
    sys.path.insert(0, REPO_ROOT)

from gateway.encoders import sparkplug_b_pb2 as spb  # noqa: E402

AGE_BIN_MS = 0.1
IGNORED_SUFFIXES = ("/_status", "/_meta")


def percentile_from_histogram(histogram: dict[int, int], fraction: float) -> float | None:
    """The value (ms) below which ``fraction`` of the ages fall; bins are AGE_BIN_MS wide (reported at centre)."""
    total = sum(histogram.values())
    if total == 0:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for key in sorted(histogram):
        seen += histogram[key]
        if seen >= rank:
            return round((key + 0.5) * AGE_BIN_MS, 2)
    return None


class TimestampParser:
    """``2026-11-26T04:43:00.123Z`` -> epoch seconds, caching the whole-second part (a few values per run)."""

    def __init__(self) -> None:
        self._seconds: dict[str, int] = {}

    def __call__(self, text: str) -> float:
        head = text[:19]
        base = self._seconds.get(head)
        if base is None:
            base = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
            self._seconds[head] = base
        fraction = text[20:-1]  # digits between '.' and 'Z'
        return base + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


class Tally:
    """Counts values, seq gaps and ages; all methods are called from one thread at a time."""

    def __init__(self) -> None:
        self.measuring = False
        self.window_started = 0.0
        self.window_s = 0.0
        self.messages_total = 0
        self.messages = 0
        self.historical = 0
        self.values = 0
        self.not_good = 0
        self.null_values = 0
        self.unparsable = 0
        self.seq_missing = 0
        self.seq_gap_events = 0
        self.seq_repeats = 0
        self.per_key: dict[str, int] = {}
        self.keys_seen: set[str] = set()
        self.last_seq: dict[str, int] = {}
        self.age_histogram: dict[int, int] = {}
        self.age_max_ms = -math.inf
        self.age_min_ms = math.inf
        self._ts = TimestampParser()

    def start(self) -> None:
        self.measuring = True
        self.window_started = time.monotonic()

    def stop(self) -> None:
        if self.measuring:
            self.window_s = time.monotonic() - self.window_started
        self.measuring = False

    def _age(self, received: float, ts_text: str) -> None:
        age_ms = (received - self._ts(ts_text)) * 1000.0
        key = math.floor(age_ms / AGE_BIN_MS)
        self.age_histogram[key] = self.age_histogram.get(key, 0) + 1
        self.age_max_ms = max(self.age_max_ms, age_ms)
        self.age_min_ms = min(self.age_min_ms, age_ms)

    def _seq(self, topic: str, seq: int) -> None:
        last = self.last_seq.get(topic)
        self.last_seq[topic] = seq if last is None or seq > last else last
        if last is None or not self.measuring:
            return
        if seq > last + 1:
            self.seq_missing += seq - last - 1
            self.seq_gap_events += 1
        elif seq <= last:
            self.seq_repeats += 1

    def _value(self, key: str, row: dict[str, Any], received: float) -> None:
        self.values += 1
        self.per_key[key] = self.per_key.get(key, 0) + 1
        if row.get("quality") != "good":
            self.not_good += 1
        if row.get("value") is None:
            self.null_values += 1
        ts = row.get("ts")
        if isinstance(ts, str):
            self._age(received, ts)

    def on_message(self, topic: str, payload: bytes, received: float) -> None:
        if topic.endswith(IGNORED_SUFFIXES) or "/_gateway/" in topic:
            return
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.unparsable += 1
            return
        if not isinstance(body, dict):
            self.unparsable += 1
            return
        if body.get("historical") is True:
            self.historical += self.measuring
            return
        self.messages_total += 1
        seq = body.get("seq")
        batch = topic.endswith("/_batch")
        rows = body.get("samples") if batch else None
        if not self.measuring:
            if isinstance(seq, int):
                self._seq(topic, seq)
            if batch and isinstance(rows, list):
                base = topic[: -len("_batch")]
                self.keys_seen.update(base + str(row.get("tag")) for row in rows if isinstance(row, dict))
            else:
                self.keys_seen.add(topic)
            return
        self.messages += 1
        if isinstance(seq, int):
            self._seq(topic, seq)
        if batch:
            if not isinstance(rows, list):
                self.unparsable += 1
                return
            base = topic[: -len("_batch")]
            for row in rows:
                if isinstance(row, dict):
                    key = base + str(row.get("tag"))
                    self.keys_seen.add(key)
                    self._value(key, row, received)
        else:
            self.keys_seen.add(topic)
            self._value(topic, body, received)

    def status_line(self) -> str:
        return f"status keys={len(self.keys_seen)} messages={self.messages_total}"

    def result(self) -> dict[str, Any]:
        histogram = self.age_histogram
        return {
            "window_s": round(self.window_s, 3),
            "messages": self.messages,
            "historical_messages": self.historical,
            "values": self.values,
            "values_not_good": self.not_good,
            "values_null": self.null_values,
            "unparsable": self.unparsable,
            "seq_missing": self.seq_missing,
            "seq_gap_events": self.seq_gap_events,
            "seq_repeats": self.seq_repeats,
            "keys_seen": len(self.keys_seen),
            "age_ms": {
                "p50": percentile_from_histogram(histogram, 0.50),
                "p95": percentile_from_histogram(histogram, 0.95),
                "p99": percentile_from_histogram(histogram, 0.99),
                "min": round(self.age_min_ms, 2) if histogram else None,
                "max": round(self.age_max_ms, 2) if histogram else None,
            },
            "per_key": self.per_key,
        }


SPARKPLUG_NAMESPACE = "spBv1.0/"
GOOD_QUALITY = 192  # Ignition's Good: the Quality property of a good metric (absent in DDATA means good)


class SparkplugTally(Tally):
    """Counts a Sparkplug B stream like ``Tally`` counts UNS JSON: values per ``{device}/{metric}`` key, data age
    from each metric's timestamp (ms), and ``seq`` per edge node (0-255, +1 per message, restarting at NBIRTH)."""

    def __init__(self) -> None:
        super().__init__()
        self.aliases: dict[tuple[str, int], str] = {}  # (edge node, alias) -> "{device}/{metric name}"
        self._payload = spb.Payload()

    def _sp_seq(self, node: str, seq: int, birth: bool) -> None:
        last = self.last_seq.get(node)
        self.last_seq[node] = seq
        if birth or last is None or not self.measuring:
            return
        step = (seq - last) % 256
        if step == 0:
            self.seq_repeats += 1
        elif step > 1:
            self.seq_missing += step - 1
            self.seq_gap_events += 1

    def _metric_age(self, received: float, timestamp_ms: int) -> None:
        age_ms = received * 1000.0 - timestamp_ms
        key = math.floor(age_ms / AGE_BIN_MS)
        self.age_histogram[key] = self.age_histogram.get(key, 0) + 1
        self.age_max_ms = max(self.age_max_ms, age_ms)
        self.age_min_ms = min(self.age_min_ms, age_ms)

    def on_message(self, topic: str, payload: bytes, received: float) -> None:
        # spBv1.0/{group}/{type}/{edge node}[/{device}]
        parts = topic.split("/")
        if len(parts) < 4 or parts[2] not in ("NBIRTH", "DBIRTH", "DDATA", "DDEATH"):
            return  # NDEATH (no seq), commands, STATE
        kind, node = parts[2], parts[3]
        device = parts[4] if len(parts) > 4 else ""
        body = self._payload
        try:
            body.ParseFromString(payload)
        except DecodeError:
            self.unparsable += 1
            return
        if kind in ("NBIRTH", "DBIRTH"):
            for metric in body.metrics:
                if metric.HasField("alias") and metric.name:
                    self.aliases[(node, metric.alias)] = f"{device}/{metric.name}"
        if body.HasField("seq"):
            self._sp_seq(node, body.seq, kind == "NBIRTH")
        if kind != "DDATA":
            return
        metrics = body.metrics
        if any(metric.is_historical for metric in metrics):
            self.historical += self.measuring
            return
        self.messages_total += 1
        aliases = self.aliases
        if not self.measuring:
            self.keys_seen.update(key for metric in metrics if (key := aliases.get((node, metric.alias))) is not None)
            return
        self.messages += 1
        per_key = self.per_key
        for metric in metrics:
            key = aliases.get((node, metric.alias))
            if key is None:
                self.unparsable += 1
                continue
            self.keys_seen.add(key)
            self.values += 1
            per_key[key] = per_key.get(key, 0) + 1
            if metric.is_null:
                self.null_values += 1
            if metric.HasField("properties"):
                quality = dict(zip(metric.properties.keys, metric.properties.values, strict=False)).get("Quality")
                if quality is not None and quality.int_value != GOOD_QUALITY:
                    self.not_good += 1
            self._metric_age(received, metric.timestamp)


class Tallies:
    """Routes each message to the UNS JSON tally or, for ``spBv1.0/`` topics, the Sparkplug one."""

    def __init__(self, *, sparkplug: bool) -> None:
        self.json = Tally()
        self.sparkplug = SparkplugTally() if sparkplug else None

    def on_message(self, topic: str, payload: bytes, received: float) -> None:
        if self.sparkplug is not None and topic.startswith(SPARKPLUG_NAMESPACE):
            self.sparkplug.on_message(topic, payload, received)
        else:
            self.json.on_message(topic, payload, received)

    def _each(self) -> list[Tally]:
        return [self.json] if self.sparkplug is None else [self.json, self.sparkplug]

    def start(self) -> None:
        for tally in self._each():
            tally.start()

    def stop(self) -> None:
        for tally in self._each():
            tally.stop()

    def status_line(self) -> str:
        keys = sum(len(tally.keys_seen) for tally in self._each())
        messages = sum(tally.messages_total for tally in self._each())
        return f"status keys={keys} messages={messages}"

    def result(self) -> dict[str, Any]:
        """The UNS JSON counts at the top level (as without Sparkplug), the Sparkplug ones under ``sparkplug``."""
        document = self.json.result()
        if self.sparkplug is not None:
            document["sparkplug"] = self.sparkplug.result()
        return document


# ------------------------------------------------------------------------------------------ raw MQTT


def _remaining_length(length: int) -> bytes:
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def connect_packet(client_id: str, keepalive_s: int) -> bytes:
    body = _utf8("MQTT") + bytes((4, 0x02)) + struct.pack(">H", keepalive_s) + _utf8(client_id)  # clean session
    return b"\x10" + _remaining_length(len(body)) + body


def subscribe_packet(topic_filters: list[str], qos: int, packet_id: int = 1) -> bytes:
    body = struct.pack(">H", packet_id) + b"".join(_utf8(each) + bytes((qos,)) for each in topic_filters)
    return b"\x82" + _remaining_length(len(body)) + body


class RawMqttProtocol(asyncio.Protocol):
    """Just enough MQTT 3.1.1 to subscribe and read: CONNECT, SUBSCRIBE, PUBLISH in, PUBACK out, PINGREQ."""

    def __init__(self, tally: Tallies, topic_filters: list[str], qos: int, on_ready: Callable[[], None],
                 on_lost: Callable[[str], None]) -> None:
        self._tally = tally
        self._filters = topic_filters
        self._qos = qos
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(connect_packet(f"cellgate-bench-{os.getpid()}", 60))

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(f"connection lost: {exc!r}")

    def data_received(self, data: bytes) -> None:
        received = time.time()
        buffer = self._buffer
        buffer += data
        acks: list[bytes] = []
        position = 0
        size = len(buffer)
        tally = self._tally
        while size - position >= 2:
            header = buffer[position]
            # Remaining length: 1..4 bytes, 7 bits each, least significant first.
            length = 0
            multiplier = 1
            index = position + 1
            while True:
                if index >= size:
                    length = -1
                    break
                byte = buffer[index]
                length += (byte & 0x7F) * multiplier
                index += 1
                if not byte & 0x80:
                    break
                multiplier *= 128
            if length < 0 or index + length > size:
                break
            end = index + length
            kind = header >> 4
            if kind == 3:  # PUBLISH
                topic_length = (buffer[index] << 8) | buffer[index + 1]
                topic_end = index + 2 + topic_length
                topic = buffer[index + 2 : topic_end].decode()
                qos = (header >> 1) & 0x03
                payload_start = topic_end
                if qos:
                    acks.append(b"\x40\x02" + bytes(buffer[topic_end : topic_end + 2]))
                    payload_start += 2
                if not header & 0x01:  # retained messages are state, not data flow
                    tally.on_message(topic, bytes(buffer[payload_start:end]), received)
            elif kind == 2:  # CONNACK
                if buffer[index + 1] != 0:
                    self._on_lost(f"CONNACK refused, code {buffer[index + 1]}")
                    return
                assert self.transport is not None
                self.transport.write(subscribe_packet(self._filters, self._qos))
            elif kind == 9:  # SUBACK
                if 0x80 in buffer[index + 2 : end]:  # a return code per filter
                    self._on_lost("SUBACK refused the subscription")
                    return
                self._on_ready()
            position = end
        del buffer[:position]
        if acks and self.transport is not None:
            self.transport.write(b"".join(acks))

    def ping(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"\xc0\x00")


# ---------------------------------------------------------------------------------------------- main


async def _commands(tally: Tallies, lock: threading.Lock | None) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        raw = await reader.readline()
        command = raw.decode().strip()
        if not raw or command == "quit":
            return
        if lock is not None:
            lock.acquire()
        try:
            if command == "status":
                print(tally.status_line(), flush=True)
            elif command == "start":
                tally.start()
                print("started", flush=True)
            elif command == "stop":
                tally.stop()
                print("result " + orjson.dumps(tally.result()).decode(), flush=True)
        finally:
            if lock is not None:
                lock.release()


async def run_raw(args: argparse.Namespace, tally: Tallies) -> int:
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    failed: list[str] = []

    def lost(reason: str) -> None:
        failed.append(reason)
        ready.set()

    transport, protocol = await loop.create_connection(
        lambda: RawMqttProtocol(tally, args.filters, args.qos, ready.set, lost), args.host, args.port
    )
    await asyncio.wait_for(ready.wait(), timeout=10)
    if failed:
        print(f"subscriber: {failed[0]}", file=sys.stderr)
        return 1
    print("ready", flush=True)

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(30)
            protocol.ping()

    pinger = asyncio.create_task(keepalive())
    await _commands(tally, None)
    pinger.cancel()
    transport.close()
    if failed:
        print(f"subscriber: {failed[0]}", file=sys.stderr)
    return 0


async def run_paho(args: argparse.Namespace, tally: Tallies) -> int:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    lock = threading.Lock()
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cellgate-bench-{os.getpid()}")

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        client.subscribe([(topic_filter, args.qos) for topic_filter in args.filters])

    def on_subscribe(client: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        subscribed.set()

    def on_message(client: Any, userdata: Any, msg: Any) -> None:
        if msg.retain:
            return
        received = time.time()
        with lock:
            tally.on_message(msg.topic, msg.payload, received)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=60)
    client.loop_start()
    if not await asyncio.to_thread(subscribed.wait, 10):
        print("subscriber: no SUBACK", file=sys.stderr)
        return 1
    print("ready", flush=True)
    await _commands(tally, lock)
    client.disconnect()
    client.loop_stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--filter", action="append", default=[], help="topic filter, e.g. acme/dunkirk/# (repeatable)")
    parser.add_argument("--sparkplug-group", default=None,
                        help="also subscribe spBv1.0/GROUP/# and count Sparkplug B on its own")
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--client", choices=("raw", "paho"), default="raw")
    args = parser.parse_args()
    args.filters = list(args.filter)
    if args.sparkplug_group is not None:
        args.filters.append(f"{SPARKPLUG_NAMESPACE}{args.sparkplug_group}/#")
    if not args.filters:
        parser.error("give --filter or --sparkplug-group")
    tally = Tallies(sparkplug=args.sparkplug_group is not None)
    runner = run_paho if args.client == "paho" else run_raw
    return asyncio.run(runner(args, tally))


if __name__ == "__main__":
    sys.exit(main())
