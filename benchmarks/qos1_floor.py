"""What QoS 1 through a Receive Maximum of 20 costs any client on this machine: the floor under the gateway's figures.

    .venv/bin/python benchmarks/qos1_floor.py [--rate 20000] [--seconds 8] [--rounds 2] [--receive-maximum 20]

Starts Mosquitto on a free port (benchmarks/procs.py: no persistence, ``max_inflight_messages`` = the Receive
Maximum it announces to MQTT 5 clients) and ``mosquitto_sub`` (QoS 0, output discarded) on the topic tree, then runs
a minimal MQTT 5 publisher in this process: one blocking socket, every PUBLISH packet encoded before the clock
starts (1,000 per-tag topics, a 68-byte payload like a tag message's), so what it spends is the system calls, the
kernel's loopback TCP and the few Python lines of its loop. Paced to ``--rate`` messages/s, three ways:

* ``qos0``: QoS 0 in writes of 125 packets (a Modbus request's worth, as the gateway hands a poll over);
* ``qos1_each``: QoS 1 with a window of ``--receive-maximum``; after every read of PUBACKs the freed slots go out
  at once: one write per read;
* ``qos1_half``: the same, but freed slots wait until half the window is free (the gateway's ``_refill_slots``).

For each it prints the CPU of this process per message (``getrusage``: user and system apart) and the writes and
reads per message. The floor line takes the best QoS 0 and QoS 1 runs among those that kept 95 % of the rate: the
difference is what the protocol's round of at most ``--receive-maximum`` messages costs on this machine whatever
the client does (a write, a read and a wake-up of each side per round, plus the broker's PUBACKs), so the gateway
cannot pay less than it on top of its own QoS 0 cost. ``--rounds`` repeats the three, interleaved. Prints one JSON
object at the end (``--out`` writes it to a file too).
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.procs import HOST, Broker
from gateway.mqtt.wire import Connect, ProtocolVersion, PublishEncoder, encode_connect, topic_field

TOPICS = 1000
PAYLOAD = b'{"v":12345,"q":"good","ts":"2026-12-07T16:00:00.000Z","seq":123456}'
QOS0_WRITE = 125
PUBACK_BYTES = 4  # a success PUBACK: fixed header, remaining length 2, packet id (MQTT 5 may omit the reason code)


@dataclass
class Line:
    mode: str
    msg_per_s: float
    us_per_msg: float
    user_us_per_msg: float
    system_us_per_msg: float
    writes_per_msg: float
    reads_per_msg: float


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode_connect(Connect(client_id=f"floor-{time.monotonic_ns()}", version=ProtocolVersion.V5,
                                        keepalive_s=60)))
    connack = sock.recv(64)
    if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
        raise SystemExit(f"the broker refused the connection: {connack!r}")
    return sock


def _packets(qos: int) -> list[bytes]:
    encoder = PublishEncoder(ProtocolVersion.V5)
    topics = [topic_field(f"floor/line/dev/tag{n:04d}".encode()) for n in range(TOPICS)]
    if qos == 0:
        return [encoder.qos0(topic, PAYLOAD, False) for topic in topics]
    return [encoder.qos1(topic, PAYLOAD, n + 1, False) for n, topic in enumerate(topics)]


def _line(mode: str, sent: int, writes: int, reads: int, wall_s: float, before: resource.struct_rusage) -> Line:
    after = resource.getrusage(resource.RUSAGE_SELF)
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    return Line(mode, round(sent / wall_s), round((user + system) / sent * 1e6, 2), round(user / sent * 1e6, 2),
                round(system / sent * 1e6, 2), round(writes / sent, 4), round(reads / sent, 4))


def run_qos0(port: int, rate: float, seconds: float) -> Line:
    packets = _packets(0)
    writes_out = [b"".join(packets[(n * QOS0_WRITE) % TOPICS:][:QOS0_WRITE]) for n in range(TOPICS // QOS0_WRITE)]
    sock = _connect(port)
    sent = writes = 0
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF)
    while (now := time.perf_counter()) - start < seconds:
        ahead_s = start + sent / rate - now
        if ahead_s > 0:
            time.sleep(ahead_s)
        sock.sendall(writes_out[writes % len(writes_out)])
        sent += QOS0_WRITE
        writes += 1
    line = _line("qos0", sent, writes, 0, time.perf_counter() - start, before)
    sock.close()
    return line


def run_qos1(port: int, rate: float, seconds: float, window: int, *, refill: int) -> Line:
    packets = _packets(1)
    sock = _connect(port)
    sent = writes = reads = 0
    in_flight = freed = partial = 0

    def send(count: int) -> None:
        nonlocal sent, writes, in_flight
        first = sent % TOPICS
        chunk = packets[first:first + count]
        if len(chunk) < count:
            chunk += packets[:count - len(chunk)]
        sock.sendall(b"".join(chunk))
        sent += count
        writes += 1
        in_flight += count

    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF)
    send(window)
    while time.perf_counter() - start < seconds:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("the broker closed the connection")
        reads += 1
        partial += len(data)
        acked, partial = divmod(partial, PUBACK_BYTES)
        in_flight -= acked
        freed += acked
        if freed >= refill or (freed and in_flight == 0):
            ahead_s = start + sent / rate - time.perf_counter()
            if ahead_s > 0:
                time.sleep(ahead_s)
            send(freed)
            freed = 0
    mode = "qos1_each" if refill == 1 else "qos1_half"
    line = _line(mode, sent, writes, reads, time.perf_counter() - start, before)
    sock.close()
    return line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=20000.0, help="messages/s (default 20000)")
    parser.add_argument("--seconds", type=float, default=8.0, help="each measurement (default 8)")
    parser.add_argument("--rounds", type=int, default=2, help="the three modes, interleaved, this often (default 2)")
    parser.add_argument("--receive-maximum", type=int, default=20, help="Mosquitto max_inflight_messages (default 20)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    lines: list[Line] = []
    with tempfile.TemporaryDirectory(prefix="cellgate-floor-") as workdir:
        broker = Broker(Path(workdir), max_inflight_messages=args.receive_maximum)
        broker.start()
        subscriber = subprocess.Popen(["mosquitto_sub", "-h", HOST, "-p", str(broker.port), "-t", "floor/#", "-q", "0"],
                                      stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            window = args.receive_maximum
            for _ in range(args.rounds):
                for line in (run_qos0(broker.port, args.rate, args.seconds),
                             run_qos1(broker.port, args.rate, args.seconds, window, refill=1),
                             run_qos1(broker.port, args.rate, args.seconds, window, refill=max(1, window // 2))):
                    lines.append(line)
                    print(f"{line.mode:9s} {line.msg_per_s:>9,.0f} msg/s  {line.us_per_msg:5.2f} us/msg "
                          f"(user {line.user_us_per_msg:.2f}, system {line.system_us_per_msg:.2f})  "
                          f"writes/msg {line.writes_per_msg:.3f} reads/msg {line.reads_per_msg:.3f}", flush=True)
        finally:
            subscriber.terminate()
            subscriber.wait(5)
            broker.stop()
    # Only runs that kept the rate: a half-window refill can stall on a broker that delays small writes (Nagle, a
    # stock Mosquitto's default): its PUBACKs after the first wait for our ACK, which waits for our next write, which
    # waits for half the window (the gateway therefore holds freed slots for at most 1 ms).
    kept = [line for line in lines if line.msg_per_s >= 0.95 * args.rate]
    qos0_costs = [line.us_per_msg for line in kept if line.mode == "qos0"]
    qos1_costs = [line.us_per_msg for line in kept if line.mode != "qos0"]
    extra: float | None = None
    if qos0_costs and qos1_costs:
        qos0, qos1 = min(qos0_costs), min(qos1_costs)
        extra = round(qos1 - qos0, 2)
        print(f"floor: QoS 1 through Receive Maximum {args.receive_maximum} costs at least {extra:.2f} us/msg more "
              f"than QoS 0 at {args.rate:,.0f} msg/s ({qos1:.2f} against {qos0:.2f}, the best of each)")
    else:
        print("floor: no QoS 0 or no QoS 1 run kept 95 % of the rate (a busy machine?): run it again")
    result = {"rate": args.rate, "receive_maximum": args.receive_maximum, "lines": [asdict(line) for line in lines],
              "qos1_extra_us_per_msg": extra}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
