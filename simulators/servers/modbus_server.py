"""Modbus TCP server (pymodbus 3.16 SimDevice API) that exposes one machine model on its own port.

A real formation rack (or stacker PLC) has its own IP address, so the simulator gives every machine its own
server and port, each answering as unit id 1. The register maps (formation rack, and the generic layout every
other machine gets) are documented in ``simulators.servers.address_map``; this module only moves them onto the
wire: every model step packs each table in one go (``ImageEncoder``) and writes it with one ``async_setValues``
call per table.

Faults (``simulators.faults``): ``await server.set_fault(Hang(), duration_s=5)``, ``await server.clear_faults()``,
``await server.drop_connections()``. They act on the wire through a request handler subclass (the only per-request
hook of pymodbus 3.16 that can delay, swallow or answer a request itself; ``trace_pdu`` is synchronous and cannot
drop a request) and at publish time (NaN, frozen values).

The one register a client writes is ``Result.Ack`` of a machine with a result FIFO: every publish first reads it
back from the datastore and hands a new value to the model (``ack_result``), then writes the tables, the ack
register holding the value just read (pymodbus does not yield between the two, so no write is lost). A write to
the ack register writes the result points at once (before the next request is served), so the next read sees the
next record.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Self, cast

from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType as SimDataType
from pymodbus.simulator import SimData, SimDevice

from simulators.faults import BadValue, Fault, FaultState, Freeze, Restart, check_points
from simulators.machines.points import Machine, Value
from simulators.machines.results import ACK_POINT, SECTION, Acknowledging
from simulators.servers.address_map import (
    CHANNEL_ALARM_COIL_BASE,
    CHANNEL_BASE,
    CHANNEL_STRIDE,
    DEFAULT_UNIT_ID,
    Encoding,
    ImageEncoder,
    RegisterMap,
    RegisterPoint,
    Table,
    WordOrder,
    build_images,
    channel_base,
    encode,
    formation_register_map,
    machine_register_map,
    table_sizes,
)
from simulators.servers.clock import AutoStepper, check_rate
from simulators.servers.fault_gate import FaultControlledServer, FaultGate

__all__ = [
    "CHANNEL_ALARM_COIL_BASE", "CHANNEL_BASE", "CHANNEL_STRIDE", "DEFAULT_UNIT_ID", "Encoding", "ModbusSimulatorServer",
    "RegisterMap", "RegisterPoint", "Table", "WordOrder", "build_images", "channel_base", "encode",
    "formation_register_map", "machine_register_map", "request_span", "table_sizes",
]

# Function codes that pymodbus' async_setValues uses to pick a table.
_FUNCTION_CODE: Mapping[Table, int] = {Table.COIL: 1, Table.DISCRETE: 2, Table.HOLDING: 3, Table.INPUT: 4}
# Requests that write holding registers.
_WRITE_CODES = frozenset({6, 16, 22})
# Which table a request function code addresses (FC23 read/write is rare and left out: it answers normally).
_REQUEST_TABLE: Mapping[int, Table] = {
    1: Table.COIL, 5: Table.COIL, 15: Table.COIL, 2: Table.DISCRETE,
    3: Table.HOLDING, 6: Table.HOLDING, 16: Table.HOLDING, 22: Table.HOLDING, 4: Table.INPUT,
}


def request_span(pdu: ModbusPDU) -> tuple[Table, int, int] | None:
    """(table, first address, count) a request touches, or None for function codes without a table."""
    table = _REQUEST_TABLE.get(pdu.function_code)
    if table is None:
        return None
    # Single writes (FC5/FC6) carry no count; multiple writes carry their values.
    count = max(1, pdu.count, len(pdu.registers or ()), len(pdu.bits or ()) if pdu.function_code == 15 else 0)
    return table, pdu.address, count


class _FaultGatedHandler(ServerRequestHandler):
    """pymodbus' per-connection handler with the fault hooks in front of the datastore."""

    def __init__(self, owner: _FaultGatedTcpServer, gate: FaultGate) -> None:
        # pymodbus leaves these handler methods unannotated, hence the ignores below.
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)  # type: ignore[no-untyped-call]
        self._gate = gate
        self._owner = owner

    def callback_connected(self) -> None:
        super().callback_connected()
        if self._gate.refuses_connections():
            self.close()

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is None or self._gate.is_hung():
            return  # hang: swallowed, never answered
        await self._gate.delay()
        if self._gate.is_hung() or not self.is_active():
            return
        span = request_span(pdu)
        code = None if span is None else self._gate.exception_code(table=span[0].value, start=span[1], count=span[2])
        if code is not None:
            response = ExceptionResponse(pdu.function_code, code, device_id=pdu.dev_id, transaction=pdu.transaction_id)
            self.server_send(response, addr)  # type: ignore[no-untyped-call]
            return
        # The base handler reads last_pdu again; a request that arrived during the delay must not replace ours.
        self.last_pdu, self.last_addr = pdu, addr
        await super().handle_request()  # type: ignore[no-untyped-call]
        if span is not None and span[0] is Table.HOLDING and pdu.function_code in _WRITE_CODES:
            await self._owner.holding_written(span[1], span[2])


class _FaultGatedTcpServer(ModbusTcpServer):
    def __init__(
        self, device: SimDevice, *, address: tuple[str, int], gate: FaultGate,
        on_holding_write: Callable[[int, int], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(device, address=address)
        self._gate = gate
        self._on_holding_write = on_holding_write

    async def holding_written(self, start: int, count: int) -> None:
        """A client wrote holding registers ``start`` .. ``start + count - 1`` (after the datastore took them)."""
        if self._on_holding_write is not None:
            await self._on_holding_write(start, count)

    def callback_new_connection(self) -> _FaultGatedHandler:
        return _FaultGatedHandler(self, self._gate)

    def drop_connections(self) -> int:
        connections = list(self.active_connections.values())
        for connection in connections:
            connection.close()
        return len(connections)


class ModbusSimulatorServer(FaultControlledServer):
    """Serves one model through ``register_map`` as Modbus TCP device ``unit_id``, stepping it at ``step_hz``.

    ``async with ModbusSimulatorServer(model=rack, register_map=formation_register_map(16), port=5020) as s: ...``
    Port 0 binds an ephemeral port; read it back from ``server.port``. With ``autostep=False`` nothing moves
    unless the caller calls ``await server.step(dt_s)``. ``name`` is the machine name faults refer to.
    """

    def __init__(
        self,
        *,
        model: Machine,
        register_map: RegisterMap,
        port: int = 5020,
        host: str = "127.0.0.1",
        unit_id: int = DEFAULT_UNIT_ID,
        step_hz: float = 5.0,
        speedup: float = 1.0,
        autostep: bool = True,
        name: str = "modbus",
        word_order: WordOrder = WordOrder.ABCD,
    ) -> None:
        check_rate(step_hz=step_hz, speedup=speedup)
        if not 1 <= unit_id <= 247:
            raise ValueError(f"unit_id must be 1..247, got {unit_id}")
        known = {point.name for point in model.points}
        unknown = sorted(p.point for p in register_map if p.point not in known)
        if unknown:
            raise ValueError(f"register map names points the model does not have: {unknown[:5]}")
        self._model = model
        self._map = register_map
        self._encoder = ImageEncoder(register_map, word_order=word_order)
        self._word_order = word_order
        self._host = host
        self._port = port
        self._unit_id = unit_id
        self._step_hz = step_hz
        self._speedup = speedup
        self._autostep = autostep
        self._name = name
        self._server: _FaultGatedTcpServer | None = None
        self._stepper: AutoStepper | None = None
        self._gate = FaultGate()
        # What the wire shows now, by point (frozen points keep these).
        self._published: dict[str, Value] = {}
        ack = next((p for p in register_map if p.point == ACK_POINT), None)
        if ack is not None and (ack.table is not Table.HOLDING or ack.encoding is not Encoding.UINT32):
            raise ValueError(f"{ACK_POINT} must be a uint32 holding register")
        self._ack = ack if isinstance(model, Acknowledging) else None
        # The points an acknowledgement changes (the result FIFO's), written alone after an ack write.
        self._result_points = tuple(p for p in register_map if p.point.startswith(f"{SECTION}."))

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return self._host

    @property
    def unit_id(self) -> int:
        return self._unit_id

    @property
    def word_order(self) -> WordOrder:
        return self._word_order

    @property
    def register_map(self) -> RegisterMap:
        return self._map

    @property
    def machines(self) -> tuple[str, ...]:
        """The machine this server exposes (one), by the name faults use."""
        return (self._name,)

    async def set_fault(self, fault: Fault | Restart, *, duration_s: float | None = None) -> None:
        """Start ``fault`` for ``duration_s`` seconds (None: until cleared; ``DropConnections`` defaults to 0).

        Behaviour on the wire is documented in ``simulators.faults``. Raises ValueError for a fault this server
        cannot show: ``Restart``, an unknown point or machine, or NaN on a point that is not float32.
        """
        if isinstance(fault, Restart):
            raise ValueError("restart is only supported by the OPC UA simulator")
        if isinstance(fault, BadValue | Freeze):
            check_points(fault, {self._name: [p.point for p in self._map]})
            if isinstance(fault, BadValue) and fault.points is not None:
                by_name = {p.point: p for p in self._map}
                not_float = sorted(p for p in fault.points if by_name[p].encoding is not Encoding.FLOAT32)
                if not_float:
                    raise ValueError(f"NaN only exists in float32 points; not float32: {not_float[:5]}")
        await self._start_fault(fault, duration_s=duration_s)

    async def __aenter__(self) -> Self:
        sizes = self._encoder.sizes
        device = SimDevice(id=self._unit_id, simdata=(
            [SimData(0, count=sizes[Table.COIL], values=False, datatype=SimDataType.BITS)],
            [SimData(0, count=sizes[Table.DISCRETE], values=False, datatype=SimDataType.BITS)],
            [SimData(0, count=sizes[Table.HOLDING], values=0, datatype=SimDataType.REGISTERS)],
            [SimData(0, count=sizes[Table.INPUT], values=0, datatype=SimDataType.REGISTERS)],
        ))
        server = _FaultGatedTcpServer(device, address=(self._host, self._port), gate=self._gate,
                                      on_holding_write=self._holding_written)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus' way of saying the bind failed (it logs the errno as a warning)
            raise OSError(f"Modbus simulator cannot listen on {self._host}:{self._port}: {exc}") from exc
        self._server = server
        try:
            if self._port == 0:
                # Port 0: the listener is an asyncio.Server; ask its socket which port the kernel chose.
                listener = cast(asyncio.Server, server.transport)
                self._port = int(listener.sockets[0].getsockname()[1])
            await self.publish()
            if self._autostep:
                self._stepper = AutoStepper(
                    name=f"sim.modbus[{self._port}].step", step_hz=self._step_hz, speedup=self._speedup, step=self.step
                )
                self._stepper.start()
        except BaseException:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
            self._server = None
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stepper, self._stepper = self._stepper, None
        if stepper is not None:
            await stepper.stop()
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
            self._server = None

    async def join(self) -> None:
        """Wait for the stepping task to end and re-raise its error. Never returns while all is well."""
        if self._stepper is None:
            await asyncio.Event().wait()
        else:
            await self._stepper.join()

    async def step(self, dt_s: float) -> None:
        """Advance the model by ``dt_s`` seconds of model time and publish the new values."""
        self._model.step(dt_s)
        await self.publish()

    async def publish(self) -> None:
        """Write every table, one call each.

        Without a SimDevice ``action`` pymodbus applies these writes without yielding to the event loop, so a
        client request is served either before or after the whole update, never in the middle of it.
        """
        server = self._server
        if server is None:
            raise RuntimeError("the Modbus simulator is not running (use it as an async context manager)")
        await self._read_ack(server)
        values = dict(self._model.values())  # a snapshot: frozen points keep what was on the wire before
        state = self._gate.state
        if state.point_faults(self._gate.now()):
            values = self._apply_point_faults(values, state)
        self._published = values
        for table, image in self._encoder.images(values).items():
            await server.async_setValues(self._unit_id, _FUNCTION_CODE[table], 0, image)

    async def _holding_written(self, start: int, count: int) -> None:
        """A write touching ``Result.Ack`` is taken at once: the next record is on the wire for the next read."""
        ack = self._ack
        if ack is not None and self._server is not None and start < ack.address + 2 and ack.address < start + count:
            await self._publish_results()

    async def _publish_results(self) -> None:
        """Hand the model the ack and write only the result FIFO's points: an ack changes nothing else, and a
        rack's full image (hundreds of channels) would cost a whole publish per record. With point faults active
        everything is published, so frozen and bad points stay as the faults say."""
        server = self._server
        assert server is not None
        if self._gate.state.point_faults(self._gate.now()):
            await self.publish()
            return
        await self._read_ack(server)
        values = self._model.values()
        for point in self._result_points:
            value = values[point.point]
            self._published[point.point] = value
            await server.async_setValues(self._unit_id, _FUNCTION_CODE[point.table], point.address,
                                         encode(point, value, self._word_order))

    async def _read_ack(self, server: _FaultGatedTcpServer) -> None:
        """Hand the model a record id a client wrote to the ack register since the last publish."""
        ack = self._ack
        if ack is None or ACK_POINT not in self._published:
            return
        registers = await server.async_getValues(self._unit_id, _FUNCTION_CODE[Table.HOLDING], ack.address, 2)
        high, low = (int(registers[0]), int(registers[1]))
        if self._word_order is WordOrder.CDAB:
            high, low = low, high
        written = high << 16 | low
        if written != self._published[ACK_POINT]:
            assert isinstance(self._model, Acknowledging)
            self._model.ack_result(written)

    def _apply_point_faults(self, values: dict[str, Value], state: FaultState) -> dict[str, Value]:
        now = self._gate.now()
        for point in self._map:
            name = point.point
            if state.is_frozen(machine=self._name, point=name, now=now):
                values[name] = self._published.get(name, values[name])
            elif point.encoding is Encoding.FLOAT32 and state.bad_status(machine=self._name, point=name, now=now):
                values[name] = math.nan
        return values
