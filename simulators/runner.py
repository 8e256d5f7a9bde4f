"""Serve a simulator plan: one OPC UA server for every OPC UA machine, one Modbus TCP server (own port) per Modbus
machine, and optionally the HTTP fault control interface with every machine registered.

``run_simulators()`` serves the default set (``simulators.describe``: coater-01 and calender-01 over OPC UA,
stacker-01, rack-01 and rack-02 over Modbus TCP) until ``stop`` is set or the task is cancelled. What is
served and where is decided by the pure ``simulators.describe.plan_simulators``; this module only builds the
models, connects them into one line (``simulators.machines.line``: roll and cell ids flow downstream) and runs
the servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from simulators.describe import (
    DEFAULT_CHANNELS,
    DEFAULT_MODBUS_PORT,
    DEFAULT_OPCUA_PORT,
    DEFAULT_STEP_HZ,
    HOST,
    MachineKind,
    MachinePlan,
    Protocol,
    SimulatorOptions,
    SimulatorPlan,
    plan_simulators,
)
from simulators.ground_truth import record_results
from simulators.machines.calender import Calender, CalenderConfig
from simulators.machines.coater import Coater, CoaterConfig
from simulators.machines.formation import FormationConfig, FormationRack
from simulators.machines.line import connect as connect_line
from simulators.machines.points import Machine
from simulators.machines.stacker import Stacker, StackerConfig
from simulators.servers.control_http import ControlledMachine, ControlServer
from simulators.servers.modbus_server import ModbusSimulatorServer
from simulators.servers.opcua_server import OpcUaSimulatorServer, ServerSecurity

__all__ = [
    "DEFAULT_CHANNELS", "DEFAULT_MODBUS_PORT", "DEFAULT_OPCUA_PORT", "DEFAULT_STEP_HZ", "HOST", "SERVED_PROTOCOLS",
    "RunningSimulators", "build_model", "run_simulators",
]

SERVED_PROTOCOLS = ("opcua", "modbus")


def build_model(machine: MachinePlan, *, seed: int) -> Machine:
    """The model of one planned machine, with its own random stream derived from ``seed`` and its name."""
    rng = random.Random(f"cellgate:{seed}:{machine.device}")
    config = machine.config
    if isinstance(config, CoaterConfig):
        return Coater(rng=rng, config=config)
    if isinstance(config, CalenderConfig):
        return Calender(rng=rng, config=config)
    if isinstance(config, StackerConfig):
        return Stacker(rng=rng, config=config)
    assert isinstance(config, FormationConfig)
    return FormationRack(rng=rng, config=config)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningSimulators:
    """Where the running simulators listen (ports are the bound ones, also when 0 was asked for)."""

    opcua_endpoint: str | None
    modbus_host: str
    modbus_ports: Mapping[str, int]  # device name -> port, in plan order (racks first)
    control_port: int | None = None  # the fault control interface, when asked for
    first_rack: str | None = None  # device name of the first served rack

    @property
    def modbus_port(self) -> int | None:
        """The first rack's port (or the first Modbus machine's, without racks); None when Modbus is off."""
        if self.first_rack is not None and self.first_rack in self.modbus_ports:
            return self.modbus_ports[self.first_rack]
        return next(iter(self.modbus_ports.values()), None)

    def ready_line(self) -> str:
        """``simulators ready opcua=... modbus=HOST:PORT modbus_ports=rack-01:5020,... [control=PORT]``.

        ``modbus=`` is the first rack's port (the one-rack line of earlier versions); ``modbus_ports=`` lists
        every Modbus machine and ``control=`` comes last, only when enabled.
        """
        modbus = f"{self.modbus_host}:{self.modbus_port}" if self.modbus_port is not None else "off"
        line = f"simulators ready opcua={self.opcua_endpoint or 'off'} modbus={modbus}"
        if self.modbus_ports:
            line += " modbus_ports=" + ",".join(f"{device}:{port}" for device, port in self.modbus_ports.items())
        if self.control_port is not None:
            line += f" control={self.control_port}"
        return line


def _options(
    options: SimulatorOptions | None, *, opcua_port: int | None, modbus_port: int | None, channels: int | None,
    seed: int | None, speedup: float | None, step_hz: float | None, modbus_ports: Mapping[str, int] | None,
) -> SimulatorOptions:
    given = {name: value for name, value in (
        ("opcua_port", opcua_port), ("modbus_port", modbus_port), ("channels", channels), ("seed", seed),
        ("speedup", speedup), ("step_hz", step_hz), ("modbus_ports", modbus_ports),
    ) if value is not None}
    return dataclasses.replace(options if options is not None else SimulatorOptions(), **given)  # type: ignore[arg-type]


async def run_simulators(
    options: SimulatorOptions | None = None,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[RunningSimulators], None] | None = None,
    serve: Collection[str] = SERVED_PROTOCOLS,
    control_port: int | None = None,
    opcua_port: int | None = None,
    modbus_port: int | None = None,
    modbus_ports: Mapping[str, int] | None = None,
    channels: int | None = None,
    seed: int | None = None,
    speedup: float | None = None,
    step_hz: float | None = None,
    opcua_security: ServerSecurity | None = None,
) -> None:
    """Serve the planned set on ``options.host`` until ``stop`` is set or this coroutine is cancelled.

    ``options`` (default: the default set) says what and where; the keyword arguments ``opcua_port``,
    ``modbus_port`` (rack-01's port, next machines +1; 0 = free ports), ``modbus_ports`` (device -> port),
    ``channels``, ``seed``, ``speedup`` and ``step_hz`` override single fields. ``speedup`` multiplies model time.
    Port 0 picks a free port; ``on_ready`` gets the real ones once every server accepts connections. Raises if a
    server cannot start (port taken) or a model step fails. ``serve`` picks the protocols (``opcua``, ``modbus``);
    tests run each in its own process so one can be killed alone (ports are planned for the whole set, so two
    processes with the same options fit together). ``control_port`` (0 = any free) starts the HTTP fault control
    interface (``simulators.servers.control_http``) with every served machine; None leaves it off.
    ``opcua_security`` serves secure OPC UA endpoints only (``simulators.servers.opcua_server.ServerSecurity``).
    """
    unknown = set(serve) - set(SERVED_PROTOCOLS)
    if unknown or not serve:
        raise ValueError(f"serve must name some of {', '.join(SERVED_PROTOCOLS)}, got {sorted(serve)}")
    plan = plan_simulators(_options(options, opcua_port=opcua_port, modbus_port=modbus_port, channels=channels,
                                    seed=seed, speedup=speedup, step_hz=step_hz, modbus_ports=modbus_ports))
    await _serve(plan, stop=stop, on_ready=on_ready, serve=frozenset(Protocol(p) for p in serve),
                 control_port=control_port, opcua_security=opcua_security)


async def _serve(
    plan: SimulatorPlan,
    *,
    stop: asyncio.Event | None,
    on_ready: Callable[[RunningSimulators], None] | None,
    serve: frozenset[Protocol],
    control_port: int | None,
    opcua_security: ServerSecurity | None = None,
    results_log: Path | None = None,
) -> None:
    options = plan.options
    machines = [m for m in plan.machines if m.protocol in serve]
    if not machines:
        raise ValueError("nothing to serve: no machine uses the chosen protocol(s)")
    models = {m.device: build_model(m, seed=options.seed) for m in machines}
    connect_line(list(models.values()))  # outputs feed inputs by id (simulators.machines.line)
    async with contextlib.AsyncExitStack() as stack:
        if results_log is not None:
            stack.enter_context(record_results(models, results_log))
        waiters: set[asyncio.Task[object]] = set()
        controlled: list[ControlledMachine] = []
        modbus_ports: dict[str, int] = {}
        # Modbus first: each server starts instantly and fails fast on a taken port; OPC UA takes about a second.
        for machine in machines:
            if machine.protocol is not Protocol.MODBUS:
                continue
            assert machine.register_map is not None
            step_hz = options.rack_step_hz if machine.kind is MachineKind.RACK else options.step_hz
            server = ModbusSimulatorServer(
                model=models[machine.device], register_map=machine.register_map, port=machine.port,
                host=options.host, unit_id=machine.unit_id, step_hz=step_hz, speedup=options.speedup,
                name=machine.equipment, word_order=options.word_order,
            )
            await stack.enter_async_context(server)
            modbus_ports[machine.device] = server.port
            waiters.add(asyncio.create_task(server.join(), name=f"sim.modbus[{machine.device}].join"))
            controlled.append(ControlledMachine(name=machine.equipment, protocol="modbus", server=server))
        opcua_machines = [m for m in machines if m.protocol is Protocol.OPCUA]
        endpoint: str | None = None
        if opcua_machines:
            opcua = OpcUaSimulatorServer(
                machines={m.equipment: models[m.device] for m in opcua_machines}, port=options.opcua_port,
                host=options.host, step_hz=options.step_hz, speedup=options.speedup, security=opcua_security,
            )
            await stack.enter_async_context(opcua)
            endpoint = opcua.endpoint
            waiters.add(asyncio.create_task(opcua.join(), name="sim.opcua.join"))
            controlled += [ControlledMachine(name=m.equipment, protocol="opcua", server=opcua) for m in opcua_machines]
        control: ControlServer | None = None
        if control_port is not None:
            control = await stack.enter_async_context(
                ControlServer(machines=controlled, host=options.host, port=control_port)
            )
        if on_ready is not None:
            first_rack = next((m.device for m in machines if m.kind is MachineKind.RACK
                               and m.protocol is Protocol.MODBUS), None)
            on_ready(RunningSimulators(
                opcua_endpoint=endpoint, modbus_host=options.host, modbus_ports=modbus_ports,
                control_port=control.port if control is not None else None, first_rack=first_rack,
            ))
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


async def serve_plan(
    plan: SimulatorPlan,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[RunningSimulators], None] | None = None,
    serve: Collection[str] = SERVED_PROTOCOLS,
    control_port: int | None = None,
    opcua_security: ServerSecurity | None = None,
    results_log: Path | None = None,
) -> None:
    """``run_simulators`` for a plan made elsewhere (``python -m simulators`` plans once, for --describe too).
    ``opcua_security``: serve secure OPC UA endpoints instead of SecurityPolicy None. ``results_log``: append
    every result record the machines push to this file (``simulators.ground_truth``; tests only)."""
    await _serve(plan, stop=stop, on_ready=on_ready, serve=frozenset(Protocol(p) for p in serve),
                 control_port=control_port, opcua_security=opcua_security, results_log=results_log)
