"""health_text: the one-line STATUS= systemd shows for the gateway."""

from __future__ import annotations

from gateway.health import health_text


def test_health_text_counts_devices_broker_and_spool() -> None:
    text = health_text(connected=2, devices=3, broker_connected=True, spooled=17)
    assert text == "devices 2/3 connected, broker connected, spooled 17"


def test_health_text_says_when_the_spool_is_unavailable() -> None:
    text = health_text(connected=0, devices=1, broker_connected=False, spooled=None)
    assert text == "devices 0/1 connected, broker disconnected, spooled unavailable"
