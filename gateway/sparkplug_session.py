"""Sparkplug B at run time: the edge node's MQTT session (README "Sparkplug B").

``SparkplugSession`` is what the runtime hands the MQTT connection (``gateway.mqtt.options.SessionHooks``) when
``gateway.outputs`` lists sparkplug:

* the will of every CONNECT is the NDEATH with the next ``bdSeq``, kept in ``state_dir/sparkplug-bdseq`` so it
  goes on counting across restarts (``will_payload``);
* after every CONNACK: NBIRTH, then a DBIRTH per device whose link is up (``births``), before anything else;
* ``seq`` is stamped on each message as it enters the wire order (``stamp``), and a message a lost connection left
  unacknowledged is renumbered after the next births as historical data (``resend``);
* ``stamp`` also follows which devices a host holds born (DBIRTH since the last NBIRTH, no DDEATH since): DDATA of a
  device that is not (a replay from the spool, or data a lost connection left, of a device whose PLC link is down at
  the reconnect) is preceded by a DBIRTH with its last values, all of quality bad, and followed by its DDEATH once
  ``REPLAY_DEATH_AFTER_S`` passed without more of its data, so a host never sees DDATA of a device not born. A DDEATH
  of a device not born on the wire (its link dropped before a reconnect, and the DDEATH reached the connection after
  the births that no longer had the device) is dropped: ``stamp`` returns None and the connection settles it unsent
  (counted in ``dropped``). DDATA that cannot be born (no catalogue; its DBIRTH did not go, e.g. too large for the
  broker) is refused instead: ``stamp`` returns a ``SessionRefusal`` (``NOT_BORN``) and the connection hands it to
  ``on_refused`` unsent, so store and forward keeps it as a dead letter (counted in ``ddata_refused``). A device whose
  DBIRTH was taken back is not born for a replay again until the next NBIRTH (each try would be refused the same);
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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import structlog

from gateway.encoders.sparkplug import NAMESPACE, SparkplugDeviceEncoder, SparkplugEdgeNode, parse_command
from gateway.mqtt.options import SessionRefusal
from gateway.sinks.base import Handle, Sink
from gateway.vocabulary import QoS

log = structlog.get_logger("cellgate.sparkplug")

REPLAY_DEATH_AFTER_S = 1.0
"""A device born only for its replayed data (its link is down) gets its DDEATH once this long passed without more."""

DROPPED_DDEATH = "ddeath_not_born"
"""Drop reason: a DDEATH of a device not born on the wire (its DBIRTH was not among the births of this session)."""
DROP_REASONS = (DROPPED_DDEATH,)
NOT_BORN = "sparkplug_not_born"
"""Refusal reason (a dead letter): DDATA of a device not born on the wire that could not be born for it (no catalogue,
or its DBIRTH did not go)."""

BD_SEQ_FILE = "sparkplug-bdseq"
"""In the state directory: the bdSeq of the last CONNECT, so the next run's first CONNECT continues after it."""


class SlotFiles(Protocol):
    """Small state files written atomically (``gateway.seq_reservation.SeqFileStore``: with its reserve, so they are
    still written on a full state disk)."""

    @property
    def directory(self) -> Path: ...

    def read(self, name: str) -> bytes | None: ...

    def write(self, name: str, data: bytes) -> None: ...


def read_bd_seq(files: SlotFiles) -> int | None:
    """The bdSeq last used (0-255), or None when there is none (first run) or it is unreadable (logged)."""
    path = files.directory / BD_SEQ_FILE
    try:
        data = files.read(BD_SEQ_FILE)
    except OSError as exc:
        log.error("sparkplug_bdseq_unreadable", path=str(path), error=str(exc), action="starting at 0")
        return None
    if data is None:
        return None
    text = data.decode("ascii", errors="replace").strip()
    if not text.isdigit() or int(text) > 255:
        problem = f"not 0-255: {text[:20]!r}"
        log.error("sparkplug_bdseq_unreadable", path=str(path), error=problem, action="starting at 0")
        return None
    return int(text)


def write_bd_seq(files: SlotFiles, bd_seq: int) -> None:
    """Keep ``bd_seq`` (atomically: a crash leaves the old value or the new one)."""
    files.write(BD_SEQ_FILE, f"{bd_seq}\n".encode("ascii"))


class SparkplugSession:
    """The edge node's per-connection behaviour; see the module docstring. ``bind(rebirth)`` before connecting."""

    def __init__(
        self,
        node: SparkplugEdgeNode,
        *,
        bd_seq_files: SlotFiles | None,
        clock: Callable[[], float] = time.time,
        primary_host: str | None = None,
        replay_death_after_s: float = REPLAY_DEATH_AFTER_S,
    ) -> None:
        """``primary_host``: hold births and data until its STATE says online. ``replay_death_after_s``: how long
        after the last replayed data of a device whose link is down its DDEATH follows."""
        self._replay_death_after_s = replay_death_after_s
        self.node = node
        self.primary_host = primary_host
        self.state_topic = f"{NAMESPACE}/STATE/{primary_host}" if primary_host is not None else None
        self._host_online = asyncio.Event()
        if primary_host is None:
            self._host_online.set()
        self._held: list[tuple[str, bytes]] = []
        self._on_held: Callable[[list[tuple[str, bytes]]], None] = lambda held: None
        self.devices: dict[str, SparkplugDeviceEncoder] = {}
        self._bd_seq_files = bd_seq_files
        self._last_bd_seq = read_bd_seq(bd_seq_files) if bd_seq_files is not None else None
        self._clock = clock
        self._rebirth: Callable[[], None] = lambda: None
        self._send: Callable[[Sequence[tuple[str, bytes]]], None] = lambda messages: None
        self._node_stamp = node.stamp
        self._ddata_prefix = node.topic("DDATA") + "/"
        self._ddeath_prefix = node.topic("DDEATH") + "/"
        self._born: set[str] = set()
        """Devices a host holds born on the wire now: DBIRTH stamped since the last NBIRTH, no DDEATH since."""
        self._live_ddata: set[str] = set()
        """DDATA topics of the born devices whose DBIRTH was their own (not one for a replay): ``stamp``'s fast path."""
        self._birth_for: str | None = None
        """The device whose DBIRTH for a replay is being sent."""
        self._unborn: set[str] = set()
        """Devices whose DBIRTH was taken back (``unstamp``: too large) since the last NBIRTH: no replay DBIRTH."""
        self._born_for_replay: dict[str, float] = {}
        """Devices born only for replayed data (link down): when their last data was stamped (monotonic seconds)."""
        self._replay_deaths: asyncio.TimerHandle | None = None
        self._retired: dict[str, SparkplugDeviceEncoder] = {}
        """Devices a reload removed, for the DBIRTH their spooled data may still need."""
        self.rebirths = 0
        """Rebirth commands acted on."""
        self.commands_refused = 0
        """Writes asked for by NCMD/DCMD (each metric counts), refused: Cellgate is read-only."""
        self.commands_malformed = 0
        """NCMD/DCMD payloads that did not parse."""
        self.replay_births = 0
        """DBIRTHs sent for replayed data of a device whose link is down."""
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        """Messages ``stamp`` dropped, by reason (``DROP_REASONS``)."""
        self._drops_logged: set[str] = set()
        """Devices whose drop was logged since the last NBIRTH or their last DBIRTH: one line per episode."""
        self.ddata_refused = 0
        """DDATA ``stamp`` refused (``NOT_BORN``): its device could not be born."""
        self._refusals_logged: set[str] = set()
        """Devices whose refused DDATA was logged since the last NBIRTH or their last DBIRTH: one line per episode."""

    def bind(
        self,
        rebirth: Callable[[], None],
        on_held: Callable[[list[tuple[str, bytes]]], None] | None = None,
        send: Callable[[Sequence[tuple[str, bytes]]], None] | None = None,
    ) -> None:
        """``rebirth``: sends ``births()`` now, after what the connection already has (``MqttSink.rebirth``).
        ``on_held``: takes the data a lost connection left unacknowledged while the primary host is not online (to
        the spool). ``send``: puts session messages (a DBIRTH, a DDEATH) into the wire order now, stamped, ahead of
        anything handed over after them, also from inside ``stamp`` (``MqttSink.send_session_messages``)."""
        self._rebirth = rebirth
        if on_held is not None:
            self._on_held = on_held
        if send is not None:
            self._send = send

    def retire(self, device: str) -> None:
        """``device`` left the tag map (a reload): no births any more, but data of it still in the spool can be
        born for its replay."""
        encoder = self.devices.pop(device, None)
        if encoder is not None:
            self._retired[device] = encoder

    def stamp(self, topic: str, payload: bytes) -> bytes | SessionRefusal | None:
        """``SparkplugEdgeNode.stamp``, following which devices are born on the wire: DDATA of a device that is not
        gets a DBIRTH first (``replay_birth``: its link is down, so this is replayed data). None (dropped) for a
        DDEATH of a device that is not born; a refusal (``NOT_BORN``, kept by the connection's ``on_refused``) for DDATA
        of one that cannot be (no catalogue, or the DBIRTH did not go): a host must never see either. Neither takes a
        ``seq``."""
        if topic in self._live_ddata:  # the usual case: data of a device born on the wire by its own DBIRTH
            return self._node_stamp(topic, payload)
        if topic.startswith(self._ddata_prefix):
            device = topic[len(self._ddata_prefix) :]
            if device not in self._born:
                if device not in self._unborn:
                    self._birth_for_replay(device)
                if device not in self._born:
                    return self._refuse(device, payload)
            if device in self._born_for_replay:
                self._born_for_replay[device] = time.monotonic()
        elif topic.startswith(self._ddeath_prefix):
            device = topic[len(self._ddeath_prefix) :]
            if device not in self._born:
                self._drop(device, DROPPED_DDEATH)
                return None
            self._follow(topic)
        elif topic.startswith(self.node.prefix):
            self._follow(topic)
        return self._node_stamp(topic, payload)

    def _drop(self, device: str, reason: str) -> None:
        self.dropped[reason] += 1
        if device not in self._drops_logged:
            self._drops_logged.add(device)
            total = sum(self.dropped.values())
            log.info("sparkplug_message_dropped", device=device, reason=reason, dropped_total=total)

    def _refuse(self, device: str, payload: bytes) -> SessionRefusal:
        self.ddata_refused += 1
        if device not in self._refusals_logged:
            self._refusals_logged.add(device)
            cause = "dbirth_not_sent" if device in self.devices or device in self._retired else "no_catalogue"
            log.warning("sparkplug_ddata_refused", device=device, reason=NOT_BORN, cause=cause,
                        refused_total=self.ddata_refused)  # fmt: skip
        return SessionRefusal(NOT_BORN, payload)

    def unstamp(self, topic: str) -> None:
        """``SparkplugEdgeNode.unstamp``: the message will not be sent (refused as too large)."""
        self.node.unstamp(topic)
        if topic.startswith(self.node.prefix) and "/DBIRTH/" in topic:
            device = topic.rsplit("/", 1)[1]
            self._born.discard(device)
            self._live_ddata.discard(self._ddata_prefix + device)
            self._unborn.add(device)

    def _follow(self, topic: str) -> None:
        kind = topic[len(self.node.prefix) :].split("/", 1)[0]
        if kind == "NBIRTH":
            self._born.clear()
            self._live_ddata.clear()
            self._born_for_replay.clear()
            self._drops_logged.clear()
            self._unborn.clear()
            self._refusals_logged.clear()
        elif kind == "DBIRTH":
            device = topic.rsplit("/", 1)[1]
            self._born.add(device)
            self._unborn.discard(device)
            self._drops_logged.discard(device)
            self._refusals_logged.discard(device)
            if device != self._birth_for:  # its own DBIRTH (the link is up): no DDEATH for a replay any more
                self._born_for_replay.pop(device, None)
                self._live_ddata.add(self._ddata_prefix + device)
        elif kind == "DDEATH":
            device = topic.rsplit("/", 1)[1]
            self._born.discard(device)
            self._live_ddata.discard(self._ddata_prefix + device)
            self._born_for_replay.pop(device, None)

    def unknown_device(self, topic: str) -> str | None:
        """The device of a DDATA ``topic`` this run has no catalogue for (see ``HostGate``); None for any other."""
        if not topic.startswith(self._ddata_prefix) or topic in self._live_ddata:
            return None
        device = topic[len(self._ddata_prefix) :]
        return None if device in self.devices or device in self._retired else device

    def _birth_for_replay(self, device: str) -> None:
        encoder = self.devices.get(device) or self._retired.get(device)
        if encoder is None:  # store-and-forward's HostGate keeps such replays as dead letters
            return
        birth = encoder.replay_birth(self._clock())
        self.replay_births += 1
        self._born_for_replay[device] = time.monotonic()
        self._birth_for = device
        try:
            self._send([(birth.topic, birth.payload)])  # stamped (seq) and born in _follow, ahead of the data
        finally:
            self._birth_for = None
        if self._replay_deaths is None:
            self._replay_deaths = asyncio.get_running_loop().call_later(self._replay_death_after_s, self._end_replays)

    def _end_replays(self) -> None:
        """DDEATH for each device born for its replayed data that had none for ``replay_death_after_s`` and whose
        link is still down (a link that came back has sent its own DBIRTH, live)."""
        self._replay_deaths = None
        now = time.monotonic()
        ended = [device for device, last in self._born_for_replay.items() if now - last >= self._replay_death_after_s]
        deaths: list[tuple[str, bytes]] = []
        for device in ended:
            del self._born_for_replay[device]
            encoder = self.devices.get(device) or self._retired.get(device)
            if encoder is not None and not encoder.alive and device in self._born:
                deaths.append((encoder.ddeath_topic, encoder.death_payload(self._clock())))
        if deaths:
            self._send(deaths)
        if self._born_for_replay:
            self._replay_deaths = asyncio.get_running_loop().call_later(self._replay_death_after_s, self._end_replays)

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

    def resend(self, topic: str, payload: bytes) -> bytes | SessionRefusal | None:
        """``SparkplugEdgeNode.resend``; while the primary host is not online, data is held for the spool instead."""
        unstamped = self.node.resend_form(topic, payload)
        if unstamped is None or unstamped is payload:  # births and deaths (superseded); other encodings
            return unstamped
        if self.ready:
            return self.stamp(topic, unstamped)
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
        files = self._bd_seq_files
        if files is not None:
            try:
                write_bd_seq(files, bd_seq)
            except OSError as exc:  # the count goes on in memory; a restart may then repeat a bdSeq
                log.error("sparkplug_bdseq_not_saved", path=str(files.directory / BD_SEQ_FILE), error=str(exc),
                          bd_seq=bd_seq)  # fmt: skip

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
            self.commands_malformed += 1
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


UNKNOWN_DEVICE = "sparkplug_unknown_device"
"""Dead-letter reason of a replayed DDATA of a device the running gateway has no catalogue for."""


class HostGate:
    """The MQTT sink as store-and-forward sees it with Sparkplug (``Sink``): with a primary host, connected only once
    the host is online, so until then live data goes to the spool and the replay waits. A replay of a device that
    neither the running tag map nor one reloaded since the start has (spooled by an earlier run with another map)
    cannot be born for its replay: it goes to ``on_refused`` (the dead letters, reason ``UNKNOWN_DEVICE``) instead of
    out as DDATA of a device a host has never seen born."""

    def __init__(
        self,
        sink: Sink,
        session: SparkplugSession,
        on_refused: Callable[[str, bytes, str, Handle | None], bool | None] | None = None,
    ) -> None:
        self._sink = sink
        self._session = session
        self._on_refused = on_refused
        self._unknown_logged: set[str] = set()

    @property
    def connected(self) -> bool:
        return self._sink.connected and self._session.ready

    @property
    def in_flight(self) -> int:
        return self._sink.in_flight

    @property
    def window(self) -> int:
        return self._sink.window

    async def until_connected(self) -> None:
        while not self.connected:
            await self._sink.until_connected()
            await self._session.until_ready()

    async def offer_many(self, messages: Sequence[tuple[str, bytes]], *, wait_s: float) -> int:
        if not self._session.ready:
            return 0
        return await self._sink.offer_many(messages, wait_s=wait_s)

    def try_publish(self, topic: str, payload: bytes, handle: Handle) -> bool:
        if not self._session.ready:
            return False
        device = self._session.unknown_device(topic)
        if device is not None and self._on_refused is not None:
            kept = bool(self._on_refused(topic, payload, UNKNOWN_DEVICE, handle))
            if device not in self._unknown_logged:  # once per device
                self._unknown_logged.add(device)
                log.warning("sparkplug_replay_unknown_device", device=device, dead_letter=kept)
            return True
        return self._sink.try_publish(topic, payload, handle)

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


__all__ = [
    "BD_SEQ_FILE",
    "DROPPED_DDEATH",
    "DROP_REASONS",
    "NOT_BORN",
    "REPLAY_DEATH_AFTER_S",
    "UNKNOWN_DEVICE",
    "HostGate",
    "SparkplugSession",
    "historical_form",
    "read_bd_seq",
    "write_bd_seq",
]
