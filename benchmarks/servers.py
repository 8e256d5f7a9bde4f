"""Benchmark equipment: fast Modbus TCP servers whose registers change on every read, and a big OPC UA server.

    python benchmarks/servers.py modbus --ports 0 [0 ...] [--impl raw|pymodbus]
    python benchmarks/servers.py opcua --port 0 --variables 20000 [--per-object 100] [--rate-hz 1]

Prints ``ready modbus=127.0.0.1:PORT[,PORT...]`` or ``ready opcua=opc.tcp://127.0.0.1:PORT/`` once listening,
and ``stats key=value ...`` on SIGTERM/SIGINT before exiting 0.

Modbus: every holding/input register at address ``a`` reads ``(7 * k + a) & 0x3FFF`` where ``k`` counts the
requests this server has answered, so every poll yields changed values and report-by-exception hides nothing.
The 0x3FFF mask keeps any two registers read as float32 finite (the exponent never reaches all-ones), so no
value turns into a NaN with quality bad. Coils and discrete inputs alternate on every read. Any address is
served; any unit id is answered.

``--impl raw`` (default) is a small asyncio responder. ``--impl pymodbus`` is pymodbus' own ModbusTcpServer
(SimDevice with an ``action`` that rewrites the registers on every read), for comparing. Measured on the shared
2-core dev box, 125-register reads back to back: raw ~80 us of server CPU per request, pymodbus ~180 us (the
pymodbus client was the limit at 3,000-4,500 requests/s either way). The harness reports server CPU separately.

OPC UA: ``--variables`` Double variables ``s=B{object:03d}.V{index:03d}`` in namespace ``urn:cellgate:bench``,
at most ``--per-object`` under one object (asyncua slows down badly past ~100-200 children of one parent).
Every variable gets a new value ``--rate-hz`` times a second, stamped with source and server timestamp = the
time of its own write; after each pass it prints ``pass writes=N ended=<epoch s>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import struct
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

OPCUA_NAMESPACE = "urn:cellgate:bench"
WRITES_BETWEEN_YIELDS = 500
REGISTER_MASK = 0x3FFF
MBAP_LENGTH = 7
MAX_REGISTERS = 125
MAX_BITS = 2000
EXCEPTION_ILLEGAL_FUNCTION = 1
EXCEPTION_ILLEGAL_VALUE = 3


def register_values(request_index: int, address: int, count: int) -> list[int]:
    """The registers ``address .. address+count-1`` as read by request number ``request_index``."""
    base = 7 * request_index
    return [(base + a) & REGISTER_MASK for a in range(address, address + count)]


# ------------------------------------------------------------------------------------------- raw modbus


class ModbusCounters:
    """Requests answered by one server process (all ports)."""

    __slots__ = ("errors", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0


class _ModbusResponder(asyncio.Protocol):
    """Modbus TCP: MBAP header (transaction, protocol 0, length, unit) + PDU. Reads only; others -> exception 1."""

    def __init__(self, counters: ModbusCounters) -> None:
        self._counters = counters
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data
        replies: list[bytes] = []
        offset = 0
        while len(buffer) - offset >= MBAP_LENGTH:
            transaction, _protocol, length, unit = struct.unpack_from(">HHHB", buffer, offset)
            end = offset + 6 + length
            if end > len(buffer):
                break
            pdu = buffer[offset + MBAP_LENGTH : end]
            offset = end
            replies.append(self._answer(transaction, unit, pdu))
        self._buffer = buffer[offset:]
        if replies and self._transport is not None:
            self._transport.write(b"".join(replies))

    def _answer(self, transaction: int, unit: int, pdu: bytes) -> bytes:
        counters = self._counters
        function = pdu[0] if pdu else 0
        if function in (1, 2, 3, 4) and len(pdu) >= 5:
            address, count = struct.unpack_from(">HH", pdu, 1)
            counters.requests += 1
            if function in (3, 4) and 1 <= count <= MAX_REGISTERS:
                values = register_values(counters.requests, address, count)
                return _frame(transaction, unit, struct.pack(f">BB{count}H", function, 2 * count, *values))
            if function in (1, 2) and 1 <= count <= MAX_BITS:
                # Alternate all bits on every read: 0x55 / 0xAA patterns.
                pattern = 0x55 if counters.requests % 2 else 0xAA
                size = (count + 7) // 8
                return _frame(transaction, unit, bytes((function, size)) + bytes([pattern]) * size)
            code = EXCEPTION_ILLEGAL_VALUE
        else:
            code = EXCEPTION_ILLEGAL_FUNCTION
        counters.errors += 1
        return _frame(transaction, unit, bytes((function | 0x80, code)))


def _frame(transaction: int, unit: int, pdu: bytes) -> bytes:
    """MBAP header (length counts the unit id and the PDU) + PDU."""
    return struct.pack(">HHHB", transaction, 0, len(pdu) + 1, unit) + pdu


async def _serve_raw_modbus(ports: Sequence[int], counters: ModbusCounters) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    servers = []
    for port in ports:
        server = await loop.create_server(lambda: _ModbusResponder(counters), "127.0.0.1", port)
        servers.append(server)
    return servers


async def _serve_pymodbus(ports: Sequence[int], counters: ModbusCounters) -> list[Any]:
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    async def action(
        function_code: int, start_address: int, address: int, count: int, registers: list[int], set_values: Any
    ) -> None:
        counters.requests += 1
        if function_code in (3, 4):
            first = address - start_address
            registers[first : first + count] = register_values(counters.requests, address, count)

    def device() -> Any:
        # pymodbus serves only what is configured: all 65535 registers, the first 4096 coils and inputs.
        return SimDevice(
            id=1,
            simdata=(
                [SimData(0, count=4096, values=False, datatype=DataType.BITS)],
                [SimData(0, count=4096, values=False, datatype=DataType.BITS)],
                [SimData(0, count=65535, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=65535, values=0, datatype=DataType.REGISTERS)],
            ),
            action=action,
        )

    servers = []
    for port in ports:
        server = ModbusTcpServer([device()], address=("127.0.0.1", port))
        await server.serve_forever(background=True)
        servers.append(server)
    return servers


def _bound_port(server: Any) -> int:
    if isinstance(server, asyncio.Server):
        return int(server.sockets[0].getsockname()[1])
    # pymodbus keeps the asyncio server of its transport in ``transport``.
    return int(server.transport.sockets[0].getsockname()[1])


async def run_modbus(args: argparse.Namespace, stop: asyncio.Event) -> str:
    counters = ModbusCounters()
    servers: list[Any]
    if args.impl == "pymodbus":
        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        servers = await _serve_pymodbus(args.ports, counters)
    else:
        servers = await _serve_raw_modbus(args.ports, counters)
    ports = ",".join(f"127.0.0.1:{_bound_port(s)}" for s in servers)
    print(f"ready modbus={ports}", flush=True)
    await stop.wait()
    for server in servers:
        if isinstance(server, asyncio.Server):
            server.close()
        else:
            await server.shutdown()
    return f"stats impl={args.impl} requests={counters.requests} errors={counters.errors}"


# ------------------------------------------------------------------------------------------------ opcua


def _lighten_asyncua_data_changes() -> None:
    """Take two costs out of asyncua's server-side data-change path that this bench server does not need.

    Profiled at 20,000 writes a second they were most of the server's CPU, and kept it from updating 20,000
    variables a second at all (so the gateway was measured against a lower rate than offered):

    * ``MonitoredItemValues.set_current_datavalue`` deep-copies every written DataValue "to prevent referencing
      the inner value" (61 % of the CPU). This server writes a fresh DataValue each time and never changes one
      afterwards, so the copy protects nothing here.
    * ``MonitoredItemService.datachange_callback`` builds ``ua.MonitoredItemNotification()`` with its default
      DataValue and Variant (type guessing included) before overwriting both (40 % after the first fix). The
      replacement below is asyncua 2.1's method with the notification built from its final fields.

    Bench equipment only: the gateway never runs this, and the protocol on the wire is unchanged.
    """
    from asyncua import ua
    from asyncua.server.monitored_item_service import MonitoredItemService, MonitoredItemValues

    def keep_current(self: MonitoredItemValues, cur_val: ua.DataValue) -> None:
        self.old_dvalue = self.current_dvalue
        self.current_dvalue = cur_val

    async def datachange_callback(
        self: MonitoredItemService, handle: int, value: ua.DataValue, error: ua.StatusCode | None = None
    ) -> None:
        if error:
            await self.trigger_statuschange(error)
            return
        mid = self._monitored_datachange[handle]
        mdata = self._monitored_items[mid]
        if mdata.mode == ua.MonitoringMode.Disabled:
            return
        mdata.mvalue.set_current_datavalue(value)
        if mdata.filter:
            passed = self._is_data_changed(mdata.mvalue, mdata.filter.Trigger) and self._is_deadband_exceeded(
                mdata.mvalue, mdata.filter
            )
        else:
            passed = self._is_data_changed(mdata.mvalue, ua.DataChangeTrigger.StatusValue)
        if passed:
            event = ua.MonitoredItemNotification(ClientHandle=mdata.client_handle, Value=value)
            await self.isub.enqueue_datachange_event(mid, event, mdata.queue_size)

    MonitoredItemValues.set_current_datavalue = keep_current  # type: ignore[method-assign]
    MonitoredItemService.datachange_callback = datachange_callback  # type: ignore[method-assign]


async def run_opcua(args: argparse.Namespace, stop: asyncio.Event) -> str:
    from asyncua import ua
    from asyncua.server.server import Server

    logging.getLogger("asyncua").setLevel(logging.ERROR)
    _lighten_asyncua_data_changes()
    port = args.port
    if port == 0:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
    endpoint = f"opc.tcp://127.0.0.1:{port}/"
    server = Server()
    await server.init()
    server.set_endpoint(endpoint)
    if args.security is None:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    else:
        # What the gateway's `policy: auto` picks: the strongest policy, every message signed and encrypted.
        from cryptography.hazmat.primitives import serialization

        from simulators.servers.opcua_server import APPLICATION_URI, ServerSecurity

        cert, key = ServerSecurity(pki_dir=Path(args.security)).load_or_create()
        await server.set_application_uri(APPLICATION_URI)  # the URI in the certificate's SubjectAltName
        await server.load_certificate(cert.public_bytes(serialization.Encoding.DER))
        await server.load_private_key(
            key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
        )  # fmt: skip
        server.set_security_policy([ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt])
    idx = await server.register_namespace(OPCUA_NAMESPACE)
    node_ids: list[Any] = []
    for first in range(0, args.variables, args.per_object):
        name = f"B{first // args.per_object:03d}"
        parent = await server.nodes.objects.add_object(ua.NodeId(ua.String(name), ua.Int16(idx)), name)
        for index in range(min(args.per_object, args.variables - first)):
            node_id = ua.NodeId(ua.String(f"{name}.V{index:03d}"), ua.Int16(idx))
            await parent.add_variable(node_id, f"V{index:03d}", 0.0, varianttype=ua.VariantType.Double)
            node_ids.append(node_id)
    period_s = 1.0 / args.rate_hz
    ticks = overruns = 0
    longest_pass_s = 0.0
    async with server:
        print(f"ready opcua={endpoint}", flush=True)
        deadline = time.monotonic()
        while not stop.is_set():
            ticks += 1
            started = time.monotonic()
            for position, node_id in enumerate(node_ids):
                now = cast(ua.DateTime, datetime.now(UTC))
                value = ua.Variant(float(ticks * 1000 + position % 1000), ua.VariantType.Double)
                await server.write_attribute_value(
                    node_id, ua.DataValue(value, SourceTimestamp=now, ServerTimestamp=now)
                )
                if position % WRITES_BETWEEN_YIELDS == WRITES_BETWEEN_YIELDS - 1:
                    await asyncio.sleep(0)  # let the publish loop and the socket run during a long pass
            longest_pass_s = max(longest_pass_s, time.monotonic() - started)
            # One line per pass: the harness counts what was really written in its window (a busy machine can
            # slow this server below --rate-hz, and that must not be blamed on the gateway).
            print(f"pass writes={len(node_ids)} ended={time.time():.3f}", flush=True)
            deadline += period_s
            delay = deadline - time.monotonic()
            if delay < 0:
                overruns += 1  # a pass took longer than the period: the rate is lower than asked, say so
                deadline = time.monotonic()
                delay = 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    return (
        f"stats variables={len(node_ids)} passes={ticks} overruns={overruns} "
        f"longest_pass_ms={longest_pass_s * 1000:.0f}"
    )


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = parser.add_subparsers(dest="kind", required=True)
    modbus = kinds.add_parser("modbus", help="Modbus TCP servers (one per port, one process)")
    modbus.add_argument("--ports", type=int, nargs="+", default=[0], help="ports to listen on (0 = any free)")
    modbus.add_argument("--impl", choices=("raw", "pymodbus"), default="raw")
    opcua = kinds.add_parser("opcua", help="an asyncua server with many changing variables")
    opcua.add_argument("--port", type=int, default=0)
    opcua.add_argument("--variables", type=int, default=20000)
    opcua.add_argument("--per-object", type=int, default=100)
    opcua.add_argument("--rate-hz", type=float, default=1.0)
    opcua.add_argument("--security", metavar="PKI_DIR", default=None,
                       help="serve Aes256_Sha256_RsaPss/SignAndEncrypt only; certificate in PKI_DIR/own/cert.der")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> str:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.kind == "modbus":
        return await run_modbus(args, stop)
    return await run_opcua(args, stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(asyncio.run(_main(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
