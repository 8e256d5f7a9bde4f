"""Sparkplug B at run time: the edge node's MQTT session (README "Sparkplug B").

``SparkplugSession`` is what the runtime hands the MQTT connection (``gateway.mqtt.options.SessionHooks``) when
``gateway.outputs`` lists sparkplug:

* the will of every CONNECT is the NDEATH with the next ``bdSeq``, kept in ``state_dir/sparkplug-bdseq`` so it
  goes on counting across restarts (``will_payload``);
* after every CONNACK: NBIRTH, then a DBIRTH per device whose link is up (``births``), before anything else;
* ``seq`` is stamped on each message as it enters the wire order (``stamp``), and a message a lost connection left
  unacknowledged is renumbered after the next births as historical data (``resend``);
* NCMD ``Node Control/Rebirth`` = true sends the births again (a fresh seq run); any write (NCMD metric, DCMD) is
  refused, logged and counted: Cellgate does not write to the PLCs;
* with a primary host (``sparkplug.primary_host``): after every CONNECT nothing is published (births withheld, data
  spooled through ``HostGate``) until ``spBv1.0/STATE/{host}`` says online; then the births, then the spool's replay.
  STATE offline holds the data again; the next online sends the births anew.

The device encoders register here (``devices``) so the births know every device and its last values.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from gateway.encoders.sparkplug import NAMESPACE, SparkplugDeviceEncoder, SparkplugEdgeNode, parse_command
from gateway.sinks.base import Handle, Sink
from gateway.vocabulary import QoS

log = structlog.get_logger("cellgate.sparkplug")

BD_SEQ_FILE = "sparkplug-bdseq"
"""In the state directory: the bdSeq of the last CONNECT, so the next run's first CONNECT continues after it."""


def read_bd_seq(path: Path) -> int | None:
    """The bdSeq last used (0-255), or None when there is none (first run) or it is unreadable (logged)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.error("sparkplug_bdseq_unreadable", path=str(path), error=str(exc), action="starting at 0")
        return None
    if not text.isdigit() or int(text) > 255:
        problem = f"not 0-255: {text[:20]!r}"
        log.error("sparkplug_bdseq_unreadable", path=str(path), error=problem, action="starting at 0")
        return None
    return int(text)


def write_bd_seq(path: Path, bd_seq: int) -> None:
    """Keep ``bd_seq`` (written aside and renamed: a crash leaves the old value or the new one)."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{bd_seq}\n", encoding="ascii")
    os.replace(temporary, path)


class SparkplugSession:
    """The edge node's per-connection behaviour; see the module docstring. ``bind(rebirth)`` before connecting."""

    def __init__(
        self,
        node: SparkplugEdgeNode,
        *,
        bd_seq_path: Path | None,
        clock: Callable[[], float] = time.time,
        primary_host: str | None = None,
    ) -> None:
        """``primary_host``: hold births and data until its STATE says online."""
        self.node = node
        self.primary_host = primary_host
        self.state_topic = f"{NAMESPACE}/STATE/{primary_host}" if primary_host is not None else None
        self._host_online = asyncio.Event()
        if primary_host is None:
            self._host_online.set()
        self._held: list[tuple[str, bytes]] = []
        self._on_held: Callable[[list[tuple[str, bytes]]], None] = lambda held: None
        self.devices: dict[str, SparkplugDeviceEncoder] = {}
        self._bd_seq_path = bd_seq_path
        self._last_bd_seq = read_bd_seq(bd_seq_path) if bd_seq_path is not None else None
        self._clock = clock
        self._rebirth: Callable[[], None] = lambda: None
        self.stamp = node.stamp
        self.rebirths = 0
        """Rebirth commands acted on."""
        self.commands_refused = 0
        """Writes asked for by NCMD/DCMD (each metric counts), refused: Cellgate is read-only."""

    def bind(
        self, rebirth: Callable[[], None], on_held: Callable[[list[tuple[str, bytes]]], None] | None = None
    ) -> None:
        """``rebirth``: sends ``births()`` now, after what the connection already has (``MqttSink.rebirth``).
        ``on_held``: takes the data a lost connection left unacknowledged while the primary host is not online (to
        the spool)."""
        self._rebirth = rebirth
        if on_held is not None:
            self._on_held = on_held

    @property
    def subscriptions(self) -> tuple[tuple[str, QoS], ...]:
        commands: tuple[tuple[str, QoS], ...] = ((self.node.ncmd_topic, 1), (self.node.dcmd_filter, 1))
        return commands if self.state_topic is None else ((self.state_topic, 1), *commands)

    @property
    def ready(self) -> bool:
        """Whether births and data may go out (always, without a primary host)."""
        return self._host_online.is_set()

    async def until_ready(self) -> None:
        await self._host_online.wait()

    def resend(self, topic: str, payload: bytes) -> bytes | None:
        """``SparkplugEdgeNode.resend``; while the primary host is not online, data is held for the spool instead."""
        if self.ready:
            return self.node.resend(topic, payload)
        if self.node.resend(topic, payload) is not None:
            self._held.append((topic, payload))
        return None

    def will_payload(self) -> bytes:
        """The NDEATH of the next CONNECT: bdSeq + 1 after the last connection's (this run's or, at start, the stored
        one). An attempt that gets no CONNACK (broker down) uses no number: the next attempt has the same."""
        self.node.bd_seq = 0 if self._last_bd_seq is None else (self._last_bd_seq + 1) % 256
        if self.primary_host is not None:
            self._host_online.clear()  # every new session waits for the host's STATE again
        return self.node.will().payload

    def _connected_with(self, bd_seq: int) -> None:
        """The CONNECT with ``bd_seq`` was accepted: count it, and keep it for the next run."""
        if bd_seq == self._last_bd_seq:
            return
        self._last_bd_seq = bd_seq
        if self._bd_seq_path is not None:
            try:
                write_bd_seq(self._bd_seq_path, bd_seq)
            except OSError as exc:  # the count goes on in memory; a restart may then repeat a bdSeq
                log.error("sparkplug_bdseq_not_saved", path=str(self._bd_seq_path), error=str(exc), bd_seq=bd_seq)

    def births(self) -> Sequence[tuple[str, bytes]]:
        """NBIRTH, then the DBIRTH of every device whose link is up (one that is down has its DBIRTH when it
        comes back). Called after every CONNACK (and for a Rebirth)."""
        self._connected_with(self.node.bd_seq)
        if not self.ready:
            return []  # after the primary host's STATE online (on_message)
        now = self._clock()
        messages = [self.node.birth(now)]
        messages += [device.birth(now) for device in self.devices.values() if device.alive]
        return [(message.topic, message.payload) for message in messages]

    def on_message(self, topic: str, payload: bytes) -> None:
        """An NCMD, a DCMD or the primary host's STATE (the connection's ``on_message``)."""
        if topic == self.state_topic:
            self._on_state(payload)
            return
        command = parse_command(self.node, topic, payload)
        if command is None:
            return
        if command.malformed:
            self.commands_refused += 1
            log.warning("sparkplug_command_refused", topic=topic, reason="malformed", metrics=[])
            return
        if command.writes:
            self.commands_refused += len(command.writes)
            log.warning(
                "sparkplug_command_refused",
                topic=topic,
                reason="read_only",
                metrics=list(command.writes[:20]),
                refused_total=self.commands_refused,
            )
        if command.rebirth:
            self.rebirths += 1
            log.info("sparkplug_rebirth", bd_seq=self.node.bd_seq, devices=sum(d.alive for d in self.devices.values()))
            self._rebirth()


    def _on_state(self, payload: bytes) -> None:
        """STATE 3.0 is JSON ``{"online": bool, "timestamp": ms}``; the text ONLINE/OFFLINE of older hosts too."""
        try:
            online = bool(json.loads(payload)["online"])
        except (ValueError, KeyError, TypeError):
            online = payload.strip().upper() == b"ONLINE"
        if online == self.ready:
            return
        log.info("sparkplug_primary_host", host=self.primary_host, online=online)
        if not online:
            self._host_online.clear()  # data is spooled; the next online sends the births anew
            return
        self._host_online.set()
        self._rebirth()  # NBIRTH and DBIRTHs before anything the opened gate lets through
        held, self._held = self._held, []
        if held:
            self._on_held(held)


class HostGate:
    """The MQTT sink as store-and-forward sees it while a primary host is configured: connected only once the host
    is online, so until then live data goes to the spool and the replay waits (``Sink``)."""

    def __init__(self, sink: Sink, session: SparkplugSession) -> None:
        self._sink = sink
        self._session = session

    @property
    def connected(self) -> bool:
        return self._sink.connected and self._session.ready

    @property
    def in_flight(self) -> int:
        return self._sink.in_flight

    async def until_connected(self) -> None:
        while not self.connected:
            await self._sink.until_connected()
            await self._session.until_ready()

    async def offer_many(self, messages: Sequence[tuple[str, bytes]], *, wait_s: float) -> int:
        if not self._session.ready:
            return 0
        return await self._sink.offer_many(messages, wait_s=wait_s)

    def try_publish(self, topic: str, payload: bytes, handle: Handle) -> bool:
        return self._session.ready and self._sink.try_publish(topic, payload, handle)

    def unacked(self) -> list[tuple[str, bytes]]:
        return self._sink.unacked()


def historical_form(
    sparkplug: SparkplugEdgeNode | None, uns_json: Callable[[str, bytes], bytes] | None
) -> Callable[[str, bytes], bytes | None]:
    """The spool's form of a message of either encoding (store-and-forward's ``historical``)."""
    if sparkplug is None:
        assert uns_json is not None
        return uns_json
    if uns_json is None:
        return sparkplug.historical
    prefix = sparkplug.prefix

    def either(topic: str, payload: bytes) -> bytes | None:
        if topic.startswith(prefix):
            return sparkplug.historical(topic, payload)
        return uns_json(topic, payload)

    return either


__all__ = ["BD_SEQ_FILE", "HostGate", "SparkplugSession", "historical_form", "read_bd_seq", "write_bd_seq"]
