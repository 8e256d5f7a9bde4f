"""The OPC UA fast path: our own publish loop for one subscription, over asyncua's public transport and codec.

Why: at tens of thousands of data changes a second, asyncua's subscription path (its generic decoding of every
MonitoredItemNotification into a Variant, a DataValue and datetime objects, then a task or a queue entry per
notification) costs several times what ``opcua_publish.decode_data_changes`` costs for the same responses (the
README's Performance section has the figures and the benchmark that measures both). So for a subscription this
module sends the CreateSubscription, CreateMonitoredItems and Publish requests itself and reads the Publish
responses with that decoder.

Only public asyncua names are used: ``UASocketProtocol.send_request`` (the transport of ``Client.uaclient``,
with its secure channel), the ``ua`` request and response structures and ``ua_binary.struct_from_binary``.
Nothing of asyncua is replaced: asyncua's own publish loop simply never starts, because asyncua never learns of
this subscription (it is deleted with the session when the client disconnects).

``fast_path_unavailable`` checks, once per process, that the installed asyncua still offers all of that and
still encodes a PublishResponse the way the decoder reads it (it decodes one asyncua encoded both ways and
compares). When it does not, the source falls back to asyncua's public subscription API and logs why.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, SupportsBytes, cast

from asyncua import ua
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from gateway.sources.base import RawReading
from gateway.sources.opcua_status import readings_from_data_value, status_name

try:  # the parts of asyncua the fast path needs beyond ``ua``: an upgrade that moves them disables it
    from asyncua.client.ua_client import UASocketProtocol
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

    from gateway.sources.opcua_publish import DataChanges, decode_data_changes

    _IMPORT_PROBLEM: str | None = None
except ImportError as _exc:  # pragma: no cover - only with an asyncua that lacks them
    _IMPORT_PROBLEM = f"asyncua lacks {_exc.name or _exc}"

__all__ = ["FastSubscription", "PublishStats", "SubscriptionRevision", "Transport", "create_subscription",
           "fast_path_unavailable"]


class Transport(Protocol):
    """What the fast path needs of asyncua's ``UASocketProtocol``: send one request, get the response body
    (``timeout`` in seconds, also written into the request header; 0 = none)."""

    async def send_request(self, request: object, timeout: float | None = None) -> SupportsBytes: ...  # noqa: ASYNC109


class PublishStats(Protocol):
    """The counters the fast path keeps (``OpcUaSourceStats`` has them)."""

    fast_publish_responses: int  # Publish responses of data changes read by decode_data_changes
    asyncua_publish_responses: int  # the others, decoded by asyncua's generic decoder
    notifications: int
    unknown_handles: int


@dataclass(frozen=True, slots=True)
class SubscriptionRevision:
    """The server's answer to CreateSubscription: the id and the timing actually in force."""

    subscription_id: int
    publishing_interval_ms: float
    max_keepalive_count: int

    @property
    def keepalive_s(self) -> float:
        return self.publishing_interval_ms * max(self.max_keepalive_count, 1) / 1000.0


@functools.cache
def fast_path_unavailable() -> str | None:
    """None when the installed asyncua offers every public name the fast path uses and the decoder reads a
    PublishResponse asyncua encodes exactly as asyncua reads it; otherwise the reason (for the log)."""
    if _IMPORT_PROBLEM is not None:
        return _IMPORT_PROBLEM
    send = getattr(UASocketProtocol, "send_request", None)
    if send is None or not inspect.iscoroutinefunction(send):
        return "asyncua's UASocketProtocol.send_request is not a coroutine function"
    parameters = list(inspect.signature(send).parameters)
    if parameters[:3] != ["self", "request", "timeout"]:
        return f"asyncua's UASocketProtocol.send_request takes {parameters}"
    for name in ("PublishRequest", "PublishResponse", "CreateSubscriptionRequest", "CreateSubscriptionResponse",
                 "CreateMonitoredItemsRequest", "CreateMonitoredItemsResponse", "SubscriptionAcknowledgement"):
        if not hasattr(ua, name):
            return f"asyncua.ua lacks {name}"
    try:
        return _decoder_disagrees()
    except Exception as exc:  # an asyncua whose structures changed shape: not ours to fix at run time
        return f"self-check failed: {type(exc).__name__}: {exc}"


def _decoder_disagrees() -> str | None:
    """Encode a PublishResponse of data changes with asyncua, decode it with asyncua and with the fast decoder."""
    moment = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    stamp = cast(ua.DateTime, moment)
    good = ua.StatusCode(ua.UInt32(StatusCodes.Good))
    values = [
        ua.DataValue(ua.Variant(21.5, ua.VariantType.Double), good, SourceTimestamp=stamp, ServerTimestamp=stamp),
        ua.DataValue(ua.Variant(3.7, ua.VariantType.Float), good, ServerTimestamp=stamp),
        ua.DataValue(ua.Variant(-7, ua.VariantType.Int32), good, SourceTimestamp=stamp),
        ua.DataValue(ua.Variant(True, ua.VariantType.Boolean), good, SourceTimestamp=stamp),
        ua.DataValue(ua.Variant("NMC811", ua.VariantType.String), good, SourceTimestamp=stamp),
        ua.DataValue(ua.Variant([1, 2, 3], ua.VariantType.UInt16), good, SourceTimestamp=stamp),
        ua.DataValue(ua.Variant(1.0, ua.VariantType.Double), ua.StatusCode(ua.UInt32(StatusCodes.BadSensorFailure)),
                     SourceTimestamp=stamp),
        ua.DataValue(ua.Variant(2.0, ua.VariantType.Double),
                     ua.StatusCode(ua.UInt32(StatusCodes.UncertainLastUsableValue)), SourceTimestamp=stamp),
    ]  # fmt: skip
    items = [ua.MonitoredItemNotification(ClientHandle=index + 1, Value=value) for index, value in enumerate(values)]
    response = ua.PublishResponse()
    response.Parameters = ua.PublishResult(
        SubscriptionId=5,
        AvailableSequenceNumbers=[9],
        NotificationMessage=ua.NotificationMessage(
            SequenceNumber=9, PublishTime=stamp, NotificationData=[ua.DataChangeNotification(MonitoredItems=items)]
        ),
    )
    body = struct_to_binary(response)
    tags_by_handle = {index + 1: (f"t{index}",) for index in range(len(values))}
    received_at = moment.timestamp() + 1
    changes = decode_data_changes(body, tags_by_handle=tags_by_handle, received_at=received_at)
    if changes is None or (changes.subscription_id, changes.sequence_number) != (5, 9):
        return "the decoder does not read asyncua's PublishResponse"
    decoded = struct_from_binary(ua.PublishResponse, Buffer(body))
    expected: list[RawReading] = []
    for item in decoded.Parameters.NotificationMessage.NotificationData[0].MonitoredItems:
        expected += readings_from_data_value(tags_by_handle[item.ClientHandle], item.Value, received_at=received_at)
    if not _same(changes.readings, expected):
        return "the decoder and asyncua read a PublishResponse differently"
    return None


def _same(fast: Sequence[RawReading], slow: Sequence[RawReading]) -> bool:
    if len(fast) != len(slow):
        return False
    for a, b in zip(fast, slow, strict=True):
        if (a.tag, a.quality, a.status, a.value, type(a.value)) != (b.tag, b.quality, b.status, b.value, type(b.value)):
            return False
        if not math.isclose(a.ts, b.ts, abs_tol=1e-6):
            return False
    return True


async def create_subscription(
    transport: Transport, params: ua.CreateSubscriptionParameters, *, timeout_s: float
) -> SubscriptionRevision:
    """CreateSubscription sent by us, so asyncua neither registers the subscription nor starts its publish loop."""
    request = ua.CreateSubscriptionRequest()
    request.Parameters = params
    data = await transport.send_request(request, timeout_s)
    response = struct_from_binary(ua.CreateSubscriptionResponse, _buffer(data))
    response.ResponseHeader.ServiceResult.check()
    result = response.Parameters
    return SubscriptionRevision(
        subscription_id=int(result.SubscriptionId),
        publishing_interval_ms=float(result.RevisedPublishingInterval),
        max_keepalive_count=int(result.RevisedMaxKeepAliveCount),
    )


def _buffer(data: SupportsBytes) -> Buffer:
    return Buffer(bytes(data))


class FastSubscription:
    """One subscription served by our own publish loop (see the module docstring).

    ``push`` receives the readings of every Publish response at once; ``on_publish`` is called for every Publish
    response of this subscription, data or keep-alive (the silence watchdog's signal), with its notification
    count. ``run`` returns the reason the subscription is lost (a bad status change, the server dropping it);
    transport failures propagate as asyncua raises them.
    """

    def __init__(
        self,
        transport: Transport,
        revision: SubscriptionRevision,
        *,
        tags_by_handle: Mapping[int, tuple[str, ...]],
        push: Callable[[Sequence[RawReading]], None],
        on_publish: Callable[[int], None],
        stats: PublishStats,
        type_names: Mapping[str, str] | None = None,
        on_unreadable: Callable[[str], None] | None = None,
    ) -> None:
        self._transport = transport
        self.revision = revision
        self._tags_by_handle = tags_by_handle
        self._push = push
        self._on_publish = on_publish
        self._stats = stats
        self._type_names = type_names
        self._on_unreadable = on_unreadable

    async def create_monitored_items(
        self, requests: Sequence[ua.MonitoredItemCreateRequest], *, timeout_s: float
    ) -> list[int | ua.StatusCode]:
        """Per request the server's monitored item id, or the Bad StatusCode it answered."""
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = ua.UInt32(self.revision.subscription_id)
        params.ItemsToCreate = list(requests)
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        request = ua.CreateMonitoredItemsRequest()
        request.Parameters = params
        data = await self._transport.send_request(request, timeout_s)
        response = struct_from_binary(ua.CreateMonitoredItemsResponse, _buffer(data))
        response.ResponseHeader.ServiceResult.check()
        return [result.MonitoredItemId if result.StatusCode.is_good() else result.StatusCode
                for result in response.Results]  # fmt: skip

    async def run(self) -> str:
        """The publish loop: one outstanding PublishRequest carrying the acknowledgements of the last response."""
        subscription_id = self.revision.subscription_id
        acks: list[ua.SubscriptionAcknowledgement] = []
        while True:
            request = ua.PublishRequest()
            request.Parameters.SubscriptionAcknowledgements = acks
            acks = []
            try:
                # Timeout 0: the server holds the request until it has data or a keep-alive to send.
                data = await self._transport.send_request(request, 0)
            except UaStatusCodeError as exc:
                if exc.code == StatusCodes.BadTimeout:
                    continue  # the server timed the request out: ask again (asyncua's own loop does the same)
                return f"publish refused: {status_name(exc.code)}"
            body = bytes(data)
            try:
                outcome = self.take_response(body)
            except Exception as exc:
                # Not acknowledged: a server that keeps the message may send it again (Republish is not used).
                if self._on_unreadable is not None:
                    self._on_unreadable(f"{type(exc).__name__}: {exc}")
                continue
            if isinstance(outcome, str):
                return outcome
            sequence_number, acknowledge = outcome
            if acknowledge:
                acks = [ua.SubscriptionAcknowledgement(SubscriptionId=subscription_id, SequenceNumber=sequence_number)]

    def take_response(self, body: bytes) -> tuple[int, bool] | str:
        """Hands on the readings of one Publish response (its body from the type id on); returns (sequence
        number, acknowledge it?) or why the subscription is lost. Raises for a body neither decoder can read."""
        subscription_id = self.revision.subscription_id
        received_at = time.time()
        changes = decode_data_changes(body, tags_by_handle=self._tags_by_handle, received_at=received_at,
                                      type_names=self._type_names)  # fmt: skip
        if changes is not None and changes.subscription_id == subscription_id:
            return self._take(changes)
        # Anything the decoder does not cover (a status change, diagnostics, ...): asyncua's generic decoding.
        self._stats.asyncua_publish_responses += 1
        result = struct_from_binary(ua.PublishResponse, Buffer(body)).Parameters
        if result.SubscriptionId != subscription_id:
            return f"publish response for subscription {result.SubscriptionId}, not {subscription_id}"
        message = result.NotificationMessage
        data = message.NotificationData or []
        readings: list[RawReading] = []
        items = 0
        for notification in data:
            if isinstance(notification, ua.StatusChangeNotification):
                status = notification.Status
                if status is not None and not status.is_good():
                    return f"subscription status {status_name(status.value)}"
            elif isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    items += 1
                    tags = self._tags_by_handle.get(item.ClientHandle)
                    if tags is None:
                        self._stats.unknown_handles += 1
                        continue
                    readings += readings_from_data_value(tags, item.Value, received_at=received_at,
                                                         type_names=self._type_names)  # fmt: skip
        self._on_publish(items)
        self._stats.notifications += items
        if readings:
            self._push(readings)
        return int(message.SequenceNumber), bool(data)

    def _take(self, changes: DataChanges) -> tuple[int, bool]:
        self._stats.fast_publish_responses += 1
        self._on_publish(changes.items)
        self._stats.unknown_handles += changes.unknown_handles
        self._stats.notifications += changes.items
        if changes.readings:
            self._push(changes.readings)
        return changes.sequence_number, changes.notifications > 0
