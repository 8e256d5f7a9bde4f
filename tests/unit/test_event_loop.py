"""gateway.event_loop: which loop the process runs on, by the ``gateway.event_loop`` setting."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import ConfigError, GatewayError
from gateway.event_loop import STOCK_LOOP, choose_event_loop, running_loop_name
from gateway.tagmap import load_plant_from_text
from gateway.vocabulary import EventLoopSetting

HEADER = """
gateway: {{id: gw, enterprise: e, site: s{extra}}}
mqtt: {{url: "mqtt://127.0.0.1:1"}}
devices:
  - {{name: rack, area: a, line: l, protocol: modbus, host: 127.0.0.1, port: 1,
     tags: [{{name: voltage, address: 0, type: float32}}]}}
"""


def _no_uvloop(name: str) -> object:
    raise ImportError(f"No module named {name!r}")


def _loop_of(factory: object) -> str:
    async def name() -> str:
        return running_loop_name(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=factory) as runner:  # type: ignore[arg-type]
        return runner.run(name())


def test_asyncio_is_the_stock_loop_even_with_uvloop_installed() -> None:
    choice = choose_event_loop(EventLoopSetting.ASYNCIO)
    assert choice == STOCK_LOOP
    assert _loop_of(choice.factory) == "asyncio"


def test_auto_and_uvloop_run_on_uvloop_when_it_is_installed() -> None:
    for setting in (EventLoopSetting.AUTO, EventLoopSetting.UVLOOP):
        choice = choose_event_loop(setting)
        assert choice.name == "uvloop"
        assert choice.version
        assert _loop_of(choice.factory) == "uvloop"


def test_auto_falls_back_to_the_stock_loop_without_uvloop() -> None:
    assert choose_event_loop(EventLoopSetting.AUTO, importer=_no_uvloop) == STOCK_LOOP


def test_uvloop_without_uvloop_is_an_error_naming_the_setting() -> None:
    with pytest.raises(GatewayError, match=r"gateway\.event_loop is uvloop, but uvloop cannot be imported"):
        choose_event_loop(EventLoopSetting.UVLOOP, importer=_no_uvloop)


def test_the_setting_defaults_to_auto_and_takes_only_the_three_values() -> None:
    assert load_plant_from_text(HEADER.format(extra=""), environ={}).gateway.event_loop == "auto"
    plant = load_plant_from_text(HEADER.format(extra=", event_loop: asyncio"), environ={})
    assert plant.gateway.event_loop == "asyncio"
    from_env = load_plant_from_text(HEADER.format(extra=""), environ={"CELLGATE_GATEWAY__EVENT_LOOP": "uvloop"})
    assert from_env.gateway.event_loop == "uvloop"
    with pytest.raises(ConfigError, match="event_loop"):
        load_plant_from_text(HEADER.format(extra=", event_loop: tokio"), environ={})
