"""The MQTT connection: our own small asyncio MQTT client (3.1.1 / 5.0), QoS1 with a bounded in-flight window.

It runs on the event loop with no thread: every PUBACK of one read is handled in one loop (a read of plain
PUBACKs only, the usual answer to a window round, without a decoded packet each), and the PUBLISH
packets of one ``publish_many`` / ``offer_many`` call leave in one ``transport.write``. Window slots freed by a
few PUBACKs wait up to 1 ms for more (half the window goes out at once), so a small window (a broker's
Receive Maximum of 20) runs in rounds of one larger write, not a write per PUBACK read. It makes no task,
future or log line per message. Packet encoding and decoding are in ``gateway/mqtt/wire.py`` (pure,
table-tested); this module is the I/O shell and the bookkeeping. (Why not paho-mqtt, and what each costs: README
"How it works" and "Performance".)

Delivery contract:

* ``publish`` / ``publish_many`` return once a message is *accepted into the in-flight window*, not
  when it is delivered. At most ``max_inflight`` data messages are unacknowledged at any time (with
  MQTT 5, also at most the broker's Receive Maximum: window = min(max_inflight, Receive Maximum); a window
  above 50 is lowered while PUBACKs queue at the broker, gateway/mqtt/pacing.py); a caller beyond that waits.
  That is the backpressure: memory stays bounded while the broker is slow or away.
* A QoS1 message counts as ``delivered`` only when its PUBACK arrives (MQTT 5: reason code < 0x80).
* Refused: a message larger than the maximum packet size (``max_packet_size``, or a smaller one from
  the MQTT 5 CONNACK) is never sent; one with a PUBACK reason >= 0x80 is refused by the broker. Either
  goes once to ``on_refused(topic, payload, reason, handle)`` (``reason``: ``refusal_reason``'s
  token), is counted in ``refused_by_reason`` (data also in ``failed``) and logged once per reason; its
  window slot is freed, so it never blocks the others. A refused control message leaves the retained
  set, so it is not sent again at every connect.
* Poison messages: a broker that cannot announce its limit (MQTT 3.1.1) hangs up on a packet over it, and the
  message would go first again at every connect, forever. A loss of an established connection qualifies when (1)
  it ended less than ``_STABLE_CONNECTION_S`` after its CONNACK, (2) the broker ended it (end of stream, a reset,
  or an MQTT 5 DISCONNECT with a reason that can be about a message, ``_MESSAGE_DISCONNECT_REASONS``), not the
  client (keep alive, PUBACK deadline, protocol error, close), and (3) messages sent on it are unacknowledged: its
  suspect is the largest of them (whole PUBLISH; the first sent of equal ones). When ``_POISON_CLOSES`` (3)
  qualifying losses in a row have the same suspect (the same handed-over message, not just the same topic; data or
  control alike: a retained message still unacknowledged is resent as the same one, while the online status and
  session births are new ones at every connect), it is refused with reason ``broker_closed_connection`` (as above:
  ``on_refused`` once, counted, logged once with its topic and packet size) before the reconnect, and the others
  go on. The count starts again at a loss that does not qualify or has another suspect, at a connection that lasts
  ``_STABLE_CONNECTION_S``, at a failed connect attempt (a restarting broker refuses connections between its
  closes), and at the PUBACK of a message at least as large as the suspect (size is then not why). Learning the
  limit: once a message of packet size P (> ``_MIN_INFERRED_LIMIT``) was refused so and a smaller message is
  acknowledged after it, P - 1 becomes an inferred maximum packet size for the rest of the sink's life
  (``mqtt_packet_limit_inferred``): messages of P bytes or more are refused before sending (``packet_too_large``),
  without three reconnects each. One just below P may still be too large: from then on a suspect larger than every
  message acknowledged (tracked once suspicion starts) is refused at its first qualifying loss, as the broker is
  known to hang up on size, and the limit goes down to it.
* While disconnected, QoS1 messages stay in the in-flight set; after the reconnect they are sent
  again in publish order, ahead of anything newer. Every connection is a new session (Clean Start 1),
  so the resend is a first delivery on it: DUP 0. Once the window is full, ``publish`` waits for the
  reconnection. QoS0 messages are dropped while disconnected and counted in ``failed``.
* ``unacked()`` returns the data messages handed over without a PUBACK yet, in publish order. After
  ``close`` it is exactly what may not have reached the broker: give it to the spool. It can contain
  messages the broker did get (PUBACK lost with the link), so delivery is at-least-once and subscribers
  drop duplicates by ``seq``. Messages published with a ``handle`` (``try_publish``) are left out:
  their caller tracks them (store-and-forward: they are still in the spool); their PUBACK goes to
  ``on_ack(handle)`` and a refusal to ``on_refused`` with the handle.
* For the store-and-forward stage: ``offer_many`` hands over live messages only while connected and
  only while a window slot frees up within a bound, and returns how many it took (the rest goes to the
  spool); ``try_publish`` takes one message with a handle if a slot is free right now, so replays never
  make live data wait. The client knows nothing of the spool: a handle is an opaque number of the caller's.

Connection: one background task connects (TCP, TLS, CONNECT/CONNACK within ``connect_timeout_s``; a
CONNACK that breaks the MQTT 5 rules is a failed attempt, see ``wire.connack_problem``), serves the
connection and reconnects with exponential backoff and jitter between ``reconnect_min_s`` and
``reconnect_max_s``. Serving: PINGREQ after ``keepalive_s`` without traffic (the broker's Server Keep
Alive replaces it), no PINGRESP within min(keepalive, ``puback_timeout_s``) means a dead link; the
oldest unacknowledged message waiting ``puback_timeout_s`` means a stuck broker (``mqtt_stuck``); both
drop the link. A connection lost within ``_STABLE_CONNECTION_S`` of its CONNACK counts as a failed
attempt, so the backoff keeps growing against a broker that accepts and hangs up. Failover: ``failover``
lists more brokers (host, port); after ``failover_after`` failed attempts in a row the next broker of
the list is tried (round robin). Connect errors and short-lived connections are logged once per change,
then summed up every ``repeat_log_s``; the last connect error is kept for ``wait_connected``'s message.

Availability (Zigbee2MQTT style): the will is ``will_payload`` retained QoS1 on ``will_topic``; on every
(re)connect the sink publishes ``online_payload`` retained there, then republishes every message
registered with ``set_retained`` (equipment ``_status`` / ``_meta``), so a broker that restarted without
persistence gets them back; one still unacknowledged from the last connection is resent, not doubled.
``close`` publishes ``will_payload`` on purpose before a normal DISCONNECT (which makes the broker
discard the will). Control messages (status, retained) are always QoS1 retained, use no window slot and
are not counted in ``published`` / ``delivered`` / ``failed``; they do count against the broker's
Receive Maximum, which is enforced for everything sent (beyond it, messages wait in order in memory).

Session hooks (``options.session``, Sparkplug): after every CONNACK its ``births`` go first (QoS 1 control, not
retained), then what the last connection left unacknowledged, passed through ``session.resend`` (renumbered, or
dropped when the births supersede it); every data payload goes through ``session.stamp`` as it is handed over, so
numbering follows the wire order; a message refused as too large gives its number back (``session.unstamp``), so
numbering stays contiguous on the wire. ``stamp`` (and ``resend``) may also drop a message (None: settled as
delivered, unsent) or refuse it (``SessionRefusal``: to ``on_refused`` with the session's reason, as above, unsent).
``rebirth`` sends the births again on the live connection, and ``send_session_messages`` puts other session
messages into the wire order (a DBIRTH ahead of replayed data).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import ssl
import time
from collections.abc import Callable, Sequence
from typing import cast

import structlog
from tenacity import RetryCallState

from gateway.backoff import MqttBackoff, Streak, forever
from gateway.errors import SinkError
from gateway.mqtt.options import MqttOptions, SessionHooks, SessionRefusal, publish_topic_problem
from gateway.mqtt.pacing import DelayWindow
from gateway.mqtt.wire import (
    DEFAULT_RECEIVE_MAXIMUM,
    MAX_PACKET_ID,
    NO_PROPERTIES,
    PACKET_TOO_LARGE,
    PINGREQ_BYTES,
    PROTOCOL_ERROR,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    MalformedPacketError,
    Packet,
    PingResp,
    Properties,
    Property,
    ProtocolVersion,
    Puback,
    Publish,
    PublishEncoder,
    Suback,
    Subscribe,
    Will,
    connack_problem,
    encode_connect,
    encode_disconnect,
    encode_puback,
    encode_subscribe,
    find_property,
    plain_puback_ids,
    reason_text,
    refusal_reason,
    shorten,
    topic_field,
)
from gateway.sinks.base import Handle
from gateway.vocabulary import QoS

DEFAULT_CLOSE_TIMEOUT_S = 5.0
# Budget for DISCONNECT, the end of the connection and the connection task after the drain in close().
_TEARDOWN_TIMEOUT_S = 2.0
# The broker only sends us small packets (CONNACK, PUBACK, PINGRESP, DISCONNECT); anything announced
# larger is a broken stream, and this bounds what the decoder buffers. MQTT 5 CONNECT announces it as
# our Maximum Packet Size (§3.1.2.11.4), so a broker never sends more [MQTT-3.1.2-24].
_MAX_INCOMING_PACKET = 1 << 20
# A connection that ends sooner than this after its CONNACK counts as a failed attempt for the backoff:
# a broker (or a proxy) that accepts and closes at once must not get a reconnect every reconnect_min_s.
_STABLE_CONNECTION_S = 5.0
# Poison detection (module docstring, "Poison messages"): this many short connections in a row, each closed by the
# broker with the same message as the largest sent and unacknowledged, make that message refused.
_POISON_CLOSES = 3
# Refusal code of a poison message: outside the one-byte MQTT reason codes, so it never clashes with a PUBACK's.
_BROKER_CLOSED_CODE = 0x100
BROKER_CLOSED_CONNECTION = "broker_closed_connection"
_SESSION_REFUSED_CODE = 0x101
"""Ours, beyond MQTT's one-byte codes: a refusal by the session hooks (``SessionRefusal``, which names its reason)."""
# A limit inferred from a poison message is never set below this (mqtt.max_packet_size's own minimum): a small
# message the broker hangs up on is about its content, not its size.
_MIN_INFERRED_LIMIT = 1024
# MQTT 5 DISCONNECT reasons (§3.14.2.1) that can be about one message sent; the others ("Session taken over",
# "Server shutting down", "Server busy", "Keep Alive timeout", ...) never make a message a suspect.
_MESSAGE_DISCONNECT_REASONS = frozenset({0x80, 0x81, 0x82, 0x83, 0x87, 0x90, 0x95, 0x99, 0x9A, 0x9B})
_READ_BUFFER_BYTES = 64 * 1024  # one read: up to 16,384 PUBACKs
_TOPIC_CACHE_ENTRIES = 65_536  # encoded topics kept; ~100 bytes each
# Slots freed by PUBACKs are handed out once half the window (at most _REFILL_MAX_SLOTS) is free, or after
# _REFILL_HOLD_S: fewer, larger writes per PUBACK round (see MqttSink._free_slots).
_REFILL_HOLD_S = 0.001
_REFILL_MAX_SLOTS = 32


class _Repeats:
    """Rate limit for a line that repeats while a link stays down or flaps: logged when its text changes;
    repeats of the same text are only counted and summed up at most every ``every_s`` seconds."""

    __slots__ = ("every_s", "last", "repeating", "repeats", "since")

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.last: str | None = None
        self.repeating = False  # the last text came again at least once
        self.repeats = 0  # since the last line
        self.since = 0.0  # time of the last line

    def note(self, text: str, now: float) -> int | None:
        """0: log the line; n > 0: log a summary of n repeats; None: stay quiet."""
        if text != self.last:
            self.last, self.repeats, self.since, self.repeating = text, 0, now, False
            return 0
        self.repeating = True
        self.repeats += 1
        if now - self.since < self.every_s:
            return None
        repeats, self.repeats, self.since = self.repeats, 0, now
        return repeats

    def reset(self) -> None:
        self.last, self.repeats, self.repeating = None, 0, False


def _encode_topic(topic: str) -> bytes:
    """The topic as UTF-8, or SinkError when it cannot be published to (wildcard, NUL, empty, too long)."""
    try:
        data = topic.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SinkError(f"cannot publish to {topic!r}: not valid UTF-8 ({exc.reason})") from exc
    if not data or b"+" in data or b"#" in data or b"\x00" in data or len(data) > 65535:
        raise SinkError(f"cannot publish to {topic!r}: {publish_topic_problem(topic)}")
    return data


class _InFlight:
    """A QoS1 message handed over and not yet acknowledged.

    ``packet`` is the encoded PUBLISH (DUP never set: see ``_on_connected``); ``sent`` says whether it
    went out on the current connection: only those count against the broker's Receive Maximum.
    """

    __slots__ = ("control", "handle", "packet", "payload", "sent", "topic")

    def __init__(self, topic: str, payload: bytes, packet: bytes, control: bool, handle: Handle | None) -> None:
        self.topic = topic
        self.payload = payload
        self.packet = packet
        self.control = control  # status / retained restore: no window slot, not counted
        self.handle = handle  # the caller tracks it (try_publish): its PUBACK goes to on_ack
        self.sent = False


class _Batch:
    """The rest of a ``publish_many`` / ``offer_many`` call, parked while the window is full.

    Slots freed by PUBACKs go to the oldest waiter; a batch uses them right there, in the PUBACK
    handler, to hand its next messages over. A blocked batch so costs no task wake-up and no future per
    message, and the slots freed by one read go out again in one write. The calling task only wakes when
    the batch is done, stopped or failed. ``index`` is the next message to hand over.
    """

    __slots__ = ("done", "error", "index", "messages", "sink", "stop_when_disconnected")

    def __init__(
        self,
        sink: MqttSink,
        messages: Sequence[tuple[str, bytes]],
        index: int,
        done: asyncio.Future[None],
        *,
        stop_when_disconnected: bool,
    ) -> None:
        self.sink = sink
        self.messages = messages
        self.index = index
        self.done = done
        self.error: SinkError | None = None
        self.stop_when_disconnected = stop_when_disconnected  # offer_many: the rest goes to the spool

    def take(self, slots: int) -> int:
        """Hand over up to ``slots`` messages; return how many slots that used. The batch is finished
        (``done``) after its last message, or at a message it cannot publish (the caller gets the error)."""
        messages = self.messages
        hand_over = self.sink._hand_over
        start = index = self.index
        stop = min(len(messages), index + slots)
        try:
            while index < stop:
                topic, payload = messages[index]
                hand_over(topic, payload, False, None)
                index += 1
        except SinkError as exc:
            self.finish(exc)
        self.index = index
        if index == len(messages):
            self.finish(None)
        return index - start

    def finish(self, error: SinkError | None) -> None:
        if not self.done.done():
            self.error = error
            self.done.set_result(None)


def _refill_slots(window: int) -> int:
    """Slots freed by PUBACKs that are handed out at once; fewer wait up to ``_REFILL_HOLD_S`` for more."""
    return max(1, min(window // 2, _REFILL_MAX_SLOTS))


class _Window:
    """The data in-flight window: a counting semaphore with a non-blocking ``try_acquire`` and a size
    that can change (MQTT 5 Receive Maximum of each new connection).

    Waiters are single publishes (a future) and parked batches (``_Batch``). A slot freed by ``release``
    goes straight to the oldest waiter, so the publisher that waited longest is served first and
    ``try_acquire`` (replays) cannot jump the queue.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self.refill = _refill_slots(size)
        self._waiters: collections.deque[asyncio.Future[None] | _Batch] = collections.deque()

    def try_acquire(self) -> bool:
        if self.used < self.size and not self._waiters:
            self.used += 1
            return True
        return False

    async def acquire(self) -> None:
        if self.try_acquire():
            return
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            await slot  # _hand_out counted the slot for us before resolving this
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled() and slot.exception() is None:
                self.release()  # the slot was handed to us as we were cancelled: pass it on
            raise
        finally:
            self.withdraw(slot)

    def park(self, batch: _Batch) -> None:
        self._waiters.append(batch)
        self._hand_out()  # slots may have been freed since the caller's last try_acquire

    def withdraw(self, waiter: asyncio.Future[None] | _Batch) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def release(self, slots: int = 1) -> None:
        self.used -= slots
        if self._waiters:
            self._hand_out()

    @property
    def waiting(self) -> bool:
        """Someone waits for a slot (a publish or a parked batch)."""
        return bool(self._waiters)

    def resize(self, size: int) -> None:
        """Slots in use above a smaller size stay until released; a larger size serves waiters."""
        self.size = size
        self.refill = _refill_slots(size)
        self._hand_out()

    def stop_offers(self) -> None:
        """The link is down: parked ``offer_many`` batches end here (their rest goes to the spool)."""
        for waiter in list(self._waiters):
            if isinstance(waiter, _Batch) and waiter.stop_when_disconnected:
                waiter.finish(None)
                self._waiters.remove(waiter)

    def fail_waiters(self, error: SinkError) -> None:
        """Every publisher waiting for a slot gets ``error`` (the sink is closing)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if isinstance(waiter, _Batch):
                waiter.finish(error)
            elif not waiter.done():
                waiter.set_exception(error)

    def _hand_out(self) -> None:
        waiters = self._waiters
        while waiters and self.used < self.size:
            waiter = waiters[0]
            if type(waiter) is _Batch:
                self.used += waiter.take(self.size - self.used)
                if not waiter.done.done():
                    return  # the window is full again
                waiters.popleft()
            else:
                waiters.popleft()
                assert isinstance(waiter, asyncio.Future)
                if not waiter.done():
                    self.used += 1
                    waiter.set_result(None)


class _FlushWaiter:
    """One ``flush`` call: the packet ids it still waits for, and the future that ends the wait."""

    __slots__ = ("done", "pending")

    def __init__(self, pending: set[int], done: asyncio.Future[None]) -> None:
        self.pending = pending
        self.done = done


class _Connection(asyncio.BufferedProtocol):
    """One TCP (or TLS) connection to a broker. Feeds what it reads to the decoder and the packets to
    the sink; ``connack`` resolves with the CONNACK (None if the link ended first), ``lost`` when the
    link is gone, with ``lost_reason`` saying why.

    A BufferedProtocol: the transport reads into our one buffer (``recv_into``), so a read allocates nothing
    (a plain Protocol gets a fresh 256 KiB bytes object per ``recv``, for a read of a handful of PUBACKs).
    """

    def __init__(self, sink: MqttSink, connect_packet: bytes, version: ProtocolVersion) -> None:
        self._sink = sink
        self._connect_packet = connect_packet
        self._decoder = Decoder(version, max_packet_size=_MAX_INCOMING_PACKET)
        self._read_buffer = memoryview(bytearray(_READ_BUFFER_BYTES))
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[Connack | None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self.lost_reason: str | None = None
        self.server_disconnect: Disconnect | None = None
        self.established = False  # CONNACK accepted and processed by the sink
        self.connected_at = 0.0  # loop time of the accepted CONNACK
        self.quiet = False  # its mqtt_connected line was left out (the link flaps)
        self.dropped = False  # we ended it (dead link, stuck broker, protocol error, close), not the broker
        now = loop.time()
        self.last_sent = now
        self.last_received = now
        # time.monotonic() of the CONNECT's write: its CONNACK gives the first round trip (pacing.DelayWindow)
        self.connect_sent_at = time.monotonic()
        self.ping_sent_at: float | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._connect_packet)
        self.connect_sent_at = time.monotonic()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.last_received = self._loop.time()
        data = bytes(self._read_buffer[:nbytes])
        if self.established and not self._decoder.buffered:
            ids = plain_puback_ids(data)  # the usual read: the PUBACKs of a window round, nothing else
            if ids is not None:
                self._sink._on_pubacks(self, ids)
                return
        try:
            packets = self._decoder.feed(data)
        except MalformedPacketError as exc:
            self.drop(f"malformed packet from the broker: {exc}")
            return
        self._sink._on_packets(self, packets)

    def eof_received(self) -> bool | None:
        return None  # close our side too: the broker hung up

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost_reason is None:
            if exc is not None:
                self.lost_reason = str(exc) or type(exc).__name__
            elif self.server_disconnect is not None:
                disconnect = self.server_disconnect
                self.lost_reason = f"DISCONNECT from the broker: {self._sink._reason(disconnect.reason_code)}"
                reason_string = find_property(disconnect.properties, Property.REASON_STRING)
                if isinstance(reason_string, str):
                    self.lost_reason += f" ({shorten(reason_string)})"
            else:
                self.lost_reason = "connection closed by the broker"
        if not self.connack.done():
            self.connack.set_result(None)
        if not self.lost.done():
            self.lost.set_result(None)
        self._sink._on_connection_lost(self)

    # ours
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.last_sent = self._loop.time()

    def drop(self, reason: str) -> None:
        """End the link at once (dead link, protocol error): no DISCONNECT, so the broker sends the will."""
        self.dropped = True
        if self.lost_reason is None:
            self.lost_reason = reason
        if self.transport is not None:
            self.transport.abort()


class MqttSink:
    """One MQTT connection (the gateway's only one, or one of ``mqtt.connections``: gateway/sinks/fanout.py).
    Use as ``async with MqttSink(options) as sink: ...``.

    Entering starts connecting in the background and returns at once; use ``wait_connected`` to wait.
    All methods must be called from the event loop that entered the context.
    """

    def __init__(
        self,
        options: MqttOptions,
        *,
        on_ack: Callable[[Handle], None] | None = None,
        on_refused: Callable[[str, bytes, str, Handle | None], bool | None] | None = None,
    ) -> None:
        """``on_ack(handle)``: the PUBACK of a message published with a handle (``try_publish``).
        ``on_refused(topic, payload, reason, handle)``: once per message the broker will never take
        (``reason`` a ``refusal_reason`` token such as ``packet_too_large`` or ``not_authorized``;
        ``handle`` None for messages published without one and control messages), e.g. to keep it in a
        dead-letter table; it returns True when it keeps the message (``dead_letter`` of the
        ``mqtt_message_refused`` line). A message with a handle gets exactly one of the two."""
        self._options = options
        self._on_ack = on_ack
        self._on_refused = on_refused
        self._version = ProtocolVersion.V5 if options.protocol == "5" else ProtocolVersion.V311
        self._encoder = PublishEncoder(self._version)
        self._stamp = options.session.stamp if options.session is not None else None
        self._topic_fields: dict[str, bytes] = {}
        self._brokers: tuple[tuple[str, int], ...] = ((options.host, options.port), *options.failover)
        self._broker_index = 0
        self._current_broker = f"{options.host}:{options.port}"
        self._log = structlog.get_logger("cellgate.mqtt").bind(
            broker=f"{options.host}:{options.port}", client_id=options.client_id
        )
        self._random = random.Random()
        self._ssl: ssl.SSLContext | None = None
        self._connect_packet = b""
        self._will = b""  # the will of the last CONNECT: what close() publishes
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: _Connection | None = None  # the connection being made or in use
        self._window = _Window(options.max_inflight)
        # The window's size follows the PUBACK delay (gateway/mqtt/pacing.py): one probe message at a time.
        self._delay_window = DelayWindow(options.max_inflight)
        self._probe_id: int | None = None
        self._probe_sent_at = 0.0  # time.monotonic(): the loop's clock may count whole milliseconds (uvloop)
        self._slot_wanted = False  # try_publish found no free slot since the last probe
        # packet id -> message; insertion order = publish order (resends go out in this order)
        self._in_flight: dict[int, _InFlight] = {}
        self._data_in_flight = 0
        self._next_packet_id = 0
        self._subscribing: dict[int, tuple[tuple[str, QoS], ...]] = {}  # SUBSCRIBE packet id -> its filters
        self._unsent: collections.deque[int] = collections.deque()  # ids waiting for the link or the quota
        self._outstanding = 0  # sent on this connection without PUBACK: bounded by the Receive Maximum
        self._quota = DEFAULT_RECEIVE_MAXIMUM
        # min(options, the last CONNACK's Maximum Packet Size); None = no limit
        self._max_packet_size: int | None = options.max_packet_size
        self._keepalive_s = float(options.keepalive_s)  # 0: no keep alive (MQTT 5 Server Keep Alive 0)
        self._out: list[bytes] = []  # packets to write at the end of this event-loop turn
        self._write_scheduled = False
        self._corked = False  # inside a batch: its packets are written once at its end, not scheduled
        self._flush_waiters: list[_FlushWaiter] = []
        self._held = 0  # window slots freed by PUBACKs, not handed out yet (see _free_slots)
        self._hold_timer: asyncio.TimerHandle | None = None
        self._retained: dict[str, bytes] = {}
        self._connected = False
        self._connected_event = asyncio.Event()
        self._entered = False
        self._closing = False
        self._closed = False
        self._last_connect_problem: str | None = None
        self._connect_repeats = _Repeats(options.repeat_log_s)  # connect failures
        self._lost_repeats = _Repeats(options.repeat_log_s)  # connections that ended soon after CONNACK
        self._stuck = False  # an episode of mqtt_stuck: logged once, until a PUBACK comes again
        self._refusals_logged: set[str] = set()  # one log line per refusal reason
        self._refused_by_reason: dict[str, int] = {}
        # Poison detection: the message suspected by the last short connections closed by the broker, and how many
        # closed with it in a row; a poison message's packet size waiting for proof that smaller ones pass; the
        # packet limit inferred from that (None: none inferred).
        self._suspect: _InFlight | None = None
        self._suspect_closes = 0
        self._limit_candidate: int | None = None
        self._inferred_limit: int | None = None
        self._largest_acked = 0  # largest packet acknowledged while a suspect, candidate or inferred limit exists
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
        """Data messages accepted (QoS1: into the in-flight window; QoS0: written while connected)."""
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
        larger than the maximum packet size, refused by the session hooks (``SessionRefusal``)."""
        return self._failed

    @property
    def refused_by_reason(self) -> dict[str, int]:
        """Messages (data and control) the broker will never take, by ``refusal_reason`` token: each
        went to ``on_refused`` once."""
        return dict(self._refused_by_reason)

    @property
    def broker(self) -> str:
        """``host:port`` of the broker in use or being tried."""
        return self._current_broker

    @property
    def brokers(self) -> tuple[str, ...]:
        """Every configured broker, ``host:port``, the primary first (the fail-over order)."""
        return tuple(f"{host}:{port}" for host, port in self._brokers)

    @property
    def window(self) -> int:
        """Data messages the in-flight window takes now: min(``max_inflight``, Receive Maximum), lowered while
        PUBACKs queue (gateway/mqtt/pacing.py)."""
        return self._window.size

    @property
    def in_flight(self) -> int:
        """Data messages handed over and not yet acknowledged (<= ``max_inflight``)."""
        return self._data_in_flight

    def unacked(self) -> list[tuple[str, bytes]]:
        """Data messages (topic, payload) handed over without a PUBACK yet, oldest first.

        After ``close`` this is what the spool must keep. Control messages are not included: they are
        rebuilt from ``set_retained`` and the options at the next start; nor are messages with a handle,
        which their caller tracks.
        """
        return [(m.topic, m.payload) for m in self._in_flight.values() if not m.control and m.handle is None]

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
        if self._entered:
            raise SinkError("MqttSink can be entered only once")
        o = self._options
        try:
            if o.tls:
                context = ssl.create_default_context(cafile=o.ca_file)  # None: the system CA store
                if o.cert_file:
                    context.load_cert_chain(o.cert_file, o.key_file)
                self._ssl = context
            if not callable(o.will_payload):  # a callable will is built for each CONNECT (_connect)
                self._connect_packet = self._encode_connect()
        except (OSError, ValueError) as exc:  # ssl.SSLError and FileNotFoundError are OSErrors
            raise SinkError(f"cannot set up the MQTT client for {o.host}:{o.port}: {exc}") from exc
        self._entered = True
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name=f"mqtt[{o.client_id}].connection")
        self._log.info("mqtt_starting", protocol=o.protocol, tls=o.tls)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(DEFAULT_CLOSE_TIMEOUT_S)

    async def close(self, timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Publish the offline status, wait up to ``timeout_s`` for outstanding PUBACKs, disconnect.

        While disconnected with unacknowledged data it waits up to ``timeout_s`` for the reconnect to
        drain it; disconnected with nothing in flight it returns at once. Returns within about
        ``timeout_s`` + 2 s. Idempotent. Whatever is still unacknowledged afterwards
        is in ``unacked()``. Publishers waiting for a window slot get SinkError.
        """
        if not self._entered or self._closing:
            return
        self._closing = True
        if self._connected or self._data_in_flight:
            if self._options.with_will:
                self._publish_control(self._options.will_topic, self._will, retain=self._options.will_retain)
            drained = await self.flush(timeout_s)
        else:
            # Not connected and nothing to drain: waiting would only cost the whole budget. A lost
            # connection already made the broker publish the will.
            drained = True
        self._closed = True
        self._window.fail_waiters(SinkError("MqttSink is closed"))
        await self._stop_connection()
        self._log.info(
            "mqtt_closed",
            drained=drained,
            published=self._published,
            delivered=self._delivered,
            failed=self._failed,
            refused=dict(self._refused_by_reason),
            unacked=self._data_in_flight,
        )

    async def _stop_connection(self) -> None:
        """Normal DISCONNECT (the broker discards the will: we already said "offline"), then end the task."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _TEARDOWN_TIMEOUT_S
        conn = self._conn
        if conn is not None and conn.established and conn.transport is not None:
            self._write_out()
            conn.write(encode_disconnect(Disconnect(), self._version))
            conn.transport.close()  # TLS: close_notify; waits for the written bytes to leave
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.lost), max(0.0, deadline - loop.time()))
            conn.drop("closed")  # if the broker did not answer the close in time
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, max(0.1, deadline - loop.time()))
        if self._conn is not None:  # a connect attempt or a link the task left behind
            self._conn.drop("closed")
        self._set_disconnected()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every message handed over so far is acknowledged; False on timeout."""
        if not self._in_flight:
            return True
        waiter = _FlushWaiter(set(self._in_flight), asyncio.get_running_loop().create_future())
        self._flush_waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.done), timeout_s)
        except TimeoutError:
            return False
        finally:
            self._flush_waiters.remove(waiter)
        return True

    # ------------------------------------------------------------------------------- publishing

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Hand one data message to the broker connection at the configured QoS.

        QoS1: waits for a free slot in the in-flight window (also while disconnected), then returns; the
        PUBACK is counted later in ``delivered``. QoS0: never waits; dropped and counted in ``failed``
        while disconnected. Raises SinkError when the sink is closed or the topic cannot be published to.
        """
        self._check_open()
        self._topic_field(topic)  # a bad topic fails now, not after waiting for a slot
        if self._options.qos == 0:
            self._send_qos0(topic, payload, retain)
            return
        if not self._window.try_acquire():
            await self._acquire_slot()
        try:
            self._hand_over(topic, payload, retain, None)
        except SinkError:
            self._window.release()
            raise

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """``publish`` for many (topic, payload) pairs, in order, not retained."""
        self._check_open()
        index = self._take_now(messages, stop_when_disconnected=False)
        if index < len(messages):
            await self._park(messages, index, wait_s=None)

    async def offer_many(self, messages: Sequence[tuple[str, bytes]], *, wait_s: float) -> int:
        """Hand over ``messages`` in order while connected; return how many were taken.

        Stops at the first message that finds the sink disconnected, or that waits longer than ``wait_s``
        for a window slot; the caller spools that one and the rest. ``wait_s`` <= 0 returns at once with
        what fits now, without yielding to the event loop. QoS0 takes everything while connected.
        Raises SinkError when the sink is closed or a topic cannot be published to.
        """
        self._check_open()
        index = self._take_now(messages, stop_when_disconnected=True)
        if index == len(messages) or not self._connected or wait_s <= 0:
            return index
        return await self._park(messages, index, wait_s=wait_s)

    def _take_now(self, messages: Sequence[tuple[str, bytes]], *, stop_when_disconnected: bool) -> int:
        """Hand over messages while window slots are free; return the index of the first one left.

        Everything handed over here leaves in one write. QoS0 takes everything (dropped while
        disconnected, unless ``stop_when_disconnected``).
        """
        qos0 = self._options.qos == 0
        window = self._window
        hand_over = self._hand_over
        index = 0
        self._corked = True
        try:
            for topic, payload in messages:
                if stop_when_disconnected and not self._connected:
                    break
                if qos0:
                    self._send_qos0(topic, payload, False)
                elif window.try_acquire():
                    try:
                        hand_over(topic, payload, False, None)
                    except SinkError:
                        window.release()
                        raise
                else:
                    break
                index += 1
        finally:
            self._write_out()
        return index

    async def _park(self, messages: Sequence[tuple[str, bytes]], index: int, *, wait_s: float | None) -> int:
        """Let the window hand ``messages[index:]`` over as PUBACKs free slots; return how far it got.

        ``wait_s`` None: wait for all of them (publish_many). Otherwise (offer_many) stop once ``wait_s``
        passes without a single slot, or when the link goes down.
        """
        assert self._loop is not None
        batch = _Batch(self, messages, index, self._loop.create_future(), stop_when_disconnected=wait_s is not None)
        self._window.park(batch)
        self._write_out()  # what park() may have handed over right away
        try:
            if wait_s is None:
                await asyncio.shield(batch.done)
            else:
                seen = batch.index
                while not batch.done.done():
                    await asyncio.wait([batch.done], timeout=wait_s)
                    if batch.index == seen:
                        break  # no slot within wait_s: the rest goes to the spool
                    seen = batch.index
        finally:
            self._window.withdraw(batch)  # timed out or cancelled: hand over nothing more
        if batch.error is not None:
            raise batch.error
        return batch.index

    def try_publish(self, topic: str, payload: bytes, handle: Handle) -> bool:
        """Publish one message if connected and a window slot is free now; False otherwise.

        Its PUBACK is reported to ``on_ack(handle)``, a refusal to ``on_refused``. It never waits for a slot,
        so messages given to ``offer_many`` / ``publish_many`` get the window first.
        """
        self._check_open()
        if not self._connected:
            return False
        if self._options.qos == 0:
            self._send_qos0(topic, payload, False)
            if self._on_ack is not None:
                self._on_ack(handle)
            return True
        if not self._window.try_acquire():
            self._slot_wanted = True  # a replay would take more: the window may grow (pacing.DelayWindow)
            return False
        try:
            self._hand_over(topic, payload, False, handle)
        except SinkError:
            self._window.release()
            raise
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

    def _check_open(self) -> None:
        if not self._entered:
            raise SinkError("MqttSink used outside its 'async with' block")
        if self._closing:
            raise SinkError("MqttSink is closed")

    async def _acquire_slot(self) -> None:
        await self._window.acquire()  # raises SinkError when close() fails the waiters
        if self._closed:
            self._window.release()
            raise SinkError("MqttSink is closed")

    def _topic_field(self, topic: str) -> bytes:
        """``topic`` checked and encoded as in PUBLISH, from a cache: per-tag topics repeat every poll.
        SinkError for a topic that cannot be published to (wildcard, NUL, empty, too long)."""
        encoded = self._topic_fields.get(topic)
        if encoded is None:
            encoded = topic_field(_encode_topic(topic))
            if len(self._topic_fields) >= _TOPIC_CACHE_ENTRIES:
                self._topic_fields.clear()  # bounded: a tag map that changes topics does not grow it
            self._topic_fields[topic] = encoded
        return encoded

    def _new_packet_id(self) -> int:
        """The next packet id not in use (1..65535, wrapping); in use = in the in-flight set."""
        in_flight = self._in_flight
        if len(in_flight) >= MAX_PACKET_ID:
            raise SinkError("all 65535 MQTT packet ids are in use")
        packet_id = self._next_packet_id
        while True:
            packet_id = packet_id + 1 if packet_id < MAX_PACKET_ID else 1
            if packet_id not in in_flight:
                self._next_packet_id = packet_id
                return packet_id

    def _hand_over(self, topic: str, payload: bytes, retain: bool, handle: Handle | None) -> None:
        """Take one QoS1 data message into the in-flight set and send it if it may go now. The caller
        holds a window slot for it and keeps it when this raises SinkError (it must give it back: this
        never calls the window). The hot path: one call per message."""
        if self._closed:
            raise SinkError("MqttSink is closed")
        stamp = self._stamp
        if stamp is not None:
            stamped = stamp(topic, payload)
            if not isinstance(stamped, bytes):  # the session drops (None) or refuses it (SessionHooks.stamp)
                self._settle_unstamped_soon(topic, stamped, handle)
                return
            payload = stamped
        encoded_topic = self._topic_fields.get(topic) or self._topic_field(topic)
        in_flight = self._in_flight
        packet_id = self._next_packet_id + 1
        try:
            if packet_id > MAX_PACKET_ID or packet_id in in_flight:
                packet_id = self._new_packet_id()  # wrap around, skip ids still in flight
            packet = self._encoder.qos1(encoded_topic, payload, packet_id, retain)
        except (SinkError, MalformedPacketError) as exc:  # all ids in use; a payload of over 256 MB
            if stamp is not None:
                self._unstamp(topic)
            raise SinkError(f"cannot publish to {topic!r}: {exc}") from exc
        self._next_packet_id = packet_id
        message = _InFlight(topic, payload, packet, False, handle)
        in_flight[packet_id] = message
        self._data_in_flight += 1
        self._published += 1
        # Straight out while connected, under the broker's Receive Maximum and with nothing queued
        # before it (order); else it waits in _unsent for the link or for a PUBACK.
        limit = self._max_packet_size
        if limit is not None and len(packet) > limit:
            # Known too large: refused now, not after the reconnect; its session number is taken back.
            if stamp is not None:
                self._unstamp(topic)
            self._refuse_soon(packet_id)
        elif self._connected and not self._unsent and self._outstanding < self._quota:
            if self._corked:
                # _transmit inlined for the usual case: inside a batch, a packet the broker takes
                message.sent = True
                self._outstanding += 1
                self._out.append(packet)
            else:
                self._transmit(packet_id, message)
        else:
            self._unsent.append(packet_id)

    def _settle_unstamped_soon(self, topic: str, refusal: SessionRefusal | None, handle: Handle | None) -> None:
        """A data message the session did not let on the wire at its hand-over: its window slot back, and dropped
        (None: its handle acknowledged, nothing to spool or refuse) or refused (``on_refused``, to be kept). Never
        sent. Later, not here: this may run inside the window's hand-out."""
        assert self._loop is not None
        self._loop.call_soon(self._settle_unstamped, topic, refusal, handle)

    def _settle_unstamped(self, topic: str, refusal: SessionRefusal | None, handle: Handle | None) -> None:
        if refusal is not None:
            self._failed += 1
            self._note_refused(topic, refusal.payload, _SESSION_REFUSED_CODE, NO_PROPERTIES, handle, False,
                               reason=refusal.reason)  # fmt: skip
        elif handle is not None and self._on_ack is not None:
            self._on_ack(handle)
        self._window.release()

    def _unstamp(self, topic: str) -> None:
        session = self._options.session
        if session is not None:
            session.unstamp(topic)

    def _encode_connect(self) -> bytes:
        """CONNECT with the will of this connection (``will_payload``, called now when it is a callable)."""
        o = self._options
        will = o.will_payload() if callable(o.will_payload) else o.will_payload
        self._will = will
        return encode_connect(
            Connect(
                version=self._version,
                client_id=o.client_id,
                keepalive_s=o.keepalive_s,
                clean_start=True,
                will=Will(topic=o.will_topic, payload=will, qos=1, retain=o.will_retain) if o.with_will else None,
                username=o.username,
                password=o.password.encode("utf-8") if o.password is not None else None,
                properties=((Property.MAXIMUM_PACKET_SIZE, _MAX_INCOMING_PACKET),)
                if self._version == ProtocolVersion.V5
                else NO_PROPERTIES,
            )
        )

    def _publish_control(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """QoS1 status message (retained unless told) outside the window (bounded: one per registered topic)."""
        if len(self._in_flight) >= self._options.max_queued:
            self._log.warning("mqtt_status_publish_failed", topic=topic, error="max_queued messages in memory")
            return
        packet_id = self._new_packet_id()
        packet = self._encoder.qos1(self._topic_field(topic), payload, packet_id, retain)
        message = _InFlight(topic, payload, packet, True, None)
        self._in_flight[packet_id] = message
        if self._connected and not self._unsent and self._outstanding < self._quota:
            self._transmit(packet_id, message)
        else:
            self._unsent.append(packet_id)

    def _send_qos0(self, topic: str, payload: bytes, retain: bool) -> None:
        if not self._connected:
            self._failed += 1
            if not self._qos0_drop_logged:
                self._qos0_drop_logged = True
                self._log.warning("mqtt_dropping_qos0", reason="disconnected")
            return
        if self._stamp is not None:
            stamped = self._stamp(topic, payload)
            if not isinstance(stamped, bytes):  # the session drops (None) or refuses it (SessionHooks.stamp)
                if stamped is not None:
                    self._failed += 1
                    self._note_refused(topic, stamped.payload, _SESSION_REFUSED_CODE, NO_PROPERTIES, None, False,
                                       reason=stamped.reason)  # fmt: skip
                return
            payload = stamped
        try:
            packet = self._encoder.qos0(self._topic_field(topic), payload, retain)
        except MalformedPacketError as exc:  # a payload of over 256 MB
            self._unstamp(topic)
            raise SinkError(f"cannot publish to {topic!r}: {exc}") from exc
        if self._max_packet_size is not None and len(packet) > self._max_packet_size:
            self._unstamp(topic)
            self._failed += 1
            self._note_refused(topic, payload, PACKET_TOO_LARGE, NO_PROPERTIES, None, False, len(packet))
            return
        self._published += 1
        self._delivered += 1  # QoS0 has no PUBACK: written is all there is
        self._write(packet)

    # --------------------------------------------------------------------------- sending bytes

    def _transmit(self, packet_id: int, message: _InFlight) -> None:
        """Send one in-flight message on the current connection."""
        if self._max_packet_size is not None and len(message.packet) > self._max_packet_size:
            self._refuse_soon(packet_id)
            return
        message.sent = True
        self._outstanding += 1
        self._write(message.packet)

    def _pump(self) -> None:
        """Send waiting messages, oldest first, while the broker's Receive Maximum allows."""
        unsent = self._unsent
        in_flight = self._in_flight
        while unsent and self._outstanding < self._quota:
            packet_id = unsent.popleft()
            message = in_flight.get(packet_id)
            if message is not None and not message.sent:
                self._transmit(packet_id, message)

    def _write(self, packet: bytes) -> None:
        """Queue ``packet`` for the socket. Everything queued in one event-loop turn (a whole
        ``publish_many`` / ``offer_many`` batch, the resends after the PUBACKs of one read) leaves in one
        ``transport.write``: one syscall instead of one per message."""
        self._out.append(packet)
        if not self._corked and not self._write_scheduled:
            self._write_scheduled = True
            loop = self._loop
            assert loop is not None
            loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        """Write what is queued; ends a corked section (a batch, one read's PUBACKs)."""
        self._corked = False
        self._write_scheduled = False
        out = self._out
        if not out:
            return
        conn = self._conn
        if conn is not None:
            conn.write(out[0] if len(out) == 1 else b"".join(out))
            if self._probe_id is None and self._delay_window.adapts:
                self._start_probe()
        # Without a connection the bytes are dropped: QoS1 messages are still in the in-flight set and
        # are sent again after the reconnect; QoS0 ones are lost, as QoS0 allows.
        out.clear()

    def _start_probe(self) -> None:
        """Time the newest message just written, if it was (not a resend of an older one or a control message
        alone): its PUBACK says how long a round trip takes now."""
        packet_id = self._next_packet_id
        message = self._in_flight.get(packet_id)
        if message is not None and message.sent:
            self._probe_id = packet_id
            self._probe_sent_at = time.monotonic()

    def _probe_answered(self) -> None:
        """The probe's PUBACK came in this read: size the window by its delay."""
        self._probe_id = None
        delay_window = self._delay_window
        window = self._window
        waiting = window.waiting or self._slot_wanted
        self._slot_wanted = False
        if delay_window.probe(self._probe_sent_at, time.monotonic(), publishers_waiting=waiting):
            window.resize(delay_window.size)

    # ---------------------------------------------------------------------------- receiving

    def _on_packets(self, conn: _Connection, packets: list[Packet]) -> None:
        """Everything one read brought. PUBACKs are the bulk: each one frees its slot right here, and
        what the freed slots let out (parked batches, waiting resends) leaves in one write at the end."""
        if conn is not self._conn:
            return  # a connection we already gave up on
        complete = self._complete
        freed = 0
        self._corked = True
        try:
            for packet in packets:
                if type(packet) is Puback:
                    if conn.established and complete(packet.packet_id, packet.reason_code, packet.properties):
                        freed += 1
                elif isinstance(packet, Connack):
                    if conn.connack.done():
                        conn.drop("protocol error: a second CONNACK")
                        break
                    conn.connack.set_result(packet)  # handled by the connection task (_connect)
                elif isinstance(packet, PingResp):
                    conn.ping_sent_at = None
                elif isinstance(packet, Disconnect):
                    conn.server_disconnect = packet  # the broker closes the link next; logged then
                elif isinstance(packet, Publish):
                    self._on_incoming(conn, packet)
                elif isinstance(packet, Suback):
                    self._on_suback(packet)
                # PINGREQ, CONNECT and SUBSCRIBE are not for clients. Nothing else comes out of the decoder.
            if self._probe_id is not None and self._probe_id not in self._in_flight:
                self._probe_answered()
            self._after_acks(conn, freed)
        finally:
            self._write_out()

    def _on_pubacks(self, conn: _Connection, packet_ids: list[int]) -> None:
        """A read of plain PUBACKs only (successes, ``wire.plain_puback_ids``) on an established connection:
        ``_on_packets`` without a decoded packet per PUBACK."""
        if conn is not self._conn:
            return
        complete = self._complete
        freed = 0
        self._corked = True
        try:
            for packet_id in packet_ids:
                if complete(packet_id, 0):
                    freed += 1
            if self._probe_id is not None and self._probe_id not in self._in_flight:
                self._probe_answered()
            self._after_acks(conn, freed)
        finally:
            self._write_out()

    def _after_acks(self, conn: _Connection, freed: int) -> None:
        """After the packets of one read: send what waits for the Receive Maximum, then free ``freed`` slots."""
        if self._unsent and conn.established:
            self._pump()
        if freed:
            self._stuck = False  # the broker answers again: a new hang is a new episode
            self._free_slots(freed)

    def _free_slots(self, freed: int) -> None:
        """Window slots freed by the PUBACKs of one read. With publishers waiting, fewer than ``window.refill``
        are held back up to ``_REFILL_HOLD_S`` for the PUBACKs still to come: the messages they let out then
        leave in one write instead of one small write per read, and the write that answers the broker comes
        later, so a broker that delays small writes (Nagle, e.g. a stock Mosquitto) sends its next PUBACKs
        together. Without waiters, or once nothing else is in flight, they are free at once."""
        window = self._window
        held = self._held + freed
        if not window.waiting or held >= window.refill or held >= window.used:
            self._release_held(held)
            return
        self._held = held
        if self._hold_timer is None:
            assert self._loop is not None
            self._hold_timer = self._loop.call_later(_REFILL_HOLD_S, self._hold_expired)

    def _release_held(self, slots: int) -> None:
        self._held = 0
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        if slots:
            self._window.release(slots)

    def _hold_expired(self) -> None:
        self._hold_timer = None
        self._corked = True  # what the slots let out: one write
        try:
            self._release_held(self._held)
        finally:
            self._write_out()

    def _on_incoming(self, conn: _Connection, packet: Publish) -> None:
        """A PUBLISH on one of ``options.subscriptions``: handed to ``options.on_message``, then acknowledged
        (QoS 1: PUBACK, §4.3.2; the callback runs first, so a message it could not take is not lost silently)."""
        handler = self._options.on_message
        if handler is not None:
            try:
                handler(packet.topic, packet.payload)
            except Exception as exc:  # a bug in the caller's callback must not break the connection
                self._log.error("mqtt_on_message_failed", topic=shorten(packet.topic), error=repr(exc))
        if packet.qos and packet.packet_id is not None and conn.established:
            self._write(encode_puback(Puback(packet.packet_id), self._version))

    def _on_suback(self, packet: Suback) -> None:
        filters = self._subscribing.pop(packet.packet_id, ())
        for (topic_filter, _), code in zip(filters, packet.reason_codes, strict=False):
            if code >= 0x80:
                self._log.error("mqtt_subscribe_refused", topic_filter=topic_filter, reason_code=code)

    def _subscribe(self) -> None:
        """SUBSCRIBE to ``options.subscriptions`` (every connection is a clean session: again at each connect).
        The id comes from the publish sequence, so a PUBLISH could reuse it only after 65535 more before SUBACK."""
        filters = self._options.subscriptions
        if not filters:
            return
        packet_id = self._new_packet_id()
        self._subscribing[packet_id] = filters
        self._write(encode_subscribe(Subscribe(packet_id=packet_id, filters=filters), self._version))

    def _complete(
        self, packet_id: int, reason_code: int, properties: Properties = NO_PROPERTIES, reason: str | None = None
    ) -> bool:
        """A PUBACK (or a local refusal) for ``packet_id``: count it, tell who waits. True when it freed
        a window slot, which the caller releases (after all PUBACKs of a read: one hand-out per read).
        ``reason``: the refusal's token when the code is ``_SESSION_REFUSED_CODE``."""
        message = self._in_flight.pop(packet_id, None)
        if message is None:
            return False  # not ours (any more): ignore, as the specification asks of a client
        if message.sent:
            self._outstanding -= 1
        if self._flush_waiters:
            for waiter in self._flush_waiters:
                pending = waiter.pending
                pending.discard(packet_id)
                if not pending and not waiter.done.done():
                    waiter.done.set_result(None)
        if reason_code >= 0x80:  # MQTT 5 PUBACK reason, e.g. "Not authorized" from an ACL; or ours
            return self._refused(message, reason_code, properties, reason)
        if self._suspect is not None or self._limit_candidate is not None or self._inferred_limit is not None:
            self._poison_evidence(message)
        if message.control:
            self._control_delivered += 1
            return False
        self._data_in_flight -= 1
        if message.handle is not None and self._on_ack is not None:
            self._on_ack(message.handle)
        self._delivered += 1
        return True

    def _refused(self, message: _InFlight, reason_code: int, properties: Properties, reason: str | None) -> bool:
        """``message`` will never be taken: hand it to ``on_refused``. A refused control message leaves the
        retained set, so it is not sent again at every connect. True when it freed a data window slot."""
        if message.control:
            if self._retained.get(message.topic) == message.payload:
                del self._retained[message.topic]
        else:
            self._data_in_flight -= 1
            self._failed += 1
        self._note_refused(
            message.topic,
            message.payload,
            reason_code,
            properties,
            message.handle,
            message.control,
            len(message.packet),
            reason=reason,
        )
        return not message.control

    def _note_refused(
        self,
        topic: str,
        payload: bytes,
        reason_code: int,
        properties: Properties,
        handle: Handle | None,
        control: bool,
        packet_bytes: int | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        """Count a refusal, tell ``on_refused``, log the first one of each reason (the only log line of it).
        ``reason``: the token of a session's refusal (``_SESSION_REFUSED_CODE``)."""
        poison = reason_code == _BROKER_CLOSED_CODE
        if reason is None:
            reason = BROKER_CLOSED_CONNECTION if poison else refusal_reason(reason_code)
        self._refused_by_reason[reason] = self._refused_by_reason.get(reason, 0) + 1
        kept = False
        if self._on_refused is not None:
            try:
                kept = bool(self._on_refused(topic, payload, reason, handle))
            except Exception as exc:  # the caller's bug must not break the PUBACK handling
                self._log.error("mqtt_on_refused_failed", error=repr(exc))
        if reason not in self._refusals_logged:
            self._refusals_logged.add(reason)
            reason_string = find_property(properties, Property.REASON_STRING)
            self._log.warning(
                "mqtt_message_refused",
                topic=shorten(topic),
                reason=reason,
                reason_code=None if reason_code > 0xFF else self._reason(reason_code),  # ours: no MQTT code
                reason_string=shorten(reason_string) if isinstance(reason_string, str) else None,
                payload_bytes=len(payload),
                packet_bytes=packet_bytes,
                max_packet_size=self._max_packet_size,
                control=control,
                dead_letter=kept,
                hint=f"the broker closed the connection right after it {_POISON_CLOSES} times in a row; if its "
                f"limit is the cause, mqtt.max_packet_size below {packet_bytes} refuses such messages before sending"
                if poison
                else None,
            )

    def _refuse_soon(self, packet_id: int) -> None:
        """Refuse an in-flight message as too large: the broker would disconnect us for it (MQTT 3.1.1
        brokers do), and it would be resent after every reconnect. Later, not here: this may run inside
        the window's hand-out."""
        assert self._loop is not None
        self._loop.call_soon(self._refuse, packet_id, PACKET_TOO_LARGE)

    def _refuse(self, packet_id: int, reason_code: int) -> None:
        if self._complete(packet_id, reason_code):
            self._window.release()

    def _reason(self, reason_code: int) -> str:
        return reason_text(reason_code, self._version)

    # ----------------------------------------------------------------------------- connection

    async def _run(self) -> None:
        """Connect, serve, and reconnect with backoff until cancelled by close(): a tenacity run whose attempts are
        one connection each (connect, then serve it until it is lost).

        A connection lost less than ``_STABLE_CONNECTION_S`` after its CONNACK counts as a failed attempt
        (``streak``), so a broker that accepts and closes at once meets a growing backoff, not a storm."""
        o = self._options
        streak = Streak()
        wait = MqttBackoff(min_s=o.reconnect_min_s, max_s=o.reconnect_max_s, streak=streak, draw=self._random.random)
        async for attempt in forever(wait, before_sleep=lambda state: self._before_reconnect(state, streak)):
            with attempt:
                await self._connection(streak)

    async def _connection(self, streak: Streak) -> None:
        """One attempt: connect to the current broker and serve the connection until it ends."""
        loop = asyncio.get_running_loop()
        host, port = self._brokers[self._broker_index]
        conn: _Connection | None = None
        try:
            conn = await self._connect(host, port)
            if conn is not None:
                await self._serve(conn)
        finally:
            if conn is not None and loop.time() - conn.connected_at >= _STABLE_CONNECTION_S:
                streak.good()
            else:
                streak.failed()

    def _before_reconnect(self, state: RetryCallState, streak: Streak) -> None:
        """After an attempt: log a bug that ended it; after ``failover_after`` failed attempts in a row on one
        broker, move on to the next."""
        outcome = state.outcome
        if outcome is not None and outcome.failed:  # a bug here must not end the reconnect loop for good
            self._log.error("mqtt_connection_task_error", error=repr(outcome.exception()))
        if len(self._brokers) > 1 and streak.failures and streak.failures % self._options.failover_after == 0:
            self._broker_index = (self._broker_index + 1) % len(self._brokers)
            next_host, next_port = self._brokers[self._broker_index]
            self._current_broker = f"{next_host}:{next_port}"
            self._log.warning(
                "mqtt_failover", next_broker=self._current_broker, after_attempts=self._options.failover_after
            )

    async def _connect(self, host: str, port: int) -> _Connection | None:
        """One attempt: TCP, TLS, CONNECT and CONNACK within connect_timeout_s. None (and the reason
        noted) if it failed."""
        o = self._options
        loop = asyncio.get_running_loop()
        if callable(o.will_payload):
            try:
                self._connect_packet = self._encode_connect()  # a new will for every CONNECT
            except Exception as exc:  # a bug in the caller's callback: tried again at the next attempt
                self._note_connect_problem(f"will_payload failed: {exc!r}")
                return None
        conn = _Connection(self, self._connect_packet, self._version)
        self._conn = conn
        stage = "TCP/TLS connect"
        try:
            async with asyncio.timeout(o.connect_timeout_s):
                await loop.create_connection(
                    lambda: conn, host, port, ssl=self._ssl, server_hostname=host if self._ssl else None
                )
                stage = "CONNACK"
                connack = await asyncio.shield(conn.connack)
        except TimeoutError:
            self._abandon(conn)
            self._note_connect_problem(f"{stage} to {host}:{port} timed out after {o.connect_timeout_s:g} s")
            return None
        except OSError as exc:  # refused, DNS, TLS verification (ssl.SSLError is an OSError)
            self._abandon(conn)
            self._note_connect_problem(f"{type(exc).__name__}: {exc}")
            return None
        except BaseException:  # cancelled by close(), or a bug: never leave a half-open link behind
            self._abandon(conn)
            raise
        if connack is None:
            # The link ended before any CONNACK: the TCP/TLS connect itself succeeded, then the broker
            # hung up, e.g. a TLS 1.3 broker refusing our client certificate (mTLS): the alert
            # arrives on the first read. Without this the sink would retry silently forever.
            self._abandon(conn)
            self._note_connect_problem(f"connection lost before CONNACK: {conn.lost_reason}")
            return None
        problem = connack_problem(connack, self._version, clean_start=True)
        if problem is not None:
            if problem.protocol_error and self._version == ProtocolVersion.V5:
                # §4.13.2: the client may say why before it closes; the broker then sends our will.
                conn.write(encode_disconnect(Disconnect(reason_code=PROTOCOL_ERROR), self._version))
                if conn.transport is not None:
                    conn.transport.close()  # after the DISCONNECT has left
            self._abandon(conn)
            self._note_connect_problem(problem.text)
            return None
        self._on_connected(conn, connack)
        return conn

    def _abandon(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None
        if conn.transport is None or not conn.transport.is_closing():
            conn.drop("connect attempt abandoned")
        elif conn.lost_reason is None:
            conn.lost_reason = "connect attempt abandoned"

    def _on_connected(self, conn: _Connection, connack: Connack) -> None:
        o = self._options
        loop = asyncio.get_running_loop()
        self._last_connect_problem = None
        self._qos0_drop_logged = False
        # MQTT 5: the broker says how many unacknowledged QoS1 messages it takes [MQTT-3.3.4-7]; the
        # data window and everything sent respect it (connack_problem refused a Receive Maximum of 0).
        self._quota = connack.receive_maximum
        window = min(o.max_inflight, connack.receive_maximum)
        now = time.monotonic()
        self._delay_window.reset(window, connect_s=now - conn.connect_sent_at, now=now)
        self._probe_id = None
        limits = [
            limit
            for limit in (o.max_packet_size, connack.maximum_packet_size, self._inferred_limit)
            if limit is not None
        ]
        self._max_packet_size = min(limits) if limits else None
        # Server Keep Alive replaces ours for this connection [MQTT-3.2.2-21]; 0 turns keep alive off.
        server_keep_alive = connack.server_keep_alive
        self._keepalive_s = float(o.keepalive_s if server_keep_alive is None else server_keep_alive)
        self._outstanding = 0
        # CONNECT says Clean Start 1 (3.1.1: Clean Session 1), so every connection is a new session
        # and a message resent on it is its first delivery there: DUP stays 0 [MQTT-3.3.1-1]. DUP and
        # the same packet id are only for resending within one session (§4.4, [MQTT-4.4.0-1]).
        for message in self._in_flight.values():
            message.sent = False
        # Everything not yet acknowledged goes again, in publish order, before anything newer.
        self._unsent = collections.deque(self._in_flight)
        if o.session is not None and not self._closing:
            self._begin_session(o.session)
        conn.established = True
        conn.connected_at = loop.time()
        self._connected = True
        self._connected_event.set()
        if not self._lost_repeats.repeating:
            self._log.info(
                "mqtt_connected",
                broker=self._current_broker,
                protocol=o.protocol,
                session_present=connack.session_present,
                window=window,
                max_packet_size=self._max_packet_size,
                keepalive_s=self._keepalive_s,
                reason_string=shorten(connack.reason_string) if connack.reason_string else None,
            )
        else:
            conn.quiet = True  # the link flaps: logged once it proves stable (_serve)
        self._corked = True  # resends, status and whatever waited for the window: one write
        try:
            if not self._closing:  # close() publishes the offline status itself
                # A control message still pending from an earlier connection is resent above, in
                # order; publishing it again would only pile up copies while the link flaps.
                pending = {m.topic for m in self._in_flight.values() if m.control}
                self._subscribe()  # before the status: a command sent in answer to it must reach us
                if o.will_topic not in pending:
                    online = self._online_payload()
                    if online is not None:
                        self._publish_control(o.will_topic, online)
                for topic, payload in self._retained.items():
                    if topic not in pending:
                        self._publish_control(topic, payload)
            self._pump()
            self._window.resize(self._delay_window.size)  # last: new data goes after the resends and the status
        finally:
            self._write_out()

    def _begin_session(self, session: SessionHooks) -> None:
        """The session's births first on a new connection, then what the last one left unacknowledged, renumbered
        after them (``session.resend``; what it supersedes is dropped as if acknowledged)."""
        left = list(self._unsent)
        self._unsent = collections.deque(self._births(session))
        freed = 0
        for packet_id in left:
            message = self._in_flight[packet_id]
            payload = session.resend(message.topic, message.payload)
            if payload is None:
                freed += self._complete(packet_id, 0)
                continue
            if not isinstance(payload, bytes):  # refused by the session: kept (on_refused), never sent
                message.payload = payload.payload
                freed += self._complete(packet_id, _SESSION_REFUSED_CODE, reason=payload.reason)
                continue
            if payload is not message.payload:  # only data is renumbered: never retained
                message.payload = payload
                message.packet = self._encoder.qos1(self._topic_field(message.topic), payload, packet_id, False)
                if self._max_packet_size is not None and len(message.packet) > self._max_packet_size:
                    session.unstamp(message.topic)  # refused by _pump; numbering goes on without it
            self._unsent.append(packet_id)
        if freed:
            self._window.release(freed)

    def _births(self, session: SessionHooks) -> list[int]:
        """Take the session's births into the in-flight set (control: QoS 1, no window slot); their packet ids."""
        return [i for t, p in session.births() if (i := self._session_control(session, t, p)) is not None]

    def _session_control(self, session: SessionHooks, topic: str, payload: bytes) -> int | None:
        """One session message stamped into the in-flight set as a control message (QoS 1, no window slot, not
        retained); its packet id (None: the session dropped it). One too large for the broker is refused when sent,
        with its number taken back."""
        packet_id = self._new_packet_id()
        stamped = session.stamp(topic, payload)
        if not isinstance(stamped, bytes):  # births and deaths are dropped, never refused
            return None
        packet = self._encoder.qos1(self._topic_field(topic), stamped, packet_id, False)
        if self._max_packet_size is not None and len(packet) > self._max_packet_size:
            session.unstamp(topic)
        self._in_flight[packet_id] = _InFlight(topic, stamped, packet, True, None)
        return packet_id

    def rebirth(self) -> None:
        """Send the session's births now, after everything handed over before (e.g. a Sparkplug Rebirth command).
        Nothing while disconnected: the next connection starts with them anyway."""
        session = self._options.session
        if session is None or not self._connected or self._closing:
            return
        self._send_in_order(self._births(session))

    def send_session_messages(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Put session messages (e.g. a Sparkplug DBIRTH ahead of replayed data) into the wire order now: stamped,
        QoS 1 control, not retained, ahead of anything handed over after this call (also when called from inside
        ``session.stamp`` of a message being handed over: they go before it). While disconnected they wait, and the
        next connection's ``session.resend`` decides whether they still go."""
        session = self._options.session
        if session is None or self._closing:
            return
        self._send_in_order([i for t, p in messages if (i := self._session_control(session, t, p)) is not None])

    def _send_in_order(self, ids: list[int]) -> None:
        """Send these in-flight control messages now if nothing waits before them and the quota allows, else queue."""
        for packet_id in ids:
            if self._connected and not self._unsent and self._outstanding < self._quota:
                self._transmit(packet_id, self._in_flight[packet_id])
            else:
                self._unsent.append(packet_id)

    def _online_payload(self) -> bytes | None:
        online = self._options.online_payload
        if not callable(online):
            return online
        try:
            return online()
        except Exception as exc:  # a bug in the caller's callback must not stop the retained restore
            self._log.error("mqtt_online_payload_failed", error=repr(exc))
            return None

    def _oldest_sent(self) -> _InFlight | None:
        """The oldest message sent on this connection without a PUBACK yet (in practice the first)."""
        for message in self._in_flight.values():
            if message.sent:
                return message
        return None

    async def _serve(self, conn: _Connection) -> None:
        """Watch the connection until it is lost.

        Keep alive: PINGREQ after keepalive_s without sending or receiving anything; no PINGRESP within
        min(keepalive_s, puback_timeout_s) means a dead link (a half-open TCP connection). PUBACK
        deadline: the oldest unacknowledged message waiting puback_timeout_s means a stuck broker (hung,
        SIGSTOPped: TCP stays up and keep alive would take 2 x keepalive_s). Both drop the link, so the
        reconnect starts; the messages stay in flight and go again on the next connection. The oldest
        message's wait is measured from when this loop first saw it oldest: checked every quarter of
        puback_timeout_s, so a stuck link is dropped within 1.25 x puback_timeout_s."""
        loop = asyncio.get_running_loop()
        o = self._options
        timeout = o.puback_timeout_s
        oldest: _InFlight | None = None
        oldest_since = 0.0
        stable = False
        while not conn.lost.done():
            now = loop.time()
            deadline = now + timeout / 4
            keepalive = self._keepalive_s
            if keepalive:
                if conn.ping_sent_at is not None:
                    ping_deadline = conn.ping_sent_at + min(keepalive, timeout)
                    if now >= ping_deadline:
                        conn.drop(f"keep alive: no PINGRESP within {min(keepalive, timeout):g} s")
                        break
                else:
                    ping_deadline = min(conn.last_sent, conn.last_received) + keepalive
                    if now >= ping_deadline:
                        conn.ping_sent_at = now
                        conn.write(PINGREQ_BYTES)
                        continue
                deadline = min(deadline, ping_deadline)
            first = self._oldest_sent()
            if first is not oldest:
                oldest, oldest_since = first, now
            elif first is not None and now - oldest_since >= timeout:
                self._note_stuck(now - oldest_since)
                conn.drop(f"no PUBACK within {timeout:g} s")
                break
            if not stable:
                stable_at = conn.connected_at + _STABLE_CONNECTION_S
                if now >= stable_at:
                    stable = True  # a new run of the same problems is logged again
                    self._clear_suspect()  # a broker that keeps the link is not hanging up on a message
                    self._connect_repeats.reset()
                    self._lost_repeats.reset()
                    if conn.quiet:  # its mqtt_connected was left out while the link flapped
                        self._log.info(
                            "mqtt_connected", broker=self._current_broker, protocol=o.protocol, stable=True
                        )
                else:
                    deadline = min(deadline, stable_at)
            await asyncio.wait([conn.lost], timeout=max(0.0, deadline - now))
        await conn.lost

    def _note_stuck(self, oldest_age_s: float) -> None:
        if not self._stuck:  # once per episode: until a PUBACK comes again
            self._stuck = True
            self._log.warning(
                "mqtt_stuck",
                oldest_age_s=round(oldest_age_s, 3),
                inflight=self._outstanding,
                puback_timeout_s=self._options.puback_timeout_s,
            )

    def _on_connection_lost(self, conn: _Connection) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._out.clear()
        self._probe_id = None
        if not conn.established:
            return  # a failed attempt: _connect reports it
        self._set_disconnected()
        self._outstanding = 0
        self._release_held(self._held)
        self._window.stop_offers()
        if self._closing:
            self._clear_suspect()
            self._log.info("mqtt_disconnected", reason="closed")
            return
        reason = conn.lost_reason or "unknown"
        now = asyncio.get_running_loop().time()
        lived_s = now - conn.connected_at
        self._note_close(conn, lived_s)
        if lived_s >= _STABLE_CONNECTION_S:
            self._lost_repeats.reset()
            self._log.warning("mqtt_disconnected", reason=reason, by_broker=conn.server_disconnect is not None)
            return
        # Lost right after connecting: the first time logged, repeats summed up (a flapping link).
        repeats = self._lost_repeats.note(reason, now)
        if repeats == 0:
            # A 3.1.1 broker hangs up on a packet over its max_packet_size: the size of the largest
            # message in flight hints at that (mqtt.max_packet_size then keeps it from being sent).
            largest = max((len(m.packet) for m in self._in_flight.values()), default=0)
            self._log.warning(
                "mqtt_disconnected",
                reason=reason,
                by_broker=conn.server_disconnect is not None,
                connected_s=round(lived_s, 3),
                largest_unacked_bytes=largest,
            )
        elif repeats is not None:
            self._log.warning(
                "mqtt_link_flapping", reason=reason, short_connections=repeats, over_s=self._options.repeat_log_s
            )

    def _note_close(self, conn: _Connection, lived_s: float) -> None:
        """Poison detection at the loss of an established connection (rule: module docstring). The suspect is
        refused on the event loop's next turn, before the reconnect, so it is not sent again."""
        suspect = self._close_suspect(conn, lived_s)
        if suspect is None:
            self._clear_suspect()
            return
        if suspect is not self._suspect:
            self._suspect, self._suspect_closes = suspect, 0
        self._suspect_closes += 1
        # Once the broker is known to hang up on size, a suspect larger than everything it took since is
        # refused at its first close: several oversize messages cost one reconnect each, not three.
        proven = self._inferred_limit is not None and len(suspect.packet) > self._largest_acked
        if self._suspect_closes < _POISON_CLOSES and not proven:
            return
        self._clear_suspect()
        for packet_id, message in self._in_flight.items():
            if message is suspect:
                assert self._loop is not None
                self._loop.call_soon(self._refuse_poison, packet_id, suspect)
                break

    def _close_suspect(self, conn: _Connection, lived_s: float) -> _InFlight | None:
        """The message a short connection the broker closed may have died of: the largest (whole PUBLISH) sent on
        it and unacknowledged, the first sent of equal ones. None when the loss does not qualify."""
        if lived_s >= _STABLE_CONNECTION_S or conn.dropped:
            return None
        disconnect = conn.server_disconnect
        if disconnect is not None and disconnect.reason_code not in _MESSAGE_DISCONNECT_REASONS:
            return None
        suspect: _InFlight | None = None
        for message in self._in_flight.values():
            if message.sent and (suspect is None or len(message.packet) > len(suspect.packet)):
                suspect = message
        return suspect

    def _clear_suspect(self) -> None:
        self._suspect, self._suspect_closes = None, 0

    def _refuse_poison(self, packet_id: int, suspect: _InFlight) -> None:
        """Refuse the poison message (if still in flight: no PUBACK can have come while disconnected) and
        remember its size, to infer a packet limit once a smaller message passes."""
        if self._in_flight.get(packet_id) is not suspect:
            return
        size = len(suspect.packet)
        if size > _MIN_INFERRED_LIMIT and (self._limit_candidate is None or size < self._limit_candidate):
            self._limit_candidate = size
        if self._complete(packet_id, _BROKER_CLOSED_CODE):
            self._window.release()

    def _poison_evidence(self, message: _InFlight) -> None:
        """A PUBACK while a message is suspected or a limit candidate waits: a message at least as large as the
        suspect passed, so size cannot be why the broker hung up (the streak ends); a message smaller than a
        poison one passed, so its size is the likely cause: later messages that large are refused before
        sending (the inferred limit)."""
        size = len(message.packet)
        if size > self._largest_acked:
            self._largest_acked = size
        suspect = self._suspect
        if suspect is not None and message is not suspect and size >= len(suspect.packet):
            self._clear_suspect()
        candidate = self._limit_candidate
        if candidate is None:
            return
        if size >= candidate:
            self._limit_candidate = None  # a message that large passed: the broker has no such limit
            return
        self._limit_candidate = None
        limit = candidate - 1
        if self._inferred_limit is not None and self._inferred_limit <= limit:
            return
        self._inferred_limit = limit
        if self._max_packet_size is None or limit < self._max_packet_size:
            self._max_packet_size = limit
        self._log.warning(
            "mqtt_packet_limit_inferred",
            max_packet_size=limit,
            poison_packet_bytes=candidate,
            passed_packet_bytes=size,
            hint=f"messages of {candidate} bytes or more are refused before sending (packet_too_large); set "
            "mqtt.max_packet_size to the broker's limit to refuse every oversize message without reconnects",
        )

    def _set_disconnected(self) -> None:
        self._connected = False
        self._connected_event.clear()

    def _note_connect_problem(self, problem: str) -> None:
        self._clear_suspect()  # the broker was down or refused us: not a broker hanging up on one message
        # Logged when it changes, then summed up every repeat_log_s, not at every attempt of an outage.
        self._last_connect_problem = problem
        repeats = self._connect_repeats.note(problem, asyncio.get_running_loop().time())
        if repeats == 0:
            self._log.warning("mqtt_connect_failed", error=problem)
        elif repeats is not None:
            self._log.warning(
                "mqtt_connect_failing", error=problem, attempts=repeats, over_s=self._options.repeat_log_s
            )
