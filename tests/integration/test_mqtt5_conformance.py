"""Our MQTT client against the OASIS MQTT 5.0 specification, one case per test (issue 10 item 8).

Each test runs a scripted broker (tests/support/mqtt_broker.py: an asyncio server on a free 127.0.0.1
port that sends exact bytes) and the real MqttSink. Statement numbers ([MQTT-x.y.z-n]) and sections
(§) are those of mqtt-v5.0-os.
"""

from __future__ import annotations

import asyncio

import pytest
import structlog

from gateway.errors import SinkError
from gateway.mqtt.connection import MqttSink
from gateway.mqtt.wire import (
    Connack,
    Connect,
    Disconnect,
    PingReq,
    Property,
    ProtocolVersion,
    Puback,
    encode,
    encode_properties,
)
from tests.support.mqtt_broker import ScriptedBroker, options, running, wait_until

V5 = ProtocolVersion.V5


async def refused_connect(broker: ScriptedBroker, match: str, **overrides: object) -> None:
    """The sink never counts the connection as made, and says why in wait_connected's error."""
    async with MqttSink(options(broker, **overrides)) as sink:
        with pytest.raises(SinkError, match=match):
            await sink.wait_connected(0.5)
        assert not sink.connected
        await wait_until(lambda: len(broker.connections) >= 2)  # and it keeps trying, with backoff


def sent_protocol_error(broker: ScriptedBroker) -> bool:
    """The client closed the first connection with DISCONNECT 0x82 Protocol Error (§4.13.2)."""
    return Disconnect(reason_code=0x82) in broker.connections[0]


async def test_receive_maximum_0_is_a_protocol_error_not_a_window_of_0() -> None:
    """§3.2.2.3.3: "It is a Protocol Error to include the Receive Maximum value more than once or for it
    to have the value 0". Issue 10 item 8: Receive Maximum 0 was accepted and nothing was ever sent."""
    async with ScriptedBroker(connack=Connack(properties=((Property.RECEIVE_MAXIMUM, 0),))) as broker:
        await refused_connect(broker, r"protocol error: CONNACK with Receive Maximum 0")
    assert sent_protocol_error(broker)


async def test_receive_maximum_twice_is_a_protocol_error() -> None:
    """§3.2.2.3.3: Receive Maximum more than once is a Protocol Error."""
    connack = Connack(properties=((Property.RECEIVE_MAXIMUM, 10), (Property.RECEIVE_MAXIMUM, 20)))
    async with ScriptedBroker(connack=connack) as broker:
        await refused_connect(broker, r"protocol error: CONNACK carries RECEIVE_MAXIMUM more than once")
    assert sent_protocol_error(broker)


async def test_maximum_packet_size_0_is_a_protocol_error() -> None:
    """§3.2.2.3.6: "It is a Protocol Error to include the Maximum Packet Size more than once, or for the
    value to be set to zero"."""
    async with ScriptedBroker(connack=Connack(properties=((Property.MAXIMUM_PACKET_SIZE, 0),))) as broker:
        await refused_connect(broker, r"protocol error: CONNACK with Maximum Packet Size 0")
    assert sent_protocol_error(broker)


async def test_session_present_in_reply_to_clean_start_closes_the_connection() -> None:
    """[MQTT-3.2.2-2] a server accepting Clean Start 1 sets Session Present 0; [MQTT-3.2.2-4] a client
    without session state that gets Session Present 1 MUST close the Network Connection. Issue 10 item 8:
    Session Present with Clean Start was not refused."""
    async with ScriptedBroker(connack=Connack(session_present=True)) as broker:
        await refused_connect(broker, r"protocol error: CONNACK with Session Present 1 in reply to Clean Start 1")
    connect = broker.connections[0][0]
    assert isinstance(connect, Connect) and connect.clean_start
    assert sent_protocol_error(broker)
    assert not broker.publishes(0)  # closed before the online status or any data went out


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_session_present_in_reply_to_clean_session_is_refused_under_both_versions(protocol: str) -> None:
    """3.1.1 [MQTT-3.2.2-1] / 5.0 [MQTT-3.2.2-2]: the same rule under 3.1.1 (Clean Session 1)."""
    raw = b"\x20\x02\x01\x00" if protocol == "3.1.1" else b"\x20\x03\x01\x00\x00"
    async with ScriptedBroker(connack=raw) as broker:
        await refused_connect(broker, r"Session Present 1", protocol=protocol)


async def test_a_311_connack_to_a_v5_connect_says_try_protocol_311() -> None:
    """A 3.1.1-only broker answers an MQTT 5 CONNECT with the 3.1.1 CONNACK "unacceptable protocol
    version" (remaining length 2, return code 0x01; 3.1.1 §3.1.2.2). Issue 10 item 8: it was reported as
    "malformed" instead of "protocol version not supported: try protocol: 3.1.1"."""
    async with ScriptedBroker(connack=b"\x20\x02\x00\x01") as broker:
        await refused_connect(broker, r"protocol version not supported: try protocol: 3\.1\.1")


async def test_a_v5_unsupported_protocol_version_connack_says_try_protocol_311() -> None:
    """§3.2.2.2 reason 0x84 Unsupported Protocol Version: the same hint as from a 3.1.1 broker."""
    async with ScriptedBroker(connack=Connack(reason_code=0x84)) as broker:
        await refused_connect(broker, r"protocol version not supported: try protocol: 3\.1\.1 .*0x84")


async def test_server_keep_alive_0_turns_our_keep_alive_off() -> None:
    """[MQTT-3.2.2-21]: "If the Server sends a Server Keep Alive on the CONNACK packet, the Client MUST use
    this value instead of the Keep Alive value the Client sent on CONNECT"; 0 means no keep alive
    (§3.1.2.10). Issue 10 item 8: Server Keep Alive 0 was ignored."""
    connack = Connack(properties=((Property.SERVER_KEEP_ALIVE, 0),))
    async with ScriptedBroker(connack=connack, answer_pings=False) as broker, running(broker, keepalive_s=1) as sink:
        await asyncio.sleep(2.5)  # with our 1 s: a PINGREQ at 1 s, and the link dropped at 2 s
        assert sink.connected and len(broker.connections) == 1
    assert not any(isinstance(p, PingReq) for p in broker.connections[0])


async def test_connect_announces_our_maximum_packet_size() -> None:
    """§3.1.2.11.4: the client announces the largest packet it accepts (the 1 MiB its decoder enforces),
    so the server never sends more [MQTT-3.1.2-24]. Issue 10 item 8: none was announced."""
    async with ScriptedBroker() as broker, running(broker):
        pass
    connect = broker.connections[0][0]
    assert isinstance(connect, Connect)
    assert connect.properties == ((Property.MAXIMUM_PACKET_SIZE, 1 << 20),)


async def test_a_puback_reason_string_is_logged_bounded() -> None:
    """§3.4.2.2.2 Reason String (PUBACK), logged with the refusal, cut to a bounded length (it may be
    65,535 bytes). Issue 10 item 8: Reason Strings were never logged."""
    long_text = "topic denied by acl rule 7; " * 100

    def refuse(publish: object) -> Puback | int:
        packet_id = getattr(publish, "packet_id", 0)
        if getattr(publish, "retain", False):
            return 0
        return Puback(packet_id, 0x87, ((Property.REASON_STRING, long_text),))

    with structlog.testing.capture_logs() as logs:
        async with ScriptedBroker(ack=refuse) as broker, running(broker) as sink:
            await sink.publish("edge/data/denied", b"1")
            await sink.publish("edge/data/denied", b"2")
            assert await sink.flush(5)
            assert sink.refused_by_reason == {"not_authorized": 2}
    refused = [entry for entry in logs if entry["event"] == "mqtt_message_refused"]
    assert len(refused) == 1  # once per reason
    assert refused[0]["reason"] == "not_authorized"
    assert refused[0]["reason_string"].startswith("topic denied by acl rule 7;")
    assert len(refused[0]["reason_string"]) < 300


async def test_a_connack_reason_string_is_in_the_connect_error() -> None:
    """§3.2.2.3.9 Reason String (CONNACK): part of the connect error, bounded."""
    connack = Connack(reason_code=0x87, properties=((Property.REASON_STRING, "client not in allow list " * 50),))
    async with ScriptedBroker(connack=connack) as broker, MqttSink(options(broker)) as sink:
        with pytest.raises(SinkError, match=r"Not authorized \(0x87\) \(client not in allow list") as error:
            await sink.wait_connected(0.5)
    assert len(str(error.value)) < 600


async def test_a_disconnect_reason_string_is_logged() -> None:
    """§3.14.2.2.3 Reason String (DISCONNECT from the server): in the mqtt_disconnected line."""
    with structlog.testing.capture_logs() as logs:
        async with ScriptedBroker() as broker, running(broker) as sink:
            writer_count = len(broker.connections)
            disconnect = Disconnect(reason_code=0x98, properties=((Property.REASON_STRING, "maintenance"),))
            broker.send_and_close(encode(disconnect, V5))
            await wait_until(lambda: len(broker.connections) > writer_count)
            await sink.wait_connected(5)
    lost = [entry for entry in logs if entry["event"] == "mqtt_disconnected" and entry.get("by_broker")]
    assert lost and "Administrative action (0x98) (maintenance)" in lost[0]["reason"]


def test_the_scripted_connack_bytes_are_what_the_spec_says() -> None:
    """Guard for the raw bytes above: a v5 CONNACK with no properties is 20 03 flags reason 00."""
    assert encode(Connack(session_present=True), V5) == b"\x20\x03\x01\x00" + encode_properties(())
