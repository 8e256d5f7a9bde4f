"""OPC UA source: one asyncua Client per device, subscription or batched Read, rebuilt on every link loss.

Why a fresh Client per connection instead of asyncua's ``auto_reconnect``: auto-reconnect re-creates the
subscriptions with the *old* NodeIds, but a restarted server may have registered its namespaces in a
different order, so ``ns=2`` can now be another namespace and values would land on the wrong tags
(and opcua-asyncio #1660 reports ``connect()`` hanging when a Client is reused after a blackhole). So:

    connect (each attempt bounded by ``timeout_ms``; paced by ``reconnect``: exponential backoff + jitter)
      → read NamespaceArray, resolve every tag's namespace URI to today's index (pure: ``plan_nodes``)
      → subscribe (our publish loop, or asyncua's with a sync handler → bounded queue → consumer task → emit)
        or poll (fixed rate, chunked Read)
      → wait for loss: ``connection_lost_callback`` (asyncua's supervisor probe / socket close),
        a bad ``status_change_notification``, a failed Read, or our own subscription-silence watchdog
      → report_link(False, reason) once, emit ``comm_failure`` for every tag once, tear the client down,
        and start again with a NEW Client (new session, new subscription): at once after a stable link, after
        the growing backoff when the link was lost before it had lived ``stable_link_s`` (a server that closes
        right after the session is created must not be reconnected in a loop).

The silence watchdog (subscribe mode) is for a server that still answers requests but whose subscription went
quiet: a PLC whose publish engine hung, or a frozen process behind a TCP stack that still accepts. Its liveness
signal is every Publish response of the subscription, data or keep-alive, noted in ``_PublishActivity``: by our own
publish loop on the fast path (``opcua_fastpath``), and on asyncua's path through the client's
``Observer.on_notification``, to which asyncua 2.1 reports every Publish response, keep-alives included (as 0
notifications; its handler methods never see keep-alives). On asyncua's path ``Subscription.last_publish_at`` is
not usable: asyncua's own stale-subscription watchdog resets it every time it re-creates a silent subscription, so
a server that never publishes again would never look silent. The bound: link down is reported at most ``silence_s +
check`` after the last Publish response, where ``silence_s = max(SILENCE_KEEPALIVES × keep-alive period, 2 ×
timeout)`` (``OpcUaSource.silence_timeout_s``) and ``check = min(1 s, silence_s / 4)``; sooner when asyncua's
ServerState probe (every ``min(timeout, 5 s)``) fails first, as it does for a frozen server.

Every network call is bounded by ``timeout_ms``. Nothing here raises on bad data: problems become readings
with quality bad (see ``opcua_status`` for the status strings).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.observer import Observer
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from gateway.backoff import paced
from gateway.pki import PkiError, ServerCertificateRejectedError
from gateway.schema import STATUS_COMM_FAILURE
from gateway.secrets import SecretFileError
from gateway.sources.base import (
    OVERLOAD_LOG_EVERY_S,
    Backlog,
    CycleTimes,
    Emit,
    HoldBack,
    OverrunLog,
    PollSchedule,
    RawReading,
    ReportLink,
)
from gateway.sources.opcua_fastpath import FastSubscription, create_subscription, fast_path_unavailable
from gateway.sources.opcua_fastpath import Transport as FastTransport
from gateway.sources.opcua_security import (
    LOGIN_REFUSED,
    ClientSecurity,
    SecurityRefusedError,
    close_client,
    new_client,
    secure_client,
)
from gateway.sources.opcua_status import (
    SUBSCRIPTION_KEEPALIVE_S,
    NodePlan,
    OpcUaDeviceOptions,
    OpcUaTagRef,
    SubscriptionTiming,
    bad_readings,
    max_nodes_per_read,
    plan_nodes,
    quality_of_status,
    readings_from_data_value,
    status_name,
    subscription_timing,
)
from gateway.sources.reconnect import STABLE_LINK_S, LogLine, Reconnect, ReconnectPolicy, Step
from gateway.vocabulary import OpcUaMode

__all__ = ["OpcUaDeviceOptions", "OpcUaSource", "OpcUaSourceStats", "OpcUaTagRef", "quiet_asyncua_loggers"]

log = structlog.get_logger("cellgate.opcua")

# The subscription is declared dead when no publish response (data or keep-alive) came for this many
# keep-alive periods (never less than two timeouts). asyncua's own stale watchdog tries to re-create it after
# 1.5 periods first; if that does not bring publishes back, we build a new client.
SILENCE_KEEPALIVES = 3
NOTIFICATION_QUEUE_SIZE = 10_000
"""Smallest bound of the readings queued between the subscription and ``emit``; a device with more tags gets
room for two of its full Publish responses (every tag changed), so one response never overflows it."""
EMIT_BATCH_MAX = 1_000
MONITORED_ITEMS_PER_CALL = 1_000
"""Monitored items created per CreateMonitoredItems request."""

# Exceptions that mean "this connection is unusable" (asyncua raises plain ConnectionError/TimeoutError,
# OSError from the socket, UaError subclasses for service faults).
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, ua.uaerrors.UaError, PkiError, ServerCertificateRejectedError, SecurityRefusedError,
    SecretFileError,
)  # fmt: skip


STRUCTURE_NAME_READ_CHUNK = 1000
"""Nodes per Read of the DataType attribute at connect (below every MaxNodesPerRead seen in practice)."""


def quiet_asyncua_loggers() -> None:
    """asyncua logs INFO per request, and while a server is away an ERROR traceback per publish retry
    (``ua_session``: "Publish iteration crashed", every second) and a WARNING per call on a closed
    connection (``ua_client``). We log the state change once instead (``opcua_link_down``)."""
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    logging.getLogger("asyncua.client.ua_session").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua.client.ua_client").setLevel(logging.CRITICAL)


def describe_error(exc: BaseException) -> str:
    """A short, stable reason for ``report_link`` / logs: the OPC UA status name or the exception text."""
    if isinstance(exc, UaStatusCodeError):
        return status_name(exc.code)
    if isinstance(exc, TimeoutError):
        return "timeout"  # asyncio's TimeoutError has no message
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(slots=True)
class OpcUaSourceStats:
    """Counters an operator wants to see (exported as metrics by the runtime)."""

    connects: int = 0
    connect_failures: int = 0
    link_losses: int = 0
    notifications: int = 0
    fast_publish_responses: int = 0  # Publish responses of data changes decoded by opcua_publish
    asyncua_publish_responses: int = 0  # the others on the fast path (status changes, diagnostics): asyncua decodes
    unknown_handles: int = 0  # notifications for a client handle this connection never asked for
    queue_overflow_dropped: int = 0  # subscription readings dropped (oldest first) because the queue was full
    queue_dropped_at_stop: int = 0  # readings still queued when the source was cancelled
    polls: int = 0
    poll_overruns: int = 0  # polls (with their emit) that ran past their slot; the next one then starts at once
    poll_skipped_cycles: int = 0  # polls the fixed rate asked for that overruns cost (see base.PollSchedule)
    backlog_skipped: int = 0  # polls skipped while the queued data was max_queue_age_ms old or paced Reads waited
    read_requests: int = 0
    reads_ok: int = 0  # Read calls (poll mode) answered
    read_timeouts: int = 0  # Read calls without an answer within timeout_ms
    read_errors: int = 0  # Read calls that failed otherwise (a Bad service result, a broken session)
    read_chunk_reductions: int = 0  # BadTooManyOperations from a server that under-reports MaxNodesPerRead
    missed_cycles: int = 0  # intervals (interval_ms) that passed while the link was down, added when it is up again
    cycle_times: CycleTimes | None = None  # poll mode: cycle durations (cellgate_device_poll_seconds); None subscribed

    def reads_by_result(self) -> dict[str, int]:
        """Requests to the server by result (``cellgate_device_reads_total``): Read calls in poll mode, and in
        subscribe mode every Publish response as ``ok``; failed connects as ``connection_error``."""
        return {
            "ok": self.reads_ok + self.fast_publish_responses + self.asyncua_publish_responses,
            "timeout": self.read_timeouts,
            "error": self.read_errors,
            "connection_error": self.connect_failures,
        }


class _EmitError(Exception):
    """Carries an exception raised by ``emit`` past the "any library error = link loss" handler."""

    def __init__(self, original: Exception) -> None:
        super().__init__(repr(original))
        self.original = original


async def _emit_checked(emit: Emit, readings: Sequence[RawReading]) -> None:
    try:
        await emit(readings)
    except Exception as exc:
        raise _EmitError(exc) from exc


class _LinkWatch:
    """Collects the first reason a connection is lost, from any of the asyncua callbacks."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.reason: str | None = None

    def lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()

    async def on_connection_lost(self, exc: Exception) -> None:  # asyncua's connection_lost_callback
        self.lose(f"connection lost: {describe_error(exc)}")


class _PublishActivity(Observer):
    """asyncua observer that notes when the client last received a Publish response for a subscription, data
    or keep-alive (asyncua calls ``on_notification`` for both, with 0 notifications for a keep-alive). The only
    other hook, ``observe_request``, is made free: it would otherwise time every request of the client."""

    def __init__(self) -> None:
        self.last_at: float | None = None  # time.monotonic()
        self.responses = 0

    def observe_request(self, request: object) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def on_notification(self, subscription_id: int | None, event_count: int) -> None:
        self.last_at = time.monotonic()
        self.responses += 1


class _DataChangeHandler:
    """asyncua subscription handler. SYNC on purpose: asyncua runs each call in its own task, and a sync
    handler that only converts and ``put_nowait``s keeps arrival order and never blocks the publish loop."""

    def __init__(
        self,
        *,
        tags_by_handle: dict[int, tuple[str, ...]],
        push: Callable[[Sequence[RawReading]], None],
        watch: _LinkWatch,
        stats: OpcUaSourceStats,
        type_names: Mapping[str, str] | None = None,
    ) -> None:
        self._tags_by_handle = tags_by_handle
        self._type_names = type_names
        self._push = push
        self._watch = watch
        self._stats = stats
        self.closed = False  # set at teardown: late dispatch tasks of a dead client must not emit anymore

    def datachange_notification(self, node: Node, val: object, data: DataChangeNotif) -> None:
        if self.closed:
            return
        tags = self._tags_by_handle.get(data.monitored_item.ClientHandle)
        if tags is None:
            self._stats.unknown_handles += 1
            return
        self._stats.notifications += 1
        self._push(readings_from_data_value(tags, data.monitored_item.Value, received_at=time.time(),
                                            type_names=self._type_names))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        # BadShutdown (link lost), BadTimeout (subscription expired on the server), ...: resubscribe from scratch.
        code = status.Status
        if code is not None and not code.is_good():
            self._watch.lose(f"subscription status {status_name(code.value)}")


def _monitored_item_requests(
    plan: NodePlan, *, sampling_interval_ms: float, queue_size: int
) -> list[ua.MonitoredItemCreateRequest]:
    """One request per planned node; its client handle is its position in the plan + 1 (0 is never used)."""
    requests: list[ua.MonitoredItemCreateRequest] = []
    for index, planned in enumerate(plan.nodes):
        parameters = ua.MonitoringParameters()
        parameters.ClientHandle = ua.UInt32(index + 1)
        parameters.SamplingInterval = ua.Double(sampling_interval_ms)
        parameters.QueueSize = ua.UInt32(queue_size)
        parameters.DiscardOldest = True
        item = ua.ReadValueId()
        item.NodeId = planned.node_id
        item.AttributeId = ua.UInt32(AttributeIds.Value)
        request = ua.MonitoredItemCreateRequest()
        request.ItemToMonitor = item
        request.MonitoringMode = ua.MonitoringMode.Reporting
        request.RequestedParameters = parameters
        requests.append(request)
    return requests


def _tags_by_handle(plan: NodePlan) -> dict[int, tuple[str, ...]]:
    return {index + 1: planned.tags for index, planned in enumerate(plan.nodes)}


class OpcUaSource:
    """Reads one OPC UA device and hands RawReadings to ``emit`` until cancelled.

    ``tags`` are the device's tags in tag-map order (several tags may name the same node).
    ``backoff_initial_s`` / ``backoff_max_s`` shape the reconnect backoff (exponential with jitter).
    ``notification_queue_size`` bounds the readings queued between the subscription and ``emit`` (default:
    ``max(NOTIFICATION_QUEUE_SIZE, 2 × tags)``); when ``emit`` cannot keep up the oldest are dropped and counted.
    ``keepalive_s`` is the keep-alive period asked of the server (subscribe mode, rounded up to whole publishing
    intervals); the silence watchdog fires after ``silence_timeout_s`` without a Publish response.
    ``stable_link_s``: a link lost before it has lived this long counts as a failed attempt for the backoff.
    ``fast_publish``: serve subscriptions with our own publish loop and decoder (``opcua_fastpath``) when the
    installed asyncua passes its feature check; False (or a failed check) uses asyncua's subscription API.
    """

    def __init__(
        self,
        *,
        device: str,
        options: OpcUaDeviceOptions,
        tags: Sequence[OpcUaTagRef],
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        notification_queue_size: int | None = None,
        emit_batch_max: int = EMIT_BATCH_MAX,
        keepalive_s: float = SUBSCRIPTION_KEEPALIVE_S,
        stable_link_s: float = STABLE_LINK_S,
        security: ClientSecurity | None = None,
        backlog: Backlog | None = None,
        fast_publish: bool = True,
        paced_reads: bool = False,
    ) -> None:
        if keepalive_s <= 0:
            raise ValueError(f"keepalive_s must be > 0, not {keepalive_s}")
        self.device = device
        self.options = options
        self.security = security
        self._backlog = backlog  # poll mode: polls are skipped while its data is max_queue_age_ms old
        self._paced_reads = paced_reads  # poll mode: Reads of a poll wait for the sink under overload (base.HoldBack)
        self.tags = tuple(tags)
        self.stats = OpcUaSourceStats(cycle_times=CycleTimes() if options.mode is OpcUaMode.POLL else None)
        self._tag_names = tuple(tag.name for tag in self.tags)
        self._timeout_s = options.timeout_ms / 1000.0
        self._reconnect = Reconnect(
            ReconnectPolicy(min_s=backoff_initial_s, max_s=backoff_max_s, stable_s=stable_link_s)
        )
        self._emit_batch_max = emit_batch_max
        self._timing = _subscription_timing(options.interval_ms, keepalive_s)
        if notification_queue_size is None:
            notification_queue_size = max(NOTIFICATION_QUEUE_SIZE, 2 * len(self.tags))
        if notification_queue_size < 1:
            raise ValueError(f"notification_queue_size must be >= 1, not {notification_queue_size}")
        # A deque with maxlen drops the oldest by itself; whole Publish responses go in with one extend().
        self._queue: collections.deque[RawReading] = collections.deque(maxlen=notification_queue_size)
        self._queue_filled = asyncio.Event()  # set while readings wait
        self._queue_idle = asyncio.Event()  # set when nothing waits and no batch is being emitted
        self._queue_idle.set()
        self._overflow_logged_at = -OVERLOAD_LOG_EVERY_S
        self._link_up: bool | None = None  # None until the first connect attempt has an outcome
        self._down_since: float | None = None  # loop time of the last change to down
        # While attempts keep failing, opcua_link_up waits until the new link is stable (and opcua_link_down is
        # only logged for a link whose up was): a link that lives a second each attempt is not logged each time.
        self._up_logged = False
        self._up_fields: dict[str, object] = {}
        self._channel: dict[str, object] = {"security_policy": "None", "security_mode": "None"}
        self._type_names: dict[str, str] = {}  # this connection's structure encoding ids -> type names
        self._log = log.bind(device=device, endpoint=options.endpoint)
        # Why the fast publish path (opcua_fastpath) is not used, or None when it is.
        self._fast_publish_problem = fast_path_unavailable() if fast_publish else "fast_publish is off"
        self._publish_path_logged = False
        self._unreadable_logged_at = -OVERLOAD_LOG_EVERY_S

    @property
    def silence_timeout_s(self) -> float:
        """Subscribe mode: seconds without any Publish response (data or keep-alive) before the link is declared
        lost and the client rebuilt: ``max(SILENCE_KEEPALIVES × keep-alive period, 2 × timeout)``. Widened for a
        connection whose server revised the publishing interval so that keep-alives come less often."""
        return max(SILENCE_KEEPALIVES * self._timing.keepalive_s, 2 * self._timeout_s)

    # ------------------------------------------------------------------------------------ lifecycle

    async def run(self, emit: Emit, report_link: ReportLink) -> None:
        """Connect, read, reconnect on loss (a tenacity run: ``gateway.backoff.paced``); ends only by cancellation."""
        quiet_asyncua_loggers()
        await paced()(self._connection, emit, report_link)

    async def _connection(self, emit: Emit, report_link: ReportLink) -> Step:
        """One attempt: connect, then read until the link is lost; the step says how long to wait before the next."""
        loop = asyncio.get_running_loop()
        try:
            client = await self._connect_once()
        except _CONNECT_ERRORS as exc:
            self.stats.connect_failures += 1
            reason = describe_error(exc)
            step = self._reconnect.connect_failed(loop.time(), reason, random.random())
            if isinstance(exc, UaStatusCodeError) and exc.code in LOGIN_REFUSED:  # every attempt: accounts lock
                self._log.warning("opcua_login_refused", error=reason, attempt=step.attempts,
                                  user=self.options.username, retry_in_s=round(step.delay_s, 3))  # fmt: skip
            else:
                self._log_reconnect(step)
            await self._mark_down(emit, report_link, reason)
            return step
        self._reconnect.connected(loop.time())  # the link's up line is opcua_link_up, logged by _mark_up
        self.stats.connects += 1
        watch = _LinkWatch()
        client.connection_lost_callback = watch.on_connection_lost
        try:
            try:
                if self.options.mode is OpcUaMode.SUBSCRIBE:
                    reason = await self._serve_subscription(client, watch, emit, report_link)
                else:
                    reason = await self._serve_poll(client, watch, emit, report_link)
            except _EmitError as failed:
                # The pipeline behind emit broke: that is not a link problem, let the runtime see it.
                raise failed.original from None
            except Exception as exc:  # any library failure ends this connection, never the source
                reason = describe_error(exc)
                if not isinstance(exc, _CONNECT_ERRORS):
                    self._log.warning("opcua_session_error", error=reason, exc_info=True)
            self.stats.link_losses += 1
            step = self._reconnect.lost(loop.time(), reason, random.random())
            self._log_reconnect(step)
            # Reported before the teardown: closing a session on a frozen server waits out a whole timeout.
            await self._mark_down(emit, report_link, reason)
        finally:
            await self._close_client(client)
        return step

    def _log_reconnect(self, step: Step) -> None:
        """The first failed attempt of a streak, then one summary a minute; never a line per attempt."""
        match step.log:
            case LogLine.FAILING:
                self._log.warning("opcua_connect_failed", error=step.error, attempt=step.attempts,
                                  retry_in_s=round(step.delay_s, 3), lived_s=_round(step.lived_s))  # fmt: skip
            case LogLine.SUMMARY:
                self._log.warning("device_reconnect_failing", attempts=step.attempts, failures=step.failures,
                                  failing_s=round(step.failing_s, 1), error=step.error,
                                  retry_in_s=round(step.delay_s, 3))  # fmt: skip
            case LogLine.UP | LogLine.LOST | None:
                pass  # opcua_link_up / opcua_link_down say it

    def _check_stable(self) -> None:
        """Called while the link works: once it is stable after failed attempts, its deferred up line is logged."""
        if self._reconnect.stable:
            return
        step = self._reconnect.answered(asyncio.get_running_loop().time())
        if step is not None and not self._up_logged:
            self._log_link_up(attempts=step.attempts, failing_s=round(step.failing_s, 1))

    def _log_link_up(self, **extra: object) -> None:
        self._up_logged = True
        self._log.info("opcua_link_up", **self._up_fields, **extra)

    async def _connect_once(self) -> Client:
        options = self.options
        client = new_client(options.endpoint, timeout_s=self._timeout_s, username=options.username,
                            password=options.password,
                            password_file=self.security.password_file if self.security is not None else None)
        try:
            async with asyncio.timeout(self._timeout_s):
                if self.security is not None and self.security.channel:
                    self._channel = await secure_client(client, self.security, endpoint=options.endpoint)
                await client.connect()
            if options.structures:
                await self._load_data_types(client)
        except BaseException:
            await self._close_client(client)
            raise
        return client

    async def _load_data_types(self, client: Client) -> None:
        """Let asyncua decode the server's structures (its public ``load_data_type_definitions``, from the
        DataTypeDefinitions the server exposes). On failure they stay undecoded: published bad, status
        ``unsupported_type:<TypeName>`` (see ``_name_structures``); the link itself is fine."""
        try:
            async with asyncio.timeout(self._timeout_s * 4):  # it browses the whole DataType tree
                await client.load_data_type_definitions()
        except (TimeoutError, ua.uaerrors.UaError, ValueError, KeyError) as exc:
            self._log.warning("opcua_data_types_not_loaded", error=describe_error(exc))

    async def _close_client(self, client: Client) -> None:
        client.connection_lost_callback = None
        # A server that does not answer CloseSession makes our timeout cut disconnect() short before it closes
        # the socket; close_client closes it too, so no half-open connection (and its publish loop) outlives it.
        await close_client(client, self._timeout_s)

    async def _mark_down(self, emit: Emit, report_link: ReportLink, reason: str) -> None:
        """Once per loss (or per failed first connect): report the link down and every tag bad."""
        if self._link_up is False:
            return
        self._link_up = False
        self._down_since = asyncio.get_running_loop().time()
        if self._up_logged or not self._reconnect.failing:
            self._log.warning("opcua_link_down", error=reason)
        self._up_logged = False
        report_link(False, reason)
        await emit(bad_readings(self._tag_names, STATUS_COMM_FAILURE, ts=time.time()))

    def _mark_up(self, report_link: ReportLink, plan: NodePlan) -> None:
        """The link works (session, namespaces, subscription or poll plan). ``missed_cycles``: the intervals that
        passed while it was down, values that were never read."""
        now = asyncio.get_running_loop().time()
        self._link_up = True
        fields: dict[str, object] = {
            "mode": self.options.mode,
            "nodes": len(plan.nodes),
            "tags": len(self.tags),
            "unreadable_tags": len(plan.problems),
            **self._channel,
        }
        if self._down_since is not None:
            down_s = now - self._down_since
            missed = int(down_s * 1000 // self.options.interval_ms)
            self.stats.missed_cycles += missed
            fields.update(missed_cycles=missed, down_s=round(down_s, 1))
            self._down_since = None
        self._up_fields = fields
        self._reconnect.answered(now)
        if not self._reconnect.failing:
            self._log_link_up()
        report_link(True, None)

    async def _plan(self, client: Client) -> NodePlan:
        """Resolve namespaces against this connection's NamespaceArray (it may differ after a restart)."""
        async with asyncio.timeout(self._timeout_s):
            namespace_array = await client.get_namespace_array()
        plan = plan_nodes(
            self.tags, device_namespace_uri=self.options.namespace_uri, namespace_array=list(namespace_array)
        )
        if plan.problems:
            # One line per connect, not per tag: a wrong namespace URI can make thousands of tags unreadable.
            self._log.warning(
                "opcua_tags_unreadable",
                count=len(plan.problems),
                examples=[f"{problem.tag}: {problem.status}" for problem in plan.problems[:5]],
            )
        await self._name_structures(client, plan)
        return plan

    async def _name_structures(self, client: Client, plan: NodePlan) -> None:
        """Encoding id -> type name of the non-standard DataTypes of the nodes of untyped tags (a tag with a map
        ``type`` is a scalar), so a structure the device cannot decode is published ``unsupported_type:<Name>``.
        Once per connect: the DataType attribute of those nodes, then each such type's BrowseName and encodings.
        A failure only leaves the names out (``unsupported_type:ExtensionObject[<id>]``); the link is fine."""
        self._type_names.clear()
        untyped = {ref.name for ref in self.tags if ref.name_structure}
        nodes = [client.get_node(planned.node_id) for planned in plan.nodes if not untyped.isdisjoint(planned.tags)]
        if not nodes:
            return
        try:
            async with asyncio.timeout(self._timeout_s * 2):
                types: dict[str, ua.NodeId] = {}
                for start in range(0, len(nodes), STRUCTURE_NAME_READ_CHUNK):
                    for data_value in await client.read_attributes(
                        nodes[start : start + STRUCTURE_NAME_READ_CHUNK], AttributeIds.DataType
                    ):
                        data_type = data_value.Value.Value if data_value.Value is not None else None
                        if isinstance(data_type, ua.NodeId) and data_type.NamespaceIndex != 0:
                            types[data_type.to_string()] = data_type
                for data_type in types.values():
                    node = client.get_node(data_type)
                    name = (await node.read_browse_name()).Name
                    for ref in await node.get_references(ObjectIds.HasEncoding, ua.BrowseDirection.Forward):
                        encoding = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                        if name:
                            self._type_names[encoding.to_string()] = name
        except (TimeoutError, UaError, ValueError) as exc:
            self._type_names.clear()
            self._log.warning("opcua_structure_names_unread", error=describe_error(exc))

    def _problem_readings(self, plan: NodePlan) -> list[RawReading]:
        now = time.time()
        return [
            reading for problem in plan.problems for reading in bad_readings((problem.tag,), problem.status, ts=now)
        ]

    # --------------------------------------------------------------------------------- subscription

    def _push(self, readings: Sequence[RawReading]) -> None:
        """Never blocks: when the queue is full the OLDEST readings are dropped (newest data wins) and counted."""
        if not readings:
            return
        queue = self._queue
        limit = queue.maxlen or 0
        overflow = len(queue) + len(readings) - limit
        queue.extend(readings)
        self._queue_idle.clear()
        self._queue_filled.set()
        if overflow > 0:
            self.stats.queue_overflow_dropped += overflow
            now = time.monotonic()
            if now - self._overflow_logged_at >= OVERLOAD_LOG_EVERY_S:
                self._overflow_logged_at = now
                self._log.warning(
                    "subscription_queue_overflow", dropped_oldest=self.stats.queue_overflow_dropped, queue_size=limit
                )

    async def _drain(self, emit: Emit) -> None:
        """Consumer task: hands queued readings to ``emit`` in batches (awaiting it applies backpressure)."""
        queue = self._queue
        while True:
            await self._queue_filled.wait()
            batch = [queue.popleft() for _ in range(min(len(queue), self._emit_batch_max))]
            if not queue:
                self._queue_filled.clear()
            await _emit_checked(emit, batch)
            if not queue:
                self._queue_idle.set()

    async def _serve_subscription(
        self,
        client: Client,
        watch: _LinkWatch,
        emit: Emit,
        report_link: ReportLink,
    ) -> str:
        plan = await self._plan(client)
        tags_by_handle = _tags_by_handle(plan)
        handler = _DataChangeHandler(tags_by_handle=tags_by_handle, push=self._push, watch=watch, stats=self.stats,
                                     type_names=self._type_names)
        # A fresh Client per connection, so a fresh observer: it only ever sees this connection's subscription.
        activity = _PublishActivity()
        client.uaclient.observer = activity
        consumer = asyncio.create_task(self._drain(emit), name=f"device[{self.device}].opcua.emit")
        publisher: asyncio.Task[None] | None = None
        try:
            subscribed = False
            silence_s = self.silence_timeout_s
            if plan.nodes:
                transport = client.uaclient.protocol if self._fast_publish_problem is None else None
                self._log_publish_path(fast=transport is not None)
                if transport is not None:
                    fast = await self._subscribe_fast(transport, plan, tags_by_handle, activity, watch)
                    silence_s = self._silence_for_keepalive(fast.revision.keepalive_s, silence_s)
                    publisher = asyncio.create_task(self._publish(fast, watch),
                                                    name=f"device[{self.device}].opcua.publish")  # fmt: skip
                else:
                    subscription = await self._subscribe_asyncua(client, plan, handler)
                    parameters = subscription.parameters
                    silence_s = self._silence_for_keepalive(
                        float(parameters.RequestedPublishingInterval)
                        * max(int(parameters.RequestedMaxKeepAliveCount), 1) / 1000, silence_s
                    )
                subscribed = True
            else:
                self._push(self._problem_readings(plan))
            self._mark_up(report_link, plan)
            reason = await self._watch_subscription(watch, activity if subscribed else None, consumer, silence_s)
            handler.closed = True
            await _stop(publisher)
            await self._flush_queue(consumer)
            return reason
        except asyncio.CancelledError:
            # Stopping: do not wait for a possibly stuck sink; what is still queued is dropped (and counted).
            handler.closed = True
            await _stop(publisher)
            self._discard_queue()
            raise
        except Exception:
            # Readings already queued belong before the comm_failure readings that follow: flush them first.
            handler.closed = True
            await _stop(publisher)
            await self._flush_queue(consumer)
            raise
        finally:
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer

    def _log_publish_path(self, *, fast: bool) -> None:
        """Which publish path serves this source's subscriptions, once per source."""
        if self._publish_path_logged:
            return
        self._publish_path_logged = True
        if fast:
            self._log.info("opcua_publish_path", path="fast")
        else:
            reason = self._fast_publish_problem or "no transport"
            self._log.info("opcua_publish_path", path="asyncua", reason=reason)

    def _subscription_parameters(self) -> ua.CreateSubscriptionParameters:
        timing = self._timing
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = timing.publishing_interval_ms
        params.RequestedMaxKeepAliveCount = timing.max_keepalive_count
        params.RequestedLifetimeCount = timing.lifetime_count
        params.MaxNotificationsPerPublish = 0  # 0 = no limit
        params.PublishingEnabled = True
        params.Priority = 0
        return params

    def _item_requests(self, plan: NodePlan) -> list[ua.MonitoredItemCreateRequest]:
        options = self.options
        sampling_interval_ms = options.sampling_interval_ms or options.interval_ms
        return _monitored_item_requests(plan, sampling_interval_ms=sampling_interval_ms, queue_size=options.queue_size)

    async def _subscribe_fast(
        self,
        transport: FastTransport,
        plan: NodePlan,
        tags_by_handle: dict[int, tuple[str, ...]],
        activity: _PublishActivity,
        watch: _LinkWatch,
    ) -> FastSubscription:
        """The subscription and its monitored items, served by our own publish loop (``opcua_fastpath``)."""
        async with asyncio.timeout(self._timeout_s):
            revision = await create_subscription(transport, self._subscription_parameters(), timeout_s=self._timeout_s)
        fast = FastSubscription(
            transport,
            revision,
            tags_by_handle=tags_by_handle,
            push=self._push,
            on_publish=lambda items: activity.on_notification(revision.subscription_id, items),
            stats=self.stats,
            type_names=self._type_names,
            on_unreadable=self._publish_unreadable,
        )
        results: list[int | ua.StatusCode] = []
        requests = self._item_requests(plan)
        # CreateMonitoredItems in chunks, each under the request timeout: one call for 20,000 items takes a
        # server longer than any sane timeout. The answer per item is a handle or a Bad status.
        for start in range(0, len(requests), MONITORED_ITEMS_PER_CALL):
            async with asyncio.timeout(self._timeout_s):
                results += await fast.create_monitored_items(
                    requests[start : start + MONITORED_ITEMS_PER_CALL], timeout_s=self._timeout_s
                )
        self._check_results(plan, results)
        return fast

    async def _subscribe_asyncua(self, client: Client, plan: NodePlan, handler: _DataChangeHandler) -> Subscription:
        """The subscription through asyncua's public API: its publish loop calls ``handler``."""
        async with asyncio.timeout(self._timeout_s):
            subscription = await client.create_subscription(self._subscription_parameters(), handler)
        results: list[int | ua.StatusCode] = []
        requests = self._item_requests(plan)
        for start in range(0, len(requests), MONITORED_ITEMS_PER_CALL):
            async with asyncio.timeout(self._timeout_s):
                results += await subscription.create_monitored_items(requests[start : start + MONITORED_ITEMS_PER_CALL])
        self._check_results(plan, results)
        return subscription

    def _check_results(self, plan: NodePlan, results: Sequence[int | ua.StatusCode]) -> None:
        if len(results) != len(plan.nodes):
            raise ua.uaerrors.UaError(f"{len(results)} monitored-item results for {len(plan.nodes)} nodes")
        self._push(self._problem_readings(plan))
        self._push(self._subscribe_failures(plan, results))

    async def _publish(self, fast: FastSubscription, watch: _LinkWatch) -> None:
        """Runs the fast publish loop; whatever ends it ends the link."""
        try:
            reason = await fast.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = describe_error(exc)
            if not isinstance(exc, _CONNECT_ERRORS):
                self._log.warning("opcua_session_error", error=reason, exc_info=True)
        watch.lose(reason)

    def _publish_unreadable(self, error: str) -> None:
        now = time.monotonic()
        if now - self._unreadable_logged_at >= OVERLOAD_LOG_EVERY_S:
            self._unreadable_logged_at = now
            self._log.warning("opcua_publish_response_unreadable", error=error)

    def _silence_for_keepalive(self, keepalive_s: float, silence_s: float) -> float:
        """The silence timeout for the keep-alive period actually in force. A server may revise the publishing
        interval or keep-alive count (and asyncua then modifies its subscription to a keep-alive count of its own:
        75 % of the session timeout). A longer keep-alive must widen the watchdog, or a quiet subscription would
        be torn down between two keep-alives; a shorter one never narrows it."""
        revised_s = SILENCE_KEEPALIVES * keepalive_s
        if revised_s <= silence_s:
            return silence_s
        self._log.info("opcua_keepalive_revised", keepalive_s=keepalive_s, silence_s=revised_s)
        return revised_s

    async def _flush_queue(self, consumer: asyncio.Task[None]) -> None:
        """Wait until the consumer has emitted everything queued (re-raising if emit failed meanwhile)."""
        if consumer.done():
            consumer.result()
            return
        idle = asyncio.ensure_future(self._queue_idle.wait())
        try:
            await asyncio.wait({idle, consumer}, return_when=asyncio.FIRST_COMPLETED)
            if consumer.done():
                consumer.result()
        finally:
            idle.cancel()

    def _discard_queue(self) -> None:
        self.stats.queue_dropped_at_stop += len(self._queue)
        self._queue.clear()
        self._queue_filled.clear()
        self._queue_idle.set()

    def _subscribe_failures(self, plan: NodePlan, results: Sequence[int | ua.StatusCode]) -> list[RawReading]:
        now = time.time()
        failed: list[RawReading] = []
        for planned, result in zip(plan.nodes, results, strict=True):
            if isinstance(result, ua.StatusCode):
                _quality, detail = quality_of_status(result)
                failed.extend(bad_readings(planned.tags, detail or status_name(result.value), ts=now))
        if failed:
            self._log.warning(
                "opcua_monitor_failed",
                count=len(failed),
                examples=[f"{reading.tag}: {reading.status}" for reading in failed[:5]],
            )
        return failed

    async def _watch_subscription(
        self,
        watch: _LinkWatch,
        activity: _PublishActivity | None,
        consumer: asyncio.Task[None],
        silence_s: float,
    ) -> str:
        """Wait until the link is lost; also the watchdog on subscription silence (no data, no keep-alive).

        ``activity`` is None when nothing is subscribed (every tag failed to resolve): then there is nothing
        to be silent, and the link is watched by asyncua's ServerState probe alone."""
        started = time.monotonic()
        check_s = min(1.0, silence_s / 4)
        lost = asyncio.ensure_future(watch.lost.wait())
        try:
            while True:
                done, _pending = await asyncio.wait(
                    {lost, consumer}, timeout=check_s, return_when=asyncio.FIRST_COMPLETED
                )
                if consumer in done:
                    consumer.result()  # re-raises what emit raised; a clean exit would be a bug
                    raise RuntimeError("notification consumer stopped")
                if lost in done:
                    return watch.reason or "connection lost"
                self._check_stable()
                if activity is not None:
                    last = activity.last_at if activity.last_at is not None else started
                    if time.monotonic() - last > silence_s:
                        self._log.warning("opcua_subscription_silent", silence_s=silence_s,
                                          publish_responses=activity.responses)  # fmt: skip
                        return f"subscription silent for {silence_s:g} s"
        finally:
            lost.cancel()

    # ----------------------------------------------------------------------------------------- poll

    async def _serve_poll(self, client: Client, watch: _LinkWatch, emit: Emit, report_link: ReportLink) -> str:
        plan = await self._plan(client)
        async with asyncio.timeout(self._timeout_s):
            limit_values = await client.read_attributes(
                [client.get_node(ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)],
                AttributeIds.Value,
            )
        chunk_size = max_nodes_per_read(limit_values[0] if limit_values else None)
        nodes = [client.get_node(planned.node_id) for planned in plan.nodes]
        self._log.info("opcua_poll_plan", nodes=len(nodes), max_nodes_per_read=chunk_size)
        self._mark_up(report_link, plan)
        problems = self._problem_readings(plan)
        if problems:
            await _emit_checked(emit, problems)
        loop = asyncio.get_running_loop()
        schedule = PollSchedule(interval_s=self.options.interval_ms / 1000.0, deadline=loop.time())
        overruns_before, skipped_before = self.stats.poll_overruns, self.stats.poll_skipped_cycles
        overrun_log = OverrunLog()
        hold_back = HoldBack(self._backlog, self.options.max_queue_age_ms, self.options.interval_ms, self._log,
                             self._paced_reads)  # fmt: skip
        held_before = self.stats.backlog_skipped
        cycle_times = self.stats.cycle_times
        checked: Emit = functools.partial(_emit_checked, emit)
        while True:
            await hold_back.before_poll(schedule, loop.time)  # skips polls while the queued data is too old
            self.stats.backlog_skipped = held_before + schedule.held_polls
            cycle_started = loop.time()
            if nodes:
                readings, chunk_size = await self._poll_once(client, plan, nodes, chunk_size, checked, hold_back)
                self.stats.polls += 1
                await hold_back.finish(readings, checked, loop.time)
            now = loop.time()
            if nodes and cycle_times is not None:
                cycle_times.observe(now - cycle_started)  # Reads and hand-over, as Modbus units measure it
            overran = hold_back.after_cycle(schedule, now)  # the time paced Reads waited for the sink is held
            self.stats.backlog_skipped = held_before + schedule.held_polls
            if overran:
                # The stats run across connections, the schedule is this connection's.
                self.stats.poll_overruns = overruns_before + schedule.overruns
                self.stats.poll_skipped_cycles = skipped_before + schedule.skipped_cycles
            line = overrun_log.after_cycle(schedule, overran=overran, now=now)  # never silent, never per cycle
            if line is not None and line.caught_up:
                self._log.warning("poll_caught_up", interval_ms=self.options.interval_ms, overruns=line.overruns,
                                  skipped_cycles=line.skipped_cycles)  # fmt: skip
            elif line is not None:
                self._log.warning(
                    "poll_overrun",
                    interval_ms=self.options.interval_ms,
                    cycle_ms=round((now - cycle_started) * 1000, 1),
                    overruns=self.stats.poll_overruns,
                    skipped_cycles=self.stats.poll_skipped_cycles,
                    polls=self.stats.polls,
                )
            if watch.lost.is_set():
                return watch.reason or "connection lost"
            self._check_stable()
            try:
                async with asyncio.timeout(max(0.0, schedule.deadline - loop.time())):
                    await watch.lost.wait()
            except TimeoutError:
                continue
            return watch.reason or "connection lost"

    async def _poll_once(
        self, client: Client, plan: NodePlan, nodes: Sequence[Node], chunk_size: int, emit: Emit, hold_back: HoldBack
    ) -> tuple[list[RawReading], int]:
        """One Read per chunk (read_attributes keeps StatusCode and timestamps; read_values hides them). While the
        sink is busy (paced reads), each chunk's readings are handed over before the next Read (``HoldBack``)."""
        readings: list[RawReading] = []
        start = 0
        while start < len(nodes):
            part = nodes[start : start + chunk_size] if chunk_size > 0 else nodes
            try:
                async with asyncio.timeout(self._timeout_s):
                    self.stats.read_requests += 1
                    values = await client.read_attributes(part, AttributeIds.Value)
            except TimeoutError:
                self.stats.read_timeouts += 1
                raise
            except UaStatusCodeError as exc:
                self.stats.read_errors += 1
                # A server that under-reports its limit answers BadTooManyOperations: halve and retry.
                if exc.code == StatusCodes.BadTooManyOperations and len(part) > 1:
                    chunk_size = max(1, math.ceil(len(part) / 2))
                    self.stats.read_chunk_reductions += 1
                    self._log.warning("opcua_read_chunk_reduced", max_nodes_per_read=chunk_size)
                    continue
                raise
            except Exception:
                self.stats.read_errors += 1
                raise
            self.stats.reads_ok += 1
            if len(values) != len(part):
                raise ua.uaerrors.UaError(f"Read returned {len(values)} results for {len(part)} nodes")
            received_at = time.time()
            for planned, data_value in zip(plan.nodes[start : start + len(part)], values, strict=True):
                readings.extend(readings_from_data_value(planned.tags, data_value, received_at=received_at,
                                                         type_names=self._type_names))
            start += len(part)
            if (pace := hold_back.pace) is not None and pace.busy and readings and start < len(nodes):
                await hold_back.hand_over(readings, emit, asyncio.get_running_loop().time)
                readings = []
        return readings, chunk_size


async def _stop(task: asyncio.Task[None] | None) -> None:
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _subscription_timing(interval_ms: float, keepalive_s: float) -> SubscriptionTiming:
    """``subscription_timing`` with a keep-alive period other than its default (tests use a short one, so the
    silence watchdog fires in seconds); the lifetime stays at least three keep-alives, as Part 4 requires."""
    timing = subscription_timing(interval_ms)
    if keepalive_s == SUBSCRIPTION_KEEPALIVE_S:
        return timing
    keepalive_count = max(1, math.ceil(keepalive_s * 1000.0 / timing.publishing_interval_ms))
    return SubscriptionTiming(
        timing.publishing_interval_ms, keepalive_count, max(3 * keepalive_count, timing.lifetime_count)
    )
