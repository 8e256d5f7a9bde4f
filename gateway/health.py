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

from gateway.metrics import GatewayState
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


class ProgressWatch:
    """Whether queued messages keep moving: the one meaning of "stalled" for the watchdog and ``/readyz``."""

    def __init__(self, pipeline: PipelineView, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._pipeline = pipeline
        self._clock = clock
        self._last_forwarded = pipeline.forwarded()
        self._last_progress = clock()

    def stalled_s(self) -> float:
        """Seconds the queue has held messages without any batch moving on (0 while it moves or is empty)."""
        forwarded = self._pipeline.forwarded()
        if forwarded != self._last_forwarded or not self._pipeline.queued():
            self._last_forwarded = forwarded
            self._last_progress = self._clock()
        return self._clock() - self._last_progress

    def stalled(self) -> bool:
        return self.stalled_s() >= PUBLISH_STALL_S


def health_text(*, connected: int, devices: int, broker_connected: bool, spooled: int | None) -> str:
    """The one-line STATUS= text; ``spooled`` None when the spool is unavailable."""
    broker = "connected" if broker_connected else "disconnected"
    spooled_text = "unavailable" if spooled is None else str(spooled)
    return f"devices {connected}/{devices} connected, broker {broker}, spooled {spooled_text}"


async def report_health(
    notifier: SystemdNotifier,
    *,
    pipeline: PipelineView,
    sink: SinkHealth,
    forwarder: SpoolHealth,
    watch: ProgressWatch | None = None,
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
    watch = watch or ProgressWatch(pipeline)
    # Until READY systemd's start timeout applies, not the watchdog: look often, ping nothing.
    while True:
        if sink.delivered or sink.control_delivered or forwarder.spooled_total or forwarder.lost_by_reason:
            break
        await asyncio.sleep(READY_POLL_S)
    notifier.ready(text())
    log.info("gateway_ready")
    while True:
        stalled_s = watch.stalled_s()
        if stalled_s < PUBLISH_STALL_S:
            notifier.watchdog()
        else:
            log.error("pipeline_stalled", queued=pipeline.queued(), stalled_s=round(stalled_s, 1))
        notifier.status(text())
        await asyncio.sleep(min(interval, HEALTH_INTERVAL_S))


@dataclass(frozen=True, slots=True)
class Readiness:
    """``/readyz``: ready when every check holds; ``checks`` names each with its outcome."""

    ready: bool
    checks: dict[str, bool]


def readiness(state: GatewayState) -> Readiness:
    """Ready: the map is loaded (the gateway runs), output can deliver or spool under its cap, the pipeline is not
    stalled (as the watchdog sees it) and at least one device is up."""
    spool_room = state.spool_available and state.spool_bytes < state.spool_max_bytes
    checks = {
        "map_loaded": True,
        "output": state.mqtt_connected or spool_room,
        "not_stalled": state.stalled_s < PUBLISH_STALL_S,
        "device_up": any(device.connected for device in state.devices),
    }
    return Readiness(all(checks.values()), checks)
