"""MqttSink options for tests against a test broker: fast reconnects, a will under the test's own prefix."""

from __future__ import annotations

import dataclasses
import re
import uuid
from typing import TYPE_CHECKING, Any

from gateway.mqtt.options import MqttOptions
from tests.support.mosquitto import Mosquitto

if TYPE_CHECKING:
    from gateway.sparkplug_session import SparkplugSession

ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'


def unique_prefix(test_name: str) -> str:
    """A topic prefix of one test, so tests never see each other's messages."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", test_name)
    return f"cgtest/{name}-{uuid.uuid4().hex[:6]}"


def sink_options(broker: Mosquitto, prefix: str, **overrides: Any) -> MqttOptions:
    options = MqttOptions(
        host=broker.host,
        port=broker.port,
        client_id="cg-" + prefix.replace("/", "-"),
        will_topic=f"{prefix}/_gateway/status",
        will_payload=OFFLINE,
        online_payload=ONLINE,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        connect_timeout_s=2.0,
    )
    return dataclasses.replace(options, **overrides)


def sparkplug_options(broker: Mosquitto, session: SparkplugSession, **overrides: Any) -> MqttOptions:
    """An edge node's connection as the runtime makes it: the session's NDEATH will (not retained), its
    subscriptions and hooks, no online message; fast reconnects."""
    options = MqttOptions(
        host=broker.host,
        port=broker.port,
        client_id="edge-1",
        will_topic=session.node.topic("NDEATH"),
        will_payload=session.will_payload,
        online_payload=None,
        will_retain=False,
        subscriptions=session.subscriptions,
        on_message=session.on_message,
        session=session,
        reconnect_min_s=0.2,
        reconnect_max_s=0.5,
    )
    return dataclasses.replace(options, **overrides)
