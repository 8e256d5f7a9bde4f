"""Data over several MQTT connections (``mqtt.connections``), behind the same ``Sink`` protocol as one.

A broker announces how many QoS 1 messages a client may have unacknowledged (MQTT 5 Receive Maximum;
Mosquitto's default is 20). Over one connection that caps the messages per round trip; N connections keep
N windows in flight and the broker serves them side by side. What stays as with one connection:

* **Per-topic order**: a topic always goes over the same connection (``route``: CRC-32 of the topic modulo
  N, so the same in every run), and each connection keeps publish order and resends in order.
* **The will and the status**: only the first connection (the primary) has the will, publishes the online
  status at every connect and the offline status at ``close``, carries the retained ``_status`` / ``_meta``
  (``set_retained``) and the subscriptions. The others are data-only (``MqttOptions.with_will`` False), with
  client ids ``{client_id}-2`` .. ``{client_id}-N``.
* **Store and forward**: the output counts as connected only while every connection is, so a lost
  connection sends live data to the spool and holds the replay back, as one lost connection does.
  ``offer_many`` takes a prefix of the batch: each connection takes its share of the batch in order; if
  one of them stops early (its link went down, or no window slot within ``wait_s``), the batch counts as
  taken up to the first message that was not, and the caller spools the rest. Messages after that point
  that another connection did take go out live *and* to the spool (counted in ``spooled_twice``): a
  duplicate in the same ``seq``, replayed as historical, which at-least-once delivery allows; nothing is
  lost. Replays (``try_publish``) go over their topic's connection and are acknowledged per handle.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TypeAlias

import structlog

from gateway.errors import SinkError
from gateway.mqtt.connection import DEFAULT_CLOSE_TIMEOUT_S, MqttSink
from gateway.mqtt.options import MqttOptions, publish_topic_problem
from gateway.sinks.base import Handle

log = structlog.get_logger("cellgate.mqtt")

_ROUTE_CACHE_ENTRIES = 65_536  # topics whose connection is remembered; ~100 bytes each


def route(topic: str, connections: int) -> int:
    """The connection (0-based; 0 is the primary) that carries ``topic``: CRC-32 of its UTF-8 modulo
    ``connections``. Pure and the same in every run, so a topic never changes connection."""
    return zlib.crc32(topic.encode("utf-8", errors="surrogatepass")) % connections


def connection_options(options: MqttOptions, index: int) -> MqttOptions:
    """The options of connection ``index`` (0-based): the primary's as given; the others data-only, without
    will, online status or subscriptions, with their own client id ``{client_id}-{index + 1}``."""
    if index == 0:
        return options
    return replace(
        options,
        client_id=f"{options.client_id}-{index + 1}",
        with_will=False,
        online_payload=None,
        subscriptions=(),
        on_message=None,
    )


class MqttFanOut:
    """N ``MqttSink`` connections to the same broker(s), used as one. ``async with MqttFanOut(...)``.

    The surface is ``MqttSink``'s (what the runtime, health and store-and-forward use). Counters are sums
    over the connections; ``broker`` is the primary's.
    """

    def __init__(
        self,
        options: MqttOptions,
        *,
        connections: int,
        on_ack: Callable[[Handle], None] | None = None,
        on_refused: Callable[[str, bytes, str, Handle | None], bool | None] | None = None,
    ) -> None:
        if connections < 2:
            raise ValueError("a fan-out needs at least 2 connections (use MqttSink for one)")
        self._sinks = tuple(
            MqttSink(connection_options(options, index), on_ack=on_ack, on_refused=on_refused)
            for index in range(connections)
        )
        self._primary = self._sinks[0]
        self._routes: dict[str, int] = {}
        self._spooled_twice = 0

    # ------------------------------------------------------------------------------------ state

    @property
    def connections(self) -> tuple[MqttSink, ...]:
        """The connections, the primary first."""
        return self._sinks

    @property
    def connected(self) -> bool:
        """True while every connection is connected."""
        return all(sink.connected for sink in self._sinks)

    @property
    def in_flight(self) -> int:
        return sum(sink.in_flight for sink in self._sinks)

    @property
    def window(self) -> int:
        return sum(sink.window for sink in self._sinks)

    @property
    def published(self) -> int:
        return sum(sink.published for sink in self._sinks)

    @property
    def delivered(self) -> int:
        return sum(sink.delivered for sink in self._sinks)

    @property
    def failed(self) -> int:
        return sum(sink.failed for sink in self._sinks)

    @property
    def control_delivered(self) -> int:
        return sum(sink.control_delivered for sink in self._sinks)

    @property
    def refused_by_reason(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for sink in self._sinks:
            for reason, count in sink.refused_by_reason.items():
                total[reason] = total.get(reason, 0) + count
        return total

    @property
    def spooled_twice(self) -> int:
        """Messages a connection took after another connection of the same batch stopped early: sent live and
        also given back to be spooled (see the module docstring)."""
        return self._spooled_twice

    @property
    def broker(self) -> str:
        return self._primary.broker

    @property
    def brokers(self) -> tuple[str, ...]:
        return self._primary.brokers

    def unacked(self) -> list[tuple[str, bytes]]:
        """Every connection's unacknowledged data, each in publish order (so every topic in order)."""
        return [message for sink in self._sinks for message in sink.unacked()]

    async def wait_connected(self, timeout_s: float) -> None:
        """Return once every connection is connected; SinkError (with a connect error) after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for sink in self._sinks:
            await sink.wait_connected(max(0.0, deadline - loop.time()))

    async def until_connected(self) -> None:
        for sink in self._sinks:
            await sink.until_connected()

    # ------------------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> MqttFanOut:
        entered: list[MqttSink] = []
        try:
            for sink in self._sinks:
                await sink.__aenter__()
                entered.append(sink)
        except BaseException:
            for sink in entered:
                await sink.close(0)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(DEFAULT_CLOSE_TIMEOUT_S)

    async def close(self, timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Close every connection at once (each drains up to ``timeout_s``); the primary publishes the offline
        status. Whatever is unacknowledged afterwards is in ``unacked()``."""
        await asyncio.gather(*(sink.close(timeout_s) for sink in self._sinks))
        log.info(
            "mqtt_connections_closed",
            connections=len(self._sinks),
            delivered=[sink.delivered for sink in self._sinks],
            spooled_twice=self._spooled_twice,
        )

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every message handed over so far is acknowledged on every connection; False on timeout."""
        results = await asyncio.gather(*(sink.flush(timeout_s) for sink in self._sinks))
        return all(results)

    # ------------------------------------------------------------------------------- publishing

    def _route(self, topic: str) -> int:
        """``route`` from a cache; SinkError for a topic that cannot be published to (so a bad topic fails
        before any of the batch is handed over)."""
        index = self._routes.get(topic)
        if index is None:
            problem = publish_topic_problem(topic)
            if problem:
                raise SinkError(f"cannot publish to {topic!r}: {problem}")
            if len(self._routes) >= _ROUTE_CACHE_ENTRIES:
                self._routes.clear()  # bounded: a tag map that changes topics does not grow it
            index = self._routes[topic] = route(topic, len(self._sinks))
        return index

    def _split(self, messages: Sequence[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
        parts: list[list[tuple[str, bytes]]] = [[] for _ in self._sinks]
        cached = self._routes.get
        for message in messages:
            index = cached(message[0])
            if index is None:
                index = self._route(message[0])
            parts[index].append(message)
        return parts

    async def offer_many(self, messages: Sequence[tuple[str, bytes]], *, wait_s: float) -> int:
        """``MqttSink.offer_many`` over the connections: each takes its share in order, side by side; returns
        how many of ``messages``, from the start, were all taken (see the module docstring)."""
        if not self.connected:
            return 0
        parts = self._split(messages)
        # First what fits now on every connection (wait_s 0 never yields), then the waits side by side.
        sinks = self._sinks
        taken = [await sinks[index].offer_many(part, wait_s=0) if part else 0 for index, part in enumerate(parts)]
        short = [index for index, part in enumerate(parts) if taken[index] < len(part)]
        if len(short) == 1 and wait_s > 0:  # one connection to wait for: awaited here, no task
            index = short[0]
            taken[index] += await sinks[index].offer_many(parts[index][taken[index] :], wait_s=wait_s)
        elif short and wait_s > 0:
            more = await asyncio.gather(
                *(self._sinks[index].offer_many(parts[index][taken[index] :], wait_s=wait_s) for index in short),
                return_exceptions=True,
            )
            for index, result in zip(short, more, strict=True):
                if isinstance(result, BaseException):
                    raise result
                taken[index] += result
        return self._prefix_taken(messages, parts, taken)

    def _prefix_taken(
        self, messages: Sequence[tuple[str, bytes]], parts: list[list[tuple[str, bytes]]], taken: list[int]
    ) -> int:
        """How many messages from the start of the batch were all taken; counts the ones taken after it."""
        if all(count == len(part) for count, part in zip(taken, parts, strict=True)):
            return len(messages)
        seen = [0] * len(parts)
        routes = self._routes
        for position, (topic, _) in enumerate(messages):
            index = routes.get(topic)
            if index is None:
                index = route(topic, len(self._sinks))
            if seen[index] == taken[index]:
                self._spooled_twice += sum(taken) - sum(seen)
                return position
            seen[index] += 1
        return len(messages)  # not reached: some part was short

    def try_publish(self, topic: str, payload: bytes, handle: Handle) -> bool:
        """``MqttSink.try_publish`` on the topic's connection."""
        return self._sinks[self._route(topic)].try_publish(topic, payload, handle)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self._sinks[self._route(topic)].publish(topic, payload, retain=retain)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> None:
        parts = self._split(messages)
        await asyncio.gather(*(sink.publish_many(part) for sink, part in zip(self._sinks, parts, strict=True) if part))

    def set_retained(self, topic: str, payload: bytes) -> None:
        """On the primary: published now and after every reconnect of it."""
        self._primary.set_retained(topic, payload)

    def clear_retained(self, topic: str) -> None:
        self._primary.clear_retained(topic)


MqttOutput: TypeAlias = MqttSink | MqttFanOut
"""The gateway's MQTT output: one connection, or a fan-out over ``mqtt.connections``."""


def mqtt_output(
    options: MqttOptions,
    *,
    connections: int,
    on_ack: Callable[[Handle], None] | None = None,
    on_refused: Callable[[str, bytes, str, Handle | None], bool | None] | None = None,
) -> MqttOutput:
    """``MqttSink`` for one connection, ``MqttFanOut`` for more."""
    if connections <= 1:
        return MqttSink(options, on_ack=on_ack, on_refused=on_refused)
    return MqttFanOut(options, connections=connections, on_ack=on_ack, on_refused=on_refused)
