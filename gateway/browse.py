"""``cellgate browse``: walk an OPC UA server's address space and write a tag map (the I/O shell).

Browse/BrowseNext over hierarchical references (continuation points followed, at most the server's
MaxNodesPerBrowse nodes per Browse request), then Read in chunks of at most MaxNodesPerRead: DataType, ValueRank,
AccessLevel and Description of every variable, and the values of its EURange and EngineeringUnits properties.
``gateway.browse_plan`` turns the result into ``templates`` + ``devices``.

Devices are the first objects below the root that are not folders (FolderType); the walk goes through folders
to find them (OPC 40001-1 puts machines in a ``Machines`` folder). A non-folder root is one device. Standard
nodes (namespace 0, e.g. the ``Server`` object) are not walked.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from gateway.browse_plan import (
    BUILTIN_TYPE_NAMES,
    ENUMERATION,
    STRUCTURE,
    BrowsedDevice,
    BrowsedVariable,
    BrowsePlan,
    EngineeringUnit,
    plan_tag_map,
)
from gateway.errors import GatewayError
from gateway.pki import Pki, PkiError, application_uri, describe, load_certificate_file
from gateway.sources.opcua_security import ClientSecurity, new_client, secure_client
from gateway.sources.opcua_status import status_name
from gateway.value_shape import MAX_FIELD_DEPTH, FieldShape
from gateway.vocabulary import OpcUaSecurityMode, OpcUaSecurityPolicy

DEFAULT_LIMIT = 1000
"""Nodes per Browse/Read request when the server advertises no limit (0)."""
MAX_REFERENCES_PER_NODE = 1000
"""References the server may return per node before it hands out a continuation point."""
_CURRENT_READ = 0x01
_FOLDER_TYPE = 61
_HAS_PROPERTY = 46


@dataclass(slots=True)
class _Found:
    node_id: ua.NodeId
    path: tuple[str, ...]
    node_class: ua.NodeClass
    type_definition: int | None
    property_of: int | None = None  # index of the variable this property belongs to


@dataclass(slots=True)
class BrowseStats:
    objects: int = 0
    variables: int = 0
    browse_requests: int = 0
    browse_next_requests: int = 0
    read_requests: int = 0
    max_nodes_per_browse: int = 0
    max_nodes_per_read: int = 0
    elapsed_s: float = 0.0
    devices: list[BrowsedDevice] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    """Browse / BrowseNext results the server answered with a Bad status, by status name (their nodes are missing)."""


class _Progress:
    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._last = 0.0

    def show(self, text: str, *, force: bool = False) -> None:
        if self._stream is None:
            return
        now = time.monotonic()
        if force or now - self._last >= 0.2:
            self._last = now
            self._stream.write(f"\r{text}\033[K")
            self._stream.flush()

    def done(self) -> None:
        if self._stream is not None:
            self._stream.write("\r\033[K")
            self._stream.flush()


def _ns0(identifier: int) -> ua.NodeId:
    return ua.NodeId(ua.Int32(identifier), ua.Int16(0))


def _value(data_value: ua.DataValue) -> Any:
    return data_value.Value.Value if data_value.Value is not None else None


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Browser:
    """One browse session on a connected asyncua ``Client``."""

    def __init__(
        self, client: Client, *, progress: _Progress, max_depth: int, max_references: int = MAX_REFERENCES_PER_NODE
    ) -> None:
        self._client = client
        self._max_references = max_references
        self._progress = progress
        self._max_depth = max_depth
        self.stats = BrowseStats()
        self._namespaces: list[str] = []

    async def _limit(self, node: int) -> int:
        try:
            value = await self._client.get_node(_ns0(node)).read_value()
        except (TimeoutError, UaError):
            return DEFAULT_LIMIT
        return int(value) if isinstance(value, int) and value > 0 else DEFAULT_LIMIT

    async def start(self) -> None:
        self._namespaces = list(await self._client.get_namespace_array())
        self.stats.max_nodes_per_browse = await self._limit(
            ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse)
        self.stats.max_nodes_per_read = await self._limit(
            ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead)

    def node_text(self, node_id: ua.NodeId) -> str:
        """``nsu=URI;s=...`` (``i=85`` in namespace 0)."""
        body = node_id.to_string()
        if node_id.NamespaceIndex == 0:
            return body
        body = body.split(";", 1)[1] if body.startswith("ns=") else body
        uri = self._namespaces[node_id.NamespaceIndex] if node_id.NamespaceIndex < len(self._namespaces) else ""
        return f"nsu={uri};{body}" if uri else node_id.to_string()

    def namespace_of(self, node_id: ua.NodeId) -> str | None:
        index = node_id.NamespaceIndex
        return self._namespaces[index] if 0 < index < len(self._namespaces) else None

    async def browse_children(self, parents: Sequence[ua.NodeId], mask: int) -> list[list[ua.ReferenceDescription]]:
        """Forward hierarchical references of every parent (BrowseNext until no continuation point is left)."""
        out: list[list[ua.ReferenceDescription]] = [[] for _ in parents]
        retry: list[int] = []
        for offset in range(0, len(parents), self.stats.max_nodes_per_browse):
            chunk = parents[offset:offset + self.stats.max_nodes_per_browse]
            params = ua.BrowseParameters()
            params.RequestedMaxReferencesPerNode = self._max_references
            params.NodesToBrowse = [
                ua.BrowseDescription(
                    NodeId=node, BrowseDirection=ua.BrowseDirection.Forward,
                    ReferenceTypeId=_ns0(ObjectIds.HierarchicalReferences), IncludeSubtypes=True,
                    NodeClassMask=mask, ResultMask=int(ua.BrowseResultMask.All),
                )
                for node in chunk
            ]
            results = await self._client.uaclient.browse(params)
            self.stats.browse_requests += 1
            pending: list[tuple[int, bytes]] = []
            for position, result in enumerate(results):
                if result.StatusCode.is_good():
                    out[offset + position].extend(result.References)
                    if result.ContinuationPoint:
                        pending.append((offset + position, result.ContinuationPoint))
                elif result.StatusCode.value == StatusCodes.BadNoContinuationPoints and len(chunk) > 1:
                    retry.append(offset + position)  # the server's continuation points ran out: again, alone
                else:
                    self._failed(result.StatusCode)
            while pending:
                next_params = ua.BrowseNextParameters(
                    ReleaseContinuationPoints=False, ContinuationPoints=[point for _, point in pending])
                next_results = await self._client.uaclient.browse_next(next_params)
                self.stats.browse_next_requests += 1
                still: list[tuple[int, bytes]] = []
                for (index, _), result in zip(pending, next_results, strict=True):
                    if result.StatusCode.is_good():
                        out[index].extend(result.References)
                        if result.ContinuationPoint:
                            still.append((index, result.ContinuationPoint))
                    else:
                        self._failed(result.StatusCode)
                pending = still
        for index in retry:
            [out[index]] = await self.browse_children([parents[index]], mask)
        return out

    def _failed(self, code: ua.StatusCode) -> None:
        name = status_name(code.value)
        self.stats.failed[name] = self.stats.failed.get(name, 0) + 1

    async def read(self, nodes: Sequence[ua.NodeId], attribute: AttributeIds) -> list[ua.DataValue]:
        values: list[ua.DataValue] = []
        for chunk in _chunks(nodes, self.stats.max_nodes_per_read):
            params = ua.ReadParameters()
            params.NodesToRead = [ua.ReadValueId(NodeId=node, AttributeId=attribute) for node in chunk]
            values.extend(await self._client.uaclient.read(params))
            self.stats.read_requests += 1
        return values

    async def walk(self, root: ua.NodeId) -> list[BrowsedDevice]:
        """Find the devices below ``root`` and every variable of each (see the module docstring)."""
        root_name = (await self._client.get_node(root).read_browse_name()).Name
        root_type = await self._type_definition(root)
        devices: list[tuple[str, ua.NodeId]] = []
        if root_type != _FOLDER_TYPE and root != _ns0(ObjectIds.ObjectsFolder):
            devices.append((root_name, root))
        else:
            folders = [root]
            depth = 0
            while folders and depth < self._max_depth:
                depth += 1
                children = await self.browse_children(folders, int(ua.NodeClass.Object))
                folders = []
                for references in children:
                    for ref in references:
                        node_id = ref.NodeId
                        if node_id.NamespaceIndex == 0:
                            continue
                        plain = ua.NodeId(node_id.Identifier, node_id.NamespaceIndex, node_id.NodeIdType)
                        self.stats.objects += 1
                        if ref.TypeDefinition.Identifier == _FOLDER_TYPE and ref.TypeDefinition.NamespaceIndex == 0:
                            folders.append(plain)
                        else:
                            devices.append((ref.BrowseName.Name, plain))
        out = []
        for name, node in devices:
            out.append(await self._device(name, node))
        self._progress.done()
        return out

    async def _type_definition(self, node: ua.NodeId) -> int | None:
        refs = await self._client.get_node(node).get_references(
            ObjectIds.HasTypeDefinition, ua.BrowseDirection.Forward)
        for ref in refs:
            if ref.NodeId.NamespaceIndex == 0 and isinstance(ref.NodeId.Identifier, int):
                return ref.NodeId.Identifier
        return None

    async def _device(self, name: str, device_node: ua.NodeId) -> BrowsedDevice:
        found: list[_Found] = []
        frontier: list[tuple[ua.NodeId, tuple[str, ...]]] = [(device_node, ())]
        depth = 0
        mask = int(ua.NodeClass.Object) | int(ua.NodeClass.Variable)
        while frontier and depth < self._max_depth:
            depth += 1
            children = await self.browse_children([node for node, _ in frontier], mask)
            next_frontier: list[tuple[ua.NodeId, tuple[str, ...]]] = []
            for (_, path), references in zip(frontier, children, strict=True):
                for ref in references:
                    if ref.NodeId.NamespaceIndex == 0:
                        continue
                    plain = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                    child_path = (*path, ref.BrowseName.Name)
                    if ref.NodeClass == ua.NodeClass.Object:
                        self.stats.objects += 1
                        next_frontier.append((plain, child_path))
                    elif ref.NodeClass == ua.NodeClass.Variable and ref.ReferenceTypeId.Identifier != _HAS_PROPERTY:
                        self.stats.variables += 1
                        found.append(_Found(plain, child_path, ref.NodeClass, None))
            frontier = next_frontier
            self._progress.show(f"browse {name}: {self.stats.objects} objects, {self.stats.variables} variables",
                                force=not frontier)  # a device's final count is always shown
        variables = await self._describe([item for item in found])
        return BrowsedDevice(browse_name=name, node_id=self.node_text(device_node), variables=tuple(variables))

    async def _describe(self, found: Sequence[_Found]) -> list[BrowsedVariable]:
        nodes = [item.node_id for item in found]
        properties = await self.browse_children(nodes, int(ua.NodeClass.Variable))
        ranges: dict[int, ua.NodeId] = {}
        units: dict[int, ua.NodeId] = {}
        for index, refs in enumerate(properties):
            for ref in refs:
                plain = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
                if ref.BrowseName.Name == "EURange":
                    ranges[index] = plain
                elif ref.BrowseName.Name == "EngineeringUnits":
                    units[index] = plain
        self._progress.show(f"read attributes of {len(nodes)} variables", force=True)
        data_types = await self.read(nodes, AttributeIds.DataType)
        ranks = await self.read(nodes, AttributeIds.ValueRank)
        access = await self.read(nodes, AttributeIds.AccessLevel)
        texts = await self.read(nodes, AttributeIds.Description)
        arrays = [index for index, rank in enumerate(ranks) if isinstance(_value(rank), int) and _value(rank) >= 1]
        dimension_values = dict(zip(
            arrays, await self.read([nodes[index] for index in arrays], AttributeIds.ArrayDimensions), strict=True))
        range_values = dict(zip(ranges, await self.read(list(ranges.values()), AttributeIds.Value), strict=True))
        unit_values = dict(zip(units, await self.read(list(units.values()), AttributeIds.Value), strict=True))
        type_names, type_kinds, type_fields = await self._type_names([_value(dv) for dv in data_types])
        out: list[BrowsedVariable] = []
        for index, item in enumerate(found):
            data_type = _value(data_types[index])
            builtin = (data_type.Identifier if isinstance(data_type, ua.NodeId) and data_type.NamespaceIndex == 0
                       and isinstance(data_type.Identifier, int) else None)
            rank = _value(ranks[index])
            level = _value(access[index])
            text = _value(texts[index])
            eu_range = _value(range_values[index]) if index in range_values else None
            eu = _value(unit_values[index]) if index in unit_values else None
            out.append(BrowsedVariable(
                path=item.path,
                node_id=self.node_text(item.node_id),
                data_type=builtin,
                data_type_name=type_names.get(str(data_type), str(data_type)),
                data_type_kind=type_kinds.get(str(data_type)),
                value_rank=int(rank) if isinstance(rank, int) else -1,
                description=text.Text if isinstance(text, ua.LocalizedText) and text.Text else None,
                unit=EngineeringUnit(eu.NamespaceUri or "", int(eu.UnitId), eu.DisplayName.Text or "")
                if isinstance(eu, ua.EUInformation) else None,
                low=float(eu_range.Low) if isinstance(eu_range, ua.Range) else None,
                high=float(eu_range.High) if isinstance(eu_range, ua.Range) else None,
                readable=bool(int(level) & _CURRENT_READ) if isinstance(level, int) else True,
                dimensions=shape_of(rank, _value(dimension_values[index]) if index in dimension_values else None),
                fields=type_fields.get(str(data_type)),
            ))
        return out

    async def _type_names(
        self, data_types: Iterable[Any]
    ) -> tuple[dict[str, str], dict[str, str], dict[str, tuple[FieldShape, ...]]]:
        """For the types used, by type id text: name, ``structure`` / ``enumeration``, a structure's fields (nested
        structures and arrays described to their depth)."""
        unique = {str(node): node for node in data_types if isinstance(node, ua.NodeId)}
        names: dict[str, str] = {}
        kinds: dict[str, str] = {}
        fields: dict[str, tuple[FieldShape, ...]] = {}
        unknown = []
        for text, node in unique.items():
            builtin = _builtin_name(node)
            if builtin is not None:
                names[text] = builtin
            else:
                unknown.append((text, node))
        if unknown:
            values = await self.read([node for _, node in unknown], AttributeIds.BrowseName)
            for (text, _), value in zip(unknown, values, strict=True):
                qualified = _value(value)
                if isinstance(qualified, ua.QualifiedName) and qualified.Name:
                    names[text] = qualified.Name
            structures = await self._structure_definitions(unknown, kinds)
            for text, _ in unknown:
                if text in structures:
                    described = _field_shapes(structures[text], structures, depth=1)
                    if described:
                        fields[text] = described
        return names, kinds, fields

    async def _structure_definitions(
        self, types: Sequence[tuple[str, ua.NodeId]], kinds: dict[str, str]
    ) -> dict[str, ua.StructureDefinition]:
        """The StructureDefinition of every structure among ``types`` and of the structures their fields use, to
        MAX_FIELD_DEPTH levels; ``kinds`` gets ``structure`` / ``enumeration`` for ``types``."""
        structures: dict[str, ua.StructureDefinition] = {}
        asked: set[str] = set()
        wanted = list(types)
        for level in range(MAX_FIELD_DEPTH):
            wanted = [(text, node) for text, node in wanted if text not in asked]
            if not wanted:
                break
            asked.update(text for text, _ in wanted)
            definitions = await self.read([node for _, node in wanted], AttributeIds.DataTypeDefinition)
            nested: dict[str, ua.NodeId] = {}
            for (text, _), value in zip(wanted, definitions, strict=True):
                definition = _value(value)
                if isinstance(definition, ua.StructureDefinition):
                    structures[text] = definition
                    if level == 0:
                        kinds[text] = STRUCTURE
                    for item in definition.Fields or []:
                        if isinstance(item.DataType, ua.NodeId) and _builtin_name(item.DataType) is None:
                            nested[str(item.DataType)] = item.DataType
                elif isinstance(definition, ua.EnumDefinition) and level == 0:
                    kinds[text] = ENUMERATION
            wanted = list(nested.items())
        return structures


def _builtin_name(node: ua.NodeId) -> str | None:
    """The name of a built-in DataType (namespace 0), None for any other type."""
    if node.NamespaceIndex == 0 and isinstance(node.Identifier, int):
        return BUILTIN_TYPE_NAMES.get(node.Identifier)
    return None


def _field_shapes(
    definition: ua.StructureDefinition, structures: dict[str, ua.StructureDefinition], depth: int
) -> tuple[FieldShape, ...]:
    """A StructureDefinition's fields; a field whose type is a known structure gets its fields, an array field
    its shape (from ValueRank and ArrayDimensions), to MAX_FIELD_DEPTH levels."""
    out: list[FieldShape] = []
    for item in definition.Fields or []:
        if not item.Name:
            continue
        nested = structures.get(str(item.DataType)) if depth < MAX_FIELD_DEPTH else None
        inner = _field_shapes(nested, structures, depth + 1) if nested is not None else ()
        out.append(FieldShape(item.Name, shape_of(item.ValueRank, item.ArrayDimensions), inner or None))
    return tuple(out)


def shape_of(rank: Any, array_dimensions: Any) -> tuple[int, ...] | None:
    """An array's length per dimension from ValueRank and ArrayDimensions (0: any length); None: not an array
    of a known number of dimensions (scalar, or ValueRank Any / OneOrMoreDimensions)."""
    if not isinstance(rank, int) or rank < 1:
        return None
    if isinstance(array_dimensions, list) and len(array_dimensions) == rank:
        return tuple(int(size) if isinstance(size, int) and size > 0 else 0 for size in array_dimensions)
    return (0,) * rank


async def browse_server(
    endpoint: str,
    *,
    root: str | None,
    max_depth: int,
    timeout_s: float,
    progress: TextIO | None,
    max_references: int = MAX_REFERENCES_PER_NODE,
    security: ClientSecurity | None = None,
    username: str | None = None,
) -> tuple[list[BrowsedDevice], BrowseStats, str | None]:
    """Connect (over a secure channel when ``security`` says so, as a device does), walk, disconnect.
    Returns the devices, the statistics and the main namespace URI."""
    started = time.monotonic()
    # asyncua probes the server state every watchdog interval and gives the probe that long to answer; a short one
    # drops the session when a long Browse keeps either side busy, so the probe gets the request timeout.
    client = new_client(endpoint, timeout_s=timeout_s, username=username, password=None,
                        password_file=security.password_file if security is not None else None,
                        watchdog_s=timeout_s)
    if security is not None and security.channel:
        await secure_client(client, security, endpoint=endpoint)
    async with client:
        browser = Browser(client, progress=_Progress(progress), max_depth=max_depth, max_references=max_references)
        await browser.start()
        root_id = ua.NodeId.from_string(root) if root else _ns0(ObjectIds.ObjectsFolder)
        if root and root.startswith("nsu="):
            uri, _, rest = root[4:].partition(";")
            index = await client.get_namespace_index(uri)
            parsed = ua.NodeId.from_string(rest)
            root_id = ua.NodeId(parsed.Identifier, ua.Int16(index), parsed.NodeIdType)
        devices = await browser.walk(root_id)
        namespaces = [ns for d in devices for v in d.variables if (ns := _uri_of(v.node_id))]
        main = max(set(namespaces), key=namespaces.count) if namespaces else None
    browser.stats.elapsed_s = time.monotonic() - started
    browser.stats.devices = devices
    return devices, browser.stats, main


BROWSE_GATEWAY_ID = "browse"
"""gateway.id in the application URI of a certificate that ``cellgate browse`` makes itself."""


def browse_security(
    *,
    policy: OpcUaSecurityPolicy | None,
    mode: OpcUaSecurityMode,
    pki_root: Path,
    password_file: str | None,
    check_hostname: bool = True,
) -> ClientSecurity | None:
    """The secure-channel settings of ``cellgate browse --security POLICY`` (None: SecurityPolicy None).

    The PKI folder is the gateway's (``STATE_DIR/pki``): its certificate, already trusted by the servers the
    gateway reads, is used with the application URI it carries; without one, a certificate for
    ``urn:HOST:cellgate:browse`` is made there. Server certificates are checked against its trust list.
    """
    if policy is None and password_file is None:
        return None
    uri = application_uri(BROWSE_GATEWAY_ID)
    own = pki_root / "own" / "cert.der"
    if own.exists():
        uris = describe(load_certificate_file(own)).uris
        uri = uris[0] if uris else uri
    return ClientSecurity(
        policy=policy or OpcUaSecurityPolicy.AUTO, mode=mode, allow_insecure=policy is None, pki=Pki(pki_root, uri=uri),
        password_file=Path(password_file) if password_file else None, check_hostname=check_hostname,
        channel=policy is not None,
    )


def _uri_of(node_text: str) -> str | None:
    return node_text[4:].partition(";")[0] if node_text.startswith("nsu=") else None


def render_yaml(plan: BrowsePlan, *, endpoint: str) -> str:
    """The whole tag map as YAML, with a header telling what to edit."""
    document: dict[str, Any] = {
        "gateway": {"id": "browse", "enterprise": "enterprise", "site": "site"},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
    }
    if plan.templates:
        document["templates"] = plan.templates
    document["devices"] = plan.devices
    header = (
        f"# Tag map written by `cellgate browse {endpoint}`.\n"
        "# Set gateway.id/enterprise/site, mqtt.url and each device's area/line; add deadbands where wanted.\n"
    )
    return header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=120)


def summary(plan: BrowsePlan, stats: BrowseStats) -> str:
    reasons: dict[str, int] = {}
    for skipped in plan.skipped:
        key = skipped.reason.split(" (")[0] if skipped.reason.startswith("array") else skipped.reason
        reasons[key] = reasons.get(key, 0) + 1
    lines = [
        f"browsed {stats.objects} objects and {stats.variables} variables in {stats.elapsed_s:.1f} s "
        f"({stats.browse_requests} Browse, {stats.browse_next_requests} BrowseNext, {stats.read_requests} Read; "
        f"MaxNodesPerBrowse {stats.max_nodes_per_browse}, MaxNodesPerRead {stats.max_nodes_per_read})",
        f"wrote {len(plan.devices)} device(s), {plan.tags} tag(s), {len(plan.templates)} template(s), "
        f"{plan.repeats} repeat(s)",
    ]
    if stats.failed:
        lines.append("server refused to browse (those nodes are missing): "
                     + ", ".join(f"{count} {name}" for name, count in sorted(stats.failed.items())))
    if plan.skipped:
        lines.append(f"skipped {len(plan.skipped)} variable(s): "
                     + ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items())))
    if plan.unmapped_units:
        lines.append("units with no UCUM mapping (left out): "
                     + ", ".join(f"{unit} x{count}" for unit, count in sorted(plan.unmapped_units.items())))
    return "\n".join(lines)


def run_browse(
    *,
    endpoint: str,
    root: str | None,
    depth: int,
    include: Sequence[str],
    exclude: Sequence[str],
    output: str | None,
    area: str,
    line: str,
    templates: bool,
    timeout_s: float = 10.0,
    max_references: int = MAX_REFERENCES_PER_NODE,
    security: OpcUaSecurityPolicy | None = None,
    security_mode: OpcUaSecurityMode = OpcUaSecurityMode.SIGN_AND_ENCRYPT,
    pki_root: Path | None = None,
    username: str | None = None,
    password_file: str | None = None,
    check_hostname: bool = True,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
    is_terminal: Callable[[], bool] = sys.stderr.isatty,
) -> int:
    """The ``cellgate browse`` command: returns the exit status."""
    # asyncua logs every session-timeout negotiation as a warning; the summary says what matters here.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    try:
        client_security = browse_security(
            policy=security, mode=security_mode, pki_root=pki_root or Path("pki"), password_file=password_file,
            check_hostname=check_hostname)
        devices, stats, namespace = asyncio.run(browse_server(
            endpoint, root=root, max_depth=depth, timeout_s=timeout_s,
            progress=stderr if is_terminal() else None, max_references=max_references,
            security=client_security, username=username,
        ))
    except (PkiError, GatewayError) as exc:  # refused: no acceptable endpoint, untrusted server, unusable PKI
        print(f"cellgate browse: {endpoint}: {exc}", file=stderr)
        return 2
    except (TimeoutError, OSError, UaError) as exc:
        print(f"cellgate browse: {endpoint}: {type(exc).__name__}: {exc}", file=stderr)
        return 1
    plan = plan_tag_map(devices, endpoint=endpoint, namespace=namespace, area=area, line=line,
                        include=include, exclude=exclude, templates=templates)
    text = render_yaml(plan, endpoint=endpoint)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    else:
        stdout.write(text)
    print(summary(plan, stats), file=stderr)
    return 0
