"""What store-and-forward needs of an output: the ``Sink`` protocol, with delivery reported per handle.

A sink takes messages (topic, payload). Live ones go in through ``offer_many`` and, until acknowledged, are
the sink's to give back (``unacked``). A message the caller keeps track of itself (a replay from the spool)
goes in through ``try_publish`` with a ``Handle`` the caller chose; the sink reports its outcome once, as
``on_ack(handle)`` or ``on_refused(topic, payload, reason, handle)``, and never says what a handle means.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Protocol, TypeAlias


class Delivery(StrEnum):
    """What became of a message whose fate its sender waits for (an event record, ``forward_record``)."""

    ACKED = "acked"
    """The broker acknowledged it (PUBACK), live or replayed from the spool."""
    REFUSED = "refused"
    """The broker refused it for good (kept as a dead letter)."""
    LOST = "lost"
    """Neither sent nor kept (no spool)."""


Handle: TypeAlias = int
"""The caller's name for a message it publishes with ``try_publish``; opaque to the sink."""

OnAck: TypeAlias = Callable[[Handle], None]
"""Called once when the message published with this handle has been acknowledged by the broker."""
OnRefused: TypeAlias = Callable[[str, bytes, str, Handle | None], None]
"""``(topic, payload, reason, handle)``: once per message the broker will never take; ``handle`` None for a
message published without one."""


class Sink(Protocol):
    """An output that store-and-forward hands messages to (the MQTT connection is one)."""

    @property
    def connected(self) -> bool: ...

    @property
    def in_flight(self) -> int:
        """Messages handed over and not acknowledged yet."""
        ...

    @property
    def window(self) -> int:
        """Data messages it takes unacknowledged now (its in-flight window; the sum over connections)."""
        ...

    async def until_connected(self) -> None: ...

    async def offer_many(self, messages: Sequence[tuple[str, bytes]], *, wait_s: float) -> int:
        """Take messages while connected and while room frees up within ``wait_s``; how many it took, in order."""
        ...

    def try_publish(self, topic: str, payload: bytes, handle: Handle) -> bool:
        """Take one message if there is room right now (never waits); its outcome is reported per handle."""
        ...

    def unacked(self) -> list[tuple[str, bytes]]:
        """Messages taken through ``offer_many`` without an acknowledgement yet, oldest first."""
        ...
