"""The event loop of the gateway process: Python's own asyncio loop or uvloop (README ``gateway.event_loop``).

uvloop runs the same asyncio code on libuv, with the transports, protocols and the loop's bookkeeping in C:
fewer interpreter steps per socket read, write and wake-up, which is most of what a QoS 1 PUBACK round costs
(README "QoS 1 through a stock broker"). It is chosen once, before the loop exists (``asyncio.Runner``'s
``loop_factory``); ``auto`` takes it when it can be imported and falls back to the stock loop otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import Literal, TypeAlias

from gateway.errors import GatewayError
from gateway.vocabulary import EventLoopSetting

LoopFactory: TypeAlias = Callable[[], asyncio.AbstractEventLoop]


@dataclass(frozen=True, slots=True)
class EventLoopChoice:
    """The loop to run on: ``name`` ("asyncio" or "uvloop"), its ``factory`` (None: the stock loop)."""

    name: Literal["asyncio", "uvloop"]
    factory: LoopFactory | None
    version: str | None = None


STOCK_LOOP = EventLoopChoice(name="asyncio", factory=None)


def choose_event_loop(
    setting: EventLoopSetting, *, importer: Callable[[str], object] = import_module
) -> EventLoopChoice:
    """The loop for ``setting``: ``asyncio`` always the stock loop; ``uvloop`` uvloop or a ``GatewayError`` when it
    is not installed; ``auto`` uvloop when importable, else the stock loop. ``importer`` is for tests."""
    if setting == EventLoopSetting.ASYNCIO:
        return STOCK_LOOP
    try:
        module = importer("uvloop")
    except ImportError as exc:
        if setting == EventLoopSetting.UVLOOP:
            raise GatewayError(f"gateway.event_loop is uvloop, but uvloop cannot be imported ({exc})") from exc
        return STOCK_LOOP
    factory = getattr(module, "new_event_loop", None)
    if not callable(factory):  # a module of that name that is not uvloop
        if setting == EventLoopSetting.UVLOOP:
            raise GatewayError("gateway.event_loop is uvloop, but the uvloop module has no new_event_loop")
        return STOCK_LOOP
    version = getattr(module, "__version__", None)
    return EventLoopChoice(name="uvloop", factory=factory, version=version if isinstance(version, str) else None)


def running_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """What ``loop`` is, for the start-up log line: "uvloop" or "asyncio" (or the class of another loop)."""
    module = type(loop).__module__
    if module.startswith("uvloop"):
        return "uvloop"
    if module.startswith("asyncio"):
        return "asyncio"
    return f"{module}.{type(loop).__qualname__}"
