"""``cellgate browse`` as a real process against real OPC UA servers.

* Against ``python -m simulators --only opcua``: the written map loads as is and reads exactly the OPC UA points
  of config/demo.yaml, with the same node ids, types, units and (where the server has an EURange) ranges, plus
  the coater's profile array and structures (with ``structures: true``); the dryer zones come out as one
  template and one repeat.
* Against an asyncua server that advertises small MaxNodesPerBrowse / MaxNodesPerRead limits and refuses bigger
  Read and Browse requests (BadTooManyOperations): the browse keeps to the limits and finds every node.
  BrowseNext is not exercised here: asyncua's server hands out no continuation points and does not serve
  BrowseNext at all (its ``InternalSession.browse_next`` raises NotImplementedError); a server of another stack
  (node-opcua) is needed for that.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_session import InternalSession
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.uaerrors import BadTooManyOperations

from gateway.browse import run_browse
from gateway.tagmap import OpcUaDevice, OpcUaTag, Plant, load_plant
from tests.support.opcua import free_port, ua_time
from tests.support.sim import REPO_ROOT, SimulatorProcess

DEMO = REPO_ROOT / "config" / "demo.yaml"
COATER_NS = "nsu=urn:cellgate:simulators;s=Coater01"


def browse(*args: str, output: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "browse", *args, "-o", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


async def browse_async(*args: str, output: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "browse", *args, "-o", str(output),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    return stderr.decode()


def opcua_tags(plant: Plant) -> dict[str, dict[str, OpcUaTag]]:
    """device name -> node id (with namespace URI) -> tag."""
    return {device.name: {str(tag.node_id): tag for tag in device.tags}
            for device in plant.devices if isinstance(device, OpcUaDevice)}


@pytest.fixture(scope="module")
def simulators() -> Iterator[SimulatorProcess]:
    with SimulatorProcess(only="opcua") as sims:
        yield sims


def test_browse_of_the_simulators_reads_what_the_demo_map_reads(simulators: SimulatorProcess, tmp_path: Path) -> None:
    output = tmp_path / "browsed.yaml"
    result = browse(simulators.opcua_endpoint, output=output)
    browsed = load_plant(output, environ={})  # what `cellgate check` runs
    demo = load_plant(DEMO, environ={})

    demo_devices = opcua_tags(demo)
    browsed_devices = opcua_tags(browsed)
    # The coater's array and structures are not in the demo map (it reads scalars): check them, then compare.
    extras = {f"{COATER_NS}.Gauge.ProfileArray": ("gauge/profile_array", "float64"),
              f"{COATER_NS}.PackML.Status": ("pack_ml/status", None),
              f"{COATER_NS}.DryerZoneStatus": ("dryer_zone_status", None)}
    coater_tags = browsed_devices["coater01"]
    assert {node: (coater_tags[node].name, coater_tags[node].type) for node in extras} == extras
    for node in extras:
        del coater_tags[node]
    coater_device = next(d for d in browsed.devices if d.name == "coater01")
    assert isinstance(coater_device, OpcUaDevice) and coater_device.structures
    # The same devices (each machine object is one device), each with exactly the demo's nodes.
    by_nodes = {frozenset(tags): name for name, tags in browsed_devices.items()}
    pairs = {name: by_nodes.get(frozenset(tags)) for name, tags in demo_devices.items()}
    assert pairs == {"coater-01": "coater01", "calender-01": "calender01"}
    for device in browsed.devices:
        assert isinstance(device, OpcUaDevice)
        assert device.endpoint.rstrip("/") == simulators.opcua_endpoint.rstrip("/")
        assert device.namespace == "urn:cellgate:simulators"

    compared_ranges = 0
    for demo_name, browsed_name in pairs.items():
        assert browsed_name is not None
        for node, expected in demo_devices[demo_name].items():
            got = browsed_devices[browsed_name][node]
            assert (got.type, got.unit) == (expected.type, expected.unit), node
            assert got.name.count("/") == expected.name.count("/"), (got.name, expected.name)
            if got.min is not None or got.max is not None:
                assert (got.min, got.max) == (expected.min, expected.max), node
                compared_ranges += 1
            elif expected.type == "float64" and expected.min is not None and expected.max is not None:
                pytest.fail(f"{node}: the server has an EURange {expected.min}..{expected.max}; browse lost it")
            if ".Dryer.Zone" not in node:  # template tags: zone descriptions differ per zone, so none
                assert got.description == expected.description or got.description, node
    assert compared_ranges > 50

    written = yaml.safe_load(output.read_text())
    coater = next(d for d in written["devices"] if d["name"] == "coater01")
    assert coater["repeat"] == [{"template": "coater01-dryer-zone", "count": 10, "first": 1,
                                 "name": "dryer/zone{n:02d}"}]
    assert [t["name"] for t in written["templates"]["coater01-dryer-zone"]] == [
        "air_temp_sp", "air_temp", "heater_output"]
    assert "wrote 2 device(s)" in result.stderr and "1 repeat(s)" in result.stderr


def test_include_and_exclude_select_by_browse_path(simulators: SimulatorProcess, tmp_path: Path) -> None:
    output = tmp_path / "dryer.yaml"
    browse(simulators.opcua_endpoint, "--include", "Coater01/Dryer/*", "--exclude", "*/HeaterOutput",
           "--no-templates", output=output)
    tags = opcua_tags(load_plant(output, environ={}))
    assert list(tags) == ["coater01"]
    assert all(".Dryer." in node and not node.endswith("HeaterOutput") for node in tags["coater01"])
    assert sum(".Dryer.Zone" in node for node in tags["coater01"]) == 20  # AirTemp and AirTempSP of 10 zones


# ------------------------------------------------------------------------------------ operation limits

NS = "urn:cellgate:test:limits"
LIMIT_BROWSE = 3
LIMIT_READ = 5


class LimitedSession(InternalSession):
    """Refuses a Browse of more than LIMIT_BROWSE nodes, as a PLC that enforces its advertised limit does."""

    browse_sizes: ClassVar[list[int]] = []

    async def browse(self, params: ua.BrowseParameters) -> list[ua.BrowseResult]:
        self.browse_sizes.append(len(params.NodesToBrowse))
        if len(params.NodesToBrowse) > LIMIT_BROWSE:
            raise BadTooManyOperations()  # type: ignore[no-untyped-call]
        return await super().browse(params)


ANONYMOUS = User(role=UserRole.Anonymous)


async def limited_server(port: int, read_sizes: list[int]) -> Server:
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    index = await server.register_namespace(NS)

    def node(text: str) -> ua.NodeId:
        return ua.NodeId(ua.String(text), ua.Int16(index), ua.NodeIdType.String)

    rack = await server.nodes.objects.add_object(node("Rack"), ua.QualifiedName("Rack", index))
    for n in range(1, 13):
        channel = await rack.add_object(node(f"Rack.Ch{n:02d}"), ua.QualifiedName(f"Ch{n:02d}", index))
        await channel.add_variable(node(f"Rack.Ch{n:02d}.Voltage"), ua.QualifiedName("Voltage", index), 3.7)
        await channel.add_variable(node(f"Rack.Ch{n:02d}.Step"), ua.QualifiedName("Step", index),
                                   ua.Variant(1, ua.VariantType.UInt32))
    for k in range(25):  # one object with more children than one Browse answer holds
        await rack.add_variable(node(f"Rack.Aux{k}"), ua.QualifiedName(f"Aux{k}Value", index), float(k))
    for object_id, limit in ((ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerBrowse, LIMIT_BROWSE),
                             (ObjectIds.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead, LIMIT_READ)):
        await server.write_attribute_value(
            ua.NodeId(ua.Int32(object_id)),
            ua.DataValue(ua.Variant(limit, ua.VariantType.UInt32), SourceTimestamp=ua_time(datetime.now(UTC))))

    def on_read(event: ServerItemCallback, _dispatcher: object) -> None:
        if event.is_external:
            size = len(event.request_params.NodesToRead)
            read_sizes.append(size)
            if size > LIMIT_READ:
                raise BadTooManyOperations()  # type: ignore[no-untyped-call]

    server.subscribe_server_callback(CallbackType.PreRead, on_read)
    iserver = server.iserver

    def create_session(name: str, user: User = ANONYMOUS, external: bool = False) -> InternalSession:
        return LimitedSession(iserver, iserver.aspace, iserver.subscription_service, name, user=user,
                             external=external)

    iserver.create_session = create_session  # type: ignore[method-assign]
    await server.start()
    return server


async def test_browse_keeps_to_the_server_limits(tmp_path: Path) -> None:
    port = free_port()
    read_sizes: list[int] = []
    server = await limited_server(port, read_sizes)
    endpoint = f"opc.tcp://127.0.0.1:{port}"
    try:
        summary = await browse_async(endpoint, output=tmp_path / "rack.yaml")
    finally:
        await server.stop()
    assert read_sizes and max(read_sizes) <= LIMIT_READ
    assert LimitedSession.browse_sizes and max(LimitedSession.browse_sizes) <= LIMIT_BROWSE
    assert f"MaxNodesPerBrowse {LIMIT_BROWSE}, MaxNodesPerRead {LIMIT_READ}" in summary
    written: dict[str, Any] = yaml.safe_load((tmp_path / "rack.yaml").read_text())
    tags = opcua_tags(load_plant(tmp_path / "rack.yaml", environ={}))
    channels = {f"nsu={NS};s=Rack.Ch{n:02d}.{v}" for n in range(1, 13) for v in ("Voltage", "Step")}
    assert set(tags["rack"]) == channels | {f"nsu={NS};s=Rack.Aux{k}" for k in range(25)}
    assert written["devices"][0]["repeat"] == [{"template": "rack-ch", "count": 12, "first": 1, "name": "ch{n:02d}"}]
    step = tags["rack"][f"nsu={NS};s=Rack.Ch07.Step"]
    assert (step.name, step.type) == ("ch07/step", "uint32")
    assert tags["rack"][f"nsu={NS};s=Rack.Aux24"].name == "aux24_value"


def test_progress_on_a_terminal_and_the_summary(simulators: SimulatorProcess, tmp_path: Path) -> None:
    """In-process, with stderr taken for a terminal: progress lines (carriage returns), then the summary."""
    stderr, stdout = io.StringIO(), io.StringIO()
    status = run_browse(endpoint=simulators.opcua_endpoint, root="nsu=urn:cellgate:simulators;s=Machines", depth=10,
                        include=[], exclude=["*/Diagnostics/*"], output=None, area="electrode", line="cathode-1",
                        templates=True, stdout=stdout, stderr=stderr, is_terminal=lambda: True)
    assert status == 0
    text = stderr.getvalue()
    assert "\rbrowse Coater01: " in text and "\rbrowse Calender01: " in text
    assert "\rread attributes of " in text
    summary = text.rsplit("\r\x1b[K", 1)[-1]
    assert "wrote 2 device(s)" in summary and "1 template(s), 1 repeat(s)" in summary
    written = yaml.safe_load(stdout.getvalue())
    assert {(d["name"], d["area"], d["line"]) for d in written["devices"]} == {
        ("coater01", "electrode", "cathode-1"), ("calender01", "electrode", "cathode-1")}
    assert not any("diagnostics/" in t["name"] for d in written["devices"] for t in d["tags"])


def test_unreachable_server_fails_with_a_message(tmp_path: Path) -> None:
    stderr = io.StringIO()
    status = run_browse(endpoint=f"opc.tcp://127.0.0.1:{free_port()}", root=None, depth=3, include=[], exclude=[],
                        output=str(tmp_path / "none.yaml"), area="a", line="l", templates=True, timeout_s=2.0,
                        stderr=stderr, is_terminal=lambda: False)
    assert status == 1
    assert stderr.getvalue().startswith("cellgate browse: opc.tcp://127.0.0.1:")
    assert not (tmp_path / "none.yaml").exists()
