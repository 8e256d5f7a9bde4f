"""Interoperability: the Sparkplug B encoder's messages, decoded by Eclipse Tahu's sparkplug-payload (npm).

The Python side makes the messages (gateway.encoders.sparkplug, protobuf from the specification's .proto); the
Node side (sparkplug_decode.js, Tahu's own decoder) reads them back, acting as a host that learns datatypes by
alias from the births. `make test` installs Node.js and runs `npm ci` in tests/interop.

Edge-node assertions of Sparkplug 3.0 checked here (specification ids):
- tck-id-topic-structure: ``spBv1.0/{group_id}/{message_type}/{edge_node_id}[/{device_id}]``; device id only on
  DBIRTH/DDATA/DDEATH.
- tck-id-topics-nbirth-seq-num: NBIRTH seq is 0.
- tck-id-topics-nbirth-bdseq-included / tck-id-payloads-nbirth-bdseq: NBIRTH has an Int64 ``bdSeq`` metric ...
- tck-id-topics-ndeath-bdseq / tck-id-payloads-ndeath-will-message-bdseq: ... equal to the NDEATH will's bdSeq.
- tck-id-payloads-ndeath-seq: NDEATH carries no seq.
- tck-id-payloads-nbirth-rebirth-req: NBIRTH has ``Node Control/Rebirth`` (Boolean, false).
- tck-id-payloads-sequence-num-incrementing / -zero-nbirth: seq +1 per message of the edge node across
  DBIRTH/DDATA/DDEATH, 255 -> 0.
- tck-id-payloads-dbirth-seq / -ddata-seq / -ddeath-seq: each carries the next seq.
- tck-id-payloads-metric-datatype-req (births): every metric has name, datatype and alias in DBIRTH.
- tck-id-payloads-metric-datatype-not-req / tck-id-payloads-alias-data-cmd-requirement: DDATA metrics carry the
  alias only, without name or datatype.
- tck-id-payloads-alias-uniqueness: aliases are unique within the edge node (across devices).
- tck-id-payloads-timestamp-in-UTC / tck-id-payloads-metric-timestamp-in-UTC: milliseconds since the epoch.
- tck-id-payloads-propertyset-keys-array-size / -values-array-size: every PropertySet has as many keys as values.
- tck-id-operational-behavior-edge-node-birth-sequence-wrapping (bdSeq 0-255, +1 per connect).
- Rebirth: an NCMD ``Node Control/Rebirth`` = true, encoded by Tahu, is recognised; false or another node's is not.
- Store-and-forward: a replayed DDATA has ``is_historical`` on every metric (tck-id-payloads-metric-historical).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import pytest

from gateway.encoders.base import Message
from gateway.encoders.sparkplug import QUALITY_CODES, SparkplugDeviceEncoder, SparkplugEdgeNode, parse_command
from gateway.schema import Quality, Sample, TagMeta
from tests.interop.sparkplug_tahu import TAHU_AVAILABLE, TAHU_MISSING, tahu

pytestmark = pytest.mark.skipif(not TAHU_AVAILABLE, reason=TAHU_MISSING)

T0 = 1_780_000_000.25  # epoch seconds




def decode(messages: Iterable[Message]) -> list[dict[str, Any]]:
    return tahu({"topic": m.topic, "payload": base64.b64encode(m.payload).decode()} for m in messages)


def wire(node: SparkplugEdgeNode, messages: Iterable[Message]) -> list[Message]:
    """``messages`` numbered as the MQTT connection numbers them when they are handed over, in this order."""
    return [Message(m.topic, node.stamp(m.topic, m.payload), m.retain) for m in messages]


BAD, UNCERTAIN, GOOD = QUALITY_CODES[Quality.BAD], QUALITY_CODES[Quality.UNCERTAIN], QUALITY_CODES[Quality.GOOD]


def catalogue() -> list[TagMeta]:
    return [
        TagMeta(tag="Line/Speed", type="float32", unit="m/min", min=0.0, max=100.0, description="web speed"),
        TagMeta(tag="Dryer/Running", type="bool"),
        TagMeta(tag="Recipe", type="string"),
        TagMeta(tag="Count", type="uint32", unit="sheets"),
    ]


def make_node(bd_seq: int = 0) -> tuple[SparkplugEdgeNode, SparkplugDeviceEncoder, SparkplugDeviceEncoder]:
    node = SparkplugEdgeNode(group_id="Plant1", edge_node_id="gw-01", bd_seq=bd_seq)
    coater = SparkplugDeviceEncoder(node=node, device="Coater01", catalogue=catalogue(), alias_base=1)
    stacker = SparkplugDeviceEncoder(node=node, device="Stacker01", catalogue=catalogue()[:2], alias_base=5)
    return node, coater, stacker


def properties(metric: dict[str, Any]) -> dict[str, Any]:
    return {key: entry["value"] for key, entry in metric.get("properties", {}).items()}


def test_a_session_decodes_with_tahu_and_keeps_the_edge_node_rules() -> None:
    node, coater, stacker = make_node(bd_seq=7)
    samples = [
        Sample("Coater01", "Line/Speed", 42.5, Quality.GOOD, T0),
        Sample("Coater01", "Dryer/Running", True, Quality.GOOD, T0),
        Sample("Coater01", "Recipe", "NMC811-A", Quality.UNCERTAIN, T0, "stale"),
        Sample("Coater01", "Count", None, Quality.BAD, T0, "comm_failure"),
    ]
    session = [
        node.will(),
        node.birth(T0),
        coater.status(connected=True, since=T0, error=None, gateway=None),
        stacker.status(connected=True, since=T0, error=None, gateway=None),
        *coater.encode(samples, T0 + 1),
        *stacker.encode([Sample("Stacker01", "Dryer/Running", False, Quality.GOOD, T0 + 1)], T0 + 1),
        stacker.status(connected=False, since=T0 + 2, error="timeout", gateway=None),
        coater.status(connected=True, since=T0 + 3, error=None, gateway=None),  # rebirth: last values
    ]
    decoded = decode(wire(node, session))
    topics = [entry["topic"] for entry in decoded]
    assert topics == [
        "spBv1.0/Plant1/NDEATH/gw-01",
        "spBv1.0/Plant1/NBIRTH/gw-01",
        "spBv1.0/Plant1/DBIRTH/gw-01/Coater01",
        "spBv1.0/Plant1/DBIRTH/gw-01/Stacker01",
        "spBv1.0/Plant1/DDATA/gw-01/Coater01",
        "spBv1.0/Plant1/DDATA/gw-01/Stacker01",
        "spBv1.0/Plant1/DDEATH/gw-01/Stacker01",
        "spBv1.0/Plant1/DBIRTH/gw-01/Coater01",
    ]
    assert all(not message.retain for message in session)
    payloads = [entry["decoded"] for entry in decoded]
    ndeath, nbirth, dbirth, _, ddata, _, ddeath, rebirth = payloads

    # NDEATH: only bdSeq, no seq; NBIRTH: seq 0, the same bdSeq, Node Control/Rebirth false.
    assert "seq" not in ndeath
    assert [(m["name"], m["type"], m["value"]) for m in ndeath["metrics"]] == [("bdSeq", "Int64", 7)]
    assert nbirth["seq"] == 0
    assert nbirth["timestamp"] == int(T0 * 1000)
    births = {m["name"]: (m["type"], m["value"]) for m in nbirth["metrics"]}
    assert births == {"bdSeq": ("Int64", 7), "Node Control/Rebirth": ("Boolean", False)}

    # seq: +1 per message across DBIRTH/DDATA/DDEATH.
    assert [payload["seq"] for payload in payloads[1:]] == [0, 1, 2, 3, 4, 5, 6]

    # DBIRTH: every metric with name, alias, datatype and properties; null before a first value.
    metrics = {m["name"]: m for m in dbirth["metrics"]}
    assert list(metrics) == ["Line/Speed", "Dryer/Running", "Recipe", "Count"]
    assert [m["alias"] for m in metrics.values()] == [1, 2, 3, 4]
    assert [m["type"] for m in metrics.values()] == ["Double", "Boolean", "String", "Double"]
    assert all(m["value"] is None for m in metrics.values())
    assert properties(metrics["Line/Speed"]) == {
        "engUnit": "m/min", "Documentation": "web speed", "engLow": 0.0, "engHigh": 100.0, "Quality": BAD,
    }
    assert properties(metrics["Count"]) == {"engUnit": "sheets", "Quality": BAD}

    # DDATA: alias only (no name, no datatype on the wire), value; Quality (as Ignition reads it) when not good.
    assert ddata["rawDatatypes"] == [None, None, None, None]
    assert all("name" not in m for m in ddata["metrics"])
    assert [(m["alias"], m["value"], properties(m).get("Quality")) for m in ddata["metrics"]] == [
        (1, 42.5, None), (2, True, None), (3, "NMC811-A", UNCERTAIN), (4, None, BAD),
    ]
    assert all(m["timestamp"] == int(T0 * 1000) for m in ddata["metrics"])

    # DDEATH: no metrics; the rebirth DBIRTH carries the last values.
    assert ddeath.get("metrics", []) == []
    assert [m["value"] for m in rebirth["metrics"]] == [42.5, True, "NMC811-A", None]
    assert properties(rebirth["metrics"][0])["Quality"] == GOOD

    # Aliases unique per edge node, across devices.
    aliases = [m["alias"] for payload in (dbirth, payloads[3]) for m in payload["metrics"]]
    assert len(aliases) == len(set(aliases))


def test_seq_wraps_from_255_to_0_and_nbirth_restarts_it() -> None:
    node, coater, _ = make_node()
    sample = [Sample("Coater01", "Line/Speed", 1.0, Quality.GOOD, T0)]
    messages = [node.birth(T0), coater.birth(T0)]
    messages += [coater.encode(sample, T0)[0] for _ in range(256)]
    messages.append(node.birth(T0))
    seqs = [entry["decoded"]["seq"] for entry in decode(wire(node, messages))]
    assert seqs[:3] == [0, 1, 2]
    assert seqs[255:259] == [255, 0, 1, 0]


def test_bdseq_counts_connections_and_wraps() -> None:
    node, _, _ = make_node(bd_seq=254)
    seen = []
    for _ in range(3):
        seen.append(node.will())
        seen.append(node.birth(T0))
        node.next_connection()
    decoded = [entry["decoded"]["metrics"][0] for entry in decode(seen)]
    assert [(m["name"], m["value"]) for m in decoded] == [("bdSeq", value) for value in (254, 254, 255, 255, 0, 0)]


def test_rebirth_command_from_a_host_is_recognised() -> None:
    node, _, _ = make_node()
    commands = tahu(
        {"encode": {"timestamp": 1, "metrics": [{"name": "Node Control/Rebirth", "type": "Boolean", "value": value}]}}
        for value in (True, False)
    )
    rebirth, no_rebirth = (base64.b64decode(entry["payload"]) for entry in commands)
    command = parse_command(node, "spBv1.0/Plant1/NCMD/gw-01", rebirth)
    assert command is not None and command.rebirth and not command.writes
    command = parse_command(node, "spBv1.0/Plant1/NCMD/gw-01", no_rebirth)
    assert command is not None and not command.rebirth
    assert parse_command(node, "spBv1.0/Plant1/NCMD/other-node", rebirth) is None
    command = parse_command(node, "spBv1.0/Plant1/NCMD/gw-01", b"\xff\xff not protobuf")
    assert command is not None and command.malformed and not command.rebirth
    # A Rebirth sent to a device is a write to a device metric: refused, never a rebirth.
    command = parse_command(node, "spBv1.0/Plant1/DCMD/gw-01/Coater01", rebirth)
    assert command is not None and not command.rebirth
    assert command.device == "Coater01" and command.writes == ("Node Control/Rebirth",)


def test_replayed_data_is_historical() -> None:
    node, coater, _ = make_node()
    birth = coater.birth(T0)
    (message,) = coater.encode([Sample("Coater01", "Line/Speed", 3.0, Quality.GOOD, T0)], T0)
    spooled = node.historical(message.topic, message.payload)
    assert spooled is not None
    # Births and deaths are not spooled: the births of the next connection say the state.
    assert node.historical(birth.topic, birth.payload) is None
    assert node.historical(coater.ddeath_topic, coater.death(T0).payload) is None
    replay = Message(message.topic, spooled)
    _, live, replayed = (entry["decoded"] for entry in decode(wire(node, [birth, message, replay])))
    assert replayed["seq"] == live["seq"] + 1  # numbered when handed over, never with the seq it first had
    assert "isHistorical" not in live["metrics"][0] or live["metrics"][0]["isHistorical"] is False
    assert replayed["metrics"][0]["isHistorical"] is True
    assert replayed["metrics"][0]["value"] == 3.0
    with pytest.raises(ValueError, match="Sparkplug"):
        node.historical("spBv1.0/Plant1/DDATA/gw-01/Coater01", b"\xff\xff not protobuf")
    with pytest.raises(ValueError, match="Sparkplug"):
        node.historical("acme/site/area/line/Coater01/_batch", message.payload)


def test_values_of_every_kind_decode_with_their_birth_datatype() -> None:
    node = SparkplugEdgeNode(group_id="Plant1", edge_node_id="gw-01", clock=lambda: T0)
    metas = [
        TagMeta(tag="Int", type="int16"),
        TagMeta(tag="Big", type="uint64"),
        TagMeta(tag="Flag", type="bool"),
        TagMeta(tag="Profile", type="variant"),
        TagMeta(tag="Text", type="string"),
    ]
    device = SparkplugDeviceEncoder(node=node, device="Calender01", catalogue=metas, alias_base=100)
    samples = [
        Sample("Calender01", "Int", 7, Quality.GOOD, T0),  # an int on a numeric tag: sent as Double
        Sample("Calender01", "Big", 2**40, Quality.GOOD, T0),
        Sample("Calender01", "Flag", False, Quality.GOOD, T0),
        Sample("Calender01", "Profile", [1.5, 2.5], Quality.GOOD, T0),  # an OPC UA variant: String holding JSON
        Sample("Calender01", "Text", "ok", Quality.GOOD, T0),
    ]
    status = node.gateway_status(online=True)
    birth, data = device.birth(T0), device.encode(samples, T0)[0]
    nbirth, dbirth, ddata = (entry["decoded"] for entry in decode([status, birth, data]))
    assert status.topic == "spBv1.0/Plant1/NBIRTH/gw-01"
    assert nbirth["timestamp"] == int(T0 * 1000)
    assert node.gateway_status(online=False) == node.will()
    assert [m["type"] for m in dbirth["metrics"]] == ["Double", "Double", "Boolean", "String", "String"]
    assert [m["alias"] for m in dbirth["metrics"]] == [100, 101, 102, 103, 104]
    assert [m["value"] for m in ddata["metrics"]] == [7.0, float(2**40), False, "[1.5,2.5]", "ok"]


def test_ddata_of_every_tag_at_once_decodes_as_any_other() -> None:
    """A poll of every tag with good floats takes the prebuilt payload; a part of them, or one bad value, does not.
    Tahu reads the same values, aliases and timestamps either way, and nothing of one DDATA leaks into the next."""
    node = SparkplugEdgeNode(group_id="Plant1", edge_node_id="gw-01")
    metas = [TagMeta(tag=f"ch{n}/voltage", type="float32", unit="V") for n in range(3)]
    device = SparkplugDeviceEncoder(node=node, device="Rack01", catalogue=metas, alias_base=10)

    def poll(values: list[float | None], ts: float, quality: Quality = Quality.GOOD) -> list[Sample]:
        return [Sample("Rack01", f"ch{n}/voltage", v, quality if v is None else Quality.GOOD, ts)
                for n, v in enumerate(values)]

    messages = [device.birth(T0)]
    messages += device.encode(poll([3.1, 3.2, 3.3], T0 + 1), T0 + 1)  # every tag: the prebuilt payload
    messages += device.encode(poll([4.1, None, 4.3], T0 + 2, Quality.BAD), T0 + 2)  # a bad value: general path
    messages += device.encode(list(reversed(poll([5.1, 5.2, 5.3], T0 + 3))), T0 + 3)  # any order
    messages += device.encode(poll([6.1, 6.2, 6.3], T0 + 4)[:2], T0 + 4)  # a part: general path
    duplicated = poll([7.1, 7.2, 7.3], T0 + 5)
    messages += device.encode([duplicated[0], duplicated[0], duplicated[2]], T0 + 5)  # a tag twice: general path
    mixed = poll([8.1, 8.2, 8.3], T0 + 6)
    mixed[1] = mixed[1]._replace(ts=T0 + 6.5)  # read by another request of the poll: its own timestamp
    messages += device.encode(mixed, T0 + 7)  # every tag, two timestamps: the prebuilt payload
    decoded = [entry["decoded"] for entry in decode(wire(node, messages))][1:]
    rows = [
        [(m["alias"], m["value"], m["timestamp"], properties(m).get("Quality")) for m in payload["metrics"]]
        for payload in decoded
    ]
    ms = [int((T0 + k) * 1000) for k in range(7)]
    assert rows == [
        [(10, 3.1, ms[1], None), (11, 3.2, ms[1], None), (12, 3.3, ms[1], None)],
        [(10, 4.1, ms[2], None), (11, None, ms[2], BAD), (12, 4.3, ms[2], None)],
        [(10, 5.1, ms[3], None), (11, 5.2, ms[3], None), (12, 5.3, ms[3], None)],
        [(10, 6.1, ms[4], None), (11, 6.2, ms[4], None)],
        [(10, 7.1, ms[5], None), (10, 7.1, ms[5], None), (12, 7.3, ms[5], None)],
        [(10, 8.1, ms[6], None), (11, 8.2, int((T0 + 6.5) * 1000), None), (12, 8.3, ms[6], None)],
    ]
    assert [payload["seq"] for payload in decoded] == [2, 3, 4, 5, 6, 7]  # after the DBIRTH's 1


def test_the_dbirth_after_polls_of_every_tag_carries_the_last_value_of_each_tag() -> None:
    """The prebuilt payload's polls keep their samples as the last values as a whole: a later partial poll, samples
    while the device is dead and a reload's ``adopt`` each start from them, and the next DBIRTH carries them."""
    node = SparkplugEdgeNode(group_id="Plant1", edge_node_id="gw-01")
    metas = [TagMeta(tag=f"ch{n}/voltage", type="float32", unit="V") for n in range(3)]
    device = SparkplugDeviceEncoder(node=node, device="Rack01", catalogue=metas, alias_base=10)

    def sample(n: int, value: float | None, ts: float) -> Sample:
        return Sample("Rack01", f"ch{n}/voltage", value, Quality.GOOD if value is not None else Quality.BAD, ts)

    messages = [device.birth(T0)]
    messages += device.encode([sample(n, 1.0 + n, T0 + 1) for n in range(3)], T0 + 1)  # every tag
    messages += device.encode([sample(2, 2.2, T0 + 2)], T0 + 2)  # a part of them
    messages.append(device.birth(T0 + 3))  # a Rebirth
    messages += device.encode([sample(n, 3.0 + n, T0 + 4) for n in (2, 0, 1)], T0 + 4)  # every tag, another order
    messages.append(device.death(T0 + 5))
    device.encode([sample(0, None, T0 + 6)], T0 + 6)  # while dead: only the last values
    reloaded = SparkplugDeviceEncoder(node=node, device="Rack01", catalogue=metas, alias_base=10)
    reloaded.adopt(device)
    messages.append(reloaded.birth(T0 + 7))
    decoded = [entry["decoded"] for entry in decode(wire(node, messages))]
    rebirth, last_birth = decoded[3], decoded[-1]
    assert [(m["value"], m["timestamp"]) for m in rebirth["metrics"]] == [
        (1.0, int((T0 + 1) * 1000)), (2.0, int((T0 + 1) * 1000)), (2.2, int((T0 + 2) * 1000))
    ]
    assert [m["value"] for m in last_birth["metrics"]] == [None, 4.0, 3.0 + 2]
    assert [properties(m)["Quality"] for m in last_birth["metrics"]] == [BAD, GOOD, GOOD]
