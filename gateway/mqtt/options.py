"""Settings of the MQTT client (``MqttSink`` in gateway.mqtt.connection), checked when built.

Built from the tag map's ``mqtt:`` section by gateway.assembly.mqtt_options_for; the client takes them as
they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.vocabulary import MqttProtocol, QoS


@dataclass(frozen=True, slots=True)
class SessionRefusal:
    """What ``SessionHooks.stamp`` returns for a data message the session will not let on the wire but that must not be
    lost (e.g. Sparkplug DDATA of a device that cannot be born): the connection refuses it as it refuses one the broker
    will never take (``on_refused(topic, payload, reason, handle)``, counted by ``reason``, logged once per reason, its
    window slot freed), without sending it. ``payload``: the form to keep (without the session's numbering)."""

    reason: str
    payload: bytes


class SessionHooks(Protocol):
    """Per-connection numbering of an encoding whose messages count in wire order (Sparkplug ``seq``)."""

    def births(self) -> Sequence[tuple[str, bytes]]:
        """Messages (topic, payload) sent first on every connection (after SUBSCRIBE), QoS 1, not retained."""
        ...

    def stamp(self, topic: str, payload: bytes) -> bytes | SessionRefusal | None:
        """The payload as it enters the wire order: called for each birth and data message as it is handed over.
        None drops the message (e.g. a Sparkplug DDEATH of a device not born on this connection): the connection
        settles it as delivered without sending it (its handle is acknowledged: not refused, not spooled again). A
        ``SessionRefusal`` (data only) refuses it unsent, to be kept. Neither takes a number."""
        ...

    def unstamp(self, topic: str) -> None:
        """The payload ``stamp`` just returned for ``topic`` will not be sent (too large for the broker): take its
        number back, so numbering stays contiguous on the wire."""
        ...

    def resend(self, topic: str, payload: bytes) -> bytes | SessionRefusal | None:
        """A message unacknowledged at the loss of a connection, before it is sent again after the births of
        the next one: its new payload, None when the births superseded it (then it is not sent), or a
        ``SessionRefusal`` as from ``stamp``."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttOptions:
    """How to reach the broker and how to behave there. Built by the runtime from the tag map ``mqtt:``.

    ``online_payload`` is published retained on ``will_topic`` at every (re)connect; a callable is called
    each time (so it can carry a fresh ``since``); None publishes nothing. ``will_payload`` is the MQTT will
    and also what ``close`` publishes; a callable is called for every CONNECT (e.g. Sparkplug's NDEATH with
    the bdSeq of that connection), and ``close`` publishes the one of the last CONNECT.
    ``max_queued`` caps the messages held in memory (window + control messages); it
    is a safety net, the window keeps data far below it. Times are seconds.
    """

    host: str
    port: int = 1883
    client_id: str
    will_topic: str
    will_payload: bytes | Callable[[], bytes]
    online_payload: bytes | Callable[[], bytes] | None
    tls: bool = False
    ca_file: str | None = None  # None with tls: the system CA store
    cert_file: str | None = None  # client certificate for mTLS
    key_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never logged, never in repr
    protocol: MqttProtocol = "5"
    keepalive_s: int = 30
    qos: QoS = 1
    # With MQTT 5 the broker's Receive Maximum caps it (Mosquitto's default max_inflight_messages is 20).
    max_inflight: int = 1000
    max_queued: int = 10_000
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 10.0
    connect_timeout_s: float = 5.0
    failover: tuple[tuple[str, int], ...] = ()
    failover_after: int = 3
    # Largest packet (bytes, whole PUBLISH) the broker takes, for brokers that cannot announce it (MQTT
    # 3.1.1); a smaller Maximum Packet Size in an MQTT 5 CONNACK wins. Larger messages are refused here.
    max_packet_size: int | None = None
    # A connection whose oldest unacknowledged message waited this long for its PUBACK is stuck (a hung
    # broker): dropped and reconnected. Also bounds the wait for a PINGRESP.
    puback_timeout_s: float = 10.0
    # Repeated connection problems (the same connect error, a link that dies right after connecting)
    # are logged once, then summed up at most this often.
    repeat_log_s: float = 60.0
    # Whether the will (and its copy ``close`` publishes) is retained. Sparkplug's NDEATH will is not.
    will_retain: bool = True
    # Topic filters subscribed to at every connect (e.g. Sparkplug NCMD), and what gets their messages
    # (topic, payload), called on the event loop; QoS 1 messages are acknowledged after it returns.
    subscriptions: tuple[tuple[str, QoS], ...] = ()
    on_message: Callable[[str, bytes], None] | None = None
    # Births first on every connection and payloads numbered in wire order (Sparkplug); see SessionHooks.
    session: SessionHooks | None = None
    # False: a data-only connection (the second and further of ``mqtt.connections``): no will in its
    # CONNECT and no offline status at ``close``; ``will_topic`` / ``will_payload`` are then not used.
    with_will: bool = True

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
        if self.max_packet_size is not None and self.max_packet_size < 1:
            problems.append("max_packet_size must be >= 1 (or None: the broker's)")
        if self.puback_timeout_s <= 0:
            problems.append("puback_timeout_s must be > 0")
        if self.repeat_log_s <= 0:
            problems.append("repeat_log_s must be > 0")
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
        if not self.with_will and (self.online_payload is not None or self.subscriptions):
            problems.append("a connection without a will carries no online status and no subscriptions")
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
    if len(topic.encode("utf-8", errors="surrogatepass")) > 65535:
        return "topic longer than 65535 bytes"
    return None
