"""The OPC UA fast path against the NEWEST asyncua release on PyPI, so an upgrade cannot break it silently.

The newest wheel is fetched with pip (no dependencies: the venv's serve) into tmp_path and put first on the
path of a child process, which then (1) runs the fast path's feature check and (2) subscribes with the fast
path to an asyncua server of that same release and waits for values. Without access to PyPI the test is skipped
and says so; pyproject.toml allows asyncua up to the next major release because of this test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import asyncio, importlib.metadata, json, sys
    import asyncua
    from gateway.sources.opcua import OpcUaSource
    from gateway.sources.opcua_fastpath import fast_path_unavailable
    from gateway.sources.opcua_status import OpcUaDeviceOptions, OpcUaTagRef
    from tests.support.opcua import TEST_NAMESPACE, OpcUaTestServer

    async def subscribe() -> dict[str, object]:
        server = OpcUaTestServer()
        await server.start()
        values = []
        try:
            options = OpcUaDeviceOptions(endpoint=server.endpoint, namespace_uri=TEST_NAMESPACE, interval_ms=50,
                                         timeout_ms=5000)
            source = OpcUaSource(device="d", options=options,
                                 tags=[OpcUaTagRef(name="t", kind="s", identifier="Temperature")])
            async def emit(readings):
                values.extend(reading.value for reading in readings)
            task = asyncio.create_task(source.run(emit, lambda up, reason: None))
            try:
                async with asyncio.timeout(120):
                    while not values:
                        await asyncio.sleep(0.05)
                    await server.write("Temperature", 30.5)
                    while 30.5 not in values:
                        await asyncio.sleep(0.05)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            await server.stop()
        return {"values": values, "fast_publish_responses": source.stats.fast_publish_responses}

    result = {"version": importlib.metadata.version("asyncua"), "file": asyncua.__file__,
              "problem": fast_path_unavailable()}
    result.update(asyncio.run(subscribe()))
    print(json.dumps(result))
    """
)


def newest_asyncua(into: Path) -> Path:
    """The newest asyncua wheel from PyPI in ``into`` (skips the test when PyPI cannot be reached)."""
    downloaded = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "--dest",
         str(into), "--index-url", "https://pypi.org/simple", "asyncua"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    wheels = sorted(into.glob("asyncua-*.whl"))
    if downloaded.returncode != 0 or not wheels:
        last = (downloaded.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"no access to PyPI to fetch the newest asyncua release ({last})")
    return wheels[-1]


def test_fast_path_holds_against_the_newest_asyncua_release(tmp_path: Path) -> None:
    wheel = newest_asyncua(tmp_path / "wheels")
    site = tmp_path / "site"
    # A pure-Python wheel is a zip of the package: unpacked first on the path, it shadows the venv's asyncua.
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)])}
    child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300, env=env,
                           cwd=tmp_path, check=False)  # fmt: skip
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).is_relative_to(site), result  # the release from PyPI, not the venv's
    assert wheel.name.startswith(f"asyncua-{result['version']}-"), (wheel.name, result)
    assert result["problem"] is None, result
    assert 30.5 in result["values"], result
    assert result["fast_publish_responses"] > 0, result
