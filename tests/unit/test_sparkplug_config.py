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


def test_check_names_the_sparkplug_edge_node() -> None:
    from gateway.assembly import describe_plant
    from gateway.tagmap.loader import load_plant_from_text

    text = """
gateway: {id: edge-1, enterprise: acme, site: dunkirk, outputs: [uns-json, sparkplug],
          sparkplug: {group_id: Cells, primary_host: scada}}
mqtt: {url: "mqtt://127.0.0.1:1883"}
devices:
  - {name: stacker-01, area: a, line: l, protocol: modbus, host: 127.0.0.1, port: 5022,
     tags: [{name: hb, table: input, address: 600, type: uint32}]}
"""
    summary = describe_plant(load_plant_from_text(text, environ={})).splitlines()
    assert summary[2] == (
        "outputs uns-json, sparkplug: Sparkplug B edge node spBv1.0/Cells/+/edge-1, waits for primary host scada"
    )
    plain = describe_plant(load_plant_from_text(text.replace(", outputs: [uns-json, sparkplug]", ""), environ={}))
    assert "Sparkplug" not in plain
