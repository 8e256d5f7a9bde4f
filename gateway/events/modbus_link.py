"""The events' own Modbus TCP connection: reads planned once per tag set, acks written with function 5/6/16.

Reads use the same planner and decoders as the poll loop (``modbus_plan``), with gaps of up to one full read
bridged, so a record laid out in one table within 125 registers is one read; its reads go out together (one
transaction group). Writes: a coil with function 5, a 16-bit register with function 6, wider values with
function 16 in the tag's byte order (``core.registers_for``), all with our client (``modbus_tcp``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gateway.events.core import WriteResult, registers_for
from gateway.events.runner import EventLinkError, EventReadError
from gateway.sources.base import RawReading
from gateway.sources.modbus_plan import ModbusField, ReadLimits, ReadPlan, plan_reads
from gateway.sources.modbus_tcp import (
    ExceptionResponse,
    ModbusConnectionError,
    ModbusResponseError,
    ModbusTcpClient,
    ModbusTimeoutError,
    ReadFunction,
    WriteFunction,
    abandon,
)
from gateway.tagmap.limits import MAX_REGISTERS_PER_READ
from gateway.vocabulary import ByteOrder, DataType, Table

_READS = {
    Table.HOLDING: ReadFunction.READ_HOLDING_REGISTERS,
    Table.INPUT: ReadFunction.READ_INPUT_REGISTERS,
    Table.COIL: ReadFunction.READ_COILS,
    Table.DISCRETE: ReadFunction.READ_DISCRETE_INPUTS,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ModbusAckTarget:
    table: Table
    address: int
    type: DataType
    order: ByteOrder


def plan_event_reads(fields: Sequence[ModbusField], *, unit_id: int) -> ReadPlan:
    """The reads of a trigger or a record: gaps of up to one full read bridged (``cellgate check --explain``
    counts them the same way)."""
    return plan_reads(fields, unit_id=unit_id, limits=ReadLimits(max_gap=MAX_REGISTERS_PER_READ))


class ModbusEventLink:
    """``fields``: every tag the events read, by name; ``acks``: the ack tags (the only ones written)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        unit_id: int,
        timeout_s: float,
        fields: Mapping[str, ModbusField],
        acks: Mapping[str, ModbusAckTarget],
        max_in_flight: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``max_in_flight``: the device's ``max_concurrent_requests`` (the reads of a record go out together)."""
        self._client = ModbusTcpClient(host, port, connect_timeout_s=timeout_s, max_in_flight=max_in_flight)
        self._unit_id = unit_id
        self._timeout_s = timeout_s
        self._fields = dict(fields)
        self._acks = dict(acks)
        self._plans: dict[tuple[str, ...], ReadPlan] = {}
        self._clock = clock
        self.endpoint = f"{host}:{port}"

    async def connect(self) -> None:
        try:
            await self._client.connect()
        except ModbusConnectionError as exc:
            raise EventLinkError(f"cannot connect to {self.endpoint}: {exc}") from exc

    async def close(self) -> None:
        self._client.close()

    def _plan(self, tags: Sequence[str]) -> ReadPlan:
        key = tuple(tags)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = plan_event_reads([self._fields[tag] for tag in key], unit_id=self._unit_id)
        return plan

    async def read(self, tags: Sequence[str]) -> Mapping[str, RawReading]:
        plan = self._plan(tags)
        client = self._client
        sent = []
        try:
            for request in plan.requests:
                future = await client.send_read(
                    _READS[request.table],
                    unit_id=self._unit_id,
                    start=request.start,
                    count=request.count,
                    timeout_s=self._timeout_s,
                )
                sent.append((request, future))
            readings: dict[str, RawReading] = {}
            for request, future in sent:
                answer = await future
                ts = self._clock()
                if isinstance(answer, ExceptionResponse):
                    raise EventReadError(
                        f"exception {answer.code} reading {request.table} {request.start}..{request.end - 1}"
                    )
                if isinstance(answer, bytes):
                    decoded = request.decode_block(answer, ts=ts)
                else:
                    decoded = request.decode(answer, ts=ts)
                readings.update((reading.tag, reading) for reading in decoded)
            return readings
        except (ModbusConnectionError, ModbusTimeoutError) as exc:
            raise EventLinkError(str(exc)) from exc
        except ModbusResponseError as exc:
            raise EventReadError(str(exc)) from exc
        finally:
            for _, future in sent:
                abandon(future)

    async def write(self, tag: str, value: int) -> tuple[WriteResult, str | None]:
        target = self._acks[tag]
        if target.table is Table.COIL:
            function, values = WriteFunction.WRITE_SINGLE_COIL, [1 if value else 0]
        else:
            if target.type is DataType.BOOL:
                values = [1 if value else 0]
            else:
                values = registers_for(value, target.type, target.order)
            single = len(values) == 1
            function = WriteFunction.WRITE_SINGLE_REGISTER if single else WriteFunction.WRITE_MULTIPLE_REGISTERS
        try:
            answer = await self._client.write(function, unit_id=self._unit_id, address=target.address, values=values,
                                              timeout_s=self._timeout_s)  # fmt: skip
        except (ModbusConnectionError, ModbusTimeoutError) as exc:
            return WriteResult.FAILED, str(exc)
        except ModbusResponseError as exc:
            return WriteResult.EXCEPTION, str(exc)
        if isinstance(answer, ExceptionResponse):
            return WriteResult.EXCEPTION, f"Modbus exception {answer.code}"
        return WriteResult.OK, None
