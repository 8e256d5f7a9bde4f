"""Dependencies as declared: what `gateway` and `simulators` import is a declared dependency (the demo's modules in
the `demo` extra, imported only where the demo needs them), and `constraints.txt` pins exactly the distributions
and versions of this test environment (`make test` installs `.[test,demo]` with it), nothing more or less."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from tests.support.gateway import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
FIRST_PARTY = {"gateway", "simulators"}


def declared(requirements: list[str]) -> set[NormalizedName]:
    return {canonicalize_name(Requirement(line).name) for line in requirements}


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(top-level modules imported at module level, imported anywhere) by one source file; imports under
    `if TYPE_CHECKING:` are for the type checker only and not counted."""
    tree = ast.parse(path.read_text(), filename=str(path))
    type_checking = {
        id(node) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    module_level, anywhere = set(), set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        tops = {name.split(".")[0] for name in names} - FIRST_PARTY - set(sys.stdlib_module_names) - {"__future__"}
        anywhere |= tops
        if node in tree.body:
            module_level |= tops
    return module_level, anywhere


@functools.cache
def installed_modules() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> set[NormalizedName]:
    found = installed_modules().get(module)
    assert found, f"no installed distribution provides the module {module!r}"
    return {canonicalize_name(name) for name in found}


def test_every_imported_library_is_a_declared_dependency_and_the_demo_libraries_are_imported_lazily() -> None:
    core = declared(PYPROJECT["dependencies"])
    demo = declared(PYPROJECT["optional-dependencies"]["demo"])
    undeclared, eager_demo = [], []
    for path in sorted(path for package in FIRST_PARTY for path in (REPO_ROOT / package).rglob("*.py")):
        module_level, anywhere = imports(path)
        for module in sorted(anywhere):
            distributions = distributions_of(module)
            if not distributions & (core | demo):
                undeclared.append(f"{path.relative_to(REPO_ROOT)}: {module} ({', '.join(sorted(distributions))})")
            elif module in module_level and not distributions & core:
                eager_demo.append(f"{path.relative_to(REPO_ROOT)}: {module}")
    assert not undeclared, "imported but not in [project] dependencies:\n" + "\n".join(undeclared)
    assert not eager_demo, "demo-extra libraries imported at module level:\n" + "\n".join(eager_demo)


def test_no_extra_is_declared_that_nothing_uses() -> None:
    """Each extra of a dependency (pymodbus[serial]) is used by our code; pydantic-settings[yaml] once was not."""
    used = {"pymodbus": {"serial"}}  # serial: pyserial, for Modbus RTU (gateway/sources/modbus.py)
    for line in PYPROJECT["dependencies"]:
        requirement = Requirement(line)
        assert requirement.extras <= used.get(requirement.name, set()), line


def closure(requirements: list[str], extras: set[str]) -> dict[NormalizedName, str]:
    """Every distribution these requirements pull in, with its installed version (markers evaluated here)."""
    found: dict[NormalizedName, str] = {}
    pending = [(Requirement(line), extras) for line in requirements]
    while pending:
        requirement, active = pending.pop()
        if requirement.marker is not None and not any(
            requirement.marker.evaluate({"extra": extra}) for extra in (active or {""})
        ):
            continue
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found[name] = importlib.metadata.version(requirement.name)
        pending += [(Requirement(line), requirement.extras) for line in importlib.metadata.requires(requirement.name)
                    or []]
    return found


def test_constraints_pin_exactly_what_this_environment_tested() -> None:
    optional = PYPROJECT["optional-dependencies"]
    needed = closure([*PYPROJECT["dependencies"], *optional["test"], *optional["demo"]], set())
    pinned = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pinned[canonicalize_name(name)] = version.strip()
    assert sorted(set(needed) - set(pinned)) == [], "missing from constraints.txt"
    assert sorted(set(pinned) - set(needed)) == [], "in constraints.txt but needed by nothing"
    differing = {name: (pinned[name], version) for name, version in needed.items() if pinned[name] != version}
    assert not differing, f"constraints.txt pins another version than installed here (pinned, installed): {differing}"
