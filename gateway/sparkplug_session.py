"""Sparkplug B at run time: the edge node's MQTT session (README "Sparkplug B").

``SparkplugSession`` is what the runtime hands the MQTT connection (``gateway.mqtt.options.SessionHooks``) when
``gateway.outputs`` lists sparkplug:

* the will of every CONNECT is the NDEATH with the next ``bdSeq``, kept in ``state_dir/sparkplug-bdseq`` so it
  goes on counting across restarts (``will_payload``);
* after every CONNACK: NBIRTH, then a DBIRTH per device whose link is up (``births``), before anything else;
* ``seq`` is stamped on each message as it enters the wire order (``stamp``), and a message a lost connection left
  unacknowledged is renumbered after the next births as historical data (``resend``);
* NCMD ``Node Control/Rebirth`` = true sends the births again (a fresh seq run); any write (NCMD metric, DCMD) is
  refused, logged and counted: Cellgate does not write to the PLCs.

The device encoders register here (``devices``) so the births know every device and its last values.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import structlog

from gateway.encoders.sparkplug import SparkplugDeviceEncoder, SparkplugEdgeNode, parse_command
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
        self, node: SparkplugEdgeNode, *, bd_seq_path: Path | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.node = node
        self.devices: dict[str, SparkplugDeviceEncoder] = {}
        self._bd_seq_path = bd_seq_path
        self._last_bd_seq = read_bd_seq(bd_seq_path) if bd_seq_path is not None else None
        self._clock = clock
        self._rebirth: Callable[[], None] = lambda: None
        self.stamp = node.stamp
        self.resend = node.resend
        self.rebirths = 0
        """Rebirth commands acted on."""
        self.commands_refused = 0
        """Writes asked for by NCMD/DCMD (each metric counts), refused: Cellgate is read-only."""

    def bind(self, rebirth: Callable[[], None]) -> None:
        """``rebirth``: sends ``births()`` now, after what the connection already has (``MqttSink.rebirth``)."""
        self._rebirth = rebirth

    @property
    def subscriptions(self) -> tuple[tuple[str, QoS], ...]:
        return ((self.node.ncmd_topic, 1), (self.node.dcmd_filter, 1))

    def will_payload(self) -> bytes:
        """The NDEATH of the next CONNECT: bdSeq + 1 after the last connection's (this run's or, at start, the stored
        one). An attempt that gets no CONNACK (broker down) uses no number: the next attempt has the same."""
        self.node.bd_seq = 0 if self._last_bd_seq is None else (self._last_bd_seq + 1) % 256
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
        now = self._clock()
        messages = [self.node.birth(now)]
        messages += [device.birth(now) for device in self.devices.values() if device.alive]
        return [(message.topic, message.payload) for message in messages]

    def on_message(self, topic: str, payload: bytes) -> None:
        """An NCMD or DCMD (the connection's ``on_message``)."""
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


__all__ = ["BD_SEQ_FILE", "SparkplugSession", "historical_form", "read_bd_seq", "write_bd_seq"]
