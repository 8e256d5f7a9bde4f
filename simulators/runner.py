"""The default simulator set: one coater over OPC UA and one formation rack over Modbus TCP.

``run_simulators()`` serves both until ``stop`` is set (or the task is cancelled). ``describe_default_set()``
returns the address map of that set as plain data (dicts, lists, str, int, float, None; JSON-serialisable);
``config/demo.yaml`` is tested against it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypedDict

from simulators.machines.coater import Coater, coater_points
from simulators.machines.formation import FormationConfig, FormationRack, formation_rack_points
from simulators.machines.points import DataType
from simulators.servers.control_http import ControlledMachine, ControlServer
from simulators.servers.modbus_server import (
    CHANNEL_ALARM_COIL_BASE,
    CHANNEL_BASE,
    CHANNEL_STRIDE,
    DEFAULT_UNIT_ID,
    ModbusSimulatorServer,
    formation_register_map,
)
from simulators.servers.opcua_server import NAMESPACE_URI, OpcUaSimulatorServer, node_id_string

HOST = "127.0.0.1"
COATER_NAME = "Coater01"
RACK_NAME = "Rack01"
DEFAULT_OPCUA_PORT = 4840
DEFAULT_MODBUS_PORT = 5020
DEFAULT_CHANNELS = 16
DEFAULT_STEP_HZ = 5.0
SERVED_PROTOCOLS = ("opcua", "modbus")

# Tag-map type names (``type:`` in the tag map) for the OPC UA data types.
TAGMAP_TYPES: dict[DataType, str] = {
    DataType.DOUBLE: "float64",
    DataType.INT32: "int32",
    DataType.UINT32: "uint32",
    DataType.BOOLEAN: "bool",
    DataType.STRING: "string",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DefaultSet:
    coater: Coater
    rack: FormationRack


def build_default_set(*, channels: int = DEFAULT_CHANNELS, seed: int = 1) -> DefaultSet:
    """The models of the default set. Each has its own stream of random numbers derived from ``seed``."""
    return DefaultSet(
        coater=Coater(rng=random.Random(f"cellgate:{seed}:coater")),
        rack=FormationRack(rng=random.Random(f"cellgate:{seed}:formation"),
                           config=FormationConfig(channels=channels)),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningSimulators:
    """Where the running simulators listen (ports are the bound ones, also when 0 was asked for)."""

    opcua_endpoint: str | None
    modbus_host: str
    modbus_port: int | None
    control_port: int | None = None  # the fault control interface, when asked for

    def ready_line(self) -> str:
        modbus = f"{self.modbus_host}:{self.modbus_port}" if self.modbus_port is not None else "off"
        # control= comes last and only when enabled, so parsers of the older two-field line keep working.
        control = f" control={self.control_port}" if self.control_port is not None else ""
        return f"simulators ready opcua={self.opcua_endpoint or 'off'} modbus={modbus}{control}"


async def run_simulators(
    *,
    opcua_port: int = DEFAULT_OPCUA_PORT,
    modbus_port: int = DEFAULT_MODBUS_PORT,
    channels: int = DEFAULT_CHANNELS,
    seed: int = 1,
    speedup: float = 1.0,
    stop: asyncio.Event | None = None,
    step_hz: float = DEFAULT_STEP_HZ,
    on_ready: Callable[[RunningSimulators], None] | None = None,
    serve: Collection[str] = SERVED_PROTOCOLS,
    control_port: int | None = None,
) -> None:
    """Serve the default set on 127.0.0.1 until ``stop`` is set or this coroutine is cancelled.

    ``speedup`` multiplies model time (each step at ``step_hz`` advances the models by ``speedup / step_hz`` s).
    Port 0 picks a free port; ``on_ready`` gets the real ones once both servers accept connections.
    Raises if a server cannot start (port taken) or a model step fails. ``serve`` picks the protocols
    (``opcua``, ``modbus``); tests run each in its own process so one can be killed alone.
    ``control_port`` (0 = any free) starts the HTTP fault control interface (``simulators.servers.control_http``)
    on 127.0.0.1; None leaves it off.
    """
    models = build_default_set(channels=channels, seed=seed)
    modbus = ModbusSimulatorServer(model=models.rack, register_map=formation_register_map(channels),
                                   port=modbus_port, host=HOST, step_hz=step_hz, speedup=speedup, name=RACK_NAME)
    opcua = OpcUaSimulatorServer(machines={COATER_NAME: models.coater}, port=opcua_port, host=HOST,
                                 step_hz=step_hz, speedup=speedup)
    unknown = set(serve) - set(SERVED_PROTOCOLS)
    if unknown or not serve:
        raise ValueError(f"serve must name some of {', '.join(SERVED_PROTOCOLS)}, got {sorted(serve)}")
    async with contextlib.AsyncExitStack() as stack:
        waiters: set[asyncio.Task[object]] = set()
        # Modbus first: it starts instantly and fails fast on a taken port; OPC UA takes about a second.
        if "modbus" in serve:
            await stack.enter_async_context(modbus)
            waiters.add(asyncio.create_task(modbus.join(), name="sim.modbus.join"))
        if "opcua" in serve:
            await stack.enter_async_context(opcua)
            waiters.add(asyncio.create_task(opcua.join(), name="sim.opcua.join"))
        control: ControlServer | None = None
        if control_port is not None:
            controlled: list[ControlledMachine] = []
            if "modbus" in serve:
                controlled.append(ControlledMachine(name=RACK_NAME, protocol="modbus", server=modbus))
            if "opcua" in serve:
                controlled.append(ControlledMachine(name=COATER_NAME, protocol="opcua", server=opcua))
            control = await stack.enter_async_context(ControlServer(machines=controlled, host=HOST, port=control_port))
        if on_ready is not None:
            on_ready(
                RunningSimulators(
                    opcua_endpoint=opcua.endpoint if "opcua" in serve else None,
                    modbus_host=HOST,
                    modbus_port=modbus.port if "modbus" in serve else None,
                    control_port=control.port if control is not None else None,
                )
            )
        if stop is not None:
            waiters.add(asyncio.create_task(stop.wait(), name="sim.stop"))
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # re-raises a crashed stepper
        finally:
            for task in waiters:
                task.cancel()
            await asyncio.wait(waiters)


# ------------------------------------------------------------------------------------------------ describe


class OpcUaPointInfo(TypedDict):
    point: str  # model point name, e.g. "Dryer.Zone03.AirTemp"
    node: str  # tag-map node form, e.g. "s=Coater01.Dryer.Zone03.AirTemp" (namespace = the server's namespace)
    type: str  # tag-map type name: float64 | int32 | uint32 | bool | string
    variant: str  # OPC UA variant type: Double | Int32 | UInt32 | Boolean | String
    unit: str | None  # UCUM
    description: str
    min: float | None
    max: float | None


class OpcUaServerInfo(TypedDict):
    equipment: str
    kind: str
    endpoint: str
    namespace: str
    points: list[OpcUaPointInfo]


class ModbusPointInfo(TypedDict):
    point: str  # model point name, e.g. "Ch001.Voltage"
    table: str  # holding | input | coil | discrete
    address: int  # 0-based protocol address
    type: str  # tag-map type name: bool | uint16 | int16 | uint32 | float32
    order: str  # word/byte order of multi-register values
    scale: float  # engineering value = raw * scale
    unit: str | None
    description: str
    min: float | None  # engineering units
    max: float | None


class ModbusServerInfo(TypedDict):
    equipment: str
    kind: str
    host: str
    port: int
    unit_id: int
    channels: int
    channel_start: int  # holding register of channel 1
    channel_stride: int
    channel_alarm_coil_start: int  # coil of channel 1's protection alarm (stride 1)
    points: list[ModbusPointInfo]


class SimulatorSetInfo(TypedDict):
    opcua: list[OpcUaServerInfo]
    modbus: list[ModbusServerInfo]


def describe_default_set(
    *,
    opcua_port: int = DEFAULT_OPCUA_PORT,
    modbus_port: int = DEFAULT_MODBUS_PORT,
    channels: int = DEFAULT_CHANNELS,
) -> SimulatorSetInfo:
    """The address map of the default set: every point, where it is and what it is."""
    coater: list[OpcUaPointInfo] = [
        {
            "point": p.name,
            "node": f"s={node_id_string(COATER_NAME, p.name)}",
            "type": TAGMAP_TYPES[p.data_type],
            "variant": p.data_type.value,
            "unit": p.unit,
            "description": p.description,
            "min": p.min,
            "max": p.max,
        }
        for p in coater_points()
    ]
    specs = {p.name: p for p in formation_rack_points(channels)}
    rack: list[ModbusPointInfo] = []
    for r in formation_register_map(channels):
        spec = specs[r.point]
        rack.append({
            "point": r.point,
            "table": r.table.value,
            "address": r.address,
            "type": r.encoding.value,
            "order": "ABCD",
            "scale": r.scale,
            "unit": spec.unit,
            "description": spec.description,
            "min": spec.min,
            "max": spec.max,
        })
    return {
        "opcua": [{
            "equipment": COATER_NAME,
            "kind": "coater",
            "endpoint": f"opc.tcp://{HOST}:{opcua_port}/",
            "namespace": NAMESPACE_URI,
            "points": coater,
        }],
        "modbus": [{
            "equipment": RACK_NAME,
            "kind": "formation_rack",
            "host": HOST,
            "port": modbus_port,
            "unit_id": DEFAULT_UNIT_ID,
            "channels": channels,
            "channel_start": CHANNEL_BASE,
            "channel_stride": CHANNEL_STRIDE,
            "channel_alarm_coil_start": CHANNEL_ALARM_COIL_BASE,
            "points": rack,
        }],
    }
