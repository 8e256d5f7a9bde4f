"""The encoder seam: what an output encoding provides, and the ``Message`` it produces.

The outbound side hands an encoder plain ``Sample`` values (gateway.schema), a device's link state and its tag
catalogue; the encoder owns everything format-specific: topics, payloads, birth and status messages, the will,
``seq`` numbering and the form a message takes when it is replayed from the spool (``historical``). Store-and-
forward and the sink only move the resulting messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from gateway.schema import Sample, SampleContext


class Message(NamedTuple):
    """One message ready to publish: topic, payload and whether the broker keeps it (retained).

    The QoS is the connection's (``mqtt.qos``) for data and 1 for retained control messages. A NamedTuple, as
    Sample: in per-tag mode one is made per published value, and a tuple is built in C.
    """

    topic: str
    payload: bytes
    retain: bool = False


class DeviceEncoder(Protocol):
    """The encoding of one device's output, with its ``seq`` state."""

    @property
    def seq_topics(self) -> list[str]:
        """The topics this device numbers with ``seq``."""
        ...

    def seq_need(self, samples: int) -> int:
        """The most seq numbers on any one topic that encoding ``samples`` samples in one call takes."""
        ...

    def restore_seq(self, last_seq: Mapping[str, int]) -> None:
        """Continue numbering after ``last_seq`` (per topic)."""
        ...

    def seq_snapshot(self) -> dict[str, int]:
        """The last seq handed out per topic (only topics that have had a message)."""
        ...

    def encode(self, samples: Sequence[Sample], now: float) -> list[Message]:
        """The data messages for ``samples`` (non-empty), numbered with ``seq``; ``now`` in epoch seconds."""
        ...

    def status(self, *, connected: bool, since: float, error: str | None, gateway: str | None) -> Message:
        """The retained link state of the device."""
        ...

    def meta(self) -> list[Message]:
        """The retained tag catalogue of the device (one or more messages)."""
        ...

    def retained_topics(self) -> list[str]:
        """Every topic the device's messages are retained on (status and catalogue): what to clear when the
        device leaves the tag map."""
        ...


@runtime_checkable
class ContextEncoder(Protocol):
    """A device encoding that carries context on its data messages (README "Traceability: context"). An encoder
    without this method publishes the context tags only as the ordinary tags they are (Sparkplug B: metrics)."""

    def encode_in_context(self, samples: Sequence[Sample], context: SampleContext, now: float) -> list[Message]:
        """``encode(samples, now)`` with ``context`` (the device's, as of these samples) on the messages."""
        ...


class Encoder(Protocol):
    """Gateway-wide messages of one encoding: its status (birth) and will, and replays' historical form."""

    def gateway_status(self, *, online: bool) -> Message:
        """The retained gateway status: online after every connect, offline as the will and at a clean stop."""
        ...

    def historical(self, topic: str, payload: bytes) -> bytes | None:
        """``payload`` (a message this encoding made for ``topic``) as the spool keeps it for a replay: marked as
        historical; None when it is not worth replaying (a birth or death the next connection's births supersede).
        Raises ValueError for a payload it did not make."""
        ...


class JointDeviceEncoder:
    """Two encodings of one device at once: every sample goes through both. ``seq`` bookkeeping, status and the
    retained catalogue are the first one's; the second adds its data messages (Sparkplug beside UNS JSON)."""

    def __init__(self, first: DeviceEncoder, second: DeviceEncoder) -> None:
        self.first = first
        self.second = second

    @property
    def seq_topics(self) -> list[str]:
        return self.first.seq_topics

    def seq_need(self, samples: int) -> int:
        return self.first.seq_need(samples) + self.second.seq_need(samples)

    def restore_seq(self, last_seq: Mapping[str, int]) -> None:
        self.first.restore_seq(last_seq)

    def seq_snapshot(self) -> dict[str, int]:
        return self.first.seq_snapshot()

    def encode(self, samples: Sequence[Sample], now: float) -> list[Message]:
        return self.first.encode(samples, now) + self.second.encode(samples, now)

    def encode_in_context(self, samples: Sequence[Sample], context: SampleContext, now: float) -> list[Message]:
        """The first encoding with the context if it carries context (UNS JSON), the second as it is."""
        first = (self.first.encode_in_context(samples, context, now) if isinstance(self.first, ContextEncoder)
                 else self.first.encode(samples, now))
        return first + self.second.encode(samples, now)

    def status(self, *, connected: bool, since: float, error: str | None, gateway: str | None) -> Message:
        return self.first.status(connected=connected, since=since, error=error, gateway=gateway)

    def meta(self) -> list[Message]:
        return self.first.meta()

    def retained_topics(self) -> list[str]:
        return self.first.retained_topics()
