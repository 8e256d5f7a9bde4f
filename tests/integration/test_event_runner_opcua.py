"""The event runner over OPC UA against the simulator's calender (asyncua server, sped up): config/demo.yaml's
calender events read each roll record with one Read call, acknowledge it with the Write service (UInt32), and the
calender's FIFO pops exactly those records, in order, none twice."""

from __future__ import annotations

import asyncio
import contextlib
import random

from gateway.assembly import event_link, planned_events
from gateway.events.core import EventRecord
from gateway.events.runner import EventRunner, EventStats
from gateway.sinks.base import Delivery
from gateway.tagmap import OpcUaDevice, load_plant
from simulators.machines.calender import Calender, CalenderConfig
from simulators.machines.packml import PackMLTiming
from simulators.servers.opcua_server import OpcUaSimulatorServer
from tests.support.gateway import DEMO_CONFIG

RECORDS = 2
# Ends of roll every ~10 min of model time and nothing else.
ROLLS = PackMLTiming(mean_s_between_holds=None, mean_s_between_suspends=None, mean_s_between_stops=None,
                     mean_s_between_aborts=None, mean_s_between_completes=600.0)


async def test_calender_roll_records_are_read_in_one_call_and_acknowledged_by_write() -> None:
    calender = Calender(rng=random.Random(3), config=CalenderConfig(packml=ROLLS))
    demo = load_plant(DEMO_CONFIG).device("calender-01")
    assert isinstance(demo, OpcUaDevice)
    received: list[EventRecord] = []

    async def publish(record: EventRecord) -> asyncio.Future[Delivery]:
        """Stands in for store-and-forward (the e2e test has the broker): delivered at once."""
        received.append(record)
        done: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        done.set_result(Delivery.ACKED)
        return done

    async with OpcUaSimulatorServer(machines={"Calender01": calender}, port=0, step_hz=10.0, speedup=2400.0) as server:
        device = demo.model_copy(update={"endpoint": server.endpoint, "interval_ms": 100})
        events = planned_events(device)
        stats = EventStats()
        runner = EventRunner(device=device.name, events=events, publish=publish, interval_s=0.1, stats=stats,
                             link=event_link(device, events, gateway_id="gw", pki_root=None))  # fmt: skip
        task = asyncio.create_task(runner.run())
        try:
            for _ in range(600):  # at most 60 s
                if calender.results.acknowledged >= RECORDS:
                    break
                await asyncio.sleep(0.1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert calender.results.acknowledged >= RECORDS
    ids = [record.record_id for record in received]
    assert ids[:RECORDS] == list(range(1, RECORDS + 1)), ids
    assert len(set(ids)) == len(ids), "no record read twice within one connection"
    first = received[0]
    assert first.event == "roll" and first.quality.value == "good"
    assert str(first.fields["input_roll_id"]).startswith("CT01-R") and str(first.fields["roll_id"]).startswith("CL01-R")
    assert stats.writes.get("ok", 0) >= RECORDS and set(stats.writes) == {"ok"}
    assert stats.records == {"roll": len(received)}
