"""Servers that let a client connect and then drop it at once: a PLC at its connection limit.

* ``accept_and_close_server()``: a raw TCP server on a free loopback port that accepts every connection and
  closes it straight away (the client sees connect, then EOF). Counts the connections.
* ``session_then_close_proxy(upstream_port, after_messages=2)``: a TCP proxy in front of a real OPC UA server
  that closes each connection once it has passed ``after_messages`` complete service responses (``MSG`` final
  chunks) to the client. With 2 that is right after CreateSession and ActivateSession: the client's
  ``connect()`` succeeds, its next request finds the connection closed.

* ``throttled_proxy(upstream_port, bytes_per_s)``: a TCP proxy that passes the client's bytes upstream at no more
  than ``bytes_per_s`` (the answers flow freely): a slow link to a broker, so a gateway offers more than its sink
  can carry. It reads from the client only as fast as it forwards, so TCP flow control reaches the client.

* ``stalling_proxy(upstream_port, after_messages, stall_s)``: a TCP proxy in front of a real OPC UA server that,
  on each connection, holds the server's answers for ``stall_s`` once ``after_messages`` service responses have
  passed, then passes everything on: a server (or a link) that is busy for a while, not gone.

All count connections, so a test can bound the attempts a client made.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

# OPC UA Connection Protocol (Part 6, 7.1.2): every chunk starts with MessageType (3 bytes), chunk type (1 byte:
# F final, C intermediate, A abort) and the chunk's whole size including this header (UInt32, little-endian).
_UA_HEADER_SIZE = 8


@dataclass
class ConnectionCounter:
    """The port clients connect to, and how many connections it has accepted so far."""

    port: int = 0
    connections: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


@contextlib.asynccontextmanager
async def accept_and_close_server() -> AsyncIterator[ConnectionCounter]:
    counter = ConnectionCounter()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counter.connections += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    counter.port = server.sockets[0].getsockname()[1]
    try:
        yield counter
    finally:
        server.close()
        await server.wait_closed()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


async def _pass_responses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, after_messages: int) -> None:
    """Copy whole chunks from the server to the client; return after the ``after_messages``-th service response."""
    passed = 0
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while passed < after_messages:
            header = await reader.readexactly(_UA_HEADER_SIZE)
            size = int.from_bytes(header[4:8], "little")
            body = await reader.readexactly(size - _UA_HEADER_SIZE)
            writer.write(header + body)
            await writer.drain()
            if header[:4] == b"MSGF":
                passed += 1


_Reader: TypeAlias = asyncio.StreamReader
_Writer: TypeAlias = asyncio.StreamWriter
Pipe: TypeAlias = Callable[[_Reader, _Writer, _Reader, _Writer], Awaitable[None]]
"""What a proxy does with one connection: (client reader, client writer, server reader, server writer)."""


@contextlib.asynccontextmanager
async def _proxy(upstream_port: int, pipe: Pipe) -> AsyncIterator[ConnectionCounter]:
    """A TCP proxy on a free loopback port to ``upstream_port``; each connection runs ``pipe``, then both ends
    close. Counts the connections."""
    counter = ConnectionCounter()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        counter.connections += 1
        task = asyncio.current_task()
        assert task is not None
        counter.tasks.add(task)
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        except OSError:
            client_writer.close()
            counter.tasks.discard(task)
            return
        try:
            await pipe(client_reader, client_writer, server_reader, server_writer)
        finally:
            client_writer.close()
            server_writer.close()
            counter.tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    counter.port = server.sockets[0].getsockname()[1]
    try:
        yield counter
    finally:
        server.close()
        for task in list(counter.tasks):
            task.cancel()
        await asyncio.gather(*counter.tasks, return_exceptions=True)
        await server.wait_closed()


async def _while_copying(copy: Awaitable[None], main: Awaitable[None]) -> None:
    """Run ``main`` while ``copy`` (the other direction) runs beside it; stop the copy when ``main`` ends."""
    other = asyncio.ensure_future(copy)
    try:
        await main
    finally:
        other.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await other


def session_then_close_proxy(
    upstream_port: int, *, after_messages: int = 2
) -> contextlib.AbstractAsyncContextManager[ConnectionCounter]:
    async def pipe(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                   server_reader: asyncio.StreamReader, server_writer: asyncio.StreamWriter) -> None:
        await _while_copying(_copy(client_reader, server_writer),
                             _pass_responses(server_reader, client_writer, after_messages))

    return _proxy(upstream_port, pipe)


async def _copy_throttled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bytes_per_s: float) -> None:
    tick_s = 0.01
    started = time.monotonic()
    passed = 0
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(max(1, int(bytes_per_s * tick_s))):
            writer.write(data)
            await writer.drain()
            passed += len(data)
            ahead_s = started + passed / bytes_per_s - time.monotonic()
            if ahead_s > 0:
                await asyncio.sleep(ahead_s)
            elif ahead_s < -1.0:  # idle for a while: no burst to catch up
                started, passed = time.monotonic(), 0


def throttled_proxy(
    upstream_port: int, *, bytes_per_s: float
) -> contextlib.AbstractAsyncContextManager[ConnectionCounter]:
    async def pipe(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                   server_reader: asyncio.StreamReader, server_writer: asyncio.StreamWriter) -> None:
        await _while_copying(_copy(server_reader, client_writer),
                             _copy_throttled(client_reader, server_writer, bytes_per_s))

    return _proxy(upstream_port, pipe)


async def _pass_responses_stalling(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, after_messages: int, stall_s: float
) -> None:
    """Copy whole chunks from the server to the client; wait ``stall_s`` once, after the ``after_messages``-th
    service response, then copy on until either side closes."""
    passed = 0
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            header = await reader.readexactly(_UA_HEADER_SIZE)
            size = int.from_bytes(header[4:8], "little")
            body = await reader.readexactly(size - _UA_HEADER_SIZE)
            writer.write(header + body)
            await writer.drain()
            if header[:4] == b"MSGF":
                passed += 1
                if passed == after_messages:
                    await asyncio.sleep(stall_s)


def stalling_proxy(
    upstream_port: int, *, after_messages: int, stall_s: float
) -> contextlib.AbstractAsyncContextManager[ConnectionCounter]:
    async def pipe(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                   server_reader: asyncio.StreamReader, server_writer: asyncio.StreamWriter) -> None:
        await _while_copying(_copy(client_reader, server_writer),
                             _pass_responses_stalling(server_reader, client_writer, after_messages, stall_s))

    return _proxy(upstream_port, pipe)
