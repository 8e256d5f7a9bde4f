"""CPU per value of the OPC UA subscription paths, each against the same bench server (benchmarks/servers.py).

Paths:

* ``fast``: ``OpcUaSource`` with its own publish loop and ``opcua_publish.decode_data_changes`` (the default).
* ``handler``: ``OpcUaSource`` with ``fast_publish=False``: asyncua's public callback API
  (``datachange_notification``, one asyncua task per notification), the source's fallback.
* ``iterator``: asyncua's public iterator mode (``create_subscription(handler=None)``, ``async for event in
  subscription``), each event converted with ``readings_from_data_value`` as the source would.

Every path ends in ``RawReading``s counted by a no-op ``emit``, so the figures compare what the client side pays
per value from the socket to a reading. The server runs in its own process and is started once; the paths run
interleaved (``--rounds`` times each, in turn) so a busy machine slows all of them alike. Prints one JSON line
per run and a summary (median per path).

Run: ``.venv/bin/python benchmarks/opcua_paths.py [--variables 10000] [--rate-hz 1] [--seconds 10] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client

from gateway.sources.base import RawReading
from gateway.sources.opcua import OpcUaSource
from gateway.sources.opcua_status import OpcUaDeviceOptions, OpcUaTagRef, readings_from_data_value
from gateway.vocabulary import OpcUaMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from servers import OPCUA_NAMESPACE  # noqa: E402

PATHS = ("fast", "handler", "iterator")
TIMEOUT_MS = 30_000


def tag_names(variables: int, per_object: int) -> list[str]:
    return [
        f"B{first // per_object:03d}.V{index:03d}"
        for first in range(0, variables, per_object)
        for index in range(min(per_object, variables - first))
    ]


class Counter:
    def __init__(self) -> None:
        self.values = 0

    def add(self, readings: Sequence[RawReading]) -> None:
        self.values += len(readings)


async def run_source(endpoint: str, names: Sequence[str], *, fast: bool, counter: Counter) -> None:
    options = OpcUaDeviceOptions(endpoint=endpoint, namespace_uri=OPCUA_NAMESPACE, mode=OpcUaMode.SUBSCRIBE,
                                 interval_ms=1000, timeout_ms=TIMEOUT_MS)  # fmt: skip
    tags = [OpcUaTagRef(name=name, kind="s", identifier=name) for name in names]
    # Only the fallback is asked for by name, so ``--paths fast`` also runs a tree whose source has no such switch
    # (an A/B against an older commit: PYTHONPATH=<its tree>).
    switch: dict[str, bool] = {} if fast else {"fast_publish": False}
    source = OpcUaSource(device="bench", options=options, tags=tags, **switch)

    async def emit(readings: Sequence[RawReading]) -> None:
        counter.add(readings)

    await source.run(emit, lambda _up, _reason: None)


async def run_iterator(endpoint: str, names: Sequence[str], *, counter: Counter) -> None:
    client = Client(endpoint, timeout=TIMEOUT_MS / 1000, watchdog_intervall=5.0)  # as OpcUaSource probes
    await client.connect()
    try:
        namespace = await client.get_namespace_index(OPCUA_NAMESPACE)
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = 1000
        params.RequestedMaxKeepAliveCount = 5
        params.RequestedLifetimeCount = 60
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        subscription = await client.create_subscription(params, None, queue_maxsize=2 * len(names))
        tags_by_handle: dict[int, tuple[str, ...]] = {}
        requests = []
        for handle, name in enumerate(names, start=1):
            tags_by_handle[handle] = (name,)
            parameters = ua.MonitoringParameters()
            parameters.ClientHandle = ua.UInt32(handle)
            parameters.SamplingInterval = ua.Double(1000)
            parameters.QueueSize = ua.UInt32(1)
            parameters.DiscardOldest = True
            item = ua.ReadValueId()
            item.NodeId = ua.NodeId(ua.String(name), ua.Int16(namespace))
            item.AttributeId = ua.UInt32(ua.AttributeIds.Value)
            request = ua.MonitoredItemCreateRequest()
            request.ItemToMonitor = item
            request.MonitoringMode = ua.MonitoringMode.Reporting
            request.RequestedParameters = parameters
            requests.append(request)
        for start in range(0, len(requests), 1000):
            await subscription.create_monitored_items(requests[start : start + 1000])
        async for event in subscription:
            data = getattr(event, "data", None)
            if data is None:
                continue
            item = data.monitored_item
            counter.add(readings_from_data_value(tags_by_handle[item.ClientHandle], item.Value,
                                                 received_at=time.time()))  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()


async def measure(
    path: str, endpoint: str, names: Sequence[str], *, seconds: float, rate_hz: float
) -> dict[str, object]:
    counter = Counter()
    runner: Awaitable[None]
    if path == "iterator":
        runner = run_iterator(endpoint, names, counter=counter)
    else:
        runner = run_source(endpoint, names, fast=path == "fast", counter=counter)
    task = asyncio.ensure_future(runner)
    try:
        deadline = time.monotonic() + 120
        while counter.values < len(names):  # the initial values of every item: subscribed
            if task.done():
                task.result()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{path}: only {counter.values} initial values")
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0 / rate_hz)  # past the initial burst, into the steady state
        cpu0, values0, wall0 = time.process_time(), counter.values, time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, values1, wall1 = time.process_time(), counter.values, time.monotonic()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    values = values1 - values0
    return {
        "path": path,
        "values": values,
        "values_per_s": round(values / (wall1 - wall0)),
        "offered_per_s": round(len(names) * rate_hz),
        "cpu_s": round(cpu1 - cpu0, 3),
        "us_per_value": round((cpu1 - cpu0) * 1e6 / values, 2) if values else None,
    }


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, str(HERE / "servers.py"), "opcua", "--port", "0", "--variables", str(args.variables),
            "--per-object", str(args.per_object), "--rate-hz", str(args.rate_hz)]  # fmt: skip
    server = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert server.stdout is not None
    for line in server.stdout:
        if line.startswith("ready opcua="):
            return server, line.strip().removeprefix("ready opcua=")
    raise RuntimeError("bench server ended before it was ready")


async def main_async(args: argparse.Namespace, endpoint: str, out: Callable[[str], None]) -> None:
    names = tag_names(args.variables, args.per_object)
    results: dict[str, list[float]] = {path: [] for path in args.paths}
    for _round in range(args.rounds):
        for path in args.paths:
            try:
                row = await measure(path, endpoint, names, seconds=args.seconds, rate_hz=args.rate_hz)
            except Exception as exc:  # one failed run (a busy machine's timeout) must not end the others
                out(json.dumps({"path": path, "error": f"{type(exc).__name__}: {exc}"}))
                continue
            out(json.dumps(row))
            if isinstance(row["us_per_value"], float):
                results[path].append(row["us_per_value"])
    out(json.dumps({"summary": "median us_per_value", **{p: statistics.median(v) for p, v in results.items() if v}}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variables", type=int, default=10_000)
    parser.add_argument("--per-object", type=int, default=100)
    parser.add_argument("--rate-hz", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    args = parser.parse_args(argv)
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    server, endpoint = start_server(args)
    try:
        asyncio.run(main_async(args, endpoint, lambda line: print(line, flush=True)))
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
