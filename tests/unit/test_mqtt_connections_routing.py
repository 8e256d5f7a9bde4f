"""``mqtt.connections``: which connection carries a topic, what each connection is told, the setting itself."""

from __future__ import annotations

import zlib

import pytest

from gateway.mqtt.options import MqttOptions
from gateway.sinks.fanout import MqttFanOut, connection_options, mqtt_output, route
from gateway.tagmap import Plant
from gateway.tagmap.model import Output, _rule_sparkplug_one_connection
from tests.support.tagmap import MINIMAL_MODBUS, load, problem_lines

OPTIONS = MqttOptions(
    host="127.0.0.1",
    client_id="cellgate-gw1",
    will_topic="acme/dunkirk/_gateway/gw1/status",
    will_payload=b"off",
    online_payload=b"on",
    subscriptions=(("spBv1.0/g/NCMD/gw1", 1),),
)


@pytest.mark.parametrize(
    ("topic", "connections", "expected"),
    [
        (
            "acme/dunkirk/formation/hall-a/rack-01/ch001/voltage",
            4,
            zlib.crc32(b"acme/dunkirk/formation/hall-a/rack-01/ch001/voltage") % 4,
        ),
        ("a", 3, zlib.crc32(b"a") % 3),
        ("any/topic", 1, 0),
    ],
)
def test_a_topic_goes_to_the_connection_its_crc32_names(topic: str, connections: int, expected: int) -> None:
    assert route(topic, connections) == expected


def test_the_same_topic_always_takes_the_same_connection_and_topics_spread() -> None:
    topics = [f"acme/dunkirk/formation/hall-a/rack-01/ch{n:03d}/voltage" for n in range(1000)]
    first = [route(topic, 4) for topic in topics]
    assert first == [route(topic, 4) for topic in topics]
    counts = [first.count(index) for index in range(4)]
    assert min(counts) > 200, counts  # about 250 each: no connection left idle


def test_the_primary_keeps_will_status_and_subscriptions_the_others_carry_data_only() -> None:
    assert connection_options(OPTIONS, 0) is OPTIONS
    second = connection_options(OPTIONS, 1)
    assert second.client_id == "cellgate-gw1-2"
    assert (second.with_will, second.online_payload, second.subscriptions) == (False, None, ())
    assert connection_options(OPTIONS, 3).client_id == "cellgate-gw1-4"
    assert (second.host, second.port, second.qos, second.max_inflight) == (
        OPTIONS.host,
        OPTIONS.port,
        OPTIONS.qos,
        OPTIONS.max_inflight,
    )


def test_a_connection_without_will_cannot_announce_a_status() -> None:
    with pytest.raises(ValueError, match="without a will"):
        MqttOptions(host="h", client_id="c", will_topic="s", will_payload=b"", online_payload=b"on", with_will=False)


def test_one_connection_is_a_plain_sink_more_are_a_fan_out() -> None:
    assert type(mqtt_output(OPTIONS, connections=1)).__name__ == "MqttSink"
    fan_out = mqtt_output(OPTIONS, connections=3)
    assert isinstance(fan_out, MqttFanOut)
    assert [sink.broker for sink in fan_out.connections] == ["127.0.0.1:1883"] * 3


def test_the_setting_defaults_to_one_and_is_bounded() -> None:
    assert load(MINIMAL_MODBUS).mqtt.connections == 1
    four = MINIMAL_MODBUS.replace(
        'mqtt: {url: "mqtt://127.0.0.1:1883"}', 'mqtt: {url: "mqtt://127.0.0.1:1883", connections: 4}'
    )
    assert load(four).mqtt.connections == 4
    for bad in ("0", "17"):
        text = MINIMAL_MODBUS.replace(
            'mqtt: {url: "mqtt://127.0.0.1:1883"}', f'mqtt: {{url: "mqtt://127.0.0.1:1883", connections: {bad}}}'
        )
        assert any("mqtt.connections" in line for line in problem_lines(text)), bad


def test_sparkplug_needs_one_connection() -> None:
    """The rule of the Plant; built without validation here, because this version still refuses Sparkplug
    outputs in the gateway section (which would stop the validation before the rule)."""
    plant = load(MINIMAL_MODBUS)

    def with_(outputs: tuple[Output, ...], connections: int) -> Plant:
        return plant.model_construct(
            **{
                **dict(plant),
                "gateway": plant.gateway.model_construct(**{**dict(plant.gateway), "outputs": outputs}),
                "mqtt": plant.mqtt.model_construct(**{**dict(plant.mqtt), "connections": connections}),
            }
        )

    [issue] = _rule_sparkplug_one_connection(with_((Output.UNS_JSON, Output.SPARKPLUG), 2))
    assert issue.loc == ("mqtt", "connections")
    assert "Sparkplug B needs one MQTT connection" in issue.message
    assert not list(_rule_sparkplug_one_connection(with_((Output.SPARKPLUG,), 1)))
    assert not list(_rule_sparkplug_one_connection(with_((Output.UNS_JSON,), 4)))
