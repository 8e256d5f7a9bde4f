"""The sdist and the wheel as `python -m build` makes them (the wheel from the unpacked sdist): complete, with the
package data, the LICENSE and the dependencies as declared, and `cellgate demo` / `cellgate init` working from the
installed wheel, away from the repository."""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from email.message import Message
from pathlib import Path

import pytest

from tests.support.gateway import REPO_ROOT, retarget_demo_config
from tests.support.sim import free_port_run, free_tcp_port

EQUIPMENT = ("coater-01", "calender-01", "stacker-01", "rack-01", "rack-02")
DATA = {
    "gateway/data/tagmap.yaml": REPO_ROOT / "config" / "demo.yaml",
    "gateway/data/systemd/cellgate.service": REPO_ROOT / "systemd" / "cellgate.service",
    "gateway/data/systemd/cellgate-simulators.service": REPO_ROOT / "systemd" / "cellgate-simulators.service",
}


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(sdist, wheel) built from a copy of the working tree, so the build leaves nothing in the checkout."""
    root = tmp_path_factory.mktemp("dists")
    tree = root / "tree"
    tree.mkdir()
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout
    subprocess.run(["tar", "--null", "--ignore-failed-read", "-T", "-", "-cf", root / "tree.tar"], cwd=REPO_ROOT,
                   input=files, check=True, capture_output=True)
    subprocess.run(["tar", "-xf", root / "tree.tar", "-C", tree], check=True)
    built = subprocess.run([sys.executable, "-m", "build", "-o", root / "dist", tree], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return next((root / "dist").glob("*.tar.gz")), next((root / "dist").glob("*.whl"))


def wheel_metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.message_from_bytes(archive.read(name))


def test_wheel_and_sdist_carry_the_package_data_and_the_license(dists: tuple[Path, Path]) -> None:
    sdist, wheel = dists
    with zipfile.ZipFile(wheel) as archive:
        for name, source in DATA.items():
            assert archive.read(name) == source.read_bytes(), name
        assert b"CELLGATE_MQTT__PASSWORD" in archive.read("gateway/data/cellgate.env")
        licenses = [n for n in archive.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
        assert licenses and archive.read(licenses[0]) == (REPO_ROOT / "LICENSE").read_bytes()
    license_text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a pointer to it
    assert wheel_metadata(wheel)["License-Expression"] == "Apache-2.0"
    with tarfile.open(sdist) as archive:
        members = {member.name.split("/", 1)[1]: member for member in archive.getmembers() if "/" in member.name}
        assert "LICENSE" in members
        for name in DATA:
            assert members[name].isfile(), f"{name} in the sdist is not a regular file"


def test_dependencies_are_declared_where_they_are_used(dists: tuple[Path, Path]) -> None:
    requires = wheel_metadata(dists[1]).get_all("Requires-Dist") or []
    paho = [line for line in requires if line.startswith("paho-mqtt")]
    assert paho and all("extra ==" in line for line in paho), paho  # the demo view and the tests only
    assert any(line.startswith("amqtt") and 'extra == "demo"' in line for line in requires), requires
    settings = [line for line in requires if line.startswith("pydantic-settings")]
    assert settings and "[" not in settings[0], settings  # no unused [yaml] extra
    # Every dependency is pinned in constraints.txt (what CI tested).
    constraints = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (REPO_ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    names = {line.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
             for line in requires}
    assert names <= constraints, names - constraints


def test_demo_and_init_run_from_the_installed_wheel(dists: tuple[Path, Path], tmp_path: Path) -> None:
    """The wheel installed into its own directory (dependencies from this venv), run from outside the checkout:
    `cellgate demo` finds its tag map in the package data and shows all five machines through the embedded broker."""
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, dists[1]],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONUNBUFFERED": "1"}
    cli = [sys.executable, "-m", "gateway.cli"]
    where = subprocess.run([sys.executable, "-c", "import gateway; print(gateway.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(target)), where.stdout

    init = subprocess.run([*cli, "init", tmp_path / "init"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "init" / "cellgate.env").stat().st_mode & 0o777 == 0o600
    check = subprocess.run([*cli, "check", "-c", tmp_path / "init" / "tagmap.yaml"], cwd=tmp_path, env=env,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    # Without amqtt (as in an install without the demo extra; None in sys.modules makes its import fail): the
    # bundled tag map loads, then one line names the extra; exit status 2 and no traceback.
    no_extra = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['amqtt'] = None; from gateway.cli import main; "
         "sys.exit(main(['demo', '--no-view']))"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert no_extra.returncode == 2, no_extra.stdout + no_extra.stderr
    assert no_extra.stderr.count("\n") == 1, no_extra.stderr
    assert "amqtt missing" in no_extra.stderr and "cellgate[demo]" in no_extra.stderr

    config = retarget_demo_config(
        opcua_port=free_tcp_port(), modbus_port=free_port_run(3), destination=tmp_path / "demo.yaml"
    )
    text = config.read_text().replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{free_tcp_port()}")
    config.write_text(text)
    view = tmp_path / "view.txt"
    with view.open("w") as out, (tmp_path / "demo.log").open("w") as log:
        demo = subprocess.Popen([*cli, "demo", "-c", config], cwd=tmp_path, env=env, stdout=out, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            frame = view.read_text().rsplit("Ctrl-C stops the demo", 1)[-1]  # the latest frame of the view
            if all(re.search(rf"{name}  \[connected\]  [1-9][0-9]* tags seen", frame) for name in EQUIPMENT):
                break
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            raise AssertionError(view.read_text()[-3000:] + (tmp_path / "demo.log").read_text()[-3000:])
    finally:
        demo.terminate()
        returncode = demo.wait(timeout=30)
    assert returncode == 0
    assert "Traceback" not in (tmp_path / "demo.log").read_text()


def test_the_debian_changelog_and_pyproject_name_the_same_version() -> None:
    first = (REPO_ROOT / "debian" / "changelog").read_text().splitlines()[0]
    match = re.match(r"cellgate \(([^)]+)\)", first)
    assert match, first
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', pyproject, re.MULTILINE)
    assert version and match[1] == version[1], (match[1], version and version[1])
