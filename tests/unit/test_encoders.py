"""The encoder seam: outbound hands encoder-neutral Samples to a DeviceEncoder; the UNS JSON encoder makes the
gateway status, the will and the historical form of a replayed message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson
import pytest

from gateway.encoders.base import DeviceEncoder, Encoder, Message
from gateway.encoders.uns_json import UnsJsonDeviceEncoder, UnsJsonEncoder
from gateway.outbound import DeviceOutbound, PublishMode, TagOutput
from gateway.schema import EquipmentTopics, Quality, Sample, TagMeta
from gateway.sources.base import RawReading
from gateway.transform import TagRules

TOPICS = EquipmentTopics.of(enterprise="e", site="s", area="a", line="l", equipment="rack")
TAGS = [
    TagOutput(name="volts", unit="V", rules=TagRules(), meta=TagMeta(tag="volts", type="float32")),
    TagOutput(name="temp", unit="Cel", rules=TagRules(deadband=0.5), meta=TagMeta(tag="temp", type="int16")),
]


class LinesEncoder:
    """A second encoding for the seam: one text line per sample on one topic, numbered per device."""

    def __init__(self) -> None:
        self.seq = 0
        self.received: list[Sample] = []

    @property
    def seq_topics(self) -> list[str]:
        return ["lines/rack"]

    def seq_need(self, samples: int) -> int:
        return samples

    def restore_seq(self, last_seq: Mapping[str, int]) -> None:
        self.seq = max(self.seq, last_seq.get("lines/rack", 0))

    def seq_snapshot(self) -> dict[str, int]:
        return {"lines/rack": self.seq} if self.seq else {}

    def encode(self, samples: Sequence[Sample], now: float) -> list[Message]:
        self.received.extend(samples)
        out = []
        for sample in samples:
            self.seq += 1
            out.append(Message("lines/rack", f"{self.seq} {sample.tag}={sample.value}".encode()))
        return out

    def status(self, *, connected: bool, since: float, error: str | None, gateway: str | None) -> Message:
        return Message("lines/rack/status", b"up" if connected else b"down", retain=True)

    def meta(self) -> list[Message]:
        return [Message("lines/rack/tags", b"volts temp", retain=True)]

    def retained_topics(self) -> list[str]:
        return ["lines/rack/status", "lines/rack/tags"]


def test_outbound_hands_transformed_samples_to_any_encoder() -> None:
    lines = LinesEncoder()
    encoder: DeviceEncoder = lines
    out = DeviceOutbound(
        device="rack", protocol="modbus", topics=TOPICS, mode=PublishMode.TAG, interval_ms=1000, tags=TAGS,
        encoder=encoder,
    )  # fmt: skip
    out.restore_seq({"lines/rack": 41})
    first = out.messages([RawReading(tag="volts", value=3.7, ts=1.0), RawReading(tag="temp", value=25, ts=1.0)], 1.0)
    second = out.messages([RawReading(tag="temp", value=25.2, ts=2.0)], 2.0)  # inside the deadband: no sample
    assert [m.payload for m in first] == [b"42 volts=3.7", b"43 temp=25"]
    assert second == []
    assert [sample.tag for sample in lines.received] == ["volts", "temp"]
    assert out.seq_topics == ["lines/rack"]
    assert out.seq_snapshot() == {"lines/rack": 43}
    assert out.status_message(connected=False, since=0.0, error="x") == Message("lines/rack/status", b"down", True)
    assert out.meta_messages() == [Message("lines/rack/tags", b"volts temp", True)]
    assert out.retained_topics() == ["lines/rack/status", "lines/rack/tags"]


def test_uns_json_retained_topics_are_the_status_and_every_meta_part() -> None:
    many = [TagMeta(tag=f"ch{n:03}/voltage", type="float32", description="x" * 200) for n in range(40)]
    device = UnsJsonDeviceEncoder(
        device="rack", protocol="modbus", topics=TOPICS, mode=PublishMode.TAG, interval_ms=1000,
        units={meta.tag: "V" for meta in many}, catalogue=many, max_packet_bytes=2048,
    )  # fmt: skip
    parts = [message.topic for message in device.meta()]
    assert len(parts) > 1  # split to fit the packet size
    assert device.retained_topics() == ["e/s/a/l/rack/_status", *parts]
    assert parts[:2] == ["e/s/a/l/rack/_meta", "e/s/a/l/rack/_meta/2"]


def test_uns_json_gateway_status_is_the_birth_and_its_offline_form_the_will() -> None:
    encoder: Encoder = UnsJsonEncoder(enterprise="e", site="s", gateway_id="gw1", started=0.0, version="9.9")
    online, offline = encoder.gateway_status(online=True), encoder.gateway_status(online=False)
    assert online.topic == offline.topic == "e/s/_gateway/gw1/status"
    assert online.retain and offline.retain
    assert orjson.loads(online.payload) == {
        "online": True, "gateway": "gw1", "since": "1970-01-01T00:00:00.000Z", "version": "9.9", "schema": 1,
    }  # fmt: skip
    assert orjson.loads(offline.payload)["online"] is False


@pytest.mark.parametrize("mode", [PublishMode.TAG, PublishMode.BATCH])
def test_uns_json_historical_form_is_the_same_message_marked(mode: PublishMode) -> None:
    device = UnsJsonDeviceEncoder(
        device="rack", protocol="modbus", topics=TOPICS, mode=mode, interval_ms=1000,
        units={"volts": "V"}, catalogue=[TAGS[0].meta], max_packet_bytes=1 << 20,
    )  # fmt: skip
    gateway = UnsJsonEncoder(enterprise="e", site="s", gateway_id="gw1", started=0.0, version="9.9")
    [message] = device.encode([Sample("rack", "volts", 3.7, Quality.GOOD, 5.0)], 5.0)
    replayed = orjson.loads(gateway.historical(message.topic, message.payload))
    assert replayed == orjson.loads(message.payload) | {"historical": True}
    assert gateway.historical(message.topic, gateway.historical(message.topic, message.payload)) == (
        gateway.historical(message.topic, message.payload)
    )  # marking twice changes nothing
    with pytest.raises(ValueError):
        gateway.historical(message.topic, b"not json")
