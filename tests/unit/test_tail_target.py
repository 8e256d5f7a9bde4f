"""`cellgate tail`: where it subscribes (broker URL or tag map), which filters it takes, and the view's colours."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.live_view import GREEN, RED, RESET, YELLOW, LiveView, render_view
from gateway.tail import filter_problem, target_from_map, target_from_url


@pytest.mark.parametrize(
    ("url", "host", "port", "tls", "user", "password"),
    [
        ("mqtt://127.0.0.1", "127.0.0.1", 1883, False, None, None),
        ("mqtts://broker.plant:8884", "broker.plant", 8884, True, None, None),
        ("mqtts://[::1]", "::1", 8883, True, None, None),
        ("mqtt://ops:p%40ss@127.0.0.1:1884", "127.0.0.1", 1884, False, "ops", "p@ss"),
    ],
)
def test_target_from_url(url: str, host: str, port: int, tls: bool, user: str | None, password: str | None) -> None:
    target = target_from_url(url, None, protocol="5")
    assert (target.host, target.port, target.tls, target.username, target.password) == (host, port, tls, user,
                                                                                          password)
    assert target.topic_filter == "#" and target.prefix is None


@pytest.mark.parametrize("url", ["http://127.0.0.1", "mqtt://", "127.0.0.1:1883", "mqtt://127.0.0.1:99999"])
def test_target_from_url_refuses(url: str) -> None:
    with pytest.raises(ValueError, match="--broker"):
        target_from_url(url, None, protocol="5")


@pytest.mark.parametrize(
    ("topic_filter", "prefix"),
    [(None, "acme/dunkirk"), ("acme/dunkirk/formation/#", "acme/dunkirk"), ("acme/#", None), ("#", None)],
)
def test_target_from_map(tmp_path: Path, topic_filter: str | None, prefix: str | None) -> None:
    path = tmp_path / "tagmap.yaml"
    path.write_text(
        "gateway: {id: edge-01, enterprise: acme, site: dunkirk}\n"
        'mqtt: {url: "mqtts://broker.plant:8883", username: gw, password: secret, protocol: "3.1.1"}\n'
        "devices: [{name: rack-01, area: formation, line: hall-a, protocol: modbus, host: 127.0.0.1,\n"
        "           tags: [{name: v, address: 0, type: float32}]}]\n"
    )
    target = target_from_map(str(path), topic_filter)
    assert (target.host, target.port, target.tls, target.protocol) == ("broker.plant", 8883, True, "3.1.1")
    assert (target.username, target.password) == ("gw", "secret")
    assert target.topic_filter == (topic_filter or "acme/dunkirk/#")
    assert target.prefix == prefix


@pytest.mark.parametrize(
    ("topic_filter", "problem"),
    [
        ("#", None),
        ("acme/+/formation/#", None),
        ("+", None),
        ("", "empty"),
        ("acme/#/x", "'#' must be a whole level"),
        ("acme#", "'#' must be a whole level"),
        ("acme/a+", "'+' must be a whole level"),
    ],
)
def test_filter_problem(topic_filter: str, problem: str | None) -> None:
    found = filter_problem(topic_filter)
    assert (found is None) if problem is None else (found is not None and problem in found)


LATEST = {
    "acme/dunkirk/_gateway/edge-01/status": {"online": False},
    "acme/dunkirk/formation/hall-a/rack-01/_status": {"connected": True},
    "acme/dunkirk/formation/hall-a/rack-01/v": {"value": 1.5, "unit": "V", "quality": "good"},
    "acme/dunkirk/formation/hall-a/rack-01/t": {"value": 99.0, "quality": "uncertain", "status": "out_of_range"},
    "acme/dunkirk/formation/hall-a/rack-02/v": {"value": 2.0, "unit": "V", "quality": "good"},
    "acme/dunkirk/formation/hall-a/rack-02/_meta": {"tags": {}},
    "acme/dunkirk/formation/hall-a/rack-02/_meta/2": {"tags": {}},
    "acme/dunkirk/formation/hall-a/rack-02/_batch": {"ts": 1, "values": {}},
}


def test_render_view_colours_only_when_asked() -> None:
    plain = render_view(LATEST, prefix="acme/dunkirk", messages=5, rate=1.0)
    coloured = render_view(LATEST, prefix="acme/dunkirk", messages=5, rate=1.0, colour=True)
    assert "\x1b[" not in plain
    assert "gateway edge-01: OFFLINE" in plain and f"gateway edge-01: {RED}OFFLINE{RESET}" in coloured
    assert f"{GREEN}1.5 V{RESET}" in coloured and f"{YELLOW}99 (uncertain: out_of_range){RESET}" in coloured
    assert f"formation/hall-a/rack-01  [{GREEN}connected{RESET}]  2 tags seen" in coloured
    assert "formation/hall-a/rack-02  [no status yet]  1 tags seen" in plain  # _meta, _meta/2, _batch left out
    assert "_meta" not in plain and "_batch" not in plain
    assert "broker" not in plain  # the demo's view leaves the broker's state out
    assert f"broker: {RED}NOT CONNECTED (retrying){RESET}" in render_view(
        LATEST, prefix=None, messages=0, rate=0.0, colour=True, broker_connected=False
    )
    # without the colour codes the two are the same text, cell padding included
    for code in (GREEN, RED, YELLOW, RESET, "\x1b[1m"):
        coloured = coloured.replace(code, "")
    assert coloured == plain


def test_a_batch_shows_as_its_tags() -> None:
    view = LiveView(topic_filter="#")
    base = "acme/dunkirk/formation/hall-a/rack-03"
    view.record(base + "/_batch", orjson.dumps({"ts": "t", "seq": 1, "samples": [
        {"tag": "ch001/voltage", "value": 3.5, "unit": "V", "quality": "good", "ts": "t"},
        {"tag": "ch001/current", "value": None, "unit": "A", "quality": "bad", "ts": "t", "status": "comm_failure"},
    ]}))
    view.record(base + "/_batch", orjson.dumps({"ts": "t", "seq": 2, "samples": [
        {"tag": "ch001/voltage", "value": 3.6, "unit": "V", "quality": "good", "ts": "t"},
    ]}))
    view.record(base + "/_batch", b"not json")
    latest, messages, _connected = view.snapshot()
    text = render_view(latest, prefix="acme/dunkirk", messages=messages, rate=0.0)
    assert "formation/hall-a/rack-03  [no status yet]  2 tags seen" in text
    assert "ch001/voltage = 3.6 V" in text and "None A (bad: comm_failure)" in text
    assert messages == 2
