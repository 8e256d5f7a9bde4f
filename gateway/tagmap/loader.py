"""Load a tag-map YAML file into a validated, expanded ``Plant``, or raise ConfigError with every problem.

Steps: parse YAML keeping the node tree (``yamlpos``) -> apply ``CELLGATE_*`` environment overrides
(``env``) -> validate each section and each device on its own, so one broken device does not hide the
problems of the others -> expand templates/repeats and run the file-wide checks (``expand``) -> map every
problem's field path back to FILE:LINE:COL of the YAML node (the value for a bad value, the key for an
unknown key, the mapping for a missing field), or to the environment variable it came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from gateway.errors import ConfigError, ConfigProblem
from gateway.tagmap.env import OVERRIDABLE_SECTIONS, EnvOverrides, read_env_overrides
from gateway.tagmap.expand import assemble_plant, expand_devices
from gateway.tagmap.issues import Issue, Loc, did_you_mean, format_loc, issues_from_validation_error
from gateway.tagmap.model import Device, GatewaySection, MqttSection, Plant, TemplateTags
from gateway.tagmap.yamlpos import YamlDocument, YamlSyntaxError, parse_yaml

_DEVICE: TypeAdapter[Device] = TypeAdapter(Device)
_TEMPLATES: TypeAdapter[dict[str, TemplateTags]] = TypeAdapter(dict[str, TemplateTags])
_SECTIONS = ("gateway", "mqtt", "templates", "devices")
_REQUIRED_SECTIONS = ("gateway", "mqtt", "devices")


def load_plant(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Plant:
    """Read, validate and expand the tag map at ``path``. ``environ`` defaults to ``os.environ``.

    Raises ConfigError listing every problem as ``FILE:LINE:COL: path: message``.
    """
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _single(filename, f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise _single(filename, f"cannot read the tag map: {exc.strerror or exc}") from None
    return load_plant_from_text(text, filename=filename, environ=environ)


def load_plant_from_text(text: str, *, filename: str = "<string>", environ: Mapping[str, str] | None = None) -> Plant:
    """Like ``load_plant`` for YAML text; ``filename`` is what problems are reported against."""
    try:
        document = parse_yaml(text)
    except YamlSyntaxError as exc:
        raise ConfigError([ConfigProblem(filename, exc.position.line, exc.position.column, "", exc.message)]) from None
    env = read_env_overrides(os.environ if environ is None else environ)
    report = _Report(filename, document, env)
    plant = _validate(document, env, report)
    if report.problems or plant is None:
        raise ConfigError(report.sorted_problems())
    return plant


def format_problems(err: ConfigError) -> str:
    """The problems of ``err``, one per line, and a count: what ``cellgate check`` prints."""
    lines = [str(problem) for problem in err.problems]
    count = len(err.problems)
    lines.append(f"{count} problem{'s' * (count != 1)} found")
    return "\n".join(lines)


def _single(filename: str, message: str) -> ConfigError:
    return ConfigError([ConfigProblem(filename, 0, 0, "", message)])


class _Report:
    """Turns Issues (field paths) into ConfigProblems (file positions or environment variables)."""

    def __init__(self, filename: str, document: YamlDocument, env: EnvOverrides) -> None:
        self.filename = filename
        self.document = document
        self.env = env
        self.problems: list[ConfigProblem] = [
            ConfigProblem(filename, p.position.line, p.position.column, p.path, p.message) for p in document.problems
        ]
        self.problems += [ConfigProblem(f"env {variable}", 0, 0, "", message) for variable, message in env.problems]

    def add(self, issue: Issue) -> None:
        loc = issue.loc
        if not issue.via and len(loc) >= 2 and loc[0] in OVERRIDABLE_SECTIONS:
            variable = self.env.variable_for(str(loc[0]), loc[1])
            if variable is not None:
                self.problems.append(ConfigProblem(f"env {variable}", 0, 0, "", issue.message))
                return
        position, written = self.document.locate(loc, at_key=issue.at_key)
        self.problems.append(
            ConfigProblem(self.filename, position.line, position.column, issue.via + format_loc(written), issue.message)
        )

    def add_all(self, issues: list[Issue]) -> None:
        for issue in issues:
            self.add(issue)

    def describe(self, loc: Loc) -> str:
        """``LINE:COL`` of ``loc``, for "first at ..." references."""
        position, _ = self.document.locate(loc)
        return f"{position.line}:{position.column}"

    def sorted_problems(self) -> list[ConfigProblem]:
        unique = list(dict.fromkeys(self.problems))  # keep order, drop exact repeats
        return sorted(unique, key=lambda p: (p.line != 0, p.line, p.column))


def _validate_model(model: type[BaseModel], data: Any, prefix: Loc, report: _Report) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        report.add_all([issue.under(prefix) for issue in issues_from_validation_error(exc, model)])
        return None


def _validate(document: YamlDocument, env: EnvOverrides, report: _Report) -> Plant | None:
    raw = document.data
    if raw is None and document.root is None:
        report.add(Issue((), "the tag map is empty; expected a mapping with gateway, mqtt and devices"))
        return None
    if not isinstance(raw, dict):
        report.add(Issue((), "the tag map must be a mapping with gateway, mqtt and devices at the top level"))
        return None
    data = env.merge_into(raw)
    for key in data:
        if key not in _SECTIONS:
            report.add(Issue((key,), f"unknown key {key!r}{did_you_mean(key, _SECTIONS)}", at_key=True))
    for key in _REQUIRED_SECTIONS:
        if key not in data:
            report.add(Issue((key,), "missing required section"))

    gateway = _validate_model(GatewaySection, data["gateway"], ("gateway",), report) if "gateway" in data else None
    mqtt = _validate_model(MqttSection, data["mqtt"], ("mqtt",), report) if "mqtt" in data else None

    templates: dict[str, Any] | None = {}
    if data.get("templates") is not None:
        try:
            templates = _TEMPLATES.validate_python(data["templates"])
        except ValidationError as exc:
            report.add_all([i.under(("templates",)) for i in issues_from_validation_error(exc, TemplateTags)])
            templates = None

    devices: list[tuple[int, Device]] = []
    raw_devices = data.get("devices")
    if "devices" in data and not isinstance(raw_devices, list):
        report.add(Issue(("devices",), "expected a list of devices (each item starting with '- name: ...')"))
    for index, raw_device in enumerate(raw_devices if isinstance(raw_devices, list) else []):
        try:
            devices.append((index, _DEVICE.validate_python(raw_device)))
        except ValidationError as exc:
            report.add_all([i.under(("devices", index)) for i in issues_from_validation_error(exc, Device)])

    expanded, issues = expand_devices(devices, templates, describe=report.describe)
    report.add_all(issues)
    if gateway is None or mqtt is None or report.problems:
        return None
    return assemble_plant(gateway, mqtt, expanded)
