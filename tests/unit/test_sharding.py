"""Sharding a tag map across N gateways: every device in exactly one shard, stable across processes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gateway.sharding import parse_shard, select_shard, shard_of
from gateway.tagmap import Plant, load_plant, load_plant_from_text

REPO_ROOT = Path(__file__).resolve().parents[2]


def _generated_plant(devices: int) -> Plant:
    lines = [
        "gateway: {id: shard, enterprise: acme, site: dunkirk}",
        'mqtt: {url: "mqtt://127.0.0.1:1883"}',
        "devices:",
    ]
    for index in range(devices):
        # Every third device is disabled: shards keep disabled devices too.
        enabled = "false" if index % 3 == 0 else "true"
        lines += [
            f"  - name: rack-{index + 1:03d}",
            "    area: formation",
            f"    line: hall-{index % 4}",
            "    protocol: modbus",
            "    host: 127.0.0.1",
            f"    port: {5000 + index}",
            f"    enabled: {enabled}",
            "    tags: [{name: status, address: 0, type: uint16}]",
        ]
    return load_plant_from_text("\n".join(lines) + "\n", environ={})


PLANTS = {
    "demo": lambda: load_plant(REPO_ROOT / "config" / "demo.yaml", environ={}),
    "generated-200": lambda: _generated_plant(200),
}


@pytest.mark.parametrize("plant_name", sorted(PLANTS))
@pytest.mark.parametrize("shard_count", range(1, 9))
def test_shards_partition_the_devices(plant_name: str, shard_count: int) -> None:
    plant = PLANTS[plant_name]()
    shards = [select_shard(plant, k, shard_count) for k in range(1, shard_count + 1)]
    names = Counter(device.name for shard in shards for device in shard.devices)
    assert set(names) == {device.name for device in plant.devices}
    assert all(count == 1 for count in names.values()), f"devices in more than one shard: {names}"
    for k, shard in enumerate(shards, start=1):
        # Everything but the device list and the gateway's identity is the same plant; devices keep tag-map
        # order and their settings.
        assert shard.gateway.model_copy(update={"id": plant.gateway.id}) == plant.gateway
        assert shard.mqtt.model_copy(update={"client_id": plant.mqtt.client_id}) == plant.mqtt
        assert shard.spool == plant.spool
        assert list(shard.devices) == [d for d in plant.devices if shard_of(d.name, shard_count) == k]


def test_two_hundred_devices_spread_over_every_shard() -> None:
    plant = _generated_plant(200)
    sizes = [len(select_shard(plant, k, 8).devices) for k in range(1, 9)]
    assert sum(sizes) == 200
    assert min(sizes) >= 10, f"a hash this uneven would leave boxes idle: {sizes}"


def test_single_shard_is_the_whole_plant() -> None:
    plant = _generated_plant(20)
    assert select_shard(plant, 1, 1).devices == plant.devices


# A change of hash function moves devices between boxes of a running plant: it must be a deliberate change.
EXPECTED_ASSIGNMENT = [
    ("rack-01", [1, 2, 1, 2, 5, 4, 5, 2]),
    ("coater-01", [1, 2, 2, 4, 3, 2, 4, 8]),
    ("stacker-01", [1, 2, 3, 4, 2, 6, 6, 4]),
    ("calender-01", [1, 1, 2, 1, 2, 5, 6, 5]),
]


@pytest.mark.parametrize(("name", "shards"), EXPECTED_ASSIGNMENT)
def test_assignment_is_pinned(name: str, shards: list[int]) -> None:
    assert [shard_of(name, n) for n in range(1, 9)] == shards


def test_assignment_does_not_depend_on_the_process_hash_seed() -> None:
    code = "from gateway.sharding import shard_of; print([shard_of(f'd{i}', 7) for i in range(50)])"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, cwd=REPO_ROOT,
            capture_output=True, text=True, check=True,
        ).stdout
        for seed in ("1", "2", "random")
    }
    assert len(outputs) == 1
    assert outputs.pop().strip() == str([shard_of(f"d{i}", 7) for i in range(50)])


@pytest.mark.parametrize(("text", "expected"), [("1/1", (1, 1)), ("2/4", (2, 4)), (" 3/3 ", (3, 3)), ("8/10", (8, 10))])
def test_parse_shard(text: str, expected: tuple[int, int]) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2", "expected K/N"),
        ("", "expected K/N"),
        ("a/4", "whole numbers"),
        ("2/x", "whole numbers"),
        ("1.5/4", "whole numbers"),
        ("0/4", "K must be between 1 and N=4"),
        ("5/4", "K must be between 1 and N=4"),
        ("-1/4", "K must be between 1 and N=4"),
        ("1/0", "N (the number of shards) must be at least 1"),
        ("1/-2", "N (the number of shards) must be at least 1"),
    ],
)
def test_parse_shard_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^shard ") as caught:
        parse_shard(text)
    assert message in str(caught.value)


def test_select_shard_refuses_a_shard_out_of_range() -> None:
    plant = _generated_plant(3)
    with pytest.raises(ValueError, match="between 1 and N"):
        select_shard(plant, 3, 2)
    with pytest.raises(ValueError, match="at least 1"):
        shard_of("rack-01", 0)


def test_each_shard_is_its_own_gateway_with_its_own_client_id() -> None:
    plant = PLANTS["demo"]()
    shards = [select_shard(plant, k, 3) for k in (1, 2, 3)]
    assert [s.gateway.id for s in shards] == [f"{plant.gateway.id}-{k}of3" for k in (1, 2, 3)]
    assert len({s.mqtt.client_id for s in shards}) == 3
    assert all(s.mqtt.client_id == f"cellgate-{s.gateway.id}" for s in shards)
    # One shard of one is the plain gateway, nothing renamed.
    assert select_shard(plant, 1, 1).gateway.id == plant.gateway.id


def test_cli_check_with_a_shard_lists_only_that_shards_devices() -> None:
    plant = PLANTS["demo"]()
    wanted = [d.name for d in plant.devices if shard_of(d.name, 4) == 2]
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "-c", str(REPO_ROOT / "config" / "demo.yaml"), "--shard", "2/4"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"tag map OK: {len(wanted)} device(s)" in result.stdout
    assert f"gateway {plant.gateway.id}-2of4 " in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "run", "-c", str(REPO_ROOT / "config" / "demo.yaml"), "--shard", "5/4"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert bad.returncode == 2
    assert "K must be between 1 and N=4" in bad.stderr
