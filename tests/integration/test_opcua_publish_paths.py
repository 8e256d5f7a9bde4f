"""Both OPC UA publish paths against the equipment simulator: the fast path (our publish loop and decoder,
``opcua_fastpath``) and its fallback (asyncua's public subscription API, what the source uses when the feature
check fails). Each must deliver the same kinds of readings, turn a Bad status into a bad reading, and rebuild
the link after the server drops the connection; the log names the path in force once."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import structlog.testing

from gateway.schema import STATUS_COMM_FAILURE, Quality
from gateway.sources.opcua import OpcUaSource
from gateway.sources.opcua_fastpath import fast_path_unavailable
from gateway.sources.opcua_status import OpcUaDeviceOptions, OpcUaTagRef
from gateway.vocabulary import OpcUaMode
from simulators.faults import BadValue, DropConnections
from simulators.machines.coater import Coater
from simulators.servers.opcua_server import NAMESPACE_URI, OpcUaSimulatorServer
from tests.support.recorder import Recorder, running

POINTS = ("Line.Speed", "Line.Length", "Identification.Manufacturer", "Gauge.ProfileArray", "Dryer.Zone03.AirTemp")


def tags(points: Sequence[str]) -> list[OpcUaTagRef]:
    return [OpcUaTagRef(name=point, kind="s", identifier=f"Coater01.{point}") for point in points]


@pytest.mark.parametrize("path", ["fast", "asyncua"])
async def test_publish_path_delivers_values_bad_status_and_survives_a_dropped_connection(path: str) -> None:
    assert fast_path_unavailable() is None  # with the pinned asyncua the fast path must be available
    recorder = Recorder(default_within_s=60.0)  # generous: parallel tests slow everything down
    options = OpcUaDeviceOptions(endpoint="", namespace_uri=NAMESPACE_URI, mode=OpcUaMode.SUBSCRIBE,
                                 interval_ms=100, timeout_ms=2000)  # fmt: skip
    async with OpcUaSimulatorServer(machines={"Coater01": Coater(rng=random.Random(3))}, port=0, step_hz=10) as sim:
        options = OpcUaDeviceOptions(endpoint=sim.endpoint, namespace_uri=NAMESPACE_URI, mode=options.mode,
                                     interval_ms=options.interval_ms, timeout_ms=options.timeout_ms)  # fmt: skip
        source = OpcUaSource(device="coater-01", options=options, tags=tags(POINTS), fast_publish=path == "fast",
                             backoff_initial_s=0.1, backoff_max_s=0.5)  # fmt: skip
        with structlog.testing.capture_logs() as logs:
            async with running(source, recorder):
                await recorder.wait_until(lambda: all(recorder.of(point) for point in POINTS))
                first = {point: recorder.of(point)[0] for point in POINTS}
                assert all(reading.quality is Quality.GOOD for reading in first.values()), first
                assert isinstance(first["Line.Speed"].value, float)
                assert first["Identification.Manufacturer"].value == "Cellgate Simulators"
                profile = first["Gauge.ProfileArray"].value
                assert isinstance(profile, list) and len(profile) == 120  # an array: asyncua's Variant decoder
                # Values keep changing: the line runs, its length grows.
                await recorder.wait_until(lambda: len({r.value for r in recorder.of("Line.Length")}) >= 3)

                await sim.set_fault(BadValue(points=frozenset({"Line.Speed"}), machine="Coater01"))
                await recorder.wait_until(lambda: any(r.status == "BadSensorFailure"
                                                      for r in recorder.of("Line.Speed")))  # fmt: skip
                bad = next(r for r in recorder.of("Line.Speed") if r.status == "BadSensorFailure")
                assert (bad.quality, bad.value) == (Quality.BAD, None)
                await sim.clear_faults()

                await sim.set_fault(DropConnections())  # every open connection closed once
                await recorder.wait_until(lambda: any(r.status == STATUS_COMM_FAILURE
                                                      for r in recorder.of("Line.Length")))  # fmt: skip
                seen = len(recorder.of("Line.Length"))
                # A new client (new session, new subscription): values arrive again, good.
                await recorder.wait_until(lambda: any(r.quality is Quality.GOOD
                                                      for r in recorder.of("Line.Length")[seen:]))  # fmt: skip
    assert recorder.links[0] == (True, None) and recorder.links[-1] == (True, None)
    assert any(up is False for up, _reason in recorder.links)
    paths = [entry for entry in logs if entry["event"] == "opcua_publish_path"]
    assert len(paths) == 1, paths  # once per source, not per connection
    assert paths[0]["path"] == path
    if path == "fast":
        assert source.stats.fast_publish_responses > 0
        assert paths[0].get("reason") is None
    else:
        assert source.stats.fast_publish_responses == 0
        assert paths[0]["reason"] == "fast_publish is off"
    assert source.stats.notifications >= len(POINTS)
    assert source.stats.unknown_handles == 0
