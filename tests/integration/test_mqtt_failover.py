"""Broker URL list: after failed attempts on the first broker the sink moves on to the next one."""

from __future__ import annotations

import asyncio

from gateway.mqtt.connection import MqttSink
from tests.support.mosquitto import Mosquitto, Subscriber, free_port
from tests.support.sink import sink_options


async def test_a_dead_primary_fails_over_to_the_next_broker_and_back_round_robin(prefix: str) -> None:
    dead_port = free_port()
    with Mosquitto() as backup:
        options = sink_options(
            backup, prefix, port=dead_port, failover=((backup.host, backup.port),), failover_after=2
        )
        with Subscriber(backup.host, backup.port, f"{prefix}/#") as subscriber:
            async with MqttSink(options) as sink:
                await sink.wait_connected(15)  # two refused attempts on the dead port, then the backup
                await sink.publish(f"{prefix}/data/t", b"via-backup")
                await asyncio.wait_for(sink.flush(5), 6)
                assert sink.delivered == 1
                await asyncio.to_thread(
                    subscriber.wait_for_blocking, lambda ms: any(m.payload == b"via-backup" for m in ms), 5.0
                )

                # The backup dies too and the primary comes up: the list is walked round robin.
                primary = Mosquitto(port=dead_port)
                backup.stop()
                primary.start()
                try:
                    with Subscriber(primary.host, primary.port, f"{prefix}/#") as on_primary:
                        loop = asyncio.get_running_loop()
                        deadline = loop.time() + 20
                        while not sink.connected:
                            assert loop.time() < deadline, "no failover back to the primary"
                            await asyncio.sleep(0.1)
                        await sink.publish(f"{prefix}/data/t", b"via-primary")
                        await asyncio.wait_for(sink.flush(5), 6)
                        await asyncio.to_thread(
                            on_primary.wait_for_blocking,
                            lambda ms: any(m.payload == b"via-primary" for m in ms),
                            5.0,
                        )
                finally:
                    primary.close()
