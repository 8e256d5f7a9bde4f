"""The tag map's ``gateway.outputs`` and ``gateway.sparkplug`` fields."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.tagmap import GatewaySection
from gateway.tagmap.model import Output, SparkplugSection


def gateway(**fields: Any) -> GatewaySection:
    return GatewaySection.model_validate({"id": "gw-01", "enterprise": "acme", "site": "dunkirk", **fields})


def test_uns_json_is_the_default_output() -> None:
    assert gateway().outputs == (Output.UNS_JSON,)


def test_the_sparkplug_section_and_the_edge_node_id() -> None:
    section = SparkplugSection(group_id="Plant1")
    assert section.edge_node_id is None
    assert gateway(sparkplug={"group_id": "Plant1"}).sparkplug_edge_node_id == "gw-01"  # default: the gateway id
    assert gateway(sparkplug={"group_id": "P", "edge_node_id": "edge-7"}).sparkplug_edge_node_id == "edge-7"


@pytest.mark.parametrize("outputs", [["sparkplug"], ["uns-json", "sparkplug"]])
def test_sparkplug_output_alone_or_beside_uns_json(outputs: list[str]) -> None:
    section = gateway(outputs=outputs, sparkplug={"group_id": "Plant1"})
    assert Output.SPARKPLUG in section.outputs
    assert (Output.UNS_JSON in section.outputs) == (len(outputs) == 2)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"outputs": ["sparkplug"]}, "give sparkplug.group_id"),
        ({"outputs": ["uns-json", "uns-json"]}, "more than once"),
        ({"outputs": []}, "at least 1"),
        ({"outputs": ["opc-ua"]}, "uns-json"),
        ({"sparkplug": {"group_id": "a/b"}}, "group_id"),  # no '/' in an id
        ({"sparkplug": {"group_id": "G", "edge_node_id": "e#"}}, "edge_node_id"),
        ({"sparkplug": {"group_id": "G", "bd_seq": 1}}, "bd_seq"),  # unknown field
    ],
)
def test_invalid(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        gateway(**fields)
