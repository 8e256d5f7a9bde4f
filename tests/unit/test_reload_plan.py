"""plan_reload: which devices changed and which source tasks a SIGHUP reload stops and starts."""

from __future__ import annotations

from gateway.reload import PlantFingerprint, plan_reload
from gateway.tagmap import Plant, load_plant_from_text

BASE = """
gateway: {{id: gw, enterprise: acme, site: s1}}
mqtt: {{url: "mqtt://127.0.0.1:{broker_port}"}}
devices:
{devices}
"""


def device(name: str, port: int, *, unit_id: int = 1, interval_ms: int = 1000, enabled: bool = True) -> str:
    return (
        f"  - {{name: {name}, area: a, line: l, protocol: modbus, host: 127.0.0.1, port: {port}, "
        f"unit_id: {unit_id}, interval_ms: {interval_ms}, enabled: {str(enabled).lower()}, "
        "tags: [{name: v, address: 0, type: uint16}]}"
    )


def plant(*devices: str, broker_port: int = 1883) -> Plant:
    return load_plant_from_text(BASE.format(devices="\n".join(devices), broker_port=broker_port), environ={})


def sources(*groups: tuple[str, set[str]]) -> dict[str, frozenset[str]]:
    return {name: frozenset(devices) for name, devices in groups}


def test_an_unchanged_map_restarts_nothing() -> None:
    old = plant(device("r1", 5001), device("r2", 5002))
    running = sources(("modbus[r1]", {"r1"}), ("modbus[r2]", {"r2"}))
    result = plan_reload(PlantFingerprint.of(old), PlantFingerprint.of(old), running=running, wanted=running)
    assert (result.added, result.removed, result.changed) == (frozenset(), frozenset(), frozenset())
    assert (result.sources_to_stop, result.sources_to_start, result.sections_ignored) == ((), (), ())


def test_only_the_changed_device_source_restarts_and_added_removed_are_named() -> None:
    old = plant(device("r1", 5001), device("r2", 5002), device("r3", 5003))
    new = plant(device("r1", 5001), device("r2", 5002, interval_ms=500), device("r4", 5004))
    running = sources(("m1", {"r1"}), ("m2", {"r2"}), ("m3", {"r3"}))
    wanted = sources(("m1", {"r1"}), ("m2", {"r2"}), ("m4", {"r4"}))
    result = plan_reload(PlantFingerprint.of(old), PlantFingerprint.of(new), running=running, wanted=wanted)
    assert result.changed == {"r2"}
    assert result.added == {"r4"}
    assert result.removed == {"r3"}
    assert result.sources_to_stop == ("m2", "m3")
    assert result.sources_to_start == ("m2", "m4")


def test_a_shared_connection_restarts_when_any_of_its_devices_changes() -> None:
    old = plant(device("u1", 5001, unit_id=1), device("u2", 5001, unit_id=2))
    new = plant(device("u1", 5001, unit_id=1), device("u2", 5001, unit_id=2, interval_ms=250))
    shared = sources(("modbus[5001]", {"u1", "u2"}))
    result = plan_reload(PlantFingerprint.of(old), PlantFingerprint.of(new), running=shared, wanted=shared)
    assert result.changed == {"u2"}
    assert (result.sources_to_stop, result.sources_to_start) == (("modbus[5001]",), ("modbus[5001]",))


def test_a_device_joining_a_running_connection_restarts_that_connection() -> None:
    old = plant(device("u1", 5001, unit_id=1))
    new = plant(device("u1", 5001, unit_id=1), device("u2", 5001, unit_id=2))
    result = plan_reload(
        PlantFingerprint.of(old),
        PlantFingerprint.of(new),
        running=sources(("modbus[5001]", {"u1"})),
        wanted=sources(("modbus[5001]", {"u1", "u2"})),
    )
    assert result.changed == set() and result.added == {"u2"}
    assert (result.sources_to_stop, result.sources_to_start) == (("modbus[5001]",), ("modbus[5001]",))


def test_disabling_a_device_removes_it_and_section_changes_are_reported_not_applied() -> None:
    old = plant(device("r1", 5001), device("r2", 5002))
    new = plant(device("r1", 5001), device("r2", 5002, enabled=False), broker_port=1884)
    result = plan_reload(
        PlantFingerprint.of(old),
        PlantFingerprint.of(new),
        running=sources(("m1", {"r1"}), ("m2", {"r2"})),
        wanted=sources(("m1", {"r1"})),
    )
    assert result.removed == {"r2"}
    assert result.sources_to_stop == ("m2",)
    assert result.sources_to_start == ()
    assert result.sections_ignored == ("mqtt",)
