"""From a browsed OPC UA address space to a tag map (pure: no sockets; ``gateway.browse`` is the I/O shell).

Input is what the browser saw: devices (the first non-folder objects below the browse root) with their
variables, each with its browse path below the device, node id, DataType, ValueRank, Description, EURange and
EngineeringUnits. Output is the ``templates`` + ``devices`` part of a tag map, as plain data ready for YAML:

* names are topic-safe snake_case segments of the browse path (``Dryer/Zone03/AirTempSP`` ->
  ``dryer/zone03/air_temp_sp``); a clash gets ``_2``, ``_3``, ... appended;
* node ids are written with their namespace URI (``nsu=...;s=...``), so a server that renumbers its namespaces
  does not break the map;
* units are UCUM codes mapped from the UNECE common code packed in ``EUInformation.UnitId`` (OPC 10000-8
  5.6.3); a UCUM-namespace unit keeps its display name; an unknown code leaves the unit out (counted);
* ``min``/``max`` come from ``EURange``;
* sibling objects whose names differ only by a number (``Zone01`` .. ``Zone10``, ``CH001`` .. ``CH256``) and whose
  subtrees have the same variables (relative path, type, unit, range) and node ids that differ only by that
  number become one template and one ``repeat``. Descriptions that differ between instances are left out of
  the template (a template tag's text is the same for every instance).

Arrays become tags (published as JSON arrays; element type as ``type``, no range), structures and enumerations
too (their kind comes from the type's DataTypeDefinition; a device with a structure gets ``structures: true``).
Variables of other types the gateway does not publish, and those without read access, are skipped with a
reason; ``BrowsePlan.skipped`` lists them for the summary.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.value_shape import FieldShape, fields_as_written

# OPC UA built-in DataType node ids (namespace 0) -> tag-map type. Abstract numeric types give no type hint.
BUILTIN_TYPES: Final[Mapping[int, str | None]] = {
    1: "bool", 2: "int16", 3: "uint16", 4: "int16", 5: "uint16", 6: "int32", 7: "uint32", 8: "int64",
    9: "uint64", 10: "float32", 11: "float64", 12: "string", 26: None, 27: None, 28: None,
    # Published as text (ISO time, UUID, base64, OPC UA string forms, the text of a LocalizedText).
    13: "string", 14: "string", 15: "string", 17: "string", 19: "string", 20: "string", 21: "string",
}
STRUCTURE: Final = "structure"
ENUMERATION: Final = "enumeration"
BUILTIN_TYPE_NAMES: Final[Mapping[int, str]] = {
    1: "Boolean", 2: "SByte", 3: "Byte", 4: "Int16", 5: "UInt16", 6: "Int32", 7: "UInt32", 8: "Int64",
    9: "UInt64", 10: "Float", 11: "Double", 12: "String", 13: "DateTime", 14: "Guid", 15: "ByteString",
    16: "XmlElement", 17: "NodeId", 18: "ExpandedNodeId", 19: "StatusCode", 20: "QualifiedName",
    21: "LocalizedText", 22: "Structure", 23: "DataValue", 24: "BaseDataType", 25: "DiagnosticInfo",
    26: "Number", 27: "Integer", 28: "UInteger", 29: "Enumeration",
}
SCALAR_VALUE_RANK: Final = -1

UNECE_UNITS_URI: Final = "http://www.opcfoundation.org/UA/units/un/cefact"
UCUM_URI: Final = "http://unitsofmeasure.org"

# UNECE Recommendation 20 common code -> UCUM code, for the units of process data in a battery plant.
UNECE_TO_UCUM: Final[Mapping[str, str]] = {
    "CEL": "Cel", "KEL": "K", "2X": "m/min", "MTR": "m", "MMT": "mm", "4H": "um", "CMT": "cm", "NEW": "N",
    "B47": "kN", "RPM": "{rev}/min", "L2": "L/min", "BAR": "bar", "KPA": "kPa", "PAL": "Pa", "MBR": "mbar",
    "GM": "g/m2", "P1": "%", "KWT": "kW", "WTT": "W", "MAW": "MW", "KWH": "kW.h", "WHR": "W.h", "VLT": "V",
    "2Z": "mV", "AMP": "A", "4K": "mA", "AMH": "A.h", "SEC": "s", "MIN": "min", "HUR": "h", "C26": "ms",
    "DD": "deg", "MQH": "m3/h", "E93": "kg/h", "23": "g/cm3", "B75": "MOhm", "OHM": "Ohm", "HTZ": "Hz",
    "KGM": "kg", "GRM": "g", "MTS": "m/s", "LTR": "L", "MTQ": "m3", "KGS": "kg/s",
}

_WORD: Final = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+")
_NUMBERED: Final = re.compile(r"^(?P<prefix>.*?)(?P<digits>[0-9]+)$")
_NOT_TOPIC_SAFE: Final = re.compile(r"[^a-z0-9_\-]+")


@dataclass(frozen=True, slots=True)
class EngineeringUnit:
    """EUInformation as read: NamespaceUri, UnitId, DisplayName text."""

    namespace_uri: str
    unit_id: int
    display_name: str


@dataclass(frozen=True, slots=True)
class BrowsedVariable:
    path: tuple[str, ...]
    """Browse names from below the device object down to the variable."""
    node_id: str
    """With its namespace URI: ``nsu=urn:x;s=A.B``, or ``i=85`` for namespace 0."""
    data_type: int | None
    """Numeric id of a namespace-0 DataType; None for a type of another namespace (a structure, an enum)."""
    data_type_name: str
    value_rank: int = SCALAR_VALUE_RANK
    description: str | None = None
    unit: EngineeringUnit | None = None
    low: float | None = None
    high: float | None = None
    readable: bool = True
    data_type_kind: str | None = None
    """For a type outside the built-in ones: ``structure`` or ``enumeration`` (from its DataTypeDefinition)."""
    dimensions: tuple[int, ...] | None = None
    """An array's length per dimension (ValueRank, ArrayDimensions; 0: any length), written as the tag's ``shape``."""
    fields: tuple[FieldShape, ...] | None = None
    """A structure's fields (its StructureDefinition, nested structures and arrays described), written as the
    tag's ``fields``; with ``dimensions``, the fields of every element of the array."""

    @property
    def is_array(self) -> bool:
        return self.value_rank >= 0


@dataclass(frozen=True, slots=True)
class BrowsedDevice:
    browse_name: str
    node_id: str
    variables: tuple[BrowsedVariable, ...]


@dataclass(frozen=True, slots=True)
class Skipped:
    device: str
    path: str
    reason: str


@dataclass(slots=True)
class BrowsePlan:
    templates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    devices: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    unmapped_units: Counter[str] = field(default_factory=Counter)
    tags: int = 0
    repeats: int = 0


# ------------------------------------------------------------------------------------------------ names


def snake_segment(browse_name: str) -> str:
    """A topic-safe snake_case segment: ``AirTempSP`` -> ``air_temp_sp``, ``Zone03`` -> ``zone03``."""
    words = _WORD.findall(browse_name)
    text = "_".join(words).lower() if words else browse_name.lower()
    text = _NOT_TOPIC_SAFE.sub("_", text).strip("_")
    return text or "node"


def unece_code(unit_id: int) -> str:
    """The UNECE common code packed in a UnitId (up to 3 ASCII characters, big-endian)."""
    chars = []
    value = unit_id
    while value > 0:
        chars.append(chr(value & 0xFF))
        value >>= 8
    return "".join(reversed(chars))


def ucum_unit(unit: EngineeringUnit) -> str | None:
    """The UCUM code of an EUInformation, or None when it cannot be mapped."""
    if unit.namespace_uri == UCUM_URI and unit.display_name:
        return unit.display_name
    if unit.namespace_uri.rstrip("/") == UNECE_UNITS_URI and unit.unit_id > 0:
        return UNECE_TO_UCUM.get(unece_code(unit.unit_id))
    return None


def path_selected(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Glob filter on the slash-joined browse path (``Coater01/Dryer/Zone03/AirTemp``); exclude wins."""
    if include and not any(fnmatch.fnmatchcase(path, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude)


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else float(value)


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


# ------------------------------------------------------------------------------------------------ tags


@dataclass(frozen=True, slots=True)
class _Leaf:
    path: tuple[str, ...]
    variable: BrowsedVariable
    tag: dict[str, Any]
    """The tag without its name and node."""


def _tag_fields(variable: BrowsedVariable, plan: BrowsePlan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tag_type = BUILTIN_TYPES.get(variable.data_type) if variable.data_type is not None else None
    if variable.data_type_kind == ENUMERATION:
        tag_type = "int32"  # an enumeration travels as its Int32 value
    if tag_type is not None:
        out["type"] = tag_type
    if variable.unit is not None:
        unit = ucum_unit(variable.unit)
        if unit is None:
            plan.unmapped_units[variable.unit.display_name or str(variable.unit.unit_id)] += 1
        else:
            out["unit"] = unit
    if variable.dimensions is not None:
        out["shape"] = list(variable.dimensions)
    # A structure's fields, or with a known number of dimensions those of each element of the array.
    if variable.fields is not None and variable.data_type_kind == STRUCTURE and (
            not variable.is_array or variable.dimensions is not None):
        out["fields"] = fields_as_written(variable.fields)
    numeric = tag_type not in ("bool", "string", None) and not variable.is_array  # a range checks scalars only
    if numeric and variable.low is not None and variable.high is not None and variable.low <= variable.high:
        out["min"] = _number(variable.low)
        out["max"] = _number(variable.high)
    return out


def skip_reason(variable: BrowsedVariable) -> str | None:
    """Why the gateway cannot read ``variable`` as a scalar tag, or None."""
    if not variable.readable:
        return "not readable (AccessLevel)"
    if variable.data_type_kind in (STRUCTURE, ENUMERATION):
        return None
    if variable.data_type is None or variable.data_type not in BUILTIN_TYPES:
        return f"unsupported_type:{variable.data_type_name}"
    return None


# ------------------------------------------------------------------------------------------------ tree


@dataclass(slots=True)
class _Object:
    name: str
    leaves: list[_Leaf] = field(default_factory=list)
    children: dict[str, _Object] = field(default_factory=dict)
    order: list[tuple[str, str]] = field(default_factory=list)
    """("leaf", name) / ("object", name) in browse order."""

    def child(self, name: str) -> _Object:
        found = self.children.get(name)
        if found is None:
            found = self.children[name] = _Object(name)
            self.order.append(("object", name))
        return found

    def all_leaves(self, prefix: tuple[str, ...] = ()) -> Iterable[tuple[tuple[str, ...], _Leaf]]:
        for kind, name in self.order:
            if kind == "leaf":
                leaf = next(item for item in self.leaves if item.path[-1] == name)
                yield (*prefix, name), leaf
            else:
                yield from self.children[name].all_leaves((*prefix, name))


def _tree(leaves: Iterable[_Leaf]) -> _Object:
    root = _Object("")
    for leaf in leaves:
        node = root
        for segment in leaf.path[:-1]:
            node = node.child(segment)
        if any(existing.path[-1] == leaf.path[-1] for existing in node.leaves):
            continue  # two variables with one browse name below one parent: the first wins
        node.leaves.append(leaf)
        node.order.append(("leaf", leaf.path[-1]))
    return root


def _signature(obj: _Object) -> tuple[Any, ...]:
    return tuple(
        (path, tuple(sorted((k, repr(v)) for k, v in leaf.tag.items() if k != "description")))
        for path, leaf in obj.all_leaves()
    )


@dataclass(frozen=True, slots=True)
class _Group:
    prefix: str
    numbers: tuple[int, ...]
    names: tuple[str, ...]
    placeholder: str


def _groups(obj: _Object) -> list[_Group]:
    """Runs of sibling objects named prefix + consecutive numbers (two or more)."""
    by_prefix: dict[str, list[tuple[int, str, str]]] = {}
    for kind, name in obj.order:
        match = _NUMBERED.match(name) if kind == "object" else None
        if match:
            by_prefix.setdefault(match["prefix"], []).append((int(match["digits"]), match["digits"], name))
    groups: list[_Group] = []
    for prefix, members in by_prefix.items():
        members.sort()
        run: list[tuple[int, str, str]] = []
        for member in [*members, (-2, "", "")]:
            if run and member[0] == run[-1][0] + 1:
                run.append(member)
                continue
            if len(run) >= 2:
                widths = {len(digits) for _, digits, _ in run}
                leading_zero = any(digits.startswith("0") and len(digits) > 1 for _, digits, _ in run)
                if len(widths) == 1 and leading_zero:
                    placeholder = f"{{n:0{widths.pop()}d}}"
                elif not leading_zero:
                    placeholder = "{n}"
                else:
                    placeholder = ""
                if placeholder:
                    groups.append(_Group(prefix, tuple(n for n, _, _ in run), tuple(nm for _, _, nm in run),
                                         placeholder))
            run = [member]
    return groups


def _node_pattern(nodes: Sequence[str], group: _Group) -> str | None:
    """A node id pattern with the instance number as ``{n...}`` that gives every instance's node, or None."""
    first_node, first_name = nodes[0], group.names[0]
    digits = first_name[len(group.prefix):]
    candidates: list[str] = []
    for needle, keep in ((first_name, group.prefix), (digits, "")):
        start = first_node.find(needle)
        while start >= 0:
            candidates.append(
                _escape_braces(first_node[:start]) + _escape_braces(keep) + group.placeholder
                + _escape_braces(first_node[start + len(needle):])
            )
            start = first_node.find(needle, start + 1)
    for candidate in candidates:
        try:
            if all(candidate.format(n=n) == node for n, node in zip(group.numbers, nodes, strict=True)):
                return candidate
        except (ValueError, IndexError, KeyError):
            continue
    return None


# ------------------------------------------------------------------------------------------------ planning


class _DevicePlanner:
    def __init__(self, plan: BrowsePlan, device_name: str) -> None:
        self._plan = plan
        self._device = device_name
        self.tags: list[dict[str, Any]] = []
        self.repeats: list[dict[str, Any]] = []
        self._names: set[str] = set()

    def _unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._names:
            n += 1
            candidate = f"{name}_{n}"
        self._names.add(candidate)
        return candidate

    def flat(self, tree: _Object) -> None:
        for path, leaf in tree.all_leaves():
            name = self._unique("/".join(snake_segment(segment) for segment in path))
            self.tags.append({"name": name, "node": leaf.variable.node_id, **leaf.tag})

    def walk(self, obj: _Object, prefix: str) -> None:
        grouped: dict[str, tuple[_Group, str]] = {}
        for group in _groups(obj):
            template = self._template(obj, group, prefix)
            if template is not None:
                for name in group.names:
                    grouped[name] = (group, template)
        emitted: set[str] = set()
        for kind, name in obj.order:
            if kind == "leaf":
                leaf = next(item for item in obj.leaves if item.path[-1] == name)
                tag_name = self._unique(f"{prefix}{snake_segment(name)}")
                self.tags.append({"name": tag_name, "node": leaf.variable.node_id, **leaf.tag})
            elif name in grouped:
                group, template = grouped[name]
                if template in emitted:
                    continue
                emitted.add(template)
                repeat_name = f"{prefix}{snake_segment(group.prefix) if group.prefix else ''}{group.placeholder}"
                self.repeats.append({"template": template, "count": len(group.numbers), "first": group.numbers[0],
                                     "name": repeat_name})
                self._plan.repeats += 1
                for member in group.names:
                    self._names.add(f"{prefix}{snake_segment(member)}")
            else:
                self.walk(obj.children[name], f"{prefix}{snake_segment(name)}/")

    def _template(self, parent: _Object, group: _Group, prefix: str) -> str | None:
        members = [parent.children[name] for name in group.names]
        signature = _signature(members[0])
        if not signature or any(_signature(member) != signature for member in members[1:]):
            return None
        # Instance names must come out of the repeat's name pattern.
        stem = snake_segment(group.prefix) if group.prefix else ""
        for number, name in zip(group.numbers, group.names, strict=True):
            if f"{stem}{group.placeholder}".format(n=number) != snake_segment(name):
                return None
        leaves_per_member = [list(member.all_leaves()) for member in members]
        tags: list[dict[str, Any]] = []
        used: set[str] = set()
        for position, (path, leaf) in enumerate(leaves_per_member[0]):
            nodes = [items[position][1].variable.node_id for items in leaves_per_member]
            pattern = _node_pattern(nodes, group)
            if pattern is None:
                return None
            name = "/".join(snake_segment(segment) for segment in path)
            candidate, n = name, 1
            while candidate in used:
                n += 1
                candidate = f"{name}_{n}"
            used.add(candidate)
            fields = {k: v for k, v in leaf.tag.items() if k != "description"}
            tag: dict[str, Any] = {"name": candidate, "node": pattern, **fields}
            descriptions = {items[position][1].variable.description for items in leaves_per_member}
            if len(descriptions) == 1 and leaf.variable.description:
                tag["description"] = leaf.variable.description
            tags.append(tag)
        for existing, existing_tags in self._plan.templates.items():
            if existing_tags == tags:
                return existing
        base = "-".join(part for part in (self._device, prefix.strip("/").replace("/", "-"),
                                          snake_segment(group.prefix) if group.prefix else "item") if part)
        template, n = base, 1
        while template in self._plan.templates:
            n += 1
            template = f"{base}-{n}"
        self._plan.templates[template] = tags
        return template


def plan_tag_map(
    devices: Sequence[BrowsedDevice],
    *,
    endpoint: str,
    namespace: str | None,
    area: str = "area",
    line: str = "line",
    interval_ms: int = 1000,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    templates: bool = True,
) -> BrowsePlan:
    """Plan the ``templates`` + ``devices`` of a tag map for ``devices`` (see the module docstring)."""
    plan = BrowsePlan()
    device_names: set[str] = set()
    for device in devices:
        name, n = snake_segment(device.browse_name).replace("_", "-"), 1
        base = name
        while name in device_names:
            n += 1
            name = f"{base}-{n}"
        device_names.add(name)
        leaves: list[_Leaf] = []
        for variable in device.variables:
            path = "/".join((device.browse_name, *variable.path))
            if not path_selected(path, include, exclude):
                continue
            reason = skip_reason(variable)
            if reason is not None:
                plan.skipped.append(Skipped(name, path, reason))
                continue
            leaf = _Leaf(variable.path, variable, _tag_fields(variable, plan))
            if variable.description:
                leaf.tag["description"] = variable.description
            leaves.append(leaf)
        if not leaves:
            continue
        planner = _DevicePlanner(plan, name)
        tree = _tree(leaves)
        if templates:
            planner.walk(tree, "")
        else:
            planner.flat(tree)
        entry: dict[str, Any] = {"name": name, "area": area, "line": line, "protocol": "opcua",
                                 "endpoint": endpoint}
        if namespace:
            entry["namespace"] = namespace
        entry["interval_ms"] = interval_ms
        if any(leaf.variable.data_type_kind == STRUCTURE for leaf in leaves):
            entry["structures"] = True  # decode the server's structures (load its DataTypeDefinitions)
        if planner.repeats:
            entry["repeat"] = planner.repeats
        entry["tags"] = planner.tags
        plan.devices.append(entry)
        plan.tags += len(planner.tags) + sum(
            len(plan.templates[r["template"]]) * r["count"] for r in planner.repeats
        )
    return plan
