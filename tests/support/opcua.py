"""A small real asyncua server for tests: free 127.0.0.1 port, namespace ``urn:cellgate:test``, a few variables.

* Variables (string NodeIds in the test namespace, under object ``Cell``): ``Temperature`` (Double),
  ``Count`` (Int32), ``Running`` (Boolean), ``Recipe`` (String) and ``Sensor`` (Double, StatusCode
  BadSensorFailure).
* ``write(name, value, ts=...)`` sets a value with explicit Source/Server timestamps (and optional status).
* ``restart(decoy_first=True)`` stops the server and starts a new one on the same port that registers
  ``urn:cellgate:decoy`` FIRST, so the test namespace moves from index 2 to 3. The decoy namespace has the
  same string NodeIds with decoy values: a client that keeps the old index reads the decoys.
* ``publishing_muted()`` (a context manager): this server's subscriptions send nothing, not even keep-alives,
  while every other service still answers: a PLC whose publish engine hung.
* ``max_nodes_per_read`` is advertised in ServerCapabilities/OperationLimits/MaxNodesPerRead;
  ``enforce_max_nodes_per_read`` makes the server answer larger Reads with BadTooManyOperations, as PLCs do
  (asyncua itself does not enforce it). ``read_sizes`` records the size of every client Read.

``Server.init()`` takes about a second: share one server per module where tests allow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.server.internal_subscription import InternalSubscription
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import BadTooManyOperations

TEST_NAMESPACE = "urn:cellgate:test"
DECOY_NAMESPACE = "urn:cellgate:decoy"
DECOY_VALUES: dict[str, Any] = {
    "Temperature": -999.0,
    "Count": -999,
    "Running": False,
    "Recipe": "DECOY",
    "Sensor": -999.0,
}


@dataclass(frozen=True, slots=True)
class ServedVariable:
    name: str
    initial: Any
    variant_type: ua.VariantType
    status: int | None = None  # a Bad/Uncertain StatusCode value to serve instead of Good


TEST_VARIABLES: tuple[ServedVariable, ...] = (
    ServedVariable("Temperature", 21.5, ua.VariantType.Double),
    ServedVariable("Count", 7, ua.VariantType.Int32),
    ServedVariable("Running", True, ua.VariantType.Boolean),
    ServedVariable("Recipe", "NMC811", ua.VariantType.String),
    ServedVariable("Sensor", 0.0, ua.VariantType.Double, status=StatusCodes.BadSensorFailure),
)

# A fixed source time, so tests can tell the source timestamp from the receive time.
INITIAL_SOURCE_TS = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def ua_time(moment: datetime) -> ua.DateTime:
    # asyncua annotates timestamps with its DateTime subclass; any aware datetime works at runtime
    return cast(ua.DateTime, moment)


def ua_status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OpcUaTestServer:
    """Owns one asyncua Server at a time on a fixed port; see the module docstring."""

    def __init__(
        self,
        *,
        port: int | None = None,
        max_nodes_per_read: int = 0,
        enforce_max_nodes_per_read: int | None = None,
    ) -> None:
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.max_nodes_per_read = max_nodes_per_read
        self.enforce_max_nodes_per_read = enforce_max_nodes_per_read
        self.read_sizes: list[int] = []
        self.namespace_index = 0
        self.decoy_index: int | None = None
        self._server: Server | None = None
        self._variables: dict[str, ServedVariable] = {v.name: v for v in TEST_VARIABLES}

    @property
    def endpoint(self) -> str:
        """The server's URL; once handed out (a client may hold it before start()), the port stays fixed."""
        self._fixed_port = True
        return self._endpoint()

    def _endpoint(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/cellgate/"

    def node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(ua.String(name), ua.Int16(self.namespace_index), ua.NodeIdType.String)

    async def start(self, *, decoy_first: bool = False) -> None:
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            server, index, decoy = await self._build(decoy_first=decoy_first)
            try:
                await server.start()
            except OSError as error:
                # Another process (a parallel test) bound the port after free_port() chose it: choose again.
                if error.errno != errno.EADDRINUSE or attempt + 1 == attempts:
                    raise
                self.port = free_port()
                continue
            self._server, self.namespace_index, self.decoy_index = server, index, decoy
            self._fixed_port = True  # restart() keeps the endpoint clients know
            return

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def restart(self, *, decoy_first: bool = True) -> None:
        """Build the new address space first (init takes ~1 s), then swap, so the outage is short."""
        server, index, decoy = await self._build(decoy_first=decoy_first)
        await self.stop()
        await server.start()
        self._server, self.namespace_index, self.decoy_index = server, index, decoy

    async def write(self, name: str, value: Any, *, ts: datetime | None = None, status: int | None = None) -> None:
        """Write a value with explicit source and server timestamps (a bare DataValue would have none)."""
        server = self._require_server()
        variable = self._variables[name]
        now = datetime.now(UTC)
        data_value = ua.DataValue(
            ua.Variant(value, variable.variant_type),
            StatusCode=ua_status(status if status is not None else StatusCodes.Good),
            SourceTimestamp=ua_time(ts or now),
            ServerTimestamp=ua_time(now),
        )
        await server.write_attribute_value(self.node_id(name), data_value)

    async def set_advertised_max_nodes_per_read(self, limit: int) -> None:
        server = self._require_server()
        self.max_nodes_per_read = limit
        await server.write_attribute_value(
            ua.NodeId(ua.Int32(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)),
            ua.DataValue(ua.Variant(limit, ua.VariantType.UInt32), SourceTimestamp=ua_time(datetime.now(UTC))),
        )

    @contextlib.contextmanager
    def publishing_muted(self) -> Iterator[None]:
        """While inside, this server's client subscriptions publish nothing (no data, no keep-alive); Read,
        CreateSubscription and the rest still answer. asyncua has no switch for this, so the subscription's
        ``publish_results`` is patched for the duration, for the subscriptions of THIS server only (another
        server may run in the same process): a muted subscription behaves as if it had nothing to send yet."""
        aspace = self._require_server().iserver.aspace
        original = InternalSubscription.publish_results

        async def muted(subscription: InternalSubscription, requestdata: Any = None) -> bool:
            ours = subscription.monitored_item_srv.aspace is aspace
            # pub_request_callback is None for the server's own internal subscriptions: leave those alone.
            if ours and subscription.pub_request_callback is not None:
                return False
            return await original(subscription, requestdata)

        InternalSubscription.publish_results = muted  # type: ignore[method-assign, assignment]
        try:
            yield
        finally:
            InternalSubscription.publish_results = original  # type: ignore[method-assign]

    def _require_server(self) -> Server:
        if self._server is None:
            raise RuntimeError("OPC UA test server is not running")
        return self._server

    async def _build(self, *, decoy_first: bool) -> tuple[Server, int, int | None]:
        server = Server()
        await server.init()
        server.set_endpoint(self._endpoint())
        server.set_server_name("cellgate test server")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        decoy_index: int | None = None
        if decoy_first:
            decoy_index = await server.register_namespace(DECOY_NAMESPACE)
        index = await server.register_namespace(TEST_NAMESPACE)
        await self._add_variables(server, index, values=None)
        if decoy_index is not None:
            await self._add_variables(server, decoy_index, values=DECOY_VALUES)
        await server.write_attribute_value(
            ua.NodeId(ua.Int32(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)),
            ua.DataValue(
                ua.Variant(self.max_nodes_per_read, ua.VariantType.UInt32), SourceTimestamp=ua_time(datetime.now(UTC))
            ),
        )
        server.subscribe_server_callback(CallbackType.PreRead, self._on_read)
        return server, index, decoy_index

    async def _add_variables(self, server: Server, index: int, *, values: dict[str, Any] | None) -> None:
        folder = await server.nodes.objects.add_object(
            ua.NodeId(ua.String("Cell"), ua.Int16(index), ua.NodeIdType.String), "Cell"
        )
        for variable in TEST_VARIABLES:
            node_id = ua.NodeId(ua.String(variable.name), ua.Int16(index), ua.NodeIdType.String)
            initial = variable.initial if values is None else values[variable.name]
            node = await folder.add_variable(node_id, variable.name, initial, varianttype=variable.variant_type)
            status = variable.status if values is None else None
            await server.write_attribute_value(
                node.nodeid,
                ua.DataValue(
                    ua.Variant(initial, variable.variant_type),
                    StatusCode=ua_status(status if status is not None else StatusCodes.Good),
                    SourceTimestamp=ua_time(INITIAL_SOURCE_TS),
                    ServerTimestamp=ua_time(INITIAL_SOURCE_TS),
                ),
            )

    def _on_read(self, event: ServerItemCallback, _dispatcher: object) -> None:
        if not event.is_external:
            return
        size = len(event.request_params.NodesToRead)
        self.read_sizes.append(size)
        limit = self.enforce_max_nodes_per_read
        if limit is not None and size > limit:
            raise BadTooManyOperations()  # type: ignore[no-untyped-call]  # asyncua leaves __new__ untyped


async def serve_forever(port: int) -> None:
    """Run the test server in its own process (to freeze it with SIGSTOP: a half-open link)."""
    server = OpcUaTestServer(port=port)
    await server.start()
    print("READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":  # python -m tests.support.opcua PORT
    asyncio.run(serve_forever(int(sys.argv[1])))
