"""A scripted MQTT broker for tests of our MQTT client: real sockets on 127.0.0.1, a free port.

It answers CONNECT with ``connack`` -- a ``Connack`` (encoded for the CONNECT's version), exact bytes
(``bytes``: what a broker of another version or a broken one would send), or ``SILENT`` (never answers)
-- and each QoS1 PUBLISH as ``ack`` says (it can be replaced any time); held PUBACKs go out on
``release_held``. ``close_after_connack`` hangs up right after the CONNACK, ``close_at_accept`` right
after accepting the TCP connection (a server at its connection limit). It records every packet it
receives per connection and the time of every accepted connection. ``max_outstanding`` is the most QoS1
messages it ever had unacknowledged on one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from gateway.mqtt.connection import MqttSink
from gateway.mqtt.options import MqttOptions
from gateway.mqtt.wire import (
    PINGRESP_BYTES,
    Connack,
    Connect,
    Decoder,
    Packet,
    PingReq,
    ProtocolVersion,
    Puback,
    Publish,
    encode,
)

ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'
AckPolicy = Callable[[Publish], "int | Puback | None"]
"""Reason code to PUBACK with (or a whole Puback, e.g. with a Reason String), or None to hold the PUBACK."""
SILENT = Connack(reason_code=0xFF)  # marker: never answer CONNECT


def ack_all(publish: Publish) -> int | Puback | None:
    return 0


class ScriptedBroker:
    """See the module docstring."""

    def __init__(
        self,
        *,
        connack: Connack | bytes | None = None,
        ack: AckPolicy = ack_all,
        answer_pings: bool = True,
        close_after_connack: bool = False,
        close_at_accept: bool = False,
    ) -> None:
        self.connack: Connack | bytes = connack if connack is not None else Connack()
        self.ack = ack
        self.answer_pings = answer_pings
        self.close_after_connack = close_after_connack
        self.close_at_accept = close_at_accept
        self.connections: list[list[Packet]] = []
        self.accepted_at: list[float] = []  # time.monotonic() of each accepted TCP connection
        self.max_outstanding = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._held: list[tuple[asyncio.StreamWriter, ProtocolVersion, Publish]] = []
        self._outstanding: dict[asyncio.StreamWriter, int] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> ScriptedBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop_connections()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted_at.append(time.monotonic())
        packets: list[Packet] = []
        self.connections.append(packets)
        if self.close_at_accept:
            writer.close()
            return
        self._writers.append(writer)
        decoder = Decoder(ProtocolVersion.V5)
        self._outstanding[writer] = 0
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for packet in decoder.feed(data):
                    packets.append(packet)
                    version = decoder.version
                    if isinstance(packet, Connect):
                        if isinstance(self.connack, bytes):
                            writer.write(self.connack)
                        elif self.connack is not SILENT:
                            writer.write(encode(self.connack, version))
                        if self.close_after_connack:
                            await writer.drain()
                            writer.close()
                            return
                    elif isinstance(packet, Publish) and packet.qos:
                        self._outstanding[writer] += 1
                        self.max_outstanding = max(self.max_outstanding, self._outstanding[writer])
                        answer = self.ack(packet)
                        if answer is None:
                            self._held.append((writer, version, packet))
                        else:
                            self._outstanding[writer] -= 1
                            puback = answer if isinstance(answer, Puback) else Puback(packet.packet_id or 0, answer)
                            writer.write(encode(puback, version))
                    elif isinstance(packet, PingReq) and self.answer_pings:
                        writer.write(PINGRESP_BYTES)
        writer.close()

    def release_held(self, count: int | None = None) -> None:
        """PUBACK the held messages, oldest first: all of them, or the first ``count``, in one write each."""
        cut = len(self._held) if count is None else count
        held, self._held = self._held[:cut], self._held[cut:]
        for writer, version, packet in held:
            if not writer.is_closing():
                self._outstanding[writer] -= 1
                writer.write(encode(Puback(packet.packet_id or 0), version))

    def send_and_close(self, data: bytes) -> None:
        """Write ``data`` (e.g. a DISCONNECT) to every open connection, then close them gracefully."""
        for writer in self._writers:
            if not writer.is_closing():
                writer.write(data)
                writer.close()
        self._writers.clear()
        self._held.clear()

    def drop_connections(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        self._held.clear()

    def publishes(self, connection: int = -1) -> list[Publish]:
        return [p for p in self.connections[connection] if isinstance(p, Publish)]


def options(broker: ScriptedBroker, **overrides: Any) -> MqttOptions:
    """Fast reconnects and a short connect timeout, for tests."""
    base = MqttOptions(
        host="127.0.0.1",
        port=broker.port,
        client_id="cg-edge",
        will_topic="edge/_gateway/status",
        will_payload=OFFLINE,
        online_payload=ONLINE,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        connect_timeout_s=1.0,
    )
    return dataclasses.replace(base, **overrides)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(broker: ScriptedBroker, **overrides: Any) -> AsyncIterator[MqttSink]:
    async with MqttSink(options(broker, **overrides)) as sink:
        await sink.wait_connected(5)
        yield sink


def data(n: int) -> tuple[str, bytes]:
    return f"edge/data/t{n}", b"%d" % n
