"""DDATA of a device that cannot be born on the wire, at the session: refused (``SessionRefusal``, reason
``sparkplug_not_born``) so the connection hands it to ``on_refused`` and store and forward keeps it, never dropped,
never sent, no ``seq`` taken, logged once per device and episode. The whole path on a real broker with an independent
decoder is tests/e2e/test_sparkplug_not_born.py."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog.testing

from gateway.encoders import sparkplug_b_pb2 as pb
from gateway.encoders.sparkplug import SparkplugDeviceEncoder, SparkplugEdgeNode
from gateway.mqtt.options import SessionRefusal
from gateway.schema import Quality, Sample, TagMeta
from gateway.sparkplug_session import NOT_BORN, SparkplugSession


def decoded(payload: bytes) -> pb.Payload:
    message = pb.Payload()
    message.ParseFromString(payload)
    return message


def value_of(metric: pb.Payload.Metric) -> object:
    field = metric.WhichOneof("value")
    return None if field is None else getattr(metric, field)


class Wire:
    """The MQTT connection as the session sees it: stamps into one ordered list; a DBIRTH over ``max_birth_bytes`` is
    taken back as the connection does for one too large for the broker (``unstamp``)."""

    def __init__(self, session: SparkplugSession, *, max_birth_bytes: int = 1 << 20) -> None:
        self.session = session
        self.max_birth_bytes = max_birth_bytes
        self.sent: list[tuple[str, int]] = []
        self.refused: list[tuple[str, SessionRefusal]] = []

    def send(self, messages: Sequence[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            self.hand_over(topic, payload)

    def hand_over(self, topic: str, payload: bytes) -> None:
        stamped = self.session.stamp(topic, payload)
        if isinstance(stamped, SessionRefusal):
            self.refused.append((topic, stamped))
            return
        assert stamped is not None
        if "/DBIRTH/" in topic and len(stamped) > self.max_birth_bytes:
            self.session.unstamp(topic)
            return
        self.sent.append((topic.split("/", 2)[2], decoded(stamped).seq))


def edge(devices: dict[str, int]) -> tuple[SparkplugEdgeNode, SparkplugSession, dict[str, SparkplugDeviceEncoder]]:
    """``devices``: name -> number of float tags (a DBIRTH grows with them, a one-tag DDATA does not)."""
    node = SparkplugEdgeNode(group_id="G", edge_node_id="e")
    session = SparkplugSession(node, bd_seq_files=None)
    encoders = {}
    for name, tags in devices.items():
        catalogue = [TagMeta(tag=f"temperature_zone_{i:03d}", type="float32") for i in range(tags)]
        encoders[name] = session.devices[name] = SparkplugDeviceEncoder(node=node, device=name, catalogue=catalogue)
        encoders[name].birth(time.time())  # its PLC link is up
    return node, session, encoders


def ddata(encoder: SparkplugDeviceEncoder, value: float) -> tuple[str, bytes]:
    now = time.time()
    (message,) = encoder.encode([Sample(encoder.device, "temperature_zone_000", value, Quality.GOOD, now)], now)
    return message.topic, message.payload


def test_ddata_of_a_device_without_a_catalogue_is_refused_with_its_payload_and_takes_no_seq() -> None:
    node, session, encoders = edge({"d1": 1})
    wire = Wire(session)
    session.bind(lambda: None, send=wire.send)
    wire.send(session.births())
    gone = node.topic("DDATA", "gone")  # e.g. data left from before a reload that removed nothing we know of
    with structlog.testing.capture_logs() as logs:
        wire.hand_over(gone, b"\x01payload")
        wire.hand_over(gone, b"\x02payload")
    wire.hand_over(*ddata(encoders["d1"], 1.0))
    assert wire.refused == [
        (gone, SessionRefusal(NOT_BORN, b"\x01payload")), (gone, SessionRefusal(NOT_BORN, b"\x02payload"))
    ]
    assert wire.sent == [("NBIRTH/e", 0), ("DBIRTH/e/d1", 1), ("DDATA/e/d1", 2)]  # no hole: the refused took none
    assert session.ddata_refused == 2
    assert session.dropped == {"ddeath_not_born": 0}  # refused (kept), not dropped
    assert session.replay_births == 0
    assert [(e["event"], e["device"], e["reason"], e["cause"]) for e in logs] == [
        ("sparkplug_ddata_refused", "gone", NOT_BORN, "no_catalogue")
    ]


def test_a_device_whose_dbirth_was_too_large_has_its_ddata_refused_without_a_dbirth_per_message() -> None:
    node, session, encoders = edge({"small": 1, "big": 60})
    big_birth = len(encoders["big"].birth(time.time()).payload)
    wire = Wire(session, max_birth_bytes=big_birth - 100)  # every DBIRTH of big is too large, small's is not
    session.bind(lambda: None, send=wire.send)
    with structlog.testing.capture_logs() as logs:
        wire.send(session.births())
        for value in (1.0, 2.0, 3.0):
            wire.hand_over(*ddata(encoders["big"], value))
            wire.hand_over(*ddata(encoders["small"], value))
    assert [topic for topic, _ in wire.refused] == [node.topic("DDATA", "big")] * 3
    refused_values = [value_of(decoded(refusal.payload).metrics[0]) for _, refusal in wire.refused]
    assert refused_values == [1.0, 2.0, 3.0]
    assert all(not decoded(refusal.payload).HasField("seq") for _, refusal in wire.refused)
    assert wire.sent == [
        ("NBIRTH/e", 0), ("DBIRTH/e/small", 1), ("DDATA/e/small", 2), ("DDATA/e/small", 3), ("DDATA/e/small", 4)
    ]
    assert session.replay_births == 0  # its DBIRTH is not tried again for each DDATA in this session
    assert [(e["device"], e["cause"]) for e in logs if e["event"] == "sparkplug_ddata_refused"] == [
        ("big", "dbirth_not_sent")
    ]
    # The next NBIRTH (a Rebirth, a reconnect) is a new episode: the DBIRTH is tried again, and logged again.
    with structlog.testing.capture_logs() as logs:
        wire.send(session.births())
        wire.hand_over(*ddata(encoders["big"], 4.0))
    assert [topic for topic, _ in wire.refused][3:] == [node.topic("DDATA", "big")]
    assert [e["event"] for e in logs] == ["sparkplug_ddata_refused"]
    # A DBIRTH that goes (the broker's limit is larger now) ends it: its data flows again.
    wire.max_birth_bytes = 1 << 20
    wire.send(session.births())
    wire.hand_over(*ddata(encoders["big"], 5.0))
    assert wire.sent[-3:] == [("DBIRTH/e/small", 1), ("DBIRTH/e/big", 2), ("DDATA/e/big", 3)]
    assert session.ddata_refused == 4


def test_unacknowledged_ddata_resent_after_a_reconnect_is_refused_in_its_historical_form() -> None:
    _, session, encoders = edge({"big": 60})
    wire = Wire(session)
    session.bind(lambda: None, send=wire.send)
    wire.send(session.births())
    topic, payload = ddata(encoders["big"], 7.0)
    stamped = session.stamp(topic, payload)  # on the wire, its PUBACK lost with the connection
    assert isinstance(stamped, bytes)
    wire.max_birth_bytes = len(encoders["big"].birth(time.time()).payload) - 100  # the new broker's limit is lower
    wire.send(session.births())
    refusal = session.resend(topic, stamped)
    assert isinstance(refusal, SessionRefusal)
    assert refusal.reason == NOT_BORN
    kept = decoded(refusal.payload)
    assert not kept.HasField("seq")  # the next connection numbers it if it is ever requeued
    assert [(value_of(m), m.is_historical) for m in kept.metrics] == [(7.0, True)]
