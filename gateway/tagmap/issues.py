"""Problems found while validating a tag map, as plain values with a field path (no file positions yet).

Models report cross-field problems by raising ``rule_error(...)``: one pydantic error that carries every
``Issue`` with its own sub-path (e.g. ``("bit",)``), so the loader can point at the exact YAML node instead
of at the whole tag. ``issues_from_validation_error`` turns any pydantic ValidationError into Issues with
readable messages, "did you mean" suggestions included.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from gateway.schema import SHOWN_TEXT_CHARS, quoted

Loc: TypeAlias = tuple[str | int, ...]

RULE_ERROR_TYPE = "cellgate_rule"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem at ``loc`` (a field path such as ``("devices", 2, "tags", 7, "type")``).

    ``at_key`` points the position at the key rather than its value (unknown keys). ``via`` is a prefix shown
    before the path, for problems inside a template reached through a repeat, e.g.
    ``devices[1].repeat[0] (ch003) -> ``.
    """

    loc: Loc
    message: str
    at_key: bool = False
    via: str = ""

    def under(self, prefix: Loc, *, via: str | None = None) -> Issue:
        return Issue(prefix + self.loc, self.message, self.at_key, self.via if via is None else via)


def format_loc(loc: Loc) -> str:
    """``("devices", 2, "tags", 7, "type")`` -> ``devices[2].tags[7].type``. A key longer than SHOWN_TEXT_CHARS
    is shown as ``quoted`` shows it (cut, with its size)."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            key = part if len(str(part)) <= SHOWN_TEXT_CHARS else quoted(str(part))
            parts.append(f".{key}" if parts else str(key))
    return "".join(parts)


def rule_error(issues: Sequence[Issue]) -> PydanticCustomError:
    """One pydantic error carrying ``issues`` (paths relative to the model or field that raises it)."""
    summary = "; ".join(f"{format_loc(i.loc)}: {i.message}" if i.loc else i.message for i in issues)
    return PydanticCustomError(RULE_ERROR_TYPE, "{summary}", {"summary": summary, "issues": tuple(issues)})


def raise_issues(issues: Iterable[Issue]) -> None:
    found = list(issues)
    if found:
        raise rule_error(found)


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """`` (did you mean 'float32'?)`` for the closest of ``choices``, or an empty string."""
    if not isinstance(word, str):
        return ""
    options = list(choices)
    lowered = {choice.lower(): choice for choice in options}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""


# ------------------------------------------------------------------------ pydantic errors -> Issues

# Error types whose input is worth echoing (never for secrets, see _SECRET_FIELDS).
_ECHO_INPUT: Final = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "literal_error",
        "enum",
        "int_parsing",
        "int_from_float",
        "float_parsing",
        "bool_parsing",
        "too_short",
        "too_long",
    }
)
_SECRET_FIELDS: Final = frozenset({"password"})


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model class inside an annotation (unwrapping Annotated, unions, tuples, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    origin = typing.get_origin(annotation)
    if origin is None and not isinstance(annotation, types.UnionType):
        return found
    for arg in typing.get_args(annotation):
        found.extend(_model_classes(arg))
    return found


def _discriminator_value(model: type[BaseModel]) -> object:
    field = model.model_fields.get("protocol")
    return field.default if field is not None else None


def _walk(root: Any, raw_loc: Loc) -> tuple[Loc, list[type[BaseModel]]]:
    """Drop union tags (``modbus``/``opcua``) and dict-key markers from a pydantic loc.

    Returns the clean loc and the model classes that own its last named element (to suggest keys).
    """
    candidates = _model_classes(root)
    owners = candidates
    clean: list[str | int] = []
    for part in raw_loc:
        if isinstance(part, int):
            clean.append(part)  # an item of a tuple: the item type is already among the candidates
            continue
        if part == "[key]":
            continue
        if len(candidates) > 1:
            chosen = [model for model in candidates if _discriminator_value(model) == part]
            if chosen:
                candidates = chosen
                continue
        clean.append(part)
        owners = candidates
        candidates = []
        for model in owners:
            field = model.model_fields.get(part)
            if field is not None:
                candidates.extend(_model_classes(field.annotation))
    return tuple(clean), owners


def _unknown_key_message(key: object, owners: list[type[BaseModel]]) -> str:
    if len(owners) != 1:
        return f"unknown key {quoted(str(key))}"
    owner = owners[0]
    # e.g. ``address`` on an OPC UA tag: say whose setting it is rather than guess a near spelling.
    foreign_keys, explanation = getattr(owner, "foreign_key_hint", (frozenset(), ""))
    if key in foreign_keys:
        return f"unknown key {quoted(str(key))}: {explanation}"
    return f"unknown key {quoted(str(key))}{did_you_mean(key, sorted(owner.model_fields))}"


def _message(error: Any, field_name: str | int | None) -> str:
    kind = error["type"]
    message = str(error["msg"])
    value = error.get("input")
    if kind == "missing":
        return "missing required field"
    if kind in ("string_type", "int_type", "float_type") and isinstance(value, bool):
        return f"{message}, got a boolean (YAML reads yes/no/on/off/true/false as booleans; quote the value)"
    if kind == "string_type" and isinstance(value, int | float):
        return f"{message}, got the number {value!r} (quote it if it is text)"
    if kind == "too_short":
        return f"needs at least {error['ctx']['min_length']} item(s)"
    if kind == "model_type" or kind == "model_attributes_type" or kind == "dict_type":
        return f"expected a mapping (key: value), got {_yaml_kind(value)}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {_yaml_kind(value)}"
    if kind in _ECHO_INPUT and field_name not in _SECRET_FIELDS and isinstance(value, (int, float, str)):
        return f"{message} (got {quoted(value) if isinstance(value, str) else repr(value)})"
    return message


def _yaml_kind(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"the text {quoted(value)}"
    return f"{type(value).__name__} {value!r}"


def _inside(loc: Any, parent: Any) -> bool:
    return len(loc) > len(parent) and tuple(loc[: len(parent)]) == tuple(parent)


def issues_from_validation_error(exc: ValidationError, root: Any) -> list[Issue]:
    """Readable Issues for a ValidationError raised while validating against ``root`` (a type/annotation)."""
    issues: list[Issue] = []
    errors = exc.errors(include_url=False)
    for error in errors:
        loc, owners = _walk(root, tuple(error["loc"]))
        kind = error["type"]
        if kind == "too_short" and any(_inside(other["loc"], error["loc"]) for other in errors):
            continue  # pydantic also calls a list "too short" when all its items failed: say only why they failed
        if kind == RULE_ERROR_TYPE:
            issues.extend(issue.under(loc) for issue in error["ctx"]["issues"])
        elif kind == "extra_forbidden":
            issues.append(Issue(loc, _unknown_key_message(loc[-1] if loc else "?", owners), at_key=True))
        elif kind == "union_tag_invalid":
            expected = [tag.strip(" '") for tag in str(error["ctx"]["expected_tags"]).split(",")]
            tag = error["ctx"]["tag"]
            issues.append(
                Issue(
                    (*loc, "protocol"),
                    f"unknown protocol {tag!r}{did_you_mean(tag, expected)}; expected one of: {', '.join(expected)}",
                )
            )
        elif kind == "union_tag_not_found":
            issues.append(Issue((*loc, "protocol"), "missing required field (modbus or opcua)"))
        else:
            issues.append(Issue(loc, _message(error, loc[-1] if loc else None)))
    return issues
