"""Plan once: a validated ``Plant`` -> per-device outbound encoders, source tasks, MQTT options, a summary.

This is the glue between the tag-map model and the protocol modules; it decides nothing at poll time.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.events.core import RecordField
from gateway.events.runner import AckPlan, EventRunner, EventStats, PlannedEvent, PlcLink, PublishRecord
from gateway.mqtt.options import MqttOptions, SessionHooks
from gateway.outbound import ContextPlan, DeviceOutbound, InstanceContext, TagOutput
from gateway.schema import META_PART_DEFAULT_BYTES, EquipmentTopics, TagMeta
from gateway.sources.base import Backlog, Emit, RawReading, ReportLink
from gateway.sources.modbus import ModbusConnection, ModbusUnit, SerialEndpoint, TcpEndpoint
from gateway.sources.modbus_plan import ModbusField, ReadLimits, ReadPlan, describe_plan, plan_reads
from gateway.tagmap import Device, ModbusDevice, ModbusTag, OpcUaDevice, OpcUaTag, Plant, Transport
from gateway.tagmap.index_range import IndexItem, parse_index_range
from gateway.tagmap.model import Output
from gateway.transform import TagRules
from gateway.vocabulary import OpcUaSecurityMode, OpcUaSecurityPolicy, QoS

if TYPE_CHECKING:
    # asyncua is large to import (README, "Memory"): a gateway without OPC UA devices never loads it.
    from gateway.encoders.sparkplug import SparkplugEdgeNode
    from gateway.sources.opcua import OpcUaDeviceOptions, OpcUaTagRef
    from gateway.sources.opcua_security import ClientSecurity
    from gateway.value_shape import ValueShape


@dataclass(frozen=True, slots=True)
class DeviceLink:
    """Where one device's source sends its readings and link changes."""

    emit: Emit
    report_link: ReportLink
    show_stats: Callable[[object], None] = lambda stats: None
    """Hands the source's counters object (UnitStats, OpcUaSourceStats) to the runtime, read at metrics scrapes."""
    publish_record: PublishRecord | None = None
    """Hands an event record to store-and-forward (devices with ``events``)."""
    event_stats: EventStats | None = None
    """The counters of the device's event runner, read at metrics scrapes."""
    backlog: Backlog | None = None
    """The path to the sink, for skipping polls while its data is older than the device's ``max_queue_age_ms``."""
    paced_reads: bool = False
    """The device's readings may be emitted in parts of a poll (one message per value, no context): poll loops
    pace their reads to the sink under overload (``sources.base.HoldBack``)."""


@dataclass(frozen=True, slots=True)
class SourceTask:
    """One supervised task: a Modbus connection (one or more units) or one OPC UA device.

    ``run`` builds a fresh client each time it is called, so a restart never reuses a broken one.
    """

    name: str
    devices: tuple[str, ...]
    run: Callable[[], Awaitable[None]]
    reports_link: bool = True
    """False for a device's event runner: its crash says nothing about the device's data link."""


def active_devices(plant: Plant) -> list[Device]:
    return [device for device in plant.devices if device.enabled]


# ------------------------------------------------------------------------------------------ outbound


def tag_source(tag: ModbusTag | OpcUaTag) -> str:
    if isinstance(tag, ModbusTag):
        bit = f".{tag.bit}" if tag.bit is not None else ""
        return f"{tag.table}:{tag.address}{bit}"
    return str(tag.node_id)


def tag_type(tag: ModbusTag | OpcUaTag) -> str:
    if tag.type is None:
        return "variant"
    return tag.type


def build_outbound(plant: Plant, device: Device, *, sparkplug: SparkplugEdgeNode | None = None) -> DeviceOutbound:
    """The device's outbound side; with ``sparkplug`` (the edge node, when ``gateway.outputs`` lists sparkplug) the
    device is also (or, without uns-json, only) a Sparkplug device of it."""
    topics = EquipmentTopics.of(
        enterprise=plant.gateway.enterprise,
        site=plant.gateway.site,
        area=device.area,
        line=device.line,
        equipment=device.name,
    )
    tags: list[TagOutput] = []
    shared_rules: dict[TagRules, TagRules] = {}  # a template's 256 channels share one rules object per tag
    for tag in device.tags:
        rules = TagRules(
            scale=tag.scale,
            offset=tag.offset,
            minimum=tag.min,
            maximum=tag.max,
            deadband=tag.deadband,
            heartbeat_s=tag.heartbeat_s,
        )
        rules = shared_rules.setdefault(rules, rules)
        meta = TagMeta(
            tag=tag.name,
            type=tag_type(tag),
            unit=tag.unit,
            min=tag.min,
            max=tag.max,
            description=tag.description,
            source=tag_source(tag),
            shape=tag.shape if isinstance(tag, OpcUaTag) else None,
            fields=tag.fields if isinstance(tag, OpcUaTag) else None,
        )
        tags.append(TagOutput(name=tag.name, unit=tag.unit, rules=rules, meta=meta))
    device_encoder = None
    if sparkplug is not None:
        from gateway.encoders.sparkplug import SparkplugDeviceEncoder

        catalogue = [tag.meta for tag in tags]
        # Aliases from the edge node's table: a device rebuilt by a reload keeps those of the tags it keeps.
        device_encoder = SparkplugDeviceEncoder(node=sparkplug, device=device.name, catalogue=catalogue)
    return DeviceOutbound(
        device=device.name,
        protocol=device.protocol,
        topics=topics,
        mode=device.publish,
        interval_ms=device.interval_ms,
        tags=tags,
        max_packet_bytes=plant.mqtt.max_packet_size or META_PART_DEFAULT_BYTES,
        context=context_plan(device),
        sparkplug=device_encoder,
        uns_json=sparkplug is None or Output.UNS_JSON in plant.gateway.outputs,
        events=tuple(device.events),
    )


def context_plan(device: Device) -> ContextPlan | None:
    """The device's ``context`` and its repeats' (``repeat_context``) as the outbound side runs them."""
    if not device.context and not device.repeat_context:
        return None
    described = dict(device.context)
    instances: list[InstanceContext] = []
    for repeat in device.repeat_context:
        described.update({key: f"{repeat.name}/{tag}" for key, tag in repeat.keys.items()})
        instances.extend(
            InstanceContext(
                name=prefix,
                keys={key: f"{prefix}/{tag}" for key, tag in repeat.keys.items()},
                members=[f"{prefix}/{tag}" for tag in repeat.tags],
            )
            for prefix in repeat.instances
        )
    return ContextPlan(device=dict(device.context), instances=instances, described=described)


# ------------------------------------------------------------------------------------------- modbus


def modbus_plan(device: ModbusDevice) -> ReadPlan:
    fields = [
        ModbusField(
            key=tag.name,
            table=tag.table,
            address=tag.address,
            type=tag.type,
            order=tag.order or device.order,
            bit=tag.bit,
            width=tag.width,
        )
        for tag in device.tags
    ]
    limits = ReadLimits(
        max_registers_per_read=device.max_registers_per_read,
        max_bits_per_read=device.max_bits_per_read,
        max_gap=device.max_gap,
    )
    return plan_reads(fields, unit_id=device.unit_id, limits=limits)


def modbus_endpoint(device: ModbusDevice) -> TcpEndpoint | SerialEndpoint:
    if device.transport is Transport.RTU:
        serial = device.serial
        assert serial is not None, "the tag map guarantees serial settings for rtu"
        return SerialEndpoint(
            port=serial.port,
            baudrate=serial.baudrate,
            parity=serial.parity,
            stopbits=serial.stopbits,
            bytesize=serial.bytesize,
        )
    assert device.host is not None, "the tag map guarantees a host for tcp"
    return TcpEndpoint(host=device.host, port=device.port)


def _modbus_tasks(devices: list[ModbusDevice], links: Mapping[str, DeviceLink]) -> list[SourceTask]:
    # Several unit ids behind one TCP endpoint or one serial line share one client (and its requests in flight).
    groups: dict[TcpEndpoint | SerialEndpoint, list[ModbusDevice]] = {}
    for device in devices:
        endpoint = modbus_endpoint(device)
        key: TcpEndpoint | SerialEndpoint = endpoint
        if isinstance(endpoint, SerialEndpoint):
            # One serial port is one bus whatever its settings; the first device's line settings win.
            key = next((k for k in groups if isinstance(k, SerialEndpoint) and k.port == endpoint.port), endpoint)
        groups.setdefault(key, []).append(device)

    tasks: list[SourceTask] = []
    for endpoint, members in groups.items():
        # Only plain values go into the closure, never the device models: the runtime lets the (large)
        # tag-map models go once everything is built.
        units_plan = [(device.name, device.interval_ms, modbus_plan(device)) for device in members]
        max_queue_age_ms = {device.name: device.queue_age_cap_ms for device in members}
        timeout_ms = max(device.timeout_ms for device in members)
        # Devices on one host:port share one connection and so one limit of requests in flight. The smallest value
        # among them is the safe choice: a server that copes with N at once also copes with fewer, while more than
        # one of the devices asked for may be more than the server handles. (RTU is always 1: the tag map says so.)
        max_concurrent_requests = min(device.max_concurrent_requests for device in members)

        def run(
            endpoint: TcpEndpoint | SerialEndpoint = endpoint,
            units_plan: list[tuple[str, int, ReadPlan]] = units_plan,
            timeout_ms: int = timeout_ms,
            max_concurrent_requests: int = max_concurrent_requests,
            max_queue_age_ms: dict[str, int] = max_queue_age_ms,
        ) -> Awaitable[None]:
            units = [
                ModbusUnit(
                    name=name,
                    plan=plan,
                    interval_ms=interval_ms,
                    emit=links[name].emit,
                    report_link=links[name].report_link,
                    backlog=links[name].backlog,
                    max_queue_age_ms=max_queue_age_ms[name],
                    paced_reads=links[name].paced_reads,
                )
                for name, interval_ms, plan in units_plan
            ]
            connection = ModbusConnection(
                endpoint=endpoint, units=units, timeout_ms=timeout_ms, max_concurrent_requests=max_concurrent_requests
            )
            for name, _, _ in units_plan:
                links[name].show_stats(connection.stats[name])
            return connection.run()

        tasks.append(
            SourceTask(name=f"modbus[{endpoint}]", devices=tuple(d.name for d in members), run=run)
        )
    return tasks


# -------------------------------------------------------------------------------------------- opcua


def opcua_options(device: OpcUaDevice) -> OpcUaDeviceOptions:
    from gateway.sources.opcua import OpcUaDeviceOptions

    return OpcUaDeviceOptions(
        endpoint=device.endpoint,
        namespace_uri=device.namespace,
        mode=device.mode,
        interval_ms=device.interval_ms,
        sampling_interval_ms=device.sampling_interval_ms,
        queue_size=device.queue_size,
        timeout_ms=device.timeout_ms,
        username=device.username,
        password=device.password.get_secret_value() if device.password else None,
        structures=device.structures,
        max_queue_age_ms=device.queue_age_cap_ms,
    )


def opcua_indexes(device: OpcUaDevice) -> dict[str, tuple[IndexItem, ...]]:
    """Tag name -> parsed ``index`` of the tags that have one."""
    return {tag.name: parse_index_range(tag.index) for tag in device.tags if tag.index is not None}


def opcua_shapes(device: OpcUaDevice) -> dict[str, ValueShape]:
    """Tag name -> declared ``shape`` / ``fields`` of the tags that have one."""
    from gateway.value_shape import ValueShape

    return {tag.name: ValueShape(tag.shape, tag.fields) for tag in device.tags
            if tag.shape is not None or tag.fields is not None}


def indexed_emit(
    emit: Emit, indexes: Mapping[str, tuple[IndexItem, ...]], shapes: Mapping[str, ValueShape] | None = None
) -> Emit:
    """``emit`` with every indexed tag's value cut to its ``index`` first (``opcua_status.indexed_readings``),
    then every value checked against its declared shape (``opcua_status.shaped_readings``)."""
    from gateway.sources.opcua_status import indexed_readings, shaped_readings

    async def emit_indexed(readings: Sequence[RawReading]) -> None:
        out = indexed_readings(readings, indexes) if indexes else readings
        await emit(shaped_readings(out, shapes) if shapes else out)

    return emit_indexed


def opcua_tag_refs(device: OpcUaDevice) -> list[OpcUaTagRef]:
    from gateway.sources.opcua import OpcUaTagRef

    refs: list[OpcUaTagRef] = []
    for tag in device.tags:
        node = tag.node_id
        refs.append(
            OpcUaTagRef(
                name=tag.name,
                kind=node.kind,
                identifier=node.identifier,
                namespace_uri=node.namespace_uri,
                namespace_index=node.namespace_index,
                name_structure=tag.type is None,
            )
        )
    return refs


def _secret_file(name: str | None) -> str | None:
    from gateway.secrets import read_secret_file

    return None if name is None else read_secret_file(name)


def opcua_security(device: OpcUaDevice, *, gateway_id: str, pki_root: Path | None) -> ClientSecurity | None:
    """The device's secure-channel settings (None: SecurityPolicy None); the PKI folder is ``pki_root``."""
    from gateway.pki import Pki, application_uri
    from gateway.sources.opcua_security import ClientSecurity

    if device.security is None and device.password_file is None:
        return None
    security = device.security
    return ClientSecurity(
        policy=security.policy if security else OpcUaSecurityPolicy.AUTO,
        mode=security.mode if security else OpcUaSecurityMode.SIGN_AND_ENCRYPT,
        allow_insecure=security.allow_insecure if security else True,
        check_hostname=security.check_hostname if security else True,
        accept_outdated_crl=security.accept_outdated_crl if security else False,
        pki=Pki(pki_root or Path("pki"), uri=application_uri(gateway_id)),
        user_certificate=Path(device.user_certificate) if device.user_certificate else None,
        user_key=Path(device.user_key) if device.user_key else None,
        password_file=Path(device.password_file) if device.password_file else None,
        channel=security is not None,
    )


def _opcua_task(
    device: OpcUaDevice, links: Mapping[str, DeviceLink], *, gateway_id: str = "gateway", pki_root: Path | None = None
) -> SourceTask:
    from gateway.sources.opcua import OpcUaSource

    options = opcua_options(device)
    security = opcua_security(device, gateway_id=gateway_id, pki_root=pki_root)
    refs = opcua_tag_refs(device)
    indexes = opcua_indexes(device)
    shapes = opcua_shapes(device)

    name = device.name  # not the model itself: see _modbus_tasks

    def run() -> Awaitable[None]:
        link = links[name]  # looked up at each start: a reload may have replaced the device's channel
        source = OpcUaSource(device=name, options=options, tags=refs, security=security, backlog=link.backlog,
                              paced_reads=link.paced_reads)  # fmt: skip
        link.show_stats(source.stats)
        checked = indexed_emit(link.emit, indexes, shapes) if indexes or shapes else link.emit
        return source.run(checked, link.report_link)

    return SourceTask(name=f"opcua[{name}]", devices=(name,), run=run)


def build_sources(plant: Plant, links: Mapping[str, DeviceLink], *, pki_root: Path | None = None) -> list[SourceTask]:
    """One task per Modbus connection and per OPC UA device, for the enabled devices (``pki_root``: see gateway.pki),
    and one event runner per device with ``events``."""
    devices = active_devices(plant)
    tasks = _modbus_tasks([d for d in devices if isinstance(d, ModbusDevice)], links)
    tasks += [
        _opcua_task(d, links, gateway_id=plant.gateway.id, pki_root=pki_root)
        for d in devices
        if isinstance(d, OpcUaDevice)
    ]
    tasks += [
        _events_task(d, links, gateway_id=plant.gateway.id, pki_root=pki_root) for d in devices if d.events
    ]
    return tasks


# ------------------------------------------------------------------------------------------- events


def planned_events(device: Device) -> list[PlannedEvent]:
    """The device's events with their tags' rules and the ack's type and range (the tag map checked them)."""
    tags = {tag.name: tag for tag in device.tags}
    events: list[PlannedEvent] = []
    for name, spec in device.events.items():
        fields = tuple(
            RecordField(field=entry.field, tag=entry.tag, rules=_rules(tags[entry.tag])) for entry in spec.record
        )
        ack = None
        if spec.ack is not None:
            ack_tag = tags[spec.ack.tag]
            assert ack_tag.type is not None, "the tag map requires a type on ack tags"
            ack = AckPlan(tag=ack_tag.name, field=spec.ack.value, type=ack_tag.type, minimum=ack_tag.min,
                          maximum=ack_tag.max)  # fmt: skip
        event = PlannedEvent(name=name, trigger_tag=spec.trigger.tag, trigger_on=spec.trigger.on, fields=fields,
                             record_id=spec.record_id_field, ack=ack)  # fmt: skip
        events.append(event)
    return events


def _rules(tag: ModbusTag | OpcUaTag) -> TagRules:
    return TagRules(scale=tag.scale, offset=tag.offset, minimum=tag.min, maximum=tag.max)


def event_link(device: Device, events: list[PlannedEvent], *, gateway_id: str, pki_root: Path | None) -> PlcLink:
    used = {event.trigger_tag for event in events} | {f.tag for event in events for f in event.fields}
    acks = {event.ack.tag for event in events if event.ack is not None}
    tags = [tag for tag in device.tags if tag.name in used | acks]
    if isinstance(device, ModbusDevice):
        from gateway.events.modbus_link import ModbusAckTarget, ModbusEventLink

        assert device.host is not None, "events need transport tcp (the tag map says so)"
        fields = event_modbus_fields(device, tags)
        targets = {
            tag.name: ModbusAckTarget(table=tag.table, address=tag.address, type=tag.type,
                                      order=tag.order or device.order)
            for tag in tags if isinstance(tag, ModbusTag) and tag.name in acks
        }  # fmt: skip
        return ModbusEventLink(host=device.host, port=device.port, unit_id=device.unit_id,
                               timeout_s=device.timeout_ms / 1000, fields=fields, acks=targets,
                               max_in_flight=device.max_concurrent_requests)  # fmt: skip
    from gateway.events.opcua_link import OpcUaEventLink

    refs = [ref for ref in opcua_tag_refs(device) if ref.name in used | acks]
    ack_types = {tag.name: tag.type for tag in tags if tag.name in acks and tag.type is not None}
    return OpcUaEventLink(options=opcua_options(device), tags=refs, ack_types=ack_types,
                          security=opcua_security(device, gateway_id=gateway_id, pki_root=pki_root))  # fmt: skip


def event_modbus_fields(device: ModbusDevice, tags: Sequence[ModbusTag | OpcUaTag]) -> dict[str, ModbusField]:
    """The read fields of a Modbus device's event tags, by tag name."""
    return {
        tag.name: ModbusField(key=tag.name, table=tag.table, address=tag.address, type=tag.type,
                              order=tag.order or device.order, bit=tag.bit, width=tag.width)
        for tag in tags if isinstance(tag, ModbusTag)
    }  # fmt: skip


def _events_task(
    device: Device, links: Mapping[str, DeviceLink], *, gateway_id: str, pki_root: Path | None
) -> SourceTask:
    events = planned_events(device)
    name = device.name
    interval_s = device.interval_ms / 1000
    used = {event.trigger_tag for event in events} | {f.tag for event in events for f in event.fields}
    used |= {event.ack.tag for event in events if event.ack is not None}
    # Only the event tags go into the closure (see _modbus_tasks: the large tag-map models are let go).
    slim = device.model_copy(update={"tags": tuple(tag for tag in device.tags if tag.name in used)})
    make_link = functools.partial(event_link, slim, events, gateway_id=gateway_id, pki_root=pki_root)

    def run() -> Awaitable[None]:
        link = links[name]
        assert link.publish_record is not None, "the runtime gives every device a publish_record"
        runner = EventRunner(device=name, events=events, link=make_link(), publish=link.publish_record,
                             interval_s=interval_s, stats=link.event_stats)  # fmt: skip
        return runner.run()

    return SourceTask(name=f"events[{name}]", devices=(name,), run=run, reports_link=False)


# --------------------------------------------------------------------------------------------- mqtt


def mqtt_options_for(
    plant: Plant,
    *,
    will_topic: str,
    will_payload: bytes | Callable[[], bytes],
    online_payload: bytes | Callable[[], bytes] | None,
    will_retain: bool = True,
    subscriptions: tuple[tuple[str, QoS], ...] = (),
    on_message: Callable[[str, bytes], None] | None = None,
    session: SessionHooks | None = None,
) -> MqttOptions:
    mqtt = plant.mqtt
    return MqttOptions(
        host=mqtt.host,
        port=mqtt.port,
        tls=mqtt.tls,
        ca_file=mqtt.ca_file,
        cert_file=mqtt.cert_file,
        key_file=mqtt.key_file,
        username=mqtt.username,
        password=mqtt.password.get_secret_value() if mqtt.password else _secret_file(mqtt.password_file),
        client_id=mqtt.client_id or f"cellgate-{plant.gateway.id}",
        protocol=mqtt.protocol,
        keepalive_s=mqtt.keepalive_s,
        qos=mqtt.qos,
        max_inflight=mqtt.max_inflight,
        reconnect_max_s=mqtt.reconnect_max_s,
        failover=mqtt.failover,
        max_packet_size=mqtt.max_packet_size,
        puback_timeout_s=mqtt.puback_timeout_s,
        will_topic=will_topic,
        will_payload=will_payload,
        online_payload=online_payload,
        will_retain=will_retain,
        subscriptions=subscriptions,
        on_message=on_message,
        session=session,
    )


# ---------------------------------------------------------------------------------------- dry run


def describe_plant(plant: Plant, *, list_tags: bool = False) -> str:
    """What ``cellgate check`` prints: devices, tags, read plans per cycle, and (optionally) every topic."""
    devices = active_devices(plant)
    disabled = len(plant.devices) - len(devices)
    mqtt = plant.mqtt
    lines = [
        f"tag map OK: {len(devices)} device(s), {sum(len(d.tags) for d in devices)} tag(s)"
        + (f", {disabled} disabled device(s) skipped" if disabled else ""),
        f"gateway {plant.gateway.id} ({plant.gateway.enterprise}/{plant.gateway.site}) -> "
        f"{'mqtts' if mqtt.tls else 'mqtt'}://{mqtt.host}:{mqtt.port} qos {mqtt.qos}, MQTT {mqtt.protocol}",
    ]
    sparkplug = plant.gateway.sparkplug
    if Output.SPARKPLUG in plant.gateway.outputs and sparkplug is not None:
        lines.append(
            f"outputs {', '.join(plant.gateway.outputs)}: Sparkplug B edge node "
            f"spBv1.0/{sparkplug.group_id}/+/{plant.gateway.sparkplug_edge_node_id}"
            + (f", waits for primary host {sparkplug.primary_host}" if sparkplug.primary_host else "")
        )
    for device in devices:
        outbound = build_outbound(plant, device)
        base = outbound.topics.base
        if isinstance(device, ModbusDevice):
            endpoint = modbus_endpoint(device)
            lines.append(
                f"{base}: modbus {device.transport} {endpoint} unit {device.unit_id}, "
                f"{len(device.tags)} tags every {device.interval_ms} ms, publish {device.publish}"
            )
            plan = modbus_plan(device)
            lines.extend(f"  read {line}" for line in describe_plan(plan))
            lines.append(f"  {len(plan.requests)} read request(s) per cycle")
            lines.extend(f"  PROBLEM {problem}" for problem in plan.problems)
        else:
            lines.append(
                f"{base}: opcua {device.mode} {device.endpoint}"
                + (f" namespace {device.namespace}" if device.namespace else "")
                + f", {len(device.tags)} tags every {device.interval_ms} ms, publish {device.publish}"
            )
        for name, spec in device.events.items():
            ack = f", ack {spec.ack.tag} <- {spec.ack.value} after PUBACK" if spec.ack is not None else ", no ack"
            lines.append(
                f"  event {name} -> {base}/_events/{name}: trigger {spec.trigger.tag} on {spec.trigger.on}, "
                f"{len(spec.record)} field(s){ack}"
            )
        if list_tags:
            for tag in device.tags:
                unit = f" [{tag.unit}]" if tag.unit else ""
                lines.append(f"    {base}/{tag.name} <- {tag_source(tag)} {tag_type(tag)}{unit}")
    return "\n".join(lines)
