"""Interoperability: ``cellgate browse`` against a 10,240-variable server of another stack (node-opcua).

The server (tests/interop/browse_server.js) serves 2 racks x 128 channel objects x 40 variables; `make test`
installs node-opcua with `npm ci` in tests/interop. The browse asks for at most 50 references per node, so the
racks' 128 channels come back with continuation points that only BrowseNext resolves (asyncua's own server never
hands them out). The server lets a session hold only 5 continuation points: with 20 references per node all 256
channels need one in the same Browse, and those refused (BadNoContinuationPoints) are browsed again alone, so
no variable goes missing. The map must validate as is (`cellgate check`'s loader), expand to every variable with the
right node ids, types, unit and range, and be written as templates + repeat, not 10,240 tags.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gateway.tagmap import OpcUaTag, load_plant
from tests.support.sim import REPO_ROOT, free_tcp_port

HERE = Path(__file__).resolve().parent
RACKS, CHANNELS, VARIABLES = 2, 128, 40
NAMESPACE = "urn:cellgate:interop-browse"
MAX_CONTINUATION_POINTS = 5
START_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (HERE / "node_modules" / "node-opcua").is_dir(),
    reason="needs Node.js and node-opcua (`make test` runs `npm ci` in tests/interop)",
)


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("node-browse")
    port = free_tcp_port()
    log = folder / "server.log"  # node-opcua logs to stdout too: a file, never a full pipe
    with log.open("w") as output:
        process = subprocess.Popen(
            ["node", str(HERE / "browse_server.js"), str(port), str(RACKS), str(CHANNELS), str(folder / "pki"),
             str(MAX_CONTINUATION_POINTS)],
            cwd=HERE, stdout=output, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "interop ready" not in log.read_text():
            assert process.poll() is None, f"node-opcua server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"node-opcua server did not start: {log.read_text()[-2000:]}"
            time.sleep(0.1)
        yield f"opc.tcp://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def browse(endpoint: str, output: Path, max_references: int) -> tuple[int, int, int, int]:
    """Runs the browse; returns (objects, variables, Browse requests, BrowseNext requests) from its summary."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "browse", endpoint, "--max-references", str(max_references),
         "-o", str(output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "refused" not in result.stderr, result.stderr
    counts = re.search(r"(\d+) objects and (\d+) variables .*\((\d+) Browse, (\d+) BrowseNext", result.stderr)
    assert counts is not None, result.stderr
    objects, variables, requests, browse_next = (int(group) for group in counts.groups())
    return objects, variables, requests, browse_next


def test_browse_of_10240_node_opcua_variables(endpoint: str, tmp_path: Path) -> None:
    output = tmp_path / "hall.yaml"
    objects, variables, _, browse_next = browse(endpoint, output, 50)
    assert (objects, variables) == (1 + RACKS + RACKS * CHANNELS, RACKS * CHANNELS * VARIABLES)
    assert browse_next > 0  # the racks' channels did not fit 50 references per node

    document = yaml.safe_load(output.read_text(encoding="utf-8"))
    assert len(document["templates"]) == RACKS
    for device in document["devices"]:
        assert device["namespace"] == NAMESPACE
        [repeat] = device["repeat"]
        assert (repeat["count"], repeat["first"]) == (CHANNELS, 1)
    assert len(output.read_text(encoding="utf-8").splitlines()) < 400  # reviewable, not 10,240 tag entries

    plant = load_plant(output)  # what `cellgate check` loads: the map is valid as written
    tags = {(device.name, tag.name): tag for device in plant.devices for tag in device.tags}
    assert len(tags) == RACKS * CHANNELS * VARIABLES
    voltage = next(tag for (device, name), tag in tags.items()
                   if device == "rack02" and name.endswith("077/voltage"))
    assert isinstance(voltage, OpcUaTag)
    assert voltage.node == f"nsu={NAMESPACE};s=Rack02.CH077.Voltage"
    assert (voltage.type is not None and voltage.type.value, voltage.unit, voltage.min, voltage.max) == (
        "float64", "V", 0, 5)
    recipe = next(tag for (device, name), tag in tags.items() if device == "rack01" and name.endswith("128/recipe"))
    assert isinstance(recipe, OpcUaTag) and recipe.type is not None and recipe.type.value == "string"


def test_nodes_refused_a_continuation_point_are_browsed_again(endpoint: str, tmp_path: Path) -> None:
    objects, variables, requests, browse_next = browse(endpoint, tmp_path / "hall.yaml", 20)
    assert (objects, variables) == (1 + RACKS + RACKS * CHANNELS, RACKS * CHANNELS * VARIABLES)
    assert requests > RACKS * CHANNELS - MAX_CONTINUATION_POINTS  # the refused channels, one Browse each
    assert browse_next >= RACKS * CHANNELS
