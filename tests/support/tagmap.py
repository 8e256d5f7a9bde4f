"""Test helpers for the tag map: case folders, a minimal valid tag map, and problem lines."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError
from gateway.tagmap import Plant, load_plant_from_text

CASES = Path(__file__).resolve().parent.parent / "cases"
ERROR_CASES = CASES / "tagmap_errors"
SPEC_EXAMPLE = CASES / "tagmap_valid" / "spec_example" / "tagmap.yaml"

HEADER = """\
gateway: {id: gw1, enterprise: acme, site: dunkirk}
mqtt: {url: "mqtt://127.0.0.1:1883"}
"""

# One OPC UA device; ``{security}`` is its ``security`` section (YAML flow style), e.g. "{}" for the defaults.
SECURE_OPCUA_MAP = """\
gateway: {{id: gw, enterprise: acme, site: s1}}
mqtt: {{url: "mqtt://127.0.0.1:1883"}}
devices:
  - name: coater
    area: a
    line: l
    protocol: opcua
    endpoint: "opc.tcp://127.0.0.1:4840"
    security: {security}
    tags: [{{name: speed, node: "ns=2;s=Speed", type: float64}}]
"""

MINIMAL_MODBUS = (
    HEADER
    + """\
devices:
  - name: rack-01
    area: formation
    line: hall-a
    protocol: modbus
    host: 127.0.0.1
    tags:
      - {name: voltage, address: 0, type: float32, unit: V}
"""
)


@dataclass(frozen=True, slots=True)
class ErrorCase:
    """One folder of tests/cases/tagmap_errors: a broken tag map and the exact problem lines it must give."""

    name: str
    text: str
    expected: list[str]


def error_cases() -> list[ErrorCase]:
    cases = []
    for folder in sorted(path for path in ERROR_CASES.iterdir() if path.is_dir()):
        expected = (folder / "expected.txt").read_text(encoding="utf-8").splitlines()
        text = (folder / "tagmap.yaml").read_text(encoding="utf-8")
        cases.append(ErrorCase(folder.name, text, expected))
    return cases


def load(text: str, environ: dict[str, str] | None = None) -> Plant:
    """Load YAML text as ``tagmap.yaml`` with an explicit (default: empty) environment."""
    return load_plant_from_text(text, filename="tagmap.yaml", environ=environ or {})


def problem_lines(text: str, environ: dict[str, str] | None = None) -> list[str]:
    """The problem lines loading ``text`` gives; fails the test if it loads."""
    try:
        load(text, environ)
    except ConfigError as exc:
        return [str(problem) for problem in exc.problems]
    raise AssertionError("the tag map loaded, but problems were expected")
