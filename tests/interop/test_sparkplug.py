"""Interoperability: the Sparkplug B encoder's messages, decoded by Eclipse Tahu's sparkplug-payload (npm).

The Python side makes the messages (gateway.encoders.sparkplug, protobuf from the specification's .proto); the
Node side (sparkplug_decode.js, Tahu's own decoder) reads them back, acting as a host that learns datatypes by
alias from the births. `make test` installs Node.js and runs `npm ci` in tests/interop.

``EDGE_NODE_ASSERTIONS`` below lists every assertion of Sparkplug 3.0 (tck-id-...) that concerns an edge node, each
with the tests that check it, or why it does not apply, or where Cellgate deviates (README "Sparkplug B");
``test_every_edge_node_assertion_names_tests_that_exist`` keeps the references true. Assertions about host
applications, their STATE messages and MQTT servers are not listed.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from gateway.encoders import sparkplug_b_pb2 as pb
from gateway.encoders.base import Message
from gateway.encoders.sparkplug import QUALITY_CODES, SparkplugDeviceEncoder, SparkplugEdgeNode, parse_command
from gateway.schema import Quality, Sample, TagMeta
from tests.interop.sparkplug_tahu import TAHU_AVAILABLE, TAHU_MISSING, tahu

pytestmark = pytest.mark.skipif(not TAHU_AVAILABLE, reason=TAHU_MISSING)

T0 = 1_780_000_000.25  # epoch seconds




# Where each edge-node assertion is checked. HostView (tests/interop/sparkplug_tahu.py) checks its rules on every
# message of the e2e tests that read a stream as a host (RUNTIME, REPLAY, SESSION).
HERE = "tests/interop/test_sparkplug.py"
SESSION = f"{HERE}::test_a_session_decodes_with_tahu_and_keeps_the_edge_node_rules"
WRAP = f"{HERE}::test_seq_wraps_from_255_to_0_and_nbirth_restarts_it"
BDSEQ = f"{HERE}::test_bdseq_counts_connections_and_wraps"
REBIRTH = f"{HERE}::test_rebirth_command_from_a_host_is_recognised"
HISTORICAL = f"{HERE}::test_replayed_data_is_historical"
KINDS = f"{HERE}::test_values_of_every_kind_decode_with_their_birth_datatype"
LAST = f"{HERE}::test_the_dbirth_after_polls_of_every_tag_carries_the_last_value_of_each_tag"
HOST = "tests/interop/sparkplug_tahu.py::HostView"
RUNTIME = "tests/e2e/test_sparkplug_runtime.py"
REPLAYS = "tests/e2e/test_sparkplug_replay.py"
BOTH = f"{RUNTIME}::test_both_outputs_births_rebirth_refused_writes_a_device_dying_and_the_clean_stop"
PRIMARY = (
    f"{RUNTIME}::test_primary_host_broker_restart_replays_historical_data_and_bdseq_counts_on_across_runs_and_kill"
)
RELOAD = f"{RUNTIME}::test_a_reload_kills_removed_and_changed_devices_and_births_added_and_changed_ones"
REPLAY = f"{REPLAYS}::test_replayed_data_of_a_device_whose_link_is_down_is_born_for_the_replay_and_dies_after"
TOO_LARGE = f"{REPLAYS}::test_a_ddata_over_the_maximum_packet_size_leaves_no_seq_hole_and_is_kept_as_a_dead_letter"
LONE_DDEATH = f"{REPLAYS}::test_a_ddeath_of_a_device_not_born_in_the_new_session_never_reaches_the_host"
UNBORN = "tests/e2e/test_sparkplug_not_born.py::" + (
    "test_ddata_of_a_device_whose_dbirth_is_too_large_is_kept_as_a_dead_letter_and_never_reaches_the_host"
)
RESEND = (
    "tests/e2e/test_sparkplug_session.py::test_unacknowledged_data_follows_the_next_births_renumbered_and_historical"
)
CONFIG = "tests/unit/test_sparkplug_config.py::test_invalid"
ONE_CONNECTION = "tests/unit/test_mqtt_connections_routing.py::test_sparkplug_needs_one_connection"
CLEAN_START = (
    "tests/integration/test_mqtt5_conformance.py::test_session_present_in_reply_to_clean_start_closes_the_connection"
)
WILL_NOT_RETAINED = "tests/integration/test_mqtt_subscribe.py::test_a_will_made_for_every_connect_and_not_retained"
ALIASES = "tests/unit/test_sparkplug_edge_node.py::test_aliases_are_kept_per_device_tag_and_datatype_and_never_reused"
EVERY_TAG = f"{HERE}::test_ddata_of_every_tag_at_once_decodes_as_any_other"
DEADBAND = "tests/unit/test_outbound.py::test_tag_mode_seq_counts_per_topic_and_deadband_skips"
DEVICE_ID = "n/a (configuration): a device id is the device's name, a topic segment (no '/', '+', '#') of the tag map"
SUBSCRIBE = "tests/unit/test_sparkplug_edge_node.py::test_the_session_subscribes_to_its_commands_at_qos_1"

QOS_DEVIATION = (
    "deviation: QoS 1, not 0. The births of a connection (NBIRTH and DBIRTHs after CONNACK or a Rebirth, the DBIRTH "
    "and DDEATH around a replay) are the connection's QoS 1 control messages; DDATA, and the DBIRTH/DDEATH of a PLC "
    "link change, travel with the data at mqtt.qos (default 1), because store and forward needs the PUBACK to know "
    "what the broker has. A host that subscribes at QoS 0 receives QoS 0 (README 'Sparkplug B', QoS)"
)
NO_NDATA = "n/a: the edge node has no metrics of its own besides bdSeq and Node Control/Rebirth, so no NDATA"
NO_TEMPLATES = "n/a: no Template or DataSet metrics (a tag is Double, Boolean or String)"
RETAIN_FALSE = (SESSION, BOTH)
STATE_TIMESTAMP_DEVIATION = (
    "deviation: a STATE online/offline is taken as it comes (no timestamp comparison), and an offline STATE holds "
    "births and data (spooled) instead of disconnecting or moving to another broker (README 'Sparkplug B', Primary "
    "host)"
)

EDGE_NODE_ASSERTIONS: dict[str, str | tuple[str, ...]] = {
    # Identifiers and topics
    "intro-group-id-string": CONFIG,
    "intro-group-id-chars": CONFIG,
    "intro-edge-node-id-string": CONFIG,
    "intro-edge-node-id-chars": CONFIG,
    "intro-device-id-string": DEVICE_ID,
    "intro-device-id-chars": DEVICE_ID,
    "intro-edge-node-id-uniqueness": "n/a (configuration): the operator names the edge node",
    "topic-structure": (SESSION, BOTH),
    "topic-structure-namespace-a": SESSION,
    "topic-structure-namespace-valid-group-id": CONFIG,
    "topic-structure-namespace-valid-edge-node-id": CONFIG,
    "topic-structure-namespace-valid-device-id": DEVICE_ID,
    "topic-structure-namespace-unique-edge-node-descriptor": "n/a (configuration): the operator names group and node",
    "topic-structure-namespace-unique-device-id": "n/a (configuration): the tag map refuses two devices of one name",
    "topic-structure-namespace-device-id-associated-message-types": SESSION,
    "topics-nbirth-topic": SESSION,
    "topics-ndeath-topic": SESSION,
    "topics-dbirth-topic": SESSION,
    "topics-ddata-topic": SESSION,
    "topics-ddeath-topic": SESSION,
    "topics-ncmd-topic": (REBIRTH, BOTH),
    "topics-dcmd-topic": (REBIRTH, BOTH),
    "case-sensitivity-sparkplug-ids": "n/a: ids are used exactly as configured",
    "case-sensitivity-metric-names": "n/a: metric names are the tag names exactly as configured",
    # Sessions, will and NDEATH
    "principles-birth-certificates-order": (HOST, BOTH, PRIMARY, RESEND),
    "principles-persistence-clean-session-311": (CLEAN_START,),
    "principles-persistence-clean-session-50": (CLEAN_START,),
    "message-flow-edge-node-birth-publish-connect": (HOST, BOTH),
    "message-flow-edge-node-birth-publish-will-message": PRIMARY,
    "message-flow-edge-node-birth-publish-will-message-topic": (SESSION, PRIMARY),
    "message-flow-edge-node-birth-publish-will-message-payload": (SESSION, PRIMARY),
    "message-flow-edge-node-birth-publish-will-message-payload-bdSeq": (BDSEQ, PRIMARY),
    "message-flow-edge-node-birth-publish-will-message-qos": PRIMARY,
    "message-flow-edge-node-birth-publish-will-message-will-retained": (PRIMARY, WILL_NOT_RETAINED),
    "payloads-ndeath-will-message": PRIMARY,
    "payloads-ndeath-will-message-qos": PRIMARY,
    "payloads-ndeath-will-message-retain": PRIMARY,
    "payloads-ndeath-bdseq": (BDSEQ, PRIMARY),
    "payloads-ndeath-seq": (SESSION, HOST),
    "topics-ndeath-seq": (SESSION, HOST),
    "topics-ndeath-payload": (SESSION, HOST),
    "payloads-ndeath-will-message-publisher": BOTH,
    "payloads-ndeath-will-message-publisher-disconnect-mqtt311": BOTH,
    "payloads-ndeath-will-message-publisher-disconnect-mqtt50": (
        "deviation: a clean stop publishes the NDEATH itself (QoS 1, acknowledged) and then a normal DISCONNECT, on "
        "MQTT 5 too, rather than DISCONNECT reason 0x04 (with will): the host sees one NDEATH either way (" + BOTH + ")"
    ),
    "operational-behavior-edge-node-intentional-disconnect-ndeath": BOTH,
    "operational-behavior-edge-node-intentional-disconnect-packet": BOTH,
    "operational-behavior-primary-application-state-with-multiple-servers-single-server": ONE_CONNECTION,
    # NBIRTH
    "topics-nbirth-mqtt": QOS_DEVIATION + "; not retained: " + " ".join(RETAIN_FALSE),
    "payloads-nbirth-qos": QOS_DEVIATION,
    "message-flow-edge-node-birth-publish-nbirth-qos": QOS_DEVIATION,
    "payloads-nbirth-retain": RETAIN_FALSE,
    "message-flow-edge-node-birth-publish-nbirth-retained": RETAIN_FALSE,
    "message-flow-edge-node-birth-publish-nbirth-topic": SESSION,
    "message-flow-edge-node-birth-publish-nbirth-payload": SESSION,
    "topics-nbirth-seq-num": (SESSION, WRAP, HOST),
    "payloads-nbirth-seq": (SESSION, HOST),
    "payloads-sequence-num-zero-nbirth": (SESSION, WRAP, HOST),
    "message-flow-edge-node-birth-publish-nbirth-payload-seq": (SESSION, HOST),
    "topics-nbirth-timestamp": (SESSION, KINDS),
    "payloads-nbirth-timestamp": (SESSION, KINDS),
    "topics-nbirth-metric-reqs": SESSION,
    "topics-nbirth-metrics": SESSION,
    "operational-behavior-data-publish-nbirth": SESSION,
    "operational-behavior-data-publish-nbirth-values": SESSION,
    "topics-nbirth-templates": NO_TEMPLATES,
    "topics-nbirth-bdseq-included": (SESSION, HOST),
    "payloads-nbirth-bdseq": (SESSION, HOST),
    "message-flow-edge-node-birth-publish-nbirth-payload-bdSeq": (SESSION, PRIMARY),
    "topics-nbirth-bdseq-matching": (SESSION, BDSEQ, PRIMARY, RESEND),
    "payloads-nbirth-bdseq-repeat": (SESSION, BDSEQ, PRIMARY),
    "topics-nbirth-bdseq-increment": (BDSEQ, PRIMARY),
    "topics-nbirth-rebirth-metric": (SESSION, HOST),
    "payloads-nbirth-rebirth-req": (SESSION, HOST),
    "operational-behavior-data-commands-rebirth-name": SESSION,
    "operational-behavior-data-commands-rebirth-name-aliases": SESSION,
    "operational-behavior-data-commands-rebirth-datatype": SESSION,
    "operational-behavior-data-commands-rebirth-value": (SESSION, HOST),
    "payloads-nbirth-edge-node-descriptor": "n/a (configuration): the operator names group and node",
    # Primary host
    "message-flow-edge-node-birth-publish-phid-wait": PRIMARY,
    "message-flow-edge-node-birth-publish-phid-wait-id": PRIMARY,
    "message-flow-edge-node-birth-publish-phid-wait-online": PRIMARY,
    "operational-behavior-primary-application-state-with-multiple-servers-state-subs": PRIMARY,
    "operational-behavior-edge-node-birth-sequence-wait": PRIMARY,
    "message-flow-edge-node-birth-publish-phid-wait-timestamp": STATE_TIMESTAMP_DEVIATION,
    "message-flow-edge-node-birth-publish-phid-offline": STATE_TIMESTAMP_DEVIATION,
    "operational-behavior-edge-node-termination-host-offline": STATE_TIMESTAMP_DEVIATION,
    "operational-behavior-edge-node-termination-host-offline-reconnect": STATE_TIMESTAMP_DEVIATION,
    "operational-behavior-edge-node-termination-host-offline-timestamp": STATE_TIMESTAMP_DEVIATION,
    "operational-behavior-primary-application-state-with-multiple-servers-walk": STATE_TIMESTAMP_DEVIATION,
    # DBIRTH
    "message-flow-device-birth-publish-nbirth-wait": (HOST, BOTH),
    "message-flow-device-birth-publish-dbirth-topic": SESSION,
    "message-flow-device-birth-publish-dbirth-match-edge-node-topic": SESSION,
    "message-flow-device-birth-publish-dbirth-payload": SESSION,
    "message-flow-device-birth-publish-dbirth-qos": QOS_DEVIATION,
    "topics-dbirth-mqtt": QOS_DEVIATION + "; not retained: " + " ".join(RETAIN_FALSE),
    "payloads-dbirth-qos": QOS_DEVIATION,
    "message-flow-device-birth-publish-dbirth-retained": RETAIN_FALSE,
    "payloads-dbirth-retain": RETAIN_FALSE,
    "topics-dbirth-seq": (SESSION, HOST),
    "payloads-dbirth-seq": (SESSION, HOST),
    "payloads-dbirth-seq-inc": (SESSION, HOST),
    "message-flow-device-birth-publish-dbirth-payload-seq": (SESSION, HOST),
    "topics-dbirth-timestamp": (SESSION, HOST),
    "payloads-dbirth-timestamp": (SESSION, HOST),
    "topics-dbirth-metric-reqs": (SESSION, RELOAD),
    "topics-dbirth-metrics": (SESSION, HOST),
    "operational-behavior-data-publish-dbirth": (SESSION, RELOAD),
    "operational-behavior-data-publish-dbirth-values": (SESSION, LAST),
    "payloads-dbirth-order": (HOST, BOTH, REPLAY, LONE_DDEATH, UNBORN),
    # DDATA and DDEATH
    "topics-ddata-mqtt": QOS_DEVIATION + "; not retained: " + " ".join(RETAIN_FALSE),
    "payloads-ddata-qos": QOS_DEVIATION,
    "payloads-ddata-retain": RETAIN_FALSE,
    "topics-ddata-seq-num": (SESSION, WRAP, HOST),
    "payloads-ddata-seq": (SESSION, HOST),
    "payloads-ddata-seq-inc": (SESSION, WRAP, HOST, TOO_LARGE),
    "topics-ddata-timestamp": (SESSION, HOST),
    "payloads-ddata-timestamp": (SESSION, HOST),
    "topics-ddata-payload": (SESSION, EVERY_TAG),
    "payloads-ddata-order": (HOST, REPLAY, RESEND),
    "principles-rbe-recommended": DEADBAND,
    "operational-behavior-data-publish-dbirth-change": DEADBAND,
    "operational-behavior-data-publish-dbirth-order": (
        "partly checked: " + HOST + " (live DDATA values of each metric in time order, in " + BOTH + ", " + PRIMARY
        + ", " + REPLAY + "); the DBIRTH's last values against the DDATA after it are not checked"
    ),
    "topics-ddeath-mqtt": QOS_DEVIATION + "; not retained: " + " ".join(RETAIN_FALSE),
    "topics-ddeath-seq-num": (SESSION, HOST),
    "payloads-ddeath-timestamp": (SESSION, HOST),
    "payloads-ddeath-seq": (SESSION, HOST),
    "payloads-ddeath-seq-inc": (SESSION, HOST),
    "payloads-ddeath-seq-number": (SESSION, HOST, LONE_DDEATH),
    "operational-behavior-device-ddeath": (BOTH, RELOAD, REPLAY),
    "payloads-metric-historical": (HISTORICAL, REPLAY, RESEND, PRIMARY),
    # Payload rules
    "payloads-timestamp-in-UTC": SESSION,
    "payloads-metric-timestamp-in-UTC": (SESSION, EVERY_TAG),
    "payloads-sequence-num-always-included": (SESSION, HOST),
    "payloads-sequence-num-incrementing": (SESSION, WRAP, HOST, TOO_LARGE, RESEND),
    "payloads-name-requirement": (SESSION, HOST),
    "payloads-alias-uniqueness": (SESSION, HOST, RELOAD, ALIASES),
    "payloads-alias-birth-requirement": (SESSION, HOST),
    "payloads-alias-data-cmd-requirement": (SESSION, HOST),
    "payloads-name-birth-data-requirement": (SESSION, HOST),
    "payloads-metric-datatype-value-type": (SESSION, KINDS),
    "payloads-metric-datatype-value": (SESSION, KINDS),
    "payloads-metric-datatype-req": (SESSION, HOST),
    "payloads-metric-datatype-not-req": SESSION,
    "payloads-propertyset-keys-array-size": SESSION,
    "payloads-propertyset-values-array-size": SESSION,
    "payloads-metric-propertyvalue-type-type": SESSION,
    "payloads-metric-propertyvalue-type-value": SESSION,
    "payloads-metric-propertyvalue-type-req": SESSION,
    "payloads-propertyset-quality-value-type": SESSION,
    "payloads-propertyset-quality-value-value": (
        "deviation: Quality carries Ignition 8's codes (192 good, 0x40000100 uncertain, 0x80000200 bad), which is "
        "what Ignition reads, not the TCK's 0/192/500 (README 'Sparkplug B', Quality; checked in " + SESSION + ")"
    ),
    **dict.fromkeys(
        (
            "payloads-dataset-column-size", "payloads-dataset-column-num-headers", "payloads-dataset-types-def",
            "payloads-dataset-types-num", "payloads-dataset-types-type", "payloads-dataset-types-value",
            "payloads-dataset-parameter-type-req", "payloads-template-dataset-value",
            "payloads-template-definition-nbirth-only", "payloads-template-definition-is-definition",
            "payloads-template-definition-ref", "payloads-template-definition-members",
            "payloads-template-definition-nbirth", "payloads-template-definition-parameters",
            "payloads-template-definition-parameters-default", "payloads-template-instance-is-definition",
            "payloads-template-instance-ref", "payloads-template-instance-members",
            "payloads-template-instance-members-birth", "payloads-template-instance-members-data",
            "payloads-template-instance-parameters", "payloads-template-version", "payloads-template-ref-definition",
            "payloads-template-ref-instance", "payloads-template-is-definition",
            "payloads-template-is-definition-definition", "payloads-template-is-definition-instance",
            "payloads-template-parameter-name-required", "payloads-template-parameter-name-type",
            "payloads-template-parameter-value-type", "payloads-template-parameter-type-value",
            "payloads-template-parameter-type-req", "payloads-template-parameter-value",
        ),
        NO_TEMPLATES,
    ),
    **dict.fromkeys(
        (
            "topics-ndata-topic", "topics-ndata-mqtt", "topics-ndata-seq-num", "topics-ndata-timestamp",
            "topics-ndata-payload", "payloads-ndata-timestamp", "payloads-ndata-seq", "payloads-ndata-seq-inc",
            "payloads-ndata-order", "payloads-ndata-qos", "payloads-ndata-retain",
            "operational-behavior-data-publish-nbirth-change", "operational-behavior-data-publish-nbirth-order",
        ),
        NO_NDATA,
    ),
    # Commands
    "message-flow-edge-node-ncmd-subscribe": (SUBSCRIBE, BOTH),
    "message-flow-device-dcmd-subscribe": (
        "n/a: the devices take no writes; the edge node subscribes to DCMD anyway to refuse and count them ("
        + SUBSCRIBE + ", " + BOTH + ")"
    ),
    "operational-behavior-data-commands-rebirth-action-1": NO_NDATA,
    "operational-behavior-data-commands-rebirth-action-2": (BOTH, REBIRTH),
    "operational-behavior-data-commands-rebirth-action-3": BOTH,
    "operational-behavior-data-commands-ncmd-verb": REBIRTH,
    "operational-behavior-data-commands-dcmd-verb": (REBIRTH, BOTH),
    "operational-behavior-data-commands-ncmd-metric-name": "n/a: writes are refused (read-only), see " + BOTH,
    "operational-behavior-data-commands-ncmd-metric-value": "n/a: writes are refused (read-only), see " + BOTH,
    "operational-behavior-data-commands-dcmd-metric-name": "n/a: writes are refused (read-only), see " + BOTH,
    "operational-behavior-data-commands-dcmd-metric-value": "n/a: writes are refused (read-only), see " + BOTH,
}
"""Sparkplug 3.0 assertion id (without ``tck-id-``) -> the tests that check it (``path::name``), or a text saying why
it does not apply (``n/a``), where Cellgate deviates (``deviation``), or that no test checks it."""


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


def properties_of(metric: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return list(metric.get("properties", {}).items())


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
    wire_session = wire(node, session)
    decoded = decode(wire_session)
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
    # Every birth and data metric has its timestamp; Node Control/Rebirth (and bdSeq) have no alias.
    assert all(m["timestamp"] == int(T0 * 1000) for m in nbirth["metrics"])
    assert all("alias" not in m for m in nbirth["metrics"])

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
    # Every PropertySet has as many keys as values, every PropertyValue its type; Quality is an Int32.
    for message in wire_session:
        parsed = pb.Payload.FromString(message.payload)
        assert all(len(m.properties.keys) == len(m.properties.values) for m in parsed.metrics)
    types = {key: entry["type"] for m in dbirth["metrics"] + ddata["metrics"] for key, entry in properties_of(m)}
    assert types == {"engUnit": "String", "Documentation": "String", "engLow": "Double", "engHigh": "Double",
                     "Quality": "Int32"}

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


def test_ddata_of_every_register_at_once_is_the_same_bytes_as_the_general_path() -> None:
    """Modbus registers are whole numbers: a poll of every tag with good ints takes the prebuilt payload too, and
    its DDATA is byte for byte the general path's (a part of the tags, which goes the general way), Doubles both."""
    node = SparkplugEdgeNode(group_id="Plant1", edge_node_id="gw-01")
    metas = [TagMeta(tag=f"hr{n}", type=kind) for n, kind in enumerate(("uint16", "int32", "float32", "uint64"))]
    fast = SparkplugDeviceEncoder(node=node, device="Plc", catalogue=metas, alias_base=1)
    general = SparkplugDeviceEncoder(node=node, device="Plc", catalogue=metas, alias_base=1)
    fast.birth(T0)
    general.birth(T0)
    values: list[int | float] = [65535, -7, 2.5, 2**40]
    poll = [Sample("Plc", meta.tag, value, Quality.GOOD, T0 + 1) for meta, value in zip(metas, values, strict=True)]
    [from_template] = fast.encode(poll, T0 + 1)
    assert fast._template_holds_last  # the prebuilt payload took the poll (the general path would not set it)
    general_payload = pb.Payload(timestamp=int((T0 + 1) * 1000))  # what the general path builds, metric by metric
    for meta, value in zip(metas, values, strict=True):
        general_payload.metrics.add(alias=1 + metas.index(meta), timestamp=int((T0 + 1) * 1000),
                                    double_value=float(value))  # fmt: skip
    assert from_template.payload == general_payload.SerializeToString()
    [partial] = general.encode(poll[:3], T0 + 1)  # three of four tags: the general path
    assert partial.payload == pb.Payload(
        timestamp=int((T0 + 1) * 1000), metrics=list(general_payload.metrics)[:3]).SerializeToString()
    [decoded] = [entry["decoded"] for entry in decode(wire(node, [fast.birth(T0), from_template]))][1:]
    assert [m["value"] for m in decoded["metrics"]] == [65535.0, -7.0, 2.5, float(2**40)]
    assert [m["type"] for m in decode([fast.birth(T0)])[0]["decoded"]["metrics"]] == ["Double"] * 4


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


def test_every_edge_node_assertion_names_tests_that_exist() -> None:
    """Each reference ``path::name`` of ``EDGE_NODE_ASSERTIONS`` (also inside a deviation's text) is a test function
    (or class) of that file; an entry without one says why (n/a, deviation, not checked)."""
    root = Path(__file__).resolve().parents[2]
    missing = []
    for assertion, where in EDGE_NODE_ASSERTIONS.items():
        text = where if isinstance(where, str) else " ".join(where)
        references = re.findall(r"(tests/[\w/]+\.py)::(\w+)", text)
        if isinstance(where, tuple) or not references:
            assert references or text.startswith(("n/a", "deviation")), assertion
        for path, name in references:
            source = (root / path).read_text(encoding="utf-8")
            if not re.search(rf"^(async def|def|class) {name}\b", source, re.MULTILINE):
                missing.append(f"{assertion}: {path}::{name}")
    assert missing == []
    assert len(EDGE_NODE_ASSERTIONS) > 150  # the edge-node part of the 299 assertions, not a sample
