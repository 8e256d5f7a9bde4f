"""Environment overrides of the scalar settings of ``gateway:`` and ``mqtt:`` (environment wins over the file).

``CELLGATE_MQTT__PASSWORD=...`` overrides ``mqtt.password``; ``CELLGATE_GATEWAY__ID`` overrides ``gateway.id``.
pydantic-settings reads the variables (prefix ``CELLGATE_``, nested delimiter ``__``, case-insensitive, a
whole section may be given as JSON, e.g. ``CELLGATE_MQTT='{"qos": 0}'``); the values are merged into the YAML
data *before* validation, so one validation pass reports file and environment problems together, each at
its own source. We only borrow the settings source: the environment is passed in explicitly (tests never
touch ``os.environ``), and no settings object is instantiated.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from gateway.tagmap.model import GatewaySection, HttpSection, MqttSection, SpoolSection

ENV_PREFIX = "CELLGATE_"
ENV_NESTED_DELIMITER = "__"
OVERRIDABLE_SECTIONS = ("gateway", "mqtt", "spool", "http")


class _TagMapEnvironment(BaseSettings):
    """Declares which sections the environment may override; used only to configure the env source."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED_DELIMITER, case_sensitive=False, extra="ignore"
    )

    gateway: GatewaySection | None = None
    mqtt: MqttSection | None = None
    spool: SpoolSection | None = None
    http: HttpSection | None = None


@dataclass(slots=True)
class EnvOverrides:
    """Values from the environment, keyed by section, and the variable each came from."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    variables: dict[tuple[str, str], str] = field(default_factory=dict)  # (section, key) -> variable name
    problems: list[tuple[str, str]] = field(default_factory=list)  # (variable name, message)

    def variable_for(self, section: str, key: str | int) -> str | None:
        return self.variables.get((section, str(key)))

    def merge_into(self, data: dict[str, Any]) -> dict[str, Any]:
        """A copy of the YAML top-level ``data`` with the overrides applied (the input is not changed)."""
        merged = dict(data)
        for section, values in self.values.items():
            current = merged.get(section)
            if current is None:
                merged[section] = dict(values)
            elif isinstance(current, dict):
                merged[section] = {**current, **values}
            # else: the section is not a mapping in the file; validation reports that, at the file.
        return merged


def read_env_overrides(environ: Mapping[str, str]) -> EnvOverrides:
    """Collect ``CELLGATE_GATEWAY__*`` / ``CELLGATE_MQTT__*`` (and JSON ``CELLGATE_GATEWAY``/``CELLGATE_MQTT``)."""
    overrides = EnvOverrides()
    lowered = {name.lower(): value for name, value in environ.items()}
    if not any(name.startswith(ENV_PREFIX.lower()) for name in lowered):
        return overrides
    source = EnvSettingsSource(_TagMapEnvironment)
    source.env_vars = lowered  # the explicit environment instead of os.environ
    try:
        found = source()
    except SettingsError as exc:
        overrides.problems.append((f"{ENV_PREFIX}*", str(exc)))
        return overrides
    for section in OVERRIDABLE_SECTIONS:
        values = found.get(section)
        if values is None:
            continue
        whole = f"{ENV_PREFIX}{section.upper()}"
        if not isinstance(values, dict):
            overrides.problems.append(
                (whole, f"expected a JSON object, or set single values as {whole}{ENV_NESTED_DELIMITER}<SETTING>")
            )
            continue
        overrides.values[section] = values
        for key in values:
            nested = f"{whole}{ENV_NESTED_DELIMITER}{str(key).upper()}"
            overrides.variables[(section, str(key))] = nested if nested.lower() in lowered else whole
    return overrides
