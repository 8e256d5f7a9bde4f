"""The Sparkplug edge node's bookkeeping without a broker: the alias table across reloads, ``unstamp``, and the
session's following of which devices are born on the wire (a DBIRTH ahead of DDATA of a device that is not, its
DDEATH once its replay is over)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog.testing

from gateway.encoders import sparkplug_b_pb2 as pb
from gateway.encoders.sparkplug import DOUBLE, STRING, SparkplugDeviceEncoder, SparkplugEdgeNode
from gateway.schema import Quality, Sample, TagMeta
from gateway.sparkplug_session import SparkplugSession

DEATH_AFTER_S = 0.05


def seq_of(payload: bytes) -> int:
    message = pb.Payload()
    message.ParseFromString(payload)
    return message.seq


def test_aliases_are_kept_per_device_tag_and_datatype_and_never_reused() -> None:
    node = SparkplugEdgeNode(group_id="G", edge_node_id="e")
    first = node.aliases_for("d1", [("a", DOUBLE), ("b", DOUBLE)])
    other = node.aliases_for("d2", [("a", DOUBLE)])
    again = node.aliases_for("d1", [("b", DOUBLE), ("c", DOUBLE), ("a", STRING)])  # a reload changed d1
    assert first == {"a": 0, "b": 1}
    assert other == {"a": 2}
    assert again == {"b": 1, "c": 3, "a": 4}  # b kept; a changed type: a new alias


def test_unstamp_gives_the_number_back_so_seq_stays_contiguous() -> None:
    node = SparkplugEdgeNode(group_id="G", edge_node_id="e")
    ddata = node.topic("DDATA", "d1")
    assert seq_of(node.stamp(node.topic("NBIRTH"), b"")) == 0
    assert seq_of(node.stamp(ddata, b"")) == 1
    node.stamp(ddata, b"")
    node.unstamp(ddata)  # refused as too large: not sent
    assert seq_of(node.stamp(ddata, b"")) == 2
    node.unstamp(node.topic("NBIRTH"))  # births restart the run: nothing to give back
    assert seq_of(node.stamp(ddata, b"")) == 3


class Wire:
    """What the MQTT connection does with the session's messages: stamp them into one ordered list."""

    def __init__(self, session: SparkplugSession) -> None:
        self.session = session
        self.sent: list[tuple[str, int]] = []

    def send(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self.hand_over(topic, payload)

    def hand_over(self, topic: str, payload: bytes) -> None:
        stamped = self.session.stamp(topic, payload)
        assert stamped is not None
        self.sent.append((topic.split("/", 2)[2], seq_of(stamped)))


async def test_ddata_of_a_device_not_born_gets_a_dbirth_first_and_a_ddeath_after_its_replay() -> None:
    node = SparkplugEdgeNode(group_id="G", edge_node_id="e")
    session = SparkplugSession(node, bd_seq_files=None, replay_death_after_s=DEATH_AFTER_S)
    device = SparkplugDeviceEncoder(node=node, device="d1", catalogue=[TagMeta(tag="v", type="float32")])
    session.devices["d1"] = device
    wire = Wire(session)
    session.bind(lambda: None, send=wire.send)
    device.birth(1.0)
    (ddata,) = device.encode([Sample("d1", "v", 1.0, Quality.GOOD, 1.0)], 1.0)
    device.death(2.0)  # the link dropped while the broker was away
    for topic, payload in session.births():  # the reconnect: d1 is dead, so NBIRTH only
        wire.hand_over(topic, payload)
    wire.hand_over(ddata.topic, session.node.resend_form(ddata.topic, ddata.payload) or b"")  # the replay
    wire.hand_over(ddata.topic, ddata.payload)  # more of it: born already
    assert wire.sent == [("NBIRTH/e", 0), ("DBIRTH/e/d1", 1), ("DDATA/e/d1", 2), ("DDATA/e/d1", 3)]
    assert session.replay_births == 1
    await asyncio.sleep(DEATH_AFTER_S * 6)  # the replay is over: its DDEATH
    assert wire.sent[4:] == [("DDEATH/e/d1", 4)]
    assert not device.alive


async def test_a_device_that_came_back_during_its_replay_gets_no_ddeath_from_the_replay() -> None:
    node = SparkplugEdgeNode(group_id="G", edge_node_id="e")
    session = SparkplugSession(node, bd_seq_files=None, replay_death_after_s=DEATH_AFTER_S)
    device = SparkplugDeviceEncoder(node=node, device="d1", catalogue=[TagMeta(tag="v", type="float32")])
    session.devices["d1"] = device
    wire = Wire(session)
    session.bind(lambda: None, send=wire.send)
    wire.hand_over(node.topic("NBIRTH"), b"")
    wire.hand_over(device.ddata_topic, b"")  # a replay: DBIRTH for it first
    birth = device.link_changed(connected=True, now=3.0)  # the link is back: its own DBIRTH, live
    assert birth is not None
    wire.hand_over(birth.topic, birth.payload)
    await asyncio.sleep(DEATH_AFTER_S * 6)
    assert [kind for kind, _ in wire.sent] == ["NBIRTH/e", "DBIRTH/e/d1", "DDATA/e/d1", "DBIRTH/e/d1"]


def test_a_ddeath_of_a_device_not_born_on_the_wire_is_dropped_and_counted() -> None:
    node = SparkplugEdgeNode(group_id="G", edge_node_id="e")
    session = SparkplugSession(node, bd_seq_files=None)
    device = SparkplugDeviceEncoder(node=node, device="d1", catalogue=[TagMeta(tag="v", type="float32")])
    session.devices["d1"] = device
    wire = Wire(session)
    session.bind(lambda: None, send=wire.send)
    device.birth(1.0)
    ddeath = device.death(2.0)  # encoded before the reconnect, handed over after its births (which lack d1)
    for topic, payload in session.births():
        wire.hand_over(topic, payload)
    with structlog.testing.capture_logs() as logs:
        assert session.stamp(ddeath.topic, ddeath.payload) is None
        assert session.stamp(ddeath.topic, ddeath.payload) is None
    assert session.dropped == {"ddeath_not_born": 2}
    # One line per device and episode, not per message. (DDATA that cannot be born is refused, not dropped:
    # tests/unit/test_sparkplug_session_refusal.py.)
    assert [(e["event"], e["device"], e["reason"]) for e in logs] == [
        ("sparkplug_message_dropped", "d1", "ddeath_not_born")
    ]
    # Born again, its DDEATH goes, numbered after the DBIRTH (the dropped ones took no seq).
    birth = device.link_changed(connected=True, now=3.0)
    assert birth is not None
    wire.hand_over(birth.topic, birth.payload)
    wire.hand_over(ddeath.topic, ddeath.payload)
    assert wire.sent == [("NBIRTH/e", 0), ("DBIRTH/e/d1", 1), ("DDEATH/e/d1", 2)]
    assert session.stamp(ddeath.topic, ddeath.payload) is None  # dead again: a second DDEATH is dropped


def test_the_session_subscribes_to_its_commands_at_qos_1() -> None:
    """tck-id-message-flow-edge-node-ncmd-subscribe: NCMD of the node at QoS 1 (and DCMD of its devices, to refuse
    them); with a primary host its STATE first."""
    node = SparkplugEdgeNode(group_id="G", edge_node_id="e")
    assert SparkplugSession(node, bd_seq_files=None).subscriptions == (
        ("spBv1.0/G/NCMD/e", 1), ("spBv1.0/G/DCMD/e/+", 1)
    )
    with_host = SparkplugSession(node, bd_seq_files=None, primary_host="scada")
    assert with_host.subscriptions[0] == ("spBv1.0/STATE/scada", 1)
