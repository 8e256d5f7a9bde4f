"""Health of a running gateway for systemd: READY=1, WATCHDOG=1 while the pipeline moves, and STATUS= text.

The watchdog is fed only while queued messages keep moving to the broker or the spool, so a stuck publish
path gets the gateway restarted by systemd (``WatchdogSec`` in systemd/cellgate.service).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog

from gateway.notify import SystemdNotifier

log = structlog.get_logger("cellgate.health")

HEALTH_INTERVAL_S = 5.0
"""How often the health task looks at the pipeline when systemd asks for no watchdog."""
PUBLISH_STALL_S = 30.0
"""The pipeline is unhealthy (no WATCHDOG=1) when queued messages have not moved for this long."""
READY_POLL_S = 0.1
"""How often the health task looks for the first delivery before READY=1."""


class SinkHealth(Protocol):
    """What health reads of the output side."""

    @property
    def connected(self) -> bool: ...

    @property
    def delivered(self) -> int: ...

    @property
    def control_delivered(self) -> int: ...


class SpoolHealth(Protocol):
    """What health reads of store-and-forward."""

    @property
    def available(self) -> bool: ...

    @property
    def spooled_now(self) -> int: ...

    @property
    def spooled_total(self) -> int: ...

    @property
    def lost_by_reason(self) -> dict[str, int]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineView:
    """Live readings of the pipeline, as functions the runtime provides."""

    devices: Callable[[], tuple[int, int]]
    """(connected, total) devices."""
    forwarded: Callable[[], int]
    """Batches handed from the queue to store-and-forward so far."""
    queued: Callable[[], int]
    """Batches waiting in the queue now."""


def health_text(*, connected: int, devices: int, broker_connected: bool, spooled: int | None) -> str:
    """The one-line STATUS= text; ``spooled`` None when the spool is unavailable."""
    broker = "connected" if broker_connected else "disconnected"
    spooled_text = "unavailable" if spooled is None else str(spooled)
    return f"devices {connected}/{devices} connected, broker {broker}, spooled {spooled_text}"


async def report_health(
    notifier: SystemdNotifier, *, pipeline: PipelineView, sink: SinkHealth, forwarder: SpoolHealth
) -> None:
    """systemd: READY=1 after the first publish or spool write; WATCHDOG=1 only while the pipeline moves.

    Runs until cancelled.
    """

    def text() -> str:
        connected, devices = pipeline.devices()
        return health_text(
            connected=connected,
            devices=devices,
            broker_connected=sink.connected,
            spooled=forwarder.spooled_now if forwarder.available else None,
        )

    interval = notifier.watchdog_interval_s or HEALTH_INTERVAL_S
    last_forwarded = pipeline.forwarded()
    last_progress = time.monotonic()
    # Until READY systemd's start timeout applies, not the watchdog: look often, ping nothing.
    while True:
        if sink.delivered or sink.control_delivered or forwarder.spooled_total or forwarder.lost_by_reason:
            break
        await asyncio.sleep(READY_POLL_S)
    notifier.ready(text())
    log.info("gateway_ready")
    while True:
        forwarded = pipeline.forwarded()
        if forwarded != last_forwarded or not pipeline.queued():
            last_forwarded = forwarded
            last_progress = time.monotonic()
        stalled_s = time.monotonic() - last_progress
        if stalled_s < PUBLISH_STALL_S:
            notifier.watchdog()
        else:
            log.error("pipeline_stalled", queued=pipeline.queued(), stalled_s=round(stalled_s, 1))
        notifier.status(text())
        await asyncio.sleep(min(interval, HEALTH_INTERVAL_S))
