"""What a tag map declares about an OPC UA array or structure value, checked against the values read.

A tag (or a field of a structure) may declare ``shape`` (array: its length per dimension, outermost first,
0 meaning any length) and ``fields`` (structure: its fields in order). Both together describe an array of
structures: every element of the array has those fields. A field is written as its name, or as a one-key
mapping ``{name: {shape: [...], fields: [...]}}`` when it is itself an array or a structure, to any depth::

    fields:
      - Number                                  # any value
      - Voltage: {shape: [100]}                 # an array of 100 values
      - Step: {fields: [Kind, Current]}         # a nested structure
      - Channels: {shape: [8], fields: [U, I]}  # an array of 8 structures

``_meta`` publishes the same form, so a subscriber reads the whole shape of a value before the first one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

MAX_SHAPE_DIMENSIONS = 32
"""Dimensions a ``shape`` may have (far beyond any PLC array; OPC UA itself has no fixed limit)."""

MAX_FIELD_DEPTH = 16
"""Nesting depth of ``fields`` (a PLC structure nests a few levels; this bounds the checks' recursion)."""

ShapeLoc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class FieldShape:
    """One field of a structure: its name and, when it is an array or a structure itself, its shape."""

    name: str
    shape: tuple[int, ...] | None = None
    fields: tuple[FieldShape, ...] | None = None


@dataclass(frozen=True, slots=True)
class ValueShape:
    """What a tag map declares about an array or structure tag (``shape`` / ``fields``)."""

    shape: tuple[int, ...] | None = None
    fields: tuple[FieldShape, ...] | None = None


Problems = list[tuple[ShapeLoc, str]]
"""Each problem found, at its path (list positions and nested field names)."""


def parse_fields(raw: object, loc: ShapeLoc = (), depth: int = 1) -> tuple[tuple[FieldShape, ...], Problems]:
    """``fields`` as written in a tag map -> the fields and the problems found, each at its path below ``loc``.

    The path of a problem names the list position and, for a nested field, its name (``(1, "Step", "shape")``).
    """
    problems: Problems = []
    if not isinstance(raw, list | tuple):
        return (), [(loc, "fields is a list of field names (a nested field: {name: {fields: [...], shape: [...]}})")]
    if not raw:
        return (), [(loc, "fields lists the structure's field names; leave it out when unknown")]
    if depth > MAX_FIELD_DEPTH:
        return (), [(loc, f"fields nest at most {MAX_FIELD_DEPTH} levels deep")]
    out: list[FieldShape] = []
    seen: set[str] = set()
    for position, item in enumerate(raw):
        here = (*loc, position)
        if isinstance(item, str):
            name, spec = item, None
        elif isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item)), str):
            name, spec = next(iter(item.items()))
        else:
            problems.append((here, f"a field is a name or {{name: {{fields: [...], shape: [...]}}}}, not {item!r}"))
            continue
        if not name or name in seen:
            problems.append((here, f"field names must be non-empty and unique: {name!r}"))
        seen.add(name)
        if spec is None:
            out.append(FieldShape(name))
            continue
        nested = (*here, name)
        if not isinstance(spec, dict) or not spec or set(spec) - {"shape", "fields"}:
            problems.append((nested, "a nested field is described by `shape` (array) and/or `fields` (structure)"))
            continue
        shape: tuple[int, ...] | None = None
        if "shape" in spec:
            shape, shape_problems = parse_shape(spec["shape"], (*nested, "shape"))
            problems.extend(shape_problems)
        fields: tuple[FieldShape, ...] | None = None
        if "fields" in spec:
            fields, field_problems = parse_fields(spec["fields"], (*nested, "fields"), depth + 1)
            problems.extend(field_problems)
        out.append(FieldShape(name, shape, fields))
    return tuple(out), problems


def parse_shape(raw: object, loc: ShapeLoc = ()) -> tuple[tuple[int, ...], Problems]:
    """``shape`` as written -> the dimensions and the problems found."""
    if not isinstance(raw, list | tuple) or not all(isinstance(n, int) and not isinstance(n, bool) for n in raw):
        return (), [(loc, "shape is a list of lengths, one per dimension (0: any length)")]
    problems: Problems = []
    if not 1 <= len(raw) <= MAX_SHAPE_DIMENSIONS:
        problems.append((loc, f"shape needs 1 to {MAX_SHAPE_DIMENSIONS} dimensions, got {len(raw)}"))
    for position, size in enumerate(raw):
        if size < 0:
            problems.append(((*loc, position), f"a dimension is a length >= 0 (0: any length), not {size}"))
    return tuple(raw), problems


def fields_as_written(fields: Sequence[FieldShape]) -> list[Any]:
    """The fields in the tag-map form (also ``_meta``'s): a plain field as its name, a nested one as a mapping."""
    out: list[Any] = []
    for field in fields:
        if field.shape is None and field.fields is None:
            out.append(field.name)
            continue
        spec: dict[str, Any] = {}
        if field.shape is not None:
            spec["shape"] = list(field.shape)
        if field.fields is not None:
            spec["fields"] = fields_as_written(field.fields)
        out.append({field.name: spec})
    return out


def field_names(fields: Sequence[FieldShape]) -> tuple[str, ...]:
    return tuple(field.name for field in fields)


def _elements(value: object, shape: Sequence[int]) -> Iterator[object] | None:
    """The innermost elements of ``value`` if it has ``shape``; None if it does not."""
    if not shape:
        return None if isinstance(value, list) else iter((value,))
    if not isinstance(value, list) or (shape[0] and len(value) != shape[0]):
        return None
    parts = [_elements(item, shape[1:]) for item in value]
    if any(part is None for part in parts):
        return None
    return (element for part in parts if part is not None for element in part)


def _fits_fields(value: object, fields: Sequence[FieldShape]) -> bool:
    if not isinstance(value, dict) or len(value) != len(fields):
        return False
    for (key, item), field in zip(value.items(), fields, strict=True):
        if key != field.name:
            return False
        if (field.shape is not None or field.fields is not None) and not fits(item, field.shape, field.fields):
            return False
    return True


def fits(value: object, shape: Sequence[int] | None, fields: Sequence[FieldShape] | None) -> bool:
    """Whether ``value`` (as published) has the declared dimensions (0: any length), exactly the fields in order
    (nested ones checked to their depth), or, with both, is an array whose every element has the fields."""
    if shape is not None:
        elements = _elements(value, shape)
        if elements is None:
            return False
        return fields is None or all(_fits_fields(element, fields) for element in elements)
    if fields is not None:
        return _fits_fields(value, fields)
    return True
