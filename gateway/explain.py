"""``cellgate check --explain``: the load a tag map will produce, and the plans that cannot keep their interval.

Pure: everything is computed from the tag map and two assumptions, never measured. Per device and in total it
gives requests/s, values/s, messages/s and bytes/s (an upper bound: every value is taken as changed, so a deadband
only lowers them). Warnings:

* a cycle that cannot fit its interval: Modbus RTU from the baud rate and the frame sizes; Modbus TCP and OPC UA
  polling from the number of requests, ``max_concurrent_requests`` and an assumed round trip (``--assume-rtt-ms``).
  Modbus devices on one serial port, or one host:port, take turns on it, so their shares of it are added up;
* a gappy read block: registers (or bits) read that no tag uses;
* topics or payloads beyond a broker's usual limits (a 64 KiB topic, a 256 KiB packet unless
  ``mqtt.max_packet_size`` says otherwise).

Modbus RTU timing (Modbus over Serial Line V1.02, 2.5.1): a character is 11 bits (start, 8 data, parity or a
second stop bit, stop); a read request is 8 bytes (unit, function, address, count, CRC); its response 5 bytes
plus the data (unit, function, byte count, CRC): 2 per register, 1 per 8 bits; every frame is followed by a
silence of 3.5 characters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from gateway.assembly import active_devices, build_outbound, event_modbus_fields, modbus_plan, planned_events
from gateway.encoders.base import Message
from gateway.events.modbus_link import plan_event_reads
from gateway.schema import META_PART_DEFAULT_BYTES, PUBLISH_OVERHEAD_BYTES, Value
from gateway.sources.base import RawReading
from gateway.sources.modbus_plan import ReadPlan, ReadRequest
from gateway.tagmap import ModbusDevice, OpcUaDevice, Plant
from gateway.tagmap.model import ModbusTag, OpcUaTag, Output
from gateway.vocabulary import DataType, OpcUaMode, Transport

RTU_BITS_PER_CHARACTER: Final = 11
RTU_REQUEST_BYTES: Final = 8
RTU_RESPONSE_OVERHEAD_BYTES: Final = 5
RTU_FRAME_GAP_CHARACTERS: Final = 3.5
DEFAULT_ASSUMED_RTT_MS: Final = 5.0
GAPPY_SHARE: Final = 0.25  # a read more than this share of which no tag uses is worth a warning (lower max_gap)
BROKER_TOPIC_LIMIT_BYTES: Final = 64 * 1024 - 1  # MQTT's 2-byte topic length: what Mosquitto and others allow
BROKER_PACKET_LIMIT_BYTES: Final = META_PART_DEFAULT_BYTES  # cloud brokers take 128-256 KiB; the _meta part size

# Values the size estimate encodes, per type: wide enough to be a fair upper bound of a real payload.
_SAMPLE_VALUES: Final[dict[DataType | None, Value]] = {
    DataType.BOOL: True,
    DataType.INT16: -32768,
    DataType.UINT16: 65535,
    DataType.INT32: -2147483648,
    DataType.UINT32: 4294967295,
    DataType.INT64: -9223372036854775808,
    DataType.UINT64: 18446744073709551615,
    DataType.FLOAT32: -1234.5677490234375,
    DataType.FLOAT64: -1234.5678901234567,
    None: -1234.5678901234567,  # an OPC UA tag without a declared type (variant)
}


# ---------------------------------------------------------------------------------------------- timing


def rtu_response_bytes(count: int, *, bits: bool = False) -> int:
    """Bytes of the response to a read of ``count`` registers (or ``count`` coils/discrete inputs)."""
    return RTU_RESPONSE_OVERHEAD_BYTES + (math.ceil(count / 8) if bits else 2 * count)


def rtu_transaction_seconds(baudrate: int, count: int, *, bits: bool = False) -> float:
    """Time on the line of one read: request, silence, response, silence."""
    characters = RTU_REQUEST_BYTES + rtu_response_bytes(count, bits=bits) + 2 * RTU_FRAME_GAP_CHARACTERS
    return characters * RTU_BITS_PER_CHARACTER / baudrate


def rtu_cycle_seconds(baudrate: int, reads: Iterable[tuple[int, bool]]) -> float:
    """Time on the line of one poll cycle of ``reads``: (count, bits) per read, one after the other."""
    return sum(rtu_transaction_seconds(baudrate, count, bits=bits) for count, bits in reads)


def round_trip_cycle_seconds(requests: int, *, concurrency: int, rtt_s: float) -> float:
    """One cycle of ``requests`` when ``concurrency`` of them are on the wire at once, each taking ``rtt_s``."""
    return math.ceil(requests / max(concurrency, 1)) * rtt_s


def unused_in_read(request: ReadRequest) -> int:
    """Registers (or bits) ``request`` reads that none of its tags uses."""
    used: set[int] = set()
    for slot in request.slots:
        used.update(range(slot.address, slot.address + slot.width))
    return request.count - len(used)


def unused_in_plan(plan: ReadPlan) -> tuple[int, int]:
    """(registers and bits read, those of them no tag uses) over every read of ``plan``."""
    return sum(r.count for r in plan.requests), sum(unused_in_read(r) for r in plan.requests)


def gappy_reads(plan: ReadPlan, *, min_share: float = GAPPY_SHARE) -> list[str]:
    """One line per read of which more than ``min_share`` is unused, e.g. ``holding 0..19: 6 of 20 registers
    unused``."""
    lines: list[str] = []
    for request in plan.requests:
        unused = unused_in_read(request)
        if unused > min_share * request.count:
            noun = "bits" if request.reads_bits else "registers"
            lines.append(f"{request.table} {request.start}..{request.end}: {unused} of {request.count} {noun} unused")
    return lines


def publish_bytes(topic: str, payload: bytes) -> int:
    """Bytes of one PUBLISH on the wire (topic, payload and a rounded-up header)."""
    return len(topic.encode()) + len(payload) + PUBLISH_OVERHEAD_BYTES


def size_problems(topic: str, payload: bytes, *, packet_limit: int) -> list[str]:
    """Why one message may not pass a broker: a topic over 64 KiB, a packet over ``packet_limit``."""
    problems: list[str] = []
    topic_bytes = len(topic.encode())
    if topic_bytes > BROKER_TOPIC_LIMIT_BYTES:
        problems.append(
            f"topic {topic[:60]}... is {topic_bytes} bytes, over the {BROKER_TOPIC_LIMIT_BYTES} brokers take"
        )
    size = publish_bytes(topic, payload)
    if size > packet_limit:
        problem = f"{topic}: a {size}-byte message, over the broker packet limit of {packet_limit} bytes"
        if "/DBIRTH/" in topic:
            problem += " (a Sparkplug DBIRTH cannot be split: split the device into smaller ones)"
        problems.append(problem)
    return problems


# ---------------------------------------------------------------------------------------------- the load


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceLoad:
    """One device's load per poll cycle (or OPC UA publishing interval) and the warnings about its plan."""

    name: str
    base_topic: str
    summary: str  # protocol, transport and what the cycle time estimate is based on
    interval_s: float
    requests: int
    values: int
    messages: int
    bytes: int
    cycle_s: float | None  # estimated time of one cycle; None where the server pushes (OPC UA subscriptions)
    link: str | None = None  # Modbus: the serial port or host:port; devices on one link take turns on it
    read_width: int = 0  # Modbus: registers and bits read per cycle
    unused: int = 0  # Modbus: of those, read but used by no tag
    events: str | None = None  # what the device's events read and write (their trigger reads are in ``requests``)
    warnings: tuple[str, ...] = ()

    def per_second(self, per_cycle: int) -> float:
        return per_cycle / self.interval_s


@dataclass(frozen=True, slots=True, kw_only=True)
class PlantLoad:
    devices: tuple[DeviceLoad, ...]
    warnings: tuple[str, ...] = field(default=())

    def total(self, attribute: Literal["requests", "values", "messages", "bytes"]) -> float:
        return sum(device.per_second(getattr(device, attribute)) for device in self.devices)


def _sample_value(tag: ModbusTag | OpcUaTag) -> Value:
    if tag.type == DataType.STRING:
        length = tag.length if isinstance(tag, ModbusTag) and tag.length else 16
        return "x" * (2 * length)
    return _SAMPLE_VALUES.get(tag.type, _SAMPLE_VALUES[None])


def _encoded(plant: Plant, device: ModbusDevice | OpcUaDevice) -> tuple[str, list[Message], list[Message]]:
    """The device's base topic, the messages of one cycle in which every value changed (in every output of the
    gateway), and the messages sent once: its ``_meta`` and, with Sparkplug, its DBIRTH with every last value."""
    now = 1_767_225_600.0  # any fixed time: only the sizes matter
    node = None
    if Output.SPARKPLUG in plant.gateway.outputs and plant.gateway.sparkplug is not None:
        from gateway.encoders.sparkplug import SparkplugEdgeNode  # protobuf only for Sparkplug maps

        node = SparkplugEdgeNode(group_id=plant.gateway.sparkplug.group_id,
                                 edge_node_id=plant.gateway.sparkplug_edge_node_id, clock=lambda: now)  # fmt: skip
    outbound = build_outbound(plant, device, sparkplug=node)
    if outbound.sparkplug is not None:
        outbound.sparkplug.birth(now)  # born: its DDATA is encoded
    readings = [RawReading(tag=tag.name, value=_sample_value(tag), ts=now) for tag in device.tags]
    cycle = outbound.messages(readings, now)
    once = outbound.meta_messages()
    if outbound.sparkplug is not None:
        once.append(outbound.sparkplug.birth(now))  # with the last values: as large as it gets
    return outbound.topics.base, cycle, once


def events_load(device: ModbusDevice | OpcUaDevice) -> tuple[int, str | None]:
    """Requests per cycle of the device's events (one trigger read per event, on the events' own connection)
    and a line saying what a record costs: its reads (Modbus: one per block, planned as the event link plans
    them; OPC UA: one Read call) and its ack write."""
    events = planned_events(device)
    if not events:
        return 0, None
    per_record: list[str] = []
    for event in events:
        if isinstance(device, ModbusDevice):
            fields = event_modbus_fields(device, [tag for tag in device.tags if tag.name in event.record_tags])
            reads = len(plan_event_reads([fields[tag] for tag in event.record_tags], unit_id=device.unit_id).requests)
        else:
            reads = 1
        write = " + 1 ack write" if event.ack is not None else ""
        per_record.append(f"{event.name} {reads} read(s){write}")
    line = (f"events on a second connection: {len(events)} trigger read(s) per cycle (in the requests above); "
            f"per record: {', '.join(per_record)}")
    return len(events), line


def explain_device(plant: Plant, device: ModbusDevice | OpcUaDevice, *, rtt_s: float) -> DeviceLoad:
    interval_s = device.interval_ms / 1000
    packet_limit = plant.mqtt.max_packet_size or BROKER_PACKET_LIMIT_BYTES
    base_topic, cycle_messages, meta_messages = _encoded(plant, device)
    warnings = [
        problem
        for message in (*cycle_messages, *meta_messages)
        for problem in size_problems(message.topic, message.payload, packet_limit=packet_limit)
    ]
    link: str | None = None
    read = unused = 0
    if isinstance(device, ModbusDevice):
        plan = modbus_plan(device)
        requests = len(plan.requests)
        warnings.extend(f"gappy read {text}; a lower max_gap splits it" for text in gappy_reads(plan))
        read, unused = unused_in_plan(plan)
        if device.transport is Transport.RTU and device.serial is not None:
            baud = device.serial.baudrate
            cycle_s = rtu_cycle_seconds(baud, ((r.count, r.reads_bits) for r in plan.requests))
            summary = f"modbus rtu {device.serial.port} at {baud} baud"
            link = f"serial line {device.serial.port}"
        else:
            concurrency = device.max_concurrent_requests
            cycle_s = round_trip_cycle_seconds(requests, concurrency=concurrency, rtt_s=rtt_s)
            summary = f"modbus tcp {device.host}:{device.port}, {concurrency} request(s) at once"
            link = f"connection {device.host}:{device.port}"
    else:
        if device.mode is OpcUaMode.POLL:
            requests = 1  # one Read per cycle, unless the server's MaxNodesPerRead splits it (known only online)
            cycle_s = round_trip_cycle_seconds(requests, concurrency=1, rtt_s=rtt_s)
            summary = f"opcua poll {device.endpoint}"
        else:
            requests = 1  # the server's Publish response per publishing interval
            cycle_s = None
            summary = f"opcua subscribe {device.endpoint}"
    if cycle_s is not None and cycle_s > interval_s:
        rtu = isinstance(device, ModbusDevice) and device.transport is Transport.RTU
        basis = "at that baud rate" if rtu else f"with a {rtt_s * 1000:g} ms round trip"
        warnings.append(
            f"one cycle of {requests} request(s) takes about {cycle_s * 1000:.0f} ms {basis}, "
            f"longer than its interval of {device.interval_ms} ms: it cannot keep up"
        )
    event_reads, events = events_load(device)
    values = len(device.tags)
    return DeviceLoad(
        name=device.name,
        base_topic=base_topic,
        summary=summary,
        interval_s=interval_s,
        requests=requests + event_reads,
        values=values,
        messages=len(cycle_messages),
        bytes=sum(publish_bytes(message.topic, message.payload) for message in cycle_messages),
        cycle_s=cycle_s,
        link=link,
        read_width=read,
        unused=unused,
        events=events,
        warnings=tuple(warnings),
    )


def shared_link_warnings(devices: Sequence[DeviceLoad]) -> list[str]:
    """Modbus devices on one serial port, or one host:port (one connection, e.g. units behind a gateway), take
    turns on it: warn when their shares of it add up to more than all of its time."""
    shares: dict[str, list[DeviceLoad]] = {}
    for device in devices:
        if device.link is not None and device.cycle_s is not None:
            shares.setdefault(device.link, []).append(device)
    warnings: list[str] = []
    for link, on_link in sorted(shares.items()):
        busy = sum(device.cycle_s / device.interval_s for device in on_link if device.cycle_s is not None)
        if len(on_link) > 1 and busy > 1:
            names = ", ".join(device.name for device in on_link)
            warnings.append(f"{link} ({names}) is needed {busy:.0%} of the time: the devices cannot keep up")
    return warnings


def explain_plant(plant: Plant, *, rtt_ms: float = DEFAULT_ASSUMED_RTT_MS) -> PlantLoad:
    devices = tuple(explain_device(plant, device, rtt_s=rtt_ms / 1000) for device in active_devices(plant))
    return PlantLoad(devices=devices, warnings=tuple(shared_link_warnings(devices)))


def _rate(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:,.0f}"


def _bytes_rate(value: float) -> str:
    for unit, size in (("MB/s", 1e6), ("kB/s", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B/s"


def _rates(requests: float, values: float, messages: float, size: float) -> str:
    return (f"{_rate(requests)} requests/s, {_rate(values)} values/s, {_rate(messages)} messages/s, "
            f"{_bytes_rate(size)}")


def render_explain(load: PlantLoad, *, rtt_ms: float) -> str:
    """What ``cellgate check --explain`` prints: a line per device, the total, then every warning."""
    lines = [f"load (upper bound: every value taken as changed; round trip assumed {rtt_ms:g} ms):"]
    warnings: list[str] = []
    for device in load.devices:
        cycle = "" if device.cycle_s is None else f", cycle ~{device.cycle_s * 1000:.1f} ms"
        lines.append(f"  {device.base_topic}: {device.summary}, every {device.interval_s * 1000:g} ms{cycle}")
        lines.append("    " + _rates(*(device.per_second(n) for n in (device.requests, device.values,
                                                                           device.messages, device.bytes))))
        if device.read_width:
            lines.append(f"    {device.read_width} registers/bits read per cycle, {device.unused} of them unused "
                         f"({device.unused / device.read_width:.0%})")
        if device.events is not None:
            lines.append(f"    {device.events}")
        warnings.extend(f"{device.name}: {warning}" for warning in device.warnings)
    lines.append(
        "  total: " + _rates(load.total("requests"), load.total("values"), load.total("messages"), load.total("bytes"))
    )
    warnings.extend(load.warnings)
    lines.extend(f"WARNING {warning}" for warning in warnings)
    if not warnings:
        lines.append("no warnings: every plan fits its interval")
    return "\n".join(lines)
