"""``mqtt_options_for``: the tag map's ``mqtt:`` section becomes the MQTT client's options."""

from __future__ import annotations

from gateway.assembly import mqtt_options_for
from tests.support.tagmap import MINIMAL_MODBUS, load


def test_max_packet_size_and_puback_timeout_reach_the_client() -> None:
    """Issue 10 items 2 and 7: ``mqtt.max_packet_size`` (for 3.1.1 brokers, which cannot announce it) and
    ``mqtt.puback_timeout_s`` (the hung-broker deadline) are what the client enforces."""
    text = MINIMAL_MODBUS.replace(
        'mqtt: {url: "mqtt://127.0.0.1:1883"}',
        'mqtt: {url: "mqtt://127.0.0.1:1883", max_packet_size: 4096, puback_timeout_s: 2.5}',
    )
    options = mqtt_options_for(load(text), will_topic="acme/s", will_payload=b"off", online_payload=b"on")
    assert (options.max_packet_size, options.puback_timeout_s) == (4096, 2.5)


def test_by_default_the_broker_decides_the_packet_size_and_the_deadline_is_10_s() -> None:
    options = mqtt_options_for(load(MINIMAL_MODBUS), will_topic="acme/s", will_payload=b"off", online_payload=b"on")
    assert (options.max_packet_size, options.puback_timeout_s) == (None, 10.0)
