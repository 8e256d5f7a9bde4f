"""Templates and repeats -> concrete tag lists, plus the checks that need the whole device or file.

Pure: validated models in, expanded models and ``Issue``s out. Each template tag is validated once per
protocol (a "prototype"); every instance is then a cheap copy with its name, address or node filled in, so a
50,000-tag plant expands in a fraction of a second. Problems that repeat for every instance are reported
once, with the count of the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from gateway.schema import MAX_TOPIC_BYTES, PUBLISH_OVERHEAD_BYTES, quoted, utf8_length
from gateway.tagmap.events import event_issues
from gateway.tagmap.issues import Issue, Loc, did_you_mean, format_loc, issues_from_validation_error
from gateway.tagmap.limits import MAX_ADDRESS, MIN_PAYLOAD_ROOM_BYTES
from gateway.tagmap.model import (
    Device,
    GatewaySection,
    HttpSection,
    ModbusDevice,
    ModbusTag,
    MqttSection,
    OpcUaDevice,
    OpcUaTag,
    Plant,
    RepeatContext,
    RepeatSpec,
    SpoolSection,
    Tag,
    TagMap,
    format_spec_problem,
    tag_fits_device,
    tag_name_problem,
)
from gateway.tagmap.nodeid import parse_node_id, resolve_namespace

Templates = Mapping[str, Sequence[Mapping[str, Any]]]
DescribeLocation = Callable[[Loc], str]


@dataclass(frozen=True, slots=True)
class _Prototype:
    """One template tag validated for one protocol; instances copy it."""

    index: int
    tag: ModbusTag | OpcUaTag
    node_pattern: str | None  # OPC UA: the node as written, with {n}
    width: int  # Modbus: addresses the tag spans (computed once, used per instance)


@dataclass(slots=True)
class _Repeated:
    """An instance problem seen ``count`` times in one repeat; reported once."""

    issue: Issue
    count: int = 1


@dataclass(frozen=True, slots=True)
class TopicLimit:
    """What every topic of the plant must fit: ``{root}/{area}/{line}/{equipment}/...`` within ``max_bytes``
    (UTF-8), ``why`` saying where the limit comes from, for the message."""

    root: str  # "{enterprise}/{site}"
    max_bytes: int = MAX_TOPIC_BYTES
    why: str = f"the {MAX_TOPIC_BYTES} bytes MQTT allows"


class _Expander:
    def __init__(self, templates: Templates | None, describe: DescribeLocation, topics: TopicLimit | None) -> None:
        self.templates = templates
        self.describe = describe
        self.topics = topics
        self.issues: list[Issue] = []
        self._prototypes: dict[tuple[str, str], list[_Prototype]] = {}
        self._repeated: dict[tuple[object, ...], _Repeated] = {}

    # ------------------------------------------------------------------------------ problem bookkeeping

    def _once_per_repeat(self, key: tuple[object, ...], issue: Issue) -> None:
        seen = self._repeated.get(key)
        if seen is None:
            self._repeated[key] = _Repeated(issue)
        else:
            seen.count += 1

    def finish(self) -> list[Issue]:
        for repeated in self._repeated.values():
            issue = repeated.issue
            if repeated.count > 1:
                more = repeated.count - 1
                issue = Issue(issue.loc, f"{issue.message} (and {more} more like it in this repeat)", False, issue.via)
            self.issues.append(issue)
        self._repeated.clear()
        return self.issues

    # ----------------------------------------------------------------------------------- prototypes

    def prototypes(self, template: str, protocol: str, first_n: int, via: str) -> list[_Prototype]:
        key = (template, protocol)
        cached = self._prototypes.get(key)
        if cached is not None:
            return cached
        assert self.templates is not None
        model: type[ModbusTag] | type[OpcUaTag] = ModbusTag if protocol == "modbus" else OpcUaTag
        prototypes: list[_Prototype] = []
        names: dict[str, int] = {}
        for index, raw in enumerate(self.templates[template]):
            where: Loc = ("templates", template, index)
            data = dict(raw)
            pattern: str | None = None
            if protocol == "opcua" and isinstance(data.get("node"), str):
                pattern = data["node"]
                try:
                    data["node"] = _fill(pattern, first_n)
                except ValueError as exc:
                    self.issues.append(Issue((*where, "node"), str(exc), via=via))
                    continue
            try:
                tag = model.model_validate(data)
            except ValidationError as exc:
                self.issues.extend(issue.under(where, via=via) for issue in issues_from_validation_error(exc, model))
                continue
            if tag.name in names:
                first = self.describe(("templates", template, names[tag.name], "name"))
                self.issues.append(
                    Issue((*where, "name"), f"duplicate tag name {quoted(tag.name)} in template (first at {first})")
                )
                continue
            names[tag.name] = index
            width = tag.width if isinstance(tag, ModbusTag) else 0
            prototypes.append(_Prototype(index, tag, pattern, width))
        self._prototypes[key] = prototypes
        return prototypes

    def check_unused_templates(self, used: set[str]) -> None:
        """Templates no repeat uses are still checked, as the protocol their tags look like."""
        for name, tags in (self.templates or {}).items():
            if name not in used:
                protocol = "opcua" if any("node" in tag for tag in tags) else "modbus"
                self.prototypes(name, protocol, 1, via="")

    # -------------------------------------------------------------------------------------- devices

    def expand(self, index: int, device: Device) -> Device:
        final: list[Tag] = []
        origin: dict[str, _Origin] = {}  # tag name -> who defined it first
        explicit: Sequence[Tag] = device.tags
        for tag_index, tag in enumerate(explicit):
            finished = self._finish_explicit(index, tag_index, device, tag)
            if finished is None:
                continue
            where: Loc = ("devices", index, "tags", tag_index, "name")
            first = origin.get(finished.name)
            if first is not None:
                message = f"duplicate tag name {quoted(finished.name)} (first defined by {self._origin_text(first)})"
                self.issues.append(Issue(where, message))
                continue
            origin[finished.name] = _Origin(f"tags[{tag_index}]", where)
            final.append(finished)
        for repeat_index, repeat in enumerate(device.repeat):
            final.extend(self._expand_repeat(_RepeatContext(index, device, repeat_index, repeat), origin))
        if not device.tags and not device.repeat and device.enabled:
            self.issues.append(
                Issue(("devices", index, "tags"), "an enabled device needs tags: add `tags` or `repeat`")
            )
        if self.topics is not None:
            self._check_topic_lengths(index, device, final, origin, self.topics)
        self.issues.extend(event_issues(device, final, ("devices", index)))
        update: dict[str, Any] = {"tags": tuple(final), "repeat": ()}
        update["repeat_context"] = (
            self._check_context(index, device, origin)
            if device.context or any(repeat.context for repeat in device.repeat)
            else ()
        )
        if isinstance(device, OpcUaDevice) and device.sampling_interval_ms is None:
            update["sampling_interval_ms"] = device.interval_ms
        return device.model_copy(update=update)

    def _check_topic_lengths(
        self, index: int, device: Device, tags: Sequence[Tag], origin: Mapping[str, _Origin], limit: TopicLimit
    ) -> None:
        """Every topic the device publishes fits ``limit``: its tag topics and its own ``_status``, ``_batch``,
        ``_meta`` and ``_meta/N`` (the longest of these, N = its tag count, as the catalogue may be split)."""
        base = f"{limit.root}/{device.area}/{device.line}/{device.name}"
        room = limit.max_bytes - utf8_length(base) - 1  # bytes left after "{base}/"
        own = f"_meta/{max(1, len(tags))}"
        if len(own) > room:
            self.issues.append(
                Issue(("devices", index, "name"), f"topic {quoted(f'{base}/{own}')} is longer than {limit.why}")
            )
            return
        too_long: dict[Loc, list[str]] = {}
        for tag in tags:
            name = tag.name
            if len(name) > room or (len(name) * 4 > room and utf8_length(name) > room):
                too_long.setdefault(origin[name].loc, []).append(name)
        for loc, names in too_long.items():
            more = f" (and {len(names) - 1} more like it)" if len(names) > 1 else ""
            self.issues.append(Issue(loc, f"topic {quoted(f'{base}/{names[0]}')} is longer than {limit.why}{more}"))

    def _check_context(self, index: int, device: Device, tags: Mapping[str, _Origin]) -> tuple[RepeatContext, ...]:
        """Every context key names a tag of the device, and one key means one tag (per instance) in the device.

        Returns the repeats' context as the Plant keeps it (the repeats themselves are gone once expanded)."""
        for key, name in device.context.items():
            if name not in tags:
                self.issues.append(Issue(("devices", index, "context", key), _no_context_tag(key, name, list(tags))))
        sources: dict[str, tuple[str, Loc]] = {
            key: (name, ("devices", index, "context", key)) for key, name in device.context.items()
        }
        found: list[RepeatContext] = []
        for repeat_index, repeat in enumerate(device.repeat):
            if not repeat.context:
                continue
            prefixes = [prefix for prefix in _instance_prefixes(repeat) if prefix is not None]
            made = (
                [proto.tag.name for proto in self._prototypes.get((repeat.template, device.protocol), [])]
                if self.templates is not None and repeat.template in self.templates
                else []
            )
            for key, name in repeat.context.items():
                where: Loc = ("devices", index, "repeat", repeat_index, "context", key)
                source = f"{repeat.name}/{name}"
                first = sources.get(key)
                if first is not None and first[0] != source:
                    self.issues.append(
                        Issue(
                            where,
                            f"context key {key!r} is already set to {first[0]!r} at {self.describe(first[1])}; "
                            "a key names one tag per device (per instance)",
                        )
                    )
                    continue
                sources[key] = (source, where)
                missing = [prefix for prefix in prefixes if f"{prefix}/{name}" not in tags]
                if missing:
                    more = f" (and in {len(missing) - 1} more instances)" if len(missing) > 1 else ""
                    message = _no_context_tag(key, f"{missing[0]}/{name}", [f"{missing[0]}/{tag}" for tag in made])
                    self.issues.append(Issue(where, message + more))
            found.append(
                RepeatContext(name=repeat.name, instances=tuple(prefixes), tags=tuple(made), keys=dict(repeat.context))
            )
        return tuple(found)

    def _origin_text(self, origin: _Origin) -> str:
        return f"{origin.label} at {self.describe(origin.loc)}"

    def _finish_explicit(self, index: int, tag_index: int, device: Device, tag: Tag) -> Tag | None:
        if isinstance(tag, ModbusTag):
            assert isinstance(device, ModbusDevice)
            return tag if tag.order is not None else tag.model_copy(update={"order": device.order})
        assert isinstance(device, OpcUaDevice)
        try:
            resolved = resolve_namespace(tag.node_id, device.namespace)
        except ValueError as exc:
            self.issues.append(Issue(("devices", index, "tags", tag_index, "node"), str(exc)))
            return None
        return tag if resolved is tag.node_id else tag.with_node_id(resolved)

    def _expand_repeat(self, ctx: _RepeatContext, origin: dict[str, _Origin]) -> list[Tag]:
        repeat = ctx.repeat
        if self.templates is None:
            return []  # the templates section itself is broken and already reported
        if repeat.template not in self.templates:
            known = sorted(self.templates)
            listing = f"; templates: {', '.join(known)}" if known else "; the file defines no templates"
            self.issues.append(
                Issue(
                    (*ctx.loc, "template"),
                    f"unknown template {repeat.template!r}{did_you_mean(repeat.template, known)}{listing}",
                )
            )
            return []
        head = ctx.via(repeat.instance_name(repeat.first))
        prototypes = self.prototypes(repeat.template, ctx.device.protocol, repeat.first, head)
        if isinstance(ctx.device, ModbusDevice):
            fitting = []
            for prototype in prototypes:
                assert isinstance(prototype.tag, ModbusTag)
                problems = list(tag_fits_device(prototype.tag, ctx.device))
                where: Loc = ("templates", repeat.template, prototype.index)
                self.issues.extend(problem.under(where, via=head) for problem in problems)
                if not problems:
                    fitting.append(prototype)
            prototypes = fitting
        name_loc: Loc = (*ctx.loc, "name")
        tags: list[Tag] = []
        for n in repeat.numbers():
            try:
                prefix = repeat.instance_name(n)
                problem = tag_name_problem(prefix)
            except (ValueError, TypeError) as exc:
                prefix, problem = "?", f"cannot format n={n}: {exc}"
            if problem:
                self._once_per_repeat((ctx.index, ctx.repeat_index, "name"), Issue(name_loc, problem))
                continue
            if isinstance(ctx.device, ModbusDevice):
                made = self._modbus_instances(ctx, ctx.device, prototypes, n, prefix)
            else:
                made = self._opcua_instances(ctx, ctx.device, prototypes, n, prefix)
            instance_origin: _Origin | None = None
            for tag in made:
                first = origin.get(tag.name)
                if first is not None:
                    self._once_per_repeat(
                        (ctx.index, ctx.repeat_index, "duplicate"),
                        Issue(
                            name_loc,
                            f"duplicate tag name {quoted(tag.name)} made by repeat[{ctx.repeat_index}] ({prefix}); "
                            f"first defined by {self._origin_text(first)}",
                        ),
                    )
                    continue
                if instance_origin is None:
                    instance_origin = _Origin(f"repeat[{ctx.repeat_index}] ({prefix})", name_loc)
                origin[tag.name] = instance_origin
                tags.append(tag)
        return tags

    def _modbus_instances(
        self, ctx: _RepeatContext, device: ModbusDevice, prototypes: list[_Prototype], n: int, prefix: str
    ) -> list[Tag]:
        repeat = ctx.repeat
        step = n - repeat.first
        base = repeat.start + step * (repeat.stride or 0)
        made: list[Tag] = []
        for prototype in prototypes:
            proto = prototype.tag
            assert isinstance(proto, ModbusTag)
            address = base + proto.address
            end = address + prototype.width - 1
            if end > MAX_ADDRESS:
                formula = f"start {repeat.start} + {step} * stride {repeat.stride or 0} + {proto.address}"
                if prototype.width > 1:
                    message = (
                        f"{proto.type.value} at address {address} ({formula}) spans {prototype.width} registers, "
                        f"up to {end}, past the last Modbus address {MAX_ADDRESS}"
                    )
                else:
                    message = f"address {address} ({formula}) is past the last Modbus address {MAX_ADDRESS}"
                self._once_per_repeat(
                    (ctx.index, ctx.repeat_index, prototype.index, "address"),
                    Issue(("templates", repeat.template, prototype.index, "address"), message, via=ctx.via(prefix)),
                )
                continue
            made.append(
                proto.model_copy(
                    update={"name": f"{prefix}/{proto.name}", "address": address, "order": proto.order or device.order}
                )
            )
        return made

    def _opcua_instances(
        self, ctx: _RepeatContext, device: OpcUaDevice, prototypes: list[_Prototype], n: int, prefix: str
    ) -> list[Tag]:
        made: list[Tag] = []
        for prototype in prototypes:
            proto = prototype.tag
            assert isinstance(proto, OpcUaTag)
            node = proto.node
            try:
                if prototype.node_pattern is not None:
                    node = _fill(prototype.node_pattern, n)
                node_id = resolve_namespace(parse_node_id(node), device.namespace)
            except ValueError as exc:
                self._once_per_repeat(
                    (ctx.index, ctx.repeat_index, prototype.index, "node"),
                    Issue(("templates", ctx.repeat.template, prototype.index, "node"), str(exc), via=ctx.via(prefix)),
                )
                continue
            made.append(proto.with_node_id(node_id, name=f"{prefix}/{proto.name}", node=node))
        return made


@dataclass(frozen=True, slots=True)
class _Origin:
    """Where a tag name was first defined: ``tags[2]`` or ``repeat[0] (ch001)``, and the path to point at."""

    label: str
    loc: Loc


@dataclass(frozen=True, slots=True)
class _RepeatContext:
    index: int
    device: Device
    repeat_index: int
    repeat: RepeatSpec

    @property
    def loc(self) -> Loc:
        return ("devices", self.index, "repeat", self.repeat_index)

    def via(self, instance: str) -> str:
        """``devices[1].repeat[0] (ch003) -> ``: shown before template paths."""
        return f"{format_loc(self.loc)} ({instance}) -> "


def _no_context_tag(key: str, name: str, known: Sequence[str]) -> str:
    return f"context {key!r} names {quoted(name)}, which is not a tag of this device{did_you_mean(name, known)}"


def _instance_prefixes(repeat: RepeatSpec) -> list[str | None]:
    """Each instance's name (None where it cannot be formatted: already reported by the expansion)."""
    prefixes: list[str | None] = []
    for n in repeat.numbers():
        try:
            prefix = repeat.instance_name(n)
        except (ValueError, TypeError):
            prefixes.append(None)
            continue
        prefixes.append(None if tag_name_problem(prefix) else prefix)
    return prefixes


def _fill(pattern: str, n: int) -> str:
    """``"s=Rack.Ch{n:03d}.V"`` -> ``"s=Rack.Ch001.V"``. Raises ValueError with a readable message."""
    problem = format_spec_problem(pattern)
    if problem:
        raise ValueError(f"node {problem}")
    try:
        return pattern.format(n=n)
    except (KeyError, IndexError, AttributeError) as exc:
        raise ValueError(
            f"node {pattern!r} uses a placeholder other than {{n}} ({exc}); write {{{{ and }}}} for literal braces"
        ) from None
    except (ValueError, TypeError) as exc:
        raise ValueError(f"node {pattern!r} cannot be formatted with n={n}: {exc}") from None


def expand_devices(
    devices: Sequence[tuple[int, Device]],
    templates: Templates | None,
    *,
    describe: DescribeLocation = format_loc,
    topics: TopicLimit | None = None,
) -> tuple[list[Device], list[Issue]]:
    """Expand every device (``(index in the file, device)`` pairs) and check file-wide rules.

    ``templates`` is None when the templates section itself was invalid (repeats are then skipped).
    ``describe`` renders a path for "first at ..." references (the loader passes one giving LINE:COL).
    ``topics``: check that every topic fits it (None when the gateway section is broken: no topic is known).
    """
    expander = _Expander(templates, describe, topics)
    expanded: list[Device] = []
    names: dict[str, int] = {}
    used: set[str] = set()
    for index, device in devices:
        first = names.get(device.name)
        if first is not None:
            expander.issues.append(
                Issue(
                    ("devices", index, "name"),
                    f"duplicate device name {device.name!r} (first at {describe(('devices', first, 'name'))})",
                )
            )
        else:
            names[device.name] = index
        used.update(repeat.template for repeat in device.repeat)
        expanded.append(expander.expand(index, device))
    expander.check_unused_templates(used)
    return expanded, expander.finish()


def assemble_plant(
    gateway: GatewaySection,
    mqtt: MqttSection,
    devices: Sequence[Device],
    spool: SpoolSection | None = None,
    http: HttpSection | None = None,
) -> Plant:
    """The Plant from expanded devices, with the defaults that depend on other sections filled."""
    if mqtt.client_id is None:
        mqtt = mqtt.model_copy(update={"client_id": f"cellgate-{gateway.id}"})
    return Plant(
        gateway=gateway, mqtt=mqtt, devices=tuple(devices), spool=spool or SpoolSection(), http=http or HttpSection()
    )


def topic_limit(gateway: GatewaySection, mqtt: MqttSection | None) -> TopicLimit:
    """The limit every topic of the plant must fit: MQTT's 65,535 bytes, and with ``mqtt.max_packet_size`` what
    leaves a packet room for its header and a small payload."""
    root = f"{gateway.enterprise}/{gateway.site}"
    if mqtt is None or mqtt.max_packet_size is None:
        return TopicLimit(root)
    fitting = mqtt.max_packet_size - PUBLISH_OVERHEAD_BYTES - MIN_PAYLOAD_ROOM_BYTES
    if fitting >= MAX_TOPIC_BYTES:
        return TopicLimit(root)
    why = f"{fitting} bytes (mqtt.max_packet_size {mqtt.max_packet_size} less room for a payload)"
    return TopicLimit(root, fitting, why)


def build_plant(tagmap: TagMap) -> tuple[Plant | None, list[Issue]]:
    """Expand a TagMap built in code; returns the Plant, or None and the problems (paths, no positions)."""
    devices, issues = expand_devices(
        list(enumerate(tagmap.devices)), tagmap.templates, topics=topic_limit(tagmap.gateway, tagmap.mqtt)
    )
    if issues:
        return None, issues
    return assemble_plant(tagmap.gateway, tagmap.mqtt, devices, tagmap.spool, tagmap.http), []
