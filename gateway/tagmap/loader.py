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
from gateway.schema import quoted
from gateway.tagmap.env import OVERRIDABLE_SECTIONS, EnvOverrides, read_env_overrides
from gateway.tagmap.expand import assemble_plant, expand_devices, topic_limit
from gateway.tagmap.issues import Issue, Loc, did_you_mean, format_loc, issues_from_validation_error
from gateway.tagmap.limits import MAX_REPEAT_COUNT, MAX_TAGS_PER_PLANT
from gateway.tagmap.model import Device, GatewaySection, HttpSection, MqttSection, Plant, SpoolSection, TemplateTags
from gateway.tagmap.yamlpos import YamlDocument, YamlSyntaxError, parse_yaml

_DEVICE: TypeAdapter[Device] = TypeAdapter(Device)
_TEMPLATES: TypeAdapter[dict[str, TemplateTags]] = TypeAdapter(dict[str, TemplateTags])
_SECTIONS = ("gateway", "mqtt", "spool", "http", "templates", "devices")
_REQUIRED_SECTIONS = ("gateway", "mqtt", "devices")

MAX_PROBLEM_CHARS = 400
"""Longest message of one problem line: values are shown cut (``quoted``), and this bounds whatever is left, so
a 1 MB value can never make a 1 MB line on a terminal or in the journal."""


def load_plant(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Plant:
    """Read, validate and expand the tag map at ``path``. ``environ`` defaults to ``os.environ``.

    Raises ConfigError listing every problem as ``FILE:LINE:COL: path: message``.
    """
    filename = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise _single(filename, f"cannot read the tag map: {exc.strerror or exc}") from None
    try:
        # Bytes, not read_text: YAML reads \r\n itself, and a bad byte can then be shown at its LINE:COL.
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        # Everything before the first bad byte is valid UTF-8: count characters, not bytes, for the column.
        line, column = data.count(b"\n", 0, exc.start) + 1, len(data[line_start : exc.start].decode("utf-8")) + 1
        message = f"not UTF-8 text: byte 0x{data[exc.start]:02X} (save the file as UTF-8)"
        raise ConfigError([ConfigProblem(filename, line, column, "", message)]) from None
    return load_plant_from_text(text, filename=filename, environ=environ)


def load_plant_from_text(text: str, *, filename: str = "<string>", environ: Mapping[str, str] | None = None) -> Plant:
    """Like ``load_plant`` for YAML text; ``filename`` is what problems are reported against."""
    try:
        document = parse_yaml(text)
    except YamlSyntaxError as exc:
        raise ConfigError([_bounded(filename, exc.position.line, exc.position.column, "", exc.message)]) from None
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
            _bounded(filename, p.position.line, p.position.column, p.path, p.message) for p in document.problems
        ]
        self.problems += [_bounded(f"env {variable}", 0, 0, "", message) for variable, message in env.problems]

    def add(self, issue: Issue) -> None:
        loc = issue.loc
        if not issue.via and len(loc) >= 2 and loc[0] in OVERRIDABLE_SECTIONS:
            variable = self.env.variable_for(str(loc[0]), loc[1])
            if variable is not None:
                self.problems.append(_bounded(f"env {variable}", 0, 0, "", issue.message))
                return
        position, written = self.document.locate(loc, at_key=issue.at_key)
        self.problems.append(
            _bounded(self.filename, position.line, position.column, issue.via + format_loc(written), issue.message)
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


def _bounded(file: str, line: int, column: int, path: str, message: str) -> ConfigProblem:
    """A ConfigProblem whose path and message are at most MAX_PROBLEM_CHARS each (cut, with the full size)."""
    if len(path) > MAX_PROBLEM_CHARS:
        path = quoted(path, MAX_PROBLEM_CHARS)
    if len(message) > MAX_PROBLEM_CHARS:
        message = f"{message[:MAX_PROBLEM_CHARS]}... ({len(message)} characters)"
    return ConfigProblem(file, line, column, path, message)


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
            report.add(Issue((key,), f"unknown key {quoted(str(key))}{did_you_mean(key, _SECTIONS)}", at_key=True))
    for key in _REQUIRED_SECTIONS:
        if key not in data:
            report.add(Issue((key,), "missing required section"))

    gateway = _validate_model(GatewaySection, data["gateway"], ("gateway",), report) if "gateway" in data else None
    mqtt = _validate_model(MqttSection, data["mqtt"], ("mqtt",), report) if "mqtt" in data else None
    spool = _validate_model(SpoolSection, data["spool"], ("spool",), report) if data.get("spool") is not None else None
    http = _validate_model(HttpSection, data["http"], ("http",), report) if data.get("http") is not None else None

    size = _raw_tag_count(data.get("devices"), data.get("templates"))
    if size > MAX_TAGS_PER_PLANT:
        # Before validating or expanding anything: the cost of both grows with this number, not with the text.
        report.add(
            Issue(
                ("devices",),
                f"the tag map expands to {size:,} tags (explicit, template and repeated), more than the "
                f"{MAX_TAGS_PER_PLANT:,} one gateway takes; split the plant into several tag maps",
            )
        )
        return None

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

    # Topic lengths need the gateway section (enterprise/site prefix every topic): unknown while it is broken.
    topics = topic_limit(gateway, mqtt) if gateway is not None else None
    expanded, issues = expand_devices(devices, templates, describe=report.describe, topics=topics)
    report.add_all(issues)
    if mqtt is not None and mqtt.qos == 0 and any(device.events for _, device in devices):
        # An event's ack is written after the broker's PUBACK; QoS 0 has none.
        report.add(Issue(("mqtt", "qos"), "devices with events need qos 1: the PLC is acknowledged after the PUBACK"))
    if gateway is None or mqtt is None or report.problems:
        return None
    return assemble_plant(gateway, mqtt, expanded, spool, http)


def _raw_tag_count(raw_devices: Any, raw_templates: Any) -> int:
    """How many tags the raw YAML data would make: every tag list as written (an alias counts each time it is
    used), each repeat as count x its template's length, and every template once (templates are validated
    even when unused). Malformed parts count as nothing: validation reports them."""
    templates = raw_templates if isinstance(raw_templates, dict) else {}
    lengths = {name: len(tags) for name, tags in templates.items() if isinstance(name, str) and isinstance(tags, list)}
    total = sum(lengths.values())
    for device in raw_devices if isinstance(raw_devices, list) else []:
        if not isinstance(device, dict):
            continue
        tags = device.get("tags")
        total += len(tags) if isinstance(tags, list) else 0
        repeats = device.get("repeat")
        for repeat in [repeats] if isinstance(repeats, dict) else repeats if isinstance(repeats, list) else []:
            if isinstance(repeat, dict) and isinstance(repeat.get("template"), str):
                total += _raw_count(repeat.get("count")) * lengths.get(repeat["template"], 0)
    return total


def _raw_count(value: Any) -> int:
    """A repeat's ``count`` as pydantic will read it (int, integral float or digit text), capped at what
    validation accepts; anything else counts 0 (validation rejects it)."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 12:
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return min(value, MAX_REPEAT_COUNT) if isinstance(value, int) and value > 0 else 0
