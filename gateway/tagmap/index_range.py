"""The ``index:`` of an OPC UA tag: which element(s) of an array value to publish (pure).

Syntax after OPC UA's NumericRange (Part 4, 7.27): one item per dimension, comma-separated, each an index ``5``
or an inclusive range ``2:7``. Unlike NumericRange, an item that is a single index takes that element and drops
the dimension, so ``index: 5`` on a Double array publishes one number and ``index: '1,0:3'`` on a matrix the
first four elements of row 1 as an array; ranges keep their dimension (and the shape of what they hold).
"""

from __future__ import annotations

import re
from typing import Any, Final, TypeAlias

IndexItem: TypeAlias = int | tuple[int, int]
"""One dimension: an index, or an inclusive (first, last) range."""

MAX_INDEX: Final = 2**31 - 1
_ITEM: Final = re.compile(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?")

INDEX_OUT_OF_RANGE: Final = "index_out_of_range"
"""Status of a reading whose value has fewer elements (or dimensions) than the tag's ``index`` asks for."""


def parse_index_range(text: str) -> tuple[IndexItem, ...]:
    """``'5'`` -> (5,), ``'2:7'`` -> ((2, 7),), ``'1,0:3'`` -> (1, (0, 3)). Raises ValueError with the reason."""
    items: list[IndexItem] = []
    for part in str(text).split(","):
        match = _ITEM.fullmatch(part)
        if match is None:
            raise ValueError(f"index {text!r}: expected N or FIRST:LAST per dimension, comma-separated (e.g. 5, "
                             "0:9 or 1,0:3)")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else None
        if first > MAX_INDEX or (last is not None and last > MAX_INDEX):
            raise ValueError(f"index {text!r}: at most {MAX_INDEX}")
        if last is None:
            items.append(first)
        elif last <= first:
            raise ValueError(f"index {text!r}: in FIRST:LAST, LAST must be greater than FIRST")
        else:
            items.append((first, last))
    return tuple(items)


def select(value: Any, items: tuple[IndexItem, ...]) -> tuple[Any, bool]:
    """(the selected part of ``value``, True), or (None, False) when ``value`` is not that deep or long."""
    if not items:
        return value, True
    if not isinstance(value, list):
        return None, False
    head, rest = items[0], items[1:]
    if isinstance(head, int):
        if head >= len(value):
            return None, False
        return select(value[head], rest)
    first, last = head
    if last >= len(value):
        return None, False
    out = []
    for element in value[first:last + 1]:
        selected, ok = select(element, rest)
        if not ok:
            return None, False
        out.append(selected)
    return out, True
