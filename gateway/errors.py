"""The few error types of Cellgate. Library exceptions are wrapped at the boundary with ``raise ... from``."""

from __future__ import annotations

from dataclasses import dataclass


class GatewayError(Exception):
    """Base of every error Cellgate raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem found in a tag map, located in its file.

    ``line`` and ``column`` are 1-based; 0 means the position is unknown (e.g. an environment override).
    ``path`` is the field path, e.g. ``devices[2].tags[7].type``.
    """

    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(GatewayError):
    """A tag map or settings file that cannot be used. Carries every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SourceError(GatewayError):
    """A PLC could not be read (connection, timeout, protocol)."""


class SinkError(GatewayError):
    """Samples could not be handed to the broker or the spool."""
