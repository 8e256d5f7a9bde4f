"""YAML with positions: parse once into plain data, keep the node tree to find FILE:LINE:COL of any path.

PyYAML composes a node tree whose nodes carry marks (0-based line/column); we build the plain Python data
ourselves from that tree (scalars through PyYAML's SafeConstructor, so types resolve exactly as in
``yaml.safe_load``) because ``safe_load`` silently keeps the last of two duplicate keys. Positions are looked
up lazily, only for paths that have a problem, so a large file costs no extra memory per value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gateway.schema import quoted
from gateway.tagmap.issues import Loc, format_loc

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml (C) when available

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MAP_TAG = "tag:yaml.org,2002:map"
# YAML 1.1 reads 010 as octal 8 and 00001 as 1: a Modicon reference written without quotes silently changes.
_LEADING_ZERO_INT = re.compile(r"[-+]?0[0-9_]+")


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column in the YAML text."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class YamlProblem:
    position: Position
    path: str
    message: str


class YamlSyntaxError(Exception):
    """The text is not valid YAML; carries the 1-based position and a readable message."""

    def __init__(self, position: Position, message: str) -> None:
        super().__init__(f"{position.line}:{position.column}: {message}")
        self.position = position
        self.message = message


def _position(node: Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


@dataclass(slots=True)
class YamlDocument:
    """The plain data of a YAML text, its node tree, and problems found while building the data."""

    data: Any
    root: Node | None
    problems: list[YamlProblem] = field(default_factory=list)

    def locate(self, loc: Loc, *, at_key: bool = False) -> tuple[Position, Loc]:
        """Position of the node at ``loc`` and the loc as written.

        Walks as far as the path exists: a missing field gives the mapping that lacks it. ``at_key`` gives the
        key's position (unknown keys). A ``0`` index into a mapping is skipped: that is a single mapping written
        where a list is accepted (``repeat:``), and it is dropped from the returned loc too.
        """
        node = self.root
        if node is None:
            return Position(1, 1), loc
        written: list[str | int] = []
        for depth, part in enumerate(loc):
            last = depth == len(loc) - 1
            if isinstance(node, MappingNode):
                if isinstance(part, int):
                    if part == 0:
                        continue
                    written.extend(loc[depth:])
                    break
                pair = _find_key(node, part)
                if pair is None:
                    written.extend(loc[depth:])
                    break
                written.append(part)
                key_node, value_node = pair
                if last and at_key:
                    return _position(key_node), tuple(written)
                node = value_node
            elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
                written.append(part)
                node = node.value[part]
            else:
                written.extend(loc[depth:])
                break
        return _position(node), tuple(written)


def _find_key(node: MappingNode, key: str | int) -> tuple[Node, Node] | None:
    wanted = str(key)
    merged: list[Node] = []
    for key_node, value_node in node.value:
        if key_node.tag == _MERGE_TAG:
            merged.append(value_node)
        elif isinstance(key_node, ScalarNode) and key_node.value == wanted:
            return key_node, value_node
    for source in merged:  # `<<: *anchor` or `<<: [*a, *b]`; earlier sources win, as in PyYAML
        for candidate in source.value if isinstance(source, SequenceNode) else [source]:
            if isinstance(candidate, MappingNode):
                found = _find_key(candidate, key)
                if found is not None:
                    return found
    return None


def _friendly(problem: str, text_at_mark: str) -> str:
    """PyYAML's and libyaml's messages, in the words an integrator needs."""
    if text_at_mark == "\t" or "tab" in problem:
        return "tab character: YAML indentation must use spaces"
    if "mapping values are not allowed" in problem:
        return "unexpected ':' here: check the indentation of this line, or quote a value that contains ': '"
    if (
        "did not find expected key" in problem
        or "expected <block end>" in problem
        or "did not find expected '-' indicator" in problem
    ):
        return "bad indentation: this line does not line up with the lines above it"
    if "could not find expected ':'" in problem:
        return "expected 'key: value' here (missing ':' or bad indentation)"
    return problem


def _check_encodable(text: str) -> None:
    """A lone surrogate (only possible in text built in Python, never in a UTF-8 file) is not YAML text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        before = text[: exc.start]
        position = Position(before.count("\n") + 1, exc.start - (before.rfind("\n") + 1) + 1)
        raise YamlSyntaxError(
            position, f"character #x{ord(text[exc.start]):04x} is not allowed in YAML text"
        ) from None


def parse_yaml(text: str) -> YamlDocument:
    """Parse one YAML document. Raises YamlSyntaxError; duplicate keys etc. are collected as problems."""
    try:
        root = _compose(text)
    except YamlSyntaxError as exc:
        raise YamlSyntaxError(_within_text(text, exc.position), exc.message) from None
    document = YamlDocument(data=None, root=root)
    if root is not None:
        builder = _Builder(document.problems)
        document.data = builder.build(root, ())
    return document


_YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _within_text(text: str, position: Position) -> Position:
    """libyaml reports "end of stream" errors on the line after a last line without a newline, a line no editor
    shows: point at the end of the last line instead."""
    breaks = list(_YAML_LINE_BREAK.finditer(text))
    if position.line <= len(breaks) + 1:
        return position
    last_line_start = breaks[-1].end() if breaks else 0
    return Position(len(breaks) + 1, len(text) - last_line_start + 1)


def _compose(text: str) -> Node | None:
    _check_encodable(text)
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is None:
            raise YamlSyntaxError(Position(1, 1), str(exc)) from None
        lines = text.splitlines()
        line_text = lines[mark.line] if mark.line < len(lines) else ""
        at_mark = line_text[mark.column : mark.column + 1]
        message = _friendly(exc.problem or str(exc), at_mark)
        position = Position(mark.line + 1, mark.column + 1)
        if message.startswith("tab character") and "\t" in line_text and at_mark != "\t":
            position = Position(mark.line + 1, line_text.index("\t") + 1)
        elif exc.context and exc.context_mark is not None and exc.problem_mark is not None:
            context_at = f"{exc.context_mark.line + 1}:{exc.context_mark.column + 1}"
            if message.startswith("bad indentation"):
                message = f"{message} (the enclosing block starts at {context_at})"
            elif not message.startswith("tab character"):
                message = f"{message} ({exc.context} at {context_at})"
        raise YamlSyntaxError(position, message) from None
    except yaml.reader.ReaderError as exc:  # a control character or other non-printable in the text
        before = text[: exc.position]
        position = Position(before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1)
        character = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise YamlSyntaxError(position, f"character #x{ord(character):04x} is not allowed in YAML text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "mark", None)
        position = Position(mark.line + 1, mark.column + 1) if mark is not None else Position(1, 1)
        raise YamlSyntaxError(position, str(getattr(exc, "problem", None) or exc)) from None


def _scalar_problem(node: ScalarNode, exc: Exception) -> str:
    kind = node.tag.rsplit(":", 1)[-1]
    if kind == "int" and "digits" in str(exc):
        return f"a number with {len(node.value):,} digits is too long"
    shown = node.value if len(node.value) <= 40 else f"{node.value[:37]}..."
    return f"{shown!r} is not a valid {kind}"


class _Builder:
    """Builds plain data from nodes, reporting duplicate keys, unsupported tags and octal-looking numbers."""

    def __init__(self, problems: list[YamlProblem]) -> None:
        self._problems = problems
        self._constructor = yaml.constructor.SafeConstructor()
        self._done: dict[int, Any] = {}  # aliases: build each anchored collection once
        self._building: set[int] = set()

    def _problem(self, node: Node, loc: Loc, message: str) -> None:
        self._problems.append(YamlProblem(_position(node), format_loc(loc), message))

    def build(self, node: Node, loc: Loc) -> Any:
        if isinstance(node, ScalarNode):
            return self._scalar(node, loc)
        key = id(node)
        if key in self._done:
            return self._done[key]
        if key in self._building:
            self._problem(node, loc, "recursive alias (an anchor that contains itself)")
            return None
        if node.tag not in (_SEQ_TAG, _MAP_TAG):
            self._problem(node, loc, f"unsupported YAML tag {node.tag!r}")
            return None
        self._building.add(key)
        try:
            if isinstance(node, SequenceNode):
                value: Any = [self.build(item, (*loc, index)) for index, item in enumerate(node.value)]
            else:
                assert isinstance(node, MappingNode)
                value = self._mapping(node, loc)
        finally:
            self._building.discard(key)
        self._done[key] = value
        return value

    def _scalar(self, node: ScalarNode, loc: Loc) -> Any:
        if node.tag == _STR_TAG:
            return node.value
        if node.tag == _INT_TAG and not node.style and _LEADING_ZERO_INT.fullmatch(node.value):
            self._problem(
                node,
                loc,
                f'{node.value} has a leading zero, which YAML reads as an octal number; quote it ("{node.value}") '
                "if it is a Modicon reference, or drop the zero",
            )
        try:
            return self._constructor.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            self._problem(node, loc, f"unsupported YAML value: {exc.problem}")
            return None
        except (ValueError, LookupError) as exc:
            # PyYAML lets the converters' own errors through: an explicit tag on text that is not of that type
            # (`!!int abc`, `!!bool maybe`), an impossible date (2024-02-30), an integer with more digits than
            # Python converts (4300).
            self._problem(node, loc, _scalar_problem(node, exc))
            return None

    def _mapping(self, node: MappingNode, loc: Loc) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        first_keys: dict[Any, Node] = {}
        merges: list[tuple[Node, Loc]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append((value_node, loc))
                continue
            if not isinstance(key_node, ScalarNode):
                self._problem(key_node, loc, "a key must be plain text, not a list or mapping")
                continue
            key = self._scalar(key_node, loc)
            if key in first_keys:
                first = _position(first_keys[key])
                message = f"duplicate key {quoted(str(key))} (first at {first.line}:{first.column})"
                self._problem(key_node, (*loc, key), message)
                continue
            first_keys[key] = key_node
            result[key] = self.build(value_node, (*loc, key))
        for merge_node, merge_loc in merges:
            sources = merge_node.value if isinstance(merge_node, SequenceNode) else [merge_node]
            for source in sources:
                merged = self.build(source, merge_loc)
                if not isinstance(merged, dict):
                    self._problem(source, merge_loc, "'<<' merges mappings only")
                    continue
                for key, value in merged.items():
                    result.setdefault(key, value)
        return result
