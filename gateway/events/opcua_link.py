"""The events' own OPC UA session: one Read call per record, the Write service for acks.

Namespaces are resolved against the server's NamespaceArray at every connect (as the data source does, see
``gateway.sources.opcua``), so a server that restarted with another namespace order is still read right. An ack
is written as a Variant of the tag's declared type (``type: uint32`` -> UInt32), which is what a server checks
the write against (BadTypeMismatch otherwise).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from gateway.events.core import WriteResult
from gateway.events.runner import EventLinkError, EventLoginRefusedError, EventReadError
from gateway.sources.base import RawReading
from gateway.sources.opcua_security import (
    LOGIN_REFUSED,
    ClientSecurity,
    close_client,
    new_client,
    secure_client,
)
from gateway.sources.opcua_status import (
    OpcUaDeviceOptions,
    OpcUaTagRef,
    plan_nodes,
    readings_from_data_value,
    status_name,
)
from gateway.vocabulary import DataType

_VARIANTS = {
    DataType.BOOL: ua.VariantType.Boolean,
    DataType.INT16: ua.VariantType.Int16,
    DataType.UINT16: ua.VariantType.UInt16,
    DataType.INT32: ua.VariantType.Int32,
    DataType.UINT32: ua.VariantType.UInt32,
    DataType.INT64: ua.VariantType.Int64,
    DataType.UINT64: ua.VariantType.UInt64,
}

_LINK_ERRORS = (OSError, TimeoutError, UaError, asyncio.TimeoutError, ConnectionError)


class OpcUaEventLink:
    """``tags``: every tag the events read or write, by name; ``ack_types``: the ack tags and their types."""

    def __init__(
        self,
        *,
        options: OpcUaDeviceOptions,
        tags: Sequence[OpcUaTagRef],
        ack_types: Mapping[str, DataType],
        security: ClientSecurity | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._options = options
        self._refs = tuple(tags)
        self._ack_types = dict(ack_types)
        self._security = security
        self._timeout_s = options.timeout_ms / 1000
        self._clock = clock
        self._client: Client | None = None
        self._node_ids: dict[str, ua.NodeId] = {}

    async def connect(self) -> None:
        options = self._options
        client = new_client(options.endpoint, timeout_s=self._timeout_s, username=options.username,
                            password=options.password,
                            password_file=self._security.password_file if self._security is not None else None)
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._security is not None and self._security.channel:
                    await secure_client(client, self._security, endpoint=options.endpoint)
                await client.connect()
                namespaces = await client.get_namespace_array()
        except UaStatusCodeError as exc:
            await _disconnect(client)
            if exc.code in LOGIN_REFUSED:
                raise EventLoginRefusedError(
                    f"{options.endpoint} refused the login ({self._identity()}): {status_name(exc.code)}"
                ) from exc
            raise EventLinkError(f"cannot connect to {options.endpoint}: {exc}") from exc
        except Exception as exc:  # refused security, certificates, a missing password file: all retried later
            await _disconnect(client)
            raise EventLinkError(f"cannot connect to {options.endpoint}: {exc or type(exc).__name__}") from exc
        plan = plan_nodes(self._refs, device_namespace_uri=options.namespace_uri, namespace_array=list(namespaces))
        self._node_ids = {tag: planned.node_id for planned in plan.nodes for tag in planned.tags}
        self._client = client

    def _identity(self) -> str:
        if self._options.username is not None:
            return f"user {self._options.username}"
        if self._security is not None and self._security.user_certificate is not None:
            return f"user certificate {self._security.user_certificate}"
        return "anonymous"

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _disconnect(client)

    def _require(self) -> Client:
        if self._client is None:
            raise EventLinkError("not connected")
        return self._client

    async def read(self, tags: Sequence[str]) -> Mapping[str, RawReading]:
        client = self._require()
        missing = [tag for tag in tags if tag not in self._node_ids]
        if missing:
            raise EventReadError(f"namespace of {missing[0]} not on the server")
        unique = list(dict.fromkeys(self._node_ids[tag] for tag in tags))
        try:
            async with asyncio.timeout(self._timeout_s):
                values = await client.read_attributes([client.get_node(node) for node in unique], AttributeIds.Value)
        except UaStatusCodeError as exc:
            raise EventReadError(str(exc)) from exc
        except _LINK_ERRORS as exc:
            raise EventLinkError(f"read failed: {exc or type(exc).__name__}") from exc
        received = self._clock()
        by_node = dict(zip(unique, values, strict=True))
        readings: dict[str, RawReading] = {}
        for tag in tags:
            (reading,) = readings_from_data_value((tag,), by_node[self._node_ids[tag]], received_at=received)
            readings[tag] = reading
        return readings

    async def write(self, tag: str, value: int) -> tuple[WriteResult, str | None]:
        client = self._require()
        data_type = self._ack_types[tag]
        variant = ua.Variant(bool(value) if data_type is DataType.BOOL else value, _VARIANTS[data_type])
        node = client.get_node(self._node_ids[tag])
        try:
            async with asyncio.timeout(self._timeout_s):
                await node.write_value(ua.DataValue(variant))
        except UaStatusCodeError as exc:
            return WriteResult.EXCEPTION, str(exc)
        except _LINK_ERRORS as exc:
            return WriteResult.FAILED, str(exc) or type(exc).__name__
        return WriteResult.OK, None


async def _disconnect(client: Client) -> None:
    await close_client(client, 2.0)  # a half-open session is dropped either way
