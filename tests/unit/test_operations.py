"""Metrics collector, readiness, the stall meaning shared with the watchdog, the http section and the bearer token
(over a real socket)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from gateway.errors import ConfigError
from gateway.health import PUBLISH_STALL_S, PipelineView, ProgressWatch, readiness
from gateway.http_server import OpsHttp, serve_http
from gateway.metrics import DeviceState, GatewayState, LinkEvent, build_registry
from gateway.sources.modbus import UnitStats
from gateway.status_page import render_status
from gateway.tagmap import HttpSection, load_plant
from tests.support.gateway import DEMO_CONFIG
from tests.support.sim import free_tcp_port


def device(name: str, *, connected: bool | None) -> DeviceState:
    return DeviceState(
        name=name, protocol="modbus", connected=connected, since=100.0, error=None if connected else "refused",
        tags=8, messages=40, last_message_at=110.0 if connected else None,
    )  # fmt: skip


STATE = GatewayState(
    gateway_id="gw-1", version="1.2.3", started=100.0, now=120.0,
    devices=(device("rack-01", connected=True), device("rack-02", connected=False)),
    queue_messages=3, queue_capacity=10_000, messages_queued=80, mqtt_connected=True,
    broker="127.0.0.1:1883", brokers=("127.0.0.1:1883", "10.0.0.2:1883"), inflight=2, published=77,
    failed_by_reason={"spool_unavailable": 1}, spool_available=True, spool_messages=5, spool_bytes=500,
    spool_max_bytes=1_000_000, spooled_total=5, replayed_total=0, spool_dropped_by_reason={"max_mb": 4},
    source_restarts=1, reloads=0, stalled_s=0.0,
    events=(LinkEvent(101.0, "rack-01", True, None), LinkEvent(102.0, "rack-02", False, "<refused>")),
)  # fmt: skip


def test_the_collector_reads_the_state_at_scrape_time() -> None:
    calls: list[GatewayState] = []

    def state() -> GatewayState:
        calls.append(STATE)
        return STATE

    registry = build_registry(state)
    assert calls == []  # nothing computed before a scrape
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    up = {s.labels["device"]: s.value for s in families["cellgate_device_up"].samples}
    assert up == {"rack-01": 1.0, "rack-02": 0.0}
    assert families["cellgate_messages_published"].type == "counter"
    assert families["cellgate_messages_published"].samples[0].value == 77
    failed = families["cellgate_messages_failed"].samples[0]
    assert (failed.labels, failed.value) == ({"reason": "spool_unavailable"}, 1)
    assert families["cellgate_spool_dropped"].samples[0].labels == {"reason": "max_mb"}
    assert families["cellgate_build_info"].samples[0].labels["version"] == "1.2.3"
    assert "process_cpu_seconds" in families
    assert len(calls) == 1


def test_source_counters_are_exported_per_device_with_bounded_labels() -> None:
    stats = UnitStats(cycles=12, overruns=2, reads_ok=90, comm_failures=4, timeouts=3)
    state = replace(STATE, devices=(replace(device("rack-01", connected=True), source_stats=stats),))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(build_registry(lambda: state)).decode())
    }
    assert families["cellgate_poll_cycles"].samples[0].value == 12
    stats.overruns = 5  # read at scrape time, not copied
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(build_registry(lambda: state)).decode())
    }
    assert families["cellgate_poll_overruns"].samples[0].value == 5
    reads = {s.labels["result"]: s.value for s in families["cellgate_device_reads"].samples}
    assert reads == {"ok": 90, "timeout": 3, "connection_error": 1, "exception": 0, "decode_error": 0}
    assert 'data-label="Overruns">5<' in render_status(state, readiness(state))


def test_poll_cycle_times_form_a_cumulative_histogram() -> None:
    stats = UnitStats()
    for seconds in (0.004, 0.02, 0.02, 30.0):
        stats.cycle_times.observe(seconds)
    state = replace(STATE, devices=(replace(device("rack-01", connected=True), source_stats=stats),))
    text = generate_latest(build_registry(lambda: state)).decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "cellgate_device_poll_seconds")
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert (buckets["0.005"], buckets["0.01"], buckets["0.025"], buckets["10.0"], buckets["+Inf"]) == (1, 1, 3, 3, 4)
    count = next(s.value for s in family.samples if s.name.endswith("_count"))
    assert count == 4


def test_readiness_names_each_failing_check() -> None:
    assert readiness(STATE).ready
    nobody_up = replace(STATE, devices=(device("rack-02", connected=False),))
    assert readiness(nobody_up).checks["device_up"] is False
    # Broker down: ready while the spool has room, not once it is full or gone.
    offline = replace(STATE, mqtt_connected=False)
    assert readiness(offline).ready
    assert not readiness(replace(offline, spool_bytes=offline.spool_max_bytes)).checks["output"]
    assert not readiness(replace(offline, spool_available=False)).ready
    stalled = readiness(replace(STATE, stalled_s=PUBLISH_STALL_S))
    assert (stalled.ready, stalled.checks["not_stalled"]) == (False, False)


def test_progress_watch_is_stalled_only_while_queued_messages_do_not_move() -> None:
    now = [0.0]
    forwarded = [0]
    queued = [5]
    watch = ProgressWatch(
        PipelineView(devices=lambda: (1, 1), forwarded=lambda: forwarded[0], queued=lambda: queued[0]),
        clock=lambda: now[0],
    )
    now[0] = PUBLISH_STALL_S - 1
    assert not watch.stalled()
    now[0] = PUBLISH_STALL_S
    assert watch.stalled()
    forwarded[0] = 1  # a batch moved
    assert not watch.stalled()
    now[0] += PUBLISH_STALL_S
    queued[0] = 0  # nothing waiting is never a stall
    assert not watch.stalled()


def test_status_page_escapes_and_marks_links() -> None:
    page = render_status(STATE, readiness(STATE))
    assert 'id="device-rack-01" data-link="up"' in page
    assert 'id="device-rack-02" data-link="down"' in page
    assert "&lt;refused&gt;" in page
    assert "<refused>" not in page
    assert "10.0.0.2:1883" in page  # the fail-over target
    assert "<script" not in page


def test_http_section_requires_a_token_off_loopback() -> None:
    assert HttpSection().listen == "127.0.0.1:9108"
    assert HttpSection(listen=None).host_port is None
    assert HttpSection(listen="[::1]:9200").host_port == ("::1", 9200)
    with pytest.raises(ValidationError, match="token_file"):
        HttpSection(listen="0.0.0.0:9108")
    assert HttpSection(listen="0.0.0.0:9108", token_file="/etc/cellgate/token").host_port == ("0.0.0.0", 9108)
    with pytest.raises(ValidationError, match="host:port"):
        HttpSection(listen="9108")


async def _get(port: int, path: str, token: str | None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token is not None else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    answer = await reader.read()
    writer.close()
    return answer


async def test_a_token_guards_every_route_over_a_real_socket() -> None:
    ops = OpsHttp(state=lambda: STATE, registry=build_registry(lambda: STATE), token="s3cret")
    port = free_tcp_port()
    server = asyncio.create_task(serve_http(ops, "127.0.0.1", port))
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                await _get(port, "/healthz", None)
                break
            await asyncio.sleep(0.02)
        for path in ("/", "/metrics", "/healthz", "/readyz"):
            assert (await _get(port, path, None)).startswith(b"HTTP/1.1 401 ")
            assert (await _get(port, path, "wrong")).startswith(b"HTTP/1.1 401 ")
            assert (await _get(port, path, "s3cret")).startswith(b"HTTP/1.1 200 ")
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


async def test_a_listener_whose_port_is_taken_says_so_once_and_listens_once_the_port_is_free() -> None:
    import socket

    import structlog.testing

    ops = OpsHttp(state=lambda: STATE, registry=build_registry(lambda: STATE), token=None)
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    with structlog.testing.capture_logs() as logs:
        server = asyncio.create_task(serve_http(ops, "127.0.0.1", port, retry_s=0.05))
        try:
            await asyncio.sleep(0.5)  # about ten attempts while the port is taken
            failed = [entry for entry in logs if entry["event"] == "http_listen_failed"]
            assert len(failed) == 1 and failed[0]["retry_in_s"] == 0.05, failed  # said once, not per attempt
            squatter.close()
            for _ in range(200):
                if any(entry["event"] == "http_listening" for entry in logs):
                    break
                await asyncio.sleep(0.02)
            assert (await _get(port, "/healthz", None)).startswith(b"HTTP/1.1 200 ")
            listening = [entry for entry in logs if entry["event"] == "http_listening"]
            assert listening[0]["after_failures"] is True
        finally:
            squatter.close()
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server


def test_the_environment_sets_the_listener_and_an_open_address_without_a_token_is_refused() -> None:
    plant = load_plant(DEMO_CONFIG, environ={"CELLGATE_HTTP__LISTEN": "127.0.0.1:9200"})
    assert plant.http.host_port == ("127.0.0.1", 9200)
    with pytest.raises(ConfigError, match="token_file"):
        load_plant(DEMO_CONFIG, environ={"CELLGATE_HTTP__LISTEN": "0.0.0.0:9108"})
