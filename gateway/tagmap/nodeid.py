"""OPC UA node id strings, parsed once at load time: a pure parser the OPC UA source reuses.

Accepted forms (OPC UA Part 6, 5.3.1.10 string encoding)::

    i=2258                      numeric identifier (0..2**32-1)
    s=Coater01.Dryer.Zone03     string identifier
    g=72962b91-fa75-4ae6-8d28-b404dc7daf63
    b=M/RbKBsRVkePCePcx24oRA==  opaque (ByteString) identifier, base64
    ns=2;s=...                  with a namespace index
    nsu=urn:cellgate:sim;s=...  with a namespace URI (resolved to an index at every connect)

Without ``ns=``/``nsu=`` the namespace comes from the device (``namespace:``); see ``resolve_namespace``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal, TypeAlias

NodeIdKind: TypeAlias = Literal["i", "s", "g", "b"]

MAX_NAMESPACE_INDEX = 65535
MAX_NUMERIC_IDENTIFIER = 2**32 - 1

_GUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
# nsu=URI;k=... : the URI ends at the first ";<kind>=" (a literal ';' in a URI is escaped as %3B).
_NSU = re.compile(r"nsu=(?P<uri>.+?);(?P<rest>[isgb]=.*)", re.DOTALL)
_KINDS: Final[Mapping[str, NodeIdKind]] = {"i": "i", "s": "s", "g": "g", "b": "b"}
_FORMS = "i=<number>, s=<text>, g=<guid> or b=<base64>, optionally after ns=<index>; or nsu=<uri>;"


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedNodeId:
    """A node id as written in the tag map, checked but not yet bound to a server.

    At most one of ``namespace_uri`` / ``namespace_index`` is set. ``identifier`` is an int for ``kind="i"``;
    otherwise the text: the string id (``s``), the GUID (``g``) or the base64 of the opaque id (``b``).
    """

    namespace_uri: str | None = None
    namespace_index: int | None = None
    kind: NodeIdKind
    identifier: str | int

    @property
    def has_namespace(self) -> bool:
        return self.namespace_uri is not None or self.namespace_index is not None

    def __str__(self) -> str:
        body = f"{self.kind}={self.identifier}"
        if self.namespace_uri is not None:
            return f"nsu={self.namespace_uri};{body}"
        if self.namespace_index is not None:
            return f"ns={self.namespace_index};{body}"
        return body


def parse_node_id(text: str) -> ParsedNodeId:
    """Parse ``text`` (see the module docstring for the forms). Raises ValueError with a readable message."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"empty node id; expected {_FORMS}")
    namespace_uri: str | None = None
    namespace_index: int | None = None
    rest = text
    if text.startswith("nsu="):
        match = _NSU.fullmatch(text)
        if match is None:
            raise ValueError(f"node id {text!r}: expected nsu=<uri>; followed by {_FORMS.split(', optionally')[0]}")
        namespace_uri, rest = match["uri"], match["rest"]
    elif text.startswith("ns="):
        index_text, separator, rest = text[3:].partition(";")
        if not separator:
            raise ValueError(f"node id {text!r}: ns=<index> must be followed by ';' and the identifier")
        if not _small_number(index_text) or int(index_text) > MAX_NAMESPACE_INDEX:
            raise ValueError(f"node id {text!r}: namespace index {index_text!r} is not a number 0..65535")
        namespace_index = int(index_text)
    kind = _KINDS.get(rest[:1])
    equals, identifier_text = rest[1:2], rest[2:]
    if equals != "=" or kind is None:
        raise ValueError(f"node id {text!r}: expected {_FORMS}")
    identifier = _identifier(text, kind, identifier_text)
    return ParsedNodeId(namespace_uri=namespace_uri, namespace_index=namespace_index, kind=kind, identifier=identifier)


def _small_number(text: str) -> bool:
    """ASCII digits short enough for int(): Python refuses to convert more than 4300 digits (and ids need 10)."""
    return text.isascii() and text.isdigit() and len(text.lstrip("0")) <= 20


def _identifier(text: str, kind: str, value: str) -> str | int:
    if not value:
        raise ValueError(f"node id {text!r}: empty {kind}= identifier")
    if kind == "i":
        if not _small_number(value) or int(value) > MAX_NUMERIC_IDENTIFIER:
            raise ValueError(f"node id {text!r}: i= needs a number 0..{MAX_NUMERIC_IDENTIFIER}")
        return int(value)
    if kind == "g" and not _GUID.fullmatch(value):
        raise ValueError(f"node id {text!r}: g= needs a GUID like 72962b91-fa75-4ae6-8d28-b404dc7daf63")
    if kind == "b":
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"node id {text!r}: b= needs base64 text") from None
    return value


def resolve_namespace(node_id: ParsedNodeId, device_namespace_uri: str | None) -> ParsedNodeId:
    """Give a node id without ``ns=``/``nsu=`` its namespace, following the tag-map rules.

    The device's ``namespace`` URI applies when set; otherwise ``i=`` ids mean namespace 0 (the standard OPC UA
    nodes) and any other kind is an error (ValueError), because a string/GUID/opaque id in namespace 0 is
    almost always a forgotten ``ns=``.
    """
    if node_id.has_namespace:
        return node_id
    if device_namespace_uri is not None:
        return replace(node_id, namespace_uri=device_namespace_uri)
    if node_id.kind == "i":
        return replace(node_id, namespace_index=0)
    raise ValueError(
        f"node id {str(node_id)!r} has no namespace: write ns=<index>; or nsu=<uri>; or set the device's `namespace`"
    )
