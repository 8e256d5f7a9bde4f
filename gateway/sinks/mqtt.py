"""MQTT sink: one paho-mqtt 2.2 client bridged to asyncio, QoS1 with a bounded in-flight window.

Threading model (why not socket callbacks): paho's own network thread (``loop_start``) runs the socket,
keep-alive and the automatic reconnect with exponential backoff (``reconnect_delay_set``). With the
socket-callback integration the reconnect loop would be ours to write and test. paho callbacks run in
that thread and touch nothing but ``loop.call_soon_threadsafe``; every piece of sink state lives in the
event-loop thread, so it needs no locks.

Delivery contract:

* ``publish`` / ``publish_many`` return once a message is *accepted into the in-flight window* (handed
  to paho), not when it is delivered. At most ``max_inflight`` data messages are unacknowledged at any
  time; a caller beyond that waits. That is the backpressure: memory stays bounded while the broker is
  slow or away.
* A QoS1 message counts as ``delivered`` only when its PUBACK arrives (``on_publish`` with its mid).
  ``MQTTMessageInfo.wait_for_publish`` is never used: it raises for messages queued while offline even
  after they were delivered (notes/libraries.md §3.2).
* While disconnected, QoS1 messages stay in paho's memory queue and are resent after the automatic
  reconnect; once the window is full, ``publish`` waits for the reconnection. QoS0 messages are dropped
  and counted in ``failed``.
* ``unacked()`` returns the data messages handed to paho that have no PUBACK yet, in publish order.
  After ``close`` it is exactly what may not have reached the broker: give it to the spool. It can
  contain messages the broker did get (PUBACK lost with the link), so delivery is at-least-once and
  subscribers drop duplicates by ``seq``. Messages published with a ``spool_id`` (replays from the
  spool) are left out: they are still in the spool; their PUBACK goes to ``on_spool_ack`` instead.
* For the store-and-forward stage: ``offer_many`` hands over live messages only while connected and
  only while a window slot frees up within a bound, and returns how many it took (the rest goes to the
  spool); ``try_replay`` takes one spooled message if a slot is free right now, so replays never make
  live data wait.

Failover: ``failover`` lists more brokers (host, port). After ``failover_after`` failed connection
attempts in a row, paho's reconnect loop moves on to the next broker of the list (round robin); the
switch is made inside paho's thread between attempts, where the connection is closed.

Availability (Zigbee2MQTT style): the will is ``will_payload`` retained on ``will_topic``; on every
(re)connect the sink publishes ``online_payload`` retained there, then republishes every message
registered with ``set_retained`` (equipment ``_status`` / ``_meta``), so a broker that restarted without
persistence gets them back. ``close`` publishes ``will_payload`` on purpose before a normal DISCONNECT
(which makes the broker discard the will). Control messages (status, retained) are always QoS1
retained, use no window slot and are not counted in ``published`` / ``delivered`` / ``failed``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import SinkError

MqttProtocol = Literal["5", "3.1.1"]

DEFAULT_CLOSE_TIMEOUT_S = 5.0
# Budget for sending DISCONNECT and joining paho's thread after the drain in close().
_TEARDOWN_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttOptions:
    """How to reach the broker and how to behave there. Built by the runtime from the tag map ``mqtt:``.

    ``online_payload`` is published retained on ``will_topic`` at every (re)connect; a callable is called
    each time (so it can carry a fresh ``since``). ``will_payload`` is the MQTT will and also what
    ``close`` publishes. ``max_queued`` caps paho's own message queue (window + control messages); it is
    a safety net, the window keeps data far below it. Times are seconds.
    """

    host: str
    port: int = 1883
    client_id: str
    will_topic: str
    will_payload: bytes
    online_payload: bytes | Callable[[], bytes]
    tls: bool = False
    ca_file: str | None = None  # None with tls: the system CA store
    cert_file: str | None = None  # client certificate for mTLS
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never logged, never in repr
    protocol: MqttProtocol = "5"
    keepalive_s: int = 30
    qos: Literal[0, 1] = 1
    max_inflight: int = 20  # mosquitto advertises ReceiveMaximum 20; a larger window was slower (notes §3.4)
    max_queued: int = 10_000
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 10.0
    connect_timeout_s: float = 5.0
    failover: tuple[tuple[str, int], ...] = ()
    failover_after: int = 3

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.host:
            problems.append("host is empty")
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not in 1..65535")
        if self.protocol not in ("5", "3.1.1"):
            problems.append(f"protocol {self.protocol!r} is not '5' or '3.1.1'")
        if self.qos not in (0, 1):
            problems.append(f"qos {self.qos} is not 0 or 1")
        if self.keepalive_s < 1:
            problems.append("keepalive_s must be >= 1")
        if self.max_inflight < 1:
            problems.append("max_inflight must be >= 1")
        if self.max_queued <= self.max_inflight:
            problems.append("max_queued must be larger than max_inflight (it also holds status messages)")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            problems.append("need 0 < reconnect_min_s <= reconnect_max_s")
        if self.connect_timeout_s <= 0:
            problems.append("connect_timeout_s must be > 0")
        if self.failover_after < 1:
            problems.append("failover_after must be >= 1")
        for host, port in self.failover:
            if not host or not 0 < port < 65536:
                problems.append(f"failover broker {host!r}:{port} is not a host and a port in 1..65535")
        if self.password is not None and self.username is None:
            problems.append("password given without username")
        if not self.tls and (self.ca_file or self.cert_file or self.key_file):
            # Never connect in plain text to a broker the caller meant to reach over TLS.
            problems.append("ca_file/cert_file/key_file given without tls")
        if self.key_file and not self.cert_file:
            problems.append("key_file given without cert_file")
        topic_problem = publish_topic_problem(self.will_topic)
        if topic_problem:
            problems.append(f"will_topic: {topic_problem}")
        if problems:
            raise ValueError("invalid MQTT options: " + "; ".join(problems))


def publish_topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to, or None. Checked up front so a bad topic fails at the caller."""
    if not topic:
        return "empty topic"
    if "+" in topic or "#" in topic:
        return f"topic {topic!r} contains a wildcard"
    if "\x00" in topic:
        return f"topic {topic!r} contains NUL"
    if len(topic.encode("utf-8")) > 65535:
        return "topic longer than 65535 bytes"
    return None


@dataclass(slots=True)
class _InFlight:
    """A QoS1 message handed to paho and not yet acknowledged; ``acked`` resolves to True on a good PUBACK."""

    topic: str
    payload: bytes
    control: bool  # status / retained restore: no window slot, not counted
    acked: asyncio.Future[bool]
    spool_id: int | None = None  # a replay from the spool: its PUBACK goes to on_spool_ack


class _Window:
    """The in-flight window: a counting semaphore with a non-blocking ``try_acquire``.

    ``release`` hands the slot straight to the oldest waiter, so a slot freed by a PUBACK goes to the
    publisher that waited longest and ``try_acquire`` (replays) cannot jump the queue.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_acquire(self) -> bool:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(slot)

    def release(self) -> None:
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)
                return
        self._free += 1


class _PahoErrorRelay(logging.Handler):
    """Passes paho's ERROR log lines (e.g. ``failed to receive on socket: <ssl error>``) to ``relay``.

    Runs in paho's thread. Used on a private logger at ERROR level, so paho's per-packet DEBUG lines
    are filtered by ``isEnabledFor`` before they are even formatted.
    """

    def __init__(self, relay: Callable[[str], None]) -> None:
        super().__init__(logging.ERROR)
        self._relay = relay

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # never raise into paho's thread
            self._relay(record.getMessage())


class MqttSink:
    """One MQTT connection for the whole gateway. Use as ``async with MqttSink(options) as sink: ...``.

    Entering starts connecting in the background and returns at once; use ``wait_connected`` to wait.
    All methods must be called from the event loop that entered the context.
    """

    def __init__(self, options: MqttOptions, *, on_spool_ack: Callable[[int, bool], None] | None = None) -> None:
        self._options = options
        self._on_spool_ack = on_spool_ack
        self._brokers: tuple[tuple[str, int], ...] = ((options.host, options.port), *options.failover)
        self._broker_index = 0  # paho's thread only (see _paho_failover)
        self._failed_attempts = 0  # paho's thread only
        self._current_broker = f"{options.host}:{options.port}"  # event-loop thread's view, for the logs
        self._log = structlog.get_logger("cellgate.mqtt").bind(
            broker=f"{options.host}:{options.port}", client_id=options.client_id
        )
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._window = _Window(options.max_inflight)
        self._in_flight: dict[int, _InFlight] = {}  # mid -> message; insertion order = publish order
        self._retained: dict[str, bytes] = {}
        self._connected = False
        self._connected_event = asyncio.Event()
        self._disconnected_event = asyncio.Event()
        self._disconnected_event.set()
        self._closing = False
        self._closed = False
        self._last_connect_problem: str | None = None
        self._last_paho_error: str | None = None  # paho's last ERROR log line, e.g. a TLS alert on read
        self._connack_refused = False  # the disconnect that follows a refused CONNACK is already reported
        self._rejection_logged = False  # one log line per connection for refused PUBACKs
        self._qos0_drop_logged = False  # one log line per outage for dropped QoS0 messages
        self._published = 0
        self._control_delivered = 0
        self._delivered = 0
        self._failed = 0

    # ------------------------------------------------------------------------------------ state

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected

    @property
    def published(self) -> int:
        """Data messages accepted by paho (QoS1: into the in-flight window)."""
        return self._published

    @property
    def delivered(self) -> int:
        """QoS1: data messages with a successful PUBACK. QoS0: data messages written to the socket."""
        return self._delivered

    @property
    def control_delivered(self) -> int:
        """Control messages (online status, retained ``_status`` / ``_meta``) acknowledged by the broker."""
        return self._control_delivered

    @property
    def failed(self) -> int:
        """Data messages lost: QoS0 while disconnected, refused by the broker (PUBACK reason >= 0x80),
        refused by paho (full queue, bad topic)."""
        return self._failed

    @property
    def in_flight(self) -> int:
        """Data messages handed to paho and not yet acknowledged (<= ``max_inflight``)."""
        return sum(1 for message in self._in_flight.values() if not message.control)

    def unacked(self) -> list[tuple[str, bytes]]:
        """Data messages (topic, payload) handed to paho without a PUBACK yet, oldest first.

        After ``close`` this is what the spool must keep. Control messages are not included: they are
        rebuilt from ``set_retained`` and the options at the next start.
        """
        return [(m.topic, m.payload) for m in self._in_flight.values() if not m.control and m.spool_id is None]

    async def wait_connected(self, timeout_s: float) -> None:
        """Return once connected; raise SinkError (with the last connect error) after ``timeout_s``."""
        if self._connected:
            return
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout_s)
        except TimeoutError as exc:
            detail = f" (last error: {self._last_connect_problem})" if self._last_connect_problem else ""
            raise SinkError(
                f"not connected to MQTT broker {self._options.host}:{self._options.port} after {timeout_s:g} s{detail}"
            ) from exc

    async def until_connected(self) -> None:
        """Wait, without a time limit, until the sink is connected."""
        await self._connected_event.wait()

    # ------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> MqttSink:
        if self._client is not None or self._closed:
            raise SinkError("MqttSink can be entered only once")
        self._loop = asyncio.get_running_loop()
        client = self._build_client()
        self._client = client
        client.loop_start()
        self._log.info("mqtt_starting", protocol=self._options.protocol, tls=self._options.tls)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(DEFAULT_CLOSE_TIMEOUT_S)

    def _build_client(self) -> mqtt.Client:
        o = self._options
        v5 = o.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else True,
        )
        client.suppress_exceptions = True  # see the note above the paho callbacks
        # paho reports socket read errors only through its logger; with TLS 1.3 that is where a broker
        # rejecting our client certificate (mTLS) shows up: the handshake completes on our side and
        # the alert arrives on the first read. A Logger built directly stays out of logging's global
        # tree, so it is this client's alone.
        paho_log = logging.Logger("cellgate.mqtt.paho", logging.ERROR)
        paho_log.propagate = False
        paho_log.addHandler(_PahoErrorRelay(lambda line: self._to_loop(self._note_paho_error, line)))
        client.enable_logger(paho_log)
        try:
            if o.username is not None:
                client.username_pw_set(o.username, o.password)
            if o.tls:
                client.tls_set(ca_certs=o.ca_file, certfile=o.cert_file, keyfile=o.key_file)
            client.will_set(o.will_topic, o.will_payload, qos=1, retain=True)
            # paho annotates the delays as int but only does float arithmetic and time.sleep with them
            # (Client._reconnect_wait), so sub-second delays work.
            client.reconnect_delay_set(min_delay=cast(int, o.reconnect_min_s), max_delay=cast(int, o.reconnect_max_s))
            client.max_inflight_messages_set(o.max_inflight)
            client.max_queued_messages_set(o.max_queued)
            client.connect_timeout = o.connect_timeout_s
            client.on_connect = self._paho_on_connect
            client.on_connect_fail = self._paho_on_connect_fail
            client.on_disconnect = self._paho_on_disconnect
            client.on_publish = self._paho_on_publish
            if v5:
                client.connect_async(o.host, o.port, keepalive=o.keepalive_s, clean_start=True)
            else:
                client.connect_async(o.host, o.port, keepalive=o.keepalive_s)
        except (OSError, ValueError) as exc:  # ssl.SSLError and FileNotFoundError are OSErrors
            raise SinkError(f"cannot set up the MQTT client for {o.host}:{o.port}: {exc}") from exc
        return client

    async def close(self, timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Publish the offline status, wait up to ``timeout_s`` for outstanding PUBACKs, disconnect.

        While disconnected with unacknowledged data it waits up to ``timeout_s`` for the reconnect to
        drain it; disconnected with nothing in flight it returns at once. Returns within about
        ``timeout_s`` + 2 s. Idempotent. Whatever is still unacknowledged afterwards
        is in ``unacked()``. Publishers waiting for a window slot get SinkError.
        """
        client = self._client
        if client is None or self._closing:
            return
        self._closing = True
        if self._connected or self.in_flight:
            self._publish_control(self._options.will_topic, self._options.will_payload)
            drained = await self.flush(timeout_s)
        else:
            # Not connected and nothing to drain: waiting would only cost the whole budget. A lost
            # connection already made the broker publish the will.
            drained = True
        self._closed = True
        # Wake every publisher blocked on the window: each one finds the sink closed, passes the permit
        # on and raises.
        self._window.release()

        was_connected = self._connected
        client.disconnect()  # normal DISCONNECT: the broker discards the will; we already said "offline"
        if was_connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._disconnected_event.wait(), _TEARDOWN_TIMEOUT_S)
        try:
            # loop_stop joins paho's thread; it may be inside a blocking TCP connect of up to
            # connect_timeout_s, so never join on the event loop thread.
            await asyncio.wait_for(asyncio.to_thread(client.loop_stop), _TEARDOWN_TIMEOUT_S)
        except TimeoutError:
            self._log.warning("mqtt_thread_still_running")  # daemon thread; ends with the process
        self._set_disconnected()
        self._log.info(
            "mqtt_closed",
            drained=drained,
            published=self._published,
            delivered=self._delivered,
            failed=self._failed,
            unacked=self.in_flight,
        )

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every message handed to paho so far is acknowledged; False on timeout."""
        waiting = [m.acked for m in self._in_flight.values() if not m.acked.done()]
        if not waiting:
            return True
        _done, pending = await asyncio.wait(waiting, timeout=timeout_s)
        return not pending

    # ------------------------------------------------------------------------------- publishing

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Hand one data message to the broker connection at the configured QoS.

        QoS1: waits for a free slot in the in-flight window (also while disconnected), then returns; the
        PUBACK is counted later in ``delivered``. QoS0: never waits; dropped and counted in ``failed``
        while disconnected. Raises SinkError when the sink is closed or paho refuses the message.
        """
        self._check_open()
        if self._options.qos == 0:
            self._publish_qos0(topic, payload, retain)
            return
        await self._acquire_slot()
        self._publish_qos1(topic, payload, retain)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """``publish`` for many (topic, payload) pairs, in order, not retained."""
        self._check_open()
        for topic, payload in messages:
            if self._options.qos == 0:
                self._publish_qos0(topic, payload, False)
            else:
                await self._acquire_slot()
                self._publish_qos1(topic, payload, False)

    async def offer_many(self, messages: Sequence[tuple[str, bytes]], *, wait_s: float) -> int:
        """Hand over ``messages`` in order while connected; return how many were taken.

        Stops at the first message that finds the sink disconnected, or that waits longer than ``wait_s``
        for a window slot; the caller spools that one and the rest. QoS0 takes everything while
        connected. Raises SinkError when the sink is closed or paho refuses a message.
        """
        self._check_open()
        window = self._window
        for taken, (topic, payload) in enumerate(messages):
            if not self._connected:
                return taken
            if self._options.qos == 0:
                self._publish_qos0(topic, payload, False)
                continue
            if not window.try_acquire():
                try:
                    async with asyncio.timeout(wait_s):
                        await self._acquire_slot()
                except TimeoutError:
                    return taken
                if not self._connected:
                    window.release()
                    return taken
            self._publish_qos1(topic, payload, False)
        return len(messages)

    def try_replay(self, spool_id: int, topic: str, payload: bytes) -> bool:
        """Publish one spooled message if connected and a window slot is free now; False otherwise.

        Its PUBACK (or refusal) is reported to ``on_spool_ack(spool_id, ok)``. Replays never wait for a
        slot, so live data always gets the window first.
        """
        self._check_open()
        if not self._connected:
            return False
        if self._options.qos == 0:
            self._publish_qos0(topic, payload, False)
            if self._on_spool_ack is not None:
                self._on_spool_ack(spool_id, True)
            return True
        if not self._window.try_acquire():
            return False
        self._publish_qos1(topic, payload, False, spool_id=spool_id)
        return True

    def clear_retained(self, topic: str) -> None:
        """Stop restoring ``topic`` and delete its retained message at the broker (an empty retained payload)."""
        self._check_open()
        self._retained.pop(topic, None)
        if self._connected:
            self._publish_control(topic, b"")

    def set_retained(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` retained on ``topic`` now (if connected) and again after every reconnect.

        For equipment ``_status`` and ``_meta``; the latest payload per topic is kept. While disconnected
        (or before entering the context) it is only stored and goes out with the next connect.
        """
        problem = publish_topic_problem(topic)
        if problem:
            raise SinkError(f"cannot publish retained message: {problem}")
        if self._closing:
            raise SinkError("MqttSink is closed")
        self._retained[topic] = payload
        if self._connected:
            self._publish_control(topic, payload)

    def _running(self) -> tuple[mqtt.Client, asyncio.AbstractEventLoop]:
        if self._client is None or self._loop is None:
            raise SinkError("MqttSink used outside its 'async with' block")
        return self._client, self._loop

    def _check_open(self) -> None:
        if self._client is None:
            raise SinkError("MqttSink used outside its 'async with' block")
        if self._closing:
            raise SinkError("MqttSink is closed")

    async def _acquire_slot(self) -> None:
        await self._window.acquire()
        if self._closing:
            # Pass the permit on so the next blocked publisher also wakes up and sees the closed sink.
            self._window.release()
            raise SinkError("MqttSink is closed")

    def _publish_qos1(self, topic: str, payload: bytes, retain: bool, *, spool_id: int | None = None) -> None:
        """Hand one message to paho; the caller holds a window slot, which the PUBACK gives back."""
        client, loop = self._running()
        try:
            info = client.publish(topic, payload, qos=1, retain=retain)
        except (ValueError, TypeError) as exc:
            self._window.release()
            self._failed += 1
            raise SinkError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._window.release()
            self._failed += 1
            raise SinkError(f"paho message queue full ({self._options.max_queued}); message not accepted")
        # rc is SUCCESS, or NO_CONN: paho keeps the message and sends it after the reconnect (notes §3.2).
        # The PUBACK callback is delivered through call_soon_threadsafe, so it cannot run before this
        # registration, which happens without yielding to the loop.
        self._in_flight[info.mid] = _InFlight(topic, payload, False, loop.create_future(), spool_id)
        self._published += 1

    def _publish_qos0(self, topic: str, payload: bytes, retain: bool) -> None:
        client, _loop = self._running()
        if not self._connected:
            self._failed += 1
            if not self._qos0_drop_logged:
                self._qos0_drop_logged = True
                self._log.warning("mqtt_dropping_qos0", reason="disconnected")
            return
        try:
            info = client.publish(topic, payload, qos=0, retain=retain)
        except (ValueError, TypeError) as exc:
            self._failed += 1
            raise SinkError(f"cannot publish to {topic!r}: {exc}") from exc
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._published += 1
        else:
            self._failed += 1  # the link went down before paho noticed it was gone

    def _publish_control(self, topic: str, payload: bytes) -> None:
        """QoS1 retained status message outside the window (bounded: one per registered topic)."""
        client, loop = self._running()
        try:
            info = client.publish(topic, payload, qos=1, retain=True)
        except (ValueError, TypeError) as exc:  # topics are checked on entry, so this is a bug
            self._log.error("mqtt_status_publish_failed", topic=topic, error=str(exc))
            return
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._log.warning("mqtt_status_publish_failed", topic=topic, error="paho queue full")
            return
        self._in_flight[info.mid] = _InFlight(topic, payload, True, loop.create_future())

    # --------------------------------------------------------- paho callbacks (paho's thread)
    # They only copy plain values to the loop and must never raise: an exception escaping a callback
    # ends paho's network thread for good (seen with max_inflight_messages_set in on_connect), which
    # is why suppress_exceptions is also on.

    def _to_loop(self, handler: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # event loop already closed: nobody is listening
            loop.call_soon_threadsafe(handler, *args)

    def _paho_on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, props: Any
    ) -> None:
        receive_maximum: int | None = getattr(props, "ReceiveMaximum", None)  # MQTT 5 CONNACK only
        if not reason.is_failure:
            self._failed_attempts = 0
        self._to_loop(self._on_connect, reason.is_failure, str(reason), flags.session_present, receive_maximum)

    def _paho_on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this from inside its `except OSError:` block, so the exception is still current;
        # it is the only way to learn why (refused, DNS, TLS verification ...).
        exc = sys.exc_info()[1]
        self._to_loop(self._note_connect_problem, f"{type(exc).__name__}: {exc}" if exc else "connect failed")
        self._paho_failover(client)

    def _paho_failover(self, client: mqtt.Client) -> None:
        """After ``failover_after`` failed attempts in a row, point paho's reconnect at the next broker.

        Runs in paho's thread between two attempts of its reconnect loop; ``connect_async`` only resets
        the target (the loop makes the next attempt after its backoff wait).
        """
        if len(self._brokers) < 2:
            return
        self._failed_attempts += 1
        if self._failed_attempts < self._options.failover_after:
            return
        self._failed_attempts = 0
        self._broker_index = (self._broker_index + 1) % len(self._brokers)
        host, port = self._brokers[self._broker_index]
        try:
            if self._options.protocol == "5":
                client.connect_async(host, port, keepalive=self._options.keepalive_s, clean_start=True)
            else:
                client.connect_async(host, port, keepalive=self._options.keepalive_s)
        except ValueError:  # options are validated, so this is a bug; keep the old broker
            return
        self._to_loop(self._note_failover, host, port)

    def _paho_on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Any,
    ) -> None:
        self._to_loop(self._on_disconnect, str(reason), flags.is_disconnect_packet_from_server)

    def _paho_on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any) -> None:
        self._to_loop(self._on_ack, mid, reason.is_failure, str(reason))

    # ------------------------------------------------------- handlers (event-loop thread)

    def _on_connect(self, failed: bool, reason: str, session_present: bool, receive_maximum: int | None) -> None:
        if failed:
            self._connack_refused = True
            self._note_connect_problem(f"CONNACK refused: {reason}")
            return
        self._last_connect_problem = None
        self._rejection_logged = False
        self._qos0_drop_logged = False
        self._connected = True
        self._connected_event.set()
        self._disconnected_event.clear()
        self._log.info(
            "mqtt_connected",
            broker=self._current_broker,
            protocol=self._options.protocol,
            session_present=session_present,
        )
        if receive_maximum is not None and receive_maximum < self._options.max_inflight:
            # paho ignores the broker's Receive Maximum (and cannot change its window while connected);
            # a window above it can make brokers disconnect with 0x93. Lower max_inflight in the config.
            self._log.warning(
                "mqtt_window_exceeds_receive_maximum",
                max_inflight=self._options.max_inflight,
                receive_maximum=receive_maximum,
            )
        if self._closing:
            return  # close() publishes the offline status itself
        # A control message still pending from an earlier connection is resent by paho itself, in
        # order; publishing it again would only pile up copies while the link flaps.
        pending = {m.topic for m in self._in_flight.values() if m.control}
        if self._options.will_topic not in pending:
            online = self._online_payload()
            if online is not None:
                self._publish_control(self._options.will_topic, online)
        for topic, payload in self._retained.items():
            if topic not in pending:
                self._publish_control(topic, payload)

    def _online_payload(self) -> bytes | None:
        online = self._options.online_payload
        if not callable(online):
            return online
        try:
            return online()
        except Exception as exc:  # a bug in the caller's callback must not stop the retained restore
            self._log.error("mqtt_online_payload_failed", error=repr(exc))
            return None

    def _on_disconnect(self, reason: str, by_broker: bool) -> None:
        paho_error, self._last_paho_error = self._last_paho_error, None
        if not self._connected:
            # The link was lost before any CONNACK: the TCP/TLS connect itself succeeded (failures there
            # come through on_connect_fail), then the broker hung up, e.g. a TLS 1.3 broker refusing
            # our client certificate (mTLS). Without this the sink would retry silently forever.
            if self._connack_refused:
                self._connack_refused = False  # paho hangs up after a refused CONNACK; reported there
            elif not self._closing:
                self._note_connect_problem(f"connection lost before CONNACK: {paho_error or reason}")
            return
        self._set_disconnected()
        if self._closing:
            self._log.info("mqtt_disconnected", reason="closed")
        else:
            self._log.warning("mqtt_disconnected", reason=reason, by_broker=by_broker)

    def _set_disconnected(self) -> None:
        self._connected = False
        self._connected_event.clear()
        self._disconnected_event.set()

    def _note_failover(self, host: str, port: int) -> None:
        self._current_broker = f"{host}:{port}"
        self._log.warning("mqtt_failover", next_broker=f"{host}:{port}", after_attempts=self._options.failover_after)

    def _note_paho_error(self, line: str) -> None:
        self._last_paho_error = line

    def _note_connect_problem(self, problem: str) -> None:
        # Logged when it changes, not at every backoff attempt of a long outage.
        if problem != self._last_connect_problem:
            self._last_connect_problem = problem
            self._log.warning("mqtt_connect_failed", error=problem)

    def _on_ack(self, mid: int, failed: bool, reason: str) -> None:
        message = self._in_flight.pop(mid, None)
        if message is None:
            if self._options.qos == 0:
                self._delivered += 1  # QoS0: paho reports the socket write; there is no PUBACK
            return
        if not message.acked.done():
            message.acked.set_result(not failed)
        if message.control:
            if not failed:
                self._control_delivered += 1
            if failed:
                self._log.warning("mqtt_status_rejected", topic=message.topic, reason=reason)
            return
        self._window.release()
        if message.spool_id is not None and self._on_spool_ack is not None:
            self._on_spool_ack(message.spool_id, not failed)
        if failed:  # MQTT 5 PUBACK reason >= 0x80, e.g. "Not authorized" from an ACL
            self._failed += 1
            if not self._rejection_logged:
                self._rejection_logged = True
                self._log.warning("mqtt_publish_rejected", topic=message.topic, reason=reason)
        else:
            self._delivered += 1
